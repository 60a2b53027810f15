"""Issue 26, hostile images: a DICOM with a malformed header value (D1), a palette-colour DICOM (D26), a float
image with NaN pixels (D14) and class names no default font draws (D13). Each ends in an image, a skipped or
error row with one line, or a figure without warnings; never a traceback."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from fastapi.testclient import TestClient
from matplotlib import font_manager
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut

import medtl
from helpers import TINY
from medtl.data.dicom import read_dicom
from medtl.data.images import Decoding, build_store, decode
from medtl.data.pixels import Unreadable
from medtl.deploy.serve import create_app
from medtl.evaluation.figures import plot_confusions
from medtl.evaluation.fonts import drawable, glyphs

BAD_VR = Path(get_testdata_file("badVR.dcm"))  # NumberOfFrames '1A'
BAD_VR_REASON = "malformed DICOM: NumberOfFrames is '1A', not a whole number; re-export the file"


def pydicom_files() -> list[Path]:
    """Every file pydicom ships for its own tests (test files, DICOMDIR trees, charsets, palettes): what
    `get_testdata_files('*')` finds, read from the package without its download step."""
    root = Path(pydicom.data.__file__).parent
    return sorted(p for folder in ("test_files", "charset_files", "palettes") for p in (root / folder).rglob("*")
                  if p.is_file())


# --- D1: a malformed value is an unreadable image everywhere ------------------------------------------------
def test_a_malformed_dicom_value_is_one_unreadable_line():
    with pytest.raises(Unreadable) as caught:
        read_dicom(BAD_VR)
    assert str(caught.value) == (f"{BAD_VR}: {BAD_VR_REASON} from its source or remove it")
    with pytest.raises(ValueError, match="^upload: malformed DICOM: NumberOfFrames is '1A'"):
        read_dicom(BAD_VR.read_bytes())


@pytest.mark.slow
def test_a_malformed_dicom_is_an_unreadable_image_in_train_predict_explain_audit_and_serve(image_tree, cache_dir,
                                                                                          tmp_path):
    target = image_tree / "train" / "pos" / "badVR.dcm"
    shutil.copy(BAD_VR, target)
    run = medtl.train(image_tree, out=tmp_path / "runs", name="r", **TINY)
    rows = list(csv.DictReader(open(run.folder.skipped)))
    assert [Path(r["path"]).name for r in rows] == ["badVR.dcm"] and BAD_VR_REASON in rows[0]["reason"]
    good = sorted((image_tree / "test" / "pos").iterdir())[:2]
    predicted = run.predict([target, *good])
    assert len(predicted) == 2 and BAD_VR_REASON in predicted.failed[str(target)]
    written, failed = run.explain([target], out=tmp_path / "cams")
    assert not written and BAD_VR_REASON in failed[str(target)] and not list((tmp_path / "cams").glob("*.png"))
    report = medtl.audit(image_tree, perceptual=False)
    assert any(p.endswith("badVR.dcm") and BAD_VR_REASON in why for p, why in report["unreadable"].items())
    answer = TestClient(create_app(run.predictor)).post("/api/predict", files={"file": ("x.dcm", BAD_VR.read_bytes())})
    assert answer.status_code == 415 and "NumberOfFrames is '1A'" in answer.json()["detail"]


@pytest.mark.slow
def test_every_pydicom_test_file_is_a_prediction_row_or_an_error_row(image_tree, cache_dir, tmp_path):
    run = medtl.train(image_tree, out=tmp_path / "runs", name="r", **TINY)
    files = pydicom_files()
    assert len(files) > 150 and BAD_VR in files
    out = tmp_path / "predictions.csv"
    env = {**os.environ, "MEDTL_CACHE": str(cache_dir)}
    done = subprocess.run([sys.executable, "-m", "medtl", "predict", str(run.path), *map(str, files), "--output",
                           str(out), "--engine", "torch", "-q"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "error:" not in done.stderr
    rows = list(csv.DictReader(open(out, newline="")))
    assert sorted(r["path"] for r in rows) == sorted(map(str, files))  # one row per file
    scored = [r for r in rows if not r["error"]]
    assert all(r["predicted"] in ("neg", "pos") for r in scored) and len(scored) > 90
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert all(not r["predicted"] and "\n" not in r["error"] for r in rows if r["error"])
    assert BAD_VR_REASON in errors["badVR.dcm"] and "no pixel data" in errors["rtplan.dcm"]
    assert "examples_palette.dcm" not in errors and "SC_rgb_rle_16bit.dcm" not in errors
    assert not list(tmp_path.glob("*.tmp"))


# --- D26: palette colour, and colour wider than 8 bits -------------------------------------------------------
def test_a_palette_colour_dicom_is_decoded_through_its_lookup_tables():
    path = get_testdata_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    img = read_dicom(path)
    assert img.mode == "RGB" and img.size == (ds.Columns, ds.Rows)
    expected = (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8)  # 16-bit tables: their top byte
    assert np.array_equal(np.asarray(img), expected) and len(np.unique(expected.reshape(-1, 3), axis=0)) > 10
    assert decode(path, 32).shape == (3, 32, 32)


def test_sixteen_bit_rgb_dicom_is_scaled_to_eight_bits():
    wide, narrow = (np.asarray(read_dicom(get_testdata_file(n)), dtype=int)
                    for n in ("SC_rgb_rle_16bit.dcm", "SC_rgb_rle.dcm"))
    assert np.abs(wide - narrow).max() <= 1


def test_a_window_the_file_cannot_apply_falls_back_to_the_full_range(tmp_path, caplog):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 40, 0
    ds.save_as(tmp_path / "w0.dcm")
    with caplog.at_level(logging.WARNING, logger="medtl.data.dicom"):
        img = np.asarray(read_dicom(tmp_path / "w0.dcm"))
    assert img.min() == 0 and img.max() == 255
    assert "its window or VOI LUT is unusable" in caplog.text and "w0.dcm" in caplog.text


# --- D14: NaN and infinite pixels -------------------------------------------------------------------------
def _float_tiff(path: Path, bad: dict[tuple[int, int], float]) -> Path:
    values = np.linspace(0.0, 1.0, 48 * 48, dtype=np.float32).reshape(48, 48)
    for (y, x), v in bad.items():
        values[y, x] = v
    Image.fromarray(values).save(path)
    return path


def test_nan_pixels_are_shown_at_the_lowest_value_with_a_warning(tmp_path, caplog):
    clean = decode(str(_float_tiff(tmp_path / "clean.tiff", {})), 48)
    nan = _float_tiff(tmp_path / "nan.tiff", {(5, 7): np.nan, (9, 9): np.inf})
    with caplog.at_level(logging.WARNING, logger="medtl.data.pixels"):
        out = decode(str(nan), 48)
    assert out.max() == 255 and out.mean() > 100  # not all black
    diff = np.argwhere(out != clean)
    assert out[0, 5, 7] == 0 and out[0, 9, 9] == 255 and len(diff) == 2
    assert f"{nan}: 2 of 2304 pixels are NaN or infinite; shown as the image's lowest finite value" in caplog.text


def test_an_image_without_a_finite_pixel_is_unreadable(tmp_path):
    ref = str(_float_tiff(tmp_path / "all.tiff", {(y, x): np.nan for y in range(48) for x in range(48)}))
    store = build_store([ref], 16, tmp_path / "cache", progress=False, decoding=Decoding())
    assert store.failed == {ref: f"Unreadable: {ref}: all 2304 pixels are NaN or infinite, nothing to show; "
                                 "re-export the image or remove it"}


# --- D13: class names in scripts the default font lacks ---------------------------------------------------
def _drawn(text: str, families: list[str]) -> bool:
    files = [font_manager.findfont(font_manager.FontProperties(family=f)) for f in families]
    return all(c.isspace() or any(ord(c) in glyphs(f) for f in files) for c in text)


def test_cjk_class_names_give_a_figure_without_warnings(tmp_path, capsys, caplog):
    classes = ["肺炎", "正常", "cost $5 and $6"]  # '$' is not TeX either
    splits = {"test": {"confusion_matrix": [[3, 1, 0], [0, 4, 1], [1, 0, 2]], "n": 12}}
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        plot_confusions(tmp_path / "confusion.png", splits, classes)
    err = capsys.readouterr().err  # medtl's own log line may be there (a console handler); no Python warning
    assert not caught and "Warning" not in err and "Glyph" not in err and "missing from font" not in err
    assert Image.open(tmp_path / "confusion.png").size[0] > 100 and not list(tmp_path.glob("*.tmp"))
    lines = [r.getMessage() for r in caplog.records if "no installed font draws" in r.getMessage()]
    labels, families = drawable(classes, "confusion.png")
    assert all(_drawn(label, families) for label in labels)
    assert labels[2] == classes[2]
    if labels[0] != classes[0]:  # no CJK font installed: escaped, and one line says which font to install
        assert labels[:2] == ["\\u80ba\\u708e", "\\u6b63\\u5e38"]
        assert lines == ["confusion.png: no installed font draws 肺炎正常; written escaped (e.g. \\u80ba); install a "
                         "font with those glyphs (for CJK, Noto Sans CJK: Debian/Ubuntu package fonts-noto-cjk)"]
        assert "drawing warning" not in caplog.text


def test_a_glyph_the_default_font_lacks_is_drawn_with_an_installed_font(caplog):
    labels, families = drawable(["a\u2312b"], "x.png")  # ⌒: not in DejaVu Sans; matplotlib's STIX fonts have it
    assert labels == ["a\u2312b"] and len(families) == 2 and _drawn("a\u2312b", families)
    assert not _drawn("a\u2312b", families[:1]) and "no installed font" not in caplog.text


# --- what docs/howto/data.md states: EXIF orientation ignored, first frame only, the same in serve ----------
def test_exif_orientation_is_ignored_and_the_first_frame_is_used_in_training_and_serving(tmp_path):
    from medtl.deploy.uploads import open_upload

    picture = Image.fromarray(np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (20, 1)))  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    picture.save(tmp_path / "tagged.jpg", exif=exif.tobytes(), quality=95)
    picture.save(tmp_path / "plain.jpg", quality=95)
    assert Image.open(tmp_path / "tagged.jpg").getexif()[0x0112] == 6
    assert np.array_equal(decode(str(tmp_path / "tagged.jpg"), 32), decode(str(tmp_path / "plain.jpg"), 32))
    assert open_upload((tmp_path / "tagged.jpg").read_bytes()).size == (40, 20)
    frames = [Image.new("L", (24, 24), v) for v in (30, 220)]
    for name in ("pages.tiff", "anim.gif"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
        assert Image.open(tmp_path / name).n_frames == 2
        assert abs(int(decode(str(tmp_path / name), 16).mean()) - 30) <= 1
        assert abs(int(np.asarray(open_upload((tmp_path / name).read_bytes()).convert("L")).mean()) - 30) <= 1
