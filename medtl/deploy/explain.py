"""Where the model looks: class activation maps (pytorch-grad-cam) on the backbone spec's target layer.

The map explains the predicted class: for a one-logit binary model the positive class is the logit and
the negative class its negation, so a NORMAL prediction is explained by what argues against PNEUMONIA.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus  # noqa: E402
from pytorch_grad_cam.utils.image import show_cam_on_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from medtl.models.backbones import get_spec  # noqa: E402
from medtl.core.errors import MedtlError  # noqa: E402
from medtl.core.io import atomic_write, make_dir  # noqa: E402
from medtl.core.runfolder import RunFolder  # noqa: E402
from medtl.data.images import READ_ERRORS  # noqa: E402
from medtl.deploy.predictor import Predictor  # noqa: E402
from medtl.evaluation.figures import save_figure  # noqa: E402

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}


class _Signed:
    """Target for a one-logit model: the logit for the positive class, its negation for the negative."""

    def __init__(self, sign: float):
        self.sign = sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.sign * output[..., 0]


def cams(pred: Predictor, batch: torch.Tensor, method: str = "gradcam",
         classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(maps (N, S, S) in 0..1, explained class per image) for a uint8 batch; default: the predicted class."""
    if method not in METHODS:
        raise MedtlError(f"CAM method {method!r}; valid: {', '.join(METHODS)}")
    if classes is None:
        classes = pred.decide(pred.probabilities(batch))
    model = pred.model
    for p in model.parameters():  # a frozen backbone still needs gradients at the target layer
        p.requires_grad_(True)
    layer = model.backbone.get_submodule(get_spec(pred.backbone).cam_layer)
    targets = [_Signed(1.0 if k == 1 else -1.0) if pred.binary else ClassifierOutputTarget(int(k)) for k in classes]
    with METHODS[method](model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=pred.normalized(batch).float(), targets=targets)
    return np.nan_to_num(maps.astype(np.float32)), np.asarray(classes)


def overlay(pixels: torch.Tensor, cam: np.ndarray) -> np.ndarray:
    """RGB uint8 (S, S, 3): the heat map over the image as the model saw it."""
    rgb = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels
    return show_cam_on_image(rgb.permute(1, 2, 0).numpy().astype(np.float32) / 255.0, cam, use_rgb=True)


def mass_outside_center(cam: np.ndarray, margin: float = 0.1) -> float:
    """The fraction of the map's total heat outside the central crop that leaves `margin` on each side."""
    s = cam.shape[-1]
    m = int(round(s * margin))
    total = float(cam.sum())
    return (total - float(cam[m:s - m, m:s - m].sum())) / total if total > 0 else 0.0


def explain_files(pred: Predictor, paths: list[Path], out_dir: Path, method: str = "gradcam") -> tuple[list[Path], dict]:
    """One overlay PNG per readable image (<name>_<class>_<method>.png, names from `overlay_names`: never two
    inputs on one file) in out_dir; returns (written, {path: reason})."""
    make_dir(out_dir)
    written, failed = [], {}
    unique: dict[Path, Path] = {}  # absolute -> as given; a file given twice makes one overlay
    for p in paths:
        unique.setdefault(Path(os.path.abspath(p)), Path(p))
    for path, name in zip(unique.values(), overlay_names(list(unique))):
        try:
            pixels = pred.load(path)
        except READ_ERRORS as exc:
            failed[str(path)] = f"{exc.__class__.__name__}: {exc}"
            continue
        maps, classes = cams(pred, pixels[None], method)
        target = out_dir / f"{name}_{pred.classes[classes[0]]}_{method.replace('+', 'p')}.png"
        atomic_write(target, lambda fh, img=Image.fromarray(overlay(pixels, maps[0])): img.save(fh, format="PNG"))
        written.append(target)
    return written, failed


def overlay_names(paths: list[Path], longest: int = 150) -> list[str]:
    """A distinct base name per input (absolute paths, no repeats): its stem when no other input's stem is the
    same (ignoring case, as macOS and Windows do); else its path below the inputs' common folder, folders joined
    by '__' (patient1/1.dcm -> patient1__1.dcm); a name that still repeats, or is longer than `longest`
    bytes, ends in a short hash of the full path."""
    stems = Counter(p.stem.lower() for p in paths)
    common = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path()
    names = [p.stem if stems[p.stem.lower()] == 1 else "__".join(p.relative_to(common).parts) for p in paths]
    repeated = Counter(n.lower() for n in names)
    return [f"{n.encode()[:longest].decode(errors='ignore')}-{hashlib.sha256(str(p).encode()).hexdigest()[:8]}"
            if repeated[n.lower()] > 1 or len(n.encode()) > longest else n for n, p in zip(names, paths)]


def pick_examples(predictions_csv: Path, positive: str, per_group: int = 4) -> dict[str, list[str]]:
    """Test images by outcome (true/false positives, false negatives), most confident first."""
    with open(predictions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    groups = {"true positive": [], "false positive": [], "false negative": []}
    for r in rows:
        truth, said = r["label"] == positive, r["predicted"] == positive
        name = {(True, True): "true positive", (False, True): "false positive", (True, False): "false negative"}
        if (truth, said) in name:
            groups[name[(truth, said)]].append((float(r[f"prob_{positive}"]), r["path"]))
    return {g: [p for _, p in sorted(v, reverse=g != "false negative")[:per_group]] for g, v in groups.items()}


def report_grid(run_dir: Path, method: str = "gradcam", per_group: int = 4) -> Path:
    """cam_grid.png in the run folder: CAM overlays of test TPs, FPs and FNs (binary runs)."""
    pred = Predictor.from_run(run_dir, engine="torch")  # Grad-CAM needs gradients: PyTorch
    csv_path = RunFolder(run_dir).predictions("test")
    if not pred.binary or not csv_path.is_file():
        raise MedtlError(f"{csv_path} missing or the run is not binary; the grid needs a binary run with a test split")
    groups = pick_examples(csv_path, pred.classes[1], per_group)
    fig, axes = plt.subplots(3, per_group, figsize=(2.6 * per_group, 8.4), squeeze=False)
    for row, (group, paths) in enumerate(groups.items()):
        for col in range(per_group):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(paths):
                pixels = pred.load(paths[col])
                maps, _ = cams(pred, pixels[None], method)
                ax.imshow(overlay(pixels, maps[0]))
                ax.set_title(f"{group}\n{Path(paths[col]).name[:24]}", fontsize=7)
            elif col == 0:
                ax.text(0.5, 0.5, f"no {group}s", ha="center", va="center")
    fig.suptitle(f"{pred.backbone}: {method} on test images (class {pred.classes[1]})")
    target = RunFolder(run_dir).cam_grid
    save_figure(fig, target)
    return target

