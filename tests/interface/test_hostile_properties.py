"""Property tests: whatever bytes a file holds and whatever values a config is given, medtl answers with one
MedtlError line or succeeds; no other exception escapes."""

from __future__ import annotations

import dataclasses
import math
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtl.core.config import RENAMES, SECTIONS, RunConfig, apply_overrides
from medtl.core.errors import MedtlError
from medtl.data.images import Decoding, build_store

SMALL_LIMIT = 2**20  # keeps every example's pixel buffer small: larger headers must be refused, not decoded


def _png(width: int, height: int, depth: int, colour: int, body: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b"")


def _bmp(width: int, height: int, bits: int, body: bytes) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, len(body), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(body), 0, 0, 14 + len(info)) + info + body


def _gif(width: int, height: int, body: bytes) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + bytes(6) + body + b";"


dims = st.integers(min_value=0, max_value=2**16 - 1)
files = st.one_of(
    st.binary(max_size=2048).map(lambda b: (".png", b)),
    st.tuples(dims, dims, st.sampled_from([1, 2, 4, 8, 16]), st.sampled_from([0, 2, 3, 4, 6, 7]),
              st.binary(max_size=512)).map(lambda a: (".png", _png(*a))),
    st.tuples(dims, st.integers(-2**16 + 1, 2**16 - 1), st.sampled_from([1, 4, 8, 16, 24, 32]),
              st.binary(max_size=512)).map(lambda a: (".bmp", _bmp(*a))),
    st.tuples(dims, dims, st.binary(max_size=256)).map(lambda a: (".gif", _gif(*a))),
    st.binary(max_size=1024).map(lambda b: (".jpg", b"\xff\xd8\xff\xe0" + b)),
    st.binary(max_size=1024).map(lambda b: (".dcm", bytes(128) + b"DICM" + b)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(files, min_size=1, max_size=4))
def test_any_file_content_is_decoded_or_listed_as_unreadable(items):
    with tempfile.TemporaryDirectory() as tmp:
        refs = []
        for i, (suffix, data) in enumerate(items):
            path = Path(tmp) / f"img{i}{suffix}"
            path.write_bytes(data)
            refs.append(str(path))
        store = build_store(refs, 16, Path(tmp) / "cache", progress=False,
                            decoding=Decoding(max_pixels=SMALL_LIMIT))
        assert store.array.shape[0] == len(refs)
        for ref in refs:
            assert ref in store.failed or store.array[store.row(ref)].shape[-1] == 16
            assert "\n" not in store.failed.get(ref, "")


KEYS = [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)] + list(RENAMES)
values = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                   st.text(max_size=20), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                             st.integers(), max_size=2))
keys = st.one_of(st.sampled_from(KEYS + ["out", "name"]), st.text(max_size=15))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(keys, values, max_size=4))
def test_any_config_value_is_accepted_or_refused_in_one_line(overrides):
    try:
        cfg = apply_overrides(RunConfig(), overrides)
    except MedtlError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert isinstance(cfg, RunConfig)
    assert cfg.train.epochs >= 1 and cfg.train.batch_size >= 1 and math.isfinite(cfg.train.lr) and cfg.train.lr > 0
    assert cfg.data.image_size is None or cfg.data.image_size >= 16
    assert not np.isnan(cfg.data.val_fraction)
