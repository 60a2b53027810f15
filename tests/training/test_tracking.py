"""Trackers as fit hooks (`--track`): a tiny run logged to MLflow and TensorBoard is read back through MLflow's
client and TensorBoard's event reader: the config, every epoch of the fit, the final metrics with their
intervals, the figures and the run folder."""

from __future__ import annotations

import json
import math
import warnings

import pytest
from helpers import TINY

import medtl
from medtl.core.config import RunConfig, apply_overrides
from medtl.core.errors import MedtlError
from medtl.training import tracking

mlflow = pytest.importorskip("mlflow", reason="the track extra is not installed (pip install -e '.[track]')")
pytest.importorskip("tensorboard", reason="the track extra is not installed (pip install -e '.[track]')")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    from helpers import write_tree

    tmp = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDTL_CACHE", str(tmp / "cache"))
        run = medtl.train(write_tree(tmp / "data"), **TINY, out=str(tmp / "runs"), name="t",
                          track=["mlflow", f"tensorboard:{tmp / 'tb'}"])
    return run, tmp


def test_mlflow_holds_the_config_each_epoch_the_final_metrics_and_the_run_folder(tracked_run):
    from mlflow.tracking import MlflowClient

    run, tmp = tracked_run
    record = json.loads((run.path / "tracking.json").read_text())["mlflow"]
    assert record["uri"] == f"sqlite:///{(tmp / 'runs' / 'mlflow' / 'mlflow.db').resolve()}"  # beside the runs
    client = MlflowClient(record["uri"])
    parent = client.get_run(record["run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "t"
    assert parent.data.params["model.backbone"] == "resnet18" and parent.data.params["train.epochs"] == "2"
    metrics = json.loads((run.path / "metrics.json").read_text())
    test = metrics["splits"]["test"]
    assert parent.data.metrics["test_accuracy"] == pytest.approx(test["accuracy"])
    lo, hi = test["ci95"]["accuracy"]
    assert parent.data.metrics["test_accuracy_ci95_lo"] == pytest.approx(lo)
    assert parent.data.metrics["test_accuracy_ci95_hi"] == pytest.approx(hi)
    [child] = client.search_runs([record["experiment_id"]], f"tags.mlflow.parentRunId = '{record['run_id']}'")
    assert child.info.run_name == "full 32 px" and child.info.status == "FINISHED"
    history = [h.value for h in client.get_metric_history(child.info.run_id, "val_loss")]
    rows = (run.path / "history.csv").read_text().splitlines()[1:]
    assert len(history) == len(rows) == metrics["epochs_run"]
    assert [h.step for h in client.get_metric_history(child.info.run_id, "val_loss")] == [1, 2]
    names = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"metrics.json", "config.yaml", "checkpoint.pt", "curves.png", "history.csv"} <= names
    assert "run.lock" not in names


def test_tensorboard_event_files_hold_each_epoch_and_the_final_metrics(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, tmp = tracked_run
    events = EventAccumulator(str(tmp / "tb" / "t"), size_guidance={"images": 0}).Reload()
    history = [line.split(",") for line in (run.path / "history.csv").read_text().splitlines()]
    column = history[0].index("val_auc")
    read = events.Scalars("full 32 px/val_auc")
    assert [e.step for e in read] == [1, 2]
    assert [e.value for e in read] == pytest.approx([float(r[column]) for r in history[1:]], rel=1e-6)
    test = json.loads((run.path / "metrics.json").read_text())["splits"]["test"]
    [auc] = events.Scalars("final/test_auc")
    assert math.isclose(auc.value, test["auc"], rel_tol=1e-6)
    assert "figures/curves" in events.Tags()["images"]
    assert "config" in {t.split("/")[0] for t in events.Tags()["tensors"]}


def test_the_card_goes_to_the_tracked_runs(tracked_run, tmp_path):
    from mlflow.tracking import MlflowClient

    run, _ = tracked_run
    card = tmp_path / "model_card.md"
    card.write_text("# card\n")
    assert sorted(tracking.attach(run.folder, [card], "card")) == ["mlflow", "tensorboard"]
    record = json.loads((run.path / "tracking.json").read_text())["mlflow"]
    assert [a.path for a in MlflowClient(record["uri"]).list_artifacts(record["run_id"], "card")] == \
        ["card/model_card.md"]


def test_a_tracker_is_checked_when_the_config_is_made_and_before_anything_is_written(monkeypatch):
    with pytest.raises(MedtlError, match=r"runtime.track=wandb is not a tracker"):
        apply_overrides(RunConfig(), {"runtime.track": "wandb"})
    with pytest.raises(MedtlError, match=r"names a tracker twice"):
        apply_overrides(RunConfig(), {"runtime.track": "mlflow,mlflow:/tmp/x"})
    cfg = apply_overrides(RunConfig(), {"runtime.track": ["mlflow:/tmp/x", "tensorboard"]})
    assert cfg.runtime.track == ("mlflow:/tmp/x", "tensorboard")
    real = tracking.runs.importlib.util.find_spec
    monkeypatch.setattr(tracking.runs.importlib.util, "find_spec",
                        lambda name: None if name == "mlflow" else real(name))
    with pytest.raises(MedtlError, match=r"needs the mlflow package, which is not installed; pip install"):
        tracking.require(cfg)


def test_every_auto_candidate_is_given_the_runs_hooks(monkeypatch):
    """auto's candidates train through the function `run_strategy` hands to `choose`: the run's hooks come
    first in every call, before the candidate's own."""
    from medtl.training import train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train", lambda p, model, progress, hooks=(): seen.append(list(hooks)))

    class Outcome:
        p = model = result = None
        record: dict = {}

    def fake_choose(p, train_fn, progress, prepare_seconds):
        train_fn("linear", None, False, ["auto's own"])
        train_fn("full", None, False, ["auto's own"])
        return Outcome()
    monkeypatch.setattr(train_module, "choose", fake_choose)
    train_module.run_strategy(None, None, False, None, 0.0, ["tracker"])
    assert seen == [["tracker", "auto's own"], ["tracker", "auto's own"]]


def test_a_study_is_one_mlflow_run_with_its_points_nested_under_it(tmp_path, monkeypatch):
    """Issue 35: a study's grid points are nested runs of the study's MLflow run, which holds the report; a
    second worker on the finished study finds the same study run, not a new one."""
    from helpers import write_tree
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MEDTL_CACHE", str(tmp_path / "cache"))
    data = write_tree(tmp_path / "data", train=12, test=4)
    spec = tmp_path / "study.yaml"
    spec.write_text(f"name: s\nout: {tmp_path / 'out'}\nbase:\n  data: {{path: {data}, image_size: 32}}\n"
                    "  model: {backbone: resnet18, weights: none, strategy: scratch}\n"
                    "  train: {epochs: 1, batch_size: 16}\n  runtime: {track: [mlflow]}\ngrid:\n  seed: [0, 1]\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a seed-only grid's figures have a legend entry too
        medtl.study(spec)
    study = json.loads((tmp_path / "out" / "s" / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(study["uri"])
    parent = client.get_run(study["run_id"])
    assert parent.info.run_name == "study s" and parent.info.status == "FINISHED"
    assert {"report/report.html", "report/report.csv"} <= {a.path for a in client.list_artifacts(study["run_id"],
                                                                                               "report")}
    points = client.search_runs([study["experiment_id"]], f"tags.mlflow.parentRunId = '{study['run_id']}'")
    folders = sorted((tmp_path / "out" / "s" / "runs").glob("*/tracking.json"))
    assert len(folders) == 2
    assert sorted(p.info.run_id for p in points) == sorted(json.loads(f.read_text())["mlflow"]["run_id"]
                                                            for f in folders)
    medtl.study(spec)  # nothing left to run: the same study run, no second one
    again = client.search_runs([study["experiment_id"]], "tags.`medtl.study` != ''")
    assert [r.info.run_id for r in again] == [study["run_id"]]
