"""The sweep's closing table (`TicketSweep.finish`): a task whose full model did not beat chance is reported as
such and names no super ticket (the README smoke run once starred RTE at 0.48 against a 0.505 chance)."""

from __future__ import annotations

from raytickets.config import SweepConfig, load
from raytickets.sweep.tickets import GRID

from analysis.test_analysis import at_chance_root  # tests/ is on sys.path: the test packages import by name


def test_the_closing_table_says_did_not_learn_and_names_no_ticket_for_a_task_at_chance(tmp_path, capsys):
    at_chance_root(tmp_path / "results")
    cfg = load(SweepConfig, base={"name": "t", "results_dir": str(tmp_path / "results"),
                                      "ticket": {"prune": {"rounds": 1}}})
    best = {b["task"]: b for b in GRID.finish(cfg, None, 0.0)}
    out = capsys.readouterr().out
    rte = next(line for line in out.splitlines() if line.strip().startswith("rte"))
    assert "did not learn: accuracy full 0.4800 ≤ chance 0.5050 + 0.0707; no ticket" in rte
    assert "sparsity" not in rte and "gain" not in rte
    sst2 = next(line for line in out.splitlines() if line.strip().startswith("sst2"))
    assert "sparsity 0.3000" in sst2 and "gain +0.0200" in sst2 and "chance 0.5100" in sst2
    assert not best["rte"]["learned"] and best["sst2"]["learned"]
