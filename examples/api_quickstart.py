"""medtl from Python: train a small run on real chest X-rays, read its metrics, predict new images, export.

    python examples/api_quickstart.py [DATA] [OUT]

DATA defaults to the Kermany chest X-ray folder in ../shared/data (train/ and test/ with NORMAL and
PNEUMONIA inside); OUT (default: a temporary folder) receives the run folder and the exported model.
Offline, about a minute on a 2-core CPU: the linear probe on the shipped EfficientNet-Lite0 ImageNet weights,
64 px, 40 training images per class (the validation and test splits are used whole).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import medtl

shared = Path(os.environ.get("MEDTL_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
data = Path(sys.argv[1]) if len(sys.argv) > 1 else shared / "chest_xray_kermany_224"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="medtl-quickstart-"))

# 1. train: keyword arguments are flag names (epochs, image_size, seed, ...) or config fields (subset_per_class)
run = medtl.train(data, strategy="linear", epochs=5, image_size=64, subset_per_class=40, out=out, name="quickstart")
test = run.metrics["splits"]["test"]
print(f"{run.path}: test accuracy {test['accuracy']:.3f}, AUC {test['auc']:.3f}, "
      f"threshold {run.metrics['threshold']:.3f} (chosen on validation)")

# 2. load it again later, from its folder alone, and score new images (a file, a list, or folders)
run = medtl.Run.load(out / "quickstart")
new_images = sorted((data / "test" / "PNEUMONIA").iterdir())[:4]
rows = run.predict(new_images)
for row in rows:
    print(f"{Path(row['path']).name}: {row['predicted']} (P(PNEUMONIA) = {row['prob_PNEUMONIA']:.3f})")
rows.to_csv(out / "predictions.csv")

# 3. export to ONNX; the file is kept only when its outputs match PyTorch on these real images
path, diff = run.export("onnx", images=new_images)
print(f"exported {path} (max |ONNX - PyTorch| = {diff:.1e})")
