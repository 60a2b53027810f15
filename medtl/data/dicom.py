"""DICOM pixels as a display image: modality LUT (e.g. CT Hounsfield units), VOI LUT or window, MONOCHROME1.

pydicom reads the file and applies the LUTs; medtl maps the windowed values to 8 bits, as a viewer shows them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import get_expected_length

from medtl.core.windows import parse_window

DICOM_SUFFIXES = {".dcm", ".dicom"}
GEOMETRY = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation")


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
    """The first frame of a DICOM file (path or bytes) as an 8-bit image: 'L', or 'RGB' for colour data or a
    stack of three windows. ValueError (one line) for a file that cannot be read, is cut short, or has more
    than `max_pixels` pixels per frame (None: no limit), before its pixels are decoded."""
    windows = parse_window(window)
    name = "upload" if isinstance(source, bytes) else str(source)
    ds, pixels = _pixels(source, name, max_pixels)
    if not ds.get("PhotometricInterpretation", "MONOCHROME2").startswith("MONOCHROME"):
        if pixels.dtype != np.uint8:
            raise ValueError(f"{name}: {ds.PhotometricInterpretation} with {pixels.dtype} pixels is not supported")
        return Image.fromarray(pixels, mode="RGB")
    invert = ds.PhotometricInterpretation == "MONOCHROME1"
    if windows is None:
        return Image.fromarray(_to_uint8(_windowed(pixels, ds), invert))
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    planes = [apply_window(values, c, w) for c, w in windows]
    planes = [255 - p for p in planes] if invert else planes
    return Image.fromarray(planes[0]) if len(planes) == 1 else Image.fromarray(np.stack(planes, -1), mode="RGB")


def _pixels(source, name: str, max_pixels: int | None = None):
    try:
        ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
        raise ValueError(f"{name} is not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise ValueError(f"{name} has no pixel data (a DICOM without an image, e.g. a structured report)")
    _check_size(ds, name, max_pixels)
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError, AttributeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        reason = " ".join(str(exc).split())  # one line: pydicom lists the plugins that would decode it
        raise ValueError(f"{name}: cannot decode transfer syntax {syntax} ({reason}); convert it to an "
                         "uncompressed syntax (e.g. gdcmconv --raw) or install the handler pydicom names") from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    return ds, pixels


def _check_size(ds, name: str, max_pixels: int | None) -> None:
    """Before decoding: refuse a frame over `max_pixels`, and tell a file cut short (uncompressed pixel data
    shorter than its geometry says) from a transfer syntax that no handler decodes."""
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if max_pixels is not None and rows * columns > max_pixels:
        raise ValueError(f"{name}: {columns}x{rows} is {rows * columns} pixels, over the limit of {max_pixels}; "
                         "downscale the image before using it")
    if any(ds.get(key) is None for key in GEOMETRY):
        return  # incomplete geometry: pydicom's decoder names what is missing
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or syntax.is_encapsulated:
        return  # compressed fragments have no expected length: the decoder judges them
    have, need = len(ds.PixelData), get_expected_length(ds, "bytes")
    if have < need:
        raise ValueError(f"{name}: truncated: {have} of {need} pixel bytes ({columns}x{rows}, "
                         f"{ds.BitsAllocated}-bit); the file was cut short (an interrupted copy or download): "
                         "copy it again from its source")


def _windowed(pixels: np.ndarray, ds) -> np.ndarray:
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds).astype(np.float64)
    return values


def _to_uint8(values: np.ndarray, invert: bool) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    out = np.round(scaled).astype(np.uint8)
    return 255 - out if invert else out
