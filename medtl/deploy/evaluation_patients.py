"""An evaluation's results per patient key (`medtl evaluate` on data that name patients): the images' scores
aggregated by the rule the run chose on its validation keys, at the key threshold it chose there, with intervals
over keys; nothing here looks at the evaluated labels to choose anything."""

from __future__ import annotations

from medtl.core.runfolder import RunFolder
from medtl.deploy.evaluation_folder import as_plain
from medtl.deploy.scoring import Scored
from medtl.evaluation.patient_level import KeyRule, KeyScores, aggregate, key_report
from medtl.evaluation.records import RunMetrics

NO_RULE = "not chosen: the run's validation named no patients; the mean of a key's images, at the image threshold"


def patient_level(folder: RunFolder, scored: Scored, cut: float, resamples: int,
                  seed: int) -> tuple[dict | None, KeyScores | None]:
    """(the key-level record, KeyScores) by the run's rule and key threshold (chosen on its validation keys), or
    (None, None) when the data name no patients. A run whose validation named none: the mean, at `cut`."""
    clusters = scored.clusters()
    if clusters is None:
        return None, None
    chosen = RunMetrics.of_run(folder).patient_level
    rule = KeyRule.of_record(chosen) if chosen else KeyRule("mean", cut, NO_RULE, {})
    by_key = aggregate(clusters, scored.labels, scored.probs, rule.rule)
    report = key_report(by_key, scored.classes, rule, resamples, seed)
    return as_plain({**rule.record(), "metrics": report}), by_key
