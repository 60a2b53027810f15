"""Subgroups (a manifest's extra columns scored apart, with intervals and the largest gap's paired interval),
intervals for PPV, NPV and each class, intervals pooled over a study's seeds, and the test split's sample size."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY, cli_in_process, shared_path
from medtl.core.config import DataConfig
from medtl.core.io import write_json
from medtl.data.sources import discover
from medtl.experiments.study.compare import Run
from medtl.evaluation.sample_size import auc_width, sample_size_report, wilson_width
from medtl.evaluation.splits_report import split_report
from medtl.experiments.study.report import pooled_columns
from medtl.evaluation.subgroups import subgroup_report


def _manifest(path: Path, files: list[tuple[Path, str]], columns: dict[str, list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", *columns])
        for i, (file, label) in enumerate(files):
            w.writerow([str(file), label, *[values[i] for values in columns.values()]])
    return path


def _tree_manifest(image_tree: Path, tmp_path: Path) -> Path:
    """image_tree's images with a split column (40 test images), a `site` (A, B by index; C for 3 test images: too few) and a
    `sex` column that is empty for some rows, plus an ID column with one value per image (not scored)."""
    files = [(p, p.parent.name) for p in sorted(image_tree.rglob("*.png"))]
    split = ["train" if p.parent.parent.name == "train" and i % 2 else "test" for i, (p, _) in enumerate(files)]
    site = ["C" if s == "test" and i % 8 == 0 else "AB"[(i // 3) % 2] for i, s in enumerate(split)]
    sex = ["" if i % 7 == 0 else "FM"[(i // 2) % 2] for i in range(len(files))]
    return _manifest(tmp_path / "m.csv", files, {"split": split, "site": site, "sex": sex,
                                                  "accession": [f"x{i}" for i in range(len(files))]})


def test_manifest_columns_give_subgroups_with_intervals_and_name_small_groups(image_tree, tmp_path):
    splits = discover(DataConfig(path=str(_tree_manifest(image_tree, tmp_path))))
    assert set(splits.attributes) == {"site", "sex"}  # accession has a value per image: left out, and said so
    assert any("'accession' has 64 values" in n for n in splits.notes)
    values = splits.attributes_of("test")
    y = splits.labels["test"]
    p = np.clip(0.3 + 0.4 * y + np.random.default_rng(0).normal(0, 0.2, len(y)), 0, 1)
    m = split_report(y, p, splits.classes, 0.5, 200, 0, values)
    write_json(tmp_path / "metrics.json", {"splits": {"test": m}})
    test = json.loads((tmp_path / "metrics.json").read_text())["splits"]["test"]
    assert set(test["subgroups"]["site"]) == {"A", "B", "C"} and set(test["subgroups"]["sex"]) >= {"F", "M", "(missing)"}
    a = test["subgroups"]["site"]["A"]
    assert a["scored"] and a["n"] == values["site"].count("A") and a["ci95"]["auc"][0] <= a["auc"] <= a["ci95"]["auc"][1]
    n_c = values["site"].count("C")
    assert 0 < n_c < 10 and test["subgroups"]["site"]["C"] == {
        "n": n_c, "counts": {c: int(((np.array(values["site"]) == "C") & (y == k)).sum()) for k, c in
                             enumerate(splits.classes)}, "scored": False,
        "reason": f"{n_c} image(s), fewer than 10: too few to score"}
    gap = test["subgroup_gaps"]["site"]["auc"]
    assert {gap["highest"], gap["lowest"]} == {"A", "B"} and gap["ci95"][0] <= gap["gap"] <= gap["ci95"][1]
    assert set(test["subgroup_gaps"]["site"]) == {"auc", "sensitivity", "specificity", "accuracy"}


def test_a_subgroup_lacking_a_class_is_named_with_the_metric_it_cannot_have():
    y = np.array([0] * 20 + [1] * 20)
    p = np.linspace(0, 1, 40)
    out = subgroup_report(y, p, ["no", "yes"], 0.5, {"site": ["A"] * 15 + ["B"] * 25}, 100, 0)
    assert out["subgroups"]["site"]["A"]["reason"] == "no 'yes' image: sensitivity and AUC are undefined"
    assert out["subgroup_gaps"]["site"] == {"not_compared": "1 subgroup(s) could be scored; a gap needs two"}


def test_gap_interval_is_paired_and_a_real_gap_excludes_zero():
    """Site B's scores are noise: its AUC is far below A's, and the paired interval of the gap stays above 0."""
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 200)
    site = np.repeat(["A", "B"], 200)
    p = np.where(site == "A", 0.2 + 0.6 * y + rng.normal(0, 0.1, 400), rng.random(400))
    gap = subgroup_report(y, p, ["n", "p"], 0.5, {"site": site.tolist()}, 300, 0)["subgroup_gaps"]["site"]["auc"]
    assert gap["highest"] == "A" and gap["gap"] > 0.3 and gap["ci95"][0] > 0.2


def test_unknown_subgroup_column_is_one_error_line(image_tree, tmp_path, monkeypatch, capsys):
    m = _tree_manifest(image_tree, tmp_path)
    code, _, err = cli_in_process(monkeypatch, capsys, "audit", m, "--no-perceptual",
                                  "--set", "data.subgroups=[site,scanner]")
    assert code == 2
    assert err.strip() == (f"error: data.subgroups names 'scanner', which is not a column of manifest {m}; its "
                           "columns: path, label, split, site, sex, accession")
    code, _, err = cli_in_process(monkeypatch, capsys, "audit", image_tree, "--set", "data.subgroups=[site]")
    assert code == 2 and err.startswith("error: data.subgroups names site, but ") and err.count("\n") == 1


def test_named_subgroups_only_and_none(image_tree, tmp_path):
    m = str(_tree_manifest(image_tree, tmp_path))
    assert set(discover(DataConfig(path=m, subgroups=("accession",))).attributes) == {"accession"}
    assert discover(DataConfig(path=m, subgroups=())).attributes == {}


def test_binary_ppv_npv_and_multiclass_per_class_intervals():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    m = split_report(y, np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1), ["a", "b"], 0.5, 300)
    for k in ("precision", "npv"):
        assert m["ci95"][k][0] <= m[k] <= m["ci95"][k][1]
    y3 = rng.integers(0, 3, 300)
    p3 = rng.dirichlet([1, 1, 1], 300) + np.eye(3)[y3] * 0.5
    m3 = split_report(y3, p3 / p3.sum(1, keepdims=True), ["a", "b", "c"], 0.5, 300)
    for d in m3["per_class"].values():
        assert set(d["ci95"]) == {"precision", "npv", "recall", "specificity", "f1", "auc"}
        assert d["ci95"]["precision"][0] <= d["precision"] <= d["ci95"]["precision"][1]


def _fake_run(folder: Path, refs: list[str], y: np.ndarray, p: np.ndarray) -> Run:
    folder.mkdir(parents=True)
    with open(folder / "predictions_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "predicted", "prob_a", "prob_b"])
        w.writerows([r, "ab"[t], "ab"[int(q >= 0.5)], 1 - q, q] for r, t, q in zip(refs, y, p))
    table = np.stack([1 - p, p], 1)
    return Run(folder, (("model.strategy", "full"),), 0, {}, 1.0, history=[], labels=y, probs=table,
               predicted=(p >= 0.5).astype(int), classes=["a", "b"])


def test_study_intervals_pool_the_seeds_by_image(tmp_path):
    """Two seeds with identical predictions pool to exactly one seed's interval (an image is drawn with all its
    predictions); a second seed with other predictions gives another value and interval."""
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 40)
    refs = [f"img{i}.png" for i in range(80)]
    p1 = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.25, 80), 0, 1)
    one = pooled_columns([_fake_run(tmp_path / "s0", refs, y, p1)])
    twins = pooled_columns([_fake_run(tmp_path / "t0", refs, y, p1), _fake_run(tmp_path / "t1", refs, y, p1)])
    assert one == twins and set(one) == {f"{m} pooled, 95% CI" for m in
                                         ("accuracy", "sensitivity", "specificity", "precision", "auc")}
    other = pooled_columns([_fake_run(tmp_path / "o0", refs, y, p1),
                            _fake_run(tmp_path / "o1", refs, y, np.clip(p1 + rng.normal(0, 0.2, 80), 0, 1))])
    assert other != one and all(v.count("[") == 1 for v in other.values())


def test_sample_size_widths_and_needed_images():
    assert math.isclose(wilson_width(0.5, 100), 0.5962 - 0.4038, abs_tol=1e-3)  # Wilson: 50 of 100 -> [0.404, 0.596]
    # Hanley & McNeil by hand, AUC 0.9 on 50 + 50: Q1 = 0.818, Q2 = 0.853, SE^2 = (0.09 + 49(0.0082) + 49(0.0426)) / 2500
    assert math.isclose(auc_width(0.9, 50, 50) / (2 * 1.96), 0.0321, abs_tol=2e-4)
    r = sample_size_report(19, 19, target_width=0.05)
    assert r["sensitivity"]["assumed"] and r["sensitivity"]["needed_cases"] == 784  # 4 z^2 p(1-p) / w^2
    assert r["sensitivity"]["needed_images"] == 1568 and r["test_images_needed"] == 1568
    assert wilson_width(0.85, 784) <= 0.05 < wilson_width(0.85, 783)
    observed = sample_size_report(30, 70, auc=0.95, sensitivity=0.9, specificity=0.9, target_width=0.1)
    assert not observed["auc"]["assumed"] and observed["auc"]["needed_images"] < r["auc"]["needed_images"]


def test_audit_target_width_says_the_test_is_too_small(image_tree, tmp_path, monkeypatch, capsys):
    code, out, err = cli_in_process(monkeypatch, capsys, "audit", image_tree, "--no-perceptual", "--target-width",
                                    "0.05", "--output", tmp_path / "a.json")
    assert code == 0, err
    sizes = json.loads((tmp_path / "a.json").read_text())["sample_size"]
    assert sizes["positive"] == "pos" and sizes["n_pos"] == 8 and sizes["test_images_needed"] == 1568
    assert "auc (assumed 0.85): expected 95% interval width" in out
    assert "the test split has 16 images; 95% intervals of width 0.05 need 1568" in out
    code, _, err = cli_in_process(monkeypatch, capsys, "audit", image_tree, "--target-width", "1.5")
    assert code == 2 and err == ("error: target width 1.5 is out of range: give the width of a 95% interval between "
                                 "0 and 1, e.g. --target-width 0.05\n")


@pytest.mark.slow
def test_subgroups_on_brain_mri_with_a_synthetic_site_column(tmp_path, cache_dir):
    """The shared brain MRI set (yes/no tumour) has no site column, so this test adds a SYNTHETIC one, seeded:
    sites A and B at random, and a site C of 4 images (too few to score). A tiny model is trained on the manifest;
    its test predictions are scored per site, with intervals and the paired gap."""
    import medtl

    root = shared_path("brain_mri_yes_no")
    files = [(p, p.parent.name) for label in ("no", "yes") for p in sorted((root / label).iterdir())]
    rng = np.random.default_rng(0)
    site = rng.choice(["A", "B"], len(files)).tolist()
    manifest = _manifest(tmp_path / "brain.csv", files, {"site": site})
    run = medtl.train(manifest, out=tmp_path / "runs", name="brain", **TINY)
    with open(run.path / "predictions_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_path = {str(Path(p).resolve()): s for (p, _), s in zip(files, site)}
    sites = [by_path[r["path"]] for r in rows]
    sites[:4] = ["C"] * 4
    y = np.array([r["label"] == "yes" for r in rows], int)
    p = np.array([float(r["prob_yes"]) for r in rows])
    out = subgroup_report(y, p, ["no", "yes"], run.metrics["threshold"], {"site": sites}, 500, 0)
    groups = out["subgroups"]["site"]
    assert groups["C"]["scored"] is False and "fewer than 10" in groups["C"]["reason"]
    assert groups["A"]["scored"] and groups["B"]["scored"] and all(groups[s]["ci95"]["auc"] for s in "AB")
    assert out["subgroup_gaps"]["site"]["auc"]["ci95"] is not None
    sizes = sample_size_report(int(y.sum()), int(len(y) - y.sum()), target_width=0.05)
    assert sizes["test_images_needed"] > len(y)  # 38 test images: far too few for +-0.025


def test_the_study_report_lists_each_runs_subgroups_and_names_the_small_ones():
    """A study report's subgroup table: every scored value with its interval, the largest gap with its paired
    interval, and a value too small to score named with the reason (here a site of 6 images)."""
    from medtl.experiments.study.subgroups import subgroup_table

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 40)
    probs = np.clip(y * 0.6 + rng.normal(0.2, 0.2, len(y)), 0, 1)
    site = ["a"] * 40 + ["b"] * 34 + ["c"] * 6
    report = subgroup_report(y, probs, ["neg", "pos"], 0.5, {"site": site}, 200, 0)
    run = Run(Path("r"), (("model.strategy", "linear"),), 0, report, 1.0, history=[], labels=y,
              probs=np.stack([1 - probs, probs], 1),
              predicted=(probs >= 0.5).astype(int), classes=["neg", "pos"])
    head, body = subgroup_table([run])
    rows = {row[3][0]: [cell for cell, _ in row] for row in body}
    assert set(rows) == {"a", "b", "c"} and head[:4] == ["configuration", "seed", "column", "value"]
    assert rows["a"][5].count("[") == 1 and rows["a"][8].startswith(("+", "-")) and "vs" in rows["a"][8]
    assert "too few to score" in rows["c"][5]
    assert subgroup_table([Run(Path("r"), (), 0, {}, 1.0, history=[], labels=y, probs=probs, predicted=y,
                               classes=["neg", "pos"])]) is None
