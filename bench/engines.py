"""The inference-engine rows of bench/vs_reference.py (each phase in its own process, as the others).

features-<engine>   Lite0 at 224 px, batch 16, on 320 real training images: img/s of the frozen backbone
                    on PyTorch eager, ONNX Runtime and OpenVINO (medtl's runners, parity checked), from uint8
                    pixels (normalisation inside the network, as in medtl's passes).
linear-<engine>     `medtl train DATA --strategy linear` from an empty cache (decoding, export and compile
                    included), with runtime.engine=torch and =auto.
predict-plain       the plain PyTorch loop a user writes: a DataLoader over the test files (PIL, Resize,
                    ToTensor, Normalize), batch 32, the run's model in eager mode.
predict-<engine>    `medtl predict` (Run.predict) on the same files, same batch, engine torch, then auto with
                    the compiled model in the cache (as after a first `--engine openvino`, or a server's start).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

BACKBONE, SIZE, BATCH = "efficientnet_lite0", 224, 16


def _test_files(data: str) -> list[Path]:
    from medtl.data.layout import IMAGE_SUFFIXES
    return sorted(p for p in (Path(data) / "test").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def features(args, engine: str) -> dict:
    from medtl.data.images import Decoding, decode
    from medtl.data.preprocess import Preprocess
    from medtl.models.backbones import build_backbone, get_spec
    from medtl.models.engine import OnPixels, TorchRunner, frozen_runner, parity_error
    from medtl.training.runtime import tune_allocator
    tune_allocator()
    spec = get_spec(BACKBONE)
    pre = Preprocess(SIZE, 3, spec.mean, spec.std, Decoding(fast_jpeg=True))
    files = sorted(p for p in (Path(args.data) / "train").rglob("*.jp*g"))[::7][:320]
    pixels = torch.stack([torch.from_numpy(decode(str(f), SIZE, pre.decoding)).expand(3, SIZE, SIZE) for f in files])
    batches = [pixels[i:i + BATCH].contiguous() for i in range(0, len(pixels), BATCH)]  # uint8, as medtl's passes
    net = OnPixels(build_backbone(spec, "package").to(memory_format=torch.channels_last), *pre.stats()).eval()
    runner = frozen_runner(net, batches[0], engine, Path(args.cache)) if engine != "torch" else TorchRunner(net)
    if runner.name != engine:
        raise SystemExit(f"engine {engine} fell back to {runner.name}")
    runner(batches[0])
    start = time.perf_counter()
    outs = [runner(b) for b in batches]
    seconds = time.perf_counter() - start
    ref = TorchRunner(net)
    return {"images_per_s": len(pixels) / seconds, "images": len(pixels),
            "parity": max(parity_error(o, ref(b)) for o, b in zip(outs[:3], batches[:3]))}


def linear(args, engine: str) -> dict:
    from medtl.core.config import RunConfig, apply_overrides
    from medtl.training.run import run
    os.environ["MEDTL_CACHE"] = args.cache + f"-{engine}"  # its own empty cache
    cfg = apply_overrides(RunConfig(), {"data.path": args.data, "model.backbone": BACKBONE, "model.strategy": "linear",
                                        "runtime.engine": engine, "out": args.runs, "name": f"linear-{engine}"})
    start = time.perf_counter()
    run_dir = run(cfg, progress=False)
    seconds = time.perf_counter() - start
    test = json.loads((run_dir / "metrics.json").read_text())["splits"]["test"]
    return {"seconds": seconds, "test_auc": test["auc"], "test_accuracy": test["accuracy"], "run_dir": str(run_dir)}


def predict_plain(args) -> dict:
    from PIL import Image
    from torchvision import transforms

    from medtl.models.checkpoint import Checkpoint
    ckpt = Checkpoint.load(Path(args.runs) / "linear-torch" / "checkpoint.pt")
    model = ckpt.build().eval()
    tf = transforms.Compose([transforms.Resize((ckpt.preprocess.size,) * 2), transforms.ToTensor(),
                             transforms.Normalize(ckpt.preprocess.mean, ckpt.preprocess.std)])

    class Files(torch.utils.data.Dataset):
        def __init__(self, files):
            self.files = files

        def __len__(self):
            return len(self.files)

        def __getitem__(self, i):
            return tf(Image.open(self.files[i]).convert("RGB"))
    files = _test_files(args.data)
    start = time.perf_counter()
    probs = []
    with torch.inference_mode():
        for x in torch.utils.data.DataLoader(Files(files), batch_size=32):
            probs.append(torch.sigmoid(model(x)[:, 0]))
    seconds = time.perf_counter() - start
    return {"images_per_s": len(files) / seconds, "images": len(files), "mean_p": float(torch.cat(probs).mean())}


def predict(args, engine: str) -> dict:
    import medtl
    os.environ["MEDTL_CACHE"] = args.cache + "-predict"
    run = medtl.Run.load(Path(args.runs) / "linear-torch")
    files = _test_files(args.data)
    if engine != "torch":  # the compiled model in the cache first, as after an earlier predict or a server start
        run.predict(files[:32], engine="openvino")
        run.predict(files[:32], engine=engine)
    start = time.perf_counter()
    rows = run.predict(files, batch_size=32, engine=engine)
    seconds = time.perf_counter() - start
    p = np.array([r["prob_" + run.predictor.classes[1]] for r in rows])
    return {"images_per_s": len(files) / seconds, "images": len(files), "engine_used": run.predictor.runner.name,
            "mean_p": float(p.mean())}


PHASES = {"features-torch": lambda a: features(a, "torch"), "features-onnxruntime": lambda a: features(a, "onnxruntime"),
          "features-openvino": lambda a: features(a, "openvino"),
          "linear-torch": lambda a: linear(a, "torch"), "linear-auto": lambda a: linear(a, "auto"),
          "predict-plain": predict_plain, "predict-torch": lambda a: predict(a, "torch"),
          "predict-auto": lambda a: predict(a, "auto")}


def summarize(r: dict, fwd_flops: float, mm_flops: float) -> dict:
    limit = mm_flops / fwd_flops
    feats = {e: r[f"features-{e}"]["images_per_s"] for e in ("torch", "onnxruntime", "openvino")}
    return {"features_images_per_s": feats, "features_limit_images_per_s": limit,
            "features_best_fraction_of_limit": max(feats.values()) / limit,
            "linear_cold_torch_over_auto": r["linear-torch"]["seconds"] / r["linear-auto"]["seconds"],
            "linear_auc_difference": r["linear-auto"]["test_auc"] - r["linear-torch"]["test_auc"],
            "predict_auto_over_plain": r["predict-auto"]["images_per_s"] / r["predict-plain"]["images_per_s"],
            "predict_torch_over_plain": r["predict-torch"]["images_per_s"] / r["predict-plain"]["images_per_s"]}


def print_table(r: dict, s: dict) -> None:
    print(f"{'engine rows (Lite0, 224 px)':52} {'seconds':>8} {'img/s':>8} {'test AUC':>9}")
    for e in ("torch", "onnxruntime", "openvino"):
        print(f"{'features, batch 16, ' + e:52} {'':>8} {r['features-' + e]['images_per_s']:8.1f}")
    for e in ("torch", "auto"):
        row = r["linear-" + e]
        print(f"{'medtl train --strategy linear, cold, engine ' + e:52} {row['seconds']:8.1f} {'':>8} "
              f"{row['test_auc']:9.4f}")
    for name in ("predict-plain", "predict-torch", "predict-auto"):
        label = {"predict-plain": "plain PyTorch loop, 624 test images",
                 "predict-torch": "medtl predict, engine torch",
                 "predict-auto": f"medtl predict, engine auto ({r['predict-auto']['engine_used']}, warm)"}[name]
        print(f"{label:52} {'':>8} {r[name]['images_per_s']:8.1f}")
    print(f"features: best {100 * s['features_best_fraction_of_limit']:.0f}% of the limit "
          f"{s['features_limit_images_per_s']:.0f} img/s; linear cold torch/auto {s['linear_cold_torch_over_auto']:.2f}x "
          f"(AUC {s['linear_auc_difference']:+.4f}); predict auto/plain {s['predict_auto_over_plain']:.2f}x, "
          f"torch/plain {s['predict_torch_over_plain']:.2f}x")
