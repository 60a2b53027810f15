"""Split layouts as people publish them; split names are never trained as classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtl.core.config import DataConfig
from medtl.core.errors import MedtlError
from medtl.data.sources import discover

from helpers import make_image


def tree(root: Path, layout: dict[str, int], classes=("neg", "pos")) -> Path:
    """root/<split folder>/<class>/img.png, `n` images per class per split folder."""
    rng = np.random.default_rng(0)
    for folder, n in layout.items():
        for label, name in enumerate(classes):
            d = root / folder / name
            d.mkdir(parents=True)
            for i in range(n):
                make_image(label, rng, size=16).save(d / f"{folder}_{name}_{i}.png")
    return root


@pytest.mark.parametrize("names, expected", [
    (("train", "val", "test"), {"train", "val", "test"}),
    (("Training", "Testing"), {"train", "val", "test"}),
    (("train", "valid", "test"), {"train", "val", "test"}),
    (("training", "validation", "testing"), {"train", "val", "test"}),
    (("TRAIN", "TEST"), {"train", "val", "test"}),
    (("Train", "Val"), {"train", "val"}),
])
def test_published_split_names_are_read_as_splits(tmp_path, names, expected):
    root = tree(tmp_path / "d", {n: 6 for n in names})
    splits = discover(DataConfig(path=str(root)))
    assert splits.classes == ["neg", "pos"] and set(splits.refs) == expected
    for name in names:  # each given split keeps exactly its own folder's images
        split = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}[name.lower()]
        if split != "train":
            assert all(f"/{name}/" in r for r in splits.refs[split]) and len(splits.refs[split]) == 12


@pytest.mark.parametrize("layout, message", [
    ({"Training": 0, "Testing": 0}, r"(Training|Testing) looks like a split folder but holds no class folders"),
    ({"train": 4, "valid": 4, "validation": 4}, r"valid and validation are both the val split"),
    ({"Testing": 4, "val": 4}, r"has split folders \(Testing, val\) but no training split"),
])
def test_ambiguous_layouts_stop_in_one_line(tmp_path, layout, message):
    root = tmp_path / "d"
    for folder, n in layout.items():
        if n:
            tree(root, {folder: n})
        else:  # images straight in the split folder: "Training vs Testing" must not become two classes
            (root / folder).mkdir(parents=True)
            make_image(0, np.random.default_rng(0)).save(root / folder / "a.png")
    with pytest.raises(MedtlError, match=message) as err:
        discover(DataConfig(path=str(root)))
    assert "\n" not in str(err.value)


def test_split_folders_beside_class_folders_are_refused(tmp_path):
    root = tree(tmp_path / "d", {"train": 4})
    (root / "pneumonia").mkdir()
    make_image(1, np.random.default_rng(0)).save(root / "pneumonia" / "x.png")
    with pytest.raises(MedtlError, match=r"mixes split folders \(train\) with other folders \(pneumonia\)"):
        discover(DataConfig(path=str(root)))


def test_an_archive_folder_around_the_splits_is_named(tmp_path):
    tree(tmp_path / "download" / "chest_xray", {"train": 4, "test": 4})
    with pytest.raises(MedtlError, match=r"holds one folder, chest_xray, with split folders inside; pass .*chest_xray"):
        discover(DataConfig(path=str(tmp_path / "download")))


def test_plain_class_folders_are_still_classes(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        (root / name).mkdir(parents=True)
        for i in range(10):
            make_image(label, rng, size=16).save(root / name / f"{i}.png")
    splits = discover(DataConfig(path=str(root)))
    assert splits.classes == ["NORMAL", "PNEUMONIA"] and set(splits.refs) == {"train", "val", "test"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(copies=st.lists(st.integers(0, 11), min_size=0, max_size=15), seed=st.integers(0, 3))
def test_no_byte_identical_file_lands_in_two_carved_splits(tmp_path_factory, copies, seed):
    """Copies of an image (even across class folders) are carved together, for val and for test."""
    import hashlib
    import shutil

    root = tmp_path_factory.mktemp("copies")
    rng = np.random.default_rng(seed)
    originals = []
    for label, name in enumerate(("a", "b")):
        (root / name).mkdir()
        for i in range(12):
            path = root / name / f"{i}.png"
            make_image(label, rng, size=12).save(path)
            originals.append(path)
    for n, k in enumerate(copies):
        source = originals[k * 2 % len(originals)]
        shutil.copy(source, root / ("a", "b")[n % 2] / f"copy{n}.png")
    splits = discover(DataConfig(path=str(root)), split_seed=seed)
    where: dict[str, set] = {}
    for split, refs in splits.refs.items():
        for ref in refs:
            where.setdefault(hashlib.sha1(Path(ref).read_bytes()).hexdigest(), set()).add(split)
    assert all(len(s) == 1 for s in where.values())


def test_without_copies_the_grouped_split_is_the_plain_one(image_tree):
    grouped = discover(DataConfig(path=str(image_tree)))
    plain = discover(DataConfig(path=str(image_tree), group="none"))
    assert grouped.refs == plain.refs  # the content grouping changes nothing when every image is unique


@pytest.mark.shared_data
def test_near_duplicate_clusters_never_straddle_carved_splits_on_real_mri():
    from medtl.data.audit import collect, near_duplicates

    from helpers import shared_path

    root = shared_path("brain_mri_yes_no")
    plain = discover(DataConfig(path=str(root), group="none"))
    grouped = discover(DataConfig(path=str(root), group="near_duplicates"))
    across = [p for p in near_duplicates(collect(grouped), grouped.classes) if len(p["splits"]) > 1]
    before = [p for p in near_duplicates(collect(plain), plain.classes) if len(p["splits"]) > 1]
    assert before and not across  # a random split puts near-duplicates on both sides; the grouped one does not


def test_a_folder_without_images_beside_the_splits_is_ignored(tmp_path):
    root = tree(tmp_path / "d", {"train": 4, "val": 4, "test": 4})
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("a.png\n")  # published split lists, as COVID-CT ships them
    splits = discover(DataConfig(path=str(root)))
    assert set(splits.refs) == {"train", "val", "test"} and splits.classes == ["neg", "pos"]
