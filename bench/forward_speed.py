"""Forward (inference) speed of a backbone by batch size and memory format; prints a table, writes JSON.

    python bench/forward_speed.py --backbone efficientnet_lite0 --sizes 224 128 --seconds 4

This is the measurement behind medtl's CPU feature-extraction settings (batch 16, channels_last).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from medtl.models.backbones import build_backbone, get_spec


def images_per_second(model, batch: int, size: int, channels_last: bool, seconds: float) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    with torch.inference_mode():
        model(x)  # warm-up
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model(x)
            n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="bench/results/forward_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_backbone(get_spec(args.backbone), "none").eval()
    rows = []
    print(f"{'size':>5} {'format':>14} {'batch':>6} {'img/s':>8}")
    for size in args.sizes:
        for channels_last in (False, True):
            for batch in args.batches:
                ips = images_per_second(model, batch, size, channels_last, args.seconds)
                fmt = "channels_last" if channels_last else "NCHW"
                rows.append({"size": size, "format": fmt, "batch": batch, "images_per_s": round(ips, 1)})
                print(f"{size:>5} {fmt:>14} {batch:>6} {ips:>8.1f}", flush=True)
    result = {"backbone": args.backbone, "threads": args.threads, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
