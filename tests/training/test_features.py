"""The feature cache: hit, miss on a new key, corrupt file rebuilt with a warning."""

import logging

import numpy as np

from medtl.training.features import cached, feature_key


def test_hit_miss_and_corrupt_rebuild(tmp_path, caplog):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float32).reshape(3, 2)

    key = feature_key("store", "resnet18", 224, 0)
    first, hit = cached(tmp_path, key, 3, compute)
    again, hit_again = cached(tmp_path, key, 3, compute)
    assert not hit and hit_again and len(calls) == 1 and np.array_equal(first, again)
    assert feature_key("store", "resnet18", 128, 0) != key
    (tmp_path / "features" / f"{key}.npy").write_bytes(b"\x93NUMPY broken")
    with caplog.at_level(logging.WARNING):
        rebuilt, hit = cached(tmp_path, key, 3, compute)
    assert not hit and len(calls) == 2 and "rebuilding" in caplog.text
    assert np.array_equal(rebuilt, np.arange(6, dtype=np.float32).reshape(3, 2))
    _, hit = cached(tmp_path, key, 4, compute)  # wrong row count: stale, rebuilt
    assert not hit
