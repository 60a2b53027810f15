"""CSV/TSV manifests: one row per image with its label, optionally a patient (or study) ID and a split.

Paths are relative to the manifest's folder unless absolute. Without a split column, test and val are
carved from the rows, grouped by patient when an ID column is present (a patient's images all land in one
split) and stratified by label. Rows naming a missing file or an unknown label are left out and listed
(with their row number) in the run folder; `--strict` fails on the first instead. An image listed twice is
kept once (the extra rows listed the same way) when its rows agree, and refused, naming both rows, when they
give it different labels, splits or patients: otherwise one image could be trained on and tested on.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from medtl.core.config import DataConfig
from medtl.core.errors import MedtlError
from medtl.data.splits import DataSplits, carve

COLUMNS = {"path": ("path", "file", "filename", "image", "filepath"),
           "label": ("label", "class", "target", "diagnosis"),
           "patient": ("patient", "patient_id", "patientid", "subject", "subject_id", "study_id", "study"),
           "split": ("split", "set", "fold", "subset")}
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


def read_rows(path: Path) -> tuple[dict[str, str], list[tuple[int, dict[str, str]]]]:
    """(role -> column name, [(row number, row)]); row numbers count the header as row 1, as a spreadsheet does."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        roles = {}
        for role, names in COLUMNS.items():
            found = [h for h in header if h.strip().lower() in names]
            if found:
                roles[role] = found[0]
        for role in ("path", "label"):
            if role not in roles:
                raise MedtlError(f"manifest {path} has no {role} column (header: {', '.join(header) or 'empty'}); "
                                 f"name one of: {', '.join(COLUMNS[role])}")
        return roles, [(i, row) for i, row in enumerate(reader, start=2)]


def from_manifest(path: Path, cfg: DataConfig, seed: int):
    roles, rows = read_rows(path)
    entries, rejected = _entries(path, roles, rows)
    classes = list(cfg.class_names) or sorted({e["label"] for e in entries if e["split"] in ("train", None)})
    if len(classes) < 2:
        raise MedtlError(f"manifest {path} has {len(classes)} label(s) in its training rows; need at least two")
    splits = DataSplits(classes)
    by_split = defaultdict(list)
    for e in entries:
        if e["label"] not in classes:
            rejected[e["ref"]] = (f"{path.name} row {e['row']}: label '{e['label']}' is not a class of the training "
                                  f"rows ({', '.join(classes)})")
            continue
        by_split[e["split"] or "train"].append(e)
    for split, items in by_split.items():
        splits.refs[split] = [e["ref"] for e in items]
        splits.labels[split] = np.array([classes.index(e["label"]) for e in items], dtype=np.int64)
    splits.groups = {e["ref"]: e["patient"] for e in entries if e["patient"]}
    splits.rejected = rejected
    _check_patients(path, entries)
    if "patient" in roles and len(splits.groups) != sum(len(v) for v in by_split.values()):
        raise MedtlError(f"manifest {path}: some rows have an empty {roles['patient']}; give every row a patient ID")
    if "test" not in splits.refs:
        carve(splits, "train", "test", cfg.test_fraction, seed, splits.groups)
    return splits


def _entries(path: Path, roles: dict[str, str], rows) -> tuple[list[dict], dict[str, str]]:
    entries, rejected, seen, again = [], {}, {}, {}
    for number, row in rows:
        raw = (row.get(roles["path"]) or "").strip()
        file = Path(raw) if Path(raw).is_absolute() else path.parent / raw
        split = (row.get(roles["split"]) or "").strip().lower() if "split" in roles else None
        if split is not None and split not in SPLIT_NAMES:
            raise MedtlError(f"{path.name} row {number}: split '{split}' unknown; valid: train, val, test")
        if not raw or not file.is_file():
            rejected[str(file)] = f"{path.name} row {number}: file '{raw}' not found"
            continue
        entry = {"row": number, "ref": str(file.resolve()), "label": (row.get(roles["label"]) or "").strip(),
                 "patient": (row.get(roles["patient"]) or "").strip() if "patient" in roles else "",
                 "split": SPLIT_NAMES[split] if split else None}
        first = seen.setdefault(entry["ref"], entry)
        if first is entry:
            entries.append(entry)
            continue
        _same_or_fail(path, raw, first, entry)  # one image twice: kept once, else it could land in two splits
        again.setdefault(entry["ref"], []).append(number)
        numbers = again[entry["ref"]]
        rejected[entry["ref"]] = (f"{path.name} row{'s' * (len(numbers) > 1)} {', '.join(map(str, numbers))}: "
                                  f"'{raw}' again, as in row {first['row']} (same label); row {first['row']} is kept")
    return entries, rejected


def _same_or_fail(path: Path, raw: str, first: dict, entry: dict) -> None:
    """A file listed twice must say the same thing twice; name both rows when it does not."""
    for key in ("label", "split", "patient"):
        if first[key] != entry[key]:
            raise MedtlError(f"manifest {path}: '{raw}' is listed twice with different {key}s (row {first['row']}: "
                             f"'{first[key] or ''}', row {entry['row']}: '{entry[key] or ''}'); keep one row per image")


def _check_patients(path: Path, entries: list[dict]) -> None:
    """Given splits must not share a patient: name the first one that does, with its rows."""
    where = defaultdict(set)
    rows = defaultdict(list)
    for e in entries:
        if e["patient"] and e["split"]:
            where[e["patient"]].add(e["split"])
            rows[e["patient"]].append(e["row"])
    for patient, splits in where.items():
        if len(splits) > 1:
            raise MedtlError(f"manifest {path}: patient '{patient}' is in {', '.join(sorted(splits))} (rows "
                             f"{', '.join(map(str, rows[patient][:6]))}); a patient's images must stay in one split")
