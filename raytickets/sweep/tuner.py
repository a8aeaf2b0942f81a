"""The distributed sweep's driver: validate through the mode, connect, build the Tuner, run every stage.

Three seams, as Ray Tune draws them: *what to try* (the mode's trials, sampled by OptunaSearch with a seeded
TPE sampler or run as a grid), *when to stop* (ASHA on the per-round reports, each trial ranked only against
trials of its own group: its task), and *how to run one* (`trial.py`: a Tune function trainable that runs the
mode's job on Ray Train workers). What the trials are is the mode's (`modes.py`); this module never asks which
mode it runs. `cluster.py` connects and checks before any trial.

Results land in `<storage_path>/<name>/results` (Parquet, keyed by (trial, round, kind): a retry or a resume
rewrites the same keys and never duplicates a row); trajectory state under `.../work`.
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from .. import config
from ..config import SweepConfig
from ..loader import read_config
from ..errors import ConfigError, RayticketsError
from ..store import ResultsStore
from . import modes, tracking
from .capacity import CapacityWatch, check_cluster, limited, preflight, start_timeout_s
from .cluster import check_storage, connect
from .layout import results_dir, sweep_dir, sweep_record, work_dir
from .trial import remove_leftover_placement_groups, trial_driver

MAX_ROUNDS = 1000  # ASHA's max_t: above any trajectory's last round


def load_config(path: str | None, overrides: list[str]) -> SweepConfig:
    """`config.load` of a sweep, checked by its mode, with its local paths made absolute (Ray workers run in
    other directories)."""
    try:
        cfg = config.load(SweepConfig, path, overrides, validate=False)
    except ConfigError:
        if path and (hint := modes.other_command(read_config(path))):  # e.g. an mtl experiment's file
            raise ConfigError(f"config: {path} {hint}") from None
        raise
    return absolute_paths(validate(cfg))


def validate(cfg: SweepConfig) -> SweepConfig:
    """The config's own checks, with the ticket template read only where the mode trains from it, then the mode's."""
    mode = modes.of(cfg)  # an unknown search.mode first: it decides what the rest means
    cfg.validate(reads_ticket=mode.reads_ticket(cfg))
    mode.validate(cfg)
    tracking.check(cfg)
    return cfg


def _absolute(path: str) -> str:
    """A local path made absolute; a URI (s3://...) as it is."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def absolute_paths(cfg: SweepConfig) -> SweepConfig:
    data = cfg.ticket.data
    for name in ("glue_dir", "squad_dir", "squad_train", "squad_dev"):  # trials run in other working directories
        if getattr(data, name):
            setattr(data, name, _absolute(getattr(data, name)))
    cfg.storage_path = _absolute(cfg.storage_path)
    # Tokenise once per sweep into its own work dir, read by every trial (never per trial).
    data.cache_dir = _absolute(data.cache_dir) if data.cache_dir else str(work_dir(cfg) / "data")
    if Path(cfg.ticket.model).expanduser().is_dir():
        cfg.ticket.model = _absolute(cfg.ticket.model)
    if cfg.results_dir:
        cfg.results_dir = _absolute(cfg.results_dir)
    if cfg.work_dir:
        cfg.work_dir = _absolute(cfg.work_dir)
    modes.of(cfg).absolute_paths(cfg, _absolute)
    return cfg


def stages(cfg: SweepConfig) -> list[SweepConfig]:
    """The sweeps one command runs, in order, as the mode says (e.g. the ticket sweep, then the transfer or
    multi-task sweep on its results)."""
    return modes.of(cfg).stages(cfg)


class PerTaskASHA(ASHAScheduler):
    """ASHA whose rungs are kept per task: a trial is stopped only for falling behind trials of its own
    task, never because another task gains more (an RTE trial at chance next to an SST-2 super ticket).
    Everything else is Ray's ASHA; only the bracket a new trial joins is chosen from its task's set."""

    def __init__(self, group_of, **kwargs):
        super().__init__(**kwargs)
        self._group_of = group_of
        self._empty = copy.deepcopy(self._brackets)
        self._groups: dict[str, list] = {}

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)  # validates metric/mode, picks a bracket index
        brackets = self._groups.setdefault(self._group_of(trial.config), copy.deepcopy(self._empty))
        self._trial_info[trial.trial_id] = brackets[self._brackets.index(self._trial_info[trial.trial_id])]


class PlacementGroupSweeper(Callback):
    """Removes the placement groups that ended Train runs leave behind (`trial.leftover_placement_groups`): they
    hold their CPUs and the next trial's workers wait for them forever (ray-project/ray#54305). A trial stopped by
    ASHA is terminated by Tune, so its driver may never reach its own check (`trial.trial_driver`), and a driver
    killed mid-sweep can leave one that outlives its job. Checked when the sweep starts or resumes, when a trial
    ends (finished, stopped, errored or about to be retried), every `every_s` seconds and when the sweep ends."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self._owners: dict[str, str] = {}  # a trial's own placement group (its reports say it) -> trial id
        self._last = 0.0

    def _sweep(self) -> None:
        self._last = time.monotonic()
        remove_leftover_placement_groups(owners=self._owners)

    def _ended(self, trial) -> None:
        if pg := (trial.last_result or {}).get("trial_placement_group"):
            self._owners[pg] = trial.trial_id
        self._sweep()

    def setup(self, **info) -> None:
        self._sweep()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._ended(trial)

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self._last >= self.every_s:  # a stopped trial's controller dies a moment later
            self._sweep()

    def on_experiment_end(self, trials, **info) -> None:
        self._sweep()


def make_tuner(cfg: SweepConfig, space: dict, restore: bool = False):
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    mode = modes.of(cfg)
    metric = cfg.search.metric
    timeout_s = start_timeout_s()
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, sweep=config.to_dict(cfg), start_timeout_s=timeout_s),
        {"cpu": cfg.resources.trial_driver_cpus},
    )
    if restore:
        # tuner.pkl leaves the param space out (Ray 2.60 `TunerInternal.__getstate__`): without it, a sweep killed
        # before Tune saved its searcher's state resumes by generating trials from an empty space (the template's
        # defaults: another task, another rate)
        return tune.Tuner.restore(sweep_dir(cfg), trainable=trainable, param_space=space, resume_unfinished=True,
                                  resume_errored=True)
    search_alg = None
    if mode.searcher == "optuna":  # a trial stopped early is reported as its best round so far
        search_alg = OptunaSearch(metric=f"best_{metric}", mode="max", seed=cfg.search.seed)
    scheduler = None
    if cfg.search.scheduler == "asha" and mode.uses_scheduler:
        # ASHA stops every trial that reaches max_t reports. A searched prune.rounds or target_sparsity
        # can take a trial past the template's rounds, and trajectories end by themselves anyway, so
        # max_t is only an upper bound on rounds (rungs beyond the last round are never reached).
        scheduler = PerTaskASHA(
            mode.group_of(cfg) or (lambda trial_config: ""), time_attr="training_iteration", metric=metric,
            mode="max", max_t=MAX_ROUNDS, grace_period=cfg.search.grace_period,
            reduction_factor=cfg.search.reduction_factor,
        )
    # search.max_concurrent_trials, lowered to the whole trials the live nodes hold and re-read as they change
    search_alg = limited(search_alg, cfg.search.max_concurrent_trials)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler,
            num_samples=mode.samples(cfg),
        ),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=cfg.storage_path,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures), verbose=1,
            callbacks=[PlacementGroupSweeper(), CapacityWatch(cfg, search_alg, timeout_s), *tracking.callbacks(cfg)],
        ),
    )


def run(cfg: SweepConfig, address: str | None = None, resume: bool = False, temp_dir: str | None = None,
        dashboard_port: int | None = None) -> list[dict]:
    """Run (or resume) every stage of `cfg` (`stages`); return the last stage's summary (the super ticket per
    task of a ticket sweep). On `resume`, a stage that never started starts; one that finished restores at once."""
    from ray import tune

    preflight(cfg, address, dashboard_port)
    parts = stages(cfg)
    if len(parts) == 1:
        return run_stage(cfg, address, resume, temp_dir, dashboard_port)
    if resume and not tune.Tuner.can_restore(sweep_dir(parts[0])):
        raise ConfigError(f"--resume: {sweep_dir(parts[0])!r} holds no sweep to resume")
    best: list[dict] = []
    for i, stage in enumerate(parts, 1):
        print(f"\n== stage {i}/{len(parts)}: {stage.name} ==", flush=True)
        best = run_stage(stage, address, resume and tune.Tuner.can_restore(sweep_dir(stage)), temp_dir, dashboard_port)
    return best


def run_stage(cfg: SweepConfig, address: str | None = None, resume: bool = False, temp_dir: str | None = None,
              dashboard_port: int | None = None) -> list[dict]:
    """Validate, connect, prepare data, run (or resume) one sweep; return its mode's summary."""
    from ray import tune

    mode = modes.of(cfg)
    if resume and not tune.Tuner.can_restore(sweep_dir(cfg)):
        raise ConfigError(f"--resume: {sweep_dir(cfg)!r} holds no sweep to resume")
    state = mode.start(cfg)  # its bad input fails here, before a cluster starts or a directory is made
    space = mode.space(cfg, state)
    check_storage(sweep_dir(cfg))  # it leaves nothing behind, so a refusal below leaves storage_path as it was
    context = connect(address, cfg, temp_dir, dashboard_port)
    check_cluster(cfg, address)  # the need against the live nodes, before any directory is made
    if context is not None and getattr(context, "dashboard_url", None):
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
    print(mode.describe(cfg, state, space), flush=True)
    started = time.time()
    mode.prepare(cfg, state)
    ResultsStore(results_dir(cfg)).write_sweep_record(sweep_record(cfg))  # the report's header and cost
    grid = make_tuner(cfg, space, restore=resume).fit()
    errors = [r.error for r in grid if r.error is not None]
    print(f"\nsweep finished in {time.time() - started:.0f} s; {len(grid)} trial(s), {len(errors)} failed")
    best = mode.finish(cfg, state, started)
    if errors:
        raise RayticketsError(f"{len(errors)} trial(s) failed; first: {root_cause(errors[0])}")
    return best


def root_cause(error: BaseException) -> str:
    """A trial's failure in one line: the last `SomeError: message` line of Ray's error text (its first line
    only names Ray's actor, in colour codes), e.g. `OSError: [Errno 28] No space left on device`."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt): ", line)]
    return (causes or lines or [type(error).__name__])[-1]
