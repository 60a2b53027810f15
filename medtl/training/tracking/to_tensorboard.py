"""TensorBoard as a tracker: event files in `<DIR>/<run name>` (default DIR: `<out>/tensorboard`, beside the
run folders): each fit's epochs as scalars under its label (auto's candidates apart: "full 128 px/val_auc"),
the final metrics with their intervals under "final/", the figures as images, the resolved config and the
card as text. `tensorboard --logdir <DIR>` shows them; nothing is sent anywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from medtl.core.config import RunConfig, to_dict
from medtl.core.runfolder import RunFolder
from medtl.evaluation.records import RunMetrics
from medtl.training.fitstate import FitState
from medtl.training.tracking.base import Tracker, epoch_values, figures, final_values


class TensorBoardTracker(Tracker):
    kind = "tensorboard"

    def __init__(self, target: str, cfg: RunConfig, folder: RunFolder, before: dict, reopen: bool = False,
                 parent: str | None = None):
        """`parent` is unused: a study's points are nested by their folder (`<DIR>/<run name>` in one DIR)."""
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(target) if reopen else (Path(target) if target else folder.path.parent / "tensorboard") \
            / folder.path.name
        self.writer = SummaryWriter(log_dir=str(self.dir))
        if not reopen and not before:
            config = yaml.safe_dump(to_dict(cfg), sort_keys=False)
            self.writer.add_text("config", "\n".join("    " + line for line in config.splitlines()))
        self.label = "fit"

    def record(self) -> dict:
        return {"dir": str(self.dir.resolve())}

    def before_fit(self, plan, state: FitState) -> None:
        self.label = plan.label or "fit"

    def after_epoch(self, state: FitState) -> None:
        for key, value in epoch_values(state).items():
            self.writer.add_scalar(f"{self.label}/{key}", value, state.epoch)
        self.writer.flush()

    def after_run(self, folder: RunFolder, metrics: RunMetrics) -> None:
        for key, value in final_values(metrics).items():
            self.writer.add_scalar(f"final/{key}", value, 0)
        for path in figures(folder):
            with Image.open(path) as im:
                self.writer.add_image(f"figures/{path.stem}", np.asarray(im.convert("RGB")), 0, dataformats="HWC")
        self.writer.add_text("run_folder", str(folder.path.resolve()))
        self.writer.flush()

    def add_files(self, paths: list[Path], under: str) -> None:
        for path in paths:
            if path.suffix == ".md":
                self.writer.add_text(f"{under}/{path.stem}", path.read_text(encoding="utf-8"))
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()
