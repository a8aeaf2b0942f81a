"""The ticket sweeps, `search.mode: grid` and `search.mode: optuna`: one IMP trajectory per trial.

`grid` runs every point of the space (Tune's BasicVariantGenerator); `optuna` samples it with a seeded TPE
sampler, scored by a trial's best round. Either may stop trials early with ASHA, each trial ranked only against
trials of its own task. With `search.transfer` the trials are the transfer experiment's jobs (`transfer.py`);
with `search.transfer.source: self` one command runs the ticket sweep first, then the transfer sweep on it.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import SweepConfig
from ..errors import ConfigError
from .cluster import trial_resources
from .layout import results_dir, work_dir
from .modes import SweepMode, TrialJob
from .transfer import job_of, plan as transfer_plan
from .trial import JOB_KEY, PACK_KEY, worker_loop

SELF = "self"  # search.transfer.source: this config's own tickets, found by the same command first


class TicketSweep(SweepMode):
    summary = "one IMP trajectory (or transfer job) per trial"

    def __init__(self, name: str, searcher: str | None):
        self.name, self.searcher = name, searcher

    def validate(self, cfg: SweepConfig) -> None:
        s = cfg.search
        if s.mtl is not None:
            raise ConfigError(f"search.mtl: read only in mtl mode; search.mode is {s.mode}")
        if s.trajectories_per_trial > 1 and (self.searcher is not None or s.scheduler != "none"):
            raise ConfigError(f"search.trajectories_per_trial: {s.trajectories_per_trial} needs mode: grid and "
                              "scheduler: none (a scheduler or Optuna judges one trajectory a trial)")
        if self.searcher is None:
            for key, spec in s.space.items():
                if spec.values is None and spec.step is None:
                    raise ConfigError(f"search.space.{key}: grid mode needs values or a step")

    def absolute_paths(self, cfg: SweepConfig, absolute: Callable[[str], str]) -> None:
        if cfg.search.transfer and cfg.search.transfer.source != SELF:
            cfg.search.transfer.source = absolute(cfg.search.transfer.source)

    def stages(self, cfg: SweepConfig) -> list[SweepConfig]:
        """`cfg` itself, or — with `search.transfer.source: self` (Chen et al.'s whole experiment: IMP on mlm and
        the GLUE tasks, then the transfer matrix) — first the ticket sweep (the search space, no transfer), then
        the transfer sweep `<name>-transfer` on its results. Both write one results root and share one work dir,
        so the transfer stage reads the targets' own tickets and any trajectory it must extend from the first
        stage instead of retraining them."""
        t = cfg.search.transfer
        if t is None or t.source != SELF:
            return [cfg]
        tickets = copy.deepcopy(cfg)
        tickets.search.transfer = None
        tasks = set(tasks_of(tickets))
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

    def start(self, cfg: SweepConfig) -> list[dict] | None:
        """A transfer sweep's jobs (its sources read and checked here), else None."""
        return transfer_plan(cfg) if cfg.search.transfer else None

    def space(self, cfg: SweepConfig, jobs: list[dict] | None) -> dict:
        return param_space(cfg, jobs)

    def describe(self, cfg: SweepConfig, jobs, space: dict) -> str:
        return plan(cfg, space, jobs)

    def cost(self, cfg: SweepConfig, jobs):
        from .cost import ticket_sweep_cost

        return ticket_sweep_cost(cfg, jobs)

    def describe_stage(self, cfg: SweepConfig) -> str:
        t = cfg.search.transfer
        return (f"then sweep {cfg.name}: transfer of {', '.join(t.sources) or 'every task'}'s tickets at "
                f"{', '.join(map(str, t.levels))} to {', '.join(t.targets)}, seeds {t.seeds}, random mask "
                f"{'on' if t.random else 'off'}, one-shot pruning {'on' if t.oneshot else 'off'}, own tickets {'on' if t.own else 'off'}; results: {results_dir(cfg)}")

    def prepare(self, cfg: SweepConfig, jobs) -> None:
        """Tokenise each task once per sweep into the shared cache every trial reads (never per trial)."""
        from ..config import resolve
        from ..models import load_tokenizer
        from ..tickets import tokenize

        tokenizer = load_tokenizer(cfg.ticket.model)
        for name in tasks_of(cfg):  # with the task's per_task data settings (SQuAD's length and stride)
            tokenize(resolve(dataclasses.replace(cfg.ticket, task=name)), tokenizer)

    def group_of(self, cfg: SweepConfig) -> Callable[[dict], str]:
        default = cfg.ticket.task

        def task_of(trial_config: dict) -> str:
            """The task a trial trains (its ASHA group): sampled, a transfer target, or the template's."""
            if JOB_KEY in trial_config:
                return job_of(trial_config[JOB_KEY]).task
            return trial_config.get("task", default)

        return task_of

    def trial_job(self, cfg: SweepConfig, params: dict, trial: dict):
        from ..config import to_dict

        return TrialJob(worker_loop, {"sweep": to_dict(cfg), "params": params, "trial": trial["id"],
                                      "trial_pg": trial["pg"]})

    def finish(self, cfg: SweepConfig, jobs, started: float) -> list[dict]:
        best = summary(cfg)
        print("super ticket per task (analysis rule: best ticket mean over seeds, ties to the sparser level; a full "
              "model not above chance by the margin did not learn and has none):")
        for b in best:
            head = f"  {b['task']:6s} setting {str(b['setting_id'])[:8]}  "
            chance = f"chance {b['chance']:.4f} + {b['min_above_chance']:.4f}"
            if not b["learned"]:
                print(f"{head}did not learn: {b['metric_name']} full {b['full_mean']:.4f} ≤ {chance}; no ticket")
                continue
            print(f"{head}sparsity {b['sparsity']:.4f}  {b['metric_name']} {b['mean']:.4f}  full {b['full_mean']:.4f}"
                  f"  {chance}  gain {b['gain']:+.4f}  seeds {b['seeds']}  p_selection {b['p_selection']:.3g}")
        files, mb = kept_weights(cfg)
        if files:
            print(f"kept weights: {files} round(s), {mb:.1f} MB each (ticket.keep_weights={cfg.ticket.keep_weights})")
        print(f"results: {results_dir(cfg)}", flush=True)
        return best


GRID = TicketSweep("grid", searcher=None)
OPTUNA = TicketSweep("optuna", searcher="optuna")


def param_space(cfg: SweepConfig, jobs: list[dict] | None = None) -> dict:
    """Tune's search space from the YAML one: choices, (log-)uniform floats, integer ranges, grids; `jobs` (a
    transfer sweep's, `transfer.plan`) crossed with it."""
    from ray import tune

    if cfg.search.trajectories_per_trial > 1:
        return {PACK_KEY: tune.grid_search(packed_grid(cfg, jobs))}
    space = {JOB_KEY: tune.grid_search(jobs)} if jobs else {}
    for key, spec in cfg.search.space.items():
        if cfg.search.mode == GRID.name:
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
    points = grid_points(cfg)
    if jobs:
        points = [{**point, JOB_KEY: job} for point in points for job in jobs]
    k = cfg.search.trajectories_per_trial
    return [points[i:i + k] for i in range(0, len(points), k)]


def grid_points(cfg: SweepConfig) -> list[dict]:
    """The product of the space's values (a range by its step), the last key varying fastest, as parameter dicts;
    a range without a step (optuna only) is not a grid axis and is left out."""
    axes = {key: spec.values if spec.values is not None else _grid_values(spec)
            for key, spec in cfg.search.space.items() if spec.values is not None or spec.step is not None}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _grid_values(spec) -> list:
    n = int(round((spec.high - spec.low) / spec.step)) + 1
    values = [spec.low + i * spec.step for i in range(n)]
    return [int(v) for v in values] if spec.type == "int" else [round(v, 10) for v in values]


def plan(cfg: SweepConfig, space: dict, jobs: list[dict] | None = None) -> str:
    r = cfg.resources
    lines = [
        f"sweep {cfg.name}: {cfg.search.mode} search, {cfg.search.num_samples} sample(s), scheduler {cfg.search.scheduler},"
        f" metric {cfg.search.metric}, up to {cfg.search.max_concurrent_trials} trial(s) at once",
        f"trial: {cfg.ticket.prune.method} pruning, {cfg.ticket.prune.num_rounds()} round(s), model {cfg.ticket.model},"
        f" {r.num_workers} worker(s) x {trial_resources(cfg)}",
        "space: " + ", ".join(f"{k}={_describe(v)}" for k, v in cfg.search.space.items()),
        f"results: {results_dir(cfg)}",
    ]
    if jobs:
        lines[2:3] = transfer_lines(jobs)
    if PACK_KEY in space:
        groups = space[PACK_KEY]["grid_search"]
        lines.insert(3, f"packed: {sum(map(len, groups))} grid points as {len(groups)} trial(s) of up to "
                        f"{cfg.search.trajectories_per_trial} trajectories, one Ray Train start-up each")
    return "\n".join(lines)


def transfer_lines(jobs: list[dict]) -> list[str]:
    """A transfer sweep's trials in words: per target, which tickets (source task or own, at a level) and how many
    seeds of each."""
    counts: dict[str, Counter] = {}
    for job in jobs:
        j = job_of(job)
        what = f"own ticket at {j.level:.2f}" if "own" in job else f"{j.source_task} at {j.level:.2f}"
        counts.setdefault(j.task, Counter())[what] += 1
    return [f"transfer: {len(jobs)} job(s), one trial each"] + [
        f"  to {target}: " + ", ".join(f"{what} x{n} seed(s)" for what, n in c.items())
        for target, c in sorted(counts.items())]


def _describe(spec) -> str:
    if spec.values is not None:
        return "{" + ", ".join(map(str, spec.values)) + "}"
    return f"[{spec.low}, {spec.high}]" + (" log" if spec.log else "") + (f" step {spec.step}" if spec.step else "")


def summary(cfg: SweepConfig) -> list[dict]:
    """The super ticket of every task and setting, by the analysis' rule (`analysis.best_tickets`)."""
    from ..analysis.tables import best_tickets
    from ..errors import ResultsError

    try:
        return best_tickets(results_dir(cfg))
    except ResultsError:
        return []  # nothing finished a round


def kept_weights(cfg: SweepConfig) -> tuple[int, float]:
    """(files, mean MB) of the fine-tuned weights kept for export in a local results root."""
    folder = Path(results_dir(cfg)) / "weights"
    sizes = [p.stat().st_size for p in folder.glob("*.safetensors")] if "://" not in results_dir(cfg) else []
    return len(sizes), (float(np.mean(sizes)) / 2**20 if sizes else 0.0)


def tasks_of(cfg: SweepConfig) -> list[str]:
    """Every task the sweep trains: the space's task values (a zipped "task,train.seed" key included), else the
    ticket's, plus the transfer targets."""
    tasks = {cfg.ticket.task}
    for key, spec in cfg.search.space.items():
        names = [k.strip() for k in key.split(",")]
        if "task" in names and spec.values:
            at = names.index("task")
            tasks = {v[at] if len(names) > 1 else v for v in spec.values}
    if cfg.search.transfer:
        tasks |= set(cfg.search.transfer.targets)
    return sorted(tasks)
