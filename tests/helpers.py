"""Helpers the tests import (`from helpers import make_image`): generated images, the real shared data, process
trees, the CLI run in-process. Fixtures (and the marker of each test's folder) are in tests/conftest.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(os.environ.get("MEDTL_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is absent (set MEDTL_SHARED_DATA to the folder of ../shared/data)")
    return path


def make_image(kind: int, rng: np.random.Generator, size: int = 40, mode: str = "L",
               varied: bool = True) -> Image.Image:
    """Class 0: dark with a bright left part; class 1: bright with a bright disc. Where the edge or the disc
    lies varies, so that no two images are near copies (perceptual hashes far apart, as two patients'
    images are): the run's audit and deduplicated test metrics leave near copies out. `varied=False`: the
    plain pattern (every image of a class a near copy of the others), for a test about something else that
    needs the classes easy to tell apart. Noise on top."""
    yy, xx = np.mgrid[:size, :size]
    shift = rng.uniform(-0.2, 0.2, 3) * size if varied else np.zeros(3)
    if kind == 0:
        arr = np.where(xx + shift[2] * (yy / size - 0.5) < size // 2 + shift[0], 170, 40)
    else:
        arr = np.where((yy - size / 2 - shift[0]) ** 2 + (xx - size / 2 - shift[1]) ** 2 < (size / 3) ** 2, 230, 90)
    for u in range(1, 4) if varied else ():  # uneven exposure and anatomy: low-frequency shading per image
        for v in range(1, 4):
            arr = arr + rng.normal(0, 40) * np.cos(np.pi * u * (yy + 0.5) / size) * np.cos(np.pi * v * (xx + 0.5) / size)
    arr = np.clip(arr + rng.normal(0, 12, arr.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, mode="L")
    return img if mode == "L" else img.convert(mode)


def write_dicom(path: Path, stored: np.ndarray, sop_class: str, **elements) -> None:
    """A minimal uncompressed DICOM file of 16-bit stored values (12 bits used) with `elements` set on it (e.g.
    Modality, RescaleSlope, PatientID)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


TINY = {"backbone": "resnet18", "weights": "none", "strategy": "full", "epochs": 2, "image_size": 32,
        "batch_size": 16}  # a run of a few seconds: medtl.train(data, **TINY)


def write_tree(root: Path, train: int = 24, test: int = 8, classes: tuple[str, str] = ("neg", "pos")) -> Path:
    """root/{train,test}/<class>/<class>_<i>.png: grayscale `make_image`s from seed 0 (the `image_tree`
    fixture's images)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                make_image(label, rng).save(folder / f"{name}_{i}.png")
    return root


def kermany_links(root: Path, train: int, test: int) -> Path:
    """root/{train,test}/{NORMAL,PNEUMONIA}: links to the first images per class of the real Kermany set."""
    source = shared_path("chest_xray_kermany_224")
    for split, n in (("train", train), ("test", test)):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            for path in sorted((source / split / cls).iterdir())[:n]:
                (root / split / cls / path.name).symlink_to(path)
    return root


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (read from /proc), including those that started their own session,
    as torchrun's workers do, so none escapes a kill."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (a lost machine), by process id, never by name."""
    import signal

    for p in descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cli_in_process(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `medtl ARGS` run in this process, through the real entry point."""
    from medtl import cli

    monkeypatch.setattr(sys, "argv", ["medtl", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
