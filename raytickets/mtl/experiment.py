"""Multi-task learning with shared super tickets (Liang et al. 2021 §5, "Tickets-Share"): `raytickets mtl`.

Every task's super ticket is read from a results root of single-task trajectories, chosen by the analysis'
rule (`analysis.best_tickets`: the level with the best mean over seeds, ties to the sparser one), and mapped
to its per-seed masks. A task whose best level is no super ticket under `ticket_rule` (`tickets.TICKET_RULES`;
default: it must beat the full model, as Liang et al.) trains dense in the arms that mask. Arms (`ARMS`), with
the same data, seeds and steps for those that train:

* `plain` — one shared encoder and a head per task, no masks (MT-DNN);
* `tickets_share` — the same, each task's batches through its own ticket (`mtl_model`), or dense without one;
* `single` — not trained: the single-task tickets' own fine-tuned results for the same seeds;
* `random` — random tickets at each task's sparsity (structured: as many random heads and FFN units); dense
  where tickets_share is (a random ticket that removes nothing is the dense model).

One row per (arm, task, seed) lands in `rounds` (kind "mtl", round 0). Its key (trial, round, kind, task,
arm) holds the experiment's `setting_id` and the seed in `trial`, so a rerun finds the (arm, seed) runs
already stored and skips them. Training runs in this process or on `workers` Ray Train workers (DDP).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .. import pruning
from ..config import DataConfig, SweepConfig, TrainConfig, default_learning_rate
from ..errors import ConfigError, ResultsError
from ..loader import apply_overrides, build, read_config, to_dict
from .data import check_alpha
from ..analysis.multitask import chosen_from_rows, mtl_figure, mtl_table, sharing_table  # noqa: F401  (the public names)
from .tickets import check_dev_rows, check_ticket_rule, super_ticket_masks
from ..rows import RoundRow
from ..runs import digest
from ..store import ResultsStore
from ..tasks import GLUE, TASKS


# Multi-task heads classify or regress: every task of the table but masked-language modelling.
MTL_TASKS = GLUE


@dataclass(frozen=True)
class Arm:
    name: str
    summary: str
    trains: bool  # False: read from the tickets root


ARMS = {a.name: a for a in (
    Arm("plain", "one shared encoder, a head per task, no masks (MT-DNN)", True),
    Arm("tickets_share", "each task's batches through its own super ticket (Liang et al.'s Tickets-Share)", True),
    Arm("single", "the single-task super tickets' own results for the same seeds (read, not retrained)", False),
    Arm("random", "random tickets at each task's ticket sparsity (structured: random heads / FFN units, same counts)", True),
)}


@dataclass
class MTLConfig:
    """One multi-task experiment: which tasks and tickets, the arms and seeds, how to train."""

    tasks: list[str] = field(default_factory=list)
    tickets: str | None = None  # results root of the single-task tickets; null: the `sweep` section's results
    out: str | None = None  # results root the multi-task rows go to (may be the tickets root)
    seeds: list[int] = field(default_factory=lambda: [0])
    arms: list[str] = field(default_factory=lambda: ["plain", "tickets_share", "single"])
    alpha: float = 1.0  # task sampling p_t ∝ n_t^alpha (n_t: batches); 1 = proportional, as Liang et al.
    model: str | None = None  # null: the tickets' model (anything else must equal it)
    method: str | None = None  # which tickets, when the root holds several methods for a task
    setting_id: str | None = None  # which tickets (a setting_id or its prefix), when a task has several curves
    task_settings: dict[str, str] = field(default_factory=dict)  # the same per task: {mrpc: b6af9948}
    # super | significant | always (tickets.TICKET_RULES): when a task trains through its best level's ticket
    # rather than dense; super is Liang et al.'s (construct_mtl_mask.py: a task without one gets no mask)
    ticket_rule: str = "super"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # max_steps (or epochs of sampling cycles) per run
    workers: int = 0  # Ray Train workers (DDP); 0 = this process
    cpus_per_worker: float = 1.0
    sweep: SweepConfig | None = None  # the ticket sweep `raytickets mtl --sweep` runs first

    def validate(self) -> None:
        if len(self.tasks) < 2:  # one task is single-task training, which `raytickets imp` does
            got = f"only {self.tasks[0]!r}" if self.tasks else "empty"
            raise ConfigError(f"tasks: {got}; give two or more of {', '.join(MTL_TASKS)}")
        for name, values, allowed in (("tasks", self.tasks, MTL_TASKS), ("arms", self.arms, tuple(ARMS)),
                                      ("task_settings", list(self.task_settings), self.tasks)):
            for v in values:
                if v not in allowed:
                    raise ConfigError(f"{name}: unknown {name[:-1].replace('_setting', '')} {v!r}; allowed: "
                                      f"{', '.join(map(str, allowed))}")
        for name, values in (("tasks", self.tasks), ("seeds", self.seeds), ("arms", self.arms)):
            twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
            if twice is not None:
                raise ConfigError(f"{name}: {twice!r} is listed twice")
        if not self.seeds or not self.arms:
            raise ConfigError(f"{'seeds' if not self.seeds else 'arms'}: empty; give at least one")
        check_alpha(self.alpha)
        check_ticket_rule(self.ticket_rule)
        if self.tickets is None and self.sweep is None:
            raise ConfigError("tickets: null and no sweep section; give the results root of the single-task tickets")
        if self.out is None:
            raise ConfigError("out: null; give the results root for the multi-task rows (--out)")
        if self.model is not None:
            from ..models import resolve_model

            resolve_model(self.model)
        self.data.validate("data")
        self.train.validate("train")
        if self.train.seed != TrainConfig().seed:
            raise ConfigError(f"train.seed: {self.train.seed}; multi-task runs take their seeds from `seeds`")
        if self.workers < 0 or self.cpus_per_worker <= 0:
            raise ConfigError(f"workers: {self.workers} must be >= 0 (0 = this process) and cpus_per_worker > 0")
        if self.sweep is not None:
            from ..sweep.tuner import validate

            validate(self.sweep)

    def tickets_root(self) -> str:
        from ..sweep.layout import results_dir

        return self.tickets if self.tickets is not None else results_dir(self.sweep)


def load_mtl_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = (), base: dict | None = None
                    ) -> MTLConfig:
    """YAML (optional) or `base`, then `key.sub=value` overrides, then validation: one-line errors."""
    data = read_config(path) if path else dict(base or {})
    cfg = build(MTLConfig, apply_overrides(data, overrides))
    cfg.validate()
    return cfg


# ---------------------------------------------------------------- the plan


@dataclass
class Plan:
    """An experiment ready to run: its resolved config, chosen tickets, identity, and what is already stored."""

    cfg: MTLConfig
    chosen: pd.DataFrame
    setting_id: str
    settings: str
    done: set[tuple[str, int]]  # (arm, seed) runs already stored in `out`

    @property
    def model(self) -> str:
        """The tickets' model as their rows name it (the rows of this experiment name it the same)."""
        return self.cfg.model

    @property
    def model_path(self) -> str:
        """What to load: a local model directory made absolute (Ray workers run elsewhere), else the name."""
        return _absolute(self.model) if Path(self.model).expanduser().is_dir() else self.model

    def trial(self, seed: int) -> str:
        return f"mtl-{self.setting_id}-s{seed}"

    def ticket(self, task: str, seed: int) -> dict:
        rows = self.chosen[(self.chosen["task"] == task) & (self.chosen["seed"] == seed)]
        return rows.iloc[0].to_dict()

    def dense(self, task: str) -> bool:
        """Whether `task` has no super ticket under the rule, so the masked arms train it dense."""
        return bool(self.chosen.loc[self.chosen["task"] == task, "dense"].iloc[0])

    def mask_id(self, task: str, seed: int) -> str | None:
        """The mask tickets_share trains `task` under for `seed` (None: dense)."""
        return None if self.dense(task) else self.ticket(task, seed)["mask_id"]

    def pending(self) -> list[tuple[str, int]]:
        return [(arm, seed) for seed in self.cfg.seeds for arm in self.cfg.arms if (arm, seed) not in self.done]


def mtl_setting(cfg: MTLConfig, chosen: pd.DataFrame) -> dict:
    """What makes one experiment: model, tasks, sampling, data and training, and which tickets (per task the
    curve and level, and `dense` where the task trains without one) — not the seeds, arms, paths, the rule's
    name (two rules with the same outcome are one experiment) or where it runs."""
    from ..runs import NOT_IN_ID

    d = to_dict(cfg)
    for name in ("tickets", "out", "seeds", "arms", "workers", "cpus_per_worker", "sweep", "method", "setting_id",
                 "task_settings", "ticket_rule"):
        d.pop(name)
    for section, key in (*NOT_IN_ID, ("train", "seed")):
        d[section].pop(key, None)
    d["tasks"] = sorted(cfg.tasks)
    first = chosen.drop_duplicates("task")
    # `dense` only where true: an experiment whose tasks all train through their tickets keeps its earlier id
    d["tickets"] = {r["task"]: {"method": r["method"], "setting_id": r["setting_id"], "level": float(r["level"]),
                                **({"dense": True} if r["dense"] else {})}
                    for r in first.sort_values("task").to_dict("records")}
    return d


def plan(cfg: MTLConfig) -> Plan:
    """Everything decided before training: the tickets (with every bad-input check), the experiment's id,
    the runs already stored. Raises ConfigError / ResultsError in one line."""
    tickets = ResultsStore(cfg.tickets_root())
    chosen = super_ticket_masks(tickets, cfg.tasks, cfg.seeds, cfg.method, cfg.setting_id, cfg.task_settings,
                                cfg.ticket_rule)
    model = chosen["model"].iloc[0]
    if cfg.model is not None and cfg.model != model:
        raise ConfigError(f"model: {cfg.model!r}, but the tickets in {tickets.root} are of {model!r}")
    cfg = dataclasses.replace(cfg, model=model, tickets=_absolute(cfg.tickets_root()), out=_absolute(cfg.out),
                              data=dataclasses.replace(cfg.data), train=dataclasses.replace(cfg.train))
    for name in ("glue_dir", "cache_dir"):  # Ray workers run in other directories
        if getattr(cfg.data, name):
            setattr(cfg.data, name, _absolute(getattr(cfg.data, name)))
    _resolve_train(cfg.train, model, cfg.tasks)
    if "single" in cfg.arms:
        check_dev_rows(cfg.data, chosen)
    setting = mtl_setting(cfg, chosen)
    setting_id = digest(setting)
    out = Plan(cfg, chosen, setting_id, json.dumps(setting, sort_keys=True, default=str), set())
    out.done = stored_runs(ResultsStore(cfg.out), out)
    return out


def _resolve_train(train: TrainConfig, model: str, tasks: Sequence[str]) -> None:
    """Fill what a null means, so the experiment's id sees values (as `config.resolve` does for a ticket): the
    model's learning rate, the tasks' recipe (warmup, accumulation; they must agree), the precision here."""
    import torch

    from ..precision import resolve as resolve_precision

    if train.learning_rate is None:
        train.learning_rate = default_learning_rate(model)
    for name in sorted({k for t in tasks for k in TASKS[t].recipe}):
        if getattr(train, name) is None:
            values = {TASKS[t].recipe.get(name) for t in tasks}
            if len(values) > 1:
                raise ConfigError(f"train.{name}: null, and the tasks' recipes differ ({sorted(values, key=str)}); set it")
            setattr(train, name, values.pop())
    train.precision = resolve_precision(train.precision, torch.device("cpu"))  # runs train on CPU


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def stored_runs(store: ResultsStore, plan: Plan) -> set[tuple[str, int]]:
    """(arm, seed) runs of this experiment with a row for every task. A masked run stored under other masks
    than the plan's (the tickets root changed under the same levels) is a ConfigError, never overwritten."""
    try:
        rounds = store.rounds()
    except ResultsError:
        return set()
    mine = rounds[(rounds["kind"] == "mtl") & (rounds["setting_id"] == plan.setting_id)]
    done = set()
    for (arm, seed), g in mine.groupby(["arm", "seed"]):
        if set(g["task"]) >= set(plan.cfg.tasks) and int(seed) in plan.cfg.seeds:
            if arm in ("tickets_share", "single"):
                for r in g.to_dict("records"):
                    if r["task"] not in plan.cfg.tasks:
                        continue
                    single = arm == "single"  # single reads the ticket's own row, dense or not
                    want = plan.ticket(r["task"], int(seed))["mask_id"] if single else plan.mask_id(r["task"], int(seed))
                    have = None if pd.isna(r["mask_id"]) else r["mask_id"]
                    if have != want:
                        raise ConfigError(f"out: {store.root} holds {arm} rows of seed {seed} trained under mask "
                                          f"{r['mask_id']} for {r['task']}, but the tickets now give {want}; use another out")
            done.add((arm, int(seed)))
    return done


# ---------------------------------------------------------------- running an arm


def _now() -> datetime:
    return datetime.now(timezone.utc)


def arm_masks(plan: Plan, arm: str, seed: int, store: ResultsStore, encoder_config) -> dict[str, Any]:
    """Per task: (the Mask an arm trains under, None for dense; whether it is a structured ticket). A task
    without a super ticket (`plan.dense`) is dense in tickets_share and random alike: the random arm controls
    for *which* units a ticket keeps at its size, and at size zero there is nothing to draw. The random arm's
    mask is drawn from (seed, task) alone, so every rank and every rerun draws the same one."""
    from .model import random_ticket

    out = {}
    for task in sorted(plan.cfg.tasks):
        if arm == "plain" or plan.dense(task):
            out[task] = (None, False)
            continue
        t = plan.ticket(task, seed)
        mask, structured = store.load_mask(t["mask_id"]), pruning.get(t["method"]).whole_units
        if arm == "random":
            mask = random_ticket(mask, structured, encoder_config, seed=seed * 1_000 + list(GLUE).index(task))
        out[task] = (mask, structured)
    return out


def train_arm(plan: Plan, arm: str, seed: int, device="cpu") -> tuple[list[RoundRow], dict]:
    """Train one (arm, seed) run on every task: its rows and the masks they name (task -> Mask)."""
    from .data import load_task_data
    from .model import load_multitask_model
    from .train import train_multitask
    from ..tasks import get_task

    cfg, started = plan.cfg, _now()
    tickets = ResultsStore(cfg.tickets_root())
    model = load_multitask_model(plan.model_path, {t: get_task(t) for t in sorted(cfg.tasks)}, seed, device)
    masks = arm_masks(plan, arm, seed, tickets, model.config)
    model.set_tickets({t: m for t, (m, _) in masks.items()}, {t: s for t, (_, s) in masks.items()})
    data = load_task_data(sorted(cfg.tasks), plan.model_path, cfg.data)
    res = train_multitask(model, data, dataclasses.replace(cfg.train, seed=seed), seed, cfg.alpha, desc=f"{arm} seed {seed}")
    rows = []
    for task in cfg.tasks:
        ticket = model.tickets[task]
        source = plan.mask_id(task, seed) if arm == "random" else None
        rows.append(_row(plan, arm, task, seed, res.metrics[task], res.chance[task], res.diverged(task),
                         ticket.sparsity, ticket.mask_id, res.steps, res.seconds, started, source))
    return rows, {t: m for t, (m, _) in masks.items() if m is not None}


def _row(plan: Plan, arm: str, task: str, seed: int, metrics: dict, chance: dict, diverged: bool, sparsity: float,
         mask_id: str | None, steps: int, seconds: float, started: datetime, source_mask_id: str | None) -> RoundRow:
    from ..tasks import flat_metrics

    t = plan.ticket(task, seed)
    name = t["metric_name"]
    metrics, chance = flat_metrics(metrics), flat_metrics(chance)
    value = metrics[name]
    failed = diverged or value is None or value != value
    if failed:  # a collapsed run is a real outcome: scored at chance, never dropped (as tickets.py scores it)
        value = chance[name]
    return RoundRow(**_own(plan, task, seed, t), kind="mtl", arm=arm, sparsity=float(sparsity), metric=float(value),
                    failed=bool(failed), chance_metric=chance[name], **metrics, training_steps=int(steps),
                    wall_seconds=float(seconds), mask_id=mask_id, source_mask_id=source_mask_id,
                    started_at=started, finished_at=_now())


def _own(plan: Plan, task: str, seed: int, ticket: dict) -> dict:
    """The columns every row of this experiment's (task, seed) carries."""
    return dict(sweep="mtl", trial=plan.trial(seed), run_id=plan.trial(seed), setting_id=plan.setting_id,
                settings=plan.settings, task=task, model=plan.model, method=ticket["method"], seed=seed, round=0,
                metric_name=ticket["metric_name"], metric_convention=ticket.get("metric_convention"),
                full_metric=_float(ticket.get("full_metric")))


def single_rows(plan: Plan, seed: int) -> list[RoundRow]:
    """The `single` arm: each task's super-ticket row of this seed, as a multi-task row (nothing trained)."""
    from ..tasks import METRIC_COLUMNS

    rows = []
    for task in plan.cfg.tasks:
        t = plan.ticket(task, seed)
        rows.append(RoundRow(
            **_own(plan, task, seed, t), kind="mtl", arm="single", sparsity=float(t["sparsity"]), metric=float(t["metric"]),
            failed=bool(t["collapsed"]), chance_metric=_float(t.get("chance_metric")),
            **{c: _float(t.get(c)) for c in METRIC_COLUMNS}, training_steps=_int(t.get("training_steps")),
            wall_seconds=_float(t.get("wall_seconds")), mask_id=t["mask_id"],
            started_at=t.get("started_at"), finished_at=_now()))
    return rows


def _float(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else float(v)


def _int(v) -> int | None:
    f = _float(v)
    return None if f is None else int(f)


def record(store: ResultsStore, rows: list[RoundRow], masks: dict) -> None:
    """Write the masks the rows name, then the rows (a run's rows are complete only once all are written)."""
    for mask in masks.values():
        store.write_mask(mask)
    store.write_rounds(rows)
