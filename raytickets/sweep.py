"""The distributed ticket sweep: `python -m raytickets.sweep --config configs/smoke.yaml`.

Three seams, as Ray Tune draws them: *what to try* (OptunaSearch with a seeded TPE sampler, scored by a
trial's best round, or an exhaustive grid), *when to stop* (ASHA on the per-round reports, each trial
ranked only against trials of its own task), and *how to run one* (`trial.py`: a Tune function trainable
that drives one trajectory on Ray Train workers). `cluster.py` connects and checks before any trial.

Results land in `<storage_path>/<name>/results` (Parquet, keyed by (trial, round, kind): a retry or a
resume rewrites the same keys and never duplicates a row); trajectory state under `.../work`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import itertools
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from . import config, mtl_sweep
from .cluster import check_resources, check_storage, connect, trial_resources
from .config import SweepConfig
from .errors import ConfigError, RayticketsError
from .transfer import job_of, plan as transfer_plan
from .trial import JOB_KEY, PACK_KEY, results_dir, sweep_dir, trial_driver, work_dir
from .trial import remove_leftover_placement_groups

MAX_ROUNDS = 1000  # ASHA's max_t: above any trajectory's last round


def load_config(path: str | None, overrides: list[str]) -> SweepConfig:
    """`config.load` of a sweep, with its local paths made absolute (Ray workers run in other directories)."""
    return absolute_paths(config.load(SweepConfig, path, overrides))


def _absolute(path: str) -> str:
    """A local path made absolute; a URI (s3://...) as it is."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def absolute_paths(cfg: SweepConfig) -> SweepConfig:
    data = cfg.ticket.data
    if data.glue_dir:
        data.glue_dir = _absolute(data.glue_dir)
    cfg.storage_path = _absolute(cfg.storage_path)
    # Tokenise once per sweep into its own work dir, read by every trial (never per trial).
    data.cache_dir = _absolute(data.cache_dir) if data.cache_dir else str(work_dir(cfg) / "data")
    if Path(cfg.ticket.model).expanduser().is_dir():
        cfg.ticket.model = _absolute(cfg.ticket.model)
    if cfg.results_dir:
        cfg.results_dir = _absolute(cfg.results_dir)
    if cfg.work_dir:
        cfg.work_dir = _absolute(cfg.work_dir)
    if cfg.search.transfer and cfg.search.transfer.source != SELF:
        cfg.search.transfer.source = _absolute(cfg.search.transfer.source)
    if cfg.search.mtl is not None:
        mtl_sweep.absolute_paths(cfg, _absolute)
    return cfg


SELF = "self"  # search.transfer.source: this config's own tickets, found by the same command first


def stages(cfg: SweepConfig) -> list[SweepConfig]:
    """The sweeps one command runs, in order: `cfg` itself, or — with `search.transfer.source: self` (Chen et
    al.'s whole experiment: IMP on mlm and the GLUE tasks, then the transfer matrix) — first the ticket sweep
    (the search space, no transfer), then the transfer sweep `<name>-transfer` on its results. Both write one
    results root and share one work dir, so the transfer stage reads the targets' own tickets and any
    trajectory it must extend from the first stage instead of retraining them. `search.mtl.tickets: self` runs
    the same two stages for multi-task learning (`mtl_sweep.stages`)."""
    if cfg.search.mode == "mtl":
        return mtl_sweep.stages(cfg, results_dir)
    t = cfg.search.transfer
    if t is None or t.source != SELF:
        return [cfg]
    tickets = copy.deepcopy(cfg)
    tickets.search.transfer = None
    tasks = set(_tasks(tickets))
    unknown = [task for task in t.sources if task not in tasks]
    if unknown:
        raise ConfigError(f"search.transfer.sources: {unknown[0]!r} is not a task of the first stage's search "
                          f"space (source: self); its tasks: {', '.join(sorted(tasks))}")
    transfer = copy.deepcopy(cfg)
    transfer.name = f"{cfg.name}-transfer"
    transfer.results_dir = results_dir(tickets)
    transfer.work_dir = str(work_dir(tickets))
    transfer.search.transfer.source = results_dir(tickets)
    transfer.search.space = {}  # the trials are the transfer jobs (their targets and seeds)
    transfer.search.mode, transfer.search.num_samples, transfer.search.scheduler = "grid", 1, "none"
    return [tickets, transfer]


def param_space(cfg: SweepConfig, jobs: list[dict] | None = None) -> dict:
    """Tune's search space from the YAML one: choices, (log-)uniform floats, integer ranges, grids; `jobs` (a
    transfer sweep's, `transfer.plan`) crossed with it."""
    from ray import tune

    if cfg.search.trajectories_per_trial > 1:
        return {PACK_KEY: tune.grid_search(packed_grid(cfg, jobs))}
    space = {JOB_KEY: tune.grid_search(jobs)} if jobs else {}
    for key, spec in cfg.search.space.items():
        if cfg.search.mode == "grid":
            values = spec.values if spec.values is not None else _grid_values(spec)
            space[key] = tune.grid_search(values)
        elif spec.values is not None:
            space[key] = tune.choice(spec.values)
        elif spec.type == "int":
            space[key] = tune.randint(int(spec.low), int(spec.high) + 1)
        elif spec.log:
            space[key] = tune.loguniform(spec.low, spec.high)
        else:
            space[key] = tune.uniform(spec.low, spec.high)
    return space


def packed_grid(cfg: SweepConfig, jobs: list[dict] | None = None) -> list[list[dict]]:
    """The grid's points (the product of the space's values and the transfer jobs, the last varying fastest), in
    groups of `search.trajectories_per_trial`: one group per trial. The same config always packs the same groups."""
    keys = list(cfg.search.space) + ([JOB_KEY] if jobs else [])
    values = [spec.values if spec.values is not None else _grid_values(spec) for spec in cfg.search.space.values()]
    points = [dict(zip(keys, combo)) for combo in itertools.product(*values, *([jobs] if jobs else []))]
    k = cfg.search.trajectories_per_trial
    return [points[i:i + k] for i in range(0, len(points), k)]


def _grid_values(spec) -> list:
    n = int(round((spec.high - spec.low) / spec.step)) + 1
    values = [spec.low + i * spec.step for i in range(n)]
    return [int(v) for v in values] if spec.type == "int" else [round(v, 10) for v in values]


def task_of(default: str, trial_config: dict) -> str:
    """The task a trial trains (its ASHA group): sampled, a transfer target, or the template's."""
    if JOB_KEY in trial_config:
        return job_of(trial_config[JOB_KEY]).task
    return trial_config.get("task", default)


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

    metric = cfg.search.metric
    mtl = cfg.search.mode == "mtl"  # every (arm, seed) run is one trial that trains to its end: no scheduler
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, sweep=config.to_dict(cfg)), {"cpu": cfg.resources.trial_driver_cpus}
    )
    if restore:
        # tuner.pkl leaves the param space out (Ray 2.60 `TunerInternal.__getstate__`): without it, a sweep killed
        # before Tune saved its searcher's state resumes by generating trials from an empty space (the template's
        # defaults: another task, another rate)
        return tune.Tuner.restore(sweep_dir(cfg), trainable=trainable, param_space=space, resume_unfinished=True,
                                  resume_errored=True)
    search_alg = None
    if cfg.search.mode == "optuna":  # a trial stopped early is reported as its best round so far
        search_alg = OptunaSearch(metric=f"best_{metric}", mode="max", seed=cfg.search.seed)
    scheduler = None
    if cfg.search.scheduler == "asha" and not mtl:
        # ASHA stops every trial that reaches max_t reports. A searched prune.rounds or target_sparsity
        # can take a trial past the template's rounds, and trajectories end by themselves anyway, so
        # max_t is only an upper bound on rounds (rungs beyond the last round are never reached).
        scheduler = PerTaskASHA(
            functools.partial(task_of, cfg.ticket.task), time_attr="training_iteration", metric=metric, mode="max",
            max_t=MAX_ROUNDS, grace_period=cfg.search.grace_period, reduction_factor=cfg.search.reduction_factor,
        )
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler, num_samples=1 if mtl else cfg.search.num_samples,
            max_concurrent_trials=cfg.search.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=cfg.storage_path,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures), verbose=1,
            callbacks=[PlacementGroupSweeper()],
        ),
    )


def prepare_data(cfg: SweepConfig, tasks: list[str]) -> None:
    """Tokenise each task once per sweep into the shared cache every trial reads (never per trial)."""
    from .models import load_tokenizer
    from .tickets import tokenize

    tokenizer = load_tokenizer(cfg.ticket.model)
    for name in tasks:
        tokenize(dataclasses.replace(cfg.ticket, task=name), tokenizer)


def plan(cfg: SweepConfig, space: dict) -> str:
    r = cfg.resources
    lines = [
        f"sweep {cfg.name}: {cfg.search.mode} search, {cfg.search.num_samples} sample(s), scheduler {cfg.search.scheduler},"
        f" metric {cfg.search.metric}, up to {cfg.search.max_concurrent_trials} trial(s) at once",
        f"trial: {cfg.ticket.prune.method} pruning, {cfg.ticket.prune.num_rounds()} round(s), model {cfg.ticket.model},"
        f" {r.num_workers} worker(s) x {trial_resources(cfg)}",
        "space: " + ", ".join(f"{k}={_describe(v)}" for k, v in cfg.search.space.items()),
        f"results: {results_dir(cfg)}",
    ]
    if PACK_KEY in space:
        groups = space[PACK_KEY]["grid_search"]
        lines.insert(3, f"packed: {sum(map(len, groups))} grid points as {len(groups)} trial(s) of up to "
                        f"{cfg.search.trajectories_per_trial} trajectories, one Ray Train start-up each")
    return "\n".join(lines)


def _describe(spec) -> str:
    if spec.values is not None:
        return "{" + ", ".join(map(str, spec.values)) + "}"
    return f"[{spec.low}, {spec.high}]" + (" log" if spec.log else "") + (f" step {spec.step}" if spec.step else "")


def summary(cfg: SweepConfig) -> list[dict]:
    """The super ticket of every task and setting, by the analysis' rule (`analysis.best_tickets`)."""
    from .analysis import best_tickets
    from .errors import ResultsError

    try:
        return best_tickets(results_dir(cfg))
    except ResultsError:
        return []  # nothing finished a round


def kept_weights(cfg: SweepConfig) -> tuple[int, float]:
    """(files, mean MB) of the fine-tuned weights kept for export in a local results root."""
    folder = Path(results_dir(cfg)) / "weights"
    sizes = [p.stat().st_size for p in folder.glob("*.safetensors")] if "://" not in results_dir(cfg) else []
    return len(sizes), (float(np.mean(sizes)) / 2**20 if sizes else 0.0)


def run(cfg: SweepConfig, address: str | None = None, resume: bool = False, temp_dir: str | None = None,
        dashboard_port: int | None = None) -> list[dict]:
    """Run (or resume) every stage of `cfg` (`stages`); return the super ticket per task of the last one. On
    `resume`, a stage that never started starts; one that finished restores at once (nothing left to run)."""
    from ray import tune

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
    """Validate, connect, prepare data, run (or resume) one sweep; return the super ticket per task."""
    from ray import tune

    if resume and not tune.Tuner.can_restore(sweep_dir(cfg)):
        raise ConfigError(f"--resume: {sweep_dir(cfg)!r} holds no sweep to resume")
    check_storage(sweep_dir(cfg))
    space = param_space(cfg, transfer_plan(cfg) if cfg.search.transfer else None)
    experiment = mtl_sweep.start(cfg) if cfg.search.mode == "mtl" else None  # its bad input fails here
    if experiment is not None:
        space[mtl_sweep.MTL_KEY] = tune.grid_search(mtl_sweep.runs(experiment))
    context = connect(address, cfg, temp_dir, dashboard_port)
    check_resources(cfg)
    if context is not None and getattr(context, "dashboard_url", None):
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
    print(mtl_sweep.describe(experiment) if experiment is not None else plan(cfg, space), flush=True)
    started = time.time()
    if experiment is not None:
        mtl_sweep.prepare(experiment)
    else:
        prepare_data(cfg, _tasks(cfg))
    grid = make_tuner(cfg, space, restore=resume).fit()
    errors = [r.error for r in grid if r.error is not None]
    print(f"\nsweep finished in {time.time() - started:.0f} s; {len(grid)} trial(s), {len(errors)} failed")
    if experiment is not None:
        mtl_sweep.finish(experiment, started)
        if errors:
            raise RayticketsError(f"{len(errors)} trial(s) failed; first: {root_cause(errors[0])}")
        return []
    best = summary(cfg)
    print("super ticket per task (analysis rule: best ticket mean over seeds, ties to the sparser level):")
    for b in best:
        print(f"  {b['task']:6s} setting {str(b['setting_id'])[:8]}  sparsity {b['sparsity']:.4f}"
              f"  {b['metric_name']} {b['mean']:.4f}  full {b['full_mean']:.4f}  gain {b['gain']:+.4f}"
              f"  seeds {b['seeds']}  p_selection {b['p_selection']:.3g}")
    files, mb = kept_weights(cfg)
    if files:
        print(f"kept weights: {files} round(s), {mb:.1f} MB each (ticket.keep_weights={cfg.ticket.keep_weights})")
    print(f"results: {results_dir(cfg)}", flush=True)
    if errors:
        raise RayticketsError(f"{len(errors)} trial(s) failed; first: {root_cause(errors[0])}")
    return best


def root_cause(error: BaseException) -> str:
    """A trial's failure in one line: the last `SomeError: message` line of Ray's error text (its first line
    only names Ray's actor, in colour codes), e.g. `OSError: [Errno 28] No space left on device`."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt): ", line)]
    return (causes or lines or [type(error).__name__])[-1]


def _tasks(cfg: SweepConfig) -> list[str]:
    tasks = {cfg.ticket.task}
    if "task" in cfg.search.space and cfg.search.space["task"].values:
        tasks = set(cfg.search.space["task"].values)
    if cfg.search.transfer:
        tasks |= set(cfg.search.transfer.targets)
    return sorted(tasks)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m raytickets.sweep", description="Run a distributed ticket sweep.")
    p.add_argument("--config", default="configs/smoke.yaml", help="sweep YAML (default configs/smoke.yaml)")
    p.add_argument("--address", help="auto, host:port or ray://host:port of a cluster (default: embedded local Ray)")
    p.add_argument("--resume", action="store_true", help="restore an interrupted sweep of the same name and storage")
    p.add_argument("--dry-run", action="store_true", help="validate the config and print the plan, run nothing")
    p.add_argument("--temp-dir", help="embedded Ray only: its temp/session directory")
    p.add_argument("--dashboard-port", type=int, help="embedded Ray only: the dashboard's port (default 8265)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="any config field, e.g. search.num_samples=8")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            parts = stages(cfg)
            first = parts[0]
            print(mtl_sweep.describe(mtl_sweep.start(first)) if first.search.mode == "mtl"
                  else plan(first, param_space(first)))
            for stage in parts[1:]:
                if stage.search.mode == "mtl":
                    print(mtl_sweep.describe_stage(stage))
                    continue
                t = stage.search.transfer
                print(f"then sweep {stage.name}: transfer of {', '.join(t.sources) or 'every task'}'s tickets at "
                      f"{', '.join(map(str, t.levels))} to {', '.join(t.targets)}, seeds {t.seeds}, random mask "
                      f"{'on' if t.random else 'off'}, own tickets {'on' if t.own else 'off'}; results: "
                      f"{results_dir(stage)}")
            return 0
        run(cfg, args.address, args.resume, args.temp_dir, args.dashboard_port)
        return 0
    except RayticketsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
