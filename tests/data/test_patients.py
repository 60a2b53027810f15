"""Patient keys from the paths: found with strong evidence (or set by a pattern), used by default, and every
carved split keeps a patient's images on one side."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import make_image

from medtl.core.config.sections import DataConfig
from medtl.core.errors import MedtlError
from medtl.data.patients import CANDIDATES, find_keys
from medtl.data.sources import discover


@pytest.mark.parametrize("path, key", [
    ("train/PNEUMONIA/person1000_bacteria_2931.jpeg", "person1000"),  # Kermany
    ("train/PNEUMONIA/person23_virus_56.jpeg", "person23"),
    ("train/NORMAL/IM-0640-0001-0001.jpeg", "IM-0640"),
    ("train/NORMAL/NORMAL2-IM-1018-0001.jpeg", "NORMAL2-IM-1018"),
    ("images/00000001_000.png", "00000001"),  # ChestX-ray14
    ("CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg", "patient00001"),
    ("files/p10/p10000032/s50414267/02aa804e.jpg", "p10000032"),  # MIMIC-CXR
    ("yes/Y12.jpg", None), ("a/img_001.png", None), ("neg/neg_3.png", None),
])
def test_the_candidate_patterns_read_the_key_of_public_collections(path, key):
    found = [m.group(1) for _, pattern in CANDIDATES if (m := re.search(pattern, path))]
    assert (found[0] if found else None) == key


def _names(per_patient: int, patients: int, stem: str = "person{p}_bacteria_{i}.png") -> list[str]:
    return [f"/d/PNEUMONIA/{stem.format(p=p, i=p * 10 + i)}" for p in range(patients) for i in range(per_patient)]


def test_auto_takes_a_key_only_with_strong_evidence():
    found = find_keys(_names(3, 40), "/d", "auto")
    assert found is not None and len(set(found.keys.values())) == 40 and "file-name prefix" in found.source
    assert find_keys(_names(1, 80), "/d", "auto") is None  # one image per key: no evidence of patients
    assert find_keys(_names(3, 5), "/d", "auto") is None  # too few keys
    assert find_keys([f"/d/a/scan_2020_{i}.png" for i in range(300)], "/d", "auto") is None  # one shared word
    assert find_keys(_names(3, 40), "/d", "none") is None


def test_a_set_pattern_keys_what_it_matches_and_leaves_the_rest_apart():
    refs = _names(2, 3) + ["/d/PNEUMONIA/other.png"]
    found = find_keys(refs, "/d", r"person(\d+)_")
    assert [found.keys[r] for r in refs[:4]] == ["0", "0", "1", "1"]
    assert found.keys["/d/PNEUMONIA/other.png"] not in {"0", "1", "2"}


@pytest.mark.parametrize("pattern, says", [("person(", "is not a regular expression"), ("person", "has no group")])
def test_a_bad_pattern_is_refused_in_one_line(pattern, says):
    with pytest.raises(MedtlError, match=says) as err:
        DataConfig(path="x", patient_pattern=pattern).check()
    assert "\n" not in str(err.value) and pattern in str(err.value)


def _tree(root, patients: int = 30, per: int = 3):
    """One class-folder tree, Kermany-named: several images per patient."""
    rng = np.random.default_rng(0)
    for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
        (root / cls).mkdir(parents=True)
        for p in range(patients):
            for i in range(per):
                make_image(label, rng, 12).save(root / cls / f"person{label}{p:03d}_bacteria_{p * 10 + i}.png")
    return root


def test_carved_validation_and_test_share_no_patient_with_train_by_default(tmp_path):
    root = _tree(tmp_path / "data")
    splits = discover(DataConfig(path=str(root)), 0)
    side = {s: {splits.groups[r] for r in refs} for s, refs in splits.refs.items()}
    assert not side["train"] & side["val"] and not side["train"] & side["test"] and not side["val"] & side["test"]
    record = splits.patients()
    assert "file-name prefix" in record["source"] and sum(record["keys_per_split"].values()) == 60
    assert any(n.startswith("patients: 60 keys (3.0 images per key)") for n in splits.notes), splits.notes
    assert any("patient-grouped" in n for n in splits.notes)
    off = discover(DataConfig(path=str(root), patient_pattern="none"), 0)
    assert off.patients() == {} and not any(n.startswith("patients:") for n in off.notes)
    assert not any("patient-grouped" in n for n in off.notes)


def test_a_set_pattern_with_too_few_patients_is_refused_in_one_line(tmp_path):
    root = _tree(tmp_path / "data")
    with pytest.raises(MedtlError, match="only 2 patients: .*data.patient_pattern=none") as err:
        discover(DataConfig(path=str(root), patient_pattern=r"(person\d)"), 0)  # person0..., person1...: 2 keys
    assert "\n" not in str(err.value)
