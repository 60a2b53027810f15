"""How far an evaluation's images may trust the run: the data-set shift test against the run's training images
and conformal referral (evaluation/shift.py, evaluation/conformal.py), from the reference the run keeps."""

from __future__ import annotations

from medtl.core.runfolder import RunFolder
from medtl.deploy.evaluation_folder import Evaluation, as_plain
from medtl.evaluation.conformal import referral_section
from medtl.evaluation.metrics import class_table, decide
from medtl.evaluation.shift import load_reference, shift_section


def shift_and_referral(ev: Evaluation, folder: RunFolder, decision: tuple[float, float], seed: int) -> None:
    """Fill `ev.shift` and `ev.referral` from `ev.scored`; "not available" for a run made before runs kept
    their reference. `decision`: the run's threshold and the referral's coverage."""
    cut, coverage = decision
    scored = ev.scored
    reference = load_reference(folder.path)
    ev.shift = as_plain(shift_section(reference, scored.features, seed))
    ev.referral = as_plain(referral_section(reference, scored.probs, scored.labels, coverage,
                                            decide(class_table(scored.probs), cut)))
