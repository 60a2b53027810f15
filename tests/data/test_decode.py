"""DCT-scaled JPEG decoding (`data.fast_jpeg`): within the stated tolerance of a full decode, the same pixels
in training, prediction and serving, and off on request and for checkpoints written before it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers import shared_path
from medtl.data.images import Decoding, decode, open_image
from medtl.data.preprocess import Preprocess
from medtl.deploy.uploads import open_upload

# the stated tolerance of data.fast_jpeg against a full decode, in 8-bit gray levels per pixel
MEAN_TOLERANCE, P99_TOLERANCE = 0.5, 3
FAST, FULL = Decoding(fast_jpeg=True), Decoding(fast_jpeg=False)


def radiograph(width: int = 1536, height: int = 1280, mode: str = "L", seed: int = 0) -> Image.Image:
    """An X-ray-like picture: smooth body, two bright 'lungs' with ribs, sharp edges, film noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width] / max(width, height)
    body = 60 + 120 * np.exp(-((xx - 0.5) ** 2 / 0.08 + (yy - 0.45) ** 2 / 0.2))
    for cx in (0.33, 0.67):
        lung = ((xx - cx) ** 2 / 0.012 + (yy - 0.42) ** 2 / 0.05) < 1
        body = np.where(lung, body - 50 + 25 * (np.sin(yy * 90) > 0.6), body)
    body[int(height * 0.85):, :] = 240  # a sharp marker band
    arr = np.clip(body + rng.normal(0, 6, body.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return img if mode == "L" else Image.merge("RGB", [img, img.point(lambda v: v * 0.9), img])


def jpeg(tmp_path, img: Image.Image, name: str = "x.jpg") -> str:
    path = tmp_path / name
    img.save(path, quality=90)
    return str(path)


def differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).ravel()


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("size", [128, 224])
def test_fast_decode_is_within_tolerance_of_a_full_decode(tmp_path, mode, size):
    path = jpeg(tmp_path, radiograph(mode=mode))
    with open_image(path, reduce_to=size) as reduced:
        assert 2 * size <= min(reduced.size) < 1280  # decoded at a DCT scale, never below twice the target
    d = differences(decode(path, size, FAST), decode(path, size, FULL))
    assert d.mean() <= MEAN_TOLERANCE and np.percentile(d, 99) <= P99_TOLERANCE, (d.mean(), np.percentile(d, 99))


def test_small_jpegs_and_other_formats_decode_exactly_as_before(tmp_path):
    small = jpeg(tmp_path, radiograph(400, 380), "small.jpg")  # under 4x the size: a full decode
    assert np.array_equal(decode(small, 128, FAST), decode(small, 128, FULL))
    png = tmp_path / "big.png"
    radiograph().save(png)
    assert np.array_equal(decode(str(png), 128, FAST), decode(str(png), 128, FULL))
    with open_image(str(png), reduce_to=128) as img:
        assert img.size == (1536, 1280)


def test_training_prediction_and_serving_see_the_same_pixels(tmp_path):
    path = jpeg(tmp_path, radiograph())
    pre = Preprocess(128, 3, (0.5,) * 3, (0.5,) * 3, FAST)
    stored = decode(path, 128, FAST)  # what the image cache holds for training
    assert np.array_equal(pre.load(path)[:1].numpy(), stored)  # predict
    upload = open_upload(open(path, "rb").read(), reduce_to=pre.reduce_to)  # serve
    assert np.array_equal(pre.pixels(upload)[:1].numpy(), stored)
    off = Preprocess(128, 3, (0.5,) * 3, (0.5,) * 3, FULL)
    assert off.reduce_to == 0 and np.array_equal(off.load(path)[:1].numpy(), decode(path, 128, FULL))


def test_switch_and_old_checkpoints():
    from medtl.core.config import DataConfig
    assert Decoding.of(DataConfig(path="x")).fast_jpeg is True  # on by default for new runs
    assert Decoding.of(DataConfig(path="x", fast_jpeg=False)).fast_jpeg is False
    old = {"image_size": 128, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "dicom_window": "auto",
           "convert_mode": "auto", "max_pixels": 10**8}  # a checkpoint written before the setting
    assert Preprocess.from_dict(old).decoding.fast_jpeg is False
    assert Preprocess.from_dict(Preprocess.from_dict(old).to_dict()) == Preprocess.from_dict(old)


@pytest.mark.shared_data
def test_real_jpegs_within_tolerance():
    files = sorted(shared_path("brain_mri_yes_no").rglob("*.jp*g"))[:150]
    d = np.concatenate([differences(decode(str(f), 128, FAST), decode(str(f), 128, FULL)) for f in files])
    assert d.mean() <= MEAN_TOLERANCE and np.percentile(d, 99) <= P99_TOLERANCE


def test_upload_bytes_are_reduced_like_files(tmp_path):
    buf = io.BytesIO()
    radiograph().save(buf, "JPEG", quality=90)
    assert min(open_upload(buf.getvalue(), reduce_to=128).size) < 1280
    assert open_upload(buf.getvalue()).size == (1536, 1280)
