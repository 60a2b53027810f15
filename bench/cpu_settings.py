"""CPU settings for medtl's hot loops: memory allocator and torch.compile; prints a table, writes JSON.

    python bench/cpu_settings.py --seconds 6

Each setting runs in its own process (an allocator is chosen at process start, by LD_PRELOAD or glibc's
environment). Measured: Lite0 forward images/s (feature extraction: batch 16, channels_last, inference mode) and
training-step images/s (full fine-tuning: batch 32, channels_last, AdamW), both at 224 px.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

LIB = "/usr/lib/x86_64-linux-gnu"
SETTINGS = {
    "glibc default": {},
    "glibc MALLOC_MMAP_MAX_=0, no trim": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "-1"},
    "jemalloc": {"LD_PRELOAD": f"{LIB}/libjemalloc.so.2"},
    "tcmalloc": {"LD_PRELOAD": f"{LIB}/libtcmalloc_minimal.so.4"},
    "glibc + mallopt at run time (medtl's default)": {"MEDTL_BENCH_MALLOPT": "1"},
}


def measure(seconds: float, compile_: bool) -> dict:
    from medtl.models.backbones import build_backbone, get_spec
    from medtl.models.strategies import Classifier, make_head

    if os.environ.get("MEDTL_BENCH_MALLOPT"):
        from medtl.training.runtime import tune_allocator
        assert tune_allocator()
    torch.manual_seed(0)
    net = build_backbone(get_spec("efficientnet_lite0"), "none").to(memory_format=torch.channels_last)
    model = Classifier(net, make_head(1280, 1, "linear", 0, 0.0))
    run = torch.compile(model) if compile_ else model
    out = {}
    x = torch.randn(16, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.inference_mode():
        out["forward_b16_img_s"] = _rate(lambda: run(x), 16, seconds)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    xb, y = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last), torch.rand(32)

    def step():
        loss = torch.nn.functional.binary_cross_entropy_with_logits(run(xb)[:, 0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out["train_b32_img_s"] = _rate(step, 32, seconds)
    times = os.times()
    out["system_cpu_share"] = times.system / max(times.user + times.system, 1e-9)
    return out


def _rate(fn, batch: int, seconds: float) -> float:
    fn()
    fn()  # warm-up (and compilation)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn()
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--out", default="bench/results/cpu_settings.json")
    ap.add_argument("--child", choices=["eager", "compile"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.seconds, args.child == "compile")))
        return
    plan = [(name, env, "eager") for name, env in SETTINGS.items()] + [
        ("glibc default", {}, "compile"), ("glibc + mallopt at run time (medtl's default)", SETTINGS[
            "glibc + mallopt at run time (medtl's default)"], "compile")]
    rows = []
    print(f"{'allocator':46} {'mode':8} {'forward b16 img/s':>18} {'train b32 img/s':>16} {'sys CPU %':>10}")
    for name, env, mode in plan:
        missing = [v for k, v in env.items() if k == "LD_PRELOAD" and not Path(v).exists()]
        if missing:
            print(f"{name:46} {mode:8} skipped: {missing[0]} absent (apt-get install libjemalloc2 "
                  "libtcmalloc-minimal4)")
            continue
        done = subprocess.run([sys.executable, __file__, "--child", mode, "--seconds", str(args.seconds)],
                              env={**os.environ, **env}, capture_output=True, text=True, check=True)
        r = {"allocator": name, "mode": mode, **json.loads(done.stdout.strip().splitlines()[-1])}
        rows.append(r)
        print(f"{name:46} {mode:8} {r['forward_b16_img_s']:>18.1f} {r['train_b32_img_s']:>16.1f} "
              f"{100 * r['system_cpu_share']:>10.0f}", flush=True)
    meta = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "size": 224, "backbone": "efficientnet_lite0"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
