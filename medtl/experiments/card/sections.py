"""The card's data, model and results sections, each written from a run's facts (`facts.RunFacts`)."""

from __future__ import annotations

import math

from medtl.experiments.card.facts import RunFacts
from medtl.experiments.card.render import Section

METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1", "gmean", "auc", "loss")
SPLIT_ORDER = ("train", "val", "test", "test_deduplicated")


def num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def interval(ci) -> str:
    if not ci or len(ci) != 2 or any(v is None for v in ci):
        return "-"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def class_counts(f: RunFacts) -> dict[str, dict[str, int]]:
    """{split: {class: images}}: from the data read again, else the scored splits' confusion matrices."""
    if f.data is not None:
        return f.data["audit"].balance
    classes = f.metrics.classes
    out = {}
    for split, m in f.metrics.splits.items():
        if split in ("val", "test") and m.get("confusion_matrix"):
            out[split] = {c: int(sum(row)) for c, row in zip(classes, m["confusion_matrix"])}
    return out


def data_sections(f: RunFacts) -> list[Section]:
    cfg, m = f.cfg, f.metrics
    data = Section("data", "Data").p(f"Source: {cfg.data.path}. Classes: {', '.join(m.classes)}.").p(f.data_note)
    splits = Section("data-splits", "Data: splits and counts")
    counts = class_counts(f)
    sizes = m.split_sizes
    rows = []
    for split in [s for s in SPLIT_ORDER if s in sizes or s in counts]:
        per = counts.get(split, {})
        patients = (f.data or {}).get("patients", {}).get(split, "")
        rows.append([split, sizes.get(split, sum(per.values())), *[per.get(c, "-") for c in m.classes], patients])
    splits.table(["split", "images used", *m.classes, "patients"], rows)
    splits.ul(_split_notes(f))
    return [data, splits, _quality(f)]


def _split_notes(f: RunFacts) -> list[str]:
    cfg = f.cfg
    notes = list((f.data or {}).get("notes", []))
    carved = (f.data or {}).get("carved", {})
    for split, source in carved.items():
        notes.append(f"{split} was carved from {source}: stratified by class, seed {cfg.data.split_seed}")
    if f.data is not None and f.data.get("patients"):
        notes.append("partitions are disjoint by patient (the manifest's patient column): no patient is in two splits")
    elif cfg.data.group != "none":
        kind = "near-duplicate clusters" if cfg.data.group == "near_duplicates" else "identical image content"
        notes.append(f"carved partitions are disjoint by {kind} (data.group={cfg.data.group}); splits given as "
                     "folders are used as given")
    else:
        notes.append("partitions are disjoint by image only (data.group=none): copies may span splits")
    if cfg.data.subset_per_class:
        notes.append(f"a subset of {cfg.data.subset_per_class} images per class was used (data.subset_per_class)")
    return notes


def _quality(f: RunFacts) -> Section:
    s = Section("data-quality", "Data: quality, copies and the audit")
    s.p(f"{f.skipped} unreadable images were left out of training (listed in skipped.csv)." if f.skipped else
        "No image was left out as unreadable.")
    if f.data is not None:
        a = f.data["audit"]
        cross = [g for g in a.exact_duplicates if len(g["splits"]) > 1]
        near = [p for p in a.near_duplicates if len(p["splits"]) > 1]
        distinct = f.data.get("distinct")
        s.ul([f"{a.images} images; {len(a.exact_duplicates)} groups of byte-identical copies "
              f"({len(cross)} spanning splits); {len(a.near_duplicates)} near-copy pairs "
              f"({len(near)} spanning splits)"
              + (f"; {distinct} distinct contents" if distinct else ""),
              f"{len(a.unreadable)} unreadable files in the data now"])
    s.p("The audit's findings when the run started:" if f.audit_lines else
        "The audit found nothing to warn about when the run started (or data.audit was off).")
    return s.ul(f.audit_lines)


def model_sections(f: RunFacts) -> list[Section]:
    cfg, m, pre = f.cfg, f.metrics, f.preprocess
    strategy = cfg.model.strategy + (f" (auto chose {f.auto.chosen})" if f.auto else "")
    model = Section("model", "Model").table(["", ""], [
        ["kind", "deep learning: a convolutional image classifier, transfer learning with medtl"],
        ["backbone", pre["backbone"]], ["strategy", strategy],
        ["head", f"{cfg.model.head} (hidden {cfg.model.hidden}, dropout {cfg.model.dropout})"],
        ["outputs", "one probability (of " + m.classes[-1] + ")" if len(m.classes) == 2
         else f"{len(m.classes)} class probabilities (softmax)"],
        ["initial weights", f.pretrained["source"]],
        ["initial weights file", f.pretrained["path"] or "-"],
        ["initial weights SHA-256", f.pretrained["sha256"] or "not available here"],
        ["trained weights SHA-256", m.weights_sha256 or "-"]])
    prep = Section("preprocessing", "Preprocessing").table(["", ""], [
        ["input size", f"{pre['image_size']} x {pre['image_size']} px (squashed, aspect ratio not kept)"],
        ["channels", f"{pre['in_chans']} ({cfg.data.channels})"],
        ["normalization", f"mean {pre['mean']}, std {pre['std']} (the initial weights' statistics)"],
        ["decoding", f"DICOM window {pre['dicom_window']}, colour mode {pre['convert_mode']}, "
                     f"fast JPEG {pre['fast_jpeg']}, at most {pre['max_pixels']} pixels"],
        ["augmentation (training only)", ("resized crop (scale 0.8-1), " + ("horizontal flip, " if cfg.data.hflip
                                          else "") + "rotation up to 10 degrees, brightness/contrast jitter 0.1")
         if cfg.data.augment else "none"]])
    return [model, prep, _training(f), _selection(f)]


def _training(f: RunFacts) -> Section:
    t, m = f.cfg.train, f.metrics
    s = Section("training", "Training").table(["", ""], [
        ["epochs", f"{m.epochs_run} run of at most {t.epochs} (patience {t.patience}, monitor {t.monitor})"],
        ["optimizer", f"{t.optimizer}, lr {t.lr}, weight decay {t.weight_decay}, schedule {t.schedule}"],
        ["batch size", t.batch_size], ["class imbalance", "class-weighted loss" if t.class_weights else "none"],
        ["label smoothing", t.label_smoothing], ["seed", t.seed],
        ["test-time augmentation", (m.tta or {}).get("applied", f.cfg.eval.tta)],
        ["ensembling", "none: one model"], ["training time", f"{num(m.train_seconds, 1)} s"]])
    if f.auto:
        s.p(f"Strategy auto: {f.auto.reason}")
        s.table(["candidate", "validation AUC", "validation loss"],
                [[c.get("strategy"), num(c.get("val_auc")), num(c.get("val_loss"))]
                 for c in f.auto.candidates])
    return s


def _selection(f: RunFacts) -> Section:
    m, t = f.metrics, f.cfg.train
    s = Section("selection", "How the final model was chosen")
    s.p(f"The weights of epoch {m.best_epoch} (best validation {t.monitor}) were kept; the test split was "
        "scored once, after every choice.")
    if f.auto:
        s.p(f"Strategy: {f.auto.chosen} by validation ({f.auto.rule}).")
    if m.tta:
        s.p(f"Test-time augmentation: {m.tta.get('reason', '')}")
    return s


def results_sections(f: RunFacts) -> list[Section]:
    m = f.metrics
    splits = m.splits
    s = Section("results", "Results").p("Each metric with its 95 % bootstrap interval "
                                        f"({f.cfg.eval.bootstrap} resamples); undefined values are not zero.")
    for split in [x for x in SPLIT_ORDER if x in splits]:
        r = splits[split]
        s.p(f"{split} ({r.get('n')} images" + (f", {r['removed']} copies of training images removed" if
                                               r.get("removed") else "") + f"; {_level(r)}):")
        s.table(["metric", "value", "95 % interval"],
                [[k, num(r.get(k)), interval((r.get("ci95") or {}).get(k))] for k in METRICS if k in r])
    out = [s]
    per_class = {x: splits[x]["per_class"] for x in splits if splits[x].get("per_class")}
    if per_class:
        pc = Section("per-class", "Results per class")
        for split, table in per_class.items():
            pc.p(f"{split}:").table(["class", "support", "precision", "recall", "specificity", "f1", "auc"],
                                    [[c, v.get("support"), *[_with_ci(v, k) for k in
                                                             ("precision", "recall", "specificity", "f1", "auc")]]
                                     for c, v in table.items()])
        out.append(pc)
    return out + [*_per_patient(f), _calibration(f), _operating_point(f), *_subgroups(f), *_robustness(f)]


def _level(r: dict) -> str:
    """Which level a split's numbers are, and what its intervals resample."""
    if r.get("interval_unit") == "patient":
        return "per image; intervals resample patients: a cluster bootstrap"
    return "per image; intervals resample images"


def _per_patient(f: RunFacts) -> list[Section]:
    """Results per patient key, when the data name patients: the rule and threshold chosen on validation."""
    level = f.metrics.patient_level or {}
    if not level.get("splits"):
        return []
    s = Section("per-patient", "Results per patient").p(
        f"Each patient key's probability is the {level['rule']} of its images' (rule chosen on {level['chosen_on']}"
        f"; threshold {num(level.get('threshold'), 4)}); each key counts once, so these intervals resample "
        "patients. Keys are pseudonymised unless the run revealed them.")
    for split in [x for x in SPLIT_ORDER if x in level["splits"]]:
        r = level["splits"][split]
        s.p(f"{split} ({r.get('keys')} patient keys, {r.get('images')} images; per patient):")
        s.table(["metric", "value", "95 % interval"],
                [[k, num(r.get(k)), interval((r.get("ci95") or {}).get(k))] for k in METRICS if k in r])
    return [s]


def _with_ci(values: dict, key: str) -> str:
    ci = (values.get("ci95") or {}).get(key)
    return num(values.get(key)) + (f" {interval(ci)}" if ci else "")


def _calibration(f: RunFacts) -> Section:
    m = f.metrics
    s = Section("calibration", "Calibration")
    rows = [[split, num((r.get("calibration") or {}).get("ece")), num((r.get("calibration") or {}).get("brier"))]
            for split, r in m.splits.items()]
    s.table(["split", "ECE", "Brier"], rows)
    t = m.temperature
    s.p(f"Temperature scaling fitted on validation: T = {t:.3f}." if t not in (None, 1.0) else
        "No recalibration (eval.calibrate=none): probabilities are the model's own. See reliability.png.")
    return s


def _operating_point(f: RunFacts) -> Section:
    m = f.metrics
    s = Section("operating-point", "Operating point")
    if len(m.classes) == 2:
        s.p(f"A probability of {m.classes[1]} at or above {num(m.threshold, 4)} is called "
            f"{m.classes[1]}; the threshold was chosen on validation by {m.threshold_method} and never "
            "looked at test.")
    else:
        s.p("The class with the highest probability is predicted (no threshold).")
    test = m.splits.get("test")
    if test and test.get("confusion_matrix"):
        s.p("Test confusion matrix (rows: true class, columns: predicted):")
        s.table(["", *m.classes], [[c, *row] for c, row in zip(m.classes, test["confusion_matrix"])])
    return s


def _subgroups(f: RunFacts) -> list[Section]:
    found = {split: r["subgroups"] for split, r in f.metrics.splits.items() if r.get("subgroups")}
    if not found:
        return []
    s = Section("subgroups", "Results per subgroup")
    for split, groups in found.items():
        for column, values in groups.items():
            if not isinstance(values, dict):
                continue
            rows = [[v, *[_with_ci(r, k) if isinstance(r, dict) else num(r) for k in ("n", "auc", "sensitivity",
                                                                                      "specificity")]]
                    for v, r in values.items()]
            s.p(f"{split}, by {column}:").table(["value", "n", "auc", "sensitivity", "specificity"], rows)
    return [s]


def _robustness(f: RunFacts) -> list[Section]:
    m = f.metrics
    items = []
    dedup = m.splits.get("test_deduplicated")
    if dedup:
        items.append(f"test without the {dedup.get('removed')} copies of training images: AUC {num(dedup.get('auc'))} "
                     f"{interval((dedup.get('ci95') or {}).get('auc'))}")
    tta = m.tta or {}
    if tta.get("plain_val") and tta.get("mirrored_val"):
        items.append(f"validation AUC plain {num(tta['plain_val'].get('auc'))}, mirrored "
                     f"{num(tta['mirrored_val'].get('auc'))}")
    for split, before in (m.uncalibrated or {}).items():
        items.append(f"{split} ECE before temperature scaling {num(before.get('ece'))}")
    return [Section("robustness", "Robustness and sensitivity analyses").ul(items)] if items else []
