"""Patients from a manifest and from DICOM headers: patient-level metrics and CSVs, intervals over patients, and no
clear patient ID in any file of the run folder or the evaluation folder (unless --reveal-ids, recorded)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import MRImageStorage, generate_uid

import medtl
from helpers import TINY, make_image, write_dicom
from medtl.data.pseudonyms import PREFIX
from medtl.evaluation.patient_level import RULES


def _manifest(root: Path, patients: int = 24, per: int = 3) -> tuple[Path, list[str]]:
    """A manifest of `patients` per class with `per` images each, file names that say nothing of the patient."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rows, ids = ["path,label,patient_id"], []
    for label in (0, 1):
        for p in range(patients):
            pid = f"MRN{label}{p:04d}-SMITH"
            ids.append(pid)
            for _ in range(per):
                name = f"img_{len(rows):04d}.png"
                make_image(label, rng, 32).save(root / name)
                rows.append(f"{name},{'pos' if label else 'neg'},{pid}")
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    return root / "cases.csv", ids


def _dicom_tree(root: Path, patients: int = 14) -> tuple[Path, list[str]]:
    """train/ and test/ class folders of DICOM files: each patient two studies of two images, named neutrally."""
    rng = np.random.default_rng(1)
    secrets = []
    for label, name in enumerate(("neg", "pos")):
        for p in range(patients):
            split = "test" if p % 4 == 0 else "train"
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            pid = f"HOSP-{label}{p:03d}-ZX"
            secrets.append(pid)
            for _ in range(2):
                study = generate_uid()
                secrets.append(study)
                for _ in range(2):
                    pixels = np.asarray(make_image(label, rng, 32), dtype=np.uint16)
                    write_dicom(folder / f"{len(list(folder.iterdir())):04d}.dcm", pixels * 8, MRImageStorage,
                                Modality="MR", PatientID=pid, PatientName="DOE^JANE", StudyInstanceUID=study)
    return root, secrets


def _leaks(folders: list[Path], clear: list[str]) -> list[str]:
    """'file: ID' for every clear ID found in any file under `folders` (bytes, so binary files count too)."""
    found = []
    for folder in folders:
        for path in (p for p in folder.rglob("*") if p.is_file()):
            data = path.read_bytes()
            found += [f"{path}: {c}" for c in clear if c.encode() in data]
    return found


def _keys(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return [row["patient"] for row in csv.DictReader(fh)]


def test_a_manifest_with_patient_ids_gives_patient_level_results_and_no_clear_id(tmp_path, cache_dir):
    manifest, ids = _manifest(tmp_path / "data")
    run = medtl.train(manifest, out=tmp_path / "runs", name="m", progress=False, **TINY)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["patients"]["ids"].startswith("pseudonymised")
    level = metrics["patient_level"]
    assert level["rule"] in RULES and set(level["validation_log_loss"]) == set(RULES)
    for split in ("val", "test"):
        assert metrics["splits"][split]["interval_unit"] == "patient"
        by_key = level["splits"][split]
        assert by_key["keys"] * 3 == by_key["images"] == metrics["splits"][split]["n"]
        assert by_key["ci95"]["auc"] is None or len(by_key["ci95"]["auc"]) == 2
        keys = _keys(run.path / f"predictions_{split}_patients.csv")
        assert len(keys) == by_key["keys"] and all(k.startswith(PREFIX) for k in keys)
    ev = run.evaluate(manifest, "test", output_dir=tmp_path / "ev")
    assert ev.patient_level["rule"] == level["rule"] and ev.metrics["interval_unit"] == "patient"
    assert _keys(tmp_path / "ev" / "predictions_patients.csv") == _keys(run.path / "predictions_test_patients.csv")
    card = run.card(evaluations=[tmp_path / "ev"])["card_md"].read_text()
    assert "## Results per patient" in card and "intervals resample patients" in card
    assert _leaks([run.path, tmp_path / "ev"], ids) == []
    # asked for, the clear IDs are written, and the record says so
    shown = run.evaluate(manifest, "test", output_dir=tmp_path / "ev_clear", reveal_ids=True)
    assert shown.patients["ids"].startswith("clear") and set(_keys(tmp_path / "ev_clear" / "predictions_patients.csv")) <= set(ids)


def test_a_dicom_folder_of_several_studies_is_keyed_by_patient_id_and_never_shows_it(tmp_path, cache_dir):
    root, secrets = _dicom_tree(tmp_path / "mr")
    run = medtl.train(root, out=tmp_path / "runs", name="d", progress=False, **TINY)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["patients"]["source"] == "the DICOM headers' PatientID"
    assert metrics["patient_level"]["splits"]["test"]["keys"] == 8  # 4 patients a class, 4 images each
    assert metrics["splits"]["test"]["interval_unit"] == "patient"
    ev = run.evaluate(root, "test", output_dir=tmp_path / "ev")
    assert ev.patient_level["metrics"]["keys"] == 8
    run.card(evaluations=[tmp_path / "ev"])
    assert _leaks([run.path, tmp_path / "ev"], secrets + ["DOE^JANE"]) == []


@pytest.mark.parametrize("reveal", [False, True])
def test_pseudonyms_agree_across_runs_of_one_cache_and_differ_under_another(tmp_path, monkeypatch, reveal):
    from medtl.data.pseudonyms import pseudonymise, secret

    keys = {"a.png": "MRN1", "b.png": "MRN1", "c.png": "MRN2"}
    first = pseudonymise(keys, reveal, tmp_path / "one")
    assert first == pseudonymise(keys, reveal, tmp_path / "one")
    if reveal:
        assert first == keys and not (tmp_path / "one").exists()
        return
    assert first["a.png"] == first["b.png"] != first["c.png"] and "MRN" not in "".join(first.values())
    assert pseudonymise(keys, False, tmp_path / "two") != first
    assert oct((tmp_path / "one" / "pseudonym.key").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "one" / "pseudonym.key").write_text("not a secret\n")
    with pytest.raises(medtl.MedtlError, match="pseudonym.key is not a medtl pseudonym secret.*delete it"):
        secret(tmp_path / "one")
    (tmp_path / "three" / "pseudonym.key").mkdir(parents=True)  # a folder where the file should be
    with pytest.raises(medtl.MedtlError, match="pseudonym secret cannot be kept there .*IsADirectoryError.*MEDTL_CACHE"):
        pseudonymise(keys, False, tmp_path / "three")
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache folder should be
    with pytest.raises(medtl.MedtlError, match="cannot be kept there"):
        secret(blocked / "cache")
