"""`search.mode: mtl`: a multi-task experiment (raytickets/mtl.py) as a Ray Tune sweep, one trial per (arm, seed).

`raytickets mtl` trains its runs one after another, in one process or in one Ray Train fit. Here every run that
trains is a trial of its own (`resources.num_workers` Ray Train workers each, DDP), so seeds and arms spread over
a cluster and a killed sweep `--resume`s; the `single` arm, which trains nothing, is stored by the driver before
the trials start. The rows are the command's: one per (arm, task, seed), kind mtl, in `search.mtl.out` (default:
the sweep's results root). A run already stored, by the command or by a trial before a kill, is not trained again.

With `search.mtl.tickets: self` one command runs the whole experiment: first the ticket sweep of `search.space`
(a grid over the tasks and seeds), then the multi-task runs on its tickets, as the sweep `<name>-mtl` (`stages`).
"""

from __future__ import annotations

import copy
import functools
import time
from pathlib import Path

from ..config import SweepConfig, TicketConfig
from ..errors import ConfigError, RayticketsError
from ..loader import build
from ..sweep.layout import results_dir, work_dir
from ..sweep.modes import SweepMode, TrialJob

MTL_KEY = "mtl_run"  # search-space key of an mtl sweep's trials: {"arm": ..., "seed": ...}
SELF = "self"  # search.mtl.tickets: the tickets of this config's own search space, found first by the same command
_SET_BY_THE_SWEEP = {"workers": "resources.num_workers", "cpus_per_worker": "resources.cpus_per_worker",
                     "sweep": "the sweep file itself"}


def experiment(cfg: SweepConfig):
    """The `mtl.MTLConfig` of an mtl-mode sweep, validated: one-line errors that name `search.mtl.<field>`."""
    from .experiment import MTLConfig

    data = dict(cfg.search.mtl)
    for key, where in _SET_BY_THE_SWEEP.items():
        if key in data:
            raise ConfigError(f"search.mtl.{key}: set by {where} in a sweep")
    if not data.get("tickets"):
        raise ConfigError(f"search.mtl.tickets: give the results root of the single-task tickets, or {SELF!r} "
                          "(this file's search space, swept first)")
    data.setdefault("out", results_dir(cfg))
    try:
        out = build(MTLConfig, data, "search.mtl")
        out.workers, out.cpus_per_worker = cfg.resources.num_workers, cfg.resources.cpus_per_worker
        out.validate()
    except ConfigError as e:
        raise ConfigError(_prefixed(str(e))) from None
    if cfg.search.space and out.tickets != SELF:
        raise ConfigError("search.space: the trials of an mtl sweep are its (arm, seed) runs; the space is only "
                          f"read with search.mtl.tickets: {SELF} (the ticket sweep run first)")
    return out


def absolute_paths(cfg: SweepConfig, absolute) -> None:
    """The section's local paths made absolute in place (trials run in other directories)."""
    m = cfg.search.mtl
    for key in ("tickets", "out"):
        if m.get(key) and m[key] != SELF:
            m[key] = absolute(m[key])
    data = m.setdefault("data", {})
    for key in ("glue_dir", "cache_dir"):
        if data.get(key):
            data[key] = absolute(data[key])
    if m.get("model") and Path(m["model"]).expanduser().is_dir():
        m["model"] = absolute(m["model"])


def stages(cfg: SweepConfig) -> list[SweepConfig]:
    """`cfg`, or with `tickets: self` the ticket sweep of its space (mode grid) then the mtl sweep on its results."""

    if cfg.search.mtl.get("tickets") != SELF:
        return [cfg]
    m = experiment(cfg)
    space = cfg.search.space
    for key, need in (("task", m.tasks), ("train.seed", m.seeds)):
        have = space[key].values if key in space and space[key].values is not None else []
        missing = [v for v in need if v not in have]
        if missing:
            raise ConfigError(f"search.space.{key}: search.mtl.tickets: {SELF} needs a ticket of every task and "
                              f"seed of search.mtl; {missing[0]!r} is not among its values {have}")
    tickets = copy.deepcopy(cfg)
    tickets.search.mode, tickets.search.mtl = "grid", None
    tickets.search.scheduler = "none"  # the super ticket's level must exist for every seed
    runs = copy.deepcopy(cfg)
    runs.name = f"{cfg.name}-mtl"
    runs.work_dir = str(work_dir(tickets))  # one tokenised cache for both stages
    runs.search.space = {}
    runs.search.mtl["tickets"] = results_dir(tickets)
    runs.search.mtl.setdefault("out", results_dir(tickets))
    return [tickets, runs]


def describe_stage(cfg: SweepConfig) -> str:
    """The line `--dry-run` prints for an mtl stage whose tickets do not exist yet."""
    m = experiment(cfg)
    return (f"then sweep {cfg.name}: multi-task runs of {', '.join(m.tasks)} ({', '.join(m.arms)}; seeds "
            f"{', '.join(map(str, m.seeds))}) through the tickets in {m.tickets}, one trial per (arm, seed); "
            f"rows: {m.out}")


# ---------------------------------------------------------------- the driver


def start(cfg: SweepConfig):
    """Plan the experiment (every bad-input check on the tickets, before a cluster starts): its `mtl.Plan`."""
    from .experiment import plan

    m = experiment(cfg)
    try:
        return plan(m)
    except RayticketsError as e:  # the command's field names ("tickets: no super ticket for qqp ...") are ours here
        raise type(e)(_prefixed(str(e))) from None


def _prefixed(text: str) -> str:
    """`search.mtl.<field>: ...` for a message that names an MTL config field first; any other as it is."""
    from .experiment import MTLConfig

    field = text.partition(":")[0].split(".")[0]
    return f"search.mtl.{text}" if field in MTLConfig.__dataclass_fields__ else text


def describe(p) -> str:
    """`raytickets mtl`'s plan, and how the sweep runs it."""
    from .cli import describe as plan_in_words

    return (plan_in_words(p) + f"\nsweep: one trial per (arm, seed) run that trains ({len(runs(p))}), each on "
            f"{p.cfg.workers} Ray Train worker(s); rows: {p.cfg.out}")


def runs(p) -> list[dict]:
    """The trials: every (arm, seed) run that trains, stored or not (a stored one ends at once), so the grid is
    the same when a resumed sweep rebuilds it."""
    from .experiment import ARMS

    return [{"arm": arm, "seed": seed} for seed in p.cfg.seeds for arm in p.cfg.arms if ARMS[arm].trains]


def prepare(p) -> None:
    """Store the arms that train nothing; tokenise every task once, into the cache every trial reads."""
    from .run import record_read_arms
    from .data import load_task_data

    record_read_arms(p)
    load_task_data(sorted(p.cfg.tasks), p.model_path, p.cfg.data)


def finish(p, started: float) -> None:
    """Print the experiment's per-task table with each task's sharing, as `raytickets mtl` does."""
    from .run import results
    from ..analysis.multitask import format_table

    table, sharing = results(p)
    print(f"\nmulti-task results ({time.time() - started:.0f} s; experiment {p.setting_id}):")
    print(format_table(table, sharing))
    print(f"results: {p.cfg.out} (kind mtl; experiment {p.setting_id})", flush=True)


# ---------------------------------------------------------------- a trial


def trial_job(cfg: SweepConfig, params: dict) -> TrialJob:
    """The Ray Train worker loop of one (arm, seed) run, or no loop when the run is stored already; the result
    reads the run's rows back. The plan is built once per trial."""
    from .experiment import plan
    from .remote import _worker

    run = params[MTL_KEY]
    p = plan(experiment(cfg))
    arm, seed = run["arm"], int(run["seed"])
    result = functools.partial(trial_result, p, run)
    if (arm, seed) in p.done:
        return TrialJob(result=result)
    return TrialJob(_worker, {"plan": p, "runs": [(arm, seed)]}, result)


def trial_result(p, run: dict) -> dict:
    """What the trial reports to Tune: the run's mean main metric over its tasks (rows read back from `out`)."""
    from ..store import ResultsStore

    rounds = ResultsStore(p.cfg.out).rounds()
    mine = rounds[(rounds["kind"] == "mtl") & (rounds["setting_id"] == p.setting_id) & (rounds["arm"] == run["arm"])
                  & (rounds["seed"] == int(run["seed"]))]
    return {"arm": run["arm"], "seed": int(run["seed"]), "mean_metric": float(mine["metric"].mean()),
            "tasks": int(len(mine))}


class MTLSweep(SweepMode):
    """`search.mode: mtl`: one trial per (arm, seed) multi-task run that trains, each to its end (no scheduler)."""

    name = "mtl"
    summary = "a multi-task experiment (raytickets mtl), one trial per (arm, seed) run"
    uses_scheduler = False

    def other_command(self, data: dict) -> str | None:
        """An MTL experiment file (`tasks`, `arms`, ...): `raytickets mtl` runs it, not the sweep."""
        import dataclasses

        from ..config import SweepConfig
        from .experiment import MTLConfig

        keys = set(data)
        sweep_keys = {f.name for f in dataclasses.fields(SweepConfig)}
        if keys and keys <= {f.name for f in dataclasses.fields(MTLConfig)} and not keys <= sweep_keys:
            return ("is a `raytickets mtl` config (keys " + ", ".join(sorted(keys - sweep_keys)) + "): run it with "
                    "raytickets mtl --config FILE [--sweep] --dry-run")
        return None

    def reads_ticket(self, cfg: SweepConfig) -> bool:
        return (cfg.search.mtl or {}).get("tickets") == SELF  # on stored tickets no trajectory is trained

    def validate(self, cfg: SweepConfig) -> None:
        if cfg.search.mtl is None:
            raise ConfigError("search.mtl: mtl mode needs the multi-task experiment (tasks, tickets, seeds, arms, ...)")
        if cfg.search.transfer is not None:
            raise ConfigError("search.transfer: not in mtl mode; a sweep runs transfer jobs or multi-task runs")
        if not self.reads_ticket(cfg) and cfg.ticket != TicketConfig():  # not read, so it must not be set
            raise ConfigError("ticket: an mtl sweep on stored tickets (search.mtl.tickets) does not read it; set the "
                              "multi-task runs' data and train in search.mtl, or use search.mtl.tickets: self")
        experiment(cfg)

    def absolute_paths(self, cfg: SweepConfig, absolute) -> None:
        absolute_paths(cfg, absolute)

    def stages(self, cfg: SweepConfig) -> list[SweepConfig]:
        return stages(cfg)

    def start(self, cfg: SweepConfig):
        return start(cfg)

    def space(self, cfg: SweepConfig, p) -> dict:
        from ray import tune

        return {MTL_KEY: tune.grid_search(runs(p))}

    def describe(self, cfg: SweepConfig, p, space: dict) -> str:
        return describe(p)

    def describe_stage(self, cfg: SweepConfig) -> str:
        return describe_stage(cfg)

    def prepare(self, cfg: SweepConfig, p) -> None:
        prepare(p)

    def samples(self, cfg: SweepConfig) -> int:
        return 1  # the trials are the (arm, seed) grid, each run once

    def trial_job(self, cfg: SweepConfig, params: dict, trial: dict) -> TrialJob:
        return trial_job(cfg, params)

    def finish(self, cfg: SweepConfig, p, started: float) -> list[dict]:
        finish(p, started)
        return []


MODE = MTLSweep()
