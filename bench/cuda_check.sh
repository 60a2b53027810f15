#!/bin/bash
# medtl's CUDA paths on a lent GPU, as run on 2026-11-26 (docs/results.md#cuda-paths-on-a-lent-gpu-2026-11-26).
# Three device calls: this file is the three scripts in order, their common setup written once.
# Data: .gpudata/kermany = a fixed subset of
# chest_xray_kermany_224 (random.Random(0) shuffle of the sorted names; train 1,000 per class, all of test);
# .whl = the wheels the GPU image lacks (pydicom, pylibjpeg*, imagehash, pywavelets, efficientnet-lite0).
set -u
export PYTHONUNBUFFERED=1 MEDTL_CACHE=/tmp/medtl_cache
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site
D=.gpudata/kermany R=/tmp/runs
step() { echo; echo "=== $1 ($(date +%T))"; }
nvidia-smi -L
python3 -c "import torch,torchvision,sys; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.cuda.get_device_name(), torch.cuda.is_bf16_supported())"
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 1000 > $OUT/gpu_samples.csv &
step "1 full fine-tuning, bf16 autocast, 224 px, 3 epochs"
timeout 120 python3 -m medtl train $D --strategy full --epochs 3 -o $R --name full_amp -q 2>&1 | tail -25
step "2 defaults (auto) with --budget 90s"
timeout 120 python3 -m medtl train $D --budget 90s -o $R --name auto -q 2>&1 | tail -25
step "3 torchrun, 1 process"
timeout 60 torchrun --standalone --nproc-per-node 1 -m medtl train $D --strategy full --epochs 1 -o $R --name ddp1 -q 2>&1 | tail -15
step "4 torchrun, 2 processes on 1 GPU (expect the one-line refusal)"
timeout 45 torchrun --standalone --nproc-per-node 2 -m medtl train $D --strategy full --epochs 1 -o $R --name ddp2 -q 2>&1 | grep -i "medtl\|error\|LOCAL_RANK" | head -8
step "5 resume on CUDA: SIGINT after 25 s, then --resume"
timeout -s INT 20 python3 -m medtl train $D --strategy full --epochs 6 -o $R --name resume -q 2>&1 | tail -5
timeout 60 python3 -m medtl train --resume $R/resume -q 2>&1 | tail -8
step "6 predict and export from the GPU-trained run"
timeout 40 python3 -m medtl predict $R/full_amp $D/test/NORMAL --output /tmp/pred.csv 2>&1 | tail -3; head -3 /tmp/pred.csv; wc -l /tmp/pred.csv
timeout 60 python3 -m medtl export $R/full_amp --format onnx --image $D/test/NORMAL --output /tmp/m.onnx 2>&1 | tail -4; ls -la /tmp/m.onnx
kill %1
for r in full_amp auto ddp1 resume; do cp $R/$r/metrics.json $OUT/${r}_metrics.json 2>/dev/null; done
ls $R/*

# ---- second call
# (this call began with the same setup lines as the first)
echo "=== 1 full, recompute on, label smoothing 0.1, 3 epochs ($(date +%T))"
timeout 120 python3 -m medtl train $D --strategy full --epochs 3 --set runtime.recompute=on --set train.label_smoothing=0.1 -o $R --name rc 2>&1 | grep -i "recomput\|epoch\|val:\|test:\|error" | tail -12
cp $R/rc/metrics.json $OUT/rc_metrics.json
echo "=== 2 step speed and GPU memory, recompute off/on ($(date +%T))"
timeout 150 python3 - <<'PY'
import time, torch
from medtl.core.config import TrainConfig
from medtl.models.backbones import build_backbone, get_spec
from medtl.models.memory import recomputing
from medtl.models.strategies import Classifier, make_head, param_groups
from medtl.training.loop import autocast, make_loss, make_optimizer
dev = torch.device("cuda"); spec = get_spec("efficientnet_lite0")
for batch in (32, 128):
    for names in ((), spec.recompute):
        torch.manual_seed(0)
        m = Classifier(build_backbone(spec, "none"), make_head(1280, 1, "linear", 0, 0.0)).to(dev).to(memory_format=torch.channels_last).train()
        opt = make_optimizer(param_groups(m, 1e-3, 1.0), TrainConfig()); loss_fn = make_loss(True, None)
        x = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last); y = (torch.rand(batch, device=dev) > .5).long()
        torch.cuda.reset_peak_memory_stats()
        with recomputing(m.backbone, names):
            def step():
                with autocast(dev): out = m(x)
                loss = loss_fn(out, y); opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
            for _ in range(5): step()
            torch.cuda.synchronize(); t = time.perf_counter(); n = 0
            while time.perf_counter() - t < 8: step(); n += batch
            torch.cuda.synchronize()
        print(f"batch {batch} recompute {names or 'none'}: {n / (time.perf_counter() - t):.0f} img/s, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
        del m, opt
PY

# ---- third call
# (this call began with the same setup lines as the first)
echo "=== 1 medtl train D --budget 60s --set eval.tta=hflip ($(date +%T))"
timeout 150 python3 -m medtl train $D --budget 60s --set eval.tta=hflip -o $R --name tta 2>&1 | grep -i "auto: chose\|tta\|test:\|error\|Traceback" | cut -c1-300 | tail -8
cp $R/tta/metrics.json $OUT/tta_metrics.json
echo "=== 2 predict the test images again and compare with the run's own ($(date +%T))"
timeout 60 python3 -m medtl predict $R/tta $D/test --output /tmp/pred.csv -q 2>&1 | tail -2
python3 - <<'PY'
import csv
key = lambda path: "/".join(path.split("/")[-2:])  # the run records absolute paths, predict the given ones
a = {key(r["path"]): float(r["prob_PNEUMONIA"]) for r in csv.DictReader(open("/tmp/pred.csv"))}
b = {key(r["path"]): float(r["prob_PNEUMONIA"]) for r in csv.DictReader(open("/tmp/runs/tta/predictions_test.csv"))}
print("images", len(b), "max |predict - run| =", max(abs(a[k] - b[k]) for k in b))
PY
echo "=== 3 export ($(date +%T))"
timeout 90 python3 -m medtl export $R/tta --format onnx --image $D/test/NORMAL --output /tmp/m.onnx 2>&1 | tail -1
