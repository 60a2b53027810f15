"""Every image mode loads to 8-bit L or RGB; unreadable files are reported; the image cache is reused."""

import logging
import os
import time

import numpy as np
import pytest
from PIL import Image

from medtl.core.errors import MedtlError
from medtl.data.images import build_store, check_failures, decode, open_image, to_uint8


def _save(tmp_path, img, name):
    path = tmp_path / name
    img.save(path)
    return str(path)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "F", "I;16"])
def test_every_mode_converts(mode):
    base = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    img = base.convert(mode) if mode not in ("I;16",) else Image.fromarray(
        (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16))
    out = to_uint8(img)
    assert out.mode in ("L", "RGB") and out.size == (8, 8)


def test_sixteen_bit_uses_full_range_and_alpha_goes_over_black(tmp_path):
    arr16 = np.array([[1000, 2000], [3000, 4000]], dtype=np.uint16)
    out = np.asarray(to_uint8(Image.fromarray(arr16)))
    assert out.min() == 0 and out.max() == 255 and out[0, 1] == 85
    rgba = Image.new("RGBA", (2, 2), (200, 100, 50, 0))
    assert np.asarray(to_uint8(rgba)).max() == 0  # fully transparent -> black
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 250, 250, 250] + [0] * 762)
    pal.putpixel((0, 0), 1)
    path = _save(tmp_path, pal, "pal.png")
    assert decode(path, 4).shape == (1, 4, 4)  # gray palette decodes to one channel


def test_gray_rgb_is_stored_as_one_channel_color_as_three(tmp_path):
    gray = _save(tmp_path, Image.new("RGB", (10, 10), (7, 7, 7)), "g.png")
    color = _save(tmp_path, Image.new("RGB", (10, 10), (200, 7, 7)), "c.png")
    assert decode(gray, 6).shape == (1, 6, 6) and decode(color, 6).shape == (3, 6, 6)
    store = build_store([gray, color], 6, tmp_path / "cache", progress=False)
    assert store.array.shape == (2, 3, 6, 6) and (store.array[0] == 7).all()


def test_truncated_file_is_reported_and_strict_fails(tmp_path, caplog):
    good = _save(tmp_path, Image.new("L", (32, 32), 9), "good.png")
    bad = tmp_path / "bad.jpg"
    Image.new("L", (64, 64), 3).save(bad)
    bad.write_bytes(bad.read_bytes()[:200])
    store = build_store([good, str(bad)], 8, tmp_path / "cache", progress=False)
    assert list(store.failed) == [str(bad)]
    with pytest.raises(MedtlError, match="bad.jpg.*drop --strict"):
        check_failures(store.failed, strict=True)
    with caplog.at_level(logging.WARNING):
        check_failures(store.failed, strict=False)
    assert "skipping 1 image(s) or manifest row(s) that cannot be used" in caplog.text


def test_image_cache_hit_miss_and_corrupt_rebuild(tmp_path, caplog):
    path = tmp_path / "a.png"
    Image.new("L", (16, 16), 50).save(path)
    first = build_store([str(path)], 8, tmp_path / "cache", progress=False)
    again = build_store([str(path)], 8, tmp_path / "cache", progress=False)
    assert again.key == first.key
    Image.new("L", (16, 16), 60).save(path)  # content changed: new key, new values
    changed = build_store([str(path)], 8, tmp_path / "cache", progress=False)
    assert changed.key != first.key and int(changed.array[0].max()) == 60
    (tmp_path / "cache" / "images" / f"{changed.key}.npy").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        rebuilt = build_store([str(path)], 8, tmp_path / "cache", progress=False)
    assert "rebuilding" in caplog.text and int(rebuilt.array[0].max()) == 60


def test_dicom_ct_is_read_through_the_modality_lut_and_scaled_to_8_bits(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    from medtl.data.dicom import is_dicom, read_dicom
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    img = np.asarray(read_dicom(path), dtype=float)
    expected = np.round((hu - hu.min()) * 255 / (hu.max() - hu.min()))
    assert img.shape == hu.shape and np.array_equal(img, expected)
    assert is_dicom(path) and is_dicom(open(path, "rb").read()) and not is_dicom(b"\0" * 200)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "inverted")  # no suffix: found by the DICM marker
    assert np.array_equal(np.asarray(open_image(str(tmp_path / "inverted"))), 255 - img.astype(np.uint8))
    del ds.PixelData
    ds.save_as(tmp_path / "empty.dcm")
    with pytest.raises(ValueError, match="empty.dcm has no pixel data"):
        read_dicom(tmp_path / "empty.dcm")


def test_allocator_tuning_applies_on_glibc_linux():
    import platform

    from medtl.training.runtime import tune_allocator
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert tune_allocator() is expected


def test_prepare_hashes_each_image_file_once(image_tree, cache_dir, monkeypatch):
    """Content keys, carving groups and the audit share one digest per file (issue 25: read and hashed once per
    run); a rerun reads no image file (digests and audit facts from the facts cache, pixels from the image
    cache); a file rewritten in place is read and hashed again."""
    from collections import Counter

    from medtl.core.config import RunConfig, apply_overrides
    from medtl.data import images
    from medtl.training.prepare import prepare

    cfg = apply_overrides(RunConfig(), {"data.path": str(image_tree), "model.backbone": "resnet18",
                                        "model.weights": "none", "data.image_size": 32, "data.group": "near_duplicates"})
    hour_ago = time.time_ns() - 3600 * 10**9  # files modified seconds ago are read again each run (RACY_NS)
    for path in image_tree.rglob("*.png"):
        os.utime(path, ns=(hour_ago, hour_ago))
    reads = Counter()
    real = images.read_bytes
    monkeypatch.setattr(images, "read_bytes", lambda ref: reads.update([ref]) or real(ref))
    images._digest_of.cache_clear()
    first_run = prepare(cfg, progress=False)
    assert set(reads) == set(first_run.splits.all_refs()) and set(reads.values()) == {1}
    images._digest_of.cache_clear()  # a new process: only the cache folder remembers
    reads.clear()
    p = prepare(cfg, progress=False)
    assert not reads and p.facts == first_run.facts and p.store.key == first_run.store.key
    first = p.splits.all_refs()[0]
    before = images.content_digest(first)
    Image.new("L", (40, 40), 7).save(first)
    assert images.content_digest(first) != before and reads[first] == 1
