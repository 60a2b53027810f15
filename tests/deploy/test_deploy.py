"""After training: predict, explain (Grad-CAM), export (ONNX, TorchScript) on a model trained on real X-rays."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from medtl.core.errors import MedtlError
from medtl.deploy.explain import cams, mass_outside_center, report_grid
from medtl.deploy.export import export
from medtl.data.images import open_image
from medtl.deploy.predictor import Predictor

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]  # each builds a real run first


def _test_images(root):
    return sorted(str(p) for p in (root / "test").rglob("*.jpeg"))


def test_predict_matches_the_runs_own_test_scores_and_lists_unreadable(xray_run, tmp_path):
    run_dir, root = xray_run
    (tmp_path / "notes.png").write_text("not an image")
    out = tmp_path / "pred.csv"
    dicom = get_testdata_file("CT_small.dcm")
    done = subprocess.run([sys.executable, "-m", "medtl", "predict", str(run_dir), str(root / "test"),
                           str(tmp_path / "notes.png"), dicom, "--output", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = {r["path"]: r for r in csv.DictReader(open(out))}
    assert len(rows) == 32 + 2 and "notes.png" in done.stderr
    assert rows[str(tmp_path / "notes.png")]["error"].startswith("UnidentifiedImageError")
    assert rows[dicom]["predicted"] in ("NORMAL", "PNEUMONIA")  # a CT slice is read, if out of domain
    saved = {r["path"]: r for r in csv.DictReader(open(run_dir / "predictions_test.csv"))}
    for path, r in saved.items():  # the same pixels and threshold as evaluation
        assert float(rows[path]["prob_PNEUMONIA"]) == pytest.approx(float(r["prob_PNEUMONIA"]), abs=1e-5)
        assert rows[path]["predicted"] == r["predicted"]


def test_gradcam_heat_lies_inside_the_image(xray_run):
    """A map spread evenly puts 36.5% of its heat outside the central crop with 10% margins; the rim holds
    the film edge, letters and the 'R' marker. We require the mean over the 32 test X-rays below 30%,
    well under uniform, and every map to be a proper 0..1 map of the image size."""
    run_dir, root = xray_run
    pred = Predictor.from_run(run_dir)
    x = torch.stack([pred.pixels(open_image(p)) for p in _test_images(root)])
    for method in ("gradcam", "gradcam++"):
        maps, classes = cams(pred, x, method)
        assert maps.shape == (32, 128, 128) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
        assert np.array_equal(classes, pred.decide(pred.probabilities(x)))
        outside = [mass_outside_center(m, 0.1) for m in maps]
        assert np.mean(outside) < 0.30, (method, np.mean(outside))
    assert mass_outside_center(np.ones((128, 128)), 0.1) == pytest.approx(0.365, abs=1e-3)


def test_report_grid_renders(xray_run):
    from PIL import Image
    run_dir, _ = xray_run
    path = report_grid(run_dir)
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"))
    assert arr.shape[0] > 500 and arr.shape[1] > 800
    assert arr.std() > 20  # overlays drawn, not a blank canvas


def test_onnx_matches_pytorch_on_32_real_images_and_runs_without_torch(xray_run, tmp_path):
    run_dir, root = xray_run
    images = _test_images(root)
    path, diff = export(run_dir, "onnx", tmp_path / "model.onnx", images)
    assert len(images) == 32 and diff <= 1e-4
    pred = Predictor.from_run(run_dir)
    expected = pred.probabilities(torch.stack([pred.pixels(open_image(p)) for p in images[:4]]))
    script = f"""
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image
s = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"])
meta = s.get_modelmeta().custom_metadata_map
size = int(meta["medtl.image_size"])
x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BILINEAR),
              dtype=np.float32).transpose(2, 0, 1) / 255 for p in {images[:4]!r}])
print(json.dumps({{"probs": s.run(None, {{"pixels": x}})[0].tolist(), "classes": json.loads(meta["medtl.classes"]),
                  "torch": "torch" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["torch"] is False and out["classes"] == ["NORMAL", "PNEUMONIA"]
    np.testing.assert_allclose(np.array(out["probs"]), expected, atol=1e-4)


def test_torchscript_export_and_a_failed_parity_check_is_loud(xray_run, tmp_path):
    run_dir, root = xray_run
    path, diff = export(run_dir, "torchscript", tmp_path / "m.pt", _test_images(root)[:4])
    assert path.is_file() and diff <= 1e-5
    loaded = torch.jit.load(str(path))
    assert loaded(torch.rand(2, 3, 128, 128)).shape == (2, 2)
    with pytest.raises(MedtlError, match="differ from PyTorch"):
        export(run_dir, "torchscript", tmp_path / "m2.pt", None, tolerance=-1.0)
    with pytest.raises(MedtlError, match="valid: onnx, torchscript"):
        export(run_dir, "tflite")
