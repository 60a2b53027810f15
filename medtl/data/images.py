"""Reading one image of any mode, and the decoded-image cache.

Every image is decoded and resized once per data set and size into a uint8 array on disk
(memory-mapped), so training epochs never decode a JPEG again. The cache file is named by a hash
of the images' content and the size: a changed file gives a new name, so a stale cache is never read.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medtl.data import facts_cache
from medtl.data.facts_cache import Stamp
from medtl.data.dicom import DICOM_SUFFIXES, is_dicom, read_dicom
from medtl.data.pixels import finite
from medtl.core.errors import MedtlError
from medtl.core.io import array_digest, atomic_write, make_dir, sweep_temps
from medtl.core.logs import progress as progress_of

log = logging.getLogger(__name__)

CACHE_VERSION = "images-v2"  # bump when decoding changes, so older caches are not reused
# what an unreadable file raises (PIL's bomb error is none of the others)
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
NPZ_SEP = "::"  # an array image is named "<file.npz>::<split>::<index>"


def _npz_array(path: str, key: str) -> np.ndarray:
    """One array of a .npz, remembered while the file is unchanged (a rewritten file is loaded again)."""
    return _npz_loaded(path, key, Stamp.of(path))


@functools.lru_cache(maxsize=8)
def _npz_loaded(path: str, key: str, stamp: Stamp) -> np.ndarray:
    with np.load(path) as data:
        return data[key]


KEPT_BYTES = 256 << 20  # image file bytes kept in memory after their first read, for decoding and the audit
WHOLE_READ_BYTES = 64 << 20  # larger image files are decoded from disk, not read into memory first


class _ReadOnce:
    """Image files read once per process: the bytes read to hash a file (its content key) are kept, up to
    KEPT_BYTES in all, so that decoding it (at every image size a run asks for) and the audit's look at its
    header read memory, not the disk. Keyed by path and stamp (size, times, inode), as `content_digest`: a file
    rewritten in place is read again. Past the limit, files are read from disk each time, as before."""

    def __init__(self, limit: int):
        self.limit, self.used, self.kept, self.lock = limit, 0, {}, threading.Lock()

    def read(self, path: str) -> bytes:
        key = _stat_key(path)
        data = self.kept.get(key)
        if data is None:
            data = Path(path).read_bytes()
            with self.lock:
                if key not in self.kept and self.used + len(data) <= self.limit:
                    self.kept[key] = data
                    self.used += len(data)
        return data

    def source(self, path: str) -> str | io.BytesIO:
        """The file's kept bytes as a file object, else its path."""
        data = self.kept.get(_stat_key(path))
        return path if data is None else io.BytesIO(data)


def _stat_key(path: str) -> tuple[str, Stamp]:
    return path, Stamp.of(path)


FILES = _ReadOnce(KEPT_BYTES)


def read_bytes(ref: str) -> bytes:
    """The raw content that identifies an image (file bytes, or the array slice)."""
    if NPZ_SEP in ref:
        path, split, index = ref.split(NPZ_SEP)
        return _npz_array(path, f"{split}_images")[int(index)].tobytes()
    return FILES.read(ref)


def content_digest(ref: str) -> bytes:
    """SHA-1 of `read_bytes(ref)`, remembered by the file's path and stamp (size, times, inode): a run's content
    keys, carving groups and audit hash each image file once, not once each, and a rerun finds it in the
    current facts cache (data/facts_cache.py) without reading the file. A file rewritten in place gets a new
    stamp, so a new digest (a rewrite within the file system's time resolution that keeps the size and inode is
    the one change the process's memory would miss, as for git's index; the facts cache keeps no such file)."""
    stamp = file_stat(ref)
    cache = facts_cache.current()
    known = cache.get(ref, stamp) if cache is not None else None
    return known.sha1 if known is not None else _digest_of(ref, stamp)


def file_stat(ref: str) -> Stamp:
    """The stamp (size, times, inode) of the file holding `ref` (the .npz of an array image)."""
    return Stamp.of(ref.split(NPZ_SEP)[0])


@functools.lru_cache(maxsize=1 << 18)  # ~80 MB for 262,144 images at most
def _digest_of(ref: str, stamp: Stamp) -> bytes:
    return hashlib.sha1(read_bytes(ref)).digest()


DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # PIL's own default (89.5 MP): larger images are refused unread
EIGHT_BIT = {"L", "RGB", "RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "1", "RGBa", "La", "LAB", "HSV"}


@dataclass(frozen=True)
class Decoding:
    """How a file becomes pixels, beyond the size: the DICOM window, an optional single target mode, and the
    largest image (in pixels) that is decoded at all."""

    window: str = "auto"
    mode: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    fast_jpeg: bool = False  # DCT-scaled JPEG decoding (see `reduce_on_decode`); checkpoints before it: off

    @classmethod
    def of(cls, data) -> "Decoding":
        """The decoding a `DataConfig` asks for."""
        return cls(data.dicom_window, data.convert_mode, data.max_pixels, data.fast_jpeg)


def reduce_on_decode(img: Image.Image, size: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, `Image.draft`), never below twice
    `size`: the final resize then still reduces by 2x or more, so the pixels stay within a gray level or two
    of a full decode (tests/data/test_decode.py states the tolerance) while large files decode several times
    faster. Other formats are untouched."""
    if size and img.format == "JPEG" and min(img.size) >= 4 * size:
        img.draft(img.mode, (2 * size, 2 * size))


def open_image(ref: str, window: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
               reduce_to: int = 0) -> Image.Image:
    """Open a file or an array image as a PIL image, fully decoded (DICOM through `window`), or for a JPEG
    at least twice `reduce_to` when given (`reduce_on_decode`). An image over `max_pixels` is refused from
    its header, before any pixel is decoded (a decompression bomb)."""
    if NPZ_SEP in ref:
        path, split, index = ref.split(NPZ_SEP)
        return _finite_image(Image.fromarray(_npz_array(path, f"{split}_images")[int(index)]), ref)
    if Path(ref).suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(ref, window, max_pixels)
    # decoding needs every byte: one read, kept (within KEPT_BYTES) for another size; a file larger than any
    # image format's header check should hold in memory whole is opened from disk, as PIL reads it
    data = FILES.read(ref) if os.path.getsize(ref) <= WHOLE_READ_BYTES else None
    if is_dicom(ref if data is None else data):  # a DICOM file without its suffix
        return read_dicom(ref, window, max_pixels)
    with open_file(ref, max_pixels, data) as img:
        reduce_on_decode(img, reduce_to)
        img.load()
        if img.mode == "P":
            return img.convert("RGBA" if "transparency" in img.info else "RGB")
        return _finite_image(img.copy(), ref)


def _finite_image(img: Image.Image, ref: str) -> Image.Image:
    """A float image's NaN and infinite pixels at its finite extremes, with a warning naming the file."""
    if img.mode != "F":
        return img
    arr = np.asarray(img)
    return img if np.isfinite(arr).all() else Image.fromarray(finite(arr.astype(np.float64), ref).astype(np.float32))


def is_dicom_file(ref: str) -> bool:
    """`is_dicom` of a file, from its kept bytes when it has been read (no second read for the marker)."""
    if Path(ref).suffix.lower() in DICOM_SUFFIXES:
        return True
    source = FILES.source(ref)
    return is_dicom(ref) if isinstance(source, str) else is_dicom(source.getvalue())


def open_file(ref: str, max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None) -> Image.Image:
    """`open_checked` of an image file, from `data` (its bytes, read by the caller) or its kept bytes when it
    has been read (`_ReadOnce`); an unreadable file's error names its path either way."""
    source = io.BytesIO(data) if data is not None else FILES.source(ref)
    try:
        return open_checked(source, max_pixels)
    except UnidentifiedImageError:
        if isinstance(source, str):
            raise
        raise UnidentifiedImageError(f"cannot identify image file {ref!r}") from None


class OverPixelLimit(ValueError):
    """An image larger than the pixel limit, refused from its header (a decompression bomb, or a real giant)."""


def open_checked(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`Image.open` (header only) of a path or file object, refusing images over `max_pixels` with a ValueError
    that names the size and the setting."""
    if max_pixels > Image.MAX_IMAGE_PIXELS:  # the user raised the limit above PIL's own: PIL must not refuse first
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        img = Image.open(source)
    except Image.DecompressionBombError as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))  # PIL names the size it refused
        size = f"{int(claimed.group(1)) / 1e6:.0f} MP" if claimed else "the image"
        raise OverPixelLimit(f"{size} is over the pixel limit {max_pixels / 1e6:.0f} MP (data.max_pixels): a "
                         "decompression bomb, or raise the limit") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise OverPixelLimit(f"{width}x{height} px ({width * height / 1e6:.0f} MP) is over the pixel limit "
                         f"{max_pixels / 1e6:.0f} MP (data.max_pixels): a decompression bomb, or raise the limit")
    return img


def to_uint8(img: Image.Image, name: str = "image") -> Image.Image:
    """Any PIL mode to 8-bit 'L' or 'RGB'.

    Alpha is composited over black (what a viewer shows for a transparent background); 16-bit and
    float images are rescaled from their own min..max to 0..255, NaN and infinite pixels shown at the finite
    extremes with a warning naming `name` (`medtl.data.pixels.finite`; an image without a finite pixel is
    unreadable).
    """
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        base = "L" if mode.startswith("L") else "RGB"
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert(base)
    if mode == "P":
        return to_uint8(img.convert("RGBA"))
    if mode.startswith("I") or mode == "F":
        arr = finite(np.asarray(img, dtype=np.float64), name)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    return img.convert("RGB")


def decode(ref: str, size: int, decoding: Decoding = Decoding()) -> np.ndarray:
    """Decode and resize (squash to size x size) to a CxHxW uint8 array; gray RGB becomes 1 channel."""
    reduce_to = size if decoding.fast_jpeg else 0
    return decode_image(open_image(ref, decoding.window, decoding.max_pixels, reduce_to), size, decoding.mode, ref)


def decode_image(img: Image.Image, size: int, mode: str = "auto", name: str = "image") -> np.ndarray:
    """`decode` for an opened image: the one preprocessing of training, evaluation and prediction.

    mode 'L' or 'RGB' converts an 8-bit image straight to that mode first (alpha dropped, not composited),
    so RGBA and RGB files of the same picture give the same pixels."""
    if mode != "auto":
        img = img.convert(mode) if img.mode in EIGHT_BIT else to_uint8(img, name).convert(mode)
    img = to_uint8(img, name).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.array(img)  # a writable copy
    if arr.ndim == 2:
        return arr[None]
    arr = arr.transpose(2, 0, 1)
    if np.array_equal(arr[0], arr[1]) and np.array_equal(arr[0], arr[2]):
        return arr[:1].copy()
    return np.ascontiguousarray(arr)


@dataclass
class ImageStore:
    """Decoded images, one row per ref, with the refs that could not be read."""

    array: np.ndarray  # (N, C, S, S) uint8, C = 1 when every image is gray
    refs: list[str]
    failed: dict[str, str]  # ref -> reason
    key: str

    def row(self, ref: str) -> int:
        return self._rows[ref]

    def __post_init__(self):
        self._rows = {r: i for i, r in enumerate(self.refs)}


def content_key(refs: list[str], *parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for digest in pool.map(_digest_or_empty, refs):
            h.update(digest)
    return h.hexdigest()[:24]


def _digest_or_empty(ref: str) -> bytes:
    try:
        return content_digest(ref)
    except OSError:
        return EMPTY_DIGEST  # unreadable: decode() reports it; the key still changes when the file appears


EMPTY_DIGEST = hashlib.sha1(b"").digest()


def build_store(refs: list[str], size: int, cache_dir: Path, progress: bool = True,
                decoding: Decoding = Decoding()) -> ImageStore:
    """Decoded images for `refs`, from the cache when present and valid, else decoded now."""
    key = content_key(refs, CACHE_VERSION, size, decoding)
    folder = cache_dir / "images"
    npy, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    sweep_temps(folder)  # what killed runs left
    if npy.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            array = np.load(npy, mmap_mode="r")
            if array.shape[0] != len(refs) or len(meta["refs"]) != len(refs):
                log.warning("image cache %s does not match its data; rebuilding it", npy)
            elif meta.get("sha256") != array_digest(array):
                log.warning("image cache %s does not match its checksum (changed on disk); rebuilding it", npy)
            else:
                return ImageStore(array, refs, _renamed(meta["failed"], meta["refs"], refs), key)
        except (ValueError, OSError, KeyError, json.JSONDecodeError) as exc:
            log.warning("image cache %s is unreadable (%s); rebuilding it", npy, exc)
    array, failed = _decode_all(refs, size, progress, decoding)
    make_dir(folder)
    atomic_write(npy, lambda fh: np.save(fh, array))
    atomic_write(meta_path, json.dumps({"refs": refs, "failed": failed, "size": size, "sha256": array_digest(array)}))
    return ImageStore(np.load(npy, mmap_mode="r"), refs, failed, key)


def _renamed(failed: dict[str, str], cached: list[str], refs: list[str]) -> dict[str, str]:
    """The cache's failures under `refs`' names: the key is the images' content in order, so a copied folder (the
    same bytes under other paths) reuses the cache, row i of `cached` being row i of `refs`."""
    row = {ref: i for i, ref in enumerate(cached)}
    return {refs[row[old]]: reason.replace(old, refs[row[old]]) for old, reason in failed.items()}


def _decode_all(refs: list[str], size: int, progress: bool, decoding: Decoding) -> tuple[np.ndarray, dict[str, str]]:
    array = np.zeros((len(refs), 1, size, size), dtype=np.uint8)
    failed: dict[str, str] = {}

    def work(ref: str):
        try:
            return decode(ref, size, decoding)
        except READ_ERRORS as exc:
            return f"{exc.__class__.__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        results = progress_of(pool.map(work, refs), "decode images", progress, total=len(refs), unit="img")
        for i, (ref, out) in enumerate(zip(refs, results)):
            if isinstance(out, str):
                failed[ref] = out
                continue
            if out.shape[0] == 3 and array.shape[1] == 1:
                array = np.repeat(array, 3, axis=1)  # first colour image: keep all as RGB from now on
            array[i] = out if out.shape[0] == array.shape[1] else np.repeat(out, array.shape[1], axis=0)
    return array, failed


def check_failures(failed: dict[str, str], strict: bool) -> None:
    """Unreadable images: fatal with --strict, else logged (and listed in the run folder)."""
    if not failed:
        return
    first, reason = next(iter(failed.items()))
    if strict:
        raise MedtlError(f"cannot use image {first} ({reason}); {len(failed)} unusable in all. "
                         "Fix or remove the file (or manifest row), or drop --strict to skip them")
    log.warning("skipping %d image(s) or manifest row(s) that cannot be used, e.g. %s (%s); listed in the run "
                "folder's skipped.csv",
                len(failed), first, reason)
