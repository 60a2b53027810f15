"""Shift and referral on real images: a linear Lite0 run on Kermany X-rays keeps its feature reference; brain
MRI images are shifted and unlike the training images, held-out X-rays are not; predict, the API, serve's JSON
and its page (in Chromium) carry the per-image flag and "refer"."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from helpers import cli_in_process, shared_path
from medtl import api
from medtl.data.sources import expand_inputs
from medtl.deploy.predictor import Predictor
from medtl.deploy.serve import create_app
from medtl.evaluation.conformal import referral_section
from medtl.evaluation.shift import REFERENCE_FILE, dataset_shift, load_reference, shift_section, unlike_scores
from medtl.training.reference import reference_for_run

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]  # each builds a real run first
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("MEDTL_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


@pytest.fixture(scope="module")
def referenced(xray_run, tmp_path_factory):
    """A copy of the X-ray run with its feature reference (made from its training data, as a run made before
    medtl kept one gets it)."""
    run_dir, root = xray_run
    copy = tmp_path_factory.mktemp("referenced") / "xray"
    shutil.copytree(run_dir, copy)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDTL_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert reference_for_run(copy) == copy / REFERENCE_FILE
    return copy, root


def _brain() -> list[Path]:
    return sorted(expand_inputs([shared_path("brain_mri_yes_no")]))


def _held_out_xrays() -> list[Path]:
    """Kermany training images the run never saw (it used the first 60 per class)."""
    source = shared_path("chest_xray_kermany_224", "train")
    return [p for c in ("NORMAL", "PNEUMONIA") for p in sorted((source / c).iterdir())[100:160]]


def _outputs(pred: Predictor, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    parts = [pred.outputs(torch.stack([pred.load(p) for p in paths[i:i + 32]])) for i in range(0, len(paths), 32)]
    return np.concatenate([p for p, _ in parts]), np.concatenate([f for _, f in parts])


def test_brain_mri_is_shifted_and_held_out_xrays_are_not(referenced):
    run_dir, _ = referenced
    ref = load_reference(run_dir)
    assert ref.train.shape[1] == 1280 and len(ref.cal_scores) == len(ref.val)  # Lite0's features; all of val
    pred = Predictor.from_run(run_dir, engine="torch")
    probs, brain = _outputs(pred, _brain())
    _, xrays = _outputs(pred, _held_out_xrays())
    shifted, alike = dataset_shift(ref, brain, seed=0), dataset_shift(ref, xrays, seed=0)
    assert shifted["shifted"] and shifted["verdict"].startswith("shifted: ")
    assert shifted["new_vs_train"]["auc"] > 0.95 and shifted["new_vs_validation"]["p_value"] <= 0.05
    assert not alike["shifted"] and alike["verdict"].startswith("like the training images")
    assert unlike_scores(ref, brain)[1].mean() > 0.9  # per image: nearly every MRI is flagged
    assert unlike_scores(ref, xrays)[1].mean() < 0.15  # ~1 in (validation images + 1) by construction
    section = shift_section(ref, brain, seed=0)
    assert section["per_image"]["flagged"] == int(unlike_scores(ref, brain)[1].sum())
    referral = referral_section(ref, probs, None, 0.9)
    assert referral["images"] == len(brain) and 0 <= referral["referral_rate"] <= 1


def test_predict_writes_the_flag_and_referral_and_old_runs_say_not_available(referenced, xray_run, tmp_path,
                                                                             monkeypatch, capsys):
    run_dir, _ = referenced
    images = _brain()[:20] + _held_out_xrays()[:20]
    out = tmp_path / "p.csv"
    code, stdout, _ = cli_in_process(monkeypatch, capsys, "predict", run_dir, *images, "-o", out, "--engine",
                                     "torch", "--coverage", "0.9", "-q")
    assert code == 0, stdout
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0])[-6:] == ["unlike_percentile", "unlike_training", "prediction_set", "refer", "coverage",
                                  "error"]
    assert [r["unlike_training"] for r in rows[:20]].count("yes") >= 18  # the MRIs
    assert [r["unlike_training"] for r in rows[20:]].count("yes") <= 4  # the X-rays
    assert {r["refer"] for r in rows} <= {"yes", "no"} and {r["coverage"] for r in rows} == {"0.9"}
    referred = sum(r["refer"] == "yes" for r in rows)
    assert f"{referred} of 40 to refer" in stdout
    api_rows = api.Run.load(run_dir).predict(images[:3], engine="torch", coverage=0.95)
    assert {"unlike_percentile", "unlike_training", "prediction_set", "refer"} <= set(api_rows[0])
    assert api_rows[0]["unlike_training"] is True and isinstance(api_rows[0]["prediction_set"], list)
    code, _, err = cli_in_process(monkeypatch, capsys, "predict", run_dir, images[0], "-o", out, "--coverage", "1.5")
    assert code == 2 and err.strip() == ("error: --coverage 1.5 is not a coverage; pass a fraction between 0 and 1, "
                                         "e.g. --coverage 0.9")
    old = tmp_path / "old.csv"  # a run without reference.npz: predictions as before, the new cells empty
    old_run = tmp_path / "old_run"  # runs write reference.npz now: a copy without it is a run made before
    shutil.copytree(xray_run[0], old_run)
    (old_run / "reference.npz").unlink()
    code, stdout, _ = cli_in_process(monkeypatch, capsys, "predict", old_run, images[0], "-o", old, "-q")
    assert code == 0 and "not available: the run was made before medtl kept reference.npz" in stdout
    (row,) = csv.DictReader(old.open())
    assert row["predicted"] and row["unlike_training"] == row["refer"] == row["coverage"] == ""


def _referred_mri(run_dir: Path) -> Path:
    """An MRI that the run flags and refers at coverage 0.9 (found through the API)."""
    rows = api.Run.load(run_dir).predict(_brain()[:40], engine="torch", coverage=0.9)
    found = [r["path"] for r in rows if r["refer"] and r["unlike_training"]]
    assert found, "no MRI among the first 40 is referred"
    return Path(found[0])


def test_api_json_carries_the_flag_and_referral(referenced):
    run_dir, _ = referenced
    image = _referred_mri(run_dir)
    client = TestClient(create_app(Predictor.from_run(run_dir)))
    body = client.post("/api/predict", files={"file": (image.name, image.read_bytes())}).json()
    assert body["unlike_training"] is True and body["unlike_percentile"] == 100.0
    assert body["refer"] is True and body["coverage"] == 0.9 and isinstance(body["prediction_set"], list)
    assert client.get("/api/info").json()["coverage"] == 0.9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_browser_page_shows_unlike_and_refer(referenced):
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (.ci/run installs Debian's chromium: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    run_dir, root = referenced
    image = _referred_mri(run_dir)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "medtl", "serve", str(run_dir), "--port", str(port),
                             "--coverage", "0.9"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "api/info", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "medtl serve did not start"
                time.sleep(0.5)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            for path, unlike in ((image, "yes"), (sorted((root / "test" / "NORMAL").iterdir())[0], None)):
                page.set_input_files("#file", str(path))
                page.click("#submit")
                page.wait_for_function("document.getElementById('predicted').textContent && "
                                       "!document.getElementById('result').hidden", timeout=60_000)
                if unlike:
                    assert page.inner_text("#unlike").startswith("Unlike the training images: yes")
                    assert page.inner_text("#referral").startswith("Refer: not sure at 90% coverage")
                    page.screenshot(path=str(ARTIFACTS / "serve_refer_unlike.png"), full_page=True)
                    page.evaluate("document.getElementById('result').hidden = true")
                else:
                    assert page.inner_text("#unlike").startswith("Unlike the training images: ")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (ARTIFACTS / "serve_refer_unlike.png").stat().st_size > 10_000
