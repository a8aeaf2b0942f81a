"""Choosing the ticket `raytickets export` writes: by the analysis' super ticket, a sparsity or a mask id,
narrowed by seed and setting; every way to ask for something the results root lacks is one line."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..errors import ConfigError, ResultsError
from ..masks import Mask
from ..store import ResultsStore

DECIMALS = 4  # sparsity levels, as the analysis rounds them (curves.SPARSITY_DECIMALS)


# ---------------------------------------------------------------- choosing the ticket


@dataclass
class Ticket:
    """The stored ticket chosen for export: its round row, its mask and its level's rows over seeds."""

    row: dict[str, Any]
    mask: Mask
    level: list[dict[str, Any]] = field(default_factory=list)  # ticket rows of its task, setting, sparsity
    # The analysis' verdict on its curve (`analysis.best_tickets`): chance, min_above_chance, learned, full_mean.
    curve: dict[str, Any] = field(default_factory=dict)
    trajectory: dict[str, Any] = field(default_factory=dict)  # its `tickets` row (rounds run), once it finished

    @property
    def settings(self) -> dict:
        return json.loads(self.row["settings"]) if present(self.row.get("settings")) else {}


def present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _level(sparsity: float) -> float:
    return round(float(sparsity), DECIMALS)


def _listing(values) -> str:
    values = sorted({v for v in values if present(v)}, key=str)
    return ", ".join(map(str, values)) or "none"


def find_ticket(store: ResultsStore, task: str | None = None, *, best: bool = False, sparsity: float | None = None,
                mask_id: str | None = None, seed: int | None = None, setting: str | None = None,
                need_weights: bool = True) -> Ticket:
    """The ticket one of `best` (the task's super ticket), `sparsity` or `mask_id` names, narrowed by `seed` and
    `setting`; ResultsError (one line, listing what exists) when there is none. Among several seeds at the level,
    the highest metric is exported (ties: the lowest seed); the card lists them all. A curve whose full model did
    not beat chance (the analysis' `learned`) has no super ticket: `best` then takes its best level by the same
    rule, says on stderr that it is no ticket, and the card says so too."""
    if [best, sparsity is not None, mask_id is not None].count(True) != 1:
        raise ConfigError("export: give exactly one of --best, --sparsity, --mask-id")
    if mask_id is not None and not store.has_mask(mask_id):
        raise ResultsError(f"--mask-id: mask {mask_id!r} is not in results dir {store.root}")
    rows = store.rounds()
    tickets = _of_mask(rows, mask_id)
    tickets = _of_task(tickets, task, mask_id, store.root)
    tickets = _of_seed(_of_setting(tickets, setting), seed, mask_id)
    if sparsity is not None:
        levels = tickets["sparsity"].map(_level)
        if not (levels == _level(sparsity)).any():
            raise ResultsError(f"--sparsity: no ticket of task {task} at sparsity {sparsity} (levels: round sparsity "
                               f"to {DECIMALS} decimals); levels with tickets: {_listing(levels)}")
        tickets = tickets[levels == _level(sparsity)]
    elif best:
        tickets = _super_ticket(store, tickets, task)
    if tickets["setting_id"].nunique(dropna=False) > 1:
        options = "; ".join(f"{s} ({m})" for s, m in tickets.groupby("setting_id", dropna=False)["method"].first().items())
        raise ResultsError(f"--setting: tickets of {tickets['setting_id'].nunique(dropna=False)} settings match "
                           f"({options}); choose one with --setting")
    chosen = _pick(store, tickets, need_weights)
    same = (rows["kind"] == "ticket") & (rows["task"] == chosen["task"]) & (rows["setting_id"] == chosen["setting_id"])
    level = rows[same & (rows["sparsity"].map(_level) == _level(chosen["sparsity"]))]
    level = level.sort_values("metric", ascending=False, kind="stable").drop_duplicates("seed").sort_values("seed")
    ticket = Ticket(row=chosen, mask=store.load_mask(chosen["mask_id"]), level=level.to_dict("records"),
                    curve=_verdict(store, chosen), trajectory=_trajectory(store, chosen))
    if best and ticket.curve and not ticket.curve["learned"]:  # said once the ticket is found, never beside an error
        from ..analysis.tables import did_not_learn

        print(f"export: {chosen['task']} {did_not_learn(ticket.curve)}; its best level "
              f"({_level(chosen['sparsity'])}) is no super ticket (the card says so)", file=sys.stderr)
    return ticket


def _verdict(store: ResultsStore, row: dict) -> dict:
    """The analysis' chance verdict on the curve of `row` ({} where the analysis has none)."""
    from ..analysis.tables import best_tickets

    key = lambda r: (r["model"], r["method"], r["task"], r["setting_id"] if present(r["setting_id"]) else "")  # noqa: E731
    for b in best_tickets(store.root):
        if key(b) == key(row):  # the analysis names a curve without a setting_id ""
            return {k: b[k] for k in ("chance", "min_above_chance", "learned", "full_mean")}
    return {}


def _trajectory(store: ResultsStore, row: dict) -> dict:
    """The `tickets` row of the ticket's trial ({} while it runs, or with no tickets table yet)."""
    try:
        summaries = store.tickets()
    except ResultsError:
        return {}
    mine = summaries[summaries["trial"] == row["trial"]]
    return mine.iloc[0].to_dict() if len(mine) else {}


def _with_mask(mask_id: str | None) -> str:
    return f" with mask {mask_id}" if mask_id else ""


def _of_mask(rows: pd.DataFrame, mask_id: str | None) -> pd.DataFrame:
    """The ticket rows (of this mask): only tickets have kept weights and a place on a curve."""
    tickets = rows[rows["kind"] == "ticket"]
    if mask_id is None:
        return tickets
    if not (tickets["mask_id"] == mask_id).any():
        kinds = _listing(rows.loc[rows["mask_id"] == mask_id, "kind"])
        raise ResultsError(f"--mask-id: mask {mask_id} is stored but is no ticket's mask (it is a {kinds} mask); "
                           f"only tickets have kept weights: export it with --format mask")
    return tickets[tickets["mask_id"] == mask_id]


def _of_task(tickets: pd.DataFrame, task: str | None, mask_id: str | None, root: str) -> pd.DataFrame:
    if task is None:
        if mask_id is None:
            raise ConfigError(f"--task: required with --best and --sparsity; tasks with tickets: "
                              f"{_listing(tickets['task'])}")
        return tickets
    if not (tickets["task"] == task).any():
        raise ResultsError(f"--task: no ticket of task {task!r}{_with_mask(mask_id)} in {root}; "
                           f"tasks with tickets: {_listing(tickets['task'])}")
    return tickets[tickets["task"] == task]


def _of_seed(tickets: pd.DataFrame, seed: int | None, mask_id: str | None) -> pd.DataFrame:
    if seed is None:
        return tickets
    if not (tickets["seed"] == seed).any():
        raise ResultsError(f"--seed: no run with seed {seed} for task {_listing(tickets['task'])}"
                           f"{_with_mask(mask_id)}; seeds with runs: {_listing(tickets['seed'].astype(int))}")
    return tickets[tickets["seed"] == seed]


def _of_setting(tickets: pd.DataFrame, setting: str | None) -> pd.DataFrame:
    """Rows of the setting whose id is `setting` or starts with it (the analysis prints 8-character labels)."""
    if setting is None:
        return tickets
    ids = tickets["setting_id"].fillna("")
    matches = sorted(set(ids[ids.str.startswith(setting)]))
    if len(matches) != 1:
        why = "no setting" if not matches else f"{len(matches)} settings start with"
        raise ResultsError(f"--setting: {why} {setting!r} for these tickets; settings: {_listing(ids)}")
    return tickets[ids == matches[0]]


def _super_ticket(store: ResultsStore, tickets: pd.DataFrame, task: str) -> pd.DataFrame:
    """The rows at the super ticket's level (`analysis.best_tickets`: its rule and tie-break) of the one curve
    among `tickets`."""
    from ..analysis.tables import best_tickets

    # The best level whether or not the full model beat chance (a margin of -inf): the verdict is said below.
    curves = [b for b in best_tickets(store.root, min_above_chance=-math.inf) if b["task"] == task
              and b.get("setting_id") in set(tickets["setting_id"])]
    if not curves:
        raise ResultsError(f"--best: no super ticket of task {task!r} in {store.root} (no scored ticket rounds)")
    if len(curves) > 1:
        options = "; ".join(f"{b['setting_id']} ({b.get('method')}, sparsity {b['sparsity']}, mean {b['mean']:.4f})"
                            for b in curves)
        raise ResultsError(f"--best: task {task} has {len(curves)} curves ({options}); choose one with --setting")
    curve = curves[0]
    at = tickets[(tickets["setting_id"] == curve["setting_id"])
                 & (tickets["sparsity"].map(_level) == _level(curve["sparsity"]))]
    if at.empty:  # only with --seed: that seed has no ticket at the curve's super-ticket level
        raise ResultsError(f"--best: the super ticket of task {task} is at sparsity {curve['sparsity']}, where seed(s) "
                           f"{_listing(tickets['seed'].astype(int))} have no ticket; choose another --seed")
    return at


def _pick(store: ResultsStore, tickets: pd.DataFrame, need_weights: bool) -> dict:
    """The row to export: one with kept weights, best metric first, then the lowest seed."""
    order = tickets.assign(_kept=tickets["weights_path"].map(present)).sort_values(
        ["_kept", "metric", "seed"], ascending=[False, False, True], kind="stable")
    row = order.drop(columns="_kept").iloc[0].to_dict()
    if need_weights and not present(row.get("weights_path")):
        raise ResultsError(_not_kept(store, row))
    return row


def _not_kept(store: ResultsStore, row: dict) -> str:
    """Why a ticket has no weights, and which `keep_weights` setting would have kept them."""
    where = (f"ticket of run {row['run_id']} round {int(row['round'])} (task {row['task']}, seed {int(row['seed'])}, "
             f"sparsity {row['sparsity']:.4f})")
    try:
        summaries = store.tickets()
        summary = summaries[summaries["trial"] == row["trial"]]
    except ResultsError:  # no trajectory has finished yet: no tickets table
        summary = pd.DataFrame()
    if summary.empty:
        hint = ("its trajectory has not finished (its best and last rounds are kept at its end); keep_weights: all "
                "keeps every round as it finishes")
    elif int(row["round"]) == int(summary["best_round"].iloc[0]):
        hint = "it is its trajectory's best round: keep_weights: best (the default) keeps it"
    elif int(row["round"]) == int(summary["final_round"].iloc[0]):
        hint = "it is its trajectory's last round: keep_weights: best or last keeps it"
    else:
        hint = "it is neither its trajectory's best nor its last round: only keep_weights: all keeps it"
    return f"{where}: its fine-tuned weights were not kept; {hint}"


