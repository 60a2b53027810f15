"""medtl against the plain PyTorch transfer-learning loop, in one run on the same data; prints a table, writes JSON.

    python bench/vs_reference.py --data ../shared/data/chest_xray_kermany_224 --ref-epochs 2

Phases (each in its own process, so its peak resident memory is its own):
  reference-linear  the PyTorch tutorial's "ConvNet as fixed feature extractor": ImageFolder, torchvision
                    transforms, the frozen backbone re-run on every image every epoch, batch 64, SGD + StepLR,
                    best epoch on a val split carved from train
                    as medtl carves it (the set has no official val folder). Runs --ref-epochs epochs; its 20-epoch time is
                    setup + 20 x the measured mean epoch + test (scaled, and the table says so).
  medtl-linear      `medtl train --strategy linear`, 20 epochs, defaults, from an empty cache (cold), then again
                    on the warm cache.
  reference-full    the tutorial's "finetuning the ConvNet" loop, images/s over --full-batches batches of 64.
  medtl-full        medtl's end-to-end training step (decoded-image cache, channels_last), same batches.
It also prints the compute limit: backbone FLOPs per image x images / the machine's measured fp32 matmul FLOP/s.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import Subset
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).parent))
import engines  # noqa: E402  (bench/engines.py: the inference-engine rows)
from medtl.models.backbones import build_backbone, get_spec
from medtl.core.config import DataConfig

BACKBONE, BATCH, SIZE, EPOCHS = "efficientnet_lite0", 64, 224, 20


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (DataLoader workers, if any, are reported apart)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_rss_mib() -> float:
    """The largest peak of a finished child process (a DataLoader worker), in MiB; shares pages with the parent."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def tutorial_loaders(root: Path, workers: int) -> dict:
    spec = get_spec(BACKBONE)
    norm = transforms.Normalize(spec.mean, spec.std)
    tf = {"train": transforms.Compose([transforms.RandomResizedCrop(SIZE), transforms.RandomHorizontalFlip(),
                                       transforms.ToTensor(), norm]),
          "val": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(SIZE), transforms.ToTensor(),
                                     norm])}
    train = datasets.ImageFolder(root / "train", tf["train"])
    # the set has no official val folder: carve one from train as medtl does (stratified, same fraction, seed 0)
    fit_idx, val_idx = train_test_split(np.arange(len(train)), test_size=DataConfig().val_fraction,
                                        stratify=train.targets, random_state=0)
    sets = {"train": Subset(train, fit_idx), "val": Subset(datasets.ImageFolder(root / "train", tf["val"]), val_idx),
            "test": datasets.ImageFolder(root / "test", tf["val"])}
    return {s: torch.utils.data.DataLoader(d, batch_size=BATCH, shuffle=s == "train", num_workers=workers)
            for s, d in sets.items()}


def tutorial_model(frozen: bool) -> nn.Module:
    model = build_backbone(get_spec(BACKBONE), "package")
    if frozen:
        for p in model.parameters():
            p.requires_grad = False
    return nn.Sequential(model, nn.Linear(get_spec(BACKBONE).feature_dim, 2)).to(device())


def reference_linear(args) -> dict:
    """The tutorial's train_model, phases train and val, deep copy of the best val accuracy."""
    start = time.perf_counter()
    loaders, model = tutorial_loaders(Path(args.data), args.workers), tutorial_model(frozen=True)
    crit, opt = nn.CrossEntropyLoss(), torch.optim.SGD(model[1].parameters(), lr=0.001, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    setup, epoch_s, best_acc, best = time.perf_counter() - start, [], -1.0, None
    for _ in range(args.ref_epochs):
        t0 = time.perf_counter()
        for phase in ("train", "val"):
            model.train() if phase == "train" else model.eval()  # as the tutorial: BN stats move in train
            correct = 0
            for x, y in loaders[phase]:
                x, y = x.to(device()), y.to(device())
                opt.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    out = model(x)
                    loss = crit(out, y)
                    if phase == "train":
                        loss.backward()
                        opt.step()
                correct += (out.argmax(1) == y).sum().item()
            if phase == "train":
                sched.step()
            elif correct / len(loaders["val"].dataset) > best_acc:
                best_acc, best = correct / len(loaders["val"].dataset), copy.deepcopy(model.state_dict())
        sync()
        epoch_s.append(time.perf_counter() - t0)
    model.load_state_dict(best)
    t0 = time.perf_counter()
    auc, acc = _test(model, loaders["test"])
    test_s = time.perf_counter() - t0
    per_epoch = float(np.mean(epoch_s))
    return {"epochs_run": args.ref_epochs, "setup_s": setup, "epoch_s": epoch_s, "test_s": test_s,
            "seconds_run": setup + sum(epoch_s) + test_s, "seconds_20": setup + EPOCHS * per_epoch + test_s,
            "scaled": args.ref_epochs != EPOCHS, "test_auc": auc, "test_accuracy": acc, "peak_rss_mib": peak_rss_mib(),
            "worker_peak_rss_mib": worker_rss_mib()}


@torch.inference_mode()
def _test(model: nn.Module, loader) -> tuple[float, float]:
    model.eval()
    probs, labels = [], []
    for x, y in loader:
        probs.append(torch.softmax(model(x.to(device())), 1)[:, 1].float().cpu())
        labels.append(y)
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    return float(roc_auc_score(y, p)), float(((p >= 0.5) == y).mean())


def medtl_linear(args) -> dict:
    from medtl.core.config import RunConfig, apply_overrides
    from medtl.training.run import run
    os.environ["MEDTL_CACHE"] = args.cache
    cfg = apply_overrides(RunConfig(), {"data.path": args.data, "model.backbone": BACKBONE, "model.strategy": "linear",
                                        "train.epochs": EPOCHS, "train.batch_size": BATCH, "out": args.runs})
    start = time.perf_counter()
    run_dir = run(cfg, progress=False)
    seconds = time.perf_counter() - start
    test = json.loads((run_dir / "metrics.json").read_text())["splits"]["test"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"seconds": seconds, "test_auc": test["auc"], "test_accuracy": test["accuracy"],
            "peak_rss_mib": peak_rss_mib(), "run_dir": str(run_dir), "tta": metrics.get("tta", {}).get("applied"),
            "split_sizes": metrics["split_sizes"]}


def _time_steps(model, batches, step, n: int) -> float:
    """Images/s over n batches after one warm-up batch (data loading included)."""
    it = iter(batches)
    step(*next(it))
    sync()
    start, seen = time.perf_counter(), 0
    for x, y in itertools.islice(it, n):
        step(x, y)
        seen += len(y)
    sync()
    if not seen:
        raise SystemExit(f"only one batch of {BATCH}: pass more data or fewer --full-batches")
    return seen / (time.perf_counter() - start)


def reference_full(args) -> dict:
    loaders, model = tutorial_loaders(Path(args.data), args.workers), tutorial_model(frozen=False)
    crit, opt = nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    model.train()

    def step(x, y):
        opt.zero_grad()
        loss = crit(model(x.to(device())), y.to(device()))
        loss.backward()
        opt.step()
    return {"images_per_s": _time_steps(model, loaders["train"], step, args.full_batches),
            "peak_rss_mib": peak_rss_mib(), "worker_peak_rss_mib": worker_rss_mib()}


def medtl_full(args) -> dict:
    """medtl's own full fine-tuning step, as `medtl train --strategy full` runs it."""
    from medtl.core.config import RunConfig, apply_overrides
    from medtl.data.datasets import train_transform
    from medtl.training.prepare import prepare
    from medtl.models.strategies import build_classifier, param_groups
    from medtl.training.loop import autocast, make_loss, make_optimizer
    os.environ["MEDTL_CACHE"] = args.cache
    cfg = apply_overrides(RunConfig(), {"data.path": args.data, "model.backbone": BACKBONE, "model.strategy": "full",
                                        "train.batch_size": BATCH})
    p = prepare(cfg, progress=False)
    model = build_classifier(cfg.model, 1, p.in_chans).to(p.device).to(memory_format=torch.channels_last)
    opt = make_optimizer(param_groups(model, cfg.train.lr, cfg.train.backbone_lr_scale), cfg.train)
    loss_fn = make_loss(True, None)
    model.train()

    def step(x, y):
        with autocast(p.device):
            logits = model(p.prepare(x))
        loss = loss_fn(logits, torch.as_tensor(y).to(p.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loader = p.loader("train", True, BATCH, train_transform(p.size, True))
    return {"images_per_s": _time_steps(model, loader, step, args.full_batches), "peak_rss_mib": peak_rss_mib()}


PHASES = {"reference-linear": reference_linear, "medtl-linear": medtl_linear, "reference-full": reference_full,
          "medtl-full": medtl_full, **engines.PHASES}
REFERENCE_RUNS = (("reference-linear", "reference-linear"), ("medtl-linear-cold", "medtl-linear"),
                  ("medtl-linear-warm", "medtl-linear"), ("reference-full", "reference-full"), ("medtl-full", "medtl-full"))
ENGINE_RUNS = tuple((name, name) for name in engines.PHASES)
LINEAR_RUNS = REFERENCE_RUNS[1:3]  # --only linear: medtl's linear probe, cold then warm (the cache's own rows)


def flops_per_image() -> float:
    from torch.utils.flop_counter import FlopCounterMode
    model = build_backbone(get_spec(BACKBONE), "none").eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.randn(1, 3, SIZE, SIZE))
    return float(counter.get_total_flops())


def matmul_flops(seconds: float = 3.0, n: int = 2048) -> float:
    dev = device()
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    a @ b
    sync()
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    sync()
    return 2 * n ** 3 * count / (time.perf_counter() - start)


def run_phase(args, phase: str, cache: str, runs: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--data", args.data, "--cache", cache, "--runs", runs,
           "--ref-epochs", str(args.ref_epochs), "--full-batches", str(args.full_batches), "--workers", str(args.workers)]
    print(f"running {phase} ...", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"phase {phase} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(r: dict, fwd_flops: float, mm_flops: float) -> dict:
    ref, cold, warm = r["reference-linear"], r["medtl-linear-cold"], r["medtl-linear-warm"]
    sizes = cold["split_sizes"]
    views = 1 + 2  # the clean view and medtl's default 2 cached augmented views of the train split
    images = sizes["train"] * views + sizes.get("val", 0) + sizes["test"]
    linear_limit = fwd_flops * images / mm_flops
    full_limit = mm_flops / (3 * fwd_flops)  # a training step costs about 3 forward passes
    return {"linear_speedup_vs_reference_20": ref["seconds_20"] / cold["seconds"],
            "warm_over_cold": warm["seconds"] / cold["seconds"],
            "auc_medtl_minus_reference": cold["test_auc"] - ref["test_auc"],
            "full_speedup_vs_reference": r["medtl-full"]["images_per_s"] / r["reference-full"]["images_per_s"],
            "linear_compute_limit_s": linear_limit, "linear_fraction_of_limit": linear_limit / cold["seconds"],
            "full_limit_images_per_s": full_limit,
            "full_fraction_of_limit": r["medtl-full"]["images_per_s"] / full_limit}


def print_table(r: dict, s: dict, ref_epochs: int) -> None:
    ref = r["reference-linear"]
    rows = [(f"reference linear, {ref_epochs} epochs run", ref["seconds_run"], None, ref["peak_rss_mib"], ref["test_auc"]),
            (f"reference linear, 20 epochs{' (scaled)' if ref['scaled'] else ''}", ref["seconds_20"], None, None, None),
            ("medtl linear, 20 epochs, cold cache", r["medtl-linear-cold"]["seconds"], None,
             r["medtl-linear-cold"]["peak_rss_mib"], r["medtl-linear-cold"]["test_auc"]),
            ("medtl linear, 20 epochs, warm cache", r["medtl-linear-warm"]["seconds"], None,
             r["medtl-linear-warm"]["peak_rss_mib"], r["medtl-linear-warm"]["test_auc"]),
            ("reference full fine-tuning step", None, r["reference-full"]["images_per_s"],
             r["reference-full"]["peak_rss_mib"], None),
            ("medtl full fine-tuning step", None, r["medtl-full"]["images_per_s"], r["medtl-full"]["peak_rss_mib"], None)]
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    print(f"{'':44} {'seconds':>9} {'img/s':>8} {'peak RSS MiB':>13} {'test AUC':>9}")
    for name, sec, ips, rss, auc in rows:
        print(f"{name:44} {fmt(sec, '9.1f'):>9} {fmt(ips, '8.1f'):>8} {fmt(rss, '13.0f'):>13} {fmt(auc, '9.4f'):>9}")
    print(f"linear: medtl {s['linear_speedup_vs_reference_20']:.1f}x faster than the reference's 20 epochs; "
          f"warm/cold {s['warm_over_cold']:.3f}; AUC difference {s['auc_medtl_minus_reference']:+.4f}")
    print(f"linear compute limit {s['linear_compute_limit_s']:.1f} s; medtl reaches "
          f"{100 * s['linear_fraction_of_limit']:.0f}% of it")
    print(f"full: medtl/reference images/s {s['full_speedup_vs_reference']:.2f}x; limit "
          f"{s['full_limit_images_per_s']:.1f} img/s, medtl reaches {100 * s['full_fraction_of_limit']:.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/chest_xray_kermany_224")
    ap.add_argument("--ref-epochs", type=int, default=2, help="reference epochs actually run (20 = unscaled)")
    ap.add_argument("--full-batches", type=int, default=8)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="the tutorial's num_workers=4")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", choices=("all", "reference", "engines", "linear"), default="all",
                    help="the rows against the reference loop, the inference-engine rows, both, or medtl's linear "
                         "probe cold and warm alone")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--runs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return
    results = {}
    runs = {"all": REFERENCE_RUNS + ENGINE_RUNS, "reference": REFERENCE_RUNS, "engines": ENGINE_RUNS,
            "linear": LINEAR_RUNS}[args.only]
    with tempfile.TemporaryDirectory(prefix="medtl-bench-") as tmp:
        for name, phase in runs:
            results[name] = run_phase(args, phase, f"{tmp}/cache", f"{tmp}/runs")
    fwd, mm = flops_per_image(), matmul_flops()
    summary = {}
    if args.only == "linear":
        cold, warm = results["medtl-linear-cold"], results["medtl-linear-warm"]
        summary = {"warm_over_cold": warm["seconds"] / cold["seconds"]}
        print(f"medtl linear cold {cold['seconds']:.1f} s (tta {cold['tta']}, AUC {cold['test_auc']:.4f}), warm "
              f"{warm['seconds']:.1f} s (tta {warm['tta']}, AUC {warm['test_auc']:.4f}): warm/cold "
              f"{summary['warm_over_cold']:.3f}")
    elif args.only != "engines":
        summary.update(summarize(results, fwd, mm))
        print_table(results, summary, args.ref_epochs)
    if args.only in ("all", "engines"):
        summary["engines"] = engines.summarize(results, fwd, mm)
        engines.print_table(results, summary["engines"])
    dev = device()
    suffix = {"all": "", "reference": "", "engines": "_engines", "linear": "_linear"}[args.only]
    out = Path(args.out or f"bench/results/vs_reference{suffix}_{dev.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "backbone": BACKBONE, "batch": BATCH,
            "size": SIZE, "ref_epochs": args.ref_epochs, "only": args.only, "workers": args.workers,
            "forward_flops_per_image": fwd, "matmul_flops_per_s": mm, "command": " ".join(sys.argv)}
    out.write_text(json.dumps({"meta": meta, "results": results, "summary": summary}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
