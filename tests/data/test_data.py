"""Discovering data sets and making splits: layouts, stratification, bad folders."""

import numpy as np
import pytest
from PIL import Image

from medtl.core.config import DataConfig
from medtl.data.sources import discover
from medtl.core.errors import MedtlError


def test_split_tree_carves_stratified_val(image_tree):
    s = discover(DataConfig(path=str(image_tree), val_fraction=0.25))
    assert s.classes == ["neg", "pos"]
    assert len(s.refs["train"]) == 36 and len(s.refs["val"]) == 12 and len(s.refs["test"]) == 16
    assert np.bincount(s.labels["val"]).tolist() == [6, 6]
    assert not set(s.refs["val"]) & set(s.refs["train"])
    assert discover(DataConfig(path=str(image_tree), val_fraction=0.25)).refs == s.refs  # seeded
    sub = discover(DataConfig(path=str(image_tree), subset_per_class=5))
    assert np.bincount(sub.labels["train"]).tolist() == [5, 5]


def test_one_tree_is_split_three_ways(image_tree):
    s = discover(DataConfig(path=str(image_tree / "train"), val_fraction=0.2, test_fraction=0.25))
    assert sum(len(r) for r in s.refs.values()) == 48
    assert len(s.refs["test"]) == 12 and np.bincount(s.labels["test"]).tolist() == [6, 6]
    all_refs = s.all_refs()
    assert len(set(all_refs)) == len(all_refs)


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 20), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    np.savez(tmp_path / "m.npz", **arrays)
    s = discover(DataConfig(path=str(tmp_path / "m.npz"), class_names=("normal", "pneumonia")))
    assert s.classes == ["normal", "pneumonia"] and len(s.refs["val"]) == 6
    with pytest.raises(MedtlError, match="give 2 names"):
        discover(DataConfig(path=str(tmp_path / "m.npz"), class_names=("a", "b", "c")))


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"), ("empty_class", "holds no images"), ("one_class", "only one class"),
    ("no_classes", "no class folders"), ("extra_test_class", "absent from"), ("text_file", "not a .npz"),
])
def test_bad_layouts_name_the_path_and_fix(tmp_path, case, message):
    root = tmp_path / "d"
    (root / "train" / "a").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "train" / "a" / "x.png")
    Image.new("L", (8, 8)).save(root / "train" / "a" / "y.png")
    if case != "one_class":
        (root / "train" / "b").mkdir()
        if case != "empty_class":
            Image.new("L", (8, 8)).save(root / "train" / "b" / "x.png")
            Image.new("L", (8, 8)).save(root / "train" / "b" / "y.png")
    path = {"missing": tmp_path / "nope", "no_classes": tmp_path / "empty"}.get(case, root)
    if case == "no_classes":
        path.mkdir()
    if case == "extra_test_class":
        (root / "test" / "c").mkdir(parents=True)
        Image.new("L", (8, 8)).save(root / "test" / "c" / "x.png")
    if case == "text_file":
        path = tmp_path / "x.txt"
        path.write_text("hi")
    with pytest.raises(MedtlError, match=message) as info:
        discover(DataConfig(path=str(path), val_fraction=0.5))
    assert str(path) in str(info.value) or case in ("missing",) and "nope" in str(info.value)
