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
