"""Issue 24's measurements: a trained run judged at a "new site", as a hospital team would do it.

    python bench/new_site.py --run RUN --test ../shared/data/chest_xray_kermany_224/test \
        --external ../shared/data/medmnist/pneumoniamnist.npz --external-classes 0=NORMAL,1=PNEUMONIA \
        --carved CARVED_RUN --out bench/results/new_site_cpu.json

1. `medtl evaluate RUN TEST` (the folder under RUN/evaluations/): metrics with intervals, the shift test of the
   test images against the training images beside validation's, conformal referral at the default coverage.
2. The operating point `sensitivity>=0.95`, chosen on the run's validation predictions, and the sensitivity
   and specificity it reaches on TEST, with intervals.
3. Local recalibration: 10 seeded 20/80 calibration/held-out splits of TEST (stratified, copies kept
   together); held-out accuracy and specificity before and after refitting the threshold on the 20 %:
   mean +- sd over the seeds. Only each split's calibration labels are used to fit.
4. The run on an EXTERNAL data set of the same task with other class names (`--external-classes NEW=OLD`),
   with shift and a 20/80 recalibration.
5. Conformal coverage on an in-distribution test: CARVED_RUN's own carved test split (its predictions_test.csv)
   with the prediction sets calibrated on its validation split (its reference.npz), at 0.8, 0.9 and 0.95.
Nothing here chooses anything on test labels except the calibration parts of step 3 and 4, as asked.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import medtl
from medtl.evaluation.conformal import conformal_threshold, prediction_sets
from medtl.evaluation.shift import load_reference

SEEDS = range(10)


def _pick(report: dict, keys=("accuracy", "auc", "sensitivity", "specificity", "ece")) -> dict:
    out = {}
    for k in keys:
        if k in report:
            out[k] = report[k]
        ci = report.get("ci95", {}).get(k)
        if ci is not None:
            out[f"{k}_ci95"] = ci
    if "calibration" in report:
        out["ece"] = report["calibration"].get("ece")
    return out


def evaluate_test(run: str, test: str) -> dict:
    ev = medtl.evaluate(run, test, output_dir=Path(run) / "evaluations" / "official-test")
    op = medtl.evaluate(run, test, threshold="sensitivity>=0.95").operating_point
    return {"metrics": _pick(ev.metrics), "shift": ev.shift, "referral": ev.referral, "copies": ev.copies,
            "operating_point_sensitivity_0.95": op}


def recalibration(run: str, data: str, seeds, classes: str | None = None) -> dict:
    rows = []
    for seed in seeds:
        rec = medtl.evaluate(run, data, calibrate_fraction=0.2, seed=seed, classes=classes).recalibration
        rows.append({"seed": seed, "n_calibration": rec["split"]["calibration_n"], "n_heldout": rec["split"]["heldout_n"],
                     **{f"{k}_{when}": rec[when][k] for when in ("before", "after")
                        for k in ("accuracy", "specificity", "sensitivity")},
                     "threshold_before": rec["threshold_before"], "threshold_after": rec["threshold_after"]})
    summary = {}
    for key in rows[0]:
        if key.endswith(("_before", "_after")) and not key.startswith("threshold"):
            values = [r[key] for r in rows]
            summary[key] = {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    return {"splits": rows, "summary": summary}


def external(run: str, data: str, classes: str) -> dict:
    ev = medtl.evaluate(run, data, classes=classes, output_dir=Path(run) / "evaluations" / f"external-{Path(data).stem}")
    return {"data": data, "class_map": ev.class_map, "metrics": _pick(ev.metrics), "shift": ev.shift,
            "referral": ev.referral, "recalibration_20_80_seed0": recalibration(run, data, [0], classes)["splits"][0]}


def carved_coverage(run: str) -> dict:
    """Split-conformal coverage on a carved (in-distribution) test, calibrated on the run's validation split."""
    ref = load_reference(run)
    with open(Path(run) / "predictions_test.csv") as fh:
        rows = list(csv.DictReader(fh))
    classes = medtl.Run.load(run).metrics["classes"]
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    labels = np.array([classes.index(r["label"]) for r in rows])
    out = {"test_images": len(rows), "calibration_images": int(len(ref.cal_scores))}
    for coverage in (0.8, 0.9, 0.95):
        sets = prediction_sets(probs, conformal_threshold(ref.cal_scores, coverage))
        out[str(coverage)] = {"coverage_reached": float(sets[np.arange(len(sets)), labels].mean()),
                              "mean_set_size": float(sets.sum(1).mean())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--external")
    ap.add_argument("--external-classes")
    ap.add_argument("--carved")
    ap.add_argument("--out", default="bench/results/new_site_cpu.json")
    args = ap.parse_args()
    start = time.time()
    result = {"machine": platform.processor() or platform.machine(), "run": args.run,
              "test": evaluate_test(args.run, args.test), "recalibration_test": recalibration(args.run, args.test, SEEDS)}
    if args.external:
        result["external"] = external(args.run, args.external, args.external_classes)
    if args.carved:
        result["carved_coverage"] = carved_coverage(args.carved)
    result["seconds"] = time.time() - start
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps({k: v for k, v in result.items() if k != "recalibration_test"}, indent=1, default=float)[:6000])
    print(json.dumps(result["recalibration_test"]["summary"], indent=1))


if __name__ == "__main__":
    main()
