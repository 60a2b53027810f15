"""Studies: grid, resume after SIGKILL, report (paired tests, figures) checked in headless Chromium."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medtl.experiments.study.compare import Run, _mcnemar, paired_tests
from medtl.core.errors import MedtlError
from medtl.experiments.study.grid import load_study

STUDY = """name: tiny
out: {out}
base:
  data: {{path: {data}, image_size: 32}}
  train: {{epochs: 2, batch_size: 16}}
grid:
  backbone: [efficientnet_lite0]
  strategy: [linear, scratch]
  lr: [0.001, 0.0001]
  seed: [0, 1]
exclude:
  - {{strategy: scratch, lr: 0.0001}}
"""


def _write(tmp_path, image_tree, out) -> Path:
    path = tmp_path / f"{Path(out).name}.yaml"
    path.write_text(STUDY.format(out=out, data=image_tree))
    return path


def _study(config, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "medtl", "study", str(config), "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _metrics(root: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text())["splits"] for p in sorted(root.glob("runs/*/metrics.json"))}


@pytest.mark.slow
def test_killed_study_resumes_to_exactly_the_uninterrupted_runs(image_tree, tmp_path):
    env = {**os.environ, "MEDTL_CACHE": str(tmp_path / "cache")}
    whole = _study(_write(tmp_path, image_tree, tmp_path / "whole"), env)
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    killed_cfg = _write(tmp_path, image_tree, tmp_path / "killed")
    proc = _study(killed_cfg, env)
    runs = tmp_path / "killed" / "tiny" / "runs"
    deadline = time.monotonic() + 300
    while len(list(runs.glob("*/metrics.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-study: two runs done, the third under way
    proc.wait()
    done_before = set(p.parent.name for p in runs.glob("*/metrics.json"))
    assert 2 <= len(done_before) < 6
    stamps = {n: (runs / n / "metrics.json").stat().st_mtime_ns for n in done_before}
    again = _study(killed_cfg, env)
    assert again.wait(timeout=600) == 0, again.stderr.read()
    assert {n: (runs / n / "metrics.json").stat().st_mtime_ns for n in done_before} == stamps  # not redone
    whole_m, resumed_m = _metrics(tmp_path / "whole" / "tiny"), _metrics(tmp_path / "killed" / "tiny")
    assert sorted(whole_m) == sorted(resumed_m) and len(whole_m) == 6
    for name in whole_m:
        for split in ("val", "test"):
            for key in ("loss", "accuracy", "auc"):
                assert resumed_m[name][split][key] == pytest.approx(whole_m[name][split][key], abs=1e-6), name


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    from helpers import write_tree
    tmp = tmp_path_factory.mktemp("study")
    write_tree(tmp / "data")
    config = _write(tmp, tmp / "data", tmp / "out")
    proc = _study(config, {**os.environ, "MEDTL_CACHE": str(tmp / "cache")})
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    return tmp / "out" / "tiny"


@pytest.mark.slow
def test_report_tables_and_paired_tests(tiny_report):
    md = (tiny_report / "report.md").read_text()
    assert md.count("| efficientnet_lite0 |") == 3  # linear x 2 learning rates, scratch x 1
    assert "Each configuration vs scratch" in md and "efficientnet_lite0 linear lr=0.0001" in md
    assert "**" in md  # best per column marked
    rows = (tiny_report / "report.csv").read_text().splitlines()
    assert len(rows) == 4 and "accuracy_mean" in rows[0] and "gmean_std" in rows[0]
    for name in ("curves.png", "metrics.png", "roc.png", "confusion.png"):
        assert (tiny_report / "figures" / name).stat().st_size > 5000


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tiny_report):
    chromium = "/usr/bin/chromium"
    if not shutil.which(chromium):
        pytest.skip(f"{chromium} is absent (.ci/run installs Debian's chromium)")
    from playwright.sync_api import sync_playwright
    artifacts = Path(os.environ.get("MEDTL_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((tiny_report / "report.html").as_uri())
        page.wait_for_load_state("load")
        sizes = page.evaluate("[...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        assert len(sizes) == 4 and all(done and width > 100 for _, done, width in sizes), sizes
        assert page.locator("td.best").count() >= 5
        page.screenshot(path=str(artifacts / "study_report.png"), full_page=True)
        browser.close()
    assert (artifacts / "study_report.png").stat().st_size > 50_000


def _run(strategy: str, seed: int, predicted, labels, p1) -> Run:
    probs = np.stack([1 - np.asarray(p1, float), np.asarray(p1, float)], 1)
    group = (("model.backbone", "b"), ("model.strategy", strategy))
    return Run(Path(f"/{strategy}{seed}"), group, seed, {}, 0.0, history=[], labels=np.asarray(labels), probs=probs,
               predicted=np.asarray(predicted), classes=["neg", "pos"])


def test_mcnemar_and_bootstrap_interval_on_known_pairs():
    labels = np.array([0, 1] * 20)
    good = _run("linear", 0, labels, labels, labels * 0.8 + 0.1)
    wrong = labels.copy()
    wrong[:12] = 1 - wrong[:12]  # scratch wrong on 12 images where transfer is right
    bad = _run("scratch", 0, wrong, labels, wrong * 0.6 + 0.2)  # its probabilities follow its errors: AUC 0.70
    assert _mcnemar(good, bad) == pytest.approx(2 * 0.5 ** 12)
    (test,) = paired_tests([good, bad])
    assert test["configuration"] == "b linear" and test["reference"] == "b scratch" and test["seeds"] == 1
    assert test["auc_difference"] == pytest.approx(0.30) and test["auc_ci_low"] > 0.1
    assert _mcnemar(good, good) == 1.0


def test_a_named_reference_pairs_each_configuration_with_it():
    """compare_to: {strategy: auto, head_init: probe}: plain fine-tuning (head_init random) is still paired with
    auto's probe runs, the reference itself is not tested, and the seeds pair up."""
    labels = np.array([0, 1] * 20)
    def run(strategy, head, seed, p1):
        group = (("model.strategy", strategy), ("train.head_init", head))
        predicted = (np.asarray(p1) > 0.5).astype(int)
        return Run(Path(f"/{strategy}{head}{seed}"), group, seed, {}, 0.0, history=[], labels=labels,
                   probs=np.stack([1 - np.asarray(p1, float), np.asarray(p1, float)], 1), predicted=predicted,
                   classes=["neg", "pos"])
    runs = [run("auto", "probe", s, labels * 0.8 + 0.1) for s in (0, 1)]
    runs += [run("full", "random", s, np.full(40, 0.5) + 0.1 * (s - 0.5) * labels) for s in (0, 1)]
    runs += [run("linear", "random", 0, labels * 0.6 + 0.2)]
    tests = paired_tests(runs, {"model.strategy": "auto", "train.head_init": "probe"})
    assert [(t["configuration"], t["reference"], t["seeds"]) for t in tests] == [
        ("full head_init=random", "auto head_init=probe", 2), ("linear head_init=random", "auto head_init=probe", 1)]
    assert tests[0]["auc_difference"] < 0 and tests[1]["auc_difference"] == pytest.approx(0.0)


GRID = "grid: {strategy: [linear, full], head_init: [random, probe]}\n"


@pytest.mark.parametrize("rule, message", [
    ("{strategy: auto}", "compare_to model.strategy=auto is not a grid value; choose from linear, full"),
    ("{lr: 0.1}", "compare_to names train.lr, which is not in the grid"),
    ("full", "compare_to must be a mapping"),
    ("{strategy: linear, head_init: probe}\nexclude: [{strategy: linear, head_init: probe}]",
     "matches no run of the grid")])
def test_compare_to_must_name_a_grid_point_that_runs(tmp_path, rule, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"{GRID}compare_to: {rule}\n")
    with pytest.raises(MedtlError, match=message):
        load_study(bad)


def test_compare_to_values_read_as_the_runs_configs_hold_them(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("grid: {strategy: [linear, full], label_smoothing: [0.0, 0.1], lr: [1e-3, 1e-4]}\n"
                     "compare_to: {strategy: full, label_smoothing: 0, lr: 0.001}\n")
    assert load_study(study).compare_to == {"model.strategy": "full", "train.label_smoothing": "0.0",
                                            "train.lr": "0.001"}


def test_bad_study_files_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {backbone: [efficientnet_lite0]}\nmystery: 1\n")
    with pytest.raises(MedtlError, match="unknown keys \\['mystery'\\]; valid: name, out, base, grid, exclude"):
        load_study(bad)
    bad.write_text("grid: {backbone: efficientnet_lite0}\n")
    with pytest.raises(MedtlError, match="grid.backbone must be a non-empty list"):
        load_study(bad)
    bad.write_text("grid: {backbone: [resnet19]}\n")
    with pytest.raises(MedtlError, match="did you mean resnet18"):
        load_study(bad)
    with pytest.raises(MedtlError, match="not found"):
        load_study(tmp_path / "missing.yaml")
