"""One training run from config to run folder (re-scoring a saved run: medtl/deploy/evaluate.py).

Everything that can fail on bad input (config, data, backbone, weights) is checked before the run folder
is created, so a failed start leaves nothing half-written behind.
"""

from __future__ import annotations

import csv
import fcntl
import io
import logging
import os
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

import torch

from medtl.core import logs
from medtl.core.config import RunConfig, dump_yaml, run_budget
from medtl.core.device import pick_device
from medtl.core.errors import Interrupted, MedtlError
from medtl.core.faults import memory_advice, out_of_memory
from medtl.core.io import atomic_write, cannot_write, make_dir, write_json
from medtl.core.runfolder import RunFolder
from medtl.data.datasets import class_weights, train_transform
from medtl.evaluation.metrics import choose_threshold
from medtl.evaluation.figures import plot_confusions, plot_curves, plot_reliability
from medtl.evaluation.report import format_metrics, write_history, write_predictions
from medtl.evaluation.splits_report import split_report, without_train_copies
from medtl.evaluation.uncertainty import apply_temperature, calibration, fit_temperature
from medtl.models.checkpoint import Checkpoint
from medtl.models.memory import recomputed, recomputing
from medtl.models.strategies import Classifier, build_classifier, effective_weights, param_groups
from medtl.training import distributed
from medtl.training.auto import choose
from medtl.training.cached import probe_head, train_head_on_features, train_top_on_activations
from medtl.training.loop import EpochHook, deterministic, fit, make_loss, micro_batch, predict, seed_everything
from medtl.training.mirror import mirrored
from medtl.training.prepare import Prepared, prepare

log = logging.getLogger(__name__)


def run(cfg: RunConfig, progress: bool = True, on_epoch: EpochHook | None = None, resume: bool = False) -> Path:
    """Train and evaluate per `cfg`; returns the run folder. `on_epoch(epoch, val_metrics)` is called after
    each epoch (hyperparameter search reports and prunes through it). Under torchrun every process calls
    this; they train together and rank 0 writes the run folder."""
    with distributed.session(pick_device(cfg.train.device)) as device, deterministic(cfg.train.deterministic):
        world = distributed.current()
        return _run(cfg, progress and world.main, on_epoch, resume, device, world)


def _run(cfg: RunConfig, progress: bool, on_epoch: EpochHook | None, resume: bool, device: torch.device,
         world: distributed.World) -> Path:
    seed_everything(cfg.train.seed)
    _check_auto(cfg, resume)
    started = time.monotonic()
    p = prepare(cfg, progress, device)
    budget = run_budget(cfg)
    p.deadline = None if budget is None else started + budget
    prepare_seconds = time.monotonic() - started
    num_out = 1 if p.binary else len(p.splits.classes)
    auto = cfg.model.strategy == "auto"  # then each candidate builds its own model
    model = None if auto else build_classifier(cfg.model, num_out, p.in_chans).to(p.device)  # same on every process
    if world.rank:  # other augmentations (and dropout) than rank 0's; rank 0 draws as one process would
        seed_everything(cfg.train.seed + world.rank)
    p.resume = resume
    if cfg.train.tta != "none":  # test is scored after training, the way training/mirror.py chooses
        p.scored = ("val",)
    with ExitStack() as held:
        folder, error = None, None
        if world.main:
            try:
                folder = _claim(cfg, resume, held)
            except MedtlError as exc:
                error = exc
        path, message = distributed.broadcast((folder and str(folder.path), error and str(error)))
        if error is not None:
            raise error
        if message:  # every process stops with rank 0's reason, none waits for it
            raise MedtlError(message)
        folder = RunFolder(path)
        p.state_path = folder.state
        if not world.main:  # trains its share, and scores its share of the test-time augmentation
            p, model, (_, _, probs), _ = _strategy(p, model, progress, on_epoch, prepare_seconds)
            mirrored(p, model, probs, progress)
            return folder.path
        with logs.to_file(folder.log), _guarded(folder, cfg):
            _write_inputs(p, folder, resume)
            log.info("run folder %s; backbone %s (weights %s), strategy %s, %d px, device %s%s", folder,
                     p.spec.name, p.weights, cfg.model.strategy, p.size, p.device,
                     f", {world.size} processes (DDP)" if world.active else "")
            start = time.perf_counter()
            p, model, (history, best_epoch, probs), auto_record = _strategy(p, model, progress, on_epoch,
                                                                            prepare_seconds)
            if auto_record:
                write_json(folder.auto, auto_record)
            p, probs, tta_record = mirrored(p, model, probs, progress)
            _finish(p, model, folder, history, best_epoch, probs, time.perf_counter() - start,
                    {"auto": auto_record, "tta": tta_record})
            folder.state.unlink(missing_ok=True)  # the run is complete: the checkpoint holds its result
    return folder.path


def _claim(cfg: RunConfig, resume: bool, held: ExitStack) -> RunFolder:
    """The run folder, made (or found, for --resume) and locked for this process until `held` closes."""
    folder = _resume_dir(cfg) if resume else _make_run_dir(cfg)
    held.enter_context(_locked(folder))
    if not resume and folder.state.exists():
        raise MedtlError(f"run folder {folder} holds an unfinished run ({folder.state.name}); continue it with "
                         f"`medtl train --resume {folder}`, or pass another --name")
    return folder


@contextmanager
def _locked(folder: RunFolder) -> Iterator[None]:
    """One process per run folder: a second run with the same --name fails at once instead of mixing its
    epochs into the first one's state."""
    with cannot_write(folder.lock):
        fh = open(folder.lock, "a+")
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise MedtlError(f"run folder {folder} is in use by {holder}; wait for it to finish, or pass another "
                             "--name") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"medtl pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            folder.lock.unlink(missing_ok=True)  # before the lock is released: a waiting run sees a fresh file


@contextmanager
def _guarded(folder: RunFolder, cfg: RunConfig) -> Iterator[None]:
    """Ctrl-C, memory exhausted, or the run folder deleted under the run: one line saying how to go on (exit
    130 after Ctrl-C) instead of a traceback or a silent exit. The lock is released by the caller either way."""
    try:
        yield
    except KeyboardInterrupt:
        if cfg.model.strategy == "auto":  # its candidates keep no per-epoch state: the command that starts it again
            raise Interrupted("interrupted: an auto run cannot be resumed (its candidates keep no per-epoch state): "
                              f"start it again with {folder.restart_command(cfg.data.path)}") from None
        kept = "the last finished epoch is kept" if folder.state.exists() else "no epoch had finished"
        raise Interrupted(f"interrupted: {kept}; continue with `medtl train --resume {folder}`") from None
    except MedtlError:
        raise
    except Exception as exc:
        if not folder.path.is_dir():
            raise MedtlError(f"the run folder {folder} was removed while training ({type(exc).__name__}); nothing "
                             "of the run is kept: start it again") from exc
        if out_of_memory(exc):
            raise MedtlError(f"out of memory while training; the run in {folder} did not finish: "
                             f"{memory_advice()}, and start it again with another --name") from exc
        raise


def _write_inputs(p: Prepared, folder: RunFolder, resume: bool) -> None:
    """The resolved config, the audit's warnings and the skipped images, before training starts."""
    if not resume:
        atomic_write(folder.config, dump_yaml(p.cfg))
    if p.audit_notes:
        atomic_write(folder.audit, "".join(f"warning: {n}\n" for n in p.audit_notes))
    skipped = {**p.splits.rejected, **p.store.failed}
    if skipped:  # CSV, quoted: a file name may hold a tab or a newline
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "reason"])
        writer.writerows(skipped.items())
        atomic_write(folder.skipped, buf.getvalue())


def _check_auto(cfg: RunConfig, resume: bool) -> None:
    """Before the data are read: what an auto run cannot do."""
    if cfg.model.strategy != "auto":
        return
    if effective_weights(cfg.model) == "none":
        raise MedtlError("strategy auto chooses among ways to transfer pretrained weights, but model.weights is "
                         "none; pass --weights default (or a file), or --strategy scratch")
    if resume:
        again = RunFolder(Path(cfg.out) / (cfg.name or "RUN")).restart_command(cfg.data.path or "DATA")
        raise MedtlError("an auto run cannot be resumed (its candidates keep no per-epoch state); start it again "
                         f"with {again}, or resume a run with a fixed --strategy")


def _strategy(p: Prepared, model: Classifier | None, progress: bool, on_epoch: EpochHook | None,
              prepare_seconds: float):
    """(Prepared, model, (history, best epoch, probabilities), auto's record or {}): the strategy's training,
    or auto's choice among candidates (each its own Prepared and model; `on_epoch` is not called)."""
    if model is not None:
        return p, model, _train(p, model, progress, on_epoch), {}
    outcome = choose(p, _train, progress, prepare_seconds)
    return outcome.p, outcome.model, outcome.trained, outcome.record


def _train(p: Prepared, model: Classifier, progress: bool, on_epoch: EpochHook | None = None):
    """Train per strategy; returns (history, best epoch, {split: (probs, labels)})."""
    tc = p.cfg.train
    weights = class_weights(p.splits.labels["train"], len(p.splits.classes)) if tc.class_weights else None
    loss_fn = make_loss(p.binary, weights, tc.label_smoothing)
    if p.cfg.model.strategy == "linear":
        return train_head_on_features(p, model, loss_fn, progress, on_epoch)
    if _lp_ft(p):
        probe_head(p, model, loss_fn, progress)
    if p.cfg.model.strategy == "partial" and tc.cache_frozen:
        try:
            return train_top_on_activations(p, model, loss_fn, progress, on_epoch)
        except ValueError as exc:
            log.info("partial: training end to end, the frozen prefix cannot be cached (%s)", exc)
    model.to(memory_format=torch.channels_last)  # as the inputs: measured faster on CPU, no re-layout in DDP
    if tc.sync_bn:
        model = distributed.sync_batch_norm(model, p.device)
    transform = train_transform(p.size, p.cfg.data.hflip) if p.cfg.data.augment else None
    train = p.loader("train", True, tc.batch_size, transform)
    val = p.loader("val", False, tc.batch_size)
    groups = param_groups(model, tc.lr, tc.backbone_lr_scale)
    stages = () if tc.sync_bn else recomputed(p.cfg.model.backbone, tc.recompute, p.device)  # SyncBN: untried
    with recomputing(model.backbone, stages) as names:
        if names:
            log.info("recomputing %s in backward (train.recompute=%s)", ", ".join(names), tc.recompute)
        history, _, best_epoch = fit(model, train, val, p.prepare, loss_fn, tc, p.device, p.splits.classes, groups,
                                     progress, on_epoch, p.state_path, p.resume, p.deadline,
                                     micro_batch(tc, p.size, p.device))
    probs = {s: predict(model, p.loader(s, False, tc.batch_size), p.prepare, p.device, f"predict {s}", progress)
             for s in p.scored if s in p.splits.refs}
    return history, best_epoch, probs


def _lp_ft(p: Prepared) -> bool:
    """LP-FT's probe step runs for partial/full from pretrained weights, unless a resumed run's state (which
    holds the head) is there."""
    if p.cfg.train.head_init != "probe" or p.cfg.model.strategy not in ("partial", "full"):
        return False
    if p.weights == "none":
        log.info("LP-FT: no pretrained weights to probe; the head starts random")
        return False
    return not (p.resume and p.state_path is not None and p.state_path.is_file())


def _finish(p: Prepared, model: Classifier, folder: RunFolder, history, best_epoch, probs, seconds,
            records: dict) -> None:
    """Threshold, metrics, predictions, checkpoint and figures; `records`: auto's and tta's choices, if any."""
    classes = p.splits.classes
    probs, temperature, before = _calibrate(p, probs)
    val_p, val_y = probs["val"]
    threshold = choose_threshold(val_y, val_p, p.cfg.train.threshold) if p.binary else 0.5
    metrics = {"best_epoch": best_epoch, "epochs_run": len(history), "train_seconds": seconds,
               "threshold": threshold, "threshold_method": p.cfg.train.threshold, "classes": classes,
               "image_size": p.size, "split_sizes": {s: len(r) for s, r in p.splits.refs.items()},
               "splits": _split_reports(p, probs, threshold), "temperature": temperature}
    if before:
        metrics["uncalibrated"] = before
    metrics.update({k: v for k, v in records.items() if v})
    for split, m in metrics["splits"].items():
        log.info(format_metrics(split, m))
    for split, (pr, y) in probs.items():
        write_predictions(folder.predictions(split), p.splits.refs[split], y, pr, classes, threshold)
    ckpt = Checkpoint(model.state_dict(), p.cfg, classes, threshold, p.preprocess, p.spec.name, temperature)
    metrics["weights_sha256"] = ckpt.save(folder.checkpoint)
    write_history(folder.history, history)
    plot_curves(folder.curves, history, f"{p.spec.name} {p.cfg.model.strategy}")
    plot_reliability(folder.reliability, metrics["splits"], f"{p.spec.name} {p.cfg.model.strategy}")
    plot_confusions(folder.confusion, metrics["splits"], classes)
    write_json(folder.metrics, metrics)  # last: its presence marks a finished run (studies resume on it)
    log.info("training took %.1f s; best epoch %d; threshold %.4f (chosen on validation by %s)",
             seconds, best_epoch, threshold, p.cfg.train.threshold)


def _calibrate(p: Prepared, probs: dict) -> tuple[dict, float, dict]:
    """train.calibrate=temperature: one temperature fitted on validation rescales every split's probabilities;
    returns (probabilities, temperature, {split: calibration before})."""
    if p.cfg.train.calibrate == "none":
        return probs, 1.0, {}
    val_p, val_y = probs["val"]
    t = fit_temperature(val_y, val_p)
    before = {s: calibration(y, pr) for s, (pr, y) in probs.items()}
    log.info("temperature %.3f fitted on validation (ECE before: %s)", t,
             ", ".join(f"{s} {c['ece']:.4f}" for s, c in before.items()))
    return {s: (apply_temperature(pr, t), y) for s, (pr, y) in probs.items()}, t, before


def _split_reports(p: Prepared, probs: dict, threshold: float) -> dict:
    """Every evaluated split, and `test_deduplicated` when the given test split shares images with train
    (byte-identical, or near-duplicate with data.group=near_duplicates)."""
    n, seed, classes = p.cfg.train.bootstrap, p.cfg.train.seed, p.splits.classes
    out = {s: split_report(y, pr, classes, threshold, n, seed) for s, (pr, y) in probs.items()}
    if "test" in probs and p.splits.carved.get("test") is None and p.splits.content:
        keys = p.splits.content  # computed once by discover, for every image
        kept = without_train_copies([keys[r] for r in p.splits.refs["test"]],
                                    {keys[r] for r in p.splits.refs["train"]})
        if 0 < len(kept) < len(p.splits.refs["test"]):
            pr, y = probs["test"]
            out["test_deduplicated"] = {**split_report(y[kept], pr[kept], classes, threshold, n, seed),
                                        "removed": len(p.splits.refs["test"]) - len(kept)}
    return out


def _resume_dir(cfg: RunConfig) -> RunFolder:
    folder = RunFolder(Path(cfg.out) / cfg.name)
    if folder.finished:
        raise MedtlError(f"run {folder} has already finished ({folder.metrics.name} exists); nothing to resume")
    return folder


def _make_run_dir(cfg: RunConfig) -> RunFolder:
    name = cfg.name or f"{cfg.model.backbone}-{cfg.model.strategy}-{datetime.now():%Y%m%d-%H%M%S}"
    folder = RunFolder(Path(cfg.out) / name)
    if folder.checkpoint.exists():
        raise MedtlError(f"run folder {folder} already holds a finished run; pass another --name or --output-dir")
    make_dir(folder.path)
    return folder
