"""strategy=auto: seed 001's rule, the budget, and a choice made on validation only."""

import json
import math
import time

import numpy as np
import pytest
import torch

from medtl.core.config import RunConfig, apply_overrides, budget_seconds
from medtl.core.errors import MedtlError
from medtl.models.checkpoint import Checkpoint
from medtl.training.auto import search as auto
from medtl.training import scoring
from medtl.training.results import SplitScores, TrainResult
from medtl.training.train import Trained
from medtl.training.prepare import prepare
from medtl.training.run import run


def _cfg(root, out, **kw):
    base = {"data.path": str(root), "data.image_size": 32, "model.backbone": "efficientnet_lite0",
            "model.weights": "package", "model.strategy": "auto", "train.epochs": 2, "train.batch_size": 8,
            "out": str(out), "runtime.threads": 2, "runtime.engine": "torch"}
    base.update(kw)
    return apply_overrides(RunConfig(), base)


@pytest.mark.parametrize("n, similarity, expected", [
    (200, 0.97, ["partial"]),  # few and close: linear is the rule, partial checks it
    (200, 0.70, ["partial", "full"]),  # few and far: the top stages first
    (200, math.nan, ["partial", "full"]),  # similarity unknown: treated as far
    (5000, 0.97, ["full", "partial"]),  # many: everything first
    (5000, 0.60, ["full", "partial"]),
])
def test_the_rule_orders_candidates_by_size_and_similarity(n, similarity, expected):
    order, why = auto.plan(n, similarity)
    assert order == expected
    assert str(n) in why and ("few" in why) == (n < auto.FEW)


@pytest.mark.parametrize("text, seconds", [("15m", 900), ("90s", 90), ("1.5h", 5400), (" 2M ", 120)])
def test_budget_takes_a_time_with_a_unit(text, seconds):
    assert budget_seconds(text) == seconds


@pytest.mark.parametrize("bad", ["15", "abc", "-1m", "0s", "m", "infm"])
def test_a_bad_budget_is_refused_when_the_config_loads(bad, tmp_path):
    with pytest.raises(MedtlError, match="--budget 15m"):
        apply_overrides(RunConfig(), {"train.budget": bad})


def test_auto_without_pretrained_weights_is_refused_before_anything_is_written(image_tree, cache_dir, tmp_path):
    with pytest.raises(MedtlError, match="strategy scratch"):
        run(_cfg(image_tree, tmp_path / "runs", **{"model.weights": "none"}), progress=False)
    assert not (tmp_path / "runs").exists()


def test_the_choice_uses_validation_never_test(image_tree, cache_dir, tmp_path):
    """Candidates are compared on validation alone (partial best there); test is scored after, once, for it
    (here, without test-time augmentation; with it, training/mirror.py scores test the way it chooses)."""
    p = prepare(_cfg(image_tree, tmp_path / "runs", **{"eval.tta": "none"}), progress=False)
    p = p.with_control(deadline=time.monotonic() + 3600)
    val_auc = {"linear": 0.80, "partial": 0.95, "full": 0.90}  # few (48) and far (0.80): partial, then full
    seen = []

    def fake_train(cp, model, progress, hooks=()):
        s = cp.cfg.model.strategy
        seen.append(s)
        y = np.array([0, 1] * 4)
        probs = {"val": SplitScores(y * 0.8 + 0.1, y)}
        return TrainResult([{"epoch": 1, "val_auc": val_auc[s], "val_loss": 1 - val_auc[s]}], 1, probs)

    outcome = auto.choose(p, fake_train, False, prepare_seconds=1.0)
    assert seen == ["linear", "partial", "full"]
    assert outcome.record["chosen"] == "partial" and outcome.p.cfg.model.strategy == "partial"
    assert outcome.p.cfg.train.head_init == "probe"  # fine-tuning candidates are LP-FT
    assert [c["val_auc"] for c in outcome.record["candidates"]] == [0.80, 0.95, 0.90]
    assert "test" not in json.dumps(outcome.record["candidates"])
    assert set(outcome.result.scores) == {"val"}  # auto never scores test: the run's finalize phase does, once
    scored = scoring.score(Trained(outcome.p, outcome.model, outcome.result, outcome.record), False)  # after every choice
    test_probs, test_y = scored.scores["test"]  # scored once, by the chosen model, after the choice
    assert len(test_probs) == len(test_y) == 16


def test_a_candidate_that_cannot_fit_is_skipped_with_the_reason(image_tree, cache_dir, tmp_path, monkeypatch):
    p = prepare(_cfg(image_tree, tmp_path / "runs"), progress=False)
    p = p.with_control(deadline=time.monotonic() + 3600)
    monkeypatch.setattr(auto, "_step_seconds", lambda p: 1e4)  # one step: hours

    def fake_train(cp, model, progress, hooks=()):
        return TrainResult([{"epoch": 1, "val_auc": 0.7, "val_loss": 0.5}], 1, {})

    outcome = auto.choose(p, fake_train, False, prepare_seconds=1.0)
    skipped = [c for c in outcome.record["candidates"] if not c["image_size"]]
    assert [c["strategy"] for c in skipped] == ["partial", "full"]
    assert all("do not fit" in c["note"] for c in skipped) and outcome.record["chosen"] == "linear"


def test_sizes_shrink_to_fit_the_share(image_tree, cache_dir, tmp_path):
    p = prepare(_cfg(image_tree, tmp_path / "runs", **{"data.image_size": 224, "train.epochs": 50}), progress=False)
    step = 1.0  # seconds per 32-image step at 224 px; 40 training images: 1.25 steps per epoch
    big, _, _ = auto._fit(p, "full", 1000.0, 0.0, step)
    small, epochs, _ = auto._fit(p, "full", 3.0, 0.0, step)
    assert big == 224 and small < 224 and epochs >= auto.MIN_EPOCHS


def test_auto_run_end_to_end_records_every_candidate(image_tree, cache_dir, tmp_path):
    run_dir = run(_cfg(image_tree, tmp_path / "runs", **{"train.budget": "10m"}), progress=False)
    record = json.loads((run_dir / "auto.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["auto"] == record and record["candidates"][0]["strategy"] == "linear"
    chosen = record["chosen"]
    assert chosen in [c["strategy"] for c in record["candidates"] if c["image_size"]]
    ckpt = Checkpoint.load(run_dir / "checkpoint.pt")
    assert ckpt.config.model.strategy == chosen  # the checkpoint holds the chosen candidate's resolved config
    assert set(metrics["splits"]) >= {"val", "test"}
    with pytest.raises(MedtlError, match="has already finished"):  # an unfinished one resumes: test_auto_resume
        run(_cfg(image_tree, tmp_path / "runs", **{"name": run_dir.name}), progress=False, resume=True)


def test_training_stops_after_the_epoch_that_reaches_the_budget(image_tree, cache_dir, tmp_path):
    cfg = _cfg(image_tree, tmp_path / "runs", **{"model.strategy": "full", "model.weights": "none",
                                                  "model.backbone": "resnet18", "train.epochs": 50,
                                                  "train.patience": 50, "train.budget": "1s"})
    run_dir = run(cfg, progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] < 50


def test_saturated_validation_aucs_tie_and_the_lower_loss_wins():
    cfg = RunConfig()
    full = auto.Candidate("full", 160, val_auc=0.9983, val_loss=0.385)  # seen on Kermany: AUC saturated
    partial = auto.Candidate("partial", 128, val_auc=0.9980, val_loss=0.047)
    assert auto._better(partial, full, cfg) and not auto._better(full, partial, cfg)
    clearly = auto.Candidate("linear", 224, val_auc=0.95, val_loss=0.01)
    assert not auto._better(clearly, partial, cfg)  # a real AUC gap is not outweighed by a lower loss


@pytest.mark.slow
@pytest.mark.shared_data
def test_a_2m_budget_ends_within_the_budget_plus_one_epoch(tmp_path, monkeypatch):
    """Real X-rays (600 training images at 224 px): linear, then fine-tuning candidates, all inside 2 minutes
    plus at most one epoch and the final scoring."""
    import re

    from helpers import kermany_links
    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    root = kermany_links(tmp_path / "kermany", 300, 40)
    start = time.monotonic()
    run_dir = run(apply_overrides(RunConfig(), {"data.path": str(root), "train.budget": "2m",
                                                "out": str(tmp_path / "runs")}), progress=False)
    wall = time.monotonic() - start
    epochs = [float(s) for s in re.findall(r"epoch \d+/\d+ .*\((\d+\.\d+)s\)", (run_dir / "train.log").read_text())]
    assert wall <= 120 + max(epochs) + 10, (wall, max(epochs))
    record = json.loads((run_dir / "auto.json").read_text())
    assert record["budget_seconds"] == 120 and record["candidates"][0]["strategy"] == "linear"


def test_a_busy_machine_still_fine_tunes_for_the_epochs_that_fit(image_tree, cache_dir, tmp_path):
    """When MIN_EPOCHS fit at no size (a slow step: a busy CPU), the candidate runs at the smallest size for the
    epochs that do fit, and says so; only when not one epoch fits is it skipped."""
    p = prepare(_cfg(image_tree, tmp_path / "runs", **{"data.image_size": 224, "train.epochs": 50}), progress=False)
    step = 1.0  # 40 training images: 1.25 steps an epoch at 224 px, 0.23 at 96 px (+ the evaluation passes)
    size, epochs, note = auto._fit(p, "full", 0.6, 0.0, step)
    assert size == 96 and 1 <= epochs < auto.MIN_EPOCHS and f"only {epochs} of the {auto.MIN_EPOCHS}" in note
    assert auto._fit(p, "full", 0.05, 0.0, step)[:2] == (0, 0)


def test_the_other_strategy_runs_in_the_time_the_rule_left(image_tree, cache_dir, tmp_path):
    """Few images close to ImageNet: the rule tries partial alone; full then runs in the time partial left."""
    p = prepare(_cfg(image_tree, tmp_path / "runs", **{"eval.tta": "none"}), progress=False)
    p = p.with_control(deadline=time.monotonic() + 3600)
    val_auc = {"linear": 0.95, "partial": 0.96, "full": 0.99}
    seen = []

    def fake_train(cp, model, progress, hooks=()):
        s = cp.cfg.model.strategy
        seen.append(s)
        y = np.array([0, 1] * 4)
        return TrainResult([{"epoch": 1, "val_auc": val_auc[s], "val_loss": 1 - val_auc[s]}], 1,
                           {"val": SplitScores(y * 0.8 + 0.1, y)})

    outcome = auto.choose(p, fake_train, False, prepare_seconds=1.0)
    assert seen == ["linear", "partial", "full"] and outcome.record["chosen"] == "full"
    assert "after the rule's candidates" in outcome.record["candidates"][2]["note"]


def test_an_epoch_past_the_deadline_ends_after_the_batch_in_progress():
    """A busy machine can make one epoch far longer than planned: past the budget's deadline the pass stops
    after its current batch (the first batch always trains), instead of running the whole epoch over it."""
    from medtl.core.config import TrainConfig
    from medtl.training.distributed import SINGLE
    from medtl.training.loop import Deadline, Events, FitPlan, FitState, _train_epoch, make_loss, make_optimizer

    def epoch(deadline):
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 1)
        opt = make_optimizer([{"params": net.parameters()}], TrainConfig(optimizer="sgd", lr=0.1))
        fetched = []

        def batches():
            for i in range(20):
                fetched.append(i)
                yield torch.randn(8, 4), torch.tensor([0, 1] * 4)
        plan = FitPlan(TrainConfig(), make_loss(True, None), torch.device("cpu"), deadline=deadline)
        events = Events([Deadline(deadline, SINGLE)])
        loss = _train_epoch(net, batches(), lambda t: t, opt, plan, events, FitState())
        return len(fetched), loss

    assert epoch(None)[0] == 20 and epoch(time.monotonic() + 3600)[0] == 20
    fetched, loss = epoch(time.monotonic() - 1)  # already past: one batch trains, the next is not used
    assert fetched == 2 and math.isfinite(loss)
