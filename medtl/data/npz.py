"""MedMNIST-style `.npz` files: `{train,val,test}_{images,labels}` arrays; each image is named
`<file.npz>::<split>::<index>`.

Everything is checked when the file is opened, each problem as one line naming the file, the key and the fix:
a file that is not a zip of arrays, missing keys, images and labels of different lengths, an empty split,
image arrays PIL cannot make images of, labels that are not whole numbers 0..K-1. The image arrays' shapes and
types are read from their headers, so checking a large file does not load its images.
"""

from __future__ import annotations

import contextlib
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medtl.core.errors import MedtlError
from medtl.data.images import NPZ_SEP
from medtl.data.splits import SPLITS, DataSplits, need_two_classes

KEYS = "{train,val,test}_{images,labels}"
READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)  # what a damaged .npz raises
GRAY_TYPES = {"uint8", "uint16", "int16", "int32", "float32", "float64", "bool"}  # (N, H, W) PIL turns into images
COLOUR_CHANNELS = (2, 3, 4)  # uint8 (N, H, W, C): gray+alpha, RGB, RGBA
FIX_IMAGES = "save images as uint8 (N, H, W) gray or (N, H, W, 3) RGB"


def from_npz(path: Path, class_names: tuple[str, ...]) -> DataSplits:
    labels = _read(path)
    found = int(max(v.max() for v in labels.values())) + 1
    if class_names and len(class_names) != found:
        raise MedtlError(f"class_names has {len(class_names)} names but {path} has {found} labels (0..{found - 1}); "
                         f"give {found} names")
    k = len(class_names) or found
    splits = DataSplits(list(class_names) or [f"class_{i}" for i in range(k)])
    need_two_classes(splits.classes, path)
    for split, y in labels.items():
        splits.refs[split] = [f"{path}{NPZ_SEP}{split}{NPZ_SEP}{i}" for i in range(len(y))]
        splits.labels[split] = y
    return splits


def _read(path: Path) -> dict[str, np.ndarray]:
    """split -> int64 labels, after every check on the file's arrays."""
    with _open(path) as data:
        keys = set(data.files)
        if "train_images" not in keys or "train_labels" not in keys:
            held = ", ".join(sorted(keys)) or "nothing"
            raise MedtlError(f"{path} lacks train_images/train_labels (it holds: {held}); expected MedMNIST keys "
                             f"{KEYS}")
        labels = {}
        for split in SPLITS:
            if f"{split}_images" in keys or f"{split}_labels" in keys:
                labels[split] = _split(path, data, split, keys)
    return labels


@contextlib.contextmanager
def _open(path: Path) -> Iterator[np.lib.npyio.NpzFile]:
    """The open .npz, read through a file handle this function owns: numpy leaves its own one open when the
    zip turns out to be damaged."""
    fix = f"save the arrays with numpy.savez(path, {KEYS}=...)"
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise MedtlError(f"{path} cannot be opened ({_one_line(exc)}); check the path and its permissions") from exc
    with f:
        head = f.read(6)
        if head.startswith(b"\x93NUMPY"):
            raise MedtlError(f"{path} holds one array (a .npy file), not a .npz of named arrays; {fix}")
        if not head.startswith(b"PK"):
            raise MedtlError(f"{path} is not a .npz file (a zip of .npy arrays; it starts with {head!r}); {fix}")
        f.seek(0)
        try:
            data = np.load(f, allow_pickle=False)
        except READ_ERRORS as exc:
            raise MedtlError(f"{path} is not a readable .npz file ({_one_line(exc)}); {fix}") from exc
        with data:
            yield data


def _split(path: Path, data, split: str, keys: set[str]) -> np.ndarray:
    """The labels of one split, checked against its images."""
    for key in (f"{split}_images", f"{split}_labels"):
        if key not in keys:
            raise MedtlError(f"{path} has {split}_{'labels' if key.endswith('images') else 'images'} but no {key}; "
                             f"give both or neither")
    n = _check_images(path, data, f"{split}_images")
    y = _labels(path, data, f"{split}_labels")
    if len(y) != n:
        raise MedtlError(f"{path}: {split}_images has {n} images but {split}_labels has {len(y)} labels; give one "
                         "label per image")
    return y


def _check_images(path: Path, data, key: str) -> int:
    shape, dtype = _header(path, data, key)
    gray = len(shape) == 3 and dtype.name in GRAY_TYPES
    colour = len(shape) == 4 and dtype.name == "uint8" and shape[3] in COLOUR_CHANNELS
    if not (gray or colour):
        hint = "; drop the channel axis: images[..., 0]" if len(shape) == 4 and shape[3] == 1 else ""
        raise MedtlError(f"{path}: {key} is {dtype.name} of shape {shape}; {FIX_IMAGES}{hint}")
    if shape[0] == 0:
        raise MedtlError(f"{path}: {key} is empty (0 images); fill it, or leave out {key} and "
                         f"{key.replace('images', 'labels')} (val and test are then carved from train)")
    if min(shape[1:3]) == 0:
        raise MedtlError(f"{path}: {key} has images of {shape[1]}x{shape[2]} pixels; {FIX_IMAGES}")
    return int(shape[0])


def _labels(path: Path, data, key: str) -> np.ndarray:
    """One whole number >= 0 per image, as int64."""
    shape, dtype = _header(path, data, key)
    if dtype.kind not in "biuf":
        raise MedtlError(f"{path}: {key} is {dtype.name}; save labels as integers 0..K-1, one per image")
    if len(shape) not in (1, 2) or len(shape) == 2 and shape[1] != 1:
        raise MedtlError(f"{path}: {key} has shape {shape}; give one class label per image, shape (N,) or (N, 1) "
                         "(multi-label files such as ChestMNIST are not supported)")
    y = _array(path, data, key).reshape(-1)
    whole = np.isfinite(y) & (y == np.round(y)) if dtype.kind == "f" else np.ones(y.shape, bool)
    bad = np.flatnonzero(~whole | (y < 0))
    if bad.size:
        raise MedtlError(f"{path}: {key}[{bad[0]}] is {y[bad[0]]} ({bad.size} bad label(s)); labels must be whole "
                         "numbers 0..K-1, one per class")
    return y.astype(np.int64)


def _header(path: Path, data, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of an array in the file, from its .npy header (the array itself is not read)."""
    member = f"{key}.npy" if f"{key}.npy" in data.zip.namelist() else key
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with data.zip.open(member) as f:
            read = readers.get(np.lib.format.read_magic(f))
            if read is not None:
                shape, _, dtype = read(f)
                return tuple(shape), dtype
    except READ_ERRORS as exc:
        raise MedtlError(f"{path}: {key} is not a readable array ({_one_line(exc)}); save the file again with "
                         "numpy.savez") from exc
    array = _array(path, data, key)  # a newer header format: read the array
    return array.shape, array.dtype


def _array(path: Path, data, key: str) -> np.ndarray:
    try:
        return data[key]
    except READ_ERRORS as exc:
        raise MedtlError(f"{path}: {key} is not a readable array ({_one_line(exc)}); save the file again with "
                         "numpy.savez") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{exc.__class__.__name__}: {exc}".split())
