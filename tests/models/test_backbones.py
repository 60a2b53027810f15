"""Registry contract: every spec's names exist, feature dims match a forward pass; weights load as claimed."""

import urllib.error

import pytest
import torch
from torch import nn

from medtl.models import backbones
from medtl.models.backbones import BACKBONES, build_backbone, get_spec, load_state
from medtl.core.errors import MedtlError


@pytest.mark.parametrize("name", list(BACKBONES))
def test_spec_contract(name):
    spec = BACKBONES[name]
    model = spec.builder()
    modules = dict(model.named_modules())
    named = [spec.classifier, spec.first_conv, spec.cam_layer, *spec.recompute] + [n for s in spec.stages for n in s]
    for module_name in named:
        assert module_name in modules, f"{name}: module '{module_name}' does not exist"
    assert isinstance(modules[spec.first_conv], nn.Conv2d) and modules[spec.first_conv].in_channels == 3
    assert isinstance(modules[spec.classifier], nn.Linear)
    backbone = build_backbone(spec, "none").eval()
    size = 75 if spec.input_size == 299 else 64
    with torch.inference_mode():
        feats = backbone(torch.randn(2, 3, size, size))
    assert feats.shape == (2, spec.feature_dim)


def test_adapted_first_conv_matches_replicated_gray():
    spec = get_spec("efficientnet_lite0")  # mean = std = 0.5 in every channel, so the match is exact
    rgb = build_backbone(spec, "package").eval()
    gray = build_backbone(spec, "package", in_chans=1).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-4, rtol=1e-4)
    assert gray.conv_stem.in_channels == 1 and gray.conv_stem.weight.shape[1] == 1


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_shipped_lite_weights_map_onto_timm(name):
    spec = get_spec(name)
    state = load_state(spec, "package")
    model = build_backbone(spec, "package")
    raw = torch.load(backbones.package_weights_path(spec), map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.conv_stem.weight, raw["_conv_stem.weight"])
    torch.testing.assert_close(model.bn2.running_var, raw["_bn1.running_var"])
    assert "classifier.weight" in state and backbones.weights_available_offline(spec)


def test_unknown_backbone_lists_close_names():
    with pytest.raises(MedtlError, match="did you mean resnet18"):
        get_spec("resnet-18")


def test_hub_weights_offline_error_names_the_fix(monkeypatch):
    class Offline:
        url = "https://example.invalid/resnet18.pth"

        def get_state_dict(self, progress):
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(backbones.tvm, "get_model_weights", lambda name: type("W", (), {"DEFAULT": Offline()}))
    with pytest.raises(MedtlError, match="--weights /path/to/file.pth"):
        load_state(get_spec("resnet18"), "imagenet")


def test_local_weights_file_loads_and_wrong_file_is_rejected(tmp_path):
    spec = get_spec("resnet18")
    source = spec.builder()
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "r18.pth")
    model = build_backbone(spec, str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    torch.save(get_spec("shufflenet_v2_x1_0").builder().state_dict(), tmp_path / "other.pth")
    with pytest.raises(MedtlError, match="do not fit backbone 'resnet18'"):
        build_backbone(spec, str(tmp_path / "other.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MedtlError, match="cannot read weights file"):
        build_backbone(spec, str(tmp_path / "junk.pth"))
