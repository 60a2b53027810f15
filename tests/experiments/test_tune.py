"""`medtl tune`: Optuna trials on validation AUC, SQLite storage reused, pruning through the epoch hook."""

import json

import optuna
import pytest

from medtl.core.config import RunConfig, apply_overrides
from medtl.core.errors import MedtlError
from medtl.experiments.tune import objective, suggest, tune


def _base(image_tree, tmp_path, strategy="linear"):
    return apply_overrides(RunConfig(), {"data.path": str(image_tree), "data.image_size": "32",
                                         "train.epochs": "3", "model.strategy": strategy})


@pytest.mark.slow
def test_trials_score_validation_auc_and_the_storage_is_resumed(image_tree, tmp_path, cache_dir):
    out = tmp_path / "tune"
    study = tune(_base(image_tree, tmp_path), 2, out)
    assert (out / "tune.db").is_file() and len(study.trials) == 2
    again = tune(_base(image_tree, tmp_path), 1, out)  # the same SQLite study continues
    assert [t.number for t in again.trials] == [0, 1, 2]
    for t in again.trials:
        metrics = json.loads((tmp_path / "tune" / "trials" / f"trial-{t.number:04d}" / "metrics.json").read_text())
        assert t.value == pytest.approx(metrics["splits"]["val"]["auc"])  # chosen on validation, not test
        assert {"lr", "weight_decay", "batch_size", "head"} <= set(t.params)
    with pytest.raises(MedtlError, match="at least 1"):
        tune(_base(image_tree, tmp_path), 0, out)


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_a_pruned_trial_stops_after_its_first_epoch_and_leaves_no_folder(image_tree, tmp_path, cache_dir):
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    study.optimize(objective(_base(image_tree, tmp_path), tmp_path / "t"), n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]
    assert not (tmp_path / "t" / "trials" / "trial-0000").exists()


def test_partial_strategy_also_searches_the_unfrozen_depth(image_tree, tmp_path):
    trial = optuna.trial.FixedTrial({"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 32, "head": "mlp",
                                     "dropout": 0.2, "unfreeze_stages": 2})
    params = suggest(trial, _base(image_tree, tmp_path, "partial"))
    assert params["model.unfreeze_stages"] == 2 and params["model.dropout"] == 0.2
    assert "model.unfreeze_stages" not in suggest(trial, _base(image_tree, tmp_path, "linear"))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning",
                            "ignore::optuna.exceptions.ExperimentalWarning")  # we call optimize's steps by hand
def test_a_trial_whose_worker_died_is_failed_and_run_again(tmp_path):
    """heartbeats: a worker killed mid-trial stops beating; the next worker marks its trial failed and
    re-queues the same parameters once."""
    import time

    from medtl.experiments.tune import _storage

    with _storage(f"sqlite:///{tmp_path / 't.db'}", grace_s=1) as rdb:
        study = optuna.create_study(storage=rdb, direction="maximize")
        dead = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
        rdb.record_heartbeat(dead._trial_id)  # what the dead worker's heartbeat thread last wrote
        time.sleep(2.5)
        optuna.storages.fail_stale_trials(study)  # what each worker does before its next trial
        states = [t.state for t in study.get_trials(deepcopy=False)]
        assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
        assert study.trials[1].params == dead.params


def test_an_unreachable_storage_is_one_error_naming_the_url_without_its_password(image_tree, tmp_path):
    base = _base(image_tree, tmp_path)
    with pytest.raises(MedtlError, match=r"postgres:\*\*\*@127\.0\.0\.1:1/x: .*refused.*leave out --storage") as err:
        tune(base, 1, tmp_path / "t", storage="postgresql://postgres:secret@127.0.0.1:1/x")
    assert "secret" not in str(err.value)
    with pytest.raises(MedtlError, match="no database driver for this URL"):
        tune(base, 1, tmp_path / "t", storage="mysql://u@127.0.0.1:1/x")


def test_tuning_auto_is_refused_with_the_fix(image_tree, tmp_path):
    with pytest.raises(MedtlError, match="--strategy linear, partial or full"):
        tune(_base(image_tree, tmp_path, strategy="auto"), 1, tmp_path / "tune")
    assert not (tmp_path / "tune").exists()
