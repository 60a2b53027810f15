"""Pixel values a viewer cannot show as they are: NaN and infinite values in float images (a float TIFF, a
`.npz` array, a DICOM's rescaled values), and the one error type for an image that cannot be shown at all."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


class Unreadable(ValueError):  # noqa
    """An image that cannot be shown: a one-line reason that names the file (a ValueError, so every caller that
    skips unreadable images skips it)."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut to `limit` characters."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def finite(values: np.ndarray, name: str = "image") -> np.ndarray:
    """Float `values` with NaN and -inf replaced by the lowest finite value and +inf by the highest, as radiology
    viewers show them (NaN is "no data", e.g. the masked background of a parametric map), with a warning that
    counts them; Unreadable when no pixel is finite. Other dtypes are returned unchanged."""
    if values.dtype.kind != "f":
        return values
    bad = ~np.isfinite(values)
    count = int(bad.sum())
    if not count:
        return values
    if count == values.size:
        raise Unreadable(f"{name}: all {count} pixels are NaN or infinite, nothing to show; re-export the image "
                         "or remove it")
    good = values[~bad]
    out = np.where(np.isposinf(values), good.max(), np.where(bad, good.min(), values))
    log.warning("%s: %d of %d pixels are NaN or infinite; shown as the image's lowest finite value (+inf as its "
                "highest), as a viewer shows them", name, count, values.size)
    return out
