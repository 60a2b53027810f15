"""The command line end to end on a small real subset, and bad input: one line, exit code 2."""

import json
import os
import subprocess
import sys
import urllib.error

import pytest

from conftest import kermany_links
from medtl import cli
from medtl.models import backbones


def _medtl(*args, env_cache):
    env = {**os.environ, "MEDTL_CACHE": str(env_cache)}
    return subprocess.run([sys.executable, "-m", "medtl", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture
def kermany_subset(tmp_path):
    """Links to 40 train and 12 test images per class of the real Kermany set."""
    return kermany_links(tmp_path / "kermany", train=40, test=12)


@pytest.mark.slow
def test_train_then_evaluate_on_real_xrays(kermany_subset, tmp_path):
    out = tmp_path / "runs"
    done = _medtl("train", kermany_subset, "--backbone", "efficientnet_lite0", "--strategy", "linear", "--epochs", 8,
                  "--image-size", 128, "--out", out, "--name", "e2e", "--quiet", env_cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    run_dir = out / "e2e"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["splits"]["test"]
    assert test["n"] == 24 and test["auc"] > 0.6  # 80 training images at 128 px: well above chance
    assert "test: accuracy" in done.stdout
    rescored = _medtl("evaluate", run_dir, kermany_subset, "--output", tmp_path / "m.json", "--quiet",
                      env_cache=tmp_path / "cache")
    assert rescored.returncode == 0, rescored.stderr
    assert json.loads((tmp_path / "m.json").read_text())["auc"] == pytest.approx(test["auc"], abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["train", "/nonexistent/xrays"], "data path '/nonexistent/xrays' does not exist"),
    (["train", "{tree}", "--backbone", "resnet19"], "did you mean resnet18"),
    (["train", "{tree}/train/neg"], "no class folders in"),
    (["train", "{tree}", "--strategy", "frozen"], "valid: scratch, linear, partial, full"),
    (["evaluate", "{tmp}/missing_run", "{tree}"], "checkpoint.pt not found"),
])
@pytest.mark.slow
def test_bad_input_exits_2_with_one_line(image_tree, tmp_path, args, message):
    args = [a.format(tree=image_tree, tmp=tmp_path) for a in args]
    done = _medtl(*args, "--quiet", env_cache=tmp_path / "cache")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr


def test_weights_not_available_offline(image_tree, tmp_path, monkeypatch, capsys):
    def offline(name):
        class W:
            url = "https://example.invalid/w.pth"

            def get_state_dict(self, progress):
                raise urllib.error.URLError("offline")
        return type("Weights", (), {"DEFAULT": W()})

    monkeypatch.setattr(backbones.tvm, "get_model_weights", offline)
    monkeypatch.setattr(sys, "argv", ["medtl", "train", str(image_tree), "--backbone", "resnet18",
                                      "--strategy", "linear", "--out", str(tmp_path / "runs"), "--quiet"])
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "cannot download ImageNet weights for 'resnet18'" in err and "--weights /path/to/file.pth" in err
    assert not (tmp_path / "runs").exists()
