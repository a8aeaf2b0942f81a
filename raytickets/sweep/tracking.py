"""Experiment trackers (`tracking:`), the way Ray Tune users already add them: Ray's own MLflow and W&B logger
callbacks on the Tuner, one tracker run per trial, each round's report as metrics at step = round.

The per-step training losses of a round's fine-tunes (full model, ticket, each baseline) travel in the round's
report (`trial.STEP_LOSSES`) and are logged as `train_loss/<kind>` at step = the kind's running step count in the
trial, so a trajectory reads as one loss curve per kind across its rounds. TensorBoard needs nothing: Tune writes
event files into each trial's folder under `<storage_path>/<name>/` whenever tensorboardX is installed (it is, with
ray[tune]); `tensorboard --logdir <storage_path>/<name>` reads them.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback  # imports without wandb; its setup needs it

from ..config import SweepConfig
from ..errors import ConfigError
from .layout import results_dir
from .trial import STEP_LOSSES


def mlflow_uri(cfg: SweepConfig) -> str:
    """The tracking URI: the config's, else a SQLite store in the results root (`mlflow ui --backend-store-uri
    <uri>` opens it). Not a `file:` store: MLflow 3.17 refuses new file stores unless MLFLOW_ALLOW_FILE_STORE is
    set ("in maintenance mode ... migrate to a database backend")."""
    m = cfg.tracking.mlflow
    if m.tracking_uri:
        return m.tracking_uri
    root = results_dir(cfg)
    if "://" in root:
        raise ConfigError(f"tracking.mlflow.tracking_uri: the results root {root!r} is not on this machine; give a "
                          "tracking server (http://host:5000) or a database URI")
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def check(cfg: SweepConfig) -> None:
    """Every tracker's package and settings, before any cluster starts."""
    t = cfg.tracking
    if t.mlflow is not None:
        _need("mlflow", "tracking.mlflow")
        mlflow_uri(cfg)
    if t.wandb is not None:
        _need("wandb", "tracking.wandb")


def _need(package: str, field: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{field}: needs the {package} package (pip install {package}); or remove {field}")


def callbacks(cfg: SweepConfig) -> list:
    """The Tune callbacks of `cfg.tracking` (none when it names no tracker)."""
    t, out = cfg.tracking, []
    if t.mlflow is not None:
        uri = mlflow_uri(cfg)
        if not t.mlflow.tracking_uri:
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        name = t.mlflow.experiment or cfg.name
        if not t.mlflow.tracking_uri:  # artifacts beside the store, not in ./mlruns of whatever directory this is
            _experiment(uri, name, f"{Path(uri[len('sqlite:///'):]).parent / 'mlflow-artifacts'}")
        out.append(StepLossMLflow(uri, experiment_name=name, tags={"raytickets.sweep": cfg.name}))
    if t.wandb is not None:
        mode = t.wandb.mode
        if mode == "auto":  # no key: write the run locally (`wandb sync` uploads it later)
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        if mode == "offline":  # Ray's callback asks for an API key unless the environment says offline
            os.environ["WANDB_MODE"] = "offline"
        root = results_dir(cfg)
        where = {"dir": root} if "://" not in root else {}  # offline runs in <results>/wandb, not a Ray worker's cwd
        if where:
            Path(root).mkdir(parents=True, exist_ok=True)
        out.append(StepLossWandb(project=t.wandb.project or cfg.name, group=cfg.name, mode=mode, **where))
    return out


def _experiment(uri: str, name: str, artifacts: str) -> None:
    """Create the experiment with its artifact location unless it exists (Ray's callback then finds it by name)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=Path(artifacts).as_uri())


def step_losses(counters: dict, result: dict) -> list[tuple[str, float, int]]:
    """(metric key, loss, step) of each training step a round report carries, steps counted per kind in the trial."""
    out = []
    for kind, losses in (result.get(STEP_LOSSES) or {}).items():
        for loss in losses:
            out.append((f"train_loss/{kind}", float(loss), counters[kind]))
            counters[kind] += 1
    return out


class StepLossMLflow(MLflowLoggerCallback):
    """Ray's MLflow logger (one run per trial, round metrics at step = round), plus each round's per-step losses."""

    def setup(self, *args, **kwargs):
        super().setup(*args, **kwargs)
        self._steps: dict = defaultdict(lambda: defaultdict(int))  # trial -> kind -> next step

    def log_trial_result(self, iteration: int, trial, result: dict):
        from mlflow.entities import Metric

        rows = step_losses(self._steps[trial], result)
        if rows:
            client = self.mlflow_util._get_client()
            run_id = self._trial_runs[trial]
            stamp = int(result.get("timestamp", 0) * 1000)
            for i in range(0, len(rows), 1000):  # MLflow's log_batch takes at most 1000 metrics
                client.log_batch(run_id, metrics=[Metric(k, v, stamp, s) for k, v, s in rows[i:i + 1000]])
        super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if k != STEP_LOSSES})


class StepLossWandb(WandbLoggerCallback):
    """Ray's W&B logger (one run per trial), with each round's per-step losses logged before the round's metrics."""

    def log_trial_result(self, iteration: int, trial, result: dict):
        steps = self.__dict__.setdefault("_steps", defaultdict(lambda: defaultdict(int)))
        for key, loss, step in step_losses(steps[trial], result):
            super().log_trial_result(iteration, trial, {key: loss, f"{key}_step": step,
                                                        "training_iteration": result.get("training_iteration")})
        super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if k != STEP_LOSSES})
