"""The config in sections (train, eval, runtime, cache): older keys still read through the one renaming table,
with one deprecation line each; a key in the wrong section refused in one line naming the right one."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch
import yaml

from helpers import cli_in_process
from medtl.core.config import renames as config_renames
from medtl.core.config import (RENAMES, SECTIONS, RunConfig, apply_overrides, dump_yaml, load_config, make_config,
                               to_dict)
from medtl.core.errors import MedtlError
from medtl.models.checkpoint import Checkpoint

# a run folder's config.yaml written before the sections (commit d71abc1: all 34 settings under train)
OLD_RUN = Path(__file__).resolve().parents[2] / "examples/kermany_auto/defaults_d71abc1/seed0/config.yaml"
TINY = {"backbone": "resnet18", "weights": "none", "strategy": "full", "epochs": 2, "image_size": 32,
        "batch_size": 16}


@pytest.fixture
def announced(monkeypatch, caplog) -> pytest.LogCaptureFixture:
    """A process in which no old key was named yet, its deprecation lines captured."""
    monkeypatch.setattr(config_renames, "ANNOUNCED", set())
    caplog.set_level(logging.WARNING, logger="medtl.core.config.renames")
    return caplog


def old_layout(cfg: RunConfig) -> dict:
    """`cfg` as a config.yaml or checkpoint written before the sections held it: every renamed key back under
    its old name."""
    tree = to_dict(cfg)
    for old, new in RENAMES.items():
        (o_section, o_key), (n_section, n_key) = old.split("."), new.split(".")
        tree[o_section][o_key] = tree[n_section].pop(n_key)
    tree["runtime"].pop("track")  # a runtime setting added later (issue 35), with its default
    for section in ("eval", "runtime", "cache"):
        assert tree.pop(section) == {}  # nothing of these sections existed before
    return tree


def test_the_renaming_table_maps_every_old_key_to_a_setting():
    old = yaml.safe_load(OLD_RUN.read_text())
    old_keys = {f"{s}.{k}" for s in ("data", "train") for k in old[s]}
    new_keys = {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert set(RENAMES) == old_keys - new_keys  # every old key that is gone is renamed, and nothing else
    assert set(RENAMES.values()) <= new_keys and len(set(RENAMES.values())) == len(RENAMES)
    assert len(old["train"]) - len([k for k in RENAMES if k.startswith("train.")]) == len(dataclasses.fields(
        SECTIONS["train"]))  # what stays in train is optimisation only


def test_an_old_run_folders_config_loads_as_the_same_config(announced):
    cfg = load_config(OLD_RUN)
    old = yaml.safe_load(OLD_RUN.read_text())
    assert cfg.eval.tta == old["train"]["tta"] and cfg.eval.threshold == old["train"]["threshold"]
    assert cfg.runtime.threads == old["train"]["threads"] and cfg.runtime.device == old["train"]["device"]
    assert cfg.cache.dir == old["data"]["cache_dir"] and cfg.cache.feature_views == old["train"]["feature_views"]
    assert cfg.train.lr == old["train"]["lr"] and cfg.train.epochs == old["train"]["epochs"]
    written = yaml.safe_load(dump_yaml(cfg))  # what a run writes now: the sections, no old key
    assert "tta" not in written["train"] and "cache_dir" not in written["data"] and written["eval"]["tta"]
    assert load_config_text(dump_yaml(cfg)) == cfg


def load_config_text(text: str) -> RunConfig:
    from medtl.core.config import run_config_from

    return run_config_from(yaml.safe_load(text), "config.yaml")


def test_old_and_new_layouts_give_the_same_config(tmp_path, announced):
    cfg = make_config("data", **{"eval.tta": "hflip", "runtime.threads": 3, "cache.dir": str(tmp_path),
                                 "cache.feature_views": 0, "train.lr": 0.01})
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old_layout(cfg)))
    assert load_config(path) == cfg


def test_an_old_checkpoint_loads_with_its_config(tmp_path, announced):
    cfg = make_config("data", backbone="resnet18", **{"eval.tta": "hflip", "runtime.device": "cpu"})
    stored = {"model": {"w": torch.zeros(2)}, "config": old_layout(cfg), "classes": ["neg", "pos"],
              "threshold": 0.4, "backbone": "resnet18", "image_size": 32, "in_chans": 3,
              "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    path = tmp_path / "model.pt"
    torch.save(stored, path)
    ckpt = Checkpoint.load(path)
    assert ckpt.config == cfg and ckpt.config.eval.tta == "hflip" and ckpt.config.runtime.device == "cpu"
    lines = [r.getMessage() for r in announced.records]
    assert f"{path}: train.tta is deprecated; use eval.tta (same meaning)" in lines


def test_each_old_key_is_named_in_one_deprecation_line(tmp_path, announced):
    path = tmp_path / "old.yaml"
    path.write_text("train:\n  tta: none\n  device: cpu\n  lr: 0.01\ndata:\n  cache_dir: cache\n")
    first = load_config(path)
    again = apply_overrides(load_config(path), {"train.tta": "hflip"})  # read again, and as an override
    kwargs = make_config("data", cache_dir="c2", tta="none")  # the old Python keyword `cache_dir`
    assert (first.eval.tta, first.runtime.device, first.cache.dir, first.train.lr) == ("none", "cpu", "cache", 0.01)
    assert again.eval.tta == "hflip" and kwargs.cache.dir == "c2" and kwargs.eval.tta == "none"
    lines = [r.getMessage() for r in announced.records]
    assert sorted(lines) == sorted([f"{path}: train.tta is deprecated; use eval.tta (same meaning)",
                                    f"{path}: train.device is deprecated; use runtime.device (same meaning)",
                                    f"{path}: data.cache_dir is deprecated; use cache.dir (same meaning)"])


@pytest.mark.parametrize("overrides, message", [
    ({"runtime.tta": "hflip"}, "runtime.tta is not a setting of section runtime; it belongs to section eval: "
                               "write eval.tta"),
    ({"train.dir": "x"}, "train.dir is not a setting of section train; it belongs to section cache: write cache.dir"),
    ({"eval.lr": "0.1"}, "eval.lr is not a setting of section eval; it belongs to section train: write train.lr"),
])
def test_a_key_in_the_wrong_section_names_the_right_one(overrides, message):
    with pytest.raises(MedtlError) as err:
        apply_overrides(RunConfig(), overrides)
    assert str(err.value).endswith(message) and "\n" not in str(err.value)


def test_a_file_with_a_key_in_the_wrong_section_or_twice_is_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("runtime:\n  threshold: f1\n")
    with pytest.raises(MedtlError, match=rf"^{path}: runtime.threshold is not a setting of section runtime; it "
                                         r"belongs to section eval: write eval.threshold$"):
        load_config(path)
    path.write_text("train:\n  tta: none\neval:\n  tta: hflip\n")
    with pytest.raises(MedtlError, match=rf"^{path}: train.tta and eval.tta both given \(the same setting under its "
                                         r"old and new name\); keep only eval.tta$"):
        load_config(path)


def test_cli_refuses_a_misplaced_key_and_takes_an_old_one(image_tree, cache_dir, tmp_path, monkeypatch, capsys):
    code, out, err = cli_in_process(monkeypatch, capsys, "train", image_tree, "--set", "runtime.tta=none",
                                    "--output-dir", tmp_path / "runs")
    assert code == 2 and err.strip().splitlines() == [
        "error: config: runtime.tta is not a setting of section runtime; it belongs to section eval: write eval.tta"]
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    monkeypatch.setattr(config_renames, "ANNOUNCED", set())
    code, out, err = cli_in_process(monkeypatch, capsys, "audit", image_tree, "--set", "train.threads=1",
                                    "--set", f"data.cache_dir={cache_dir}")
    assert code == 0
    lines = [line for line in (out + err).splitlines() if "deprecated" in line]
    assert len(lines) == 2 and "train.threads is deprecated; use runtime.threads" in lines[0] + lines[1]


@pytest.mark.slow
def test_a_run_writes_its_config_in_sections(image_tree, cache_dir, tmp_path, announced):
    import medtl

    run = medtl.train(image_tree, **TINY, out=str(tmp_path), name="r", **{"train.tta": "none",
                                                                          "data.cache_dir": str(cache_dir)})
    written = yaml.safe_load(run.folder.config.read_text())
    assert list(written) == ["data", "model", "train", "eval", "runtime", "cache", "out", "name"]
    assert written["eval"]["tta"] == "none" and written["cache"]["dir"] == str(cache_dir)
    assert "tta" not in written["train"] and "cache_dir" not in written["data"]
    assert Checkpoint.load(run.folder.checkpoint).config == load_config(run.folder.config) == run.config
    assert any((cache_dir / "images").iterdir())  # the cache went where the old key said
