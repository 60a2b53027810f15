"""Train/val/test splits of image refs: carved stratified and seeded, grouped by patient when groups are known."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from medtl.core.errors import MedtlError
from medtl.data.images import NPZ_SEP

SPLITS = ("train", "val", "test")
PSEUDONYMISED = "pseudonymised (HMAC-SHA256 with the secret in the medtl cache)"
MISSING_VALUE = "(missing)"  # the subgroup of images whose cell is empty (or NaN, NA, ...): named, not dropped


@dataclass
class DataSplits:
    classes: list[str]
    refs: dict[str, list[str]] = field(default_factory=dict)  # split -> image refs
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # split -> int labels
    notes: list[str] = field(default_factory=list)  # how the splits were made, for the log
    groups: dict[str, str] = field(default_factory=dict)  # ref -> patient: carved splits never split a patient
    carved: dict[str, str] = field(default_factory=dict)  # split -> the split it was carved from (given: absent)
    content: dict[str, str] = field(default_factory=dict)  # ref -> content (or near-duplicate cluster) key
    rejected: dict[str, str] = field(default_factory=dict)  # manifest rows left out -> why (row number)
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)  # subgroup column -> {ref: value}
    patient_source: str = ""  # where `groups` came from (a manifest column, a path pattern), for the record
    ids_revealed: bool = False  # `groups` hold the clear keys (data.reveal_ids), not pseudonyms

    def keys_per_split(self) -> dict[str, int]:
        """Distinct patient keys in each split."""
        return {s: len({self.groups[r] for r in refs if r in self.groups}) for s, refs in self.refs.items()}

    def patients(self) -> dict:
        """The record of the patient keys: where they came from and how many keys each split has ({}: none)."""
        if not self.groups:
            return {}
        return {"source": self.patient_source or "the manifest's patient column",
                "ids": "clear (data.reveal_ids)" if self.ids_revealed else PSEUDONYMISED,
                "keys_per_split": self.keys_per_split(), "notes": self.patient_notes()}

    def patient_notes(self) -> list[str]:
        """The log's lines on the patient keys (also why none was found, when auto looked)."""
        return [n for n in self.notes if n.startswith("patients:")]

    def all_refs(self) -> list[str]:
        return [r for s in SPLITS for r in self.refs.get(s, [])]

    def attributes_of(self, split: str, order: list[str] | None = None) -> dict[str, list[str]]:
        """{subgroup column: the value of each image of `split`, in the split's order (or `order`'s refs)}."""
        refs = self.refs.get(split, []) if order is None else order
        return {column: [values.get(r, MISSING_VALUE) for r in refs] for column, values in self.attributes.items()}

    def drop(self, bad: set[str]) -> None:
        """Leave out `bad` refs (unreadable images); refused when a class would keep no training image."""
        for split in list(self.refs):
            keep = [i for i, r in enumerate(self.refs[split]) if r not in bad]
            if split == "train":
                self._none_left(keep)
            self.refs[split] = [self.refs[split][i] for i in keep]
            self.labels[split] = self.labels[split][keep]

    def _none_left(self, keep: list[int]) -> None:
        left = np.bincount(self.labels["train"][keep], minlength=len(self.classes))
        had = np.bincount(self.labels["train"], minlength=len(self.classes))
        for k in np.flatnonzero((left == 0) & (had > 0)):
            refs = [r for r, y in zip(self.refs["train"], self.labels["train"]) if y == k]
            where = refs[0].split(NPZ_SEP)[0] if NPZ_SEP in refs[0] else os.path.commonpath(
                [os.path.dirname(r) for r in refs])
            raise MedtlError(f"class '{self.classes[k]}' has no readable image in train: its {len(refs)} training "
                             f"image(s) under {where} are all unusable (`medtl audit DATA` lists why); fix or "
                             "replace them, or remove the class")


def carve(splits: DataSplits, source: str, target: str, fraction: float, seed: int,
          groups: dict[str, str] | None = None, kind: str = "patient") -> None:
    """Move a stratified, seeded `fraction` of `source` into `target`. With `groups` (ref -> group), a group's
    images all land on one side: patients (`kind="patient"`), or copies of one image (`kind="content"`: the
    split is drawn over groups, so with no copies it is exactly the ungrouped split)."""
    refs, y = splits.refs[source], splits.labels[source]
    counts = np.bincount(y, minlength=len(splits.classes))
    if counts.min() < 2:
        raise MedtlError(f"class '{splits.classes[int(counts.argmin())]}' has {counts.min()} image(s) in "
                         f"{source}; need at least 2 per class to carve a stratified {target} split")
    if groups and kind == "patient":
        keep, take = grouped_split(y, [groups[r] for r in refs], fraction, seed)
    elif groups:
        keep, take = _split_over_groups(y, [groups.get(r, r) for r in refs], fraction, seed, splits.classes)
    else:
        keep, take = train_test_split(np.arange(len(refs)), test_size=fraction, stratify=y, random_state=seed)
    keep, take = np.sort(keep), np.sort(take)
    splits.refs[target] = [refs[i] for i in take]
    splits.labels[target] = y[take]
    splits.refs[source] = [refs[i] for i in keep]
    splits.labels[source] = y[keep]
    how = {"patient": "patient-grouped, stratified", "content": "stratified, copies of an image kept together",
           "near_duplicates": "stratified, near-duplicate clusters kept together"}.get(kind) if groups else "stratified"
    splits.carved[target] = source
    splits.notes.append(f"{target} = {how} {fraction:.0%} of {source} (seed {seed})")


def _split_over_groups(y: np.ndarray, groups: list[str], fraction: float, seed: int,
                       classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, take) from a stratified split of the groups (in order of first appearance, each labelled
    by its first image), so that no group straddles the two sides."""
    order: dict[str, int] = {}
    for g in groups:
        order.setdefault(g, len(order))
    index = np.array([order[g] for g in groups])
    first = np.unique(index, return_index=True)[1]
    labels = y[first]
    counts = np.bincount(labels, minlength=len(classes))
    if counts.min() < 2:
        raise MedtlError(f"class '{classes[int(counts.argmin())]}' has {counts.min()} distinct image(s) once copies "
                         "are grouped; need at least 2 per class, or set data.group=none")
    keep_g, take_g = train_test_split(np.arange(len(order)), test_size=fraction, stratify=labels, random_state=seed)
    take = np.isin(index, take_g)
    return np.flatnonzero(~take), np.flatnonzero(take)


def grouped_split(y: np.ndarray, groups: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, take): whole groups (patients) go to one side; classes balanced as far as groups allow."""
    n_splits = max(2, round(1 / fraction))
    if len(set(groups)) < n_splits:
        raise MedtlError(f"only {len(set(groups))} patients: too few to carve a {fraction:.0%} split by patient; "
                         "add a split column to the manifest, give val/ and test/ folders, or set "
                         "data.patient_pattern=none when the keys come from the paths")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    keep, take = next(folds.split(np.zeros(len(y)), y, groups))
    return keep, take


def subset(splits: DataSplits, per_class: int, seed: int) -> None:
    y = splits.labels["train"]
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class]
                                   for c in range(len(splits.classes))]))
    splits.refs["train"] = [splits.refs["train"][i] for i in keep]
    splits.labels["train"] = y[keep]
    splits.notes.append(f"train = fixed subset of at most {per_class} images per class (seed {seed})")


def need_two_classes(classes: list[str], where: Path) -> None:
    if len(classes) < 2:
        raise MedtlError(f"only one class ({', '.join(classes)}) in {where}; a classifier needs at least "
                         "two class folders")
