"""YAML config with CLI overrides; unknown keys and bad values raise with the fix."""

import pytest

from medtl.core.config import RunConfig, apply_overrides, dump_yaml, from_dict, load_config, parse_set, to_dict
from medtl.core.errors import MedtlError


def test_yaml_then_overrides_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  backbone: resnet18\ntrain:\n  lr: 0.01\n  epochs: 3\n")
    cfg = apply_overrides(load_config(path), {**parse_set(["train.lr=0.5", "data.augment=false"]),
                                              "data.image_size": None, "model.strategy": "full"})
    assert cfg.model.backbone == "resnet18" and cfg.train.lr == 0.5 and cfg.train.epochs == 3
    assert cfg.data.augment is False and cfg.data.image_size is None and cfg.model.strategy == "full"
    again = from_dict(RunConfig, to_dict(cfg))
    assert again == cfg
    assert "backbone: resnet18" in dump_yaml(cfg)


def test_unknown_key_and_bad_value():
    with pytest.raises(MedtlError, match="did you mean lr"):
        apply_overrides(RunConfig(), {"train.lrr": "1"})
    with pytest.raises(MedtlError, match="cannot read 'abc' as int"):
        apply_overrides(RunConfig(), {"train.epochs": "abc"})
    with pytest.raises(MedtlError, match="section.key=value"):
        parse_set(["lr"])
    with pytest.raises(MedtlError, match="not found"):
        load_config("/nonexistent/c.yaml")


@pytest.mark.parametrize("key, value, message", [
    ("train.epochs", "0", "train.epochs=0 is out of range: it must be >= 1"),
    ("train.batch_size", "-3", "train.batch_size=-3 is out of range"),
    ("train.lr", "1e30", "train.lr=1e+30 is out of range: it must be <= 10"),
    ("train.lr", "nan", "train.lr=nan must be a finite number"),
    ("data.image_size", "0", "data.image_size=0 is out of range: it must be >= 16"),
    ("data.val_fraction", "1.5", "data.val_fraction=1.5 is out of range: it must be < 1"),
    ("model.dropout", "1", "model.dropout=1.0 is out of range"),
    ("train.optimizer", "adamm", "train.optimizer='adamm' is not a choice (did you mean adam?)"),
    ("train.schedule", "linear", "valid: cosine, step, none"),
    ("train.monitor", "acc", "valid: auc, loss"),
    ("model.strategy", "fine", "valid: auto, scratch, linear, partial, full"),
    ("data.channels", "gray", "valid: replicate, adapt"),
    ("data.convert_mode", "rgb", "did you mean RGB"),
    ("runtime.device", "gpu", "valid: auto, cpu, cuda"),
    ("eval.threshold", "high", "eval.threshold='high'"),
    ("name", "a/b", "plain folder name"),
])
def test_every_value_is_checked_when_the_config_is_made(key, value, message):
    with pytest.raises(MedtlError) as err:
        apply_overrides(RunConfig(), {key: value})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_value_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: -1\n")
    with pytest.raises(MedtlError, match=r"run.yaml: train.epochs=-1 is out of range"):
        load_config(path)
