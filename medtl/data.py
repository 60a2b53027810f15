"""Data sources (class-per-folder trees, MedMNIST .npz), splits, and the tensors fed to a model.

Every image is named by a string `ref` (a file path, or `file.npz::split::index`), so the image
cache, the splits and the run folder's lists all speak of the same thing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from torch.utils.data import Dataset
from torchvision.transforms import v2

from medtl.config import DataConfig
from medtl.errors import MedtlError
from medtl.images import NPZ_SEP

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"}
SPLITS = ("train", "val", "test")


@dataclass
class DataSplits:
    classes: list[str]
    refs: dict[str, list[str]] = field(default_factory=dict)  # split -> image refs
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # split -> int labels
    notes: list[str] = field(default_factory=list)  # how the splits were made, for the log
    groups: dict[str, str] = field(default_factory=dict)  # ref -> patient: carved splits never split a patient
    rejected: dict[str, str] = field(default_factory=dict)  # manifest rows left out -> why (row number)

    def all_refs(self) -> list[str]:
        return [r for s in SPLITS for r in self.refs.get(s, [])]

    def drop(self, bad: set[str]) -> None:
        for split in list(self.refs):
            keep = [i for i, r in enumerate(self.refs[split]) if r not in bad]
            self.refs[split] = [self.refs[split][i] for i in keep]
            self.labels[split] = self.labels[split][keep]


def discover(cfg: DataConfig, split_seed: int = 0) -> DataSplits:
    """Find images and labels under `cfg.path` and make train/val/test splits (stratified, seeded)."""
    root = Path(cfg.path)
    if not cfg.path or not root.exists():
        raise MedtlError(f"data path '{cfg.path}' does not exist; pass a folder of class folders, a folder with "
                         "train/ (val/, test/) inside, or a MedMNIST .npz file")
    root = root.resolve()  # cache keys name images by path: one spelling per file, whatever the cwd
    if root.is_file() and root.suffix.lower() in (".csv", ".tsv"):
        from medtl.manifest import from_manifest
        splits = from_manifest(root, cfg, split_seed)
    elif root.is_file():
        if root.suffix != ".npz":
            raise MedtlError(f"data file {root} is not a .npz or a .csv/.tsv manifest; pass a MedMNIST .npz, "
                             "a manifest or a folder")
        splits = _from_npz(root, cfg.class_names)
    elif (root / "train").is_dir():
        splits = _from_split_tree(root)
    else:
        splits = _from_one_tree(root, cfg, split_seed)
    if "val" not in splits.refs:
        _carve(splits, "train", "val", cfg.val_fraction, split_seed, splits.groups)
    if cfg.subset_per_class:
        _subset(splits, cfg.subset_per_class, split_seed)
    return splits


def _class_folders(root: Path) -> dict[str, list[Path]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    out = {}
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise MedtlError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                             "add images or remove the folder")
        out[folder.name] = files
    if not out:
        raise MedtlError(f"no class folders in {root}; expected {root}/<class>/<image> or "
                         f"{root}/train/<class>/<image>")
    return out


def _need_two(classes: list[str], where: Path) -> None:
    if len(classes) < 2:
        raise MedtlError(f"only one class ({', '.join(classes)}) in {where}; a classifier needs at least "
                         "two class folders")


def _from_split_tree(root: Path) -> DataSplits:
    train = _class_folders(root / "train")
    classes = sorted(train)
    _need_two(classes, root / "train")
    splits = DataSplits(classes)
    for split in SPLITS:
        if not (root / split).is_dir():
            continue
        folders = train if split == "train" else _class_folders(root / split)
        unknown = set(folders) - set(classes)
        if unknown:
            raise MedtlError(f"{root / split} has class folder(s) {sorted(unknown)} absent from {root / 'train'}; "
                             f"classes are {classes}")
        _add(splits, split, folders)
    if "test" not in splits.refs:
        log.warning("%s has no test/ folder: final metrics are on validation only", root)
    return splits


def _add(splits: DataSplits, split: str, folders: dict[str, list[Path]]) -> None:
    refs, labels = [], []
    for name, files in folders.items():
        refs += [str(p) for p in files]
        labels += [splits.classes.index(name)] * len(files)
    splits.refs[split] = refs
    splits.labels[split] = np.asarray(labels, dtype=np.int64)


def _from_one_tree(root: Path, cfg: DataConfig, seed: int) -> DataSplits:
    folders = _class_folders(root)
    classes = sorted(folders)
    _need_two(classes, root)
    splits = DataSplits(classes)
    _add(splits, "train", folders)
    _carve(splits, "train", "test", cfg.test_fraction, seed)
    return splits


def _from_npz(path: Path, class_names: tuple[str, ...]) -> DataSplits:
    with np.load(path) as data:
        keys = set(data.files)
        if "train_images" not in keys or "train_labels" not in keys:
            raise MedtlError(f"{path} lacks train_images/train_labels; expected MedMNIST keys "
                             "{train,val,test}_{images,labels}")
        labels = {s: data[f"{s}_labels"].reshape(-1).astype(np.int64) for s in SPLITS if f"{s}_labels" in keys}
    k = int(max(v.max() for v in labels.values())) + 1
    if class_names and len(class_names) != k:
        raise MedtlError(f"class_names has {len(class_names)} names but {path} has {k} labels; give {k} names")
    splits = DataSplits(list(class_names) or [f"class_{i}" for i in range(k)])
    _need_two(splits.classes, path)
    for split, y in labels.items():
        splits.refs[split] = [f"{path}{NPZ_SEP}{split}{NPZ_SEP}{i}" for i in range(len(y))]
        splits.labels[split] = y
    return splits


def _carve(splits: DataSplits, source: str, target: str, fraction: float, seed: int,
           groups: dict[str, str] | None = None) -> None:
    refs, y = splits.refs[source], splits.labels[source]
    if not 0 < fraction < 1:
        raise MedtlError(f"{target}_fraction={fraction} must be between 0 and 1")
    counts = np.bincount(y, minlength=len(splits.classes))
    if counts.min() < 2:
        raise MedtlError(f"class '{splits.classes[int(counts.argmin())]}' has {counts.min()} image(s) in "
                         f"{source}; need at least 2 per class to carve a stratified {target} split")
    if groups:
        keep, take = _grouped_split(y, [groups[r] for r in refs], fraction, seed)
    else:
        keep, take = train_test_split(np.arange(len(refs)), test_size=fraction, stratify=y, random_state=seed)
    keep, take = np.sort(keep), np.sort(take)
    splits.refs[target] = [refs[i] for i in take]
    splits.labels[target] = y[take]
    splits.refs[source] = [refs[i] for i in keep]
    splits.labels[source] = y[keep]
    how = "patient-grouped, stratified" if groups else "stratified"
    splits.notes.append(f"{target} = {how} {fraction:.0%} of {source} (seed {seed})")


def _grouped_split(y: np.ndarray, groups: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, take): whole groups (patients) go to one side; classes balanced as far as groups allow."""
    n_splits = max(2, round(1 / fraction))
    if len(set(groups)) < n_splits:
        raise MedtlError(f"only {len(set(groups))} patients: too few to carve a {fraction:.0%} split by patient; "
                         "add a split column to the manifest")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    keep, take = next(folds.split(np.zeros(len(y)), y, groups))
    return keep, take


def _subset(splits: DataSplits, per_class: int, seed: int) -> None:
    y = splits.labels["train"]
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class]
                                   for c in range(len(splits.classes))]))
    splits.refs["train"] = [splits.refs["train"][i] for i in keep]
    splits.labels["train"] = y[keep]
    splits.notes.append(f"train = fixed subset of at most {per_class} images per class (seed {seed})")


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights N / (K * n_c), the seed study's class weighting."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def train_transform(size: int, hflip: bool) -> v2.Compose:
    """The seed study's augmentation on uint8 tensors: resized crop, flip, small rotation, jitter."""
    ops = [v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True)]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    ops += [v2.RandomRotation(10), v2.ColorJitter(brightness=0.1, contrast=0.1)]
    return v2.Compose(ops)


class StoreDataset(Dataset):
    """Rows of an ImageStore as uint8 CxSxS tensors with the channels the model takes."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, labels: np.ndarray, in_chans: int, transform=None):
        self.array, self.rows, self.labels = array, rows, labels
        self.in_chans, self.transform = in_chans, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.array(self.array[self.rows[i]]))
        x = match_channels(x, self.in_chans)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


def match_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """uint8 (C,H,W) with C in {1,3} to `in_chans`: gray replicated to 3, or RGB to luminance."""
    if x.shape[-3] == in_chans:
        return x
    if in_chans == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    return v2.functional.rgb_to_grayscale(x)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 batch -> float, scaled to 0..1 and normalised with the weights' mean/std."""
    c = x.shape[1]
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    if c == 1:  # adapted first conv: one channel, mean of the RGB statistics (as timm does)
        m, s = m.mean(1, keepdim=True), s.mean(1, keepdim=True)
    return (x.float() / 255.0 - m) / s
