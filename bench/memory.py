"""Peak memory and speed of a 224 px fine-tuning step on the CPU; prints a table, writes JSON.

    python bench/memory.py --seconds 20 --repeats 2

Each setting runs in its own process (peak RSS is a process's high-water mark), the settings interleaved and
repeated; the table gives the median images/s and the largest peak. Step: medtl's training step
(`loop._train_epoch` on one batch): EfficientNet-Lite0 (random weights: memory and speed do not depend on
them), batch 32, channels_last, AdamW, class-weighted BCE, medtl's allocator tuning, the threads torch picks.
Settings: full fine-tuning in one pass of 32 (before medtl's micro-batches), in two passes of 16 with one
step (`runtime.micro_batch`, medtl's default on a CPU at 224 px), with the spec's wide stages recomputed in
backward (`runtime.recompute=on`), and partial fine-tuning end to end (the top two stages train). The target
(issue 13): full fine-tuning at <= 3 GiB peak RSS with at most 10 % fewer images/s than the one pass.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

BASE = "full, one pass of 32"
DEFAULT = "full, 2 passes of 16, one step (medtl's default on a CPU)"
SETTINGS = {  # name -> (strategy, images per pass, the spec's `recompute` stages recomputed)
    BASE: ("full", 32, False),
    DEFAULT: ("full", 16, False),
    "full, 2 passes of 16, blocks.1 recomputed": ("full", 16, True),
    "full, one pass of 32, blocks.1 recomputed": ("full", 32, True),
    "partial (top 2 stages), end to end, 2 passes of 16": ("partial", 16, False),
}
TARGET_GIB, TARGET_SLOWDOWN = 3.0, 0.10


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(setting: str, seconds: float) -> dict:
    from medtl.core.config import TrainConfig
    from medtl.models.backbones import build_backbone, get_spec
    from medtl.models.memory import recomputing
    from medtl.models.strategies import Classifier, apply_strategy, make_head, param_groups
    from medtl.training.loop import FitPlan, _train_epoch, make_loss, make_optimizer
    from medtl.training.runtime import tune_allocator

    strategy, micro, recompute = SETTINGS[setting]
    tune_allocator()
    torch.manual_seed(0)
    spec = get_spec("efficientnet_lite0")
    model = Classifier(build_backbone(spec, "none"), make_head(spec.feature_dim, 1, "linear", 0, 0.0))
    apply_strategy(model, spec, strategy)
    model.to(memory_format=torch.channels_last).train()
    opt = make_optimizer(param_groups(model, 1e-3, 1.0), TrainConfig())
    loss_fn = make_loss(True, torch.tensor([1.0, 1.0]))
    x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(32) > 0.5).long()
    before = _rss_gib()

    plan = FitPlan(TrainConfig(), loss_fn, torch.device("cpu"), micro=micro)

    def step():
        _train_epoch(model, [(x, y)], lambda t: t, opt, plan, False)

    with recomputing(model.backbone, spec.recompute if recompute else ()):
        step()
        step()  # warm-up
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            step()
            n += 32
    return {"img_s": n / (time.perf_counter() - start), "peak_rss_gib": _rss_gib(), "rss_before_gib": before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="bench/results/memory_cpu.json")
    ap.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.seconds)))
        return
    raw: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for rep in range(args.repeats):
        for name in SETTINGS:
            done = subprocess.run([sys.executable, __file__, "--child", name, "--seconds", str(args.seconds)],
                                  capture_output=True, text=True, check=True)
            raw[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  run {rep + 1}: {name}: {raw[name][-1]}", flush=True)
    base = statistics.median(r["img_s"] for r in raw[BASE])
    rows = []
    print(f"\n{'setting':58} {'img/s':>7} {'vs one pass':>12} {'peak RSS GiB':>13} {'RSS before':>11}")
    for name, runs in raw.items():
        row = {"setting": name, "img_s": statistics.median(r["img_s"] for r in runs),
               "peak_rss_gib": max(r["peak_rss_gib"] for r in runs),
               "rss_before_gib": max(r["rss_before_gib"] for r in runs), "runs": runs}
        row["speed_vs_one_pass"] = row["img_s"] / base
        rows.append(row)
        print(f"{name:58} {row['img_s']:>7.1f} {row['speed_vs_one_pass']:>12.2f} {row['peak_rss_gib']:>13.2f} "
              f"{row['rss_before_gib']:>11.2f}")
    default = next(r for r in rows if r["setting"] == DEFAULT)
    met = default["peak_rss_gib"] <= TARGET_GIB and default["speed_vs_one_pass"] >= 1 - TARGET_SLOWDOWN
    print(f"\ntarget (full, default): peak <= {TARGET_GIB} GiB and >= {1 - TARGET_SLOWDOWN:.0%} of the speed: "
          f"{'met' if met else 'NOT met'}")
    meta = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "size": 224, "batch": 32, "backbone": "efficientnet_lite0",
            "seconds": args.seconds, "repeats": args.repeats, "target_met": met}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
