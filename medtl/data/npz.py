"""MedMNIST-style `.npz` files: `{train,val,test}_{images,labels}` arrays; each image is named
`<file.npz>::<split>::<index>`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtl.core.errors import MedtlError
from medtl.data.images import NPZ_SEP
from medtl.data.splits import SPLITS, DataSplits, need_two_classes


def from_npz(path: Path, class_names: tuple[str, ...]) -> DataSplits:
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
    need_two_classes(splits.classes, path)
    for split, y in labels.items():
        splits.refs[split] = [f"{path}{NPZ_SEP}{split}{NPZ_SEP}{i}" for i in range(len(y))]
        splits.labels[split] = y
    return splits
