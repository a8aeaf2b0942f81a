"""Transfer as Chen et al. 2020 ran it: tickets found on source tasks (MLM included) fine-tuned on target tasks.

A transfer sweep's trials are planned here from a results root, before any cluster starts. For every
chosen source ticket (by task and sparsity level, or by mask id), every target task other than its source
and every seed, one trial fine-tunes that mask on the target from the rewind point: TRANSFER(S, T). Each
target and level also gets a random mask at that sparsity (by the method's own rule: the floor), with
`oneshot` one-shot magnitude pruning of the target's rewind weights there (pruning without training), and
TRANSFER(T, T) — the target's own ticket at that sparsity — is read from the results root, or, where the
root has none, trained by a trajectory trial on the target that stops exactly there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..config import SweepConfig, TransferConfig
from ..errors import ConfigError, ResultsError
from ..store import ResultsStore
from ..tickets import ONESHOT, RANDOM  # the source_task of the null masks' transfer rows
TOLERANCE = 0.01  # sparsities closer than this are one level (a schedule's 0.488 for a requested 0.5 is not)
DEFAULT_LEVELS = ["matching", 0.5, 0.7, 0.9]


@dataclass(frozen=True)
class TransferJob:
    """One transfer trial: `mask_id` (found on `source_task`) fine-tuned on `task` with training seed `seed`;
    with no mask id, the null mask `source_task` names (random, oneshot) at `level`."""

    task: str
    seed: int
    level: float
    source_task: str
    mask_id: str | None = None


@dataclass(frozen=True)
class OwnJob:
    """A trajectory trial on `task` with seed `seed` that stops exactly at `level`: the target's own ticket
    there, TRANSFER(T, T), where the results root has none."""

    task: str
    seed: int
    level: float


def plan(cfg: SweepConfig) -> list[dict]:
    """The trials of a transfer sweep as Tune grid values ({"transfer": ...} or {"own": ...}); bad input is one
    line naming the field before any training."""
    t = cfg.search.transfer
    if "://" not in t.source and not Path(t.source).is_dir():
        raise ConfigError(f"search.transfer.source: directory {t.source!r} does not exist (run the source sweep first)")
    try:
        rounds = ResultsStore(t.source).rounds()
    except ResultsError as e:  # an empty or foreign folder: the field to fix, then what is wrong with it
        raise ConfigError(f"search.transfer.source: {e} (run the source sweep first)") from None
    tickets = rounds[(rounds["kind"] == "ticket") & rounds["mask_id"].notna()]
    _check_model(t, tickets, cfg.ticket.model)
    sources = _source_tickets(t, tickets)
    jobs: list[dict] = []
    for source in sources.itertuples(index=False):
        jobs += [{"transfer": asdict(TransferJob(target, seed, source.sparsity, source.task, source.mask_id))}
                 for target in t.targets if target != source.task for seed in t.seeds]
    levels = sorted({round(float(s), 4) for s in sources["sparsity"]})
    for target in t.targets:
        for level in levels:
            for null in (RANDOM, ONESHOT):
                if getattr(t, null):
                    jobs += [{"transfer": asdict(TransferJob(target, seed, level, null))} for seed in t.seeds]
            if t.own:
                jobs += [{"own": asdict(OwnJob(target, seed, level))} for seed in t.seeds
                         if not _has_own(tickets, target, seed, level)]
    if any("own" in job for job in jobs) and not cfg.ticket.prune.method_impl().shares_rounds:
        missing = sorted({(j["own"]["task"], j["own"]["level"]) for j in jobs if "own" in j})
        raise ConfigError(f"search.transfer.own: the targets' own tickets at {missing} are not in {t.source!r}, and a "
                          f"{cfg.ticket.prune.method!r} trajectory cannot stop at a sparsity; run it for those "
                          "targets first, or set own: false")
    if not jobs:
        raise ConfigError(f"search.transfer: nothing to transfer from {t.source!r} to {t.targets}")
    return jobs


def _check_model(t: TransferConfig, tickets: pd.DataFrame, model: str) -> None:
    if tickets.empty:
        raise ConfigError(f"search.transfer.source: {t.source!r} holds no ticket with a stored mask")
    models = sorted(set(tickets["model"]))
    if model not in models:
        raise ConfigError(f"search.transfer.source: {t.source!r} holds tickets of model {', '.join(models)}; the sweep "
                          f"trains {model!r} (ticket.model): a mask fits only the model it was found on")


def _source_tickets(t: TransferConfig, tickets: pd.DataFrame) -> pd.DataFrame:
    """One mask per chosen (source task, level): the lowest seed's ticket there (columns task, sparsity, mask_id)."""
    if t.mask_ids:
        unknown = [m for m in t.mask_ids if m not in set(tickets["mask_id"])]
        if unknown:
            raise ConfigError(f"search.transfer.mask_ids: {unknown[0]!r} is not a ticket mask in {t.source!r}")
        chosen = tickets[tickets["mask_id"].isin(t.mask_ids)]
        return chosen.sort_values("seed").drop_duplicates("mask_id")[["task", "sparsity", "mask_id"]]
    have = sorted(set(tickets["task"]))
    sources = t.sources or have
    missing = [s for s in sources if s not in have]
    if missing:
        raise ConfigError(f"search.transfer.sources: {missing[0]!r} has no ticket in {t.source!r}; tasks with tickets: "
                          f"{', '.join(have)}")
    explicit = t.levels != DEFAULT_LEVELS  # levels the user asked for must exist; the default ones may not
    matching = _matching_levels(t.source) if "matching" in t.levels else {}
    out = []
    for source in sources:
        own = tickets[tickets["task"] == source]
        for level in t.levels:
            wanted = matching.get(source) if level == "matching" else float(level)
            near = own[(own["sparsity"] - wanted).abs() <= TOLERANCE] if wanted is not None else own.iloc[:0]
            if near.empty:
                if explicit:
                    raise ConfigError(f"search.transfer.levels: {source!r} has no ticket at {level!r} in {t.source!r}; "
                                      f"its levels: {', '.join(f'{s:.4f}' for s in sorted(set(own['sparsity'])))}")
                print(f"transfer: {source} has no ticket at {level}: left out", flush=True)
                continue
            best = near.assign(off=(near["sparsity"] - wanted).abs()).sort_values(["off", "seed"]).iloc[0]
            out.append({"task": source, "sparsity": float(best["sparsity"]), "mask_id": best["mask_id"]})
    return pd.DataFrame(out, columns=["task", "sparsity", "mask_id"]).drop_duplicates("mask_id")


def _matching_levels(source: str) -> dict[str, float]:
    """Each task's matching sparsity (paper rule) in the source root, by the analysis' rule."""
    from ..analysis.tables import findings
    from ..analysis.curves import scored

    supers = findings(scored(ResultsStore(source).rounds()))["super_tickets"]
    if supers.empty:
        return {}
    per_task = supers.dropna(subset=["matching_sparsity_paper"]).drop_duplicates("task")
    return dict(zip(per_task["task"], per_task["matching_sparsity_paper"].astype(float)))


def _has_own(tickets: pd.DataFrame, task: str, seed: int, level: float) -> bool:
    own = tickets[(tickets["task"] == task) & (tickets["seed"] == seed)]
    return bool(((own["sparsity"] - level).abs() <= TOLERANCE).any())


def job_of(params: dict) -> TransferJob | OwnJob | None:
    """The transfer job a trial's parameters carry (None for an ordinary trial)."""
    if "transfer" in params:
        return TransferJob(**params["transfer"])
    if "own" in params:
        return OwnJob(**params["own"])
    return None


def overrides_of(job: TransferJob | OwnJob) -> list[str]:
    """The ticket settings a job changes: its target, its seed, and for an own trajectory where it stops."""
    out = [f'task="{job.task}"', f"train.seed={job.seed}"]
    if isinstance(job, OwnJob):
        out += ["prune.rounds=null", f"prune.target_sparsity={job.level}"]
    return out
