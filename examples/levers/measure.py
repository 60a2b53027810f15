"""Cheap levers measured on validation, over the finished runs of studies: horizontal-flip test-time
augmentation (TTA), the ensemble of a configuration's seeds and, with --across KEY, the ensemble over a grid
key's values (e.g. backbones) at each seed (probabilities averaged). Test is not read.

    python examples/levers/measure.py studies/strategies_kermany studies/strategies_covid_ct ... --out F
    python examples/levers/measure.py studies/levers_backbones_kermany --across model.backbone --out F

For each configuration (grid point but the seed): the validation AUC and loss of its single runs (mean over
seeds), of the same runs with TTA (`Predictor.tta`: the logits of the image and of its mirror
averaged), and of the seeds' ensemble (probabilities averaged). Writes F.json and F.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from medtl.core.runfolder import RunFolder, StudyFolder
from medtl.experiments.study.compare import dotted_value
from medtl.deploy.predictor import Predictor
from medtl.evaluation.metrics import score


def val_probs(run: Path, tta: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, (N, K) probabilities, classes) on the run's validation images, as its checkpoint predicts."""
    pred = Predictor.from_run(run, device="cpu", engine="torch")
    pred.tta = tta  # mirrored or not, whatever the run itself chose
    with open(RunFolder(run).predictions("val"), newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([pred.classes.index(r["label"]) for r in rows])
    out = []
    for i in range(0, len(rows), 64):
        batch = torch.stack([pred.load(r["path"]) for r in rows[i:i + 64]])
        out.append(pred.probabilities(batch))
    return labels, np.concatenate(out), pred.classes


def csv_probs(run: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, labels as class index, (N, K) probabilities) of the run's predictions_val.csv."""
    with open(RunFolder(run).predictions("val"), newline="") as f:
        rows = list(csv.DictReader(f))
    classes = [k[len("prob_"):] for k in rows[0] if k.startswith("prob_")]
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    return [r["path"] for r in rows], np.array([classes.index(r["label"]) for r in rows]), probs


def _metrics(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    m = score(y, probs[:, 1] if probs.shape[1] == 2 else probs, classes)
    return {"auc": m["auc"], "loss": m["loss"]}


def _runs(study: Path, keys: list[str]) -> dict[str, list[Path]]:
    """Finished runs by the values of `keys` (joined with spaces)."""
    groups: dict[str, list[Path]] = {}
    for run in sorted(StudyFolder(study).runs.iterdir()):
        if RunFolder(run).finished:
            cfg = yaml.safe_load(RunFolder(run).config.read_text())
            groups.setdefault(" ".join(str(dotted_value(cfg, k)) for k in keys), []).append(run)
    return groups


def across(study: Path, key: str) -> list[dict]:
    """Per seed (and the other grid values): the ensemble over `key`'s values against each value alone."""
    grid = yaml.safe_load(StudyFolder(study).spec.read_text())["grid"]
    rows = []
    for name, runs in _runs(study, [k for k in grid if k != key]).items():
        preds = [csv_probs(r) for r in runs]
        if any(p[0] != preds[0][0] for p in preds):
            raise SystemExit(f"{study}: runs of {name} were validated on different images")
        classes = list(range(preds[0][2].shape[1]))
        alone = [_metrics(preds[0][1], p[2], classes) for p in preds]
        both = _metrics(preds[0][1], np.mean([p[2] for p in preds], axis=0), classes)
        rows.append({"study": study.name, "group": name, "members": [r.name for r in runs],
                     "alone_auc": [a["auc"] for a in alone], "alone_loss": [a["loss"] for a in alone],
                     "ensemble_auc": both["auc"], "ensemble_loss": both["loss"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def measure(study: Path) -> list[dict]:
    spec = yaml.safe_load(StudyFolder(study).spec.read_text())
    groups = _runs(study, [k for k in spec["grid"] if k != "train.seed"])
    rows = []
    for name, runs in groups.items():
        plain = [val_probs(r, False) for r in runs]
        for run, (_, probs, _) in zip(runs, plain):  # the checkpoint predicts what the run wrote
            assert np.abs(probs - csv_probs(run)[2]).max() < 1e-3, run
        flipped = [val_probs(r, True) for r in runs]
        y, classes = plain[0][0], plain[0][2]
        single = [_metrics(*p[:2], classes) for p in plain]
        tta = [_metrics(*p[:2], classes) for p in flipped]
        ensemble = _metrics(y, np.mean([p[1] for p in plain], axis=0), classes)
        rows.append({"study": study.name, "configuration": name, "seeds": len(runs),
                     **{f"{k}_{m}": float(np.mean([r[m] for r in v])) for k, v in (("single", single), ("tta", tta))
                        for m in ("auc", "loss")},
                     "tta_auc_gain_per_seed": [t["auc"] - s["auc"] for s, t in zip(single, tta)],
                     "ensemble_auc": ensemble["auc"], "ensemble_loss": ensemble["loss"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| study | configuration | seeds | val AUC | with TTA | TTA gain per seed | seeds' ensemble | "
            "val loss | with TTA | ensemble |\n|---|---|---|---|---|---|---|---|---|---|")
    body = [f"| {r['study']} | {r['configuration']} | {r['seeds']} | {r['single_auc']:.4f} | {r['tta_auc']:.4f} | "
            + ", ".join(f"{g:+.4f}" for g in r["tta_auc_gain_per_seed"])
            + f" | {r['ensemble_auc']:.4f} | {r['single_loss']:.4f} | {r['tta_loss']:.4f} | {r['ensemble_loss']:.4f} |"
            for r in rows]
    return "\n".join([head, *body]) + "\n"


def markdown_across(rows: list[dict]) -> str:
    head = ("| study | at | members | val AUC alone | ensemble | val loss alone | ensemble |\n"
            "|---|---|---|---|---|---|---|")
    body = [f"| {r['study']} | {r['group']} | {', '.join(r['members'])} | "
            + ", ".join(f"{a:.4f}" for a in r["alone_auc"]) + f" | {r['ensemble_auc']:.4f} | "
            + ", ".join(f"{a:.4f}" for a in r["alone_loss"]) + f" | {r['ensemble_loss']:.4f} |" for r in rows]
    return "\n".join([head, *body]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="+", type=Path)
    ap.add_argument("--across", help="ensemble over this grid key's values at each seed (e.g. model.backbone)")
    ap.add_argument("--out", type=Path, default=Path("examples/levers/tta_and_seeds"), help="F: writes F.json, F.md")
    args = ap.parse_args()
    if args.across:
        rows = [row for study in args.studies for row in across(study, args.across)]
        text = markdown_across(rows)
    else:
        rows = [row for study in args.studies for row in measure(study)]
        text = markdown(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
