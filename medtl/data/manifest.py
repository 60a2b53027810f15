"""CSV/TSV manifests: one row per image with its label, optionally a patient (or study) ID and a split.

Paths are relative to the manifest's folder unless absolute. Without a split column, test and val are
carved from the rows, grouped by patient when an ID column is present (a patient's images all land in one
split) and stratified by label. Rows naming a missing file or an unknown label are left out and listed
(with their row number) in the run folder; `--strict` fails on the first instead. So are rows whose label is
missing: empty, or a placeholder that spreadsheets and pandas write for an empty cell (`MISSING`, in any
case: NaN, NA, N/A, None, null, <NA>, #N/A); such a label is a class only when `data.class_names` names it.
A patient ID written as such a placeholder counts as empty. Labels are compared in Unicode NFC form. The
separator is `,` (tab for .tsv) or whichever of `, ; tab |` makes the header name a path and a label
column (spreadsheets in many locales write `;`). An image listed twice is
kept once (the extra rows listed the same way) when its rows agree, and refused, naming both rows, when they
give it different labels, splits or patients: otherwise one image could be trained on and tested on.
Other columns (sex, site, scanner) are subgroups, scored apart (`DataSplits.attributes`; `data.subgroups`).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from medtl.core.config import DataConfig
from medtl.core.errors import MedtlError
from medtl.data.layout import class_name
from medtl.data.splits import MISSING_VALUE, DataSplits, carve

COLUMNS = {"path": ("path", "file", "filename", "image", "filepath"),
           "label": ("label", "class", "target", "diagnosis"),
           "patient": ("patient", "patient_id", "patientid", "subject", "subject_id", "study_id", "study"),
           "split": ("split", "set", "fold", "subset")}
MISSING = {"", "nan", "na", "n/a", "none", "null", "<na>", "#n/a"}  # an empty cell, as tools write it (casefolded)
SEPARATORS = (",", ";", "\t", "|")
MAX_SUBGROUP_VALUES = 20  # an extra column with more values (an ID, an age) is not scored unless data.subgroups names it
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


def read_rows(path: Path) -> tuple[dict[str, str], list[tuple[int, dict[str, str]]]]:
    """(role -> column name, [(row number, row)]); row numbers count the header as row 1, as a spreadsheet does."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            separator, header, roles = _header(f.readline(), path.suffix.lower() == ".tsv")
            for role in ("path", "label"):
                if role not in roles:
                    shown = "tab" if separator == "\t" else f"'{separator}'"
                    raise MedtlError(f"manifest {path} has no {role} column (header: {', '.join(header) or 'empty'}; "
                                     f"read with {shown} between columns); name one of: {', '.join(COLUMNS[role])}")
            f.seek(0)
            reader = csv.DictReader(f, delimiter=separator)
            return roles, [(i, row) for i, row in enumerate(reader, start=2)]
    except UnicodeDecodeError as exc:
        raise MedtlError(f"manifest {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 "
                         "(in Excel: CSV UTF-8)") from None


def _header(line: str, tsv: bool) -> tuple[str, list[str], dict[str, str]]:
    """(separator, column names, role -> column name): the first separator under which the header names a path
    and a label column, else the file's default one (`,`, or tab for .tsv)."""
    order = sorted(SEPARATORS, key=lambda sep: sep != ("\t" if tsv else ","))
    found = [_roles(next(csv.reader([line], delimiter=sep), []), sep) for sep in order]
    return next((f for f in found if "path" in f[2] and "label" in f[2]), found[0])


def _roles(header: list[str], separator: str) -> tuple[str, list[str], dict[str, str]]:
    roles = {}
    for role, names in COLUMNS.items():
        found = [h for h in header if h.strip().lower() in names]
        if found:
            roles[role] = found[0]
    return separator, header, roles


def from_manifest(path: Path, cfg: DataConfig, seed: int):
    roles, rows = read_rows(path)
    entries, rejected = _entries(path, roles, rows)
    classes = [class_name(c) for c in cfg.class_names] or sorted(
        {e["label"] for e in entries if e["split"] in ("train", None) and not missing(e["label"])})
    if len(classes) < 2:
        raise MedtlError(f"manifest {path} has {len(classes)} label(s) in its training rows; need at least two")
    splits = DataSplits(classes)
    by_split = defaultdict(list)
    for e in entries:
        if e["label"] not in classes:
            rejected[e["ref"]] = _unknown(path, e, classes)
            continue
        by_split[e["split"] or "train"].append(e)
    for split, items in by_split.items():
        splits.refs[split] = [e["ref"] for e in items]
        splits.labels[split] = np.array([classes.index(e["label"]) for e in items], dtype=np.int64)
    kept = [e for items in by_split.values() for e in items]
    splits.groups = {e["ref"]: e["patient"] for e in kept if e["patient"]}
    splits.rejected = rejected
    splits.attributes = subgroup_columns(path, [h for h in (rows[0][1] if rows else {}) if h is not None], roles,
                                         kept, cfg.subgroups, splits.notes)
    _check_patients(path, entries)
    if "patient" in roles and len(splits.groups) != len(kept):
        raise MedtlError(f"manifest {path}: some rows have an empty {roles['patient']}; give every row a patient ID")
    if "test" not in splits.refs:
        carve(splits, "train", "test", cfg.test_fraction, seed, splits.groups)
    return splits


def subgroup_columns(path: Path, header: list[str], roles: dict[str, str], kept: list[dict],
                     named: tuple[str, ...] | None, notes: list[str]) -> dict[str, dict[str, str]]:
    """{column: {ref: value}} for the subgroup columns: those `named` (data.subgroups), else every column that has
    no role (path, label, patient, split) and at most MAX_SUBGROUP_VALUES values; an empty cell is MISSING_VALUE."""
    if named is not None:
        for name in named:
            if name not in header:
                raise MedtlError(f"data.subgroups names '{name}', which is not a column of manifest {path}; its "
                                 f"columns: {', '.join(header)}")
        columns = list(dict.fromkeys(named))
    else:
        columns = [h for h in header if h not in roles.values()]
    out = {}
    for column in columns:
        values = {e["ref"]: _cell(e["cells"].get(column)) for e in kept}
        distinct = len(set(values.values()))
        if named is None and distinct > MAX_SUBGROUP_VALUES:
            notes.append(f"manifest column '{column}' has {distinct} values: not scored as subgroups (name it in "
                         "data.subgroups to score each value, or add a column of a few bins)")
            continue
        out[column] = values
    return out


def no_subgroup_columns(cfg: DataConfig, root: Path) -> None:
    """Data that is not a manifest has no columns: data.subgroups naming any is refused."""
    if cfg.subgroups:
        raise MedtlError(f"data.subgroups names {', '.join(cfg.subgroups)}, but {root} is not a .csv/.tsv manifest "
                         "and has no columns; list the images in a manifest with those columns, or leave "
                         "data.subgroups unset")


def _cell(value: str | None) -> str:
    value = (value or "").strip()
    return MISSING_VALUE if missing(value) else value


def missing(value: str) -> bool:
    """An empty cell, or what spreadsheets and pandas write for one (NaN, NA, None, ...)."""
    return value.strip().casefold() in MISSING


def _unknown(path: Path, entry: dict, classes: list[str]) -> str:
    """Why a row whose label is not a class is left out."""
    if missing(entry["label"]):
        return (f"{path.name} row {entry['row']}: label missing ('{entry['label']}'); give the row a label, or "
                "remove it")
    return (f"{path.name} row {entry['row']}: label '{entry['label']}' is not a class of the training rows "
            f"({', '.join(classes)})")


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
        label = class_name((row.get(roles["label"]) or "").strip())
        patient = (row.get(roles["patient"]) or "").strip() if "patient" in roles else ""
        entry = {"row": number, "ref": str(file.resolve()), "label": label, "cells": row,
                 "patient": "" if missing(patient) else patient, "split": SPLIT_NAMES[split] if split else None}
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
    if first["patient"] != entry["patient"]:  # the IDs themselves are never shown: they name people
        raise MedtlError(f"manifest {path}: '{raw}' is listed twice with different patients (rows {first['row']} "
                         f"and {entry['row']}); keep one row per image")
    for key in ("label", "split"):
        if first[key] != entry[key]:
            raise MedtlError(f"manifest {path}: '{raw}' is listed twice with different {key}s (row {first['row']}: "
                             f"'{first[key] or ''}', row {entry['row']}: '{entry[key] or ''}'); keep one row per image")


def _check_patients(path: Path, entries: list[dict]) -> None:
    """Given splits must not share a patient: name the rows of the first one that does (not its ID)."""
    where = defaultdict(set)
    rows = defaultdict(list)
    for e in entries:
        if e["patient"] and e["split"]:
            where[e["patient"]].add(e["split"])
            rows[e["patient"]].append(e["row"])
    for patient, splits in where.items():
        if len(splits) > 1:
            raise MedtlError(f"manifest {path}: the patient of rows {', '.join(map(str, rows[patient][:6]))} is in "
                             f"{', '.join(sorted(splits))}; a patient's images must stay in one split")
