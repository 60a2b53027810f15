"""DICOM (windows, HU, bad files), manifests with patients, the dataset audit, and one image mode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage

from helpers import make_image, shared_path, write_dicom
from medtl.data.audit import audit, warnings_for
from medtl.core.config import DataConfig
from medtl.data.sources import discover
from medtl.core.windows import WINDOWS
from medtl.data.dicom import apply_window, read_dicom
from medtl.core.errors import MedtlError
from medtl.data.images import Decoding, decode


def test_ct_hounsfield_units_and_windows_match_pydicom():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = apply_modality_lut(ds.pixel_array, ds)
    assert hu[0, 0] == ds.pixel_array[0, 0] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    centre, width = WINDOWS["lung"]
    lung = np.asarray(read_dicom(path, "lung"))
    expected = np.clip(((hu[0, 0] - (centre - 0.5)) / (width - 1) + 0.5), 0, 1) * 255
    assert lung[0, 0] == round(expected)
    assert np.array_equal(np.asarray(read_dicom(path, "40,400")), apply_window(hu.astype(float), 40, 400))
    stack = np.asarray(read_dicom(path, "stack:lung,mediastinum,bone"))
    assert stack.shape == (*hu.shape, 3) and np.array_equal(stack[..., 0], lung)
    assert not np.array_equal(stack[..., 0], stack[..., 2])
    assert np.asarray(read_dicom(get_testdata_file("MR_small.dcm"))).std() > 10
    frame = read_dicom(get_testdata_file("SC_rgb_rle_2frame.dcm"))  # multi-frame: the first frame
    assert frame.mode == "RGB"


def test_bad_dicom_files_and_windows_say_what_is_wrong(tmp_path):
    jpeg_ls = get_testdata_file("JPEGLSNearLossless_16.dcm")
    assert read_dicom(jpeg_ls).size == (10, 50)  # compressed syntaxes decode through the installed handlers
    video = pydicom.dcmread(jpeg_ls)
    video.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2: no handler decodes it
    video.save_as(tmp_path / "mpeg2.dcm")
    with pytest.raises(ValueError, match="mpeg2.dcm: cannot decode transfer syntax 1.2.840.10008.1.2.4.100 .*gdcmconv"):
        read_dicom(tmp_path / "mpeg2.dcm")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(ValueError, match="nopixels.dcm has no pixel data"):
        read_dicom(tmp_path / "nopixels.dcm")
    with pytest.raises(ValueError, match="valid: auto .*lung"):
        read_dicom(get_testdata_file("CT_small.dcm"), "lungs")
    with pytest.raises(MedtlError, match="data.dicom_window: .*stack takes three windows"):
        DataConfig(dicom_window="stack:lung,bone")  # refused when the config is made


def _write_ct(path: Path, hu: np.ndarray) -> None:
    """A minimal CT DICOM file with 16-bit stored values and a rescale to HU."""
    write_dicom(path, hu + 1024, CTImageStorage, Modality="CT", RescaleSlope=1, RescaleIntercept=-1024)


@pytest.mark.slow
def test_a_dicom_folder_trains_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 6)):
        for label, name in enumerate(("clear", "nodule")):
            (tmp_path / "ct" / split / name).mkdir(parents=True)
            for i in range(n):
                img = np.asarray(make_image(label, rng, 32, varied=False), float) * 6 - 900  # roughly lung HU
                _write_ct(tmp_path / "ct" / split / name / f"{i}.dcm", img)
    assert np.asarray(read_dicom(tmp_path / "ct" / "train" / "clear" / "0.dcm", "lung")).std() > 5
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "medtl", "train", str(tmp_path / "ct"), "--strategy", "linear",
                           "--image-size", "32", "--epochs", "3", "--set", "data.dicom_window=lung", "--out",
                           str(tmp_path / "runs"), "--name", "ct", "--quiet"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "runs" / "ct" / "metrics.json").read_text())
    assert metrics["splits"]["test"]["n"] == 12 and metrics["splits"]["test"]["auc"] > 0.7


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 1)), min_size=12, max_size=30), st.integers(0, 5))
def test_a_patient_never_lands_in_two_splits(tmp_path, patients, seed):
    """Each patient has 1-4 images of one label; carved val and test must keep every patient whole."""
    folder = tmp_path / f"m{seed}-{len(patients)}-{abs(hash(tuple(patients))) % 10**8}"
    folder.mkdir()
    lines, count = ["path,label,patient_id"], 0
    for pid, (n, label) in enumerate(patients):
        for _ in range(n):
            (folder / f"{count}.png").write_bytes(b"")  # existence is all discovery checks
            lines.append(f"{count}.png,{'yes' if label else 'no'},P{pid}")
            count += 1
    if len({label for _, label in patients}) < 2:
        return
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    try:
        splits = discover(DataConfig(path=str(folder / "m.csv"), val_fraction=0.2, test_fraction=0.2), seed)
    except MedtlError as exc:
        assert "too few" in str(exc) or "need at least" in str(exc) or "one class" in str(exc)
        return
    owner = {}
    for split, refs in splits.refs.items():
        for ref in refs:
            assert owner.setdefault(splits.groups[ref], split) == split
    assert sum(len(r) for r in splits.refs.values()) == count


@pytest.mark.slow
def test_manifest_rows_that_cannot_be_used_are_listed_or_fatal(tmp_path, cache_dir):
    rng = np.random.default_rng(0)
    lines = ["file,diagnosis,split"]
    for i in range(24):
        make_image(i % 2, rng).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png,{'pos' if i % 2 else 'neg'},{'test' if i >= 18 else 'train'}")
    make_image(0, rng).save(tmp_path / "24.png")  # its own file: 0.png listed again with another label is fatal
    lines += ["missing.png,pos,train", "24.png,unknown,test"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    base = [sys.executable, "-m", "medtl", "train", str(tmp_path / "m.csv"), "--strategy", "linear",
            "--image-size", "32", "--epochs", "2", "--out", str(tmp_path / "runs"), "--quiet"]
    env = {**os.environ, "MEDTL_CACHE": str(cache_dir)}
    done = subprocess.run(base + ["--name", "ok"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    skipped = (tmp_path / "runs" / "ok" / "skipped.csv").read_text()
    assert "m.csv row 26: file 'missing.png' not found" in skipped
    assert "m.csv row 27: label 'unknown' is not a class" in skipped
    strict = subprocess.run(base + ["--name", "strict", "--strict"], capture_output=True, text=True, env=env)
    assert strict.returncode == 2 and "row 26" in strict.stderr and not (tmp_path / "runs" / "strict").exists()
    (tmp_path / "p.csv").write_text("path,label,patient,split\n0.png,neg,A,train\n2.png,neg,A,test\n1.png,pos,B,train\n")
    with pytest.raises(MedtlError, match="the patient of rows 2, 3 is in test, train;") as refused:
        discover(DataConfig(path=str(tmp_path / "p.csv")))
    assert "'A'" not in str(refused.value)  # rows, never the patient's ID


def test_one_mode_makes_rgba_and_rgb_files_identical(tmp_path):
    img = make_image(1, np.random.default_rng(0), 40, "RGB")
    rgba = img.copy()
    rgba.putalpha(Image.fromarray(np.full((40, 40), 128, np.uint8)))
    img.save(tmp_path / "a.png")
    rgba.save(tmp_path / "b.png")
    assert not np.array_equal(decode(str(tmp_path / "a.png"), 32), decode(str(tmp_path / "b.png"), 32))
    same = Decoding(mode="RGB")
    assert np.array_equal(decode(str(tmp_path / "a.png"), 32, same), decode(str(tmp_path / "b.png"), 32, same))


def test_audit_finds_truncated_files_and_cross_split_copies(image_tree):
    victim = next((image_tree / "train" / "pos").iterdir())
    (image_tree / "test" / "pos" / "copy.png").write_bytes(victim.read_bytes())
    data = (image_tree / "train" / "neg" / "neg_0.png").read_bytes()
    (image_tree / "train" / "neg" / "neg_0.png").write_bytes(data[: len(data) // 2])
    report = audit(discover(DataConfig(path=str(image_tree))))
    assert list(report["unreadable"]) == [str((image_tree / "train" / "neg" / "neg_0.png").resolve())]
    cross = [g for g in report["exact_duplicates"] if len(g["splits"]) > 1]
    assert len(cross) == 1 and any(r.endswith("copy.png") for r in cross[0]["refs"])
    assert any("span splits" in w for w in warnings_for(report))


@pytest.mark.slow
@pytest.mark.shared_data
def test_audit_of_the_real_sets_finds_their_known_problems():
    covid = audit(discover(DataConfig(path=str(shared_path("covid_ct_ucsd")))), perceptual=False)
    shortcuts = {s["property"]: s for s in covid["shortcuts"]}
    assert shortcuts["mode"]["only_in_one_class"] == {"RGBA": "CT_COVID"} and "size" in shortcuts
    brain = audit(discover(DataConfig(path=str(shared_path("brain_mri_yes_no")))), perceptual=False)
    assert len(brain["exact_duplicates"]) == 22  # the 22 byte-identical groups the data README lists
    mnist = audit(discover(DataConfig(path=str(shared_path("medmnist", "pneumoniamnist.npz")))), perceptual=False)
    train_val = [g for g in mnist["exact_duplicates"] if {"train", "val"} <= set(g["splits"])]
    assert train_val and all("::" in r for g in train_val for r in g["refs"])
