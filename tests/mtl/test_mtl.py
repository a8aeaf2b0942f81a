"""Multi-task learning through shared super tickets: per-task masking (structured gates, unstructured
functional_call), task sampling, the arms and their rows across a resume, bad input, the tables and figure,
the command — on a tiny BERT with real structured tickets of real GLUE rows, and the real MiniLM learning."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import torch
from scipy import stats

from raytickets.config import DataConfig, PruneConfig, TicketConfig, TrainConfig
from raytickets.errors import ConfigError, MaskError, ResultsError
from raytickets.masks import Mask
from raytickets.models import MINILM, prunable_parameters, tiny_bert
from raytickets.analysis.multitask import chosen_from_rows, mtl_figure, mtl_table, sharing_table
from raytickets.mtl.cli import main
from raytickets.mtl.experiment import MTLConfig, load_mtl_config, plan
from raytickets.mtl.run import run
from raytickets.mtl.data import TaskData, cycle_counts, load_task_data, task_probabilities, task_schedule
from raytickets.mtl.model import load_multitask_model, random_ticket, structured_units
from raytickets.mtl.train import step, total_mtl_steps, train_multitask
from raytickets.pruning import random_prune, structured_mask
from raytickets.results import Recorder
from raytickets.store import ResultsStore
from raytickets.tasks import chance_metrics, get_task
from raytickets.tickets import Trajectory
from raytickets.train import make_optimizer

REPO = Path(__file__).resolve().parents[2]
TASKS = ("sst2", "rte")
HEAD_DIM = 8  # the tiny BERT: 32 wide, 4 heads, 2 layers, 64 FFN neurons
FAST = TrainConfig(max_steps=2, batch_size=8, eval_batch_size=32, learning_rate=1e-3, warmup_ratio=0.0)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenized")


@pytest.fixture(scope="module")
def data_cfg(glue_dir, cache) -> DataConfig:
    return DataConfig(glue_dir=str(glue_dir), max_train_examples=32, max_dev_examples=32, max_seq_length=32,
                      cache_dir=str(cache))


def imp(root: Path, model: Path, task: str, seed: int, data: DataConfig, **prune) -> None:
    """One structured single-task trajectory (full model + one round: 2 of 8 heads, 32 of 128 neurons) into
    the results root `root`, as `raytickets imp` writes it."""
    cfg = TicketConfig(task=task, model=str(model), data=data,
                       train=TrainConfig(max_steps=2, batch_size=8, eval_batch_size=32, learning_rate=1e-3, seed=seed),
                       prune=PruneConfig(**{"method": "structured", "rounds": 1, "head_fraction": 0.25,
                                            "ffn_fraction": 0.25, "importance_batches": 2, **prune}))
    traj = Trajectory(cfg, root / "work")
    recorder = Recorder(ResultsStore(root), "none", sweep="imp")
    traj.run(on_round=recorder)
    recorder.finish(traj)


@pytest.fixture(scope="module")
def tickets_root(tmp_path_factory, tiny_model_dir, data_cfg) -> Path:
    """Real structured super tickets of SST-2 and RTE on the tiny BERT, seeds 0 and 1."""
    root = tmp_path_factory.mktemp("tickets")
    for task in TASKS:
        for seed in (0, 1):
            imp(root, tiny_model_dir, task, seed, data_cfg)
    return root


@pytest.fixture(scope="module")
def task_data(tiny_model_dir, data_cfg):
    return load_task_data(TASKS, str(tiny_model_dir), data_cfg)


def tiny_model(tiny_model_dir, seed: int = 0):
    return load_multitask_model(str(tiny_model_dir), {t: get_task(t) for t in TASKS}, seed)


def batch_of(task_data, task: str, n: int = 8) -> dict:
    d = task_data[task]
    return d.collate([d.train[i] for i in range(n)])


def inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def two_tickets(model, kind: str) -> tuple[Mask, Mask, dict[str, bool]]:
    """A's ticket and B's: structured, A removes head 1 of layer 0 (and neuron 3 of layer 1), which B keeps
    (B removes head 2 of layer 0); unstructured, two random masks of different seeds."""
    params = prunable_parameters(model)
    if kind == "structured":
        a = structured_mask(params, model.config, {0: [1]}, {1: [3]})
        b = structured_mask(params, model.config, {0: [2]}, {})
    else:
        ones = Mask.ones_like(params)
        a = random_prune(ones, 0.5, "global", torch.Generator().manual_seed(1))
        b = random_prune(ones, 0.3, "global", torch.Generator().manual_seed(2))
    return a, b, {"sst2": kind == "structured", "rte": kind == "structured"}


# ------------------------------------------------------------------------------- each task's own ticket


@pytest.mark.parametrize("kind", ["structured", "unstructured"])
def test_a_tasks_forward_ignores_what_its_ticket_removes_and_the_other_task_uses_it(tiny_model_dir, task_data, kind):
    model = tiny_model(tiny_model_dir)
    a, b, structured = two_tickets(model, kind)
    model.set_tickets({"sst2": a, "rte": b}, structured)
    model.eval()
    x = inputs(batch_of(task_data, "sst2"))
    before_a, before_b = model.encode("sst2", **x), model.encode("rte", **x)
    named = dict(model.bert.named_parameters())
    with torch.no_grad():  # move only what A's ticket removes and B's keeps
        for name, keep_a in a.tensors.items():
            only_b = ~keep_a & b.tensors[name]
            named[name][only_b] += torch.randn(int(only_b.sum())) * 0.5
    after_a, after_b = model.encode("sst2", **x), model.encode("rte", **x)
    assert torch.equal(before_a, after_a)
    assert (before_b - after_b).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["structured", "unstructured"])
def test_a_step_of_task_a_moves_nothing_its_ticket_removes_even_with_momentum_from_task_b(tiny_model_dir, task_data, kind):
    model = tiny_model(tiny_model_dir)
    a, b, structured = two_tickets(model, kind)
    model.set_tickets({"sst2": a, "rte": b}, structured)
    pretrained = {n: p.detach().clone() for n, p in model.bert.named_parameters()}
    # Weight decay on and a large rate; B's step first fills Adam's moments of the weights only B keeps.
    optimizer, scheduler = make_optimizer(model, TrainConfig(learning_rate=1e-2, weight_decay=0.01, warmup_ratio=0.0), 10)
    step(model, "rte", [(batch_of(task_data, "rte"), 1.0)], optimizer, scheduler, max_grad_norm=1.0)
    named = dict(model.bert.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    batch = batch_of(task_data, "sst2")

    model("sst2", **batch).loss.backward()  # the gradient itself: zero wherever A's ticket removes
    for name, keep in a.tensors.items():
        assert not named[name].grad[~keep].any(), name
    assert any(named[n].grad[k].abs().sum() > 0 for n, k in a.tensors.items())
    optimizer.zero_grad(set_to_none=True)

    step(model, "sst2", [(batch, 1.0)], optimizer, scheduler, max_grad_norm=1.0)
    moved = 0
    for name, keep in a.tensors.items():
        after = named[name].detach()
        assert torch.equal(after[~keep], before[name][~keep]), name  # incl. every weight only B keeps
        moved += int((after[keep] != before[name][keep]).sum())
        only_b = ~keep & b.tensors[name]  # never zeroed in place: still B's trained pre-trained values
        assert torch.equal(after[only_b] != 0, pretrained[name][only_b] != 0), name
    assert moved > 0.9 * a.num_kept
    if kind == "structured":  # the removed head's Q/K/V biases are A's to leave alone too
        for proj in ("query", "key", "value"):
            bias = f"encoder.layer.0.attention.self.{proj}.bias"
            assert torch.equal(named[bias][HEAD_DIM:2 * HEAD_DIM], before[bias][HEAD_DIM:2 * HEAD_DIM])


def test_structured_gates_compute_what_the_ticket_with_its_weights_zeroed_computes(tiny_model_dir, task_data):
    model = tiny_model(tiny_model_dir)
    params = prunable_parameters(model)
    mask = structured_mask(params, model.config, {0: [1, 3], 1: [0]}, {0: [5, 6, 7], 1: list(range(20))})
    model.set_tickets({"sst2": mask}, {"sst2": True})
    model.eval()
    x = inputs(batch_of(task_data, "sst2"))
    gated = model.encode("sst2", **x)
    zeroed = tiny_model(tiny_model_dir)
    mask.apply(prunable_parameters(zeroed))
    zeroed.eval()
    torch.testing.assert_close(gated, zeroed.encode("sst2", **x), rtol=0, atol=1e-6)


def test_a_mask_pruning_inside_a_head_is_not_a_structured_ticket(tiny_model_dir):
    model = tiny_model(tiny_model_dir)
    mask = random_prune(Mask.ones_like(prunable_parameters(model)), 0.2, "global", torch.Generator().manual_seed(0))
    with pytest.raises(MaskError, match="not a structured ticket"):
        model.set_tickets({"sst2": mask}, {"sst2": True})


@pytest.mark.parametrize("kind", ["structured", "unstructured"])
def test_a_random_ticket_removes_as_many_units_or_weights_elsewhere(tiny_model_dir, kind):
    model = tiny_model(tiny_model_dir)
    ticket, _, structured = two_tickets(model, kind)
    if kind == "structured":
        ticket = structured_mask(prunable_parameters(model), model.config, {0: [1], 1: [0, 2]}, {0: [1, 2], 1: [9]})
    rand = random_ticket(ticket, structured["sst2"], model.config, seed=7)
    assert rand != ticket and rand.num_pruned == ticket.num_pruned
    if kind == "structured":
        units = [structured_units(m, model.config) for m in (ticket, rand)]
        assert [int(u.sum()) for u in units[0]] == [int(u.sum()) for u in units[1]]
    else:
        assert {n: int(t.sum()) for n, t in rand.tensors.items()} == {n: int(t.sum()) for n, t in ticket.tensors.items()}


# ------------------------------------------------------------------------------- task sampling

BATCHES = {"sst2": 2105, "mrpc": 115, "rte": 78, "cola": 268}  # GLUE's training splits in batches of 32


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_task_draws_follow_p_proportional_to_batches_to_the_alpha(alpha):
    total = sum(n ** alpha for n in BATCHES.values())
    expected = {t: n ** alpha / total for t, n in BATCHES.items()}  # the formula, written out again
    assert task_probabilities(BATCHES, alpha) == pytest.approx(expected)
    for seed in (0, 1, 2):
        counts = Counter(islice(task_schedule(BATCHES, alpha, seed), 10_000))
        for task, p in expected.items():
            assert abs(counts[task] / 10_000 - p) <= 0.02 * p, (seed, task, counts[task], p)


def test_at_alpha_1_a_cycle_is_one_epoch_of_every_task_in_a_seeded_order():
    cycle = sum(BATCHES.values())
    assert cycle_counts(BATCHES, 1.0) == BATCHES
    draws = list(islice(task_schedule(BATCHES, 1.0, seed=0), 2 * cycle))
    assert Counter(draws[:cycle]) == Counter(draws[cycle:]) == BATCHES and draws[:cycle] != draws[cycle:]
    listed_otherwise = dict(reversed(list(BATCHES.items())))  # the order tasks are listed in changes nothing
    assert list(islice(task_schedule(listed_otherwise, 1.0, seed=0), 500)) == draws[:500]
    assert list(islice(task_schedule(BATCHES, 1.0, seed=1), 500)) != draws[:500]


def test_the_trainer_draws_its_tasks_by_alpha(tiny_model_dir, task_data):
    """SST-2 with 32 rows (8 batches of 4) and RTE with 8 (2 batches): one cycle of 10 steps holds 8 and 2
    draws at alpha 1, round(10 · 2.83/4.24) = 7 and 3 at alpha 0.5."""
    data = dict(task_data, rte=TaskData(task_data["rte"].task, task_data["rte"].train.select(range(8)),
                                        task_data["rte"].dev, task_data["rte"].collate))
    cfg = dataclasses.replace(FAST, max_steps=None, epochs=1, batch_size=4)
    assert total_mtl_steps(data, cfg) == 10
    for alpha, expected in ((1.0, {"sst2": 8, "rte": 2}), (0.5, {"sst2": 7, "rte": 3})):
        res = train_multitask(tiny_model(tiny_model_dir), data, cfg, seed=0, alpha=alpha)
        assert res.steps == 10 and res.task_steps == expected


def test_accumulation_and_bf16_are_honoured_and_enter_the_experiment(tiny_model_dir, task_data, tickets_root, data_cfg, tmp_path):
    cfg = dataclasses.replace(FAST, max_steps=None, epochs=1, batch_size=8, grad_accumulation=2, precision="bf16")
    assert total_mtl_steps(task_data, cfg) == 4  # 2 x 4 batches of 8 in a cycle, 2 batches a step
    res = train_multitask(tiny_model(tiny_model_dir), task_data, cfg, seed=0)
    assert res.steps == 4 and all(math.isfinite(v) for losses in res.losses.values() for v in losses)
    ids = {plan(mtl_cfg(tickets_root, tmp_path, data_cfg, train=dataclasses.replace(FAST, **f))).setting_id
           for f in ({}, {"grad_accumulation": 1}, {"grad_accumulation": 2}, {"precision": "fp32"}, {"precision": "bf16"})}
    assert len(ids) == 3  # nulls resolve to the recipe's accumulation (1) and this machine's precision


def test_alpha_outside_0_1_is_refused():
    for alpha in (0, -0.5, 1.5):
        with pytest.raises(ConfigError, match=r"alpha: .* must be in \(0, 1\]"):
            task_probabilities(BATCHES, alpha)


# ------------------------------------------------------------------------------- the arms and their rows


def mtl_cfg(tickets_root, out, data_cfg, **fields) -> MTLConfig:
    """The tiny tickets of two training steps may or may not beat their full model: the tests of the arms'
    mechanics train through them whatever they score (`always`); the rules have their own tests."""
    cfg = MTLConfig(**{"tasks": list(TASKS), "tickets": str(tickets_root), "out": str(out), "seeds": [0, 1],
                       "data": data_cfg, "train": dataclasses.replace(FAST), "ticket_rule": "always", **fields})
    cfg.validate()
    return cfg


def raw_rounds(root: Path) -> pd.DataFrame:
    """Every row in the rounds files as written (no read-side deduplication)."""
    return ds.dataset(str(root / "rounds"), format="parquet").to_table().to_pandas()


class Interrupted(Exception):
    pass


def test_rows_land_exactly_once_per_arm_task_and_seed_across_an_interrupted_run(tickets_root, data_cfg, tmp_path):
    cfg = mtl_cfg(tickets_root, tmp_path / "out", data_cfg, arms=["plain", "tickets_share", "single"])

    def interrupt_after_first_training(arm, seed, rows, saved):
        if rows and arm != "single":
            raise Interrupted

    with pytest.raises(Interrupted):
        run(plan(cfg), interrupt_after_first_training)
    first = raw_rounds(tmp_path / "out")
    assert sorted(set(zip(first["arm"], first["seed"]))) == [("plain", 0), ("single", 0), ("single", 1)]

    again = plan(cfg)
    assert again.done == {("plain", 0), ("single", 0), ("single", 1)}
    seen = []
    run(again, lambda arm, seed, rows, saved: seen.append((arm, seed, saved)))
    assert [s for s in seen if not s[2]] == [("tickets_share", 0, False), ("plain", 1, False), ("tickets_share", 1, False)]
    assert plan(cfg).pending() == []

    rows = raw_rounds(tmp_path / "out")
    assert len(rows) == 3 * 2 * 2
    assert not rows.duplicated(["arm", "task", "seed"]).any()
    assert set(rows["kind"]) == {"mtl"} and set(rows["round"]) == {0}
    kept = first[first["arm"] == "plain"].set_index("task")["finished_at"]  # the stored run was not redone
    assert rows[(rows["arm"] == "plain") & (rows["seed"] == 0)].set_index("task")["finished_at"].equals(kept)

    tickets = ResultsStore(tickets_root).rounds()
    for r in rows.to_dict("records"):
        ticket = tickets[(tickets["task"] == r["task"]) & (tickets["seed"] == r["seed"]) & (tickets["kind"] == "ticket")]
        if r["arm"] == "plain":
            assert r["sparsity"] == 0 and pd.isna(r["mask_id"])
        else:  # tickets_share trains, and single reports, the very ticket of this task and seed
            assert r["mask_id"] == ticket["mask_id"].iloc[0] and r["sparsity"] == pytest.approx(ticket["sparsity"].iloc[0])
        if r["arm"] == "single":
            assert r["metric"] == ticket["metric"].iloc[0]
        assert r["metric_name"] == get_task(r["task"]).main_metric and r["training_steps"] > 0
    out = ResultsStore(tmp_path / "out")  # the out root keeps the masks: its sharing table needs no tickets root
    from_out = sharing_table(out, chosen_from_rows(out.rounds()))
    from_tickets = sharing_table(ResultsStore(tickets_root), again.chosen)
    pd.testing.assert_frame_equal(from_out[["unit", "shared", "random"]], from_tickets[["unit", "shared", "random"]])


def test_the_command_prints_the_table_with_each_tasks_sharing_and_skips_stored_runs(tickets_root, data_cfg, tmp_path, capsys):
    args = ["mtl", "--tickets", str(tickets_root), "--tasks", "sst2,rte", "--seeds", "0,1", "--arms",
            "plain,tickets_share,single,random", "--steps", "2", "--glue-dir", data_cfg.glue_dir,
            "--max-train-examples", "32", "--max-dev-examples", "32", "--max-seq-length", "32", "--batch-size", "8",
            "--learning-rate", "1e-3", "--out", str(tmp_path / "out"), f"data.cache_dir={data_cfg.cache_dir}",
            "--ticket-rule", "always"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "super tickets (analysis rule" in out and "multi-task results" in out
    header = next(line for line in out.splitlines() if line.startswith("task "))
    for column in ("plain (n=2)", "tickets_share (n=2)", "single (n=2)", "random (n=2)", "tickets_share - plain (p)",
                   "heads shared (random)", "FFN units shared (random)", "weights shared (random)"):
        assert column in header
    body = out.split(header, 1)[1]
    assert all(any(line.startswith(t) for line in body.splitlines()) for t in ("sst2", "rte", "average"))
    assert main(args) == 0
    assert capsys.readouterr().out.count("stored, skipped") == 8
    assert len(raw_rounds(tmp_path / "out")) == 4 * 2 * 2

    # The analysis and the report of the results root carry the same table and the arms' bar chart.
    from raytickets import cli

    assert cli.main(["analyze", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "Multi-task experiment" in printed and header.split()[0] in printed and "tickets_share - plain (p)" in printed
    mtl = pd.read_parquet(tmp_path / "out" / "analysis" / "mtl.parquet")
    assert sorted(set(zip(mtl["task"], mtl["arm"]))) == sorted(
        (t, a) for t in ("sst2", "rte", "average") for a in ("plain", "tickets_share", "single", "random"))
    assert (mtl["seeds"] == 2).all() and mtl.loc[mtl["arm"] != "plain", "paired_seeds"].eq(2).all()
    sharing = pd.read_parquet(tmp_path / "out" / "analysis" / "mtl_sharing.parquet")
    assert set(sharing["unit"]) == {"head", "ffn", "weight"} and (sharing["seed_pairs"] > 0).all()
    assert cli.main(["report", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    assert 'id="mtl.png"' in page and "tickets_share - plain (p)" in page
    assert "Multi-task experiment" in (tmp_path / "out" / "report" / "summary.md").read_text()


@pytest.mark.parametrize("fields, error, message", [
    ({"tasks": ["sst2", "rte", "sst2"]}, ConfigError, "tasks: 'sst2' is listed twice"),
    ({"alpha": 1.5}, ConfigError, "alpha: 1.5 must be in (0, 1]"),
    ({"alpha": 0.0}, ConfigError, "alpha: 0.0 must be in (0, 1]"),
    ({"tasks": ["sst2", "cola", "rte"]}, ResultsError, "no super ticket for cola in"),
    ({"seeds": [0, 3]}, ResultsError, "has seeds [0, 1]"),
    ({"arms": ["plain", "tickets"]}, ConfigError, "arms: unknown arm 'tickets'; allowed: plain, tickets_share"),
    ({"data.max_dev_examples": 16}, ConfigError, "data.max_dev_examples: 16, but sst2's tickets were scored with"),
    ({"train.seed": 3}, ConfigError, "train.seed: 3; multi-task runs take their seeds from `seeds`"),
    ({"trian.max_steps": 3}, ConfigError, "trian: unknown key (did you mean train?); allowed: tasks, tickets"),
    ({"ticket_rule": "sometimes"}, ConfigError, "ticket_rule: unknown rule 'sometimes'; allowed: super, significant, always"),
])
def test_bad_input_is_one_line_before_any_training(tickets_root, data_cfg, tmp_path, fields, error, message):
    base = {"tasks": list(TASKS), "tickets": str(tickets_root), "out": str(tmp_path / "out"), "seeds": [0, 1],
            "data": dict(data_cfg.__dict__), "train": {"max_steps": 2}}
    overrides = [f"{k}={v}" for k, v in fields.items() if "." in k]
    base.update({k: v for k, v in fields.items() if "." not in k})
    with pytest.raises(error) as caught:
        plan(load_mtl_config(base=base, overrides=overrides))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory, tiny_model_dir, data_cfg) -> Path:
    """In one results root: SST-2 tickets of the tiny BERT, RTE tickets of it under two settings (FFN
    neurons, and whole FFN sublayers), and MRPC tickets of another tiny BERT."""
    root = tmp_path_factory.mktemp("mixed")
    other = tiny_bert(tmp_path_factory.mktemp("other-bert"), seed=1)
    imp(root, tiny_model_dir, "sst2", 0, data_cfg)
    imp(root, tiny_model_dir, "rte", 0, data_cfg)
    imp(root, tiny_model_dir, "rte", 0, data_cfg, ffn_granularity="layer", ffn_fraction=0.5)
    imp(root, other, "mrpc", 0, data_cfg)
    return root


def test_no_ticket_lists_the_tasks_that_have_one_and_tickets_of_two_models_are_refused(mixed_root, tmp_path, capsys):
    cfg = lambda tasks: MTLConfig(tasks=tasks, tickets=str(mixed_root), out=str(tmp_path), arms=["plain"])  # noqa: E731
    with pytest.raises(ResultsError, match=r"no super ticket for cola in .*; tasks with one: sst2, mrpc, rte$"):
        plan(cfg(["sst2", "cola"]))
    with pytest.raises(ConfigError, match=r"tickets: the tasks' super tickets come from different models \(sst2: .*, mrpc: .*\)"):
        plan(cfg(["sst2", "mrpc"]))
    assert main(["--tickets", str(mixed_root), "--tasks", "sst2,mrpc", "--arms", "plain", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tickets: the tasks' super tickets come from different models") and err.count("\n") == 1
    assert not (tmp_path / "rounds").exists()


def test_a_task_with_several_curves_needs_a_choice_and_the_model_must_be_the_tickets(mixed_root, tmp_path, capsys):
    rounds = ResultsStore(mixed_root).rounds()
    layer, neuron = (rounds.query(f"task == 'rte' and ffn_granularity == '{g}'")["setting_id"].iloc[0] for g in ("layer", "neuron"))
    cfg = lambda tasks, **f: MTLConfig(tasks=tasks, tickets=str(mixed_root), out=str(tmp_path), arms=["plain"], **f)  # noqa: E731
    with pytest.raises(ConfigError, match=r"tickets: rte has super tickets of 2 settings .*choose one with method=, "
                                          r"setting_id= or task_settings.rte="):
        plan(cfg(["sst2", "rte"]))
    assert set(plan(cfg(["rte"], setting_id=layer[:8])).chosen["setting_id"]) == {layer}
    assert set(plan(cfg(["sst2", "rte"], setting_id=neuron)).chosen["setting_id"]) == {neuron}
    per_task = plan(cfg(["sst2", "rte"], task_settings={"rte": layer[:8]})).chosen.set_index("task")["setting_id"]
    assert per_task["rte"] == layer and per_task["sst2"] == neuron  # sst2 has one curve: no choice needed
    with pytest.raises(ConfigError, match=r"task_settings: unknown task 'mrpc'; allowed: sst2, rte"):
        load_mtl_config(base={"tasks": ["sst2", "rte"], "tickets": str(mixed_root), "out": str(tmp_path),
                              "task_settings": {"mrpc": "x"}})
    with pytest.raises(ResultsError, match="no super ticket for rte in .*; tasks with one: none"):
        plan(cfg(["rte"], method="magnitude"))
    with pytest.raises(ConfigError, match=r"model: 'minilm', but the tickets in .* are of"):
        plan(cfg(["rte"], setting_id=layer, model="minilm"))
    assert main(["--tickets", str(mixed_root), "--tasks", "sst2,rte", "--out", str(tmp_path), "--sweep"]) == 2
    assert "error: --sweep: the config has no sweep section" in capsys.readouterr().err


# ------------------------------------------------------------------------------- tasks without a super ticket


def planted_root(src: Path, dst: Path, gains: dict[str, list[float]], at_chance: tuple[str, ...] = ()) -> Path:
    """A copy of the tickets root `src` (real tickets and masks, seeds 0 and 1) in which each task's ticket of
    seed i scores its full model's value of that seed plus gains[task][i]: a super ticket, or none, planted.
    The full model of seed i scores 0.85 + 0.01 i, above chance (at most 0.6 on 32 dev rows) by more than the
    analysis' margin (2 standard errors: at most 0.18), or for the tasks `at_chance` its chance value: it did not
    learn. Seeds past 1 are copies of seed i % 2's rows (trajectory and masks) under their own trial."""
    import shutil

    shutil.copytree(src, dst)
    store = ResultsStore(dst)
    rounds = store.rounds()
    n = len(next(iter(gains.values())))
    copies = [rounds[rounds["seed"] == s % 2].assign(seed=s, trial=lambda f, s=s: f["trial"] + f"-planted{s}",
                                                     run_id=lambda f, s=s: f["run_id"] + f"-planted{s}")
              for s in range(2, n)]
    rounds = pd.concat([rounds, *copies], ignore_index=True)
    is_full = rounds["kind"] == "full"
    rounds.loc[is_full, "metric"] = [float(c) if t in at_chance else 0.85 + 0.01 * s for t, s, c in
                                     zip(rounds.loc[is_full, "task"], rounds.loc[is_full, "seed"],
                                         rounds.loc[is_full, "chance_metric"])]
    rounds.loc[is_full, "failed"] = False
    full = rounds[is_full].set_index(["task", "seed"])["metric"]
    rows = []
    for r in rounds[rounds["kind"].isin(["full", "ticket"]) | (rounds["seed"] >= 2)].to_dict("records"):
        r = {k: None if not isinstance(v, str) and pd.isna(v) else v for k, v in r.items()}
        if r["kind"] == "ticket":
            r.update(metric=float(full[(r["task"], r["seed"])]) + gains[r["task"]][r["seed"]], failed=False)
        rows.append(r)
    store.write_rounds(rows)  # seeds 0 and 1: the same keys, replacing the trained values
    return dst


@pytest.fixture(scope="module")
def no_super_root(tmp_path_factory, tickets_root) -> Path:
    """SST-2's ticket beats its full model in both seeds; RTE's only level is below it in both."""
    return planted_root(tickets_root, tmp_path_factory.mktemp("planted") / "tickets",
                        {"sst2": [0.05, 0.06], "rte": [-0.10, -0.12]})


def dense_tasks(p) -> dict[str, bool]:
    return p.chosen.groupby("task")["dense"].first().to_dict()


def test_a_task_whose_every_level_is_below_its_full_model_trains_dense_unless_the_rule_is_always(
        no_super_root, tiny_model_dir, data_cfg, tmp_path):
    """Liang et al. give a task without a super ticket no mask (construct_mtl_mask.py: MNLI and CoLA at 0 heads,
    0 FFN units). Under `super`, the default, RTE trains dense in tickets_share and in random (a random ticket
    removing nothing is the dense model), its rows name no mask, and the plan and the table say so; under
    `always` it trains through its best level, below the full model as it is (the behaviour before)."""
    import re

    from raytickets.analysis.multitask import format_table
    from raytickets.analysis.tables import conform
    from raytickets.mtl.cli import describe
    from raytickets.mtl.experiment import arm_masks

    assert MTLConfig().ticket_rule == "super"
    cfg = mtl_cfg(no_super_root, tmp_path / "out", data_cfg, seeds=[0], arms=["plain", "tickets_share", "random"],
                  ticket_rule="super")
    p = plan(cfg)
    assert dense_tasks(p) == {"sst2": False, "rte": True}
    text = describe(p)
    assert re.search(r"\n  rte +dense \(no super ticket: best level 0\.\d{4} \(structured setting \w{8}\) accuracy "
                     r"[\d.]+ below full [\d.]+\)", text), text
    assert re.search(r"\n  sst2 +structured setting \w{8} sparsity 0\.\d{4}", text), text
    config, tickets = tiny_model(tiny_model_dir).config, ResultsStore(no_super_root)
    sst2 = p.ticket("sst2", 0)
    for arm in ("tickets_share", "random"):
        masks = arm_masks(p, arm, 0, tickets, config)
        assert masks["rte"] == (None, False) and masks["sst2"][1] and masks["sst2"][0].sparsity() > 0

    run(p)
    rows = raw_rounds(tmp_path / "out").set_index(["arm", "task"])
    for arm in ("tickets_share", "random"):
        assert rows.loc[(arm, "rte"), "sparsity"] == 0 and pd.isna(rows.loc[(arm, "rte"), "mask_id"])
        assert pd.isna(rows.loc[(arm, "rte"), "source_mask_id"])
    assert rows.loc[("tickets_share", "sst2"), "mask_id"] == sst2["mask_id"]
    assert rows.loc[("random", "sst2"), "source_mask_id"] == sst2["mask_id"]
    assert rows.loc[("random", "sst2"), "sparsity"] == pytest.approx(sst2["sparsity"], abs=0.02)
    assert plan(cfg).pending() == []  # the dense rows are this plan's: a rerun finds them stored

    table = conform("mtl", mtl_table(ResultsStore(tmp_path / "out").rounds()))
    dense = table.set_index(["task", "arm"])["dense"]
    assert dense[("rte", "tickets_share")] and dense[("rte", "random")] and dense[("rte", "plain")]
    assert not dense[("sst2", "tickets_share")] and not dense[("sst2", "random")]
    lines = {line.split()[0]: line for line in format_table(table).splitlines()[2:]}
    assert lines["rte"].count("(dense)") == 2 and "(dense)" not in lines["sst2"] + lines["average"]

    always = plan(dataclasses.replace(cfg, ticket_rule="always"))
    assert dense_tasks(always) == {"sst2": False, "rte": False} and always.setting_id != p.setting_id
    rte = always.ticket("rte", 0)
    assert rte["best_mean"] < rte["full_mean"]
    mask, structured = arm_masks(always, "tickets_share", 0, tickets, config)["rte"]
    assert structured and mask.mask_id == rte["mask_id"] and "dense" not in describe(always)


def test_the_significant_rule_trains_through_a_ticket_only_where_the_selection_test_rejects(tickets_root, data_cfg,
                                                                                             tmp_path):
    """Planted on five seeds and one level: SST-2's ticket beats its full model in every seed by about 0.055,
    RTE's has the better mean but loses in one seed and gains 0.005 in another: both are super tickets, only
    SST-2's is significant (the analysis' p_selection, whichever paired test it runs: sign flip 1/32 and 3/32,
    t-test 5e-5 and 0.06). A task trains through its ticket exactly where that p is below 0.05, here and with
    two seeds."""
    from raytickets.analysis.tables import best_tickets
    from raytickets.mtl.cli import describe

    root = planted_root(tickets_root, tmp_path / "tickets", {"sst2": [0.05, 0.06, 0.055, 0.045, 0.065],
                                                            "rte": [0.005, 0.10, -0.01, 0.075, 0.025]})
    best = {b["task"]: b for b in best_tickets(root)}
    assert best["sst2"]["p_selection"] < 0.05 <= best["rte"]["p_selection"] and best["rte"]["gain"] > 0
    rule = lambda name, seeds=(0, 1): plan(mtl_cfg(root, tmp_path / "out", data_cfg, ticket_rule=name,  # noqa: E731
                                                   seeds=list(seeds)))
    significant = rule("significant", range(5))
    assert dense_tasks(significant) == {"sst2": False, "rte": True}
    assert dense_tasks(rule("super")) == dense_tasks(rule("always")) == {"sst2": False, "rte": False}
    text = describe(significant)
    assert "rte    dense (no significant super ticket: best level" in text
    assert f"p_selection {best['rte']['p_selection']:.3g} (needs < 0.05)" in text

    two_seeds = planted_root(tickets_root, tmp_path / "two", {"sst2": [0.05, 0.06], "rte": [0.005, 0.10]})
    expected = {b["task"]: not b["p_selection"] < 0.05 for b in best_tickets(two_seeds)}
    assert dense_tasks(plan(mtl_cfg(two_seeds, tmp_path / "out", data_cfg, ticket_rule="significant"))) == expected


def test_a_full_model_that_did_not_learn_has_no_super_ticket_however_its_levels_score(tickets_root, data_cfg, tmp_path):
    """RTE's full model planted at its chance value (it learned nothing, by the analysis' margin), its ticket 0.1
    above it: the analysis judges no level of that curve, so under `super` RTE trains dense and the plan says
    why; `always` still takes its best level."""
    from raytickets.mtl.cli import describe

    root = planted_root(tickets_root, tmp_path / "tickets", {"sst2": [0.05, 0.06], "rte": [0.10, 0.12]},
                        at_chance=("rte",))
    p = plan(mtl_cfg(root, tmp_path / "out", data_cfg, ticket_rule="super"))
    assert dense_tasks(p) == {"sst2": False, "rte": True}
    assert p.ticket("rte", 0)["best_mean"] > p.ticket("rte", 0)["full_mean"] and not p.ticket("rte", 0)["learned"]
    assert "rte    dense (no super ticket: the full model did not learn: full " in describe(p)
    assert dense_tasks(plan(mtl_cfg(root, tmp_path / "out", data_cfg, ticket_rule="always"))) == {"sst2": False,
                                                                                                  "rte": False}


def test_the_rules_at_their_edges():
    """`super` wants the full model beaten (a tie is no super ticket) and a full model to compare with;
    `significant` reads a missing p (one seed) as not significant; `always` takes any level."""
    from raytickets.mtl.tickets import has_ticket

    level = {"task": "rte", "setting_id": "abcdef123", "mean": 0.7, "full_mean": 0.7, "p_selection": math.nan}
    assert not has_ticket(level, "super") and not has_ticket(level, "significant") and has_ticket(level, "always")
    assert has_ticket({**level, "mean": 0.7001}, "super")
    assert not has_ticket({**level, "mean": 0.7001, "learned": False}, "super")
    assert not has_ticket({**level, "p_selection": 0.01, "learned": False}, "significant")
    assert has_ticket({**level, "p_selection": 0.049}, "significant") and not has_ticket({**level, "p_selection": 0.05}, "significant")
    with pytest.raises(ResultsError, match=r"^ticket_rule: super compares with the full model, but rte's curve abcdef12 "
                                           r"has no full-model rows; use ticket_rule=always$"):
        has_ticket({**level, "full_mean": math.nan}, "super")
    with pytest.raises(ConfigError, match=r"^ticket_rule: unknown rule 'best'; allowed: super, significant, always$"):
        has_ticket(level, "best")


# ------------------------------------------------------------------------------- tables and figure


def synthetic_rounds(effect: float, seeds: int = 5, rng=None) -> pd.DataFrame:
    rng = rng or np.random.default_rng(0)
    rows = []
    for task in ("sst2", "rte"):
        base = rng.normal(0.8, 0.02, seeds)
        for arm, shift in (("plain", 0.0), ("tickets_share", effect)):
            for seed, value in enumerate(base + shift + rng.normal(0, 0.01, seeds)):
                rows.append({"setting_id": "x", "task": task, "arm": arm, "seed": seed, "kind": "mtl", "round": 0,
                             "trial": f"t{seed}", "model": "m", "method": "structured", "metric_name": "accuracy",
                             "metric": value, "failed": False, "chance_metric": 0.5, "sparsity": 0.1 if shift else 0.0,
                             "settings": None, "source_task": None})
    return pd.DataFrame(rows)


def sign_flip_p(arm, plain) -> float:
    """scipy's exact paired permutation test (each seed's pair swapped or not) that the arm beats plain."""
    return stats.permutation_test((arm, plain), lambda x, y, axis: np.sum(x - y, axis=axis), vectorized=True,
                                  permutation_type="samples", n_resamples=np.inf, alternative="greater").pvalue


def test_mtl_table_means_and_the_paired_one_sided_test_against_plain():
    rounds = synthetic_rounds(effect=0.02)
    table = mtl_table(rounds)
    assert list(dict.fromkeys(table["task"])) == ["sst2", "rte", "average"]
    raw = {}
    for task in ("sst2", "rte"):
        mine = rounds[rounds["task"] == task]
        share, plain = (mine[mine["arm"] == a].sort_values("seed")["metric"].to_numpy() for a in ("tickets_share", "plain"))
        row = table[(table["task"] == task) & (table["arm"] == "tickets_share")].iloc[0]
        assert row["mean"] == pytest.approx(share.mean()) and row["std"] == pytest.approx(share.std(ddof=1))
        assert row["diff_vs_plain"] == pytest.approx((share - plain).mean())
        raw[task] = sign_flip_p(share, plain)
    avg = table[(table["task"] == "average") & (table["arm"] == "tickets_share")].iloc[0]
    share, plain = (rounds[rounds["arm"] == a].groupby("seed")["metric"].mean() for a in ("tickets_share", "plain"))
    assert avg["mean"] == pytest.approx(share.mean()) and avg["paired_seeds"] == 5
    raw["average"] = sign_flip_p(share.to_numpy(), plain.to_numpy())
    # Holm over the experiment's 3 tests (2 tasks and the average, 1 arm): the smallest p x 3, the next x 2, ...
    order = sorted(raw, key=raw.get)
    want = dict(zip(order, np.minimum(1, np.maximum.accumulate([(3 - i) * raw[t] for i, t in enumerate(order)]))))
    got = table[table["arm"] == "tickets_share"].set_index("task")["p_vs_plain"]
    assert got.to_dict() == pytest.approx(want)
    plain_row = table[(table["task"] == "sst2") & (table["arm"] == "plain")].iloc[0]
    assert math.isnan(plain_row["diff_vs_plain"]) and math.isnan(plain_row["p_vs_plain"])


def test_with_no_effect_no_row_of_the_table_fires_more_than_its_level():
    """A simulation: in 200 experiments of 8 seeds with no effect some row of the table (2 tasks and the
    average) is below 0.05 in about 5% of them (Holm over the rows), a planted 2-point gain almost always. With
    5 seeds no row can be: 3 x 2**-5 > 0.05."""
    rng = np.random.default_rng(1)
    null = [(mtl_table(synthetic_rounds(0.0, seeds=8, rng=rng)).query("arm == 'tickets_share'")["p_vs_plain"] < 0.05).any()
            for _ in range(200)]
    assert np.mean(null) <= 0.095
    planted = [mtl_table(synthetic_rounds(0.02, seeds=8, rng=rng)).query("task == 'average' and arm == 'tickets_share'")
               ["p_vs_plain"].iloc[0] for _ in range(30)]
    assert np.mean(np.array(planted) < 0.05) > 0.8


def test_sharing_counts_the_heads_and_units_both_tickets_keep(tickets_root, tiny_model_dir):
    from raytickets.mtl.tickets import super_ticket_masks

    store = ResultsStore(tickets_root)
    chosen = super_ticket_masks(store, list(TASKS), [0, 1])
    table = sharing_table(store, chosen)
    assert set(table["unit"]) == {"head", "ffn", "weight"} and set(table["seed_pairs"]) == {2}
    config = tiny_model(tiny_model_dir).config
    for unit, index in (("head", 0), ("ffn", 1)):
        shared, chance = [], []
        for seed in (0, 1):
            kept = [~structured_units(store.load_mask(chosen.query(f"task == '{t}' and seed == {seed}")["mask_id"].iloc[0]),
                                      config)[index] for t in TASKS]
            shared.append(int((kept[0] & kept[1]).sum()) / int((kept[0] | kept[1]).sum()))
            a, b = (float(k.float().mean()) for k in kept)
            chance.append(a * b / (a + b - a * b))
        row = table[table["unit"] == unit].iloc[0]
        assert row["shared"] == pytest.approx(np.mean(shared)) and row["random"] == pytest.approx(np.mean(chance))


def test_mtl_figure_draws_one_bar_per_arm_and_task_on_agg():
    table = mtl_table(synthetic_rounds(0.02))
    fig = mtl_figure(table)
    bars = [p for p in fig.axes[0].patches]
    assert len(bars) == 2 * 3
    png = io.BytesIO()
    fig.savefig(png, format="png")
    assert png.getvalue().startswith(b"\x89PNG")


# ------------------------------------------------------------------------------- the config


def test_the_liang2021_config_validates_and_states_how_it_runs():
    path = REPO / "configs" / "liang2021-mtl.yaml"
    cfg = load_mtl_config(path)
    assert cfg.sweep is not None and cfg.sweep.ticket.prune.method == "structured"
    assert set(cfg.tasks) == set(cfg.sweep.search.space["task"].values) and cfg.arms[:3] == ["plain", "tickets_share", "single"]
    assert cfg.tickets_root().endswith("results") and cfg.sweep.search.scheduler == "none"
    text = path.read_text()
    assert "raytickets mtl --config configs/liang2021-mtl.yaml --sweep" in text and "82.4" in text and "83.3" in text
    assert cfg.ticket_rule == "super" and "construct_mtl_mask.py" in text
    paper = load_mtl_config(path, ["model=bert-base", "sweep.ticket.model=bert-base"])
    assert paper.model == "bert-base"
    with pytest.raises(ConfigError, match=r"^alhpa: unknown key"):
        load_mtl_config(path, ["alhpa=0.5"])


# ------------------------------------------------------------------------------- the real model learns


@pytest.mark.slow
def test_pretrained_minilm_learns_sst2_in_the_multi_task_trainer_through_a_ticket(glue_dir, cache):
    """The packaged MiniLM sharing its encoder between SST-2 (through a random structured ticket: 10% of the
    heads, 10% of the FFN neurons) and RTE, 64 steps of 32 real rows (about 32 each): SST-2 well above chance.

    Measured: SST-2 accuracy 0.75 on these 300 dev rows (31 SST-2 steps); a majority guess scores 0.51.
    """
    torch.set_num_threads(2)
    data = load_task_data(["sst2", "rte"], MINILM, DataConfig(glue_dir=str(glue_dir), max_train_examples=1200,
                                                               max_dev_examples=300, max_seq_length=64, cache_dir=str(cache)))
    model = load_multitask_model(MINILM, {t: get_task(t) for t in ("sst2", "rte")}, seed=0)
    params = prunable_parameters(model)
    from raytickets.pruning import random_structured

    units = random_structured(model.config, 0.1, 0.1, "neuron", torch.Generator().manual_seed(0))
    ticket = structured_mask(params, model.config, *units)
    model.set_tickets({"sst2": ticket}, {"sst2": True})
    res = train_multitask(model, data, TrainConfig(max_steps=64, batch_size=32, eval_batch_size=100, learning_rate=1e-4,
                                                   progress=False), seed=0)
    assert min(res.task_steps.values()) > 20 and sum(res.task_steps.values()) == 64  # equal sizes: about half each
    chance = chance_metrics(get_task("sst2"), np.array(data["sst2"].dev["dev"]["labels"]))["accuracy"]
    assert res.metrics["sst2"]["accuracy"] >= 0.70 > chance + 0.1, res.metrics


# ------------------------------------------------------------------------------- DDP


def _train_tiny_with_tickets(model_dir: str, data_cfg: DataConfig, batch_size: int):
    """The tiny BERT (no dropout) sharing its encoder between SST-2 through a structured ticket and RTE
    through an unstructured one, 6 steps; returns (result, the final weights)."""
    tasks = {t: get_task(t) for t in TASKS}
    model = load_multitask_model(model_dir, tasks, seed=0)
    params = prunable_parameters(model)
    structured = structured_mask(params, model.config, {0: [1]}, {1: [3, 4]})
    unstructured = random_prune(Mask.ones_like(params), 0.4, "global", torch.Generator().manual_seed(0))
    model.set_tickets({"sst2": structured, "rte": unstructured}, {"sst2": True, "rte": False})
    # fp32: 2 ranks x 8 rows are compared with 1 x 16 to 1e-4; bf16 (null, on a bf16 CPU) rounds the two differently
    cfg = TrainConfig(max_steps=6, batch_size=batch_size, eval_batch_size=8, learning_rate=1e-2, warmup_ratio=0.0,
                      progress=False, precision="fp32")
    res = train_multitask(model, load_task_data(TASKS, model_dir, data_cfg), cfg, seed=0)
    return res, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _ddp_rank(rank: int, world: int, port: int, model_dir: str, data_cfg: DataConfig, out: str) -> None:
    import os

    import torch.distributed as dist
    from safetensors.torch import save_file

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        res, state = _train_tiny_with_tickets(model_dir, data_cfg, batch_size=8)
        if rank == 0:
            save_file(state, out)
            Path(out + ".json").write_text(json.dumps({t: m["accuracy"] for t, m in res.metrics.items()}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_train_what_one_process_trains_with_the_global_batch(tmp_path, glue_dir, cache):
    """With dropout off, 2 ranks x 8 rows follow 1 process x 16 rows: same tasks drawn, gradients averaged,
    tickets' frozen entries restored on every rank, evaluation gathered."""
    from safetensors.torch import load_file

    from raytickets.sweep.cluster import free_port

    model_dir = str(tiny_bert(tmp_path / "no-dropout", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    data = DataConfig(glue_dir=str(glue_dir), max_train_examples=48, max_dev_examples=24, max_seq_length=32,
                      cache_dir=str(cache))
    load_task_data(TASKS, model_dir, data)  # tokenise once, before the ranks read the cache
    out = str(tmp_path / "ddp.safetensors")
    torch.multiprocessing.spawn(_ddp_rank, args=(2, free_port(), model_dir, data, out), nprocs=2, join=True)
    res, state = _train_tiny_with_tickets(model_dir, data, batch_size=16)
    assert res.task_steps["sst2"] + res.task_steps["rte"] == 6 and min(res.task_steps.values()) > 0
    ddp = load_file(out)
    for name, tensor in state.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads(Path(out + ".json").read_text()) == {t: m["accuracy"] for t, m in res.metrics.items()}


@pytest.mark.slow
def test_the_command_on_two_ray_train_workers_stores_each_row_once(tickets_root, data_cfg, tmp_path):
    import os
    import subprocess
    import sys
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # a short path: Ray's sockets live there
    args = [sys.executable, "-m", "raytickets.mtl", "--tickets", str(tickets_root), "--tasks", "sst2,rte",
            "--seeds", "0", "--arms", "plain,tickets_share", "--steps", "2", "--glue-dir", data_cfg.glue_dir,
            "--max-train-examples", "32", "--max-dev-examples", "32", "--max-seq-length", "32", "--batch-size", "4",
            "--learning-rate", "1e-3", "--workers", "2", "--temp-dir", ray_tmp, "--out", str(tmp_path / "out"),
            f"data.cache_dir={data_cfg.cache_dir}", "cpus_per_worker=0.9"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 Ray worker(s)" in proc.stdout and "multi-task results" in proc.stdout
    rows = raw_rounds(tmp_path / "out")
    assert len(rows) == 2 * 2 and not rows.duplicated(["arm", "task", "seed"]).any()
    assert set(rows["training_steps"]) == {2}


# ------------------------------------------------------------------------------- search.mode: mtl


def mtl_sweep_config(tmp_path: Path, tickets_root: Path, data_cfg: DataConfig, **mtl) -> Path:
    import yaml

    section = {"tasks": list(TASKS), "tickets": str(tickets_root), "out": str(tmp_path / "out"), "seeds": [0],
               "arms": ["plain", "tickets_share", "single"], "ticket_rule": "always", "data": dataclasses.asdict(data_cfg),
               "train": {"max_steps": 2, "batch_size": 8, "eval_batch_size": 32, "learning_rate": 1e-3,
                         "warmup_ratio": 0.0}, **mtl}
    cfg = {"name": "t", "storage_path": str(tmp_path / "storage"), "search": {"mode": "mtl", "mtl": section},
           "resources": {"num_workers": 1, "cpus_per_worker": 1.9, "trial_driver_cpus": 0.1, "num_cpus": 2}}
    path = tmp_path / "mtl-sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_an_mtl_sweep_trains_each_arm_and_seed_as_a_trial_and_never_a_stored_run_twice(tickets_root, data_cfg, tmp_path):
    """`search.mode: mtl`: one Tune trial per (arm, seed) run that trains; `single` stored by the driver; a run
    `raytickets mtl` stored before (or a trial before a kill: the same check) is a trial that ends without
    training, so a resumed or rerun sweep never writes a run twice."""
    import tempfile

    from sweep.test_sweep import run_sweep, trial_results

    config = mtl_sweep_config(tmp_path, tickets_root, data_cfg)
    run(plan(mtl_cfg(tickets_root, tmp_path / "out", data_cfg, seeds=[0], arms=["plain"])))  # stored before
    before = raw_rounds(tmp_path / "out")
    proc = run_sweep(config, tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "one trial per (arm, seed) run that trains (2)" in proc.stdout and "multi-task results" in proc.stdout
    rows = raw_rounds(tmp_path / "out")
    assert len(rows) == 3 * 2 and not rows.duplicated(["arm", "task", "seed"]).any()
    plain = rows[rows["arm"] == "plain"].set_index("task")["finished_at"]
    assert plain.equals(before.set_index("task")["finished_at"])  # stored by the command: not trained again
    trained = rows[rows["arm"] == "tickets_share"]
    assert set(trained["training_steps"]) == {2} and trained["mask_id"].notna().all()
    reports = {r["reports"][-1]["arm"]: r["reports"][-1] for r in trial_results(tmp_path / "storage")}
    assert set(reports) == {"plain", "tickets_share"}  # `single` trains nothing: no trial
    assert reports["tickets_share"]["mean_metric"] == pytest.approx(trained["metric"].mean())


@pytest.mark.parametrize("fields, message", [
    ({"workers": 2}, "search.mtl.workers: set by resources.num_workers in a sweep"),
    ({"tickets": None}, "search.mtl.tickets: give the results root"),
    ({"tasks": ["sst2", "qqp"]}, "search.mtl.tickets: no super ticket for qqp .*; tasks with one: "),
    ({"alpha": 0}, r"search.mtl.alpha: 0.0 must be in \(0, 1\]"),
    ({"ticket_rule": "best"}, "search.mtl.ticket_rule: unknown rule 'best'; allowed: super, significant, always$"),
])
def test_an_mtl_sweep_refuses_bad_input_in_one_line_before_ray_starts(tickets_root, data_cfg, tmp_path, capsys, fields,
                                                                      message):
    import re

    from raytickets.sweep.cli import main as sweep_main

    assert sweep_main(["--config", str(mtl_sweep_config(tmp_path, tickets_root, data_cfg, **fields)), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err


def test_mtl_tickets_self_is_the_ticket_grid_then_the_mtl_sweep_on_its_results(capsys):
    """`search.mtl.tickets: self` (configs/liang2021-mtl-sweep.yaml): one command, two stages — the grid of
    `search.space` (no scheduler: every seed reaches every level), then the mtl sweep reading its results and
    writing into the same root, sharing its tokenised cache."""
    from raytickets.sweep.cli import main as sweep_main
    from raytickets.sweep.layout import results_dir, work_dir
    from raytickets.sweep.tuner import load_config, stages

    config = str(Path(__file__).resolve().parents[2] / "configs" / "liang2021-mtl-sweep.yaml")
    tickets, runs = stages(load_config(config, []))
    assert (tickets.search.mode, tickets.search.mtl, tickets.search.scheduler) == ("grid", None, "none")
    assert set(tickets.search.space) == {"task", "train.seed"}
    assert runs.name == f"{tickets.name}-mtl" and runs.search.mode == "mtl" and not runs.search.space
    assert runs.search.mtl["tickets"] == runs.search.mtl["out"] == results_dir(tickets)
    assert runs.work_dir == str(work_dir(tickets))
    assert runs.search.mtl["ticket_rule"] == "super" and "construct_mtl_mask.py" in Path(config).read_text()
    assert sweep_main(["--config", config, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "space: task={sst2, mrpc, rte, cola}, train.seed={0, 1, 2}" in out
    assert f"then sweep {runs.name}: multi-task runs of sst2, mrpc, rte, cola" in out
    with pytest.raises(ConfigError, match=r"search.space.train.seed: .* 2 is not among its values \[0, 1\]"):
        stages(load_config(config, ["search.space.train.seed.values=[0,1]"]))
