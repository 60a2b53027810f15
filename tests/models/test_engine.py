"""Frozen passes on ONNX Runtime / OpenVINO: parity with PyTorch per registry family, fallback when an engine
is missing or disagrees, the compiled-model cache, auto's choice, and nothing calling home."""

from __future__ import annotations

import json
import logging
import socket

import pytest
import torch

from medtl.models import engine as eng
from medtl.models.backbones import build_backbone, get_spec
from medtl.models.strategies import Prefix

ENGINES = [e for e in ("onnxruntime", "openvino") if eng.installed(e)]
# one backbone per family in the registry (torchvision's and timm's builders), at a tiny size
FAMILIES = {"resnet18": 32, "densenet121": 32, "shufflenet_v2_x1_0": 32, "mobilenet_v2": 32,
            "mobilenet_v3_large": 32, "efficientnet_b0": 32, "efficientnet_v2_s": 32, "vgg16": 32,
            "inception_v3": 75, "efficientnet_lite0": 32}


def net_and_batch(name: str = "resnet18", size: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    net = build_backbone(get_spec(name), "none").eval()
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return net, x


def reference(net, x):
    with torch.inference_mode():
        return net(x).float()


@pytest.mark.parametrize("engine", ENGINES)
def test_fast_tier_parity_resnet(engine, tmp_path):
    net, x = net_and_batch()
    runner = eng.frozen_runner(net, x, engine, tmp_path)
    assert runner.name == engine
    assert eng.parity_error(runner(x), reference(net, x)) <= eng.PARITY
    more = torch.randn(7, 3, 32, 32)  # another batch size than the export's
    assert eng.parity_error(runner(more), reference(net, more)) <= eng.PARITY


@pytest.mark.parametrize("engine", ENGINES)
def test_uint8_pixels_are_normalised_inside_the_graph_as_preprocess_does(engine, tmp_path):
    from medtl.data.preprocess import Preprocess
    net, _ = net_and_batch()
    pre = Preprocess(32, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    runner = eng.frozen_runner(eng.OnPixels(net, *pre.stats()), pixels, engine, tmp_path)
    assert runner.name == engine and eng._numpy(pixels).dtype.name == "uint8"  # handed over as uint8
    assert eng.parity_error(runner(pixels), reference(net, pre.normalize(pixels))) <= eng.PARITY


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_parity_per_family(name, tmp_path):
    net, x = net_and_batch(name, FAMILIES[name])
    expected = reference(net, x)
    for engine in ENGINES:
        runner = eng.frozen_runner(net, x, engine, tmp_path)
        assert runner.name == engine, f"{name} fell back to PyTorch on {engine}"
        assert eng.parity_error(runner(x), expected) <= eng.PARITY


@pytest.mark.slow
def test_partial_prefix_exports_and_matches_the_eager_prefix(tmp_path):
    net, x = net_and_batch("efficientnet_lite0")
    eager = reference(Prefix(net, "blocks.4"), x)
    runner = eng.frozen_runner(Prefix(net, "blocks.4", early_exit=False), x, ENGINES[0], tmp_path, tag="blocks.4")
    assert runner.name == ENGINES[0]
    assert eng.parity_error(runner(x), eager) <= eng.PARITY


def test_missing_engine_falls_back_to_torch_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(eng, "installed", lambda e: e == "torch")
    net, x = net_and_batch()
    with caplog.at_level(logging.WARNING):
        runner = eng.frozen_runner(net, x, "openvino", tmp_path)
    assert runner.name == "torch"
    assert [r.message for r in caplog.records if r.levelno == logging.WARNING] == [
        "engine openvino is not installed (pip install openvino); the frozen pass runs on PyTorch"]
    assert not (tmp_path / "engines").exists()  # nothing exported for nothing
    assert eng.frozen_runner(net, x, "auto", tmp_path, images=10**9).name == "torch"  # auto: none installed


def test_engine_that_disagrees_is_not_used(tmp_path, monkeypatch, caplog):
    net, x = net_and_batch()
    real = eng.OnnxRuntimeRunner.__call__
    monkeypatch.setattr(eng.OnnxRuntimeRunner, "__call__", lambda self, a: real(self, a) + 1e-2)
    with caplog.at_level(logging.WARNING):
        runner = eng.frozen_runner(net, x, "onnxruntime", tmp_path)
    assert runner.name == "torch"
    assert any("differs from PyTorch" in r.message for r in caplog.records)


def test_compiled_model_is_cached_and_a_damaged_one_is_exported_again(tmp_path, monkeypatch, caplog):
    net, x = net_and_batch()
    eng.frozen_runner(net, x, ENGINES[0], tmp_path)
    onnx_files = list((tmp_path / "engines").glob("*.onnx"))
    assert len(onnx_files) == 1
    exports = []
    real_export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: exports.append(1) or real_export(*a, **k))
    with caplog.at_level(logging.INFO):
        runner = eng.frozen_runner(net, x, ENGINES[0], tmp_path)
    assert runner.name == ENGINES[0] and exports == []  # a cache hit: no export
    assert any("from the cache" in r.message for r in caplog.records)
    if "openvino" in ENGINES:
        eng.frozen_runner(net, x, "openvino", tmp_path)
        assert any((tmp_path / "engines" / "openvino").iterdir())  # OpenVINO's compiled blob is kept too
    onnx_files[0].write_bytes(onnx_files[0].read_bytes()[:-10] + b"0123456789")  # damaged on disk
    runner = eng.frozen_runner(net, x, ENGINES[0], tmp_path)
    assert exports == [1] and runner.name == ENGINES[0]
    other, _ = net_and_batch(seed=1)  # other weights: another key
    eng.frozen_runner(other, x, ENGINES[0], tmp_path)
    assert len(list((tmp_path / "engines").glob("*.onnx"))) == 2


def test_auto_skips_short_passes_and_measures_long_ones_once(tmp_path, monkeypatch):
    net, x = net_and_batch()
    assert eng.frozen_runner(net, x, "auto", tmp_path, images=8).name == "torch"
    assert not (tmp_path / "engines").exists()  # too short to repay an export: nothing exported
    first = eng.frozen_runner(net, x, "auto", tmp_path, images=10**9)
    [choice] = (tmp_path / "engines").glob("*.choice.json")
    measured = json.loads(choice.read_text())
    assert first.name == measured["engine"] == max(measured["images_per_s"], key=measured["images_per_s"].get)
    assert set(measured["images_per_s"]) == {"torch", *ENGINES}
    compiled = []
    for cls in (eng.OnnxRuntimeRunner, eng.OpenVinoRunner):
        real = cls.__init__
        monkeypatch.setattr(cls, "__init__", lambda self, *a, real=real, **k: compiled.append(1) or real(self, *a, **k))
    again = eng.frozen_runner(net, x, "auto", tmp_path, images=8)  # cached export: even a short pass uses it
    assert again.name == first.name and len(compiled) == (first.name != "torch")  # only the chosen one compiled


@pytest.mark.skipif("openvino" not in ENGINES, reason="openvino is not installed")
def test_openvino_never_calls_home(tmp_path, monkeypatch):
    def refuse(self, address):
        raise AssertionError(f"network connection to {address}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket.socket, "sendto", lambda self, *a: refuse(self, a[-1]))
    net, x = net_and_batch()
    assert eng.frozen_runner(net, x, "openvino", tmp_path).name == "openvino"


def test_unknown_engine_is_refused(tmp_path):
    net, x = net_and_batch()
    with pytest.raises(ValueError, match="valid: auto, torch, openvino, onnxruntime"):
        eng.frozen_runner(net, x, "tensorrt", tmp_path)
