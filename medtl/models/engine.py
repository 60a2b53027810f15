"""Frozen passes on an inference engine: ONNX Runtime or OpenVINO, checked against PyTorch.

A pass that needs no gradient (linear's features, partial's prefix activations, predict, serve) can run
on an engine instead of PyTorch eager. The frozen network is exported to ONNX once per key (everything
its outputs depend on) into the cache, compiled by the engine (OpenVINO keeps its compiled blob in the
cache too), and checked on the caller's real images: when its outputs differ from PyTorch's by more than
`PARITY` of their scale, the pass runs on PyTorch with one warning. So does a pass whose engine is not
installed or whose network does not export.

`auto` uses PyTorch on an accelerator, and on a CPU when the pass is too short to repay an export
(`EXPORT_WORTH_S`); otherwise it times each installed engine and PyTorch on the same batch and keeps the
fastest, a choice measured once per network and machine and cached. Only `Core.read_model` and
`compile_model` of OpenVINO are used: never its converter.

Nothing leaves the machine and no identifier is written outside the cache: both engines ship telemetry that is
on by default (ONNX Runtime's 1DS client writes `~/.cache/Microsoft/DeveloperTools/.onnxruntime/` (a device id
and a database of queued events); `import openvino` imports its converter, which writes `~/intel/openvino_ga_cid`
and looks up an analytics host). Both are turned off before either loads (`quiet`): ONNX Runtime by its
documented `ORT_DISABLE_TELEMETRY=1`, set when this module is imported; OpenVINO by importing it with
`openvino_telemetry` unimportable, so that its converter falls back to its own no-op stub. An engine that
was loaded before this module (by the caller's own code, with its telemetry on) is never picked by auto.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from medtl.core.config import ENGINES
from medtl.core.io import atomic_path, atomic_write, make_dir, sweep_temps
from medtl.models.checkpoint import state_digest

log = logging.getLogger(__name__)

MODULES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
PARITY = 1e-4  # largest |engine - torch| on the check batch, relative to max(1, largest |torch output|)
EXPORT_WORTH_S = 20.0  # auto exports only a pass that PyTorch would take at least this long on
ENGINE_VERSION = "engine-v1"

Runner = Callable[[torch.Tensor], torch.Tensor]
TELEMETRY_OFF = {"ORT_DISABLE_TELEMETRY": "1"}  # ONNX Runtime's switch, read when it initialises
# loaded before telemetry was turned off (by the caller's code): auto never picks such an engine
_LOUD = {"onnxruntime"} if "onnxruntime" in sys.modules and os.environ.get("ORT_DISABLE_TELEMETRY") != "1" else set()


def quiet() -> None:
    """Both engines' telemetry off, before either loads (called on import: torch.onnx may load ONNX Runtime)."""
    os.environ.update(TELEMETRY_OFF)
    if "onnxruntime" in _LOUD:
        sys.modules["onnxruntime"].disable_telemetry_events()  # what can still be turned off once it is loaded


quiet()


def load_onnxruntime():
    quiet()
    import onnxruntime
    return onnxruntime


def load_openvino():
    """`openvino` without its telemetry: imported with `openvino_telemetry` unimportable, its converter (imported
    by `openvino/__init__`) binds its no-op stub instead, and never writes a client id or sends an event."""
    if "openvino" not in sys.modules:
        blocked = "openvino_telemetry" not in sys.modules
        if blocked:
            sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # `import` raises ImportError
        try:
            import openvino  # noqa: F401
        finally:
            if blocked and sys.modules.get("openvino_telemetry", 0) is None:
                del sys.modules["openvino_telemetry"]  # the caller may import it later; openvino keeps the stub
    if _telemetry_loaded():
        _LOUD.add("openvino")
    return sys.modules["openvino"]


def _telemetry_loaded() -> bool:
    """Whether OpenVINO's converter bound the real telemetry client (openvino was imported before this module)."""
    utils = sys.modules.get("openvino.tools.ovc.telemetry_utils")
    return utils is not None and not getattr(utils.tm, "__name__", "").endswith("telemetry_stub")


def silent(engine: str) -> bool:
    """Whether `engine` runs with its telemetry off (auto never picks one that does not)."""
    if engine == "openvino" and "openvino" in sys.modules and _telemetry_loaded():
        _LOUD.add("openvino")
    return engine not in _LOUD


class TorchRunner:
    """PyTorch eager, in inference mode; the reference every engine is checked against."""

    name = "torch"

    def __init__(self, net: nn.Module):
        self.net = net.eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.net(x).float()


class OnPixels(nn.Module):
    """`net` on uint8 pixels (N, C, S, S): scaled to 0..1 and normalised by (mean, std) of shape (1, C, 1, 1)
    inside the network, as `Preprocess.normalize` does, so an engine's graph does it too: the caller's thread
    then only hands over a uint8 batch (4x less memory than floats, no float ops beside the engine's)."""

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(((x.float() / 255.0 - self.mean) / self.std).contiguous(memory_format=torch.channels_last))


class OnnxRuntimeRunner:
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int):
        ort = load_onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: _numpy(x)})[0])


class OpenVinoRunner:
    """OpenVINO's CPU plugin, throughput mode: a batch is split over the plugin's parallel requests."""

    name = "openvino"

    def __init__(self, onnx_path: Path, threads: int, cache: Path):
        ov = load_openvino()
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(make_dir(cache))})  # the compiled blob, reused by the next run
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", {
            "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
        self.requests = [self.compiled.create_infer_request()
                         for _ in range(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))]
        self.lock = threading.Lock()  # an infer request serves one caller at a time

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        chunks = np.array_split(_numpy(x), min(len(self.requests), len(x)))
        with self.lock:
            for req, chunk in zip(self.requests, chunks):
                req.start_async({0: chunk})
            outs = []
            for req, _ in zip(self.requests, chunks):
                req.wait()
                outs.append(req.get_output_tensor(0).data.copy())
        return torch.from_numpy(np.concatenate(outs))


def _numpy(x: torch.Tensor) -> np.ndarray:
    """The batch as the exported graph takes it: uint8 pixels stay uint8, anything else becomes float32."""
    x = x.detach().cpu()
    return (x if x.dtype == torch.uint8 else x.float()).contiguous().numpy()


def installed(engine: str) -> bool:
    return engine == "torch" or importlib.util.find_spec(MODULES[engine]) is not None


def parity_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| relative to max(1, max |ref|): features and logits have their own scale."""
    if got.shape != ref.shape:
        return float("inf")
    return float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))


def frozen_runner(net: nn.Module, example: torch.Tensor, engine: str, cache_dir: Path, images: int = 0,
                  tag: str = "") -> Runner:
    """A callable that runs `net` (frozen: never trained through it) on batches like `example` (float, or
    uint8 pixels for a net wrapped in `OnPixels`).

    The compiled model is cached under a key of the network's class, its weights' digest, the input's
    shape and `tag` (what else its outputs depend on); `images` is how many the pass will run, for
    auto's export-or-not estimate."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}; valid: {', '.join(ENGINES)}")
    reference = TorchRunner(net)
    if engine == "torch" or example.device.type != "cpu":
        if engine not in ("torch", "auto"):
            log.warning("engine %s runs on the CPU only; the pass on %s runs on PyTorch", engine, example.device)
        return reference
    if engine != "auto" and not installed(engine):
        log.warning("engine %s is not installed (pip install %s); the frozen pass runs on PyTorch", engine, engine)
        return reference
    start = time.perf_counter()
    expected = reference(example)
    torch_s = (time.perf_counter() - start) / len(example) * images
    folder = cache_dir / "engines"
    key = _digest(type(net).__qualname__, state_digest(net.state_dict()), tuple(example.shape[1:]), tag)
    onnx_path, choice = folder / f"{key}.onnx", folder / f"{key}.{_machine()}.choice.json"
    candidates = _candidates(engine, choice)
    if not candidates or (engine == "auto" and not _valid(onnx_path) and torch_s < EXPORT_WORTH_S):
        log.info("engine: torch (%s)", "measured fastest here" if candidates == [] and choice.is_file() else
                 "no engine installed" if not candidates else
                 f"the pass, ~{torch_s:.0f} s on PyTorch, is too short to repay an export")
        return reference
    if not _exported(net, example, onnx_path):
        return reference
    runners = {r.name: r for r in (_checked(name, onnx_path, folder, example, expected) for name in candidates) if r}
    if engine != "auto" or not runners:
        return runners.get(engine, reference)
    return _fastest({"torch": reference, **runners}, example, choice)


def _candidates(engine: str, choice: Path) -> list[str]:
    """The engines to compile: the one asked for; for auto, the one measured fastest before on this machine
    (none when that was PyTorch), else every installed one."""
    if engine != "auto":
        return [engine]
    installed_ = [e for e in ENGINES[2:] if installed(e) and silent(e)]
    chosen = _read_choice(choice)
    if chosen == "torch":
        return []
    return [chosen] if chosen in installed_ else installed_


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr((ENGINE_VERSION, torch.__version__) + parts).encode()).hexdigest()[:24]


def _machine() -> str:
    """Which engine is fastest depends on the CPU, the threads and the libraries' versions."""
    parts = [platform.machine(), platform.processor(), os.cpu_count(), torch.get_num_threads()]
    parts += [_version(m) for m in MODULES.values()]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return "-"
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(module)
    except PackageNotFoundError:
        return "?"


def _valid(path: Path) -> bool:
    """An exported model whose checksum (written after it) still matches: a damaged file is exported again."""
    digest = path.with_suffix(".sha256")
    return path.is_file() and digest.is_file() and digest.read_text().strip() == _file_digest(path)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _exported(net: nn.Module, example: torch.Tensor, path: Path) -> bool:
    """The ONNX file for `net` in the cache (exported now unless a valid one is there); False when the
    network does not export (warned: the pass then runs on PyTorch)."""
    if _valid(path):
        log.info("engine: exported network from the cache (%s)", path.name)
        return True
    start = time.perf_counter()
    make_dir(path.parent)
    sweep_temps(path.parent)  # what killed exports of other networks left
    try:
        with atomic_path(path) as tmp:
            sample = torch.cat([example[:2]] * 2)[:2].contiguous()  # two rows: a batch of one would fix the size
            program = torch.onnx.export(net.eval(), (sample,), dynamo=True, input_names=["x"],
                                        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}, verbose=False)
            program.optimize()
            program.save(str(tmp))
    except Exception as exc:  # the exporter raises many types; any of them means "run this pass on PyTorch"
        log.warning("engine: %s does not export to ONNX (%s: %s); the frozen pass runs on PyTorch",
                    type(net).__name__, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        return False
    atomic_write(path.with_suffix(".sha256"), _file_digest(path))  # after the model: no checksum means "again"
    log.info("engine: exported %s to ONNX in %.1f s (cached)", type(net).__name__, time.perf_counter() - start)
    return True


def _checked(name: str, onnx_path: Path, folder: Path, example: torch.Tensor, expected: torch.Tensor):
    """The engine's runner when it agrees with PyTorch on `example`, else None (warned)."""
    threads = torch.get_num_threads()
    runner = (OnnxRuntimeRunner(onnx_path, threads) if name == "onnxruntime"
              else OpenVinoRunner(onnx_path, threads, folder / "openvino"))
    error = parity_error(runner(example), expected)
    if not error <= PARITY:
        log.warning("engine %s differs from PyTorch by %.1e (> %g, relative) on %d images; that pass runs on "
                    "PyTorch", name, error, PARITY, len(example))
        return None
    log.info("engine %s: parity with PyTorch %.1e on %d images", name, error, len(example))
    return runner


def _read_choice(path: Path) -> str | None:
    try:
        chosen = json.loads(path.read_text())["engine"] if path.is_file() else None
        return chosen if isinstance(chosen, str) else None
    except (ValueError, KeyError, TypeError, OSError):
        return None  # damaged: measured again


def _fastest(runners: dict[str, Runner], example: torch.Tensor, choice_path: Path) -> Runner:
    """The fastest runner on `example` on this machine; measured once (the choice is cached in `choice_path`,
    and `_candidates` then compiles only that engine)."""
    chosen = _read_choice(choice_path)
    if chosen not in runners or len(runners) > 2:  # else: torch and the engine chosen before
        speed = {}
        for name, runner in runners.items():
            runner(example)  # warm up
            start = time.perf_counter()
            for _ in range(3):
                runner(example)
            speed[name] = 3 * len(example) / (time.perf_counter() - start)
        chosen = max(speed, key=speed.get)
        atomic_write(choice_path, json.dumps({"engine": chosen, "images_per_s": speed}, indent=1))
        log.info("engine: measured img/s %s", ", ".join(f"{k} {v:.0f}" for k, v in speed.items()))
    log.info("engine: %s", chosen)
    return runners[chosen]
