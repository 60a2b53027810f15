"""MLflow as a tracker: one MLflow run per medtl run (its resolved config as parameters, its final metrics with
their 95 % intervals, the run folder as artifacts), one nested run per fit (auto's candidates: their epochs);
a study is one MLflow run with each grid point's run nested under it (`study_run`) and its report as artifacts.

Local by default: a SQLite store and an artifact folder beside the run folders (`<out>/mlflow`; `mlflow ui
--backend-store-uri sqlite:///<out>/mlflow/mlflow.db` shows it). `mlflow:DIR` puts that store in DIR;
`mlflow:URI` (http://, https://, postgresql://, sqlite://...) logs where the user names, and only then does
anything leave the machine. MLflow's own usage telemetry is switched off before it is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

from medtl.core.config import RunConfig
from medtl.core.runfolder import RunFolder
from medtl.evaluation.records import RunMetrics
from medtl.training.fitstate import FitState
from medtl.training.tracking.base import Tracker, epoch_values, final_values, flat_config

TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}  # MLflow's documented switches
EXPERIMENT = "medtl"
SKIP = {"run.lock"}  # the run folder's files that are not results


def store(target: str, runs_dir: Path) -> tuple[str, str | None]:
    """The tracking URI and, for a local store, its artifact location (default: `mlflow/` in `runs_dir`, the
    folder the run folders are in)."""
    if "://" in target:
        return target, None
    root = (Path(target) if target else runs_dir / "mlflow").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


class MlflowTracker(Tracker):
    kind = "mlflow"

    def __init__(self, target: str, cfg: RunConfig, folder: RunFolder, before: dict, reopen: bool = False,
                 parent: str | None = None):
        self.uri, artifacts = (target, None) if reopen else store(target, folder.path.parent)
        self.client = client(self.uri)
        if before.get("uri") == self.uri and before.get("run_id"):  # resumed (or reopened): the same run
            self.run_id = before["run_id"]
            self.experiment = before["experiment_id"]
            if not reopen:
                self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.experiment = experiment(self.client, artifacts)
            tags = {"medtl.backbone": cfg.model.backbone, "medtl.strategy": cfg.model.strategy,
                    **({"mlflow.parentRunId": parent} if parent else {})}  # a study's point: nested under it
            self.run_id = self.client.create_run(self.experiment, run_name=folder.path.name, tags=tags).info.run_id
            self._params(flat_config(cfg))
        self.child: str | None = None

    def _params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _metrics(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        items = [Metric(k, v, stamp, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def record(self) -> dict:
        return {"uri": self.uri, "experiment_id": self.experiment, "run_id": self.run_id}

    def before_fit(self, plan, state: FitState) -> None:
        tags = {"mlflow.parentRunId": self.run_id}
        self.child = self.client.create_run(self.experiment, run_name=plan.label or "fit", tags=tags).info.run_id

    def after_epoch(self, state: FitState) -> None:
        if self.child is not None:
            self._metrics(self.child, epoch_values(state), step=state.epoch)

    def after_fit(self, state: FitState) -> None:
        if self.child is not None:
            self._metrics(self.child, {"best_epoch": float(state.best_epoch)}, step=state.epoch)
            self.client.set_terminated(self.child, status="FINISHED")
            self.child = None

    def after_run(self, folder: RunFolder, metrics: RunMetrics) -> None:
        self._metrics(self.run_id, final_values(metrics))
        for path in sorted(folder.path.iterdir()):
            if path.name in SKIP:
                continue
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))

    def add_files(self, paths: list[Path], under: str) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), under)

    def close(self, status: str) -> None:
        if self.child is not None:  # a fit that raised (auto's candidate out of memory, a pruned trial)
            self.client.set_terminated(self.child, status=status if status != "FINISHED" else "FAILED")
            self.child = None
        self.client.set_terminated(self.run_id, status=status)


def client(uri: str):
    """An MLflow client on `uri`, MLflow's usage telemetry switched off before it is imported."""
    os.environ.update(TELEMETRY_OFF)
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def experiment(mlflow_client, artifacts: str | None) -> str:
    """The id of medtl's experiment in the store, made on first use."""
    found = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    return mlflow_client.create_experiment(EXPERIMENT, artifact_location=artifacts)


def study_run(target: str, runs_dir: Path, name: str, key: str) -> dict:
    """The MLflow run of the study `name` (`key`: the digest of its grid), found by its tags in the store or
    made: every worker of the study nests its points under the same one."""
    uri, artifacts = store(target, runs_dir)
    mlflow_client = client(uri)
    experiment_id = experiment(mlflow_client, artifacts)
    found = mlflow_client.search_runs([experiment_id], f"tags.`medtl.study` = '{key}'", max_results=1,
                                      order_by=["attributes.start_time ASC"])
    run_id = found[0].info.run_id if found else mlflow_client.create_run(
        experiment_id, run_name=f"study {name}", tags={"medtl.study": key}).info.run_id
    return {"uri": uri, "experiment_id": experiment_id, "run_id": run_id}


def end_study_run(record: dict, files: list[Path]) -> None:
    """The study's report files added to its MLflow run, which is then finished."""
    mlflow_client = client(record["uri"])
    for path in files:
        mlflow_client.log_artifact(record["run_id"], str(path), "report")
    mlflow_client.set_terminated(record["run_id"], status="FINISHED")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
