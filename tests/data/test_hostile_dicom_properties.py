"""Property test (issue 26): whatever values and value representations a DICOM's image elements hold, the reader
gives an image or one `Unreadable` line that names the file; no other exception escapes (badVR.dcm's
NumberOfFrames '1A' once ended in a TypeError)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from medtl.data.images import Decoding, decode
from medtl.data.pixels import Unreadable

SMALL_LIMIT = 2**16  # a header claiming more pixels is refused before decoding: the examples stay small
KEYS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "NumberOfFrames", "PhotometricInterpretation",
        "PixelRepresentation", "SamplesPerPixel", "PlanarConfiguration", "WindowCenter", "WindowWidth",
        "RescaleSlope", "RescaleIntercept"]
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
texts = st.one_of(st.sampled_from(["1A", "", " ", "-1", "1.5", "1e9", "nan", "inf", "MONOCHROME1", "RGB",
                                   "PALETTE COLOR", "YBR_FULL_422", "1\\2", "0"]),
                  st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12))


def _numbers(low: int, high: int):
    return st.one_of(st.integers(low, high), st.lists(st.integers(low, high), min_size=2, max_size=3))


# (VR, values that VR can be written with): pydicom writes each; the reader must cope with what it reads back
ELEMENTS = st.one_of(
    st.tuples(st.just("US"), _numbers(0, 2**16 - 1)),
    st.tuples(st.just("SS"), _numbers(-2**15, 2**15 - 1)),
    st.tuples(st.just("UL"), _numbers(0, 2**32 - 1)),
    st.tuples(st.just("SL"), _numbers(-2**31, 2**31 - 1)),
    st.tuples(st.sampled_from(["FL", "FD"]), st.one_of(floats, st.lists(floats, min_size=2, max_size=3))),
    st.tuples(st.sampled_from(["IS", "DS", "CS", "LO", "SH"]), texts),
    st.tuples(st.sampled_from(["OB", "UN"]), st.binary(max_size=8)),
)


def _dataset(bits: int, pixel_bytes: bytes) -> Dataset:
    """A valid 8x8 MONOCHROME2 image, before the changes."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelData = pixel_bytes
    return ds


changes = st.dictionaries(st.sampled_from(KEYS), st.one_of(st.none(), ELEMENTS), max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.sampled_from([8, 16]), st.one_of(st.none(), st.integers(0, 300)), changes, st.randoms(use_true_random=False))
def test_any_dicom_element_value_is_an_image_or_one_unreadable_line(bits, length, changed, rnd):
    size = 64 * bits // 8 if length is None else length  # None: the right length for 8x8
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid values it is given: they are the point
        path = Path(tmp) / "x.dcm"
        try:
            ds = _dataset(bits, rnd.randbytes(size + size % 2))
            for key, element in changed.items():
                if element is None:
                    delattr(ds, key) if key in ds else None
                else:
                    ds.add_new(tag_for_keyword(key), *element)
            ds.save_as(path, enforce_file_format=True)
        except Exception:  # noqa: BLE001 - a combination pydicom will not write is no example
            reject()
        try:
            out = decode(str(path), 16, Decoding(max_pixels=SMALL_LIMIT))
        except Unreadable as exc:
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)
            return
    assert out.dtype == np.uint8 and out.shape in ((1, 16, 16), (3, 16, 16))
