"""Transfer as Chen et al. ran it: which trials a transfer sweep plans from a results root, bad input as one line,
and the transfer rule (TRANSFER(S, T) within one std of TRANSFER(T, T); universal sources) on constructed tables."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from raytickets.analysis import tables as analysis
from raytickets.config import SweepConfig, load
from raytickets.errors import ConfigError
from raytickets.masks import Mask
from raytickets.store import ResultsStore
from raytickets.sweep.transfer import plan

SHAPES = {"encoder.layer.0.attention.self.query.weight": (8, 8), "encoder.layer.0.intermediate.dense.weight": (16, 8)}


def ticket_root(root, tasks=("mlm", "sst2"), levels=(0.5, 0.7), model="minilm", seeds=(0, 1)) -> ResultsStore:
    """A results root with full models and tickets of `tasks` at `levels` for `seeds` (metrics made up)."""
    store = ResultsStore(root)
    rows = []
    for t, task in enumerate(tasks):
        for seed in seeds:
            base = dict(trial=f"{task}-{seed}", task=task, model=model, method="magnitude", seed=seed,
                        metric_name="accuracy", setting_id="s1")
            rows.append(dict(base, round=0, kind="full", sparsity=0.0, metric=0.8))
            for r, level in enumerate(levels, start=1):
                g = torch.Generator().manual_seed(100 * t + 10 * seed + r)
                mask = Mask({n: torch.rand(s, generator=g) >= level for n, s in SHAPES.items()})
                rows.append(dict(base, round=r, kind="ticket", sparsity=level, metric=0.8 - 0.1 * r,
                                 mask_id=store.write_mask(mask)))
    store.write_rounds(rows)
    return store


def sweep(root, *overrides: str, model: str = "minilm") -> SweepConfig:
    return load(SweepConfig, overrides=[f"ticket.model={model}", "ticket.prune.rounds=1", "search.mode=grid",
                                        f"search.transfer.source={root}", *overrides])


def test_a_plan_has_each_source_ticket_on_each_other_target_per_seed_plus_random_and_missing_own(tmp_path):
    ticket_root(tmp_path)
    jobs = plan(sweep(tmp_path, "search.transfer.targets=[sst2, rte]", "search.transfer.levels=[0.7]",
                      "search.transfer.seeds=[0, 1]"))
    transfers = [j["transfer"] for j in jobs if "transfer" in j and j["transfer"]["source_task"] != "random"]
    pairs = sorted((j["source_task"], j["task"], j["seed"]) for j in transfers)
    # mlm -> sst2 and rte, sst2 -> rte (never a task to itself), each seed
    assert pairs == [(s, t, seed) for s, t in (("mlm", "rte"), ("mlm", "sst2"), ("sst2", "rte")) for seed in (0, 1)]
    assert all(j["level"] == 0.7 for j in transfers)
    randoms = sorted((j["transfer"]["task"], j["transfer"]["seed"]) for j in jobs
                     if "transfer" in j and j["transfer"]["source_task"] == "random")
    assert randoms == [("rte", 0), ("rte", 1), ("sst2", 0), ("sst2", 1)]
    own = sorted((j["own"]["task"], j["own"]["seed"], j["own"]["level"]) for j in jobs if "own" in j)
    assert own == [("rte", 0, 0.7), ("rte", 1, 0.7)]  # sst2's own 70% ticket is in the root already
    assert not any(j["transfer"]["source_task"] == "oneshot" for j in jobs if "transfer" in j)  # off by default


def test_oneshot_plans_one_shot_magnitude_pruning_per_target_level_and_seed(tmp_path):
    ticket_root(tmp_path)
    jobs = plan(sweep(tmp_path, "search.transfer.targets=[sst2, rte]", "search.transfer.levels=[0.5, 0.7]",
                      "search.transfer.seeds=[0, 1]", "search.transfer.oneshot=true", "search.transfer.random=false"))
    oneshot = sorted((j["transfer"]["task"], j["transfer"]["level"], j["transfer"]["seed"]) for j in jobs
                     if "transfer" in j and j["transfer"]["source_task"] == "oneshot")
    assert oneshot == [(t, level, seed) for t in ("rte", "sst2") for level in (0.5, 0.7) for seed in (0, 1)]
    assert all(j["transfer"]["mask_id"] is None for j in jobs if j.get("transfer", {}).get("source_task") == "oneshot")
    assert not any(j["transfer"]["source_task"] == "random" for j in jobs if "transfer" in j)


def test_default_levels_take_the_matching_ticket_and_skip_levels_a_source_lacks(tmp_path, capsys):
    ticket_root(tmp_path, tasks=("sst2",), levels=(0.5, 0.7))
    jobs = plan(sweep(tmp_path, "search.transfer.targets=[rte]", "search.transfer.random=false",
                      "search.transfer.own=false"))
    levels = sorted({j["transfer"]["level"] for j in jobs})
    assert levels == [0.5, 0.7]  # matching (paper rule) is 0.7 here, 0.5 and 0.7 exist, 0.9 does not
    assert "sst2 has no ticket at 0.9: left out" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, message", [
    (["search.transfer.targets=[rte]", "search.transfer.sources=[qnli]"],
     "search.transfer.sources: 'qnli' has no ticket in"),
    (["search.transfer.targets=[rte]", "search.transfer.mask_ids=[feedfeedfeedfeed]"],
     "search.transfer.mask_ids: 'feedfeedfeedfeed' is not a ticket mask in"),
    (["search.transfer.targets=[rte]", "search.transfer.levels=[0.3]"],
     "search.transfer.levels: 'mlm' has no ticket at 0.3"),
])
def test_a_source_not_in_the_results_root_is_one_line(tmp_path, overrides, message):
    ticket_root(tmp_path)
    with pytest.raises(ConfigError, match=message) as info:
        plan(sweep(tmp_path, *overrides))
    assert "\n" not in str(info.value)


def test_a_missing_source_root_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"search.transfer.source: directory '.*/nope' does not exist"):
        plan(sweep(tmp_path / "nope", "search.transfer.targets=[rte]"))


def test_a_target_of_another_model_is_one_line(tmp_path):
    ticket_root(tmp_path, model="bert-base")
    with pytest.raises(ConfigError, match=r"holds tickets of model bert-base; the sweep trains 'minilm'"):
        plan(sweep(tmp_path, "search.transfer.targets=[rte]"))


def transfer_rows(store: ResultsStore, own: dict[str, list[float]], moved: dict[tuple[str, str], list[float]]) -> None:
    """Own tickets at 70% per target (one value per seed) and transfers (source, target) -> per-seed values."""
    rows = []
    for task, values in own.items():
        for seed, v in enumerate(values):
            base = dict(trial=f"{task}-{seed}", task=task, model="m", method="magnitude", seed=seed,
                        metric_name="accuracy", setting_id="s1")
            rows += [dict(base, round=0, kind="full", sparsity=0.0, metric=0.9),
                     dict(base, round=1, kind="ticket", sparsity=0.7, metric=v)]
    for (source, task), values in moved.items():
        rows += [dict(trial=f"{source}>{task}-{seed}", task=task, model="m", method="magnitude", seed=seed, round=1,
                      kind="transfer", source_task=source, sparsity=0.7, metric=v, metric_name="accuracy",
                      setting_id="s1") for seed, v in enumerate(values)]
    store.write_rounds(rows)


def test_the_transfer_rule_within_one_std_strictly_and_universal_sources(tmp_path):
    store = ResultsStore(tmp_path)
    # own tickets: sst2 0.80 +- 0.02 (std of 0.78, 0.80, 0.82), rte 0.60 +- 0.02
    own = {"sst2": [0.78, 0.80, 0.82], "rte": [0.58, 0.60, 0.62], "mlm": [0.5, 0.5, 0.5]}
    moved = {
        ("mlm", "sst2"): [0.79, 0.79, 0.79],  # 0.79 >= 0.80 - 0.02: transfers, not strictly
        ("mlm", "rte"): [0.61, 0.61, 0.61],   # >= 0.60: transfers strictly
        ("sst2", "rte"): [0.50, 0.52, 0.54],  # 0.52 < 0.58: does not transfer
        ("random", "rte"): [0.40, 0.41, 0.42],
        ("oneshot", "rte"): [0.61, 0.62, 0.63],  # one-shot pruning beats mlm's 0.61 on rte
    }
    transfer_rows(store, own, moved)
    table = analysis.analyze(tmp_path)["transfer"].set_index(["source_task", "task"])
    assert table.loc[("mlm", "sst2"), "transfers"] and not table.loc[("mlm", "sst2"), "transfers_strict"]
    assert table.loc[("mlm", "rte"), "transfers"] and table.loc[("mlm", "rte"), "transfers_strict"]
    assert not table.loc[("sst2", "rte"), "transfers"]
    assert table.loc[("mlm", "sst2"), "ticket_std"] == pytest.approx(0.02)
    assert table.loc[("mlm", "sst2"), "ticket_mean"] == pytest.approx(0.80)
    # mlm transfers to every target it was tried on: universal (not strictly); sst2 is not
    assert table.loc[("mlm", "sst2"), "universal"] and table.loc[("mlm", "rte"), "universal"]
    assert not table.loc[("mlm", "rte"), "universal_strict"]
    assert not table.loc[("sst2", "rte"), "universal"]
    assert table.loc[("sst2", "rte"), "random_mean"] == pytest.approx(0.41)
    # one-shot pruning is a null, not a source: it is neither judged nor counted against mlm's universality
    assert table.loc[("mlm", "rte"), "oneshot_mean"] == pytest.approx(0.62)
    assert table.loc[("mlm", "rte"), "vs_oneshot"] == pytest.approx(-0.01)
    assert pd.isna(table.loc[("oneshot", "rte"), "universal"])
    summary = analysis.summary_markdown(analysis.analyze(tmp_path))
    assert "## Ticket transfer" in summary
    line = next(x for x in summary.splitlines() if x.startswith("| mlm @ 70.0% | rte |"))
    assert "transfers (also strictly); no better than one-shot pruning; universal" in line
    assert "| 0.4100 | 0.6200 |" in line


def test_a_zipped_task_dimension_names_the_sweeps_tasks(tmp_path):
    """`task,train.seed` pairs (one MLM seed beside three GLUE seeds) are the sweep's tasks: its stages find the
    transfer sources there, and each task is tokenised."""
    from raytickets.sweep.tickets import tasks_of

    cfg = sweep(tmp_path, 'search.space={"task,train.seed": {values: [[mlm, 0], [sst2, 0], [sst2, 1]]}}',
                "search.transfer.targets=[rte]")
    assert tasks_of(cfg) == ["mlm", "rte", "sst2"]
