"""Validating a run at a new site (issue 24: evaluation folder, operating points, local recalibration, copies of
training and validation images): on real image files, through the command line and the Python API."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import medtl
from medtl.core.errors import MedtlError
from medtl.data.image_keys import write_image_keys
from medtl.data.sources import discover
from medtl.deploy.evaluation_folder import Evaluation, EvaluationFolder
from medtl.deploy.options import EvaluateOptions
from medtl.deploy.recalibrate import recalibrate_part
from medtl.deploy.scoring import Scored
from medtl.evaluation import operating
from medtl.evaluation.metrics import binary_metrics
import helpers
from helpers import cli_in_process, make_image, shared_path

TINY = {**helpers.TINY, "bootstrap": 200}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on a generated split tree (its image keys written as training's end writes them), and a
    site folder with other class names: 8 + 8 new images, an exact copy of a train image, of a val image, a
    re-encoded (near) copy of a train image, and one new image twice."""
    root = tmp_path_factory.mktemp("site")
    helpers.write_tree(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDTL_CACHE", str(root / "cache"))
        run = medtl.train(root / "data", out=root / "runs", name="r", **TINY)
    splits = discover(run.config.data, run.config.data.split_seed)
    write_image_keys(run.path, splits)
    site = root / "site"
    rng = np.random.default_rng(7)
    for label, name in enumerate(("healthy", "sick")):
        (site / name).mkdir(parents=True)
        for i in range(8):
            make_image(label, rng).save(site / name / f"{name}_{i}.png")
    train_pos = next(r for r in splits.refs["train"] if "/pos/" in r)
    val_neg = next(r for r in splits.refs["val"] if "/neg/" in r)
    shutil.copy(train_pos, site / "sick" / "copy_of_train.png")
    shutil.copy(val_neg, site / "healthy" / "copy_of_val.png")
    Image.open(next(r for r in splits.refs["train"] if "/neg/" in r)).save(site / "healthy" / "near.jpg", quality=95)
    shutil.copy(site / "sick" / "sick_0.png", site / "sick" / "sick_0_again.png")
    return run, site, root


MAP = "healthy=neg,sick=pos"


def test_evaluate_writes_a_folder_that_reads_back(trained, tmp_path, monkeypatch, capsys):
    run, site, root = trained
    monkeypatch.setenv("MEDTL_CACHE", str(root / "cache"))
    out = tmp_path / "eval"
    code, stdout, err = cli_in_process(monkeypatch, capsys, "evaluate", run.path, site, "--classes", MAP,
                                       "--output-dir", out, "--quiet")
    assert code == 0, err
    folder = EvaluationFolder(out)
    for path in (folder.metrics, folder.predictions, folder.copies, folder.roc, folder.decision_curve,
                 folder.reliability, folder.confusion):
        assert path.is_file(), path
    ev = Evaluation.load(out)
    assert ev.metrics["n"] == 20 and ev.class_map == {"healthy": "neg", "sick": "pos"}
    assert set(ev.metrics["ci95"]) >= {"auc", "sensitivity", "specificity"} and "ece" in ev.metrics["calibration"]
    assert ev.threshold == pytest.approx(run.metrics["threshold"], abs=1e-9)  # the run's own, by default
    assert ev.operating_point["validation"]["sensitivity_ci95"] is not None
    rows = list(csv.DictReader(open(folder.predictions)))
    assert len(rows) == 20 and {r["label"] for r in rows} == {"neg", "pos"}
    kind = {Path(r["path"]).name: (r["copy"], r["copy_of"]) for r in rows}
    assert kind["copy_of_train.png"] == ("exact", "train") and kind["copy_of_val.png"] == ("exact", "val")
    assert kind["near.jpg"][0] == "near"
    assert ev.copies["exact_train"] == 1 and ev.copies["exact_val"] == 1 and ev.copies["copies"] >= 3
    assert ev.without_copies["n"] == 20 - ev.copies["copies"] == 20 - ev.without_copies["removed"]
    assert f"evaluation folder: {out}" in stdout and "operating point youden" in stdout
    # the shift test and conformal referral, from the run's reference (too few images here for the data-set test)
    assert ev.shift["verdict"].startswith("not available: the test needs 10 images")
    assert ev.referral["available"] and 0 <= ev.referral["referral_rate"] <= 1 and "coverage_reached" in ev.referral


def test_a_run_without_image_keys_says_copies_were_not_checked(trained, tmp_path, monkeypatch):
    run, site, root = trained
    monkeypatch.setenv("MEDTL_CACHE", str(root / "cache"))
    old = tmp_path / "old"
    shutil.copytree(run.path, old)
    (old / "image_keys.json").unlink()
    ev = medtl.Run.load(old).evaluate(site, classes=MAP, output_dir=tmp_path / "e")
    assert ev.copies == {"checked": False, "note": "copies not checked (run made before runs kept image_keys.json: "
                                                   "the digests of their train/val images)"}
    assert ev.without_copies is None and not EvaluationFolder(tmp_path / "e").copies.exists()
    assert json.loads(EvaluationFolder(tmp_path / "e").metrics.read_text())["copies"]["checked"] is False


@pytest.mark.parametrize("args, line", [
    ([], "error: {site} has classes ['healthy', 'sick'] that the model was not trained on (['neg', 'pos']); pass "
         "data whose class folders are among the run's classes, or map them onto the run's with --classes NEW=OLD"),
    (["--classes", "healthy=neg,sick=nope"], "error: --classes sick=nope: the run has no class 'nope' (its classes: "
                                             "neg, pos); name one of the run's classes on the right of '='"),
    (["--classes", "ill=pos"], "error: --classes ill=pos: {site} has no class 'ill' (its classes: healthy, sick); "
                               "name a class of the data on the left of '='"),
    (["--classes", "healthy"], "error: --classes 'healthy': 'healthy' is not NEW=OLD; give the data's class and the "
                               "run's class it means, comma-separated, e.g. --classes 0=NORMAL,1=PNEUMONIA"),
    (["--classes", MAP, "--threshold", "sensitivity>=1.5"], "error: --threshold 'sensitivity>=1.5' is not an "
     "operating point; valid: youden, f1, a number between 0 and 1 (e.g. 0.5), sensitivity>=0.95 or specificity>=0.90"),
    (["--classes", MAP, "--temperature"], "error: --temperature refits a temperature on a calibration part: give "
     "--calibrate-fraction too (e.g. 0.2), or use `medtl calibrate RUN LOCAL_DATA --temperature`"),
])
def test_bad_requests_fail_in_one_line_and_write_nothing(trained, tmp_path, monkeypatch, capsys, args, line):
    run, site, root = trained
    monkeypatch.setenv("MEDTL_CACHE", str(root / "cache"))
    code, _, err = cli_in_process(monkeypatch, capsys, "evaluate", run.path, site, "--output-dir", tmp_path / "e",
                                  *args)
    assert code == 2
    assert [x for x in err.splitlines() if x.startswith("error:")] == [line.format(site=site)]
    assert not (tmp_path / "e").exists()


def test_an_operating_point_is_chosen_on_validation_never_on_the_evaluated_labels(trained, tmp_path, monkeypatch):
    run, site, root = trained
    monkeypatch.setenv("MEDTL_CACHE", str(root / "cache"))
    ev = run.evaluate(site, classes=MAP, threshold="sensitivity>=0.9")
    rows = list(csv.DictReader(open(run.folder.predictions("val"))))
    y = np.array([r["label"] == "pos" for r in rows], int)
    p = np.array([float(r["prob_pos"]) for r in rows])
    assert ev.threshold == pytest.approx(operating.choose(y, p, "sensitivity>=0.9"))
    assert ev.operating_point["target"] == {"sensitivity": 0.9}
    assert ev.operating_point["validation"]["sensitivity"] >= 0.9
    flipped = run.evaluate(site, classes="healthy=pos,sick=neg", threshold="sensitivity>=0.9")  # labels swapped
    assert flipped.threshold == ev.threshold
    assert ev.operating_point["evaluated"]["sensitivity"] == pytest.approx(ev.metrics["sensitivity"])


@pytest.mark.parametrize("seed", range(5))
def test_target_rates_pick_the_best_threshold_reaching_them(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 120)
    p = np.clip(0.5 + (y - 0.5) * rng.uniform(0, 0.6, 120) + rng.normal(0, 0.2, 120), 0.001, 0.999)
    cuts = np.unique(np.concatenate([p, [1.0]]))
    for target in (0.5, 0.8, 0.95, 1.0):
        t = operating.choose(y, p, f"sensitivity>={target}")
        m = binary_metrics(y, p, t)
        best = max(binary_metrics(y, p, c)["specificity"] for c in cuts if binary_metrics(y, p, c)["sensitivity"] >= target)
        assert m["sensitivity"] >= target and m["specificity"] == pytest.approx(best)
        t = operating.choose(y, p, f"specificity>={target}")
        m = binary_metrics(y, p, t)
        best = max(binary_metrics(y, p, c)["sensitivity"] for c in cuts if binary_metrics(y, p, c)["specificity"] >= target)
        assert m["specificity"] >= target and m["sensitivity"] == pytest.approx(best)


def test_threshold_specs_in_the_config():
    assert medtl.make_config("data", threshold="sensitivity>=0.95").eval.threshold == "sensitivity>=0.95"
    assert medtl.make_config("data", threshold="specificity>=0.9").eval.threshold == "specificity>=0.9"
    for bad in ("sensitivity>=0", "sensitivity>=1.2", "recall>=0.9", "1.5"):
        with pytest.raises(MedtlError) as exc:
            medtl.make_config("data", threshold=bad)
        assert str(exc.value) == (f"eval.threshold={bad!r}; valid: youden, f1, a number between 0 and 1 (e.g. 0.5), "
                                  "sensitivity>=0.95 or specificity>=0.90")


def test_local_recalibration_fits_on_the_calibration_part_only(trained, tmp_path, monkeypatch):
    run, site, root = trained
    monkeypatch.setenv("MEDTL_CACHE", str(root / "cache"))
    out = tmp_path / "e"
    ev = run.evaluate(site, classes=MAP, calibrate_fraction=0.5, temperature=True, seed=3, output_dir=out)
    r = ev.recalibration
    assert r["split"]["calibration_n"] + r["split"]["heldout_n"] == 20
    assert r["split"]["per_class"]["calibration"]["neg"] >= 4 and r["split"]["per_class"]["calibration"]["pos"] >= 4
    assert {"ci95", "calibration"} <= set(r["before"]) and {"ci95", "calibration"} <= set(r["after"])
    assert r["before"]["n"] == r["after"]["n"] == r["split"]["heldout_n"]
    part = {Path(x["path"]).name: x["part"] for x in csv.DictReader(open(EvaluationFolder(out).predictions))}
    assert part["sick_0.png"] == part["sick_0_again.png"]  # two copies of one image stay on one side
    s = ev.scored
    held = np.array([part[Path(ref).name] == "heldout" for ref in s.refs])
    swapped = Scored(s.refs, np.where(held, 1 - s.labels, s.labels), s.probs, s.features, s.classes, class_map=s.class_map)
    same_parts = (np.flatnonzero(~held), np.flatnonzero(held), "as before")
    fit = EvaluateOptions(calibrate_fraction=0.5, temperature=True, seed=3)
    again, _ = recalibrate_part(swapped, ev.threshold, "youden", fit, 200, 0, same_parts)
    assert again["threshold_after"] == r["threshold_after"] and again["temperature_factor"] == r["temperature_factor"]
    assert again["after"]["accuracy"] == pytest.approx(1 - r["after"]["accuracy"])  # held-out labels only scored
    assert s.features.shape == (20, 512) and s.features.dtype == np.float32  # pooled backbone features


def test_calibrate_writes_a_new_run_that_records_its_origin(trained, tmp_path, monkeypatch, capsys):
    run, site, root = trained
    monkeypatch.setenv("MEDTL_CACHE", str(root / "cache"))
    before = run.folder.metrics.read_text()
    args = ("calibrate", run.path, site, "--classes", MAP, "--threshold", "specificity>=0.9", "--output-dir", tmp_path,
            "--name", "site-b", "--quiet")
    code, stdout, err = cli_in_process(monkeypatch, capsys, *args)
    assert code == 0, err
    new = medtl.Run.load(tmp_path / "site-b")
    origin = new.metrics["calibrated_from"]
    assert origin["run"] == str(run.path) and origin["n"] == 20 and origin["per_class"] == {"neg": 10, "pos": 10}
    assert new.predictor.threshold == new.metrics["threshold"] != run.metrics["threshold"]
    assert new.config.eval.threshold == "specificity>=0.9" and new.metrics["splits"]["val"]["specificity"] >= 0.9
    assert (tmp_path / "site-b" / "image_keys.json").is_file() and run.folder.metrics.read_text() == before
    assert f"run folder: {tmp_path / 'site-b'}" in stdout
    code, _, err = cli_in_process(monkeypatch, capsys, *args)
    assert code == 2 and err.strip().splitlines()[-1] == (f"error: {tmp_path / 'site-b'} already exists; pass another "
                                                          "--name or --output-dir")


@pytest.mark.slow
def test_kermany_model_on_pneumoniamnist(xray_run, tmp_path, monkeypatch):
    """The Kermany X-ray model on PneumoniaMNIST's test split (same hospital, 28 px, classes 0/1): the mapping,
    the folder and the held-out metrics before and after local recalibration."""
    npz = shared_path("medmnist", "pneumoniamnist.npz")
    run_dir, data = xray_run
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    cfg = medtl.Run.load(run_dir).config
    write_image_keys(run_dir, discover(cfg.data, cfg.data.split_seed))
    ev = medtl.Run.load(run_dir).evaluate(npz, classes="0=NORMAL,1=PNEUMONIA", calibrate_fraction=0.2,
                                          output_dir=tmp_path / "e")
    assert ev.metrics["n"] == 624 and ev.class_map == {"class_0": "NORMAL", "class_1": "PNEUMONIA"}
    assert ev.copies["checked"] and ev.copies["exact_train"] == 0  # other bytes than the Kermany JPEGs
    r = ev.recalibration  # near-duplicate clusters kept together: about four fifths held out
    assert 480 <= r["split"]["heldout_n"] <= 520 and r["after"]["ci95"]["accuracy"] and r["before"]["ci95"]["accuracy"]
    from medtl.cli.evaluate import summary
    print("\n".join(summary(ev)))
    assert Evaluation.load(tmp_path / "e").metrics["auc"] == pytest.approx(ev["auc"])


def test_the_deduplicated_metrics_leave_out_copies_on_either_side(trained):
    """What the run's own deduplicated test metrics call: copies of a validation image count as a train copy
    does (those images chose the model)."""
    from medtl.data.image_keys import read_image_keys, without_copies

    run, site, _ = trained
    keys = read_image_keys(run.path)
    refs = [str(site / "healthy" / "copy_of_val.png"), str(site / "sick" / "copy_of_train.png"),
            str(site / "healthy" / "near.jpg")]
    kept, rows, counts = without_copies(refs, keys)
    assert [r["kind"] for r in rows] == ["exact", "exact", "near"] and len(kept) == 0
    assert counts["exact_val"] == 1 and counts["exact_train"] == 1 and counts["copies"] == 3


def test_referral_in_the_evaluation_follows_the_coverage_asked(trained, monkeypatch):
    """`--coverage` on evaluate (as on predict and serve): a higher coverage gives sets at least as large, so
    at least as many images reach their true class and none fewer are referred; recorded in the folder's record."""
    run, site, root = trained
    monkeypatch.setenv("MEDTL_CACHE", str(root / "cache"))
    low = run.evaluate(site, classes=MAP, coverage=0.5).referral
    high = run.evaluate(site, classes=MAP, coverage=0.99).referral
    assert low["coverage"] == 0.5 and high["coverage"] == 0.99
    assert high["mean_set_size"] >= low["mean_set_size"] and high["coverage_reached"] >= low["coverage_reached"]
