"""Hostile data layouts: what spreadsheets, macOS and file managers leave in a data set. Each is read as the
user meant it, or refused in one line naming the file, row or folder and the fix; never a silent extra class."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

import medtl
from medtl.core.config import DataConfig
from medtl.core.errors import MedtlError
from medtl.data.sources import discover, expand_inputs
from helpers import TINY, make_image, shared_path

# the first bytes of an AppleDouble file (macOS's resource fork beside `name.jpeg` on a foreign disk or in a zip)
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02" + bytes(4070)


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDTL_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "medtl", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _kermany_manifest(tmp_path: Path, name: str, per_class: int, extra: list[tuple[str, str]],
                      separator: str = ",", header: tuple[str, str, str] = ("path", "label", "split")) -> Path:
    """A manifest over real Kermany X-rays (absolute paths), train and test rows, plus `extra` (label, split)
    rows, each on a real image of its own."""
    source = shared_path("chest_xray_kermany_224")
    rows = []
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            files = sorted((source / split / cls).iterdir())
            rows += [(str(p), cls, split) for p in files[:per_class if split == "train" else 4]]
    spare = sorted((source / "test" / "NORMAL").iterdir())[10:]
    rows += [(str(spare[i]), label, split) for i, (label, split) in enumerate(extra)]
    path = tmp_path / name
    with open(path, "w", newline="", encoding="utf-8-sig") as f:  # as Excel writes "CSV UTF-8"
        writer = csv.writer(f, delimiter=separator)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# D2: empty and NaN labels

PLACEHOLDERS = ["", "NaN", "nan", "NA", "None", "null", "N/A", "<NA>", "#N/A"]


@pytest.mark.slow
def test_manifest_rows_without_a_label_are_skipped_and_listed_not_classes(tmp_path, cache_dir):
    manifest = _kermany_manifest(tmp_path, "m.csv", 10, [(p, "train") for p in PLACEHOLDERS] + [("nan", "test")])
    run = medtl.train(manifest, out=tmp_path / "runs", name="ok", **TINY)
    assert run.metrics["classes"] == ["NORMAL", "PNEUMONIA"]  # not ['', 'NORMAL', 'NaN', 'PNEUMONIA', ...]
    rows = list(csv.DictReader(open(run.folder.skipped, newline="")))
    first = 2 + 4 * 2 + 10 * 2  # header, then train and test rows of both classes
    reasons = [r["reason"] for r in rows]
    assert reasons == [f"m.csv row {first + i}: label missing ('{label}'); give the row a label, or remove it"
                       for i, label in enumerate(PLACEHOLDERS + ["nan"])]
    assert run.metrics["splits"]["test"]["n"] == 8  # the test row without a label is not scored either
    strict = _cli("train", str(manifest), "--strict", "--backbone", "resnet18", "--weights", "none", "--strategy", "full",
                  "--image-size", "32", "--epochs", "1", "--output-dir", str(tmp_path / "runs"), "--name", "strict",
                  cache=cache_dir)
    assert strict.returncode == 2, strict.stderr
    assert _error_lines(strict.stderr) == [
        f"error: cannot use image {rows[0]['path']} (m.csv row {first}: label missing (''); give the row a label, "
        f"or remove it); {len(PLACEHOLDERS) + 1} unusable in all. Fix or remove the file (or manifest row), or drop "
        "--strict to skip them"]
    assert not (tmp_path / "runs" / "strict").exists()


def _manifest(folder: Path, row) -> Path:
    """folder/m.csv over 24 generated images (classes alternate); `row(i)` gives image i's label and patient."""
    rng = np.random.default_rng(0)
    lines = ["path,label,patient_id"]
    for i in range(24):
        make_image(i % 2, rng).save(folder / f"{i}.png")
        lines.append(f"{i}.png,{row(i)}")
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    return folder / "m.csv"


def test_a_placeholder_label_is_a_class_only_when_class_names_name_it(tmp_path):
    _manifest(tmp_path, lambda i: f"{'NA' if i % 2 else 'pos'},P{i}")
    with pytest.raises(MedtlError, match=r"m.csv has 1 label\(s\) in its training rows; need at least two"):
        discover(DataConfig(path=str(tmp_path / "m.csv")))
    splits = discover(DataConfig(path=str(tmp_path / "m.csv"), class_names=("NA", "pos")))
    assert splits.classes == ["NA", "pos"] and not splits.rejected
    assert sum(len(r) for r in splits.refs.values()) == 24


def test_a_placeholder_patient_id_counts_as_empty(tmp_path):
    _manifest(tmp_path, lambda i: f"{'yes' if i % 2 else 'no'},{'NaN' if i < 12 else f'P{i}'}")
    with pytest.raises(MedtlError, match=r"some rows have an empty patient_id; give every row a patient ID"):
        discover(DataConfig(path=str(tmp_path / "m.csv")))


# D10: separators other than a comma


@pytest.mark.parametrize("separator", [";", "|", "\t"])
def test_a_manifest_with_another_separator_is_read(tmp_path, separator):
    manifest = _kermany_manifest(tmp_path, "m.csv", 10, [], separator, header=("Filename", "Diagnosis", "Set"))
    assert separator.encode() in manifest.read_bytes().splitlines()[1]  # a real separated file, BOM first
    splits = discover(DataConfig(path=str(manifest)))
    assert splits.classes == ["NORMAL", "PNEUMONIA"] and not splits.rejected
    assert len(splits.refs["test"]) == 8 and sum(len(r) for r in splits.refs.values()) == 28
    assert all(Path(r).is_file() for r in splits.all_refs())


def test_a_manifest_without_a_path_column_names_the_separator_it_read(tmp_path, cache_dir):
    (tmp_path / "m.csv").write_text("picture;diagnosis\na.png;yes\n")
    with pytest.raises(MedtlError) as err:
        discover(DataConfig(path=str(tmp_path / "m.csv")))
    assert str(err.value) == (f"manifest {(tmp_path / 'm.csv').resolve()} has no path column (header: picture;diagnosis; "
                              "read with ',' between columns); name one of: path, file, filename, image, filepath")
    (tmp_path / "t.tsv").write_text("picture\tdiagnosis\n")
    with pytest.raises(MedtlError, match=r"header: picture, diagnosis; read with tab between columns"):
        discover(DataConfig(path=str(tmp_path / "t.tsv")))


def test_a_manifest_that_is_not_utf8_is_one_line(tmp_path, cache_dir):
    (tmp_path / "m.csv").write_bytes("path,label\nödem.png,Ödem\n".encode("latin-1"))
    done = _cli("audit", str(tmp_path / "m.csv"), cache=cache_dir)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert _error_lines(done.stderr) == [
        f"error: manifest {(tmp_path / 'm.csv').resolve()} is not UTF-8 text (byte 11: invalid start byte); "
        "save it as UTF-8 (in Excel: CSV UTF-8)"]


# D8: macOS leftovers


def _leave_macos_leftovers(root: Path) -> int:
    """AppleDouble `._name` files beside every image, a `__MACOSX/` copy of the tree, `.DS_Store` and
    `Thumbs.db`, as unzipping a macOS archive or browsing with Finder/Explorer leaves them. Returns the count."""
    count = 0
    for image in [p for p in root.rglob("*.png")]:
        (image.parent / f"._{image.name}").write_bytes(APPLE_DOUBLE)
        shadow = root / "__MACOSX" / image.parent.relative_to(root)
        shadow.mkdir(parents=True, exist_ok=True)
        (shadow / f"._{image.name}").write_bytes(APPLE_DOUBLE)
        (image.parent / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
        (image.parent / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(100))
        count += 2
    return count


@pytest.mark.slow
def test_macos_leftovers_are_ignored_in_train_audit_and_predict(image_tree, cache_dir, tmp_path):
    assert _leave_macos_leftovers(image_tree) == 2 * 64
    report = medtl.audit(image_tree, perceptual=False)
    assert report["classes"] == ["neg", "pos"] and report["images"] == 64 and not report["unreadable"]
    run = medtl.train(image_tree, out=tmp_path / "runs", name="mac", strict=True, **TINY)
    assert run.metrics["classes"] == ["neg", "pos"] and not run.folder.skipped.exists()
    assert run.metrics["splits"]["test"]["n"] == 16
    predicted = run.predict(image_tree / "test")
    assert len(predicted) == 16 and not predicted.failed
    assert not any(p.name.startswith("._") or "__MACOSX" in p.parts for p in expand_inputs([image_tree]))


def test_a_macosx_folder_beside_class_folders_is_not_a_class(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for label, name in enumerate(("no", "yes")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            make_image(label, rng).save(root / name / f"{i}.png")
    _leave_macos_leftovers(root)
    splits = discover(DataConfig(path=str(root)))
    assert splits.classes == ["no", "yes"] and len(splits.all_refs()) == 24
    only_leftovers = root / "maybe"
    only_leftovers.mkdir()
    (only_leftovers / "._0.png").write_bytes(APPLE_DOUBLE)
    with pytest.raises(MedtlError, match=rf"class folder {only_leftovers} holds no images"):
        discover(DataConfig(path=str(root)))


@pytest.mark.slow
def test_a_class_with_no_readable_image_is_refused_in_one_line(image_tree, cache_dir, tmp_path):
    broken = image_tree / "train" / "junk"
    broken.mkdir()
    for i in range(4):
        (broken / f"{i}.jpeg").write_bytes(APPLE_DOUBLE + bytes([i]))  # named like images, are not
    done = _cli("train", str(image_tree), "--backbone", "resnet18", "--weights", "none", "--strategy", "full", "--image-size", "32",
                "--epochs", "1", "--output-dir", str(tmp_path / "runs"), "--name", "junk", cache=cache_dir)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert _error_lines(done.stderr) == [
        f"error: class 'junk' has no readable image in train: its 4 training image(s) under {broken.resolve()} are "
        "all unusable (`medtl audit DATA` lists why); fix or replace them, or remove the class"]
    assert not (tmp_path / "runs" / "junk").exists()


# D11: Unicode forms of one class name


def test_class_names_differing_only_in_unicode_form_are_one_class(tmp_path, caplog):
    nfc, nfd = unicodedata.normalize("NFC", "Ödem"), unicodedata.normalize("NFD", "Ödem")
    assert nfc != nfd
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split, folder, n in (("train", nfd, 12), ("train", "normal", 12), ("test", nfc, 4), ("test", "normal", 4)):
        (root / split / folder).mkdir(parents=True)
        for i in range(n):
            make_image(folder == "normal", rng).save(root / split / folder / f"{i}.png")
    splits = discover(DataConfig(path=str(root)))  # train copied from a Mac (NFD), test typed on Linux (NFC)
    assert splits.classes == ["normal", nfc] and len(splits.refs["test"]) == 8
    (root / "train" / nfc).mkdir()  # both spellings side by side: one class, with both folders' images
    for i in range(3):
        make_image(0, rng).save(root / "train" / nfc / f"more{i}.png")
    with caplog.at_level("WARNING", logger="medtl"):
        splits = discover(DataConfig(path=str(root)))
    assert splits.classes == ["normal", nfc]
    assert sum(len(splits.refs[s]) for s in ("train", "val")) == 12 + 12 + 3
    assert "differ only in Unicode form (NFC/NFD); read as one class" in caplog.text
    lines = ["path,label"] + [f"{p},{nfd if i % 2 else nfc}" for i, p in
                              enumerate(sorted((root / "train" / "normal").iterdir()))]
    lines += [f"{p},normal" for p in sorted((root / "test" / "normal").iterdir())]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = discover(DataConfig(path=str(tmp_path / "m.csv")))
    assert splits.classes == ["normal", nfc] and not splits.rejected


# D12: hidden folders


def test_a_hidden_class_folder_is_ignored_with_a_warning(tmp_path, cache_dir):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for label, name in enumerate(("no", "yes", ".maybe")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            make_image(label % 2, rng).save(root / name / f"{i}.png")
    (root / ".git").mkdir()  # hidden, without images: not worth a word
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    done = _cli("audit", str(root), "--output", str(tmp_path / "audit.json"), cache=cache_dir)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "hidden" in line]
    assert warned == [f"WARNING ignoring hidden folder {(root / '.maybe').resolve()} (its name starts with '.'); "
                      "rename it without the dot to use it as a class"]
    import json

    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["classes"] == ["no", "yes"] and report["images"] == 24
