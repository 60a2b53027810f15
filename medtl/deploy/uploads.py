"""An uploaded file's bytes as an image (`medtl serve`): DICOM, or anything PIL reads, decoded as training
decoded its images, with the same pixel limit."""

from __future__ import annotations

import io

from PIL import Image

from medtl.data.dicom import is_dicom, read_dicom
from medtl.data.images import DEFAULT_MAX_PIXELS, READ_ERRORS, OverPixelLimit, open_checked, reduce_on_decode


def open_upload(data: bytes, window: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                reduce_to: int = 0) -> Image.Image:
    """An uploaded file's bytes as an image (DICOM or anything PIL reads; a JPEG decoded down to twice
    `reduce_to` at least, as training decoded it); ValueError when it is neither, or when it is larger than
    `max_pixels` (the message then says so)."""
    if is_dicom(data):
        return read_dicom(data, window, max_pixels)
    try:
        with open_checked(io.BytesIO(data), max_pixels) as img:
            reduce_on_decode(img, reduce_to)
            img.load()
            return img.copy()
    except OverPixelLimit:
        raise  # its own message says what to do
    except READ_ERRORS as exc:
        raise ValueError(f"not an image PIL or pydicom can read ({exc.__class__.__name__})") from exc
