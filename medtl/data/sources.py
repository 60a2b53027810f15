"""Data sources: class-per-folder trees, split trees, CSV/TSV manifests and MedMNIST .npz, found and split.

Every image is named by a string `ref` (a file path, or `file.npz::split::index`), so the image
cache, the splits and the run folder's lists all speak of the same thing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medtl.core.config import DataConfig
from medtl.core.errors import MedtlError
from medtl.data.groups import content_groups
from medtl.data.images import NPZ_SEP
from medtl.data.layout import IMAGE_SUFFIXES, class_name, hidden_folders, image_files, split_folders, subfolders
from medtl.data.manifest import from_manifest, no_subgroup_columns
from medtl.data.npz import from_npz
from medtl.data.patients import PatientKeys, describe, search, shared_keys
from medtl.data.pseudonyms import pseudonymise
from medtl.data.splits import SPLITS, DataSplits, carve, need_two_classes, subset

log = logging.getLogger(__name__)


def discover(cfg: DataConfig, split_seed: int = 0, whole_tree_as: str | None = None) -> DataSplits:
    """Find images and labels under `cfg.path` and make train/val/test splits (stratified, seeded).

    With `whole_tree_as` (re-scoring a trained run), a plain class-folder tree is not split: all its images
    form that one split."""
    root = Path(cfg.path)
    if not cfg.path or not _exists(root):
        raise MedtlError(f"data path '{cfg.path}' does not exist; pass a folder of class folders, a folder with "
                         "train/ (val/, test/) inside, or a MedMNIST .npz file")
    root = root.resolve()  # cache keys name images by path: one spelling per file, whatever the cwd
    one_tree = False
    manifest = root.is_file() and root.suffix.lower() in (".csv", ".tsv")
    if not manifest:
        no_subgroup_columns(cfg, root)  # only a manifest has columns to name
    if manifest:
        splits = from_manifest(root, cfg, split_seed)
    elif root.is_file():
        if root.suffix != ".npz":
            raise MedtlError(f"data file {root} is not a .npz or a .csv/.tsv manifest; pass a MedMNIST .npz, "
                             "a manifest or a folder")
        splits = from_npz(root, tuple(map(class_name, cfg.class_names)))
    elif (folders := split_folders(root)) is not None:
        splits = _from_split_tree(root, folders)
    elif whole_tree_as:
        splits = _whole_tree(root, whole_tree_as)
        if found := _path_patients(splits, root, cfg.patient_pattern):
            _note_patients(splits, found, {})
        return _private(splits, cfg.reveal_ids)
    else:
        splits, one_tree = _from_one_tree(root), True
    if cfg.group != "none":  # once, for every image: carving and the deduplicated test metrics both read it
        splits.content = content_groups(splits.all_refs(), near=cfg.group == "near_duplicates")
    found = _path_patients(splits, root.parent if root.is_file() else root, cfg.patient_pattern)
    published = shared_keys(splits.groups, splits.refs, [s for s in SPLITS if s in splits.refs]) if found else {}
    groups, kind = (splits.groups, "patient") if splits.groups else (splits.content or None, cfg.group)
    if one_tree:  # a plain class-folder tree: test is carved too
        carve(splits, "train", "test", cfg.test_fraction, split_seed, groups, kind)
    if "val" not in splits.refs:
        carve(splits, "train", "val", cfg.val_fraction, split_seed, groups, kind)
    if cfg.subset_per_class:
        subset(splits, cfg.subset_per_class, split_seed)
    if found:
        _note_patients(splits, found, {} if one_tree else published)
    return _private(splits, cfg.reveal_ids)


def _private(splits: DataSplits, reveal: bool) -> DataSplits:
    """The patient keys as pseudonyms from here on (every output shows these), unless `reveal` (data.reveal_ids)."""
    splits.groups = pseudonymise(splits.groups, reveal)
    splits.ids_revealed = reveal
    return splits


def _path_patients(splits: DataSplits, base: Path, setting: str) -> PatientKeys | None:
    """Patient keys from the DICOM headers or the paths (`data.patient_pattern`) when the data have none from a
    manifest column."""
    if splits.groups or setting == "none":
        return None
    refs = splits.all_refs()
    found, none_found = search(refs, str(base), setting)
    if found:
        splits.groups, splits.patient_source = dict(found.keys), found.source
    elif none_found and NPZ_SEP not in refs[0]:  # a MedMNIST .npz has no paths to read keys from
        splits.notes.append(none_found)
    return found


def _note_patients(splits: DataSplits, found: PatientKeys, published: dict[str, int]) -> None:
    """The log's (and the card's) lines: keys per split, and keys found on both sides of published splits."""
    splits.notes.append(describe(found, splits.keys_per_split(), len(splits.all_refs())))
    for pair, n in published.items():
        if n:
            splits.notes.append(f"patients: {n} keys have images in both {pair} as published (the same patient "
                                "if the names number patients across the collection); carved splits never share one")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # e.g. a name longer than the system allows
        raise MedtlError(f"data path '{str(path)[:80]}...' cannot be used: {exc.strerror}; pass a shorter path "
                         "(move or link the data closer to the root)") from exc


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """{class name (NFC): its image files}; hidden folders that hold images are named in a warning, and folder
    names that differ only in Unicode form (NFC/NFD) are one class."""
    folders = subfolders(root)
    if len(folders) == 1 and split_folders(folders[0]) is not None:  # an unzipped archive's own top folder
        raise MedtlError(f"{root} holds one folder, {folders[0].name}, with split folders inside; pass "
                         f"{folders[0]} as the data")
    for hidden in hidden_folders(root):
        log.warning("ignoring hidden folder %s (its name starts with '.'); rename it without the dot to use it "
                    "as a class", hidden)
    out: dict[str, list[Path]] = {}
    for folder in folders:
        files = image_files(folder)
        if not files:
            raise MedtlError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                             "add images or remove the folder")
        name = class_name(folder.name)
        if name in out:
            log.warning("class folders of %s named '%s' differ only in Unicode form (NFC/NFD); read as one class",
                        root, name)
        out[name] = sorted(out.get(name, []) + files)
    if not out:
        raise MedtlError(f"no class folders in {root}; expected {root}/<class>/<image> or "
                         f"{root}/train/<class>/<image>")
    return out


def _from_split_tree(root: Path, folders: dict[str, Path]) -> DataSplits:
    train = _class_folders(folders["train"])
    classes = sorted(train)
    need_two_classes(classes, folders["train"])
    splits = DataSplits(classes)
    for split in SPLITS:
        if split not in folders:
            continue
        found = train if split == "train" else _class_folders(folders[split])
        unknown = set(found) - set(classes)
        if unknown:
            raise MedtlError(f"{folders[split]} has class folder(s) {sorted(unknown)} absent from "
                             f"{folders['train']}; classes are {classes}")
        _add(splits, split, found)
    named = ", ".join(f"{s} = {f.name}/" for s, f in folders.items())
    splits.notes.append(f"split folders: {named}")
    if "test" not in splits.refs:
        log.warning("%s has no test split folder: final metrics are on validation only", root)
    return splits


def _add(splits: DataSplits, split: str, folders: dict[str, list[Path]]) -> None:
    refs, labels = [], []
    for name, files in folders.items():
        refs += [str(p) for p in files]
        labels += [splits.classes.index(name)] * len(files)
    splits.refs[split] = refs
    splits.labels[split] = np.asarray(labels, dtype=np.int64)


def _whole_tree(root: Path, split: str) -> DataSplits:
    folders = _class_folders(root)
    splits = DataSplits(sorted(folders))
    _add(splits, split, folders)
    splits.notes.append(f"{split} = every image of {root} (one class-folder tree, not split)")
    return splits


def _from_one_tree(root: Path) -> DataSplits:
    """Every image of a plain class-folder tree, in train (discover carves test and val out of it)."""
    folders = _class_folders(root)
    classes = sorted(folders)
    need_two_classes(classes, root)
    splits = DataSplits(classes)
    _add(splits, "train", folders)
    return splits


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for image and DICOM files (sorted; macOS leftovers, `._name`
    files and `__MACOSX/`, left out)."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            out += image_files(path)
        elif path.is_file():
            out.append(path)
        else:
            raise MedtlError(f"'{path}' does not exist; pass image or DICOM files or folders of them")
    if not out:
        raise MedtlError(f"no image files under {', '.join(map(str, paths))} (looked for {sorted(IMAGE_SUFFIXES)})")
    return out
