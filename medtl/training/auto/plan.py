"""strategy=auto's plan: the image size and epochs of each fine-tuning candidate, from measured seconds.

The first fine-tuning candidate's plan starts from one timed step (`step_seconds`); from then on every epoch of
every candidate measures seconds per training image (its validation pass included) at its size, and the plans
of the candidates still to run are recomputed from that measure, scaled by the image area between sizes (a
candidate of another fine-tuning strategy from it by the ratio of their records' `step_cost`). A busy machine then gets plans for the
speed it actually has, a quiet one the epochs it can afford.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch

from medtl.core.strategies import get_strategy
from medtl.models.memory import recomputed, recomputing
from medtl.models.strategies import build_classifier
from medtl.training.loop import chunk_count, micro_batch
from medtl.training.prepared import Prepared

MIN_EPOCHS = 4  # a fine-tuning candidate runs at a size where at least this many epochs fit its share
FT_BATCH = 32  # fine-tuning batch (memory: full at 224 px, batch 64, reached 8.4 GB on a CPU)
SMALLER = (192, 160, 128, 112, 96)  # the sizes a candidate may shrink to, largest first


@dataclass
class Costs:
    """What a candidate costs here, in seconds: per training image and epoch by strategy, measured
    ({strategy: [seconds, at size]}), and their setup (LP-FT's probe, partial's cached activations, another
    size's store), else from `step`, one full FT_BATCH step timed at the run's size `native`."""

    native: int
    n_train: int
    n_eval: int
    views: int  # augmented feature views cached for partial
    step: float = math.nan
    per_image: dict[str, list[float]] = field(default_factory=dict)
    setup: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def of(cls, p: Prepared, step: float = math.nan) -> "Costs":
        n_eval = sum(len(r) for s, r in p.splits.refs.items() if s != "train")
        views = p.cfg.cache.feature_views if p.cfg.data.augment else 0
        return cls(p.size, len(p.splits.refs["train"]), n_eval, views, step)

    def epoch(self, strategy: str, size: int) -> tuple[float, str]:
        """(seconds of one epoch at `size`, where the figure comes from)."""
        if strategy in self.per_image:
            seconds, at = self.per_image[strategy]
            return self.n_train * seconds * (size / at) ** 2, "measured"
        cost = get_strategy(strategy).step_cost
        for other, (seconds, at) in self.per_image.items():  # another fine-tuning candidate's epochs
            ratio = cost / get_strategy(other).step_cost
            return self.n_train * seconds * ratio * (size / at) ** 2, f"measured on {other}"
        scale = (size / self.native) ** 2
        train = self.n_train / FT_BATCH * self.step * scale * cost
        return train + self.n_eval * self._forward(size), "timed step"

    def setup_seconds(self, strategy: str, size: int, prepare_seconds: float) -> float:
        if strategy in self.setup:
            seconds, at = self.setup[strategy]
            return seconds * (size / at) ** 2
        forward = self._forward(size)
        probe = 0.0 if size == self.native else prepare_seconds + (self.n_train + self.n_eval) * forward
        caches = get_strategy(strategy).cached == "activations"  # its setup computes the cached activations
        return probe + ((self.n_train * (1 + self.views) + self.n_eval) * forward if caches else 0.0)

    def _forward(self, size: int) -> float:
        """A gradient-free pass over one image, from the timed step (a third of a step's image)."""
        return self.step * (size / self.native) ** 2 / FT_BATCH / 3

    def measured(self, strategy: str, size: int, epoch_seconds: float, setup_seconds: float | None = None) -> float:
        """Record an epoch's seconds (and the candidate's setup); returns seconds per training image."""
        self.per_image[strategy] = [epoch_seconds / max(self.n_train, 1), size]
        if setup_seconds is not None:
            self.setup[strategy] = [max(setup_seconds, 0.0), size]
        return self.per_image[strategy][0]


def fit(costs: Costs, strategy: str, seconds: float, prepare_seconds: float, max_epochs: int) -> tuple[int, int, str]:
    """(image size, epochs, "") for a fine-tuning candidate in `seconds`: the largest size up to the run's at
    which MIN_EPOCHS fit (as many epochs as fit, up to `max_epochs`); at the smallest size the epochs that fit
    when fewer do, saying so; (0, 0, why) when not one does."""
    epochs, size = 0, costs.native
    for size in sizes(costs.native):
        epoch = costs.epoch(strategy, size)[0]
        setup = costs.setup_seconds(strategy, size, prepare_seconds)
        epochs = int((seconds - setup) // epoch) if seconds > setup and epoch > 0 else 0
        if epochs >= MIN_EPOCHS:
            return size, min(epochs, max_epochs), ""
    timing = _timing(costs, strategy)
    if epochs >= 1:  # a busy machine, a short budget: a short fine-tuning still beats none (validation decides)
        return size, min(epochs, max_epochs), (f"only {epochs} of the {MIN_EPOCHS} epochs sought fit in "
                                               f"{seconds:.0f} s, at {size} px ({timing})")
    return 0, 0, f"epochs do not fit: not one in {max(seconds, 0):.0f} s even at {size} px ({timing})"


def _timing(costs: Costs, strategy: str) -> str:
    seconds, source = costs.epoch(strategy, costs.native)
    if source == "timed step":
        return f"one {FT_BATCH}-image step at {costs.native} px takes {costs.step:.2f} s here"
    return f"an epoch at {costs.native} px takes {seconds:.1f} s here, {source}"


def sizes(native: int) -> list[int]:
    return [native] + [s for s in SMALLER if s < native]


def mirror_seconds(p: Prepared, step: float) -> float:
    """What test-time augmentation (training/mirror.py) will cost after the choice: validation and test
    mirrored, two forward passes per image."""
    if p.cfg.eval.tta == "none" or not p.cfg.data.hflip:
        return 0.0
    images = sum(len(p.splits.refs.get(s, [])) for s in ("val", "test"))
    return 2 * images * step / FT_BATCH / 3


def step_seconds(p: Prepared) -> float:
    """One full fine-tuning step (forward, backward, update) of FT_BATCH images at the run's size, measured
    on random pixels (the cost does not depend on them), on a throwaway model."""
    model_cfg = dataclasses.replace(p.cfg.model, strategy="full")
    net = build_classifier(model_cfg, 2, p.in_chans, "none").to(p.device).train()
    net.to(memory_format=torch.channels_last)
    x = torch.randn(FT_BATCH, p.in_chans, p.size, p.size, device=p.device).contiguous(
        memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    seconds = math.inf
    micro = micro_batch(p.cfg.runtime, p.size, p.device)  # as training will run it
    with recomputing(net.backbone, recomputed(model_cfg.backbone, p.cfg.runtime.recompute, p.device)):
        for _ in range(2):  # the first one warms up
            start = time.perf_counter()
            opt.zero_grad()
            for chunk in x.tensor_split(chunk_count(FT_BATCH, micro)):
                net(chunk).float().mean().backward()
            opt.step()
            seconds = time.perf_counter() - start
    return seconds
