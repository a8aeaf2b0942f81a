"""The results' rows as typed values (`RoundRow`, `TicketRow`, `MaskRow`) and the Parquet schemas derived from them.

A column is declared once, as a dataclass field; `schema_of` turns the fields into the Arrow schema the
store writes and checks. Allowed values of `method` and `kind` come from the registries.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from typing import Any

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")
# Row kinds that are not baselines: the full model (round 0), the ticket itself, a transferred ticket and
# a multi-task run. Baseline kinds come from the baselines registry (`allowed_kinds`).
CORE_KINDS = ("ticket", "full", "transfer", "mtl")


def allowed_kinds() -> tuple[str, ...]:
    from .baselines import BASELINES  # imported on use: the store itself needs no torch

    return (*CORE_KINDS, *BASELINES)


def allowed_methods() -> tuple[str, ...]:
    from .pruning import METHODS

    return tuple(METHODS)


# ---------------------------------------------------------------- typed rows
# The rows are dataclasses and the Parquet schemas are derived from them, so a column is declared once.
# Annotation -> Arrow type: str -> string, float -> float64, int -> int64, bool -> bool, datetime ->
# timestamp[us, UTC], list[int] -> list<int64>, bytes -> binary; `X | None` is nullable, a bare `X` is
# required. kw_only keeps the columns in reading order (required and optional mixed).

_ARROW = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_(), datetime: TIMESTAMP,
          bytes: pa.binary(), list[int]: pa.list_(pa.int64())}


def schema_of(cls: type) -> pa.Schema:
    """The Arrow schema of a row dataclass (see the mapping above)."""
    fields = []
    for f, tp in zip(dataclasses.fields(cls), typing.get_type_hints(cls).values()):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable = type(None) in typing.get_args(tp)
        fields.append(pa.field(f.name, _ARROW[args[0] if nullable else tp], nullable=nullable))
    return pa.schema(fields)


@dataclasses.dataclass(kw_only=True)
class TrajectoryColumns:
    """The columns that say which trajectory a row belongs to: both tables start with them."""

    sweep: str | None = None
    trial: str
    run_id: str | None = None  # the trajectory's run id (a hash of every setting, seed included)
    setting_id: str | None = None  # the curve it belongs to: `settings` hashed (see README, "Settings")
    settings: str | None = None  # JSON of every setting that enters setting_id
    task: str
    model: str
    method: str
    scope: str | None = None
    schedule: str | None = None
    rate: float | None = None
    target_sparsity: float | None = None
    head_fraction: float | None = None
    ffn_fraction: float | None = None
    ffn_granularity: str | None = None
    losing: bool | None = None
    rewind_step: int | None = None
    seed: int


@dataclasses.dataclass(kw_only=True)
class RoundRow(TrajectoryColumns):
    """One trained model: the full model (round 0), a round's ticket, a baseline, a transferred ticket."""

    round: int
    kind: str
    arm: str | None = None  # multi-task runs: which arm (plain, tickets_share, single, random)
    sparsity: float
    metric_name: str
    metric: float
    metric_convention: str | None = None  # paper | glue: which metric is the task's main one
    failed: bool | None = None  # the run collapsed (its metric was undefined); metric is the chance value
    chance_metric: float | None = None  # the main metric of a constant (majority-class) predictor
    accuracy: float | None = None
    f1: float | None = None
    matthews: float | None = None
    pearson: float | None = None
    spearman: float | None = None
    accuracy_matched: float | None = None  # MNLI's two dev splits
    accuracy_mismatched: float | None = None
    perplexity: float | None = None  # masked-language modelling
    exact_match: float | None = None  # SQuAD, beside its main metric f1
    full_metric: float | None = None
    training_steps: int | None = None
    wall_seconds: float | None = None
    mask_id: str | None = None
    # mlm tickets: the share of the mask's pruned weights that one-shot magnitude pruning of the rewind weights
    # to the same sparsity keeps (0: the ticket is one-shot pruning; ~1 - sparsity: a random mask); else null
    oneshot_diff: float | None = None
    weights_path: str | None = None  # kept fine-tuned weights, relative to the results root
    source_task: str | None = None
    source_mask_id: str | None = None
    node_id: str | None = None  # the Ray node that trained it (null outside Ray)
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclasses.dataclass(kw_only=True)
class MaskRow:
    """One tensor of a stored mask."""

    mask_id: str
    tensor: str
    shape: list[int]
    bits: bytes
    numel: int
    sparsity: float


@dataclasses.dataclass(kw_only=True)
class TicketRow(TrajectoryColumns):
    """One finished trajectory: its settings, its best round and its last round."""

    metric_name: str | None = None
    metric_convention: str | None = None
    rounds: int | None = None
    best_round: int | None = None
    best_sparsity: float | None = None
    best_metric: float | None = None
    final_round: int | None = None
    final_sparsity: float | None = None
    final_metric: float | None = None
    full_metric: float | None = None
    gain: float | None = None
    best_mask_id: str | None = None
    final_mask_id: str | None = None
    best_weights_path: str | None = None
    final_weights_path: str | None = None
    finished_at: datetime | None = None


ROUNDS_SCHEMA = schema_of(RoundRow)
MASKS_SCHEMA = schema_of(MaskRow)
TICKETS_SCHEMA = schema_of(TicketRow)
SCHEMAS = {"rounds": ROUNDS_SCHEMA, "masks": MASKS_SCHEMA, "tickets": TICKETS_SCHEMA}
ROW_TYPES = {"rounds": RoundRow, "masks": MaskRow, "tickets": TicketRow}
# Columns each schema version added; a file of an older version is read with these as nulls.
ADDED_IN = {
    2: {
        "rounds": ("run_id", "setting_id", "settings", "ffn_granularity", "losing", "arm", "metric_convention",
                   "failed", "chance_metric", "accuracy_matched", "accuracy_mismatched", "perplexity",
                   "weights_path", "node_id"),
        "tickets": ("run_id", "setting_id", "settings", "scope", "target_sparsity", "head_fraction", "ffn_fraction",
                    "ffn_granularity", "losing", "rewind_step", "metric_name", "metric_convention",
                    "best_weights_path", "final_weights_path"),
    },
    3: {"rounds": ("oneshot_diff",)},
    4: {"rounds": ("exact_match",)},
}


def as_dict(row: Any) -> dict[str, Any]:
    """A row (a RoundRow/TicketRow/MaskRow or a mapping) as a plain dict."""
    return dataclasses.asdict(row) if dataclasses.is_dataclass(row) else dict(row)




def ticket_row(rows: list[RoundRow], **meta: Any) -> TicketRow:
    """One row per finished trajectory: its settings, its best round and its last round.

    The best round is the highest ticket metric, ties going to the sparser ticket — the same rule and
    tie-break the analysis uses for the super ticket (`analysis.best_tickets`).
    """
    tickets = [r for r in rows if r.kind == "ticket"]
    full = next(r for r in rows if r.kind == "full")
    best = max(tickets, key=lambda r: (r.metric, r.sparsity))
    final = max(tickets, key=lambda r: r.round)
    summary = dict(
        rounds=final.round, best_round=best.round, best_sparsity=best.sparsity, best_metric=best.metric,
        final_round=final.round, final_sparsity=final.sparsity, final_metric=final.metric,
        full_metric=full.metric, gain=best.metric - full.metric, best_mask_id=best.mask_id,
        final_mask_id=final.mask_id, best_weights_path=best.weights_path, final_weights_path=final.weights_path,
        finished_at=final.finished_at,
    )
    settings = {f.name for f in dataclasses.fields(TicketRow)} & {f.name for f in dataclasses.fields(RoundRow)}
    meta = {k: v for k, v in meta.items() if k in settings}  # e.g. node_id describes rounds, not trajectories
    return TicketRow(**{**{k: getattr(full, k) for k in settings - set(summary)}, **summary, **meta})
