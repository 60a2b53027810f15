"""Nothing leaves the machine: on a fresh home, a train that loads and times both engines (auto) and a predict on
each engine write no identifier outside the cache and run folders, and never try a non-loopback connection."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medtl.models import engine as eng

ENGINES = [e for e in ("onnxruntime", "openvino") if eng.installed(e)]
# what would switch a telemetry client off by itself, so that the test would pass without medtl's doing
TELEMETRY_SWITCHES = ("CI", "TF_BUILD", "JENKINS_URL", "ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "XDG_CONFIG_HOME",
                      "XDG_DATA_HOME", "MPLCONFIGDIR")
# matplotlib's font list (no identifier: the fonts it found) is the one thing written under the home
MATPLOTLIB = (".cache/matplotlib/", ".config/matplotlib")
TRAIN = """
import medtl.models.engine as engine
engine.EXPORT_WORTH_S = 0  # a tiny pass: export anyway, so auto loads and times every installed engine
import medtl
medtl.train({data!r}, out={out!r}, name="r", backbone="resnet18", weights="none", strategy="linear", epochs=2,
            image_size=32, batch_size=16, track={track!r})
"""
TRACKERS = [k for k in ("mlflow", "tensorboard") if __import__("importlib").util.find_spec(k)]  # the track extra


def strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    done = subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect", "-o", os.devnull, "true"],
                          capture_output=True, timeout=60)
    return done.returncode == 0  # ptrace may be forbidden in a container


def outside_connects(trace: Path) -> list[str]:
    """The connect() calls of a strace log that are neither a local socket nor to the loopback address."""
    calls = [line for line in trace.read_text().splitlines() if "connect(" in line]
    local = re.compile(r'AF_UNIX|AF_UNSPEC|inet_addr\("127\.|inet_pton\(AF_INET6, "(::1|::ffff:127\.)')
    return [line for line in calls if not local.search(line)]


def run(cmd: list[str], env: dict, trace: Path | None) -> subprocess.CompletedProcess:
    if trace is not None:
        cmd = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
@pytest.mark.skipif(len(ENGINES) < 2, reason="needs both onnxruntime and openvino installed")
def test_no_telemetry_files_and_no_outside_connection(image_tree, tmp_path):
    home, cache, out = tmp_path / "home", tmp_path / "cache", tmp_path / "runs"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY_SWITCHES}
    env.update(HOME=str(home), MEDTL_CACHE=str(cache))
    traced = strace_works()
    traces = []

    def trace(name: str) -> Path | None:
        traces.append(tmp_path / f"{name}.strace")
        return traces[-1] if traced else None

    done = run([sys.executable, "-c", TRAIN.format(data=str(image_tree), out=str(out), track=TRACKERS)], env,
               trace("train"))
    assert done.returncode == 0, done.stderr
    assert all((out / kind).is_dir() for kind in TRACKERS)  # the trackers logged, beside the run folders
    [choice] = (cache / "engines").glob("*.choice.json")  # auto loaded and timed both engines
    assert set(json.loads(choice.read_text())["images_per_s"]) == {"torch", "onnxruntime", "openvino"}
    for engine in ENGINES:
        done = run([sys.executable, "-m", "medtl", "predict", str(out / "r"), str(image_tree / "test"), "--engine",
                    engine, "--output", str(tmp_path / f"{engine}.csv")], env, trace(engine))
        assert done.returncode == 0, done.stderr
        assert f"engine {engine}: parity with PyTorch" in done.stderr  # the engine ran, not a fallback
    assert not (home / "intel").exists()  # OpenVINO's client id (openvino_ga_cid)
    assert not (home / ".cache" / "Microsoft").exists()  # ONNX Runtime's deviceid and queued-events database
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert [p for p in written if not p.startswith(MATPLOTLIB)] == []
    if not traced:
        pytest.skip("strace is absent or not allowed here: the files were checked, connect() calls were not")
    for path in traces:
        assert path.is_file() and outside_connects(path) == [], path.name


LOADED_FIRST = """
import json, sys
import openvino  # the caller's own import, before medtl: its telemetry is on
from pathlib import Path
from medtl.models import engine
print(json.dumps({"candidates": engine._candidates("auto", Path("none.json")), "silent": engine.silent("openvino")}))
"""
LOADED_BY_MEDTL = """
import json, sys
from medtl.models import engine
engine.load_openvino().Core()
engine.load_onnxruntime().get_available_providers()
print(json.dumps({"telemetry": sorted(m for m in sys.modules if m.startswith("openvino_telemetry")),
                  "candidates": engine._candidates("auto", __import__("pathlib").Path("none.json"))}))
"""


@pytest.mark.slow
@pytest.mark.skipif(len(ENGINES) < 2, reason="needs both onnxruntime and openvino installed")
def test_engines_load_without_telemetry_and_auto_skips_one_loaded_with_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY_SWITCHES}
    for script, name in ((LOADED_BY_MEDTL, "medtl"), (LOADED_FIRST, "caller")):
        home = tmp_path / name
        home.mkdir()
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              env={**env, "HOME": str(home)}, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.splitlines()[-1])
        if name == "medtl":
            assert out == {"telemetry": [], "candidates": ["openvino", "onnxruntime"]}
            assert list(home.rglob("*")) == []  # neither engine wrote a thing under the home
        else:
            assert out == {"candidates": ["onnxruntime"], "silent": False}  # auto never picks the loud one
