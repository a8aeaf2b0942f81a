"""Recording a trajectory into a results root: its rows, masks, kept weights and its tickets row.

One `Recorder` serves `raytickets imp` (one process) and the sweep's Ray Train workers (rank 0 writes,
every rank takes part in anything that trains), so both leave the same tables behind and
`raytickets analyze` reads either.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .distributed import agree
from .rows import RoundRow, TicketRow, ticket_row
from .store import ResultsStore

if TYPE_CHECKING:
    from .tickets import RoundState, Trajectory

KEEP_WEIGHTS = ("best", "last", "all", "none")


class Recorder:
    """The `on_round` callback of a trajectory that writes to a results root (None on DDP ranks > 0).

    `keep_weights`: which rounds' fine-tuned weights are stored under `<root>/weights/` for export — the
    best round and the last round ("best", the default, keeps both), only the last, every round, or none.
    """

    def __init__(self, store: ResultsStore | None, keep_weights: str = "best", **meta: Any):
        self.store, self.keep, self.meta = store, keep_weights, meta
        self.rows: list[RoundRow] = []
        self.kept_bytes: dict[str, int] = {}  # weights path -> size, for the disk cost a sweep reports
        self._best: tuple[float, float, int] | None = None  # (metric, sparsity, round) of the best ticket so far
        self._best_weights: dict | None = None
        self._last: tuple[int, dict | None] = (-1, None)

    def __call__(self, state: RoundState) -> None:
        rows = [replace(row, **self.meta) for row in state.rows]
        ticket = next((r for r in rows if r.kind == "ticket"), None)
        if ticket is not None:  # weights in memory (None for a round read from disk), so export need not reload
            self._last = (state.round, state.weights)
            if self._best is None or (ticket.metric, ticket.sparsity) > self._best[:2]:
                self._best, self._best_weights = (ticket.metric, ticket.sparsity, state.round), state.weights
        if self.store is not None:
            for row in rows:
                if row.mask_id and not self.store.has_mask(row.mask_id):
                    self.store.write_mask(state.mask_of(row.mask_id))
            if self.keep == "all" and ticket is not None and state.weights is not None:
                rows = [replace(r, weights_path=self._write(state.weights, r)) if r is ticket else r for r in rows]
            self.store.write_rounds(rows)
        self.rows += rows

    def _write(self, weights: dict, row: RoundRow) -> str:
        path = self.store.write_weights(weights, f"{row.run_id}-r{row.round:03d}")
        self.kept_bytes[path] = sum(t.numel() * t.element_size() for t in weights.values())
        return path

    def finish(self, traj: Trajectory) -> TicketRow | None:
        """After the run: store the best and last rounds' weights (as `keep_weights` says), rewrite those
        rows with their `weights_path`, and write the trajectory's tickets row. Every DDP rank calls it."""
        tickets = [r for r in self.rows if r.kind == "ticket"]
        if not tickets:
            return None
        best = max(tickets, key=lambda r: (r.metric, r.sparsity))
        last = max(tickets, key=lambda r: r.round)
        wanted = {"best": [best, last], "last": [last]}.get(self.keep, [])
        for row in {r.round: r for r in wanted}.values():
            if row.weights_path:
                continue
            cached = self._best_weights if self._best and self._best[2] == row.round else None
            cached = self._last[1] if cached is None and self._last[0] == row.round else cached
            weights = cached if agree(cached is not None) else traj.weights_of(row.round)
            if self.store is not None:
                kept = replace(row, weights_path=self._write(weights, row))
                self.store.write_rounds([kept])
                self.rows = [kept if r is row else r for r in self.rows]
        summary = ticket_row(self.rows, **self.meta)
        if self.store is not None:
            self.store.write_ticket(summary)
        return summary
