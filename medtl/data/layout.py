"""Split folders as people publish them: `train/val/test`, `Training/Testing`, `train/valid/test`,
`training/validation/testing`, in any case. A folder whose "classes" look like split names is never trained
as classes: it is read as splits, or refused in one line when the layout is ambiguous.

What an archive or a file manager leaves beside the images is not data: macOS's `__MACOSX/` folders and
AppleDouble `._name` files (resource forks that carry an image's suffix but no image) are ignored wherever
images are listed; `.DS_Store` and `Thumbs.db` have no image suffix and are never read. Hidden folders
(`.name`) are not classes; the caller says so when one holds images. Class names are compared in Unicode
NFC form, so a folder name copied from macOS (NFD) and the same name typed elsewhere are one class."""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from pathlib import Path

from medtl.core.errors import MedtlError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"}
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}


MACOS_FOLDER = "__MACOSX"  # what unzipping a macOS archive leaves: AppleDouble copies of every file


def class_name(name: str) -> str:
    """A folder name or a manifest label as a class name: Unicode NFC (macOS file names are NFD)."""
    return unicodedata.normalize("NFC", name)


def is_leftover(path: Path, root: Path) -> bool:
    """An AppleDouble `._name` file, or anything under a `__MACOSX/` folder below `root`."""
    return path.name.startswith("._") or MACOS_FOLDER in path.relative_to(root).parts[:-1]


def image_files(folder: Path) -> list[Path]:
    """The image and DICOM files under `folder` (recursively, sorted), macOS leftovers left out."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and not is_leftover(p, folder) and p.is_file())


def subfolders(root: Path) -> list[Path]:
    """The folders of `root` that can be classes or splits: not hidden, not `__MACOSX`."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != MACOS_FOLDER)


def hidden_folders(root: Path) -> list[Path]:
    """Hidden folders of `root` (`.name`) with images in them or one level down (not a whole `.git` searched):
    ignored, but worth a word."""
    def shallow_images(folder: Path) -> bool:
        return any(p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("._") and p.is_file()
                   for pattern in ("*", "*/*") for p in folder.glob(pattern))
    return sorted(p for p in root.iterdir() if p.name.startswith(".") and p.is_dir() and shallow_images(p))


def has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES and not is_leftover(p, folder) and p.is_file()
               for p in folder.rglob("*"))


def split_folders(root: Path) -> dict[str, Path] | None:
    """{split: folder} when the folders of `root` are splits, None when they are classes; MedtlError naming
    the folders and the fix when they are neither clearly."""
    dirs = subfolders(root)
    splitlike = [d for d in dirs if d.name.lower() in SPLIT_ALIASES]
    if not splitlike:
        return None
    # folders without any image (split lists, notes) sit beside the splits in published sets: not classes
    others = [d.name for d in dirs if d not in splitlike and has_images(d)]
    if others:
        raise MedtlError(f"{root} mixes split folders ({', '.join(d.name for d in splitlike)}) with other folders "
                         f"({', '.join(others)}); put every class folder inside the splits ({splitlike[0].name}/"
                         "<class>/...), or rename a class that is called like a split")
    for d in splitlike:
        if not subfolders(d):
            raise MedtlError(f"{d} looks like a split folder but holds no class folders; arrange it as {d}/<class>/"
                             f"<image>, or rename it if '{d.name}' really is a class")
    by_split: dict[str, list[Path]] = defaultdict(list)
    for d in splitlike:
        by_split[SPLIT_ALIASES[d.name.lower()]].append(d)
    doubled = {s: f for s, f in by_split.items() if len(f) > 1}
    if doubled:
        split, folders = next(iter(doubled.items()))
        raise MedtlError(f"{root}: {' and '.join(f.name for f in folders)} are both the {split} split; keep one "
                         "(merge or remove the other)")
    if "train" not in by_split:
        raise MedtlError(f"{root} has split folders ({', '.join(d.name for d in splitlike)}) but no training split; "
                         "add train/ (or Training/) with class folders, or pass a folder of class folders")
    return {split: folders[0] for split, folders in by_split.items()}
