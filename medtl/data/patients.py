"""Patient (or study) keys of images, so that a carved split never puts one patient on both sides.

A key comes from a manifest's patient column (manifest.py), or from the path: a regular expression searched in
the path relative to the data root, its first group the key (`data.patient_pattern`). With `auto`, the
candidate patterns below are tried in order and the first one with strong evidence is used: it matches nearly
every image, it names many keys, most keys hold more than one image... and none holds a large share of them
(a shared word like `img_001.png`'s `img` is not a patient)."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass

from medtl.data.dicom import ID_TAGS, header_ids, is_dicom
from medtl.data.images import NPZ_SEP

# (what it reads, pattern over the relative path with '/' separators); first group = the key
CANDIDATES = (
    ("a patient folder (CheXpert's patient00001/)", r"(?:^|/)(patient[^/]*\d[^/]*)/"),
    ("a patient folder (MIMIC's p10000032/)", r"(?:^|/)(p\d{6,})/"),
    ("a numbered file-name prefix (person12_..., IM-0115-..., 00000001_000)",  # then a lower-case word, numbers
     r"^(?:.*/)?([^/]*?\d+)[_-](?:[a-z]+[_-])?\d+(?:[_-]\d+)*\.[^/.]+$"),
)
RASTER = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}  # not opened to look for DICOM
MATCHED = 0.95  # share of images the pattern must match
SHARED = 0.2  # share of keys that must hold two or more images
LARGEST = 0.02  # the largest key's share of images at most (or 20 images, when more)
FEWEST_KEYS = 20


@dataclass(frozen=True)
class PatientKeys:
    """ref -> key, and where the keys came from (said in the log and the record)."""

    keys: dict[str, str]
    source: str


def relative(ref: str, root: str) -> str:
    """The path of `ref` below `root` with '/' separators (the ref itself when it is not below)."""
    try:
        rel = os.path.relpath(ref, root)
    except ValueError:
        return ref.replace(os.sep, "/")
    return (ref if rel.startswith("..") else rel).replace(os.sep, "/")


def keys_by_pattern(refs: list[str], root: str, pattern: str) -> dict[str, str]:
    """{ref: key} for every ref whose relative path the pattern matches (a ref it does not match has no key)."""
    compiled = re.compile(pattern)
    out = {}
    for ref in refs:
        if NPZ_SEP in ref:
            continue
        found = compiled.search(relative(ref, root))
        if found and found.group(1):
            out[ref] = found.group(1)
    return out


def evidence(refs: list[str], keys: dict[str, str]) -> str | None:
    """Why `keys` are not trustworthy patient keys for `refs`, or None when the evidence is strong."""
    if not refs or len(keys) < MATCHED * len(refs):
        return f"matches {len(keys)} of {len(refs)} images"
    sizes = Counter(keys.values())
    if len(sizes) < FEWEST_KEYS:
        return f"only {len(sizes)} keys"
    shared = sum(n > 1 for n in sizes.values())
    if shared < SHARED * len(sizes):
        return f"only {shared} of {len(sizes)} keys hold more than one image"
    largest = max(sizes.values())
    if largest > max(LARGEST * len(refs), 20):
        return f"one key holds {largest} of {len(refs)} images"
    return None


def find_keys(refs: list[str], root: str, setting: str) -> PatientKeys | None:
    """The patient keys `data.patient_pattern` gives (`search`), or None."""
    return search(refs, root, setting)[0]


def search(refs: list[str], root: str, setting: str) -> tuple[PatientKeys | None, str]:
    """(the patient keys `data.patient_pattern` gives, or None; the log's line on why auto found none, else '').
    none: no keys; a pattern as set: every image it matches keyed, the rest each its own key; auto: the DICOM
    headers' IDs (`dicom_keys`), else the first path candidate with strong evidence."""
    if setting == "none" or not refs:
        return None, ""
    if setting != "auto":
        return _keyed(refs, keys_by_pattern(refs, root, setting), f"data.patient_pattern {setting!r}"), ""
    from_headers = dicom_keys(refs)
    if from_headers is not None:
        return from_headers, ""
    why = []
    for what, pattern in CANDIDATES:
        keys = keys_by_pattern(refs, root, pattern)
        weak = evidence(refs, keys)
        if weak is None:
            return _keyed(refs, keys, f"found in the paths: {what}"), ""
        why.append(f"{what}: {weak}")
    return None, (f"patients: no patient key found ({'; '.join(why)}); carved splits keep only copies of one image "
                  "together: give a manifest patient column or set data.patient_pattern to the part of the path that "
                  "names the patient")


def dicom_keys(refs: list[str]) -> PatientKeys | None:
    """Keys from the DICOM headers: PatientID when every DICOM file names one, else StudyInstanceUID when every
    one names that (a study is a stricter key than none: a patient's studies may then fall apart), else None;
    also None when the files name one key only (an anonymiser's constant, or one patient: nothing to group).
    Images that are not DICOM files are each their own key."""
    files = [r for r in refs if NPZ_SEP not in r and os.path.splitext(r)[1].lower() not in RASTER and is_dicom(r)]
    if not files:
        return None
    ids = {r: header_ids(r) for r in files}
    for tag in ID_TAGS:
        keys = {r: found[tag] for r, found in ids.items() if tag in found}
        if len(keys) == len(files) and len(set(keys.values())) > 1:
            return _keyed(refs, keys, f"the DICOM headers' {tag}")
    return None


def _keyed(refs: list[str], keys: dict[str, str], source: str) -> PatientKeys:
    """Every ref keyed: one the pattern did not match is its own patient."""
    return PatientKeys({**keys, **{r: f"(unmatched) {r}" for r in refs if r not in keys}}, source)


def describe(found: PatientKeys, counts: dict[str, int], n: int) -> str:
    """One line for the log and the record: where the keys came from, keys per split (`counts`), images per key
    (of `n` images)."""
    keys = len(set(found.keys.values()))
    per = ", ".join(f"{split} {k}" for split, k in counts.items())
    return (f"patients: {keys} keys ({n / max(keys, 1):.1f} images per key), {found.source}; keys per split: {per}"
            " (data.patient_pattern=none turns this off)")


def shared_keys(keys: dict[str, str], refs: dict[str, list[str]], given: list[str]) -> dict[str, int]:
    """{'train & test': n}: keys with images on both sides of a published (given) pair of splits."""
    out = {}
    for i, a in enumerate(given):
        for b in given[i + 1:]:
            both = {keys[r] for r in refs.get(a, []) if r in keys} & {keys[r] for r in refs.get(b, []) if r in keys}
            out[f"{a} & {b}"] = len(both)
    return out
