"""strategy=auto: the best model the time budget allows, chosen on validation only.

Seed 001's rule orders the candidates: train a new head on the frozen backbone when the data are few and
close to ImageNet, fine-tune the top stages when they are few and far, fine-tune everything when they are
many. `linear` runs first: its features are cached and cheap, and how well it separates validation measures
the similarity. The fine-tuning candidates then run in the rule's order (LP-FT: each head starts from the
linear probe), each in its share of the time left, at the largest image size that fits `MIN_EPOCHS`; one
that cannot fit is skipped with the reason. The candidate with the best validation score is kept; test is
scored once, for it (candidates compute validation probabilities only). Every candidate, its score, its
time, the choice and why go to the run folder (auto.json, and metrics.json's "auto").
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from medtl.core.config import RunConfig, run_budget
from medtl.models.memory import recomputed, recomputing
from medtl.models.strategies import Classifier, build_classifier
from medtl.training.loop import chunk_count, micro_batch, monitor_key, predict, release_memory, seed_everything
from medtl.training.prepare import Prepared, prepare

log = logging.getLogger(__name__)

FEW = 1000  # training images below which the data count as few
CLOSE = 0.90  # the linear probe's validation AUC from which the data count as close to ImageNet
MIN_EPOCHS = 4  # a fine-tuning candidate runs at a size where at least this many epochs fit its share
FIRST_SHARE = 0.65  # of the time left, for a fine-tuning candidate that another one follows
RESERVE_S = 15.0  # kept for scoring, figures and the checkpoint after the last candidate
FT_BATCH = 32  # fine-tuning batch (memory: full at 224 px, batch 64, reached 8.4 GB on a CPU)
AUC_TIE = 0.002  # validation AUCs this close count as equal; the lower validation loss wins
PARTIAL_COST = 0.5  # a partial step on cached activations against a full step (top stages only)

Trained = tuple[list[dict], int, dict]  # history, best epoch, {split: (probs, labels)}
TrainFn = Callable[[Prepared, Classifier, bool], Trained]


@dataclass
class Candidate:
    strategy: str
    image_size: int
    epochs: int = 0  # planned (fit may stop earlier: early stopping, budget)
    epochs_run: int = 0
    best_epoch: int = 0
    val_auc: float = math.nan
    val_loss: float = math.nan
    seconds: float = 0.0
    note: str = ""


@dataclass
class Outcome:
    p: Prepared  # the chosen candidate's (its config, image size)
    model: Classifier
    trained: Trained
    record: dict


def plan(n_train: int, similarity: float) -> tuple[list[str], str]:
    """The fine-tuning candidates to try after linear, in seed 001's order, and why."""
    close = similarity >= CLOSE  # nan (validation AUC undefined): not close
    sim = f"linear probe val AUC {similarity:.3f} {'>=' if close else '<'} {CLOSE}"
    if n_train < FEW and close:
        return ["partial"], f"few images ({n_train} < {FEW}), close to ImageNet ({sim}): linear is the rule; " \
                            "partial checks it"
    if n_train < FEW:
        return ["partial", "full"], f"few images ({n_train} < {FEW}), far from ImageNet ({sim}): top stages first"
    return ["full", "partial"], f"many images ({n_train} >= {FEW}; {sim}): fine-tune everything first"


def choose(p: Prepared, train_fn: TrainFn, progress: bool, prepare_seconds: float) -> Outcome:
    """Run the candidates within `p.deadline` and keep the best on validation."""
    end = p.deadline - RESERVE_S
    best = _attempt(p, "linear", p.size, p.cfg.train.epochs, train_fn, progress, end)
    tried = [best[1]]
    order, why = plan(len(p.splits.refs["train"]), tried[0].val_auc)
    log.info("auto: %s; next: %s", why, ", ".join(order))
    step = _step_seconds(p)  # one full step at the run's size, the unit of every candidate's estimate
    end -= _mirror_seconds(p, step)
    # the rule's candidates share the time; the others run after them in what is left (one that stopped early
    # leaves time: full after partial on few images), and are not tried when nothing fits
    extra = [s for s in ("full", "partial") if s not in order]
    for i, strategy in enumerate(order + extra):
        share = (end - time.monotonic()) * (FIRST_SHARE if i < len(order) - 1 else 1.0)
        size, epochs, note = _fit(p, strategy, share, prepare_seconds, step)
        if i >= len(order):
            note = "; ".join(filter(None, ["after the rule's candidates, in the time they left", note]))
        if not size:
            tried.append(Candidate(strategy, 0, note=note))
            log.info("auto: %s skipped: %s", strategy, note)
            continue
        attempt = _attempt(p, strategy, size, epochs, train_fn, progress, time.monotonic() + share)
        attempt[1].note = note
        tried.append(attempt[1])
        if _better(attempt[1], best[1], p.cfg):
            best = attempt  # the other candidates' models are let go
        del attempt
        release_memory()
    outcome, chosen = best
    outcome.record = _record(p, tried, chosen, why)
    log.info("auto: chose %s (%s)", chosen.strategy, outcome.record["reason"])
    _score_test(outcome, progress)
    return outcome


def _score_test(outcome: Outcome, progress: bool) -> None:
    """The chosen model's test probabilities, the only ones computed: candidates return validation's alone."""
    cp = outcome.p
    if "test" in cp.splits.refs and cp.cfg.train.tta == "none":  # else training/mirror.py scores it, as chosen
        outcome.trained[2]["test"] = predict(outcome.model, cp.loader("test", False, cp.cfg.train.batch_size),
                                             cp.prepare, cp.device, "predict test", progress)


def _better(c: Candidate, best: Candidate, cfg: RunConfig) -> bool:
    """`c` beats `best` on validation (`beats`)."""
    return beats({"auc": c.val_auc, "loss": c.val_loss}, {"auc": best.val_auc, "loss": best.val_loss},
                 cfg.train.monitor)


def beats(a: dict, b: dict, monitor: str) -> bool:
    """Validation scores `a` ({auc, loss}) beat `b` by `monitor`, except that AUCs within AUC_TIE of each other
    (a saturated validation AUC differs in its fourth decimal by chance) count as a tie, won by the lower loss."""
    if monitor == "auc" and abs(a["auc"] - b["auc"]) <= AUC_TIE:
        return a["loss"] < b["loss"]
    return monitor_key(a, monitor) > monitor_key(b, monitor)


def _attempt(p: Prepared, strategy: str, size: int, epochs: int, train_fn: TrainFn, progress: bool,
             deadline: float) -> tuple[Outcome, Candidate]:
    """One candidate trained (its own Prepared when the size differs) and its validation score."""
    start = time.monotonic()
    cand_p = _prepared_for(p, strategy, size, epochs, progress)
    cand_p.deadline = deadline
    seed_everything(p.cfg.train.seed)
    model = build_classifier(cand_p.cfg.model, 1 if p.binary else len(p.splits.classes), p.in_chans).to(p.device)
    log.info("auto: trying %s at %d px, up to %d epochs, %.0f s left for it", strategy, size, epochs,
             deadline - start)
    history, best_epoch, probs = train_fn(cand_p, model, progress)
    row = history[best_epoch - 1]
    cand = Candidate(strategy, size, epochs, len(history), best_epoch, float(row["val_auc"]), float(row["val_loss"]),
                     time.monotonic() - start)
    log.info("auto: %s val AUC %.4f, val loss %.4f (best epoch %d of %d) in %.0f s", strategy, cand.val_auc,
             cand.val_loss, best_epoch, len(history), cand.seconds)
    return Outcome(cand_p, model, (history, best_epoch, probs), {}), cand


def _prepared_for(p: Prepared, strategy: str, size: int, epochs: int, progress: bool) -> Prepared:
    """The run's Prepared with the candidate's config: fine-tuning is LP-FT at batch <= FT_BATCH; another size
    decodes the images again (its own cached store)."""
    tc = p.cfg.train
    train = dataclasses.replace(tc, epochs=epochs) if strategy == "linear" else dataclasses.replace(
        tc, epochs=epochs, head_init="probe", batch_size=min(tc.batch_size, FT_BATCH))
    data = dataclasses.replace(p.cfg.data, image_size=size)
    cfg = dataclasses.replace(p.cfg, data=data, train=train, model=dataclasses.replace(p.cfg.model, strategy=strategy))
    if size == p.size:
        return dataclasses.replace(p, cfg=cfg, state_path=None, resume=False, scored=("val",))
    other = prepare(cfg, progress, p.device)
    other.audit_notes, other.scored = p.audit_notes, ("val",)
    return other


def _fit(p: Prepared, strategy: str, seconds: float, prepare_seconds: float, step: float) -> tuple[int, int, str]:
    """(image size, epochs, "") for a fine-tuning candidate in `seconds`, given `step`, the seconds of one full
    FT_BATCH step at the run's size: the largest size up to the run's at which MIN_EPOCHS fit (as many epochs
    as fit, up to train.epochs); (0, 0, why) when none does."""
    n_train = len(p.splits.refs["train"])
    n_eval = sum(len(r) for s, r in p.splits.refs.items() if s != "train")
    views = 1 + (p.cfg.train.feature_views if p.cfg.data.augment else 0)
    epochs = 0
    for size in _sizes(p.size):
        scale = (size / p.size) ** 2
        forward = step * scale / FT_BATCH / 3  # per image, gradient-free
        epoch = n_train / FT_BATCH * step * scale * (PARTIAL_COST if strategy == "partial" else 1) + n_eval * forward
        probe = 0.0 if size == p.size else prepare_seconds + (n_train + n_eval) * forward  # LP-FT's features
        setup = probe + ((n_train * views + n_eval) * forward if strategy == "partial" else 0.0)  # its activations
        epochs = int((seconds - setup) // epoch) if seconds > setup else 0
        if epochs >= MIN_EPOCHS:
            return size, min(epochs, p.cfg.train.epochs), ""
    timing = f"one {FT_BATCH}-image step at {p.size} px takes {step:.2f} s here"
    if epochs >= 1:  # a busy machine, a short budget: a short fine-tuning still beats none (validation decides)
        return size, min(epochs, p.cfg.train.epochs), (f"only {epochs} of the {MIN_EPOCHS} epochs sought fit in "
                                                       f"{seconds:.0f} s, at {size} px ({timing})")
    return 0, 0, (f"epochs do not fit: not one in {max(seconds, 0):.0f} s even at {_sizes(p.size)[-1]} px "
                  f"({timing})")


def _mirror_seconds(p: Prepared, step: float) -> float:
    """What test-time augmentation (training/mirror.py) will cost after the choice: validation and test
    mirrored, two forward passes per image."""
    if p.cfg.train.tta == "none" or not p.cfg.data.hflip:
        return 0.0
    images = sum(len(p.splits.refs.get(s, [])) for s in ("val", "test"))
    return 2 * images * step / FT_BATCH / 3


def _sizes(native: int) -> list[int]:
    return [native] + [s for s in (192, 160, 128, 112, 96) if s < native]


def _step_seconds(p: Prepared) -> float:
    """One full fine-tuning step (forward, backward, update) of FT_BATCH images at the run's size, measured
    on random pixels (the cost does not depend on them), on a throwaway model."""
    model_cfg = dataclasses.replace(p.cfg.model, strategy="full")
    net = build_classifier(model_cfg, 2, p.in_chans, load_weights=False).to(p.device).train()
    net.to(memory_format=torch.channels_last)
    x = torch.randn(FT_BATCH, p.in_chans, p.size, p.size, device=p.device).contiguous(
        memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    seconds = math.inf
    micro = micro_batch(p.cfg.train, p.size, p.device)  # as training will run it
    with recomputing(net.backbone, recomputed(model_cfg.backbone, p.cfg.train.recompute, p.device)):
        for _ in range(2):  # the first one warms up
            start = time.perf_counter()
            opt.zero_grad()
            for chunk in x.tensor_split(chunk_count(FT_BATCH, micro)):
                net(chunk).float().mean().backward()
            opt.step()
            seconds = time.perf_counter() - start
    return seconds


def _record(p: Prepared, tried: list[Candidate], chosen: Candidate, why: str) -> dict:
    ran = [c for c in tried if c.image_size]
    return {"budget_seconds": run_budget(p.cfg),
            "train_images": len(p.splits.refs["train"]),
            "similarity": {"linear_probe_val_auc": tried[0].val_auc, "close_from": CLOSE}, "few_below": FEW,
            "rule": why, "candidates": [dataclasses.asdict(c) for c in tried], "chosen": chosen.strategy,
            "reason": f"best validation {p.cfg.train.monitor} of {len(ran)} candidates tried (AUCs within {AUC_TIE} "
                      f"tie, the lower loss wins): " + ", ".join(f"{c.strategy} AUC {c.val_auc:.4f} loss "
                                                                 f"{c.val_loss:.4f}" for c in ran)
                      + "; test was not looked at"}
