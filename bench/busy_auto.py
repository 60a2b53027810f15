"""The main command on a busy machine: `medtl train DATA` (strategy auto, its 15-minute budget) while another
process keeps two threads busy with matrix products for the whole run; prints what auto tried, writes JSON.

    python bench/busy_auto.py --data ../shared/data/chest_xray_kermany_224

The question (issue 25): does auto still fine-tune when every step is slower than on a quiet machine, instead
of skipping every fine-tuning candidate after one timed step? The load is torch matmuls of 1024 x 1024 on two
threads, in its own process, started before the run and stopped after it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOAD = ("import torch, time\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nn = 0\nstart = time.time()\n"
        "while True:\n    a @ a\n    n += 1\n    if n % 200 == 0:\n        print(n / (time.time() - start), flush=True)\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/chest_xray_kermany_224")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/busy_auto_cpu.json")
    ap.add_argument("--runs", default=None, help="where the run folder is kept (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medtl-busy-") as tmp:
        tmp = args.runs or tmp
        load = subprocess.Popen([sys.executable, "-c", LOAD], stdout=subprocess.PIPE, text=True)
        try:
            start = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "medtl", "train", args.data, "--seed", str(args.seed),
                                   "--output-dir", tmp, "--name", "busy", "-q"], capture_output=True, text=True)
            wall = time.monotonic() - start
        finally:
            load.terminate()
            load_rate = [float(x) for x in load.communicate()[0].split()]
        if done.returncode:
            raise SystemExit(f"medtl train failed:\n{done.stderr[-4000:]}")
        run = Path(tmp) / "busy"
        record = json.loads((run / "auto.json").read_text())
        test = json.loads((run / "metrics.json").read_text())["splits"]["test"]
    result = {"wall_s": wall, "budget_s": record["budget_seconds"], "chosen": record["chosen"], "candidates": record["candidates"],
              "rule": record["rule"], "test_auc": test["auc"], "test_accuracy": test["accuracy"],
              "load_matmuls_per_s": load_rate[-1] if load_rate else None}
    for c in record["candidates"]:  # a skipped candidate's AUC is NaN, read back from JSON as None
        auc = "n/a" if c["val_auc"] is None else f"{c['val_auc']:.4f}"
        print(f"{c['strategy']:8} {c['image_size']:4d} px  epochs {c['epochs_run']}/{c['epochs']}  val AUC "
              f"{auc:>6}  {c['seconds']:6.0f} s  {c['note']}")
    print(f"chosen {record['chosen']}; wall {wall / 60:.1f} min; test AUC {test['auc']:.4f}, accuracy "
          f"{test['accuracy']:.3f}; the load ran {result['load_matmuls_per_s']} matmuls/s at the end")
    meta = {"cpus": os.cpu_count(), "command": " ".join(sys.argv), "data": args.data, "seed": args.seed}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "result": result}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
