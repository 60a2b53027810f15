"""medtl's fine-tuning epoch against the bare training step of the same network, in one run; prints a table,
writes JSON.

    python bench/epoch_vs_step.py --data ../shared/data/chest_xray_kermany_224 --size 128 --per-class 400

Phases, one after the other in this process (same threads, same allocator tuning as `medtl train`):
  bare step        Lite0 full fine-tuning on one batch of random tensors already on the device, channels_last,
                   AdamW, batch 32: forward, backward, step, nothing else (what a training step costs).
  loader           medtl's training loader over the decoded-image cache with the training augmentation, its
                   batches only (decode is cached: what the augmentation and collation cost).
  loader, no aug   the same without augmentation.
  step on batches  the bare step fed the loader's batches, pre-collected (+ medtl's normalisation `prepare`).
  medtl epoch      `training.loop._train_epoch` as `fit` runs it: loader, augmentation, normalisation, step.
  validation pass  `training.loop.predict` over the validation split, as `fit` scores it after every epoch.
  fit's epoch      the training pass plus the validation pass, per training image (what auto's clock times).
The target (issue 36): medtl epoch >= 0.85 x bare step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from medtl.core.config import make_config
from medtl.data.datasets import train_transform
from medtl.models.strategies import build_classifier, param_groups
from medtl.training.fitstate import FitPlan
from medtl.training.loop import _train_epoch, make_loss, make_optimizer, micro_batch, predict
from medtl.training.runtime import tune_allocator
from medtl.training.prepare import prepare

BATCH = 32
REPEATS = 5  # medtl epochs, each followed by a bare-step measure; the medians are compared


def _rate(fn, images: int, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return images * repeats / (time.perf_counter() - start)


def _cpu() -> str:
    """The CPU's model name and its widest vector unit (the step's speed depends on it)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return f"{name or platform.machine()}, {'AVX-512' if ' avx512f' in info else 'AVX2' if ' avx2' in info else 'no AVX2'}"


def _setup(data: str, size: int, per_class: int):
    cfg = make_config(data, strategy="full", image_size=size, batch_size=BATCH, subset_per_class=per_class,
                      weights="package", audit=False)
    p = prepare(cfg, progress=False)
    model = build_classifier(cfg.model, 1, p.in_chans).to(memory_format=torch.channels_last)
    tc = cfg.train
    plan = FitPlan(tc, make_loss(True, None), p.device, p.splits.classes, param_groups(model, tc.lr, 1.0),
                   micro_batch(cfg.runtime, size, p.device), None, None, False)
    return p, model, plan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/chest_xray_kermany_224")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--per-class", type=int, default=400)
    ap.add_argument("--out", default="bench/results/epoch_vs_step_cpu.json")
    args = ap.parse_args()
    tune_allocator()
    p, model, plan = _setup(args.data, args.size, args.per_class)
    opt = make_optimizer(plan.groups, plan.cfg)
    n = len(p.splits.refs["train"])
    model.train()
    x = torch.randn(BATCH, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (BATCH,)).float()

    def step(xb=x, yb=y):
        loss = plan.loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step()  # warm up
    out = {"machine": _cpu(), "threads": torch.get_num_threads(),
           "size": args.size, "batch": BATCH, "train_images": n, "torch": torch.__version__}
    out["bare_step_img_s"] = _rate(step, BATCH, max(8, n // BATCH // 2))
    augmented = p.loader("train", True, BATCH, train_transform(p.size, True))
    plain = p.loader("train", True, BATCH)
    out["loader_img_s"] = _rate(lambda: sum(len(b[1]) for b in augmented), n, 1)
    out["loader_no_aug_img_s"] = _rate(lambda: sum(len(b[1]) for b in plain), n, 1)
    held = [(p.prepare(xb), torch.as_tensor(yb).float()) for xb, yb in augmented]
    start = time.perf_counter()
    for xb, yb in held:
        step(xb.contiguous(memory_format=torch.channels_last), yb)
    out["step_on_batches_img_s"] = n / (time.perf_counter() - start)
    epochs, bare = [], [out["bare_step_img_s"]]
    for _ in range(REPEATS):  # alternated, so that a slower spell of the machine hits both alike
        start = time.perf_counter()
        _train_epoch(model, augmented, p.prepare, opt, plan)
        epochs.append(n / (time.perf_counter() - start))
        bare.append(_rate(step, BATCH, max(8, n // BATCH // 2)))
    out["medtl_epochs_img_s"], out["bare_steps_img_s"] = epochs, bare
    out["bare_step_img_s"], out["medtl_epoch_img_s"] = statistics.median(bare), statistics.median(epochs)
    out["epoch_over_step"] = out["medtl_epoch_img_s"] / out["bare_step_img_s"]
    val = p.loader("val", False, BATCH)
    start = time.perf_counter()
    predict(model, val, p.prepare, p.device)
    seconds = time.perf_counter() - start
    out["val_images"], out["validation_img_s"] = len(p.splits.refs["val"]), len(p.splits.refs["val"]) / seconds
    out["fit_epoch_train_img_s"] = n / (n / out["medtl_epoch_img_s"] + seconds)
    out["fit_epoch_over_step"] = out["fit_epoch_train_img_s"] / out["bare_step_img_s"]
    for k, v in out.items():
        shown = f"{v:.3f}" if isinstance(v, float) else ", ".join(f"{x:.1f}" for x in v) if isinstance(v, list) else v
        print(f"{k:>24}: {shown}")
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("MEDTL_QUIET", "1")
    main()
