"""Running a multi-task experiment: every (arm, seed) run of its plan not yet stored, in this process or on Ray
Train workers (`remote.py`), and the tables of what is stored."""

from __future__ import annotations

from typing import Callable

import pandas as pd

from ..analysis.multitask import mtl_table, sharing_table
from ..rows import RoundRow
from ..store import ResultsStore
from .experiment import ARMS, Plan, record, single_rows, train_arm


def run(p: Plan, on_run: Callable[[str, int, list[RoundRow], bool], None] | None = None,
        address: str | None = None, temp_dir: str | None = None) -> Plan:
    """Run every (arm, seed) of the plan not yet stored; `on_run(arm, seed, rows, saved)` after each."""
    out = ResultsStore(p.cfg.out)
    todo = p.pending()
    for arm, seed in [(a, s) for s in p.cfg.seeds for a in p.cfg.arms if (a, s) in p.done]:
        if on_run:
            on_run(arm, seed, [], True)
    record_read_arms(p, on_run)
    trained = [r for r in todo if ARMS[r[0]].trains]
    if trained and p.cfg.workers:
        from .remote import run_on_ray

        run_on_ray(p, trained, address, temp_dir, on_run)
        return p
    for arm, seed in trained:
        rows, masks = train_arm(p, arm, seed)
        record(out, rows, masks)
        if on_run:
            on_run(arm, seed, rows, False)
    return p


def record_read_arms(p: Plan, on_run: Callable[[str, int, list[RoundRow], bool], None] | None = None) -> None:
    """Store the pending runs of the arms that train nothing (`single`: the tickets' own rows, read)."""
    for arm, seed in [r for r in p.pending() if not ARMS[r[0]].trains]:
        rows = single_rows(p, seed)
        record(ResultsStore(p.cfg.out), rows, {})
        if on_run:
            on_run(arm, seed, rows, False)


def results(p: Plan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mtl_table of this experiment, sharing_table of the tickets its tasks train through — a dense task shares
    no ticket, as `chosen_from_rows` sees it in the stored rows)."""
    table = mtl_table(ResultsStore(p.cfg.out).rounds())
    table = table[table["setting_id"] == p.setting_id].reset_index(drop=True)
    return table, sharing_table(ResultsStore(p.cfg.tickets_root()), p.chosen[~p.chosen["dense"]])
