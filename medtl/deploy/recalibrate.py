"""Local recalibration: a site refits the operating threshold (and, if asked, a temperature) of a trained
run on a few labelled local images.

`medtl calibrate RUN LOCAL_DATA` fits on all of LOCAL_DATA and writes a new run folder (the same weights, the
new threshold and temperature, and a record of where it came from: deploy/calibrated_run.py); `medtl evaluate
--calibrate-fraction 0.2`
splits the evaluated data (stratified, seeded, patients and copies of one image kept together) into a
calibration part and a held-out part, fits on the first and scores the second before and after."""

from __future__ import annotations

import numpy as np

from medtl.core.errors import MedtlError
from medtl.data.groups import content_groups
from medtl.data.splits import DataSplits, carve
from medtl.deploy.options import EvaluateOptions
from medtl.deploy.scoring import Scored
from medtl.evaluation import operating
from medtl.evaluation.splits_report import split_report
from medtl.evaluation.uncertainty import apply_temperature, fit_temperature


def fit_local(y: np.ndarray, p: np.ndarray, binary: bool, spec: str, temperature: bool) -> tuple[float, float]:
    """(temperature factor, threshold) fitted on labelled local probabilities: the factor multiplies the run's
    temperature; the threshold is chosen by `spec` on the rescaled probabilities (multiclass: argmax, 0.5)."""
    factor = fit_temperature(y, p) if temperature else 1.0
    rescaled = apply_temperature(p, factor) if temperature else p
    return factor, (operating.choose(y, rescaled, spec) if binary else 0.5)


def need_something_to_fit(scored: Scored, temperature: bool) -> None:
    if not scored.binary and not temperature:
        raise MedtlError(f"the run has {len(scored.classes)} classes and predicts the most probable one: there is no "
                         "threshold to refit; pass --temperature to refit its temperature")


def calibration_split(scored: Scored, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices (calibration, held-out) and how images were kept together: by patient when the data name
    patients, else by copies (exact and near, as `medtl audit` finds them)."""
    if not 0 < fraction < 1:
        raise MedtlError(f"--calibrate-fraction {fraction}: give a fraction between 0 and 1, e.g. 0.2")
    splits = DataSplits(scored.classes, refs={"heldout": list(scored.refs)}, labels={"heldout": scored.labels})
    if scored.groups and len(scored.groups) == len(scored.refs):
        groups, kind = scored.groups, "patient"
    else:
        groups, kind = content_groups(scored.refs, near=True), "near_duplicates"
    carve(splits, "heldout", "calibration", fraction, seed, groups, kind)
    row = {r: i for i, r in enumerate(scored.refs)}
    return (np.array([row[r] for r in splits.refs["calibration"]]), np.array([row[r] for r in splits.refs["heldout"]]),
            splits.notes[-1])


def recalibrate_part(scored: Scored, cut: float, spec: str, options: EvaluateOptions, resamples: int, boot_seed: int,
                     parts: tuple | None = None) -> tuple[dict, list[str]]:
    """Fit on a calibration part (`options`: calibrate_fraction, temperature, seed), score the held-out part
    before (the run's threshold `cut` and temperature) and after; returns the record and each image's part. Only
    the calibration part's labels are read to fit. `parts`: (calibration, held-out, how) indices instead of
    `calibration_split`'s."""
    fraction, temperature, seed = options.calibrate_fraction, options.temperature, options.seed
    need_something_to_fit(scored, temperature)
    cal, held, how = parts or calibration_split(scored, fraction, seed)
    y, p = scored.labels, scored.probs
    factor, new_cut = fit_local(y[cal], p[cal], scored.binary, spec, temperature)
    after = apply_temperature(p[held], factor) if temperature else p[held]
    parts = ["heldout"] * len(y)
    for i in cal:
        parts[i] = "calibration"
    record = {"fraction": fraction, "seed": seed, "split": {**_note(scored, cal, held), "how": how}, "spec": spec,
              "temperature_fitted": temperature, "temperature_factor": factor,
              "threshold_before": cut if scored.binary else None, "threshold_after": new_cut if scored.binary else None,
              "before": split_report(y[held], p[held], scored.classes, cut, resamples, boot_seed),
              "after": split_report(y[held], after, scored.classes, new_cut, resamples, boot_seed)}
    return record, parts


def _note(scored: Scored, cal: np.ndarray, held: np.ndarray) -> dict:
    counts = {part: {c: int((scored.labels[idx] == k).sum()) for k, c in enumerate(scored.classes)}
              for part, idx in (("calibration", cal), ("heldout", held))}
    return {"calibration_n": int(len(cal)), "heldout_n": int(len(held)), "per_class": counts}
