"""What preparing a run's data costs: seconds and bytes read per image of `prepare` (discovery, content keys,
carving, the decoded-image store, the audit); prints a table, writes JSON.

    python bench/prepare.py --data ../shared/data/chest_xray_kermany_224

Each phase runs in its own process (imports done before the clock starts), one after the other, on one cache:
  cold        an empty cache: every image read, hashed and decoded into the store at the backbone's size
  warm        the same again: the store is reused, digests and audit facts come from the facts cache
  other-size  a run that also prepares another image size (auto's fine-tuning candidates at a smaller size):
              `prepare`, then `Prepared.at_size(160)` in the same process: the same splits, keys and audit, only
              a new store, decoded from the bytes read once (before issue 25 it was a whole `prepare` again, in
              bench/results/prepare_cpu_before.json: 3.9 reads per image for that second size alone)
Bytes read are the process's read() bytes (/proc/self/io `rchar`) during `prepare`, over the data's image bytes
(after a `prepare` of a tiny generated tree has done the lazy imports):
1.0 is each image file read once; the memory-mapped store is not counted (it is not read()). The target (issue
25): one read per image per run, and another size only a new store over the same splits and keys (the bytes
read are kept up to medtl.data.images.KEPT_BYTES; a larger data set reads past that from disk again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = {"cold": None, "warm": None, "other-size": 160}


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise SystemExit("no rchar in /proc/self/io (Linux only)")


def phase(args) -> dict:
    """One `prepare`, timed and counted, in this process."""
    import torch  # noqa: F401  (imported before the clock, as a run has it)

    from medtl.core.config import RunConfig, apply_overrides
    from medtl.training.prepare import prepare
    os.environ["MEDTL_CACHE"] = args.cache
    cfg = apply_overrides(RunConfig(), {"data.path": args.data})
    _warm_imports(prepare, RunConfig, apply_overrides)
    before, start = rchar(), time.perf_counter()
    p = prepare(cfg, progress=False)
    if PHASES[args.phase]:  # the run's second size, as auto asks for it
        size = PHASES[args.phase]
        p = p.at_size(size, apply_overrides(cfg, {"data.image_size": size}), progress=False)
    seconds, read = time.perf_counter() - start, rchar() - before
    refs = p.splits.all_refs()
    image_bytes = sum(Path(r).stat().st_size for r in refs)
    return {"seconds": seconds, "images": len(refs), "bytes_read": read, "image_bytes": image_bytes,
            "reads_per_image": read / image_bytes, "size": p.size}


def _warm_imports(prepare, RunConfig, apply_overrides) -> None:
    """One `prepare` of a tiny generated tree (its own cache) first, so that the modules it imports lazily are
    not counted as bytes read for the images."""
    import numpy as np
    from PIL import Image
    with tempfile.TemporaryDirectory(prefix="medtl-bench-tiny-") as tiny:
        rng = np.random.default_rng(0)
        for label in ("a", "b"):
            (Path(tiny) / "data" / label).mkdir(parents=True)
            for i in range(12):
                Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(f"{tiny}/data/{label}/{i}.jpeg")
        cache = os.environ["MEDTL_CACHE"]
        os.environ["MEDTL_CACHE"] = f"{tiny}/cache"
        try:
            prepare(apply_overrides(RunConfig(), {"data.path": f"{tiny}/data"}), progress=False)
        finally:
            os.environ["MEDTL_CACHE"] = cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/chest_xray_kermany_224")
    ap.add_argument("--out", default="bench/results/prepare_cpu.json")
    ap.add_argument("--note", default="", help="what else ran on the machine (times are noisy on a shared CPU)")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args)))
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="medtl-bench-") as tmp:
        for name in PHASES:
            cmd = [sys.executable, __file__, "--phase", name, "--data", args.data, "--cache", f"{tmp}/cache"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"phase {name} failed:\n{done.stderr[-4000:]}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{'phase':12} {'size':>5} {'images':>7} {'seconds':>8} {'image MB':>9} {'read MB':>8} {'reads/image':>12}")
    for name, r in results.items():
        print(f"{name:12} {r['size']:5d} {r['images']:7d} {r['seconds']:8.1f} {r['image_bytes'] / 1e6:9.1f} "
              f"{r['bytes_read'] / 1e6:8.1f} {r['reads_per_image']:12.2f}")
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "command": " ".join(sys.argv), "data": args.data, "omp_threads": os.environ.get("OMP_NUM_THREADS"),
            "note": args.note}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
