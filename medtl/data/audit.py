"""Dataset audit: duplicates within and across splits, unreadable files, class balance, and shortcuts.

A shortcut is an image property that tells the class apart without looking at the anatomy (file format,
colour mode such as RGBA vs RGB, bit depth, size). A model can learn it and look better than it is, so
the audit warns about every property whose distribution differs by class.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

import imagehash
import numpy as np
from PIL import Image
from scipy.stats import chi2_contingency
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.tree import DecisionTreeClassifier

from medtl.data import facts_cache
from medtl.data.facts_cache import FileFacts
from medtl.data.images import (NPZ_SEP, READ_ERRORS, content_digest, file_stat, is_dicom_file, open_file, open_image,
                              to_uint8)
from medtl.data.splits import DataSplits

log = logging.getLogger(__name__)

BITS = {"1": 1, "L": 8, "P": 8, "RGB": 8, "RGBA": 8, "LA": 8, "CMYK": 8, "I;16": 16, "I;16B": 16, "I": 32, "F": 32}
CRAMER_V = 0.3  # association of a property with the class above which the audit warns (a "moderate" effect)
SIZE_ACCURACY = 0.6  # image size alone predicting the class this well (balanced, chance 0.5) is a shortcut
NEAR_BITS = 4  # perceptual hashes (64 bits) this close are near-duplicates


@dataclass
class Facts:
    ref: str
    split: str
    label: int
    sha1: str = ""
    phash: int = 0
    format: str = ""
    mode: str = ""
    bits: int = 0
    width: int = 0
    height: int = 0
    error: str = ""


def read_facts(jobs: list[tuple[str, str, int]], perceptual: bool) -> list[Facts]:
    """Facts of each (ref, split, label), read in threads; those read from the files now (not found in the
    current facts cache) are kept there in one write."""
    cache = facts_cache.current()
    with ThreadPoolExecutor() as pool:
        read = list(pool.map(lambda j: _read(*j, perceptual, cache), jobs))
    if cache is not None:
        cache.put((f.ref, new) for f, new in read if new is not None)
    return [f for f, _ in read]


def _read(ref: str, split: str, label: int, perceptual: bool,
          cache: facts_cache.FactsCache | None) -> tuple[Facts, FileFacts | None]:
    """The facts, and what to keep of them in `cache` when they were read from the file now and it had
    settled (not modified in the seconds before)."""
    f = Facts(ref, split, label)
    try:
        read_at, stamp = time.time_ns(), file_stat(ref)
        known = cache.get(ref, stamp) if cache is not None else None
        if known is not None and (known.phash is not None or not perceptual):
            f.sha1, f.phash, f.format, f.mode = known.sha1.hex(), known.phash or 0, known.format, known.mode
            f.bits, f.width, f.height = known.bits, known.width, known.height
            return f, None
        f.sha1 = (known.sha1 if known is not None else content_digest(ref)).hex()  # a header-only row's digest
        img, f.format = _open_raw(ref, load=perceptual)
        f.mode, (f.width, f.height) = img.mode, img.size
        f.bits = BITS.get(img.mode, 8)
        if perceptual:
            f.phash = int(str(imagehash.phash(to_uint8(img).convert("L"))), 16)
    except READ_ERRORS as exc:
        f.error = f"{exc.__class__.__name__}: {exc}"
        return f, None
    if not stamp.settled(read_at):
        return f, None
    return f, FileFacts(stamp, bytes.fromhex(f.sha1), f.phash if perceptual else None, f.format, f.mode, bits=f.bits,
                        width=f.width, height=f.height)


def _open_raw(ref: str, load: bool = True) -> tuple[Image.Image, str]:
    """The image as stored (mode, size) and its format; with `load`, a truncated file raises here."""
    if NPZ_SEP in ref:
        return open_image(ref), "npz"
    if is_dicom_file(ref):
        return open_image(ref), "DICOM"
    with open_file(ref) as img:  # the bytes hashed just before: no second read
        if not load:  # the header tells mode, size and format
            return img, img.format or "unknown"
        img.load()
        return img.copy(), img.format or "unknown"


def collect(splits: DataSplits, perceptual: bool = True) -> list[Facts]:
    return read_facts([(r, s, int(y)) for s in splits.refs for r, y in zip(splits.refs[s], splits.labels[s])],
                      perceptual)


def exact_duplicates(facts: list[Facts], classes: list[str]) -> list[dict]:
    groups = defaultdict(list)
    for f in facts:
        if not f.error:
            groups[f.sha1].append(f)
    out = []
    for members in groups.values():
        if len(members) > 1:
            out.append({"refs": [m.ref for m in members], "splits": sorted({m.split for m in members}),
                        "classes": sorted({classes[m.label] for m in members})})
    return sorted(out, key=lambda g: (-len(g["splits"]), g["refs"][0]))


def near_duplicates(facts: list[Facts], classes: list[str], max_bits: int = NEAR_BITS) -> list[dict]:
    """Pairs whose perceptual hashes differ in at most `max_bits` of 64 bits, exact duplicates left out."""
    ok = [f for f in facts if not f.error]
    pairs = []
    for i, j, bits in near_pairs(np.array([f.phash for f in ok], dtype=np.uint64), max_bits):
        a, b = ok[i], ok[j]
        if a.sha1 != b.sha1:
            pairs.append({"refs": [a.ref, b.ref], "splits": sorted({a.split, b.split}),
                          "classes": sorted({classes[a.label], classes[b.label]}), "bits": bits})
    return sorted(pairs, key=lambda p: (-len(p["splits"]), p["bits"]))


def near_pairs(hashes: np.ndarray, max_bits: int = NEAR_BITS) -> Iterator[tuple[int, int, int]]:
    """(i, j, bits) for every i < j whose 64-bit hashes differ in at most `max_bits` bits; compared 512 rows
    at a time, so memory stays small for tens of thousands of images."""
    for start in range(0, len(hashes), 512):
        dist = np.bitwise_count(hashes[start:start + 512, None] ^ hashes[None, :])
        for i, j in zip(*np.nonzero(dist <= max_bits)):
            if start + i < j:
                yield start + int(i), int(j), int(dist[i, j])


def shortcuts(facts: list[Facts], classes: list[str]) -> list[dict]:
    """Properties whose distribution differs by class: categorical ones by Cramér's V (and values that occur in
    one class only), size by how well it alone predicts the class."""
    ok = [f for f in facts if not f.error]
    out = []
    for prop in ("format", "mode", "bits"):
        table = Counter((classes[f.label], str(getattr(f, prop))) for f in ok)
        values = sorted({v for _, v in table})
        if len(values) < 2:
            continue
        counts = np.array([[table[(c, v)] for v in values] for c in classes])
        v = _cramers_v(counts)
        only = {val: classes[int(np.argmax(counts[:, i]))] for i, val in enumerate(values)
                if (counts[:, i] > 0).sum() == 1 and counts[:, i].sum() >= 5}
        if v >= CRAMER_V or only:
            out.append({"property": prop, "cramers_v": v, "only_in_one_class": only,
                        "by_class": {c: {val: int(counts[k, i]) for i, val in enumerate(values) if counts[k, i]}
                                     for k, c in enumerate(classes)}})
    out += _size_shortcut(ok, classes)
    return out


def _cramers_v(counts: np.ndarray) -> float:
    counts = counts[counts.sum(1) > 0][:, counts.sum(0) > 0]
    if min(counts.shape) < 2:
        return 0.0
    chi2 = chi2_contingency(counts, correction=False)[0]
    return float(np.sqrt(chi2 / counts.sum() / (min(counts.shape) - 1)))


def _size_shortcut(ok: list[Facts], classes: list[str]) -> list[dict]:
    """How well width and height alone predict the class: 5-fold balanced accuracy of a depth-3 tree."""
    x = np.array([[f.width, f.height] for f in ok], float)
    y = np.array([f.label for f in ok])
    counts = np.bincount(y, minlength=len(classes))
    if len(np.unique(x, axis=0)) < 2 or (counts[counts > 0] < 5).any() or (counts > 0).sum() < 2:
        return []
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    score = float(cross_val_score(DecisionTreeClassifier(max_depth=3, random_state=0), x, y, cv=folds,
                                  scoring="balanced_accuracy").mean())
    if score < SIZE_ACCURACY:
        return []
    sides = {c: f"median {np.median(x[y == k, 0]):.0f}x{np.median(x[y == k, 1]):.0f} px, "
                f"10-90% width {np.percentile(x[y == k, 0], 10):.0f}-{np.percentile(x[y == k, 0], 90):.0f}"
             for k, c in enumerate(classes) if counts[k]}
    return [{"property": "size", "size_alone_balanced_accuracy": score, "by_class": sides}]


@dataclass(frozen=True)
class AuditReport:
    """What `medtl audit` found in a data set (and what `--output` writes as JSON: `to_dict`).

    Attributes:
        classes: Class names, in label order.
        images: Images looked at.
        balance: Images per class, by split.
        unreadable: {path: reason} of the files that could not be read.
        exact_duplicates: Groups of byte-identical images (`refs`, their `splits` and `classes`).
        near_duplicates: Pairs within `NEAR_BITS` bits of perceptual hash (`refs`, `splits`, `classes`, `bits`).
        shortcuts: Image properties whose distribution differs by class (`property`, `by_class`, ...).
        patients: Keys per split and where they came from, or `notes` on why none were found.
        sample_size: Expected 95 % interval widths of the test split ({}: no test split, or not asked).
    """

    classes: list[str]
    images: int
    balance: dict[str, dict[str, int]]
    unreadable: dict[str, str]
    exact_duplicates: list[dict]
    near_duplicates: list[dict] = field(default_factory=list)
    shortcuts: list[dict] = field(default_factory=list)
    patients: dict[str, Any] = field(default_factory=dict)
    sample_size: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (`sample_size` only when there is one, as before the record)."""
        out = asdict(self)
        if not out["sample_size"]:
            del out["sample_size"]
        return out

    def with_sample_size(self, sizes: dict[str, Any]) -> "AuditReport":
        """This report with the test split's expected interval widths.

        Args:
            sizes: `evaluation.sample_size.for_labels` of the test split.

        Returns:
            A new report (this one is not changed).
        """
        return replace(self, sample_size=sizes)

    def __getitem__(self, key: str) -> Any:
        """`report["unreadable"]`: a key of the JSON object, as the report was read before it was a record."""
        return self.to_dict()[key]


def audit(splits: DataSplits, perceptual: bool = True, facts: list[Facts] | None = None) -> AuditReport:
    """The whole audit (of `facts` when already collected)."""
    facts = collect(splits, perceptual) if facts is None else facts
    classes = splits.classes
    balance = {s: {c: int((splits.labels[s] == k).sum()) for k, c in enumerate(classes)} for s in splits.refs}
    return AuditReport(classes=classes, images=len(facts), balance=balance,
                       unreadable={f.ref: f.error for f in facts if f.error},
                       exact_duplicates=exact_duplicates(facts, classes),
                       near_duplicates=near_duplicates(facts, classes) if perceptual else [],
                       shortcuts=shortcuts(facts, classes),
                       patients=splits.patients() or {"notes": splits.patient_notes()})


def warnings_for(report: AuditReport) -> list[str]:
    """The audit's findings as sentences a user should read before trusting a model."""
    out = []
    cross = [g for g in report.exact_duplicates if len(g["splits"]) > 1]
    if cross:
        out.append(f"{len(cross)} groups of byte-identical images span splits (e.g. {', '.join(cross[0]['refs'][:2])}):"
                   " a model is scored on images it trained on")
    conflict = [g for g in report.exact_duplicates if len(g["classes"]) > 1]
    if conflict:
        out.append(f"{len(conflict)} groups of byte-identical images carry different labels")
    near = [p for p in report.near_duplicates if len(p["splits"]) > 1]
    if near:
        out.append(f"{len(near)} near-duplicate pairs span splits (perceptual hash within {NEAR_BITS} bits)")
    for s in report.shortcuts:
        detail = (", ".join(f"{v} only in {c}" for v, c in s.get("only_in_one_class", {}).items())
                  or f"by class: {s['by_class']}")
        if s["property"] == "size":
            detail = (f"size alone predicts the class with balanced accuracy {s['size_alone_balanced_accuracy']:.2f}; "
                      f"{s['by_class']}")
        out.append(f"image {s['property']} differs by class ({detail}): a model may learn this shortcut instead "
                   "of the anatomy" + ("; --set data.convert_mode=RGB (or L) removes a mode difference"
                                       if s["property"] == "mode" else ""))
    return out + _small_test(report.sample_size)


def _small_test(sizes: dict) -> list[str]:
    """A warning when the test split has fewer images than the target interval width needs (`sample_size`, added
    by `medtl audit --target-width`)."""
    reports = list(sizes["per_class"].values()) if "per_class" in sizes else [sizes] if sizes else []
    needed = [r.get("test_images_needed") for r in reports if r.get("target_width")]
    if not needed:
        return []
    have = reports[0]["n_pos"] + reports[0]["n_neg"]
    most = None if None in needed else max(needed)
    if most is not None and have >= most:
        return []
    return [f"the test split has {have} images; 95% intervals of width {reports[0]['target_width']:g} need "
            + (f"{most}" if most else "more than any test set can give at this prevalence")
            + " (sample_size in the audit JSON says which metric needs how many)"]
