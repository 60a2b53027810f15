"""`medtl card`: a model card and the CLAIM 2024 and TRIPOD+AI checklists, from a tiny run and a tiny study."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

import medtl
from helpers import cli_in_process
from medtl.experiments.card.checklists import AUTHORS, CHECKLISTS, load_checklist

COUNTS = {"claim": 44, "tripod_ai": 52}  # CLAIM 2024: 44 items; TRIPOD+AI: 27 items, 52 rows with sub-items


def check_checklists(folder: Path) -> dict[str, list[dict]]:
    """Every item of each checklist exactly once (CSV and Markdown), and every answered item pointing to an
    anchor that exists in both model_card.md and model_card.html."""
    card_md = (folder / "model_card.md").read_text()
    card_html = (folder / "model_card.html").read_text()
    out = {}
    for key in CHECKLISTS:
        # the card links each checklist written beside it, in both forms, and the link resolves
        md_links = re.findall(rf"\]\((checklist_{key}\.(?:md|csv))\)", card_md)
        html_links = re.findall(rf"<a href='(checklist_{key}\.(?:md|csv))'>", card_html)
        assert sorted(md_links) == sorted(html_links) == [f"checklist_{key}.csv", f"checklist_{key}.md"], key
        assert all((folder / link).is_file() for link in md_links)
        _, items = load_checklist(key)
        ids = [i.id for i in items]
        assert len(ids) == COUNTS[key] == len(set(ids))
        with open(folder / f"checklist_{key}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [r["item"] for r in rows] == ids
        md_rows = [line for line in (folder / f"checklist_{key}.md").read_text().splitlines()
                   if re.match(r"^\| [0-9]+[a-g]? \|", line)]
        assert sorted(line.split("|")[1].strip() for line in md_rows) == sorted(ids)
        for r in rows:
            if r["answer"] == AUTHORS:
                continue
            name, anchor = r["answer"].split("#")
            assert name == "model_card.md"
            assert f'<a id="{anchor}"></a>' in card_md, (key, r)
            assert f"<section id='{anchor}'>" in card_html, (key, r)
        out[key] = rows
    return out


def answer(rows: list[dict], item: str) -> str:
    return next(r["answer"] for r in rows if r["item"] == item)


def test_card_and_checklists_for_a_run(tiny_run, tmp_path, monkeypatch, capsys):
    run = tiny_run
    code, out, err = cli_in_process(monkeypatch, capsys, "card", run.path, "--template")
    assert code == 0 and (run.path / "card.yaml").is_file(), err
    filled = yaml.safe_load((run.path / "card.yaml").read_text())
    assert set(filled) >= {"intended_use", "intended_users", "population"}
    filled.update(intended_use="triage of <script>alert(1)</script> chest films", intended_users="radiologists")
    (run.path / "card.yaml").write_text(yaml.safe_dump(filled))
    code, out, err = cli_in_process(monkeypatch, capsys, "card", run.path, "--intended-use", run.path / "card.yaml")
    assert code == 0, err
    rows = check_checklists(run.path)
    card_md = (run.path / "model_card.md").read_text()
    page = (run.path / "model_card.html").read_text()
    # filled by the authors: answered; left empty: for the authors, with a placeholder in the card
    assert answer(rows["claim"], "3") == "model_card.md#intended-use"
    assert answer(rows["claim"], "44") == AUTHORS and "for the authors: sources of funding" in card_md
    assert answer(rows["claim"], "33") == AUTHORS  # no external evaluation given
    assert answer(rows["tripod_ai"], "15") == "model_card.md#operating-point"
    # facts of the run: counts per class and split, the weights' digest, intervals, the threshold, versions
    metrics = run.metrics
    assert "| test | 16 | 8 | 8 |" in card_md and metrics["weights_sha256"] in card_md
    assert f"{metrics['threshold']:.4f}" in card_md and "youden" in card_md
    assert re.search(r"\| auc \| 1\.000 \| \[1\.000, 1\.000\] \|", card_md)
    assert "| torch |" in card_md and "medtl train" in card_md
    # escaped everywhere, and nothing loaded from outside the page
    assert "<script" not in page and "<script" not in card_md and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page)
    assert not list(run.path.glob(".*.tmp"))
    assert "triage of" in out or "model_card.md" in out


def test_card_lists_an_external_evaluation_and_its_shift(tiny_run, image_tree, tmp_path, monkeypatch, capsys):
    run = tiny_run
    evaluation = tmp_path / "other_hospital"
    evaluation.mkdir()
    metrics = dict(run.evaluate(image_tree / "test").metrics)
    metrics["shift"] = ["image size differs from training (median 40 px vs 512 px)"]
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    code, _, err = cli_in_process(monkeypatch, capsys, "card", run.path, "--evaluation", evaluation, "--no-data",
                                  "--output-dir", tmp_path / "card")
    assert code == 0, err
    rows = check_checklists(tmp_path / "card")
    assert answer(rows["claim"], "33") == "model_card.md#external"
    text = (tmp_path / "card" / "model_card.md").read_text()
    limits = text.split('<a id="limitations"></a>')[1].split('<a id="reproduce"></a>')[0]
    assert "image size differs from training" in limits
    assert not (run.path / "model_card.md").exists()  # --output-dir: nothing written into the run folder


@pytest.mark.slow
def test_card_and_checklists_for_a_study(image_tree, cache_dir, tmp_path, monkeypatch, capsys):
    spec = tmp_path / "tiny_study.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tiny", "out": str(tmp_path / "studies"),
        "base": {"data": {"path": str(image_tree), "image_size": 32},
                 "model": {"backbone": "resnet18", "weights": "none"}, "train": {"epochs": 2, "batch_size": 16}},
        "grid": {"strategy": ["full", "scratch"]}, "compare_to": {"strategy": "scratch"}}))
    medtl.study(spec)
    study = tmp_path / "studies" / "tiny"
    code, out, err = cli_in_process(monkeypatch, capsys, "card", study)
    assert code == 0, err
    rows = check_checklists(study)
    text = (study / "model_card.md").read_text()
    assert '<a id="study"></a>' in text and "| full |" in text and "| scratch |" in text
    assert answer(rows["claim"], "26") == "model_card.md#selection"


@pytest.mark.parametrize("args, line", [
    (["--intended-use", "{tmp}/bad.yaml"], "error: --intended-use {tmp}/bad.yaml: unknown keys ['intended_usr']; "
                                            "valid: title, intended_use, intended_users, out_of_scope, population, "
                                            "reference_standard, ethics, funding, contact"),
    (["--evaluation", "{tmp}"], "error: --evaluation {tmp}: no metrics.json there; pass a folder written by "
                                "`medtl evaluate` (or its metrics.json)"),
    (["--target-width", "2"], "error: --target-width 2.0: pass a 95 % interval width between 0 and 1, e.g. 0.1"),
])
def test_card_refuses_bad_input_in_one_line(tiny_run, tmp_path, monkeypatch, capsys, args, line):
    run = tiny_run
    (tmp_path / "bad.yaml").write_text("intended_usr: triage\n")
    capsys.readouterr()  # the training's own log lines (a console handler an earlier CLI test set up)
    code, _, err = cli_in_process(monkeypatch, capsys, "card", run.path, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and err.strip() == line.format(tmp=tmp_path)
    assert not (run.path / "model_card.md").exists()


def test_template_is_never_written_over(tmp_path, monkeypatch, capsys):
    (tmp_path / "card.yaml").write_text("intended_use: mine\n")
    (tmp_path / "config.yaml").write_text("")
    code, _, err = cli_in_process(monkeypatch, capsys, "card", tmp_path, "--template")
    assert code == 2 and err.strip() == (f"error: {tmp_path}/card.yaml exists; edit it and pass it with "
                                         f"--intended-use {tmp_path}/card.yaml, or delete it for a fresh template")
    assert (tmp_path / "card.yaml").read_text() == "intended_use: mine\n"


def test_limitations_and_sample_size_give_one_figure_for_the_test_size_needed(tmp_path):
    """The card's limitations name the test images a narrower interval needs with the sample-size section's own
    figure (Wilson / Hanley-McNeil, evaluation/sample_size.py) for sensitivity, specificity and AUC; other
    metrics scale the observed width by the square root of the size."""
    from medtl.core.config import RunConfig
    from medtl.core.runfolder import RunFolder
    from medtl.evaluation.sample_size import sample_size_report
    from medtl.evaluation.records import RunMetrics
    from medtl.experiments.card.facts import RunFacts
    from medtl.experiments.card.text import needed, wide_intervals

    test = {"n": 100, "auc": 0.9, "sensitivity": 0.8, "specificity": 0.7, "confusion_matrix": [[35, 15], [10, 40]],
            "ci95": {"sensitivity": [0.68, 0.9], "auc": [0.84, 0.96], "accuracy": [0.66, 0.84]}}
    metrics = RunMetrics(best_epoch=1, epochs_run=1, train_seconds=1.0, threshold=0.5, threshold_method="youden",
                         classes=["neg", "pos"], image_size=32, split_sizes={"test": 100}, splits={"test": test},
                         temperature=1.0)
    facts = RunFacts(RunFolder(tmp_path), RunConfig(), metrics, None, [], skipped=0, preprocess={},
                     pretrained={}, environment={})
    rows = {metric: need for metric, _, _, need in wide_intervals(facts, 0.05)}
    report = sample_size_report(50, 50, 0.9, 0.05, 0.8, 0.7)
    assert rows["sensitivity"] == report["sensitivity"]["needed_images"]
    assert rows["auc"] == report["auc"]["needed_images"]
    assert rows["accuracy"] == needed(100, 0.18, 0.05)
