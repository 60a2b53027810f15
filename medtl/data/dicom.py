"""DICOM pixels as a display image: modality LUT (e.g. CT Hounsfield units), VOI LUT or window, MONOCHROME1.

pydicom reads the file and applies the LUTs; medtl maps the windowed values to 8 bits, as a viewer shows them.
"""

from __future__ import annotations

import io
import struct
import logging
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import get_expected_length

from medtl.core.windows import parse_window
from medtl.data.pixels import Unreadable, finite, one_line

log = logging.getLogger(__name__)

DICOM_SUFFIXES = {".dcm", ".dicom"}
GEOMETRY = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation")
# elements that count something: a value that is not a whole number (badVR.dcm's NumberOfFrames '1A') is malformed
WHOLE_NUMBERS = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
                 "PixelRepresentation", "NumberOfFrames")
# what pydicom and numpy raise on a malformed header value beyond pydicom's own read errors (a number held as
# text, a lookup table of the wrong length, a value out of range)
MALFORMED = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError, NotImplementedError,
             RuntimeError, ZeroDivisionError, EOFError, struct.error)


def is_dicom(source: str | Path | bytes) -> bool:
    """A .dcm/.dicom name, or the 'DICM' marker after the 128-byte preamble."""
    if isinstance(source, bytes):
        return source[128:132] == b"DICM"
    path = Path(source)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def apply_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """The DICOM linear window (PS3.3 C.11.2.1.2) to 0..255 uint8."""
    scaled = (values - (centre - 0.5)) / (width - 1) + 0.5
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def read_dicom(source: str | Path | bytes, window: str = "auto", max_pixels: int | None = None) -> Image.Image:
    """The first frame of a DICOM file (path or bytes) as an 8-bit image: 'L', or 'RGB' for colour data (palette
    colour through its lookup table) or a stack of three windows. `Unreadable` (a ValueError, one line) for a
    file that cannot be read, is cut short, has a malformed header value, or has more than `max_pixels` pixels
    per frame (None: no limit), before its pixels are decoded."""
    windows = parse_window(window)
    name = "upload" if isinstance(source, bytes) else str(source)
    try:
        return _read(source, name, windows, max_pixels)
    except Unreadable:
        raise
    except MALFORMED as exc:  # a header value of the wrong type or range, deep in pydicom or numpy
        raise Unreadable(f"{name}: malformed DICOM ({exc.__class__.__name__}: {one_line(exc)}); re-export the "
                         "file from its source or remove it") from exc


def _read(source, name: str, windows, max_pixels: int | None) -> Image.Image:
    ds, pixels = _pixels(source, name, max_pixels)
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip()
    if photometric == "PALETTE COLOR":
        return Image.fromarray(_palette(pixels, ds, name))
    if not photometric.startswith("MONOCHROME"):
        return Image.fromarray(_colour8(pixels, ds, name))
    invert = photometric == "MONOCHROME1"
    if windows is None:
        return Image.fromarray(_to_uint8(finite(_windowed(pixels, ds, name), name), invert))
    values = finite(apply_modality_lut(pixels, ds).astype(np.float64), name)
    planes = [apply_window(values, c, w) for c, w in windows]
    planes = [255 - p for p in planes] if invert else planes
    return Image.fromarray(planes[0]) if len(planes) == 1 else Image.fromarray(np.stack(planes, -1))


def _pixels(source, name: str, max_pixels: int | None = None):
    try:
        ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
        raise Unreadable(f"{name} is not a readable DICOM file ({one_line(exc)})") from exc
    if "PixelData" not in ds:
        raise Unreadable(f"{name} has no pixel data (a DICOM without an image, e.g. a structured report)")
    counts = {key: _whole_number(ds, key, name) for key in WHOLE_NUMBERS}
    _check_size(ds, name, max_pixels, counts)
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError, AttributeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        reason = one_line(exc, 400)  # pydicom lists the plugins that would decode it
        raise Unreadable(f"{name}: cannot decode transfer syntax {syntax} ({reason}); convert it to an "
                         "uncompressed syntax (e.g. gdcmconv --raw) or install the handler pydicom names") from exc
    if (counts["NumberOfFrames"] or 1) > 1:
        pixels = pixels[0]
    return ds, pixels


def _whole_number(ds, key: str, name: str) -> int | None:
    """A geometry element as an int (None when absent or empty); Unreadable when it holds anything else (text
    such as '1A', a fraction, several values, a negative count)."""
    value = ds.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise Unreadable(f"{name}: malformed DICOM: {key} is {shown}, not a whole number; re-export the file from "
                     "its source or remove it")


def _check_size(ds, name: str, max_pixels: int | None, counts: dict[str, int | None]) -> None:
    """Before decoding: refuse a frame over `max_pixels`, and tell a file cut short (uncompressed pixel data
    shorter than its geometry says) from a transfer syntax that no handler decodes."""
    rows, columns = counts["Rows"] or 0, counts["Columns"] or 0
    if max_pixels is not None and rows * columns > max_pixels:
        raise Unreadable(f"{name}: {columns}x{rows} is {rows * columns} pixels, over the limit of {max_pixels}; "
                         "downscale the image before using it")
    if any(ds.get(key) is None for key in GEOMETRY):
        return  # incomplete geometry: pydicom's decoder names what is missing
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or syntax.is_encapsulated:
        return  # compressed fragments have no expected length: the decoder judges them
    have, need = len(ds.PixelData), get_expected_length(ds, "bytes")
    if have < need:
        raise Unreadable(f"{name}: truncated: {have} of {need} pixel bytes ({columns}x{rows}, "
                         f"{ds.BitsAllocated}-bit); the file was cut short (an interrupted copy or download): "
                         "copy it again from its source")


def _palette(pixels: np.ndarray, ds, name: str) -> np.ndarray:
    """PALETTE COLOR indices through the file's red, green and blue lookup tables, as 8-bit RGB. 16-bit tables
    keep their top byte (some writers declare 16 bits and store 0..255: those are kept as they are)."""
    rgb = apply_color_lut(pixels, ds)
    if rgb.dtype != np.uint8:
        rgb = (rgb >> 8 if int(rgb.max(initial=0)) > 255 else rgb).astype(np.uint8)
    return _rgb(rgb, name)


def _colour8(pixels: np.ndarray, ds, name: str) -> np.ndarray:
    """RGB (or YBR, which pydicom converts) samples as 8-bit RGB: wider unsigned samples are scaled from their
    stored bit depth."""
    if pixels.dtype != np.uint8:
        if pixels.dtype.kind != "u":
            raise Unreadable(f"{name}: {ds.PhotometricInterpretation} with {pixels.dtype} pixels is not supported")
        bits = min(int(ds.get("BitsStored") or 0) or pixels.dtype.itemsize * 8, pixels.dtype.itemsize * 8)
        scaled = np.round(pixels.astype(np.float64) * (255.0 / (2 ** bits - 1)))
        pixels = np.clip(scaled, 0, 255).astype(np.uint8)
    return _rgb(pixels, name)


def _rgb(pixels: np.ndarray, name: str) -> np.ndarray:
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise Unreadable(f"{name}: colour pixels of shape {pixels.shape}, not rows x columns x 3; re-export the "
                         "file from its source or remove it")
    return pixels


def _windowed(pixels: np.ndarray, ds, name: str) -> np.ndarray:
    """Modality LUT, then the file's VOI LUT or window when it has one; a window that pydicom refuses or that
    leaves no finite value (a width of 0, NaN) is ignored with a warning, as a viewer would."""
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "WindowCenter" not in ds and "VOILUTSequence" not in ds:
        return values
    try:
        windowed = apply_voi_lut(values, ds).astype(np.float64)
    except MALFORMED as exc:
        log.warning("%s: its window or VOI LUT is unusable (%s); using the full range", name, one_line(exc))
        return values
    if np.isfinite(windowed).any() or not np.isfinite(values).any():
        return windowed
    log.warning("%s: its window or VOI LUT leaves no finite value; using the full range", name)
    return values


def _to_uint8(values: np.ndarray, invert: bool) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    out = np.round(scaled).astype(np.uint8)
    return 255 - out if invert else out


ID_TAGS = ("PatientID", "StudyInstanceUID")  # the patient, then the study: the keys an image is grouped by


def header_ids(path: str | Path) -> dict[str, str]:
    """{tag: value} of ID_TAGS that a DICOM file names (blank values left out), read from its header only;
    {} for a file pydicom cannot read (its pixels are judged when it is decoded)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(ID_TAGS))
    except (pydicom.errors.InvalidDicomError, OSError, *MALFORMED):
        return {}
    out = {}
    for tag in ID_TAGS:
        value = str(ds.get(tag, "") or "").strip()
        if value:
            out[tag] = value
    return out
