"""The ticket trajectory: schedules to the weight, rewinding, nested masks, baselines, structured tickets,
run ids, the shared full model, resuming, bad input and the `imp` command — on a tiny BERT and real RTE rows."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raytickets import cli
from raytickets.baselines import BASELINES, BaselineContext
from raytickets.config import DataConfig, PruneConfig, TicketConfig, TrainConfig
from raytickets.distributed import rank_batches
from raytickets.errors import ConfigError
from raytickets.masks import Mask
from raytickets.models import load_model, prunable_parameters, tiny_bert
from raytickets.pruning import magnitude_prune, select_structured, structured_importance, structured_mask
from raytickets.runs import ID_ONLY_WHEN_SET, full_id, run_id, setting_id, settings
from raytickets.store import ResultsStore
from raytickets.tickets import Trajectory, _plain, prepare, prunable_of
from raytickets.train import finetune, state_copy

REPO = Path(__file__).resolve().parents[1]
# The tiny BERT's prunable weights: 2 layers x (4 x 32·32 attention + 2 x 32·64 FFN) + a 32·32 pooler.
TOTAL = 2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 32
HEADS, LAYERS, NEURONS, HEAD_DIM = 4, 2, 64, 8


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenized")


@pytest.fixture
def make_cfg(tiny_model_dir, glue_dir, cache_dir):
    """A ticket config on the tiny model and 16 RTE rows; keyword `section__field=value` overrides."""

    def make(task="rte", **fields) -> TicketConfig:
        cfg = TicketConfig(
            task=task,
            model=str(tiny_model_dir),
            data=DataConfig(glue_dir=str(glue_dir), max_train_examples=16, max_dev_examples=16, max_seq_length=64,
                            cache_dir=str(cache_dir)),
            train=TrainConfig(max_steps=2, batch_size=8, eval_batch_size=16, learning_rate=1e-3),
            prune=PruneConfig(rounds=2, rate=0.2),
        )
        if fields.get("prune__method") == "structured":  # 2 batches of importance scores are plenty here
            fields = {"prune__importance_batches": 2, "prune__rate": PruneConfig().rate, **fields}
        for key, value in fields.items():
            section, _, name = key.partition("__")
            setattr(getattr(cfg, section), name, value) if name else setattr(cfg, section, value)
        cfg.validate()
        return cfg

    return make


def schedule(name: str, p: float, r: int) -> float:
    """The schedules written out independently of the code: of the remaining weights, or of the original count."""
    return 1 - (1 - p) ** r if name == "remaining" else r * p


def pruned_per_tensor(mask: Mask) -> dict[str, int]:
    return {name: int((~t).sum()) for name, t in mask.tensors.items()}


def assert_at_sparsity(mask: Mask, target: float, scope: str) -> None:
    """Exactly round(target·n) weights pruned: of all weights (global) or of every tensor (per_tensor)."""
    if scope == "global":
        assert mask.num_pruned == round(target * TOTAL)
    else:
        assert pruned_per_tensor(mask) == {n: round(target * t.numel()) for n, t in mask.tensors.items()}


def assert_nested(masks: list[Mask]) -> None:
    """Every round's kept set is inside the previous round's: pruned weights stay pruned."""
    for before, after in zip(masks, masks[1:]):
        for name in before.names:
            assert not bool((after.tensors[name] & ~before.tensors[name]).any()), name


def removed_units(mask: Mask) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Heads and neurons a mask removes entirely, read off the weights (not from the pruning code)."""
    heads, neurons = {}, {}
    for l in range(LAYERS):
        t = {k: mask.tensors[f"encoder.layer.{l}.{k}.weight"] for k in (
            "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense")}
        heads[l] = [h for h in range(HEADS) if not any(
            bool(t[k][h * HEAD_DIM:(h + 1) * HEAD_DIM].any()) for k in
            ("attention.self.query", "attention.self.key", "attention.self.value"))
            and not bool(t["attention.output.dense"][:, h * HEAD_DIM:(h + 1) * HEAD_DIM].any())]
        neurons[l] = [i for i in range(NEURONS)
                      if not bool(t["intermediate.dense"][i].any()) and not bool(t["output.dense"][:, i].any())]
    return heads, neurons


def params_of(mask: Mask) -> dict[str, torch.Tensor]:
    """Stand-in parameters with a mask's names and shapes (structured_mask only reads shapes)."""
    return {n: torch.empty(t.shape) for n, t in mask.tensors.items()}


def comparable(row) -> dict:
    """A row without what legitimately differs between two identical runs (clock times)."""
    row = row if isinstance(row, dict) else _plain(row)
    return {k: v for k, v in row.items() if k not in ("started_at", "finished_at", "wall_seconds")}


def mask_of_round(root: Path, cfg: TicketConfig, r: int) -> Mask:
    """The ticket mask a finished round saved."""
    return Mask.load(Trajectory(cfg, root).round_dir(r) / "mask.safetensors")


def run_rows(traj: Trajectory, **kwargs) -> list[dict]:
    return [_plain(row) for row in traj.run(**kwargs)]


def run_with_masks(traj: Trajectory) -> tuple[list[dict], dict[str, Mask]]:
    """The rows of a run and every mask its rounds trained under, as `on_round` hands them over."""
    masks: dict[str, Mask] = {}

    def keep(state) -> None:
        masks.update({row.mask_id: state.mask_of(row.mask_id) for row in state.rows if row.mask_id})

    return run_rows(traj, on_round=keep), masks


def rounds_seen(seen: list):
    """An on_round callback recording (round, resumed)."""
    return lambda state: seen.append((state.round, state.resumed))


# -- sparsity schedules ------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
@pytest.mark.parametrize("schedule_name", ["remaining", "original"])
def test_every_round_prunes_to_the_schedule_to_the_weight(make_cfg, tmp_path, schedule_name, scope):
    cfg = make_cfg(prune__schedule=schedule_name, prune__scope=scope, prune__rate=0.2, prune__rounds=3)
    traj = Trajectory(cfg, tmp_path)
    rows = run_rows(traj)
    assert [(r["round"], r["kind"]) for r in rows] == [(0, "full"), (1, "ticket"), (2, "ticket"), (3, "ticket")]
    masks = [mask_of_round(tmp_path, cfg, r) for r in (1, 2, 3)]
    for r, (mask, row) in enumerate(zip(masks, rows[1:]), start=1):
        assert_at_sparsity(mask, schedule(schedule_name, 0.2, r), scope)
        assert row["sparsity"] == mask.sparsity() and row["mask_id"] == mask.mask_id
        assert row["schedule"] == schedule_name and row["scope"] == scope
    assert_nested(masks)
    # Round 1 ranks the fine-tuned full model's weights, not the pre-trained ones.
    full = load_file(str(traj.full_dir / "weights.safetensors"))
    ones = Mask.ones_like(masks[0].tensors)
    by_full = magnitude_prune({n: full[f"bert.{n}"] for n in ones.names}, ones, schedule(schedule_name, 0.2, 1), scope)
    assert masks[0] == by_full
    # The last round trained under its mask: its pruned weights are exactly zero.
    final = load_file(str(traj.round_dir(3) / "weights.safetensors"))
    for name, keep in masks[2].tensors.items():
        assert bool((final[f"bert.{name}"][~keep] == 0).all()), name
        assert bool((final[f"bert.{name}"][keep] != 0).any()), name


@pytest.mark.parametrize("schedule_name, rate, rounds", [("remaining", 0.3, 2), ("original", 0.2, 3)])
def test_target_sparsity_stops_the_trajectory_and_the_last_round_prunes_exactly_to_it(
    make_cfg, tmp_path, schedule_name, rate, rounds
):
    cfg = make_cfg(prune__schedule=schedule_name, prune__rate=rate, prune__rounds=None, prune__target_sparsity=0.5)
    assert cfg.prune.num_rounds() == rounds
    traj = Trajectory(cfg, tmp_path)
    rows = run_rows(traj)
    assert [r["round"] for r in rows] == list(range(rounds + 1))
    assert traj.done_rounds() == list(range(1, rounds + 1)) and not traj.round_dir(rounds + 1).exists()
    masks = [mask_of_round(tmp_path, cfg, r) for r in range(1, rounds + 1)]
    for r, mask in enumerate(masks[:-1], start=1):
        assert mask.num_pruned == round(schedule(schedule_name, rate, r) * TOTAL)
    assert masks[-1].num_pruned == TOTAL // 2  # exactly the target, although the schedule would overshoot it
    assert schedule(schedule_name, rate, rounds) > 0.5
    assert_nested(masks)


# -- rewinding ---------------------------------------------------------------------------------------


def test_rewind_after_fine_tuning_restores_every_surviving_weight_bit_for_bit(make_cfg):
    cfg = make_cfg(train__max_steps=3)
    prep = prepare(cfg)
    params = prunable_of(cfg, prep.model)
    fresh = load_model(cfg.model, prep.task.num_labels, seed=cfg.train.seed)  # pre-trained encoder, same head
    live = {id(t.untyped_storage()) for t in prep.model.state_dict().values()}
    assert not any(id(t.untyped_storage()) in live for t in prep.initial.state.values())
    mask = magnitude_prune(params, Mask.ones_like(params), 0.3)
    finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, cfg.train, mask, params)
    trained = prep.model.state_dict()
    expected = fresh.state_dict()
    changed = [n for n in expected if not torch.equal(trained[n], expected[n])]
    assert any(n.startswith("bert.encoder") for n in changed) and "classifier.weight" in changed

    prep.model.load_state_dict(prep.initial.state)  # the rewind point: pre-trained encoder, the fresh head
    mask.apply(params)
    state = prep.model.state_dict()
    for name, value in expected.items():
        bare = name.removeprefix("bert.")
        if bare in mask.tensors:
            keep = mask.tensors[bare]
            assert torch.equal(state[name][keep], value[keep]), name  # survivors: the pre-trained value
            assert bool((state[name][~keep] == 0).all()), name
        else:
            assert torch.equal(state[name], value), name  # embeddings, biases, LayerNorm, the task head


def test_late_rewind_point_is_the_full_model_after_k_steps(make_cfg, tmp_path):
    cfg = make_cfg(train__max_steps=3, prune__rewind_step=1, prune__rounds=1)
    traj = Trajectory(cfg, tmp_path)
    traj.run()
    saved = load_file(str(traj.full_dir / "rewind.safetensors"))

    prep = prepare(traj.cfg)  # the same full-model run again, watched step by step
    after = {}
    finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, traj.cfg.train,
             on_step=lambda step, loss: after.setdefault(step, state_copy(prep.model)))
    assert saved.keys() == after[1].keys() and "classifier.weight" in saved  # every weight, the head too
    for name in saved:
        assert torch.equal(saved[name], after[1][name]), name
    for other in (prep.initial.state, after[3]):
        assert any(not torch.equal(saved[n], other[n]) for n in saved)


def test_rewind_step_beyond_the_epoch_steps_fails_before_training(make_cfg, tmp_path):
    # No max_steps: the step count (16 rows / batch 8 x 1 epoch = 2) is only known once the data is read.
    cfg = make_cfg(train__max_steps=None, train__epochs=1.0, prune__rewind_step=5)
    traj = Trajectory(cfg, tmp_path)
    with pytest.raises(ConfigError, match=r"prune\.rewind_step: 5 is beyond the 2 training steps"):
        traj.run()
    assert not traj.full_dir.exists() and traj.done_rounds() == []


# -- baselines ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_baselines_run_at_the_tickets_exact_sparsity(make_cfg, tmp_path, scope):
    baselines = ["random", "reinit", "shuffled", "oneshot", "standard"]
    cfg = make_cfg(prune__scope=scope, prune__baselines=baselines)
    traj = Trajectory(cfg, tmp_path)
    rows, masks = run_with_masks(traj)
    full = load_file(str(traj.full_dir / "weights.safetensors"))
    for r in (1, 2):
        at = {row["kind"]: row for row in rows if row["round"] == r}
        assert list(at) == ["ticket", *baselines]
        ticket = masks[at["ticket"]["mask_id"]]
        assert_at_sparsity(ticket, schedule("remaining", 0.2, r), scope)
        for kind in baselines:
            mask = masks[at[kind]["mask_id"]]
            assert at[kind]["sparsity"] == at["ticket"]["sparsity"], kind
            assert mask.num_pruned == ticket.num_pruned, kind
            if scope == "per_tensor":
                assert pruned_per_tensor(mask) == pruned_per_tensor(ticket), kind
        assert masks[at["random"]["mask_id"]] != ticket
        for kind in ("reinit", "shuffled"):
            assert masks[at[kind]["mask_id"]] == ticket, kind
        ones = Mask.ones_like(ticket.tensors)
        full_weights = {n: full[f"bert.{n}"] for n in ones.names}
        assert masks[at["oneshot"]["mask_id"]] == magnitude_prune(full_weights, ones, schedule("remaining", 0.2, r), scope)
        if r == 1:  # standard pruning starts from the full model too: its first mask is the ticket's
            assert masks[at["standard"]["mask_id"]] == ticket


def test_baseline_starting_points(make_cfg, tmp_path):
    cfg = make_cfg()
    traj = Trajectory(cfg, tmp_path)
    prep = prepare(traj.cfg)
    params = prunable_of(traj.cfg, prep.model)
    full_state = state_copy(prep.model)
    ticket = magnitude_prune(params, Mask.ones_like(params), 0.2)
    initial = prep.initial

    def start(kind, chain=None):
        return BASELINES[kind].start(BaselineContext(
            round=1, seed=0, method=traj.method, ticket=ticket, target=0.2, rewind=initial, initial=initial,
            full_state=full_state, model=prep.model, params=params, generator=torch.Generator().manual_seed(1),
            pruning_on=lambda state: traj._pruning_on(prep, params, state), chain=chain or {},
        ))

    reinit = start("reinit")
    assert reinit.mask == ticket and reinit.point.step == 0
    for name in params:
        assert not torch.equal(reinit.point.state[f"bert.{name}"], initial.state[f"bert.{name}"]), name
    assert torch.equal(reinit.point.state["classifier.weight"], initial.state["classifier.weight"])
    shuffled = start("shuffled")
    assert shuffled.mask == ticket
    for name, value in initial.state.items():
        if name.removeprefix("bert.") in params:  # the same values, in another order, within each tensor
            assert not torch.equal(shuffled.point.state[name], value), name
            assert torch.equal(shuffled.point.state[name].flatten().sort().values, value.flatten().sort().values), name
        else:
            assert torch.equal(shuffled.point.state[name], value), name
    random = start("random")
    assert random.mask != ticket and random.mask.num_pruned == ticket.num_pruned == round(0.2 * TOTAL)
    assert random.point is initial
    # standard pruning: its own chain, never rewound; the first round prunes the full model like the ticket
    standard = start("standard")
    assert standard.mask == ticket and standard.point.state is full_state and standard.point.step == 0
    moved = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in full_state.items()}
    later = start("standard", chain={"mask": ticket, "state": moved})
    assert later.point.state is moved  # round r prunes and trains on from the chain's own round r-1
    assert later.mask.num_pruned == ticket.num_pruned  # same target, from its own weights


# -- structured tickets -----------------------------------------------------------------------------


def test_structured_trajectory_removes_the_requested_heads_and_neurons(make_cfg, tmp_path):
    structured = dict(prune__method="structured", prune__head_fraction=0.5, prune__ffn_fraction=0.5, prune__rounds=2)
    cfg = make_cfg(**structured, prune__baselines=["random"])
    traj = Trajectory(cfg, tmp_path)
    rows, by_id = run_with_masks(traj)
    prep = prepare(traj.cfg)
    masks = []
    for r in (1, 2):
        at = {row["kind"]: row for row in rows if row["round"] == r}
        ticket, random = by_id[at["ticket"]["mask_id"]], by_id[at["random"]["mask_id"]]
        masks.append(ticket)
        for mask in (ticket, random):
            heads, neurons = removed_units(mask)
            # linear over the rounds: 2 of 8 heads and 32 of 128 neurons, then 4 and 64
            assert sum(map(len, heads.values())) == 2 * r and sum(map(len, neurons.values())) == 32 * r
            assert all(len(hs) < HEADS for hs in heads.values())
            assert mask == structured_mask(params_of(mask), prep.model.config, heads, neurons)  # whole units only
        assert random != ticket and at["random"]["sparsity"] == at["ticket"]["sparsity"]
    assert_nested(masks)

    # Round 1 removes the least important units of the fine-tuned full model.
    prep.model.load_state_dict(load_file(str(traj.full_dir / "weights.safetensors")))
    hp = traj.method.hp
    batches = rank_batches(prep.train, prep.collate, cfg.train.batch_size, cfg.train.seed, 0, True, hp.importance_batches)
    importance = structured_importance(prep.model, batches, hp.normalize_importance, hp.importance)
    least = select_structured(importance, 0.25, 0.25)
    assert masks[0] == structured_mask(params_of(masks[0]), prep.model.config, *least)

    losing = Trajectory(make_cfg(**structured, prune__losing=True), tmp_path)
    losing.run()
    assert losing.full_dir == traj.full_dir  # same full model, so the same importance scores
    for r in (1, 2):
        win_heads, win_neurons = removed_units(mask_of_round(tmp_path, traj.cfg, r))
        lose_heads, lose_neurons = removed_units(mask_of_round(tmp_path, losing.cfg, r))
        assert win_heads != lose_heads and win_neurons != lose_neurons
        assert sum(map(len, lose_heads.values())) == 2 * r and sum(map(len, lose_neurons.values())) == 32 * r
        assert all(len(hs) < HEADS for hs in lose_heads.values())


def test_head_fraction_removing_every_head_of_a_layer_fails_before_training(make_cfg, tmp_path):
    cfg = make_cfg(prune__method="structured", prune__head_fraction=0.9, prune__rounds=2)
    traj = Trajectory(cfg, tmp_path)
    with pytest.raises(ConfigError, match=r"prune\.head_fraction: 0\.9 would remove every head of a layer"):
        traj.run()
    assert not traj.full_dir.exists() and traj.done_rounds() == []


# -- runs indexed by their settings ------------------------------------------------------------------


def test_run_ids_follow_the_settings_that_change_results(make_cfg, tmp_path):
    base = make_cfg()
    assert run_id(base) == run_id(make_cfg())
    assert Trajectory(base, tmp_path).dir == Trajectory(make_cfg(), tmp_path).dir
    for changed in (make_cfg(train__seed=1), make_cfg(prune__rate=0.3), make_cfg(task="mrpc"),
                    make_cfg(prune__schedule="original"), make_cfg(prune__rewind_step=1)):
        assert run_id(changed) != run_id(base)
    other_data = make_cfg(data__glue_dir=str(tmp_path), data__cache_dir=str(tmp_path / "elsewhere"))
    assert run_id(other_data) == run_id(base) and full_id(other_data) == full_id(base)
    # The full model does not depend on how it is pruned later, only on what is trained.
    assert full_id(make_cfg(prune__rate=0.3, prune__schedule="original")) == full_id(base)
    assert full_id(make_cfg(train__seed=1)) != full_id(base) and full_id(make_cfg(task="mrpc")) != full_id(base)


def test_settings_added_later_rename_no_stored_run_at_their_default():
    """A field added to the config with the default every earlier run had (length buckets, torch.compile, the
    MLM corpus settings) renamed every stored run before `ID_ONLY_WHEN_SET`: a results root written a week
    earlier stopped resuming (issue 9's real run retrained from round 1) and its rows became another curve. The
    ids of a plain config are pinned here: a change that moves them renames every run in every results root."""
    cfg = TicketConfig(task="sst2", model="minilm")
    assert (run_id(cfg), full_id(cfg), setting_id(cfg)) == ("91a1e4f9d3d48362", "431433a1218def56", "a3439b8a8d9c67c9")
    stored = settings(cfg)
    assert all(key not in stored[section] for section, key in ID_ONLY_WHEN_SET)
    for section, key, value in (("train", "bucket_by_length", True), ("train", "compile", True),
                                ("data", "mlm_probability", 0.2), ("data", "corpus", "/some/corpus.txt")):
        changed = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{key: value})})
        assert run_id(changed) != run_id(cfg), key  # set away from its default, it is a setting like any other


def test_full_model_is_computed_once_and_shared_by_trajectories_with_different_rates(make_cfg, tmp_path):
    seen = []
    first = Trajectory(make_cfg(prune__rate=0.1, prune__rounds=1), tmp_path)
    first.run(on_round=lambda st: seen.append((1, st.round, st.resumed)))
    full_rows = first.full_dir / "rows.json"
    stamp, content = full_rows.stat().st_mtime_ns, full_rows.read_text()
    second = Trajectory(make_cfg(prune__rate=0.2, prune__rounds=1), tmp_path)
    rows = run_rows(second, on_round=lambda st: seen.append((2, st.round, st.resumed)))
    assert seen == [(1, 0, False), (1, 1, False), (2, 0, True), (2, 1, False)]
    assert second.full_dir == first.full_dir and second.dir != first.dir
    assert full_rows.stat().st_mtime_ns == stamp and full_rows.read_text() == content
    assert len(list((tmp_path / "full").iterdir())) == 2  # the run directory and its lock file
    # The shared row is labelled as this trajectory's own; the score is the one computed once.
    assert rows[0]["trial"] == second.id and rows[0]["rate"] == 0.2
    assert rows[0]["metric"] == json.loads(content)[0]["metric"] == rows[1]["full_metric"]
    assert mask_of_round(tmp_path, second.cfg, 1).num_pruned == round(0.2 * TOTAL)


# -- resuming ----------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def test_interrupted_trajectory_resumes_without_redoing_finished_rounds(make_cfg, tmp_path):
    cfg = make_cfg(prune__rounds=3, prune__baselines=["random"])

    def stop_in_round_2(state):
        if state.round == 1:
            raise Interrupted  # round 1 is on disk; round 2 never finishes

    traj = Trajectory(cfg, tmp_path / "a")
    with pytest.raises(Interrupted):
        traj.run(on_round=stop_in_round_2)
    assert traj.done_rounds() == [1]
    round1 = (traj.round_dir(1) / "rows.json").read_text()

    calls = []
    rows = run_rows(Trajectory(cfg, tmp_path / "a"),
                    on_round=lambda st: calls.append((st.round, st.resumed, [_plain(r) for r in st.rows])))
    assert [(r, resumed) for r, resumed, _ in calls] == [(0, True), (1, True), (2, False), (3, False)]
    assert calls[1][2] == json.loads(round1)  # the very rows written before, timestamps included
    assert (traj.round_dir(1) / "rows.json").read_text() == round1
    assert [r["round"] for r in rows] == [0, 1, 1, 2, 2, 3, 3]

    # Resuming gives what an uninterrupted run gives.
    whole = run_rows(Trajectory(cfg, tmp_path / "b"))
    assert [comparable(r) for r in whole] == [comparable(r) for r in rows]
    for r in (1, 2, 3):
        assert mask_of_round(tmp_path / "a", cfg, r) == mask_of_round(tmp_path / "b", cfg, r)


def cli_args(command: str, model: Path, glue: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return [command, "--task", "rte", "--model", str(model), "--glue-dir", str(glue), "--max-train-examples", "16",
            "--max-dev-examples", "16", "--max-seq-length", "64", "--batch-size", "8", "--max-steps", "2",
            "--out", str(out), *extra, f"data.cache_dir={cache}"]


def imp_args(model: Path, glue: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return cli_args("imp", model, glue, cache, out, "--method", "magnitude", "--schedule", "remaining", *extra)


def run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "raytickets.cli", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_imp_killed_in_round_2_resumes_at_round_2(tiny_model_dir, glue_dir, cache_dir, tmp_path):
    args = imp_args(tiny_model_dir, glue_dir, cache_dir, tmp_path, "--rate", "0.2", "--rounds", "3",
                    "--baselines", "random,reinit,shuffled")
    proc = run_cli(args)
    try:
        for line in proc.stdout:
            if line.strip().startswith("round 1 shuffled"):  # round 1's rows are written before they are shown
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    (run_dir,) = (tmp_path / "work" / "runs").iterdir()
    (round1_dir,) = run_dir.glob("round-*")  # named by index and target sparsity: round-001-s0.200000
    assert round1_dir.name.startswith("round-001-")
    round1 = {p.name: p.read_bytes() for p in round1_dir.iterdir() if p.name != "weights.safetensors"}

    proc = run_cli(args)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    lines = [l.split() for l in out.splitlines() if l.startswith("  round ")]
    assert [(l[1], l[2], l[-1] == "(saved)") for l in lines] == [
        ("0", "full", True), *[("1", k, True) for k in ("ticket", "random", "reinit", "shuffled")],
        *[(r, k, False) for r in ("2", "3") for k in ("ticket", "random", "reinit", "shuffled")]]
    assert sorted(p.name[:9] for p in run_dir.glob("round-*")) == ["round-001", "round-002", "round-003"]
    for name, content in round1.items():  # rows (timestamps included) and masks untouched
        assert (round1_dir / name).read_bytes() == content, name


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--rate", "1.5", "--rounds", "2"], "error: prune.rate: 1.5 must be in (0, 1)"),
    (["--rate", "0", "--rounds", "2"], "error: prune.rate: 0.0 must be in (0, 1)"),
    (["--target-sparsity", "1.0"], "error: prune.target_sparsity: 1.0 must be in (0, 1)"),
    (["--target-sparsity", "0"], "error: prune.target_sparsity: 0.0 must be in (0, 1)"),
    (["--rounds", "0"], "error: prune.rounds: 0 must be >= 1"),
    (["--rounds", "1", "--rewind-step", "1000"], "error: prune.rewind_step: 1000 is beyond the 2 training steps"),
    (["--method", "structured", "--head-fraction", "0.9", "--rounds", "1"],
     "error: prune.head_fraction: 0.9 would remove every head of a layer"),
])
def test_bad_imp_input_is_one_line_before_any_training(tiny_model_dir, glue_dir, cache_dir, tmp_path, capsys,
                                                       flags, message):
    code = cli.main(imp_args(tiny_model_dir, glue_dir, cache_dir, tmp_path, *flags))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not list(tmp_path.rglob("round-*")) and not list(tmp_path.rglob("rows.json"))


def test_imp_rewind_step_beyond_max_steps_exits_2(tiny_model_dir, glue_dir, cache_dir, tmp_path):
    proc = run_cli(imp_args(tiny_model_dir, glue_dir, cache_dir, tmp_path, "--rounds", "1", "--rewind-step", "1000",
                            "--max-steps", "3"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err == "error: prune.rewind_step: 1000 is beyond the 3 training steps\n"
    assert not list(tmp_path.rglob("round-*")) and not (tmp_path / "work" / "runs").exists()


@pytest.mark.parametrize("foreign", ["shapes", "names"])
def test_finetune_with_a_mask_of_another_model_is_a_mask_error(tiny_model_dir, glue_dir, cache_dir, tmp_path,
                                                               capsys, foreign):
    if foreign == "shapes":  # another model: 16 wide instead of 32
        other = load_model(str(tiny_bert(tmp_path / "narrow", hidden_size=16, intermediate_size=32)), 2)
        mask, expected = Mask.ones_like(prunable_parameters(other)), "error: mask tensor 'encoder.layer.0.attention"
    else:  # the same model, another prunable set (no pooler)
        tiny = load_model(str(tiny_model_dir), 2)
        mask = Mask.ones_like(prunable_parameters(tiny, exclude=[r"pooler\..*"]))
        expected = "error: mask: no entry for prunable tensor 'pooler.dense.weight'"
    mask.save(tmp_path / "mask.safetensors")
    capsys.readouterr()
    code = cli.main(cli_args("finetune", tiny_model_dir, glue_dir, cache_dir, tmp_path / "out",
                             "--mask", str(tmp_path / "mask.safetensors")))
    # The model is loaded to learn its shapes (transformers may draw a progress bar); the error is one line.
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(err) == 1 and err[0].startswith(expected), err
    assert not (tmp_path / "out" / "metrics.json").exists()


# -- the imp command ---------------------------------------------------------------------------------


def test_imp_prints_the_table_of_rounds(tiny_model_dir, glue_dir, cache_dir, tmp_path, capsys):
    args = imp_args(tiny_model_dir, glue_dir, cache_dir, tmp_path, "--rate", "0.2", "--rounds", "2",
                    "--baselines", "random,reinit")
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = lines.index("metric: accuracy")
    assert lines[start + 1].split() == ["round", "sparsity", "ticket", "random", "reinit", "full"]
    table = [l.split() for l in lines[start + 2:] if not l.startswith("results:")]
    (run_dir,) = (tmp_path / "work" / "runs").iterdir()
    rows = {(r["round"], r["kind"]): r for f in run_dir.glob("round-*/rows.json") for r in json.loads(f.read_text())}
    full = json.loads(next((tmp_path / "work" / "full").glob("*/rows.json")).read_text())[0]["metric"]
    assert [row[0] for row in table] == ["0", "1", "2"]
    assert table[0] == ["0", "0.0000", f"{full:.4f}", f"{full:.4f}"]
    for r, row in zip((1, 2), table[1:]):
        assert row[1] == f"{round(schedule('remaining', 0.2, r) * TOTAL) / TOTAL:.4f}"
        assert row[2:] == [f"{rows[r, k]['metric']:.4f}" for k in ("ticket", "random", "reinit")] + [f"{full:.4f}"]


def test_trajectories_that_stop_elsewhere_share_their_rounds(make_cfg, tmp_path):
    # rate 0.3: the schedule's sparsities are 0.3, 0.51, 0.657; a target of 0.6 makes round 3 off-schedule
    root = tmp_path / "shared"
    two = Trajectory(make_cfg(prune__rate=0.3, prune__rounds=2), root)
    two_rows = run_rows(two)
    three = Trajectory(make_cfg(prune__rate=0.3, prune__rounds=3), root)
    assert three.id == two.id and three.dir == two.dir
    seen = []
    three.run(on_round=rounds_seen(seen))
    assert seen == [(0, True), (1, True), (2, True), (3, False)]  # rounds 1-2 were not trained again
    assert not (two.round_dir(2) / "weights.safetensors").exists()  # only the latest round keeps weights

    target = Trajectory(make_cfg(prune__rate=0.3, prune__rounds=None, prune__target_sparsity=0.6), root)
    seen.clear()
    rows = run_rows(target, on_round=rounds_seen(seen))
    assert seen == [(0, True), (1, True), (2, True), (3, False)]
    assert target.round_dir(3) != three.round_dir(3)  # the off-schedule last round is stored apart
    masks = {r: Mask.load(target.round_dir(r) / "mask.safetensors") for r in (2, 3)}
    assert masks[3].num_pruned == round(0.6 * masks[3].num_total)
    # round 2's weights were gone, so they were trained again from its mask: the same pruning results
    assert Mask.load(three.round_dir(3) / "mask.safetensors") != masks[3]
    kept2 = torch.cat([t.flatten() for t in masks[2].tensors.values()])
    kept3 = torch.cat([t.flatten() for t in masks[3].tensors.values()])
    assert not (kept3 & ~kept2).any()  # round 3 prunes within round 2's survivors
    # shared rows name the trajectory that reads them
    assert {r["target_sparsity"] for r in rows} == {0.6}
    assert [r["metric"] for r in rows if r["round"] <= 2] == [r["metric"] for r in two_rows]


def test_min_gain_ends_the_trajectory_past_the_transition_and_keeps_its_rounds_shared(make_cfg, tmp_path):
    root = tmp_path / "shared"
    everything = Trajectory(make_cfg(prune__rounds=3), root)
    rows = run_rows(everything)
    gains = [r["metric"] - r["full_metric"] for r in rows if r["kind"] == "ticket"]
    # A bar above every round's gain stops after round 1; one below all of them never stops.
    above, below = max(gains) + 0.01, min(gains) - 0.01
    stopped = Trajectory(make_cfg(prune__rounds=3, prune__min_gain=above), root)
    assert stopped.id == everything.id  # where a trajectory stops is not part of what it computes
    seen = []
    walked = run_rows(stopped, on_round=rounds_seen(seen))
    assert seen == [(0, True), (1, True)]
    assert [(r["round"], r["kind"]) for r in walked] == [(0, "full"), (1, "ticket")]
    assert [r.round for r in Trajectory(make_cfg(prune__rounds=3, prune__min_gain=below), root).run()] == [0, 1, 2, 3]

    # A fresh trajectory that stops trains nothing past the stop; one without the bar goes on from there.
    fresh = tmp_path / "fresh"
    assert [r.round for r in Trajectory(make_cfg(prune__rounds=3, prune__min_gain=above), fresh).run()] == [0, 1]
    later = Trajectory(make_cfg(prune__rounds=3), fresh)
    assert later.done_rounds() == [1]
    seen.clear()
    later.run(on_round=rounds_seen(seen))
    assert seen == [(0, True), (1, True), (2, False), (3, False)]


def test_min_gain_outside_a_metric_difference_is_a_config_error(make_cfg):
    with pytest.raises(ConfigError, match=r"prune.min_gain: 1.5 must be in \[-1, 1\]"):
        make_cfg(prune__min_gain=1.5)


@pytest.mark.slow
def test_pretrained_minilm_trajectory_learns_and_stops_past_its_transition(glue_dir, cache_dir, tmp_path):
    """The packaged MiniLM on 256 real SST-2 rows (16 steps at 4e-4, as in benchmarks/search_efficiency.py),
    30 % of the weights pruned per round: the full model and the 30 % ticket learn (measured 0.675 and
    0.75 on these 200 dev rows; a majority guess scores 0.53), and the trajectory ends after the first
    round whose ticket is 0.05 below the full model (measured: round 2, 60 %, collapses to 0.53)."""
    cfg = TicketConfig(
        task="sst2", model="minilm",
        data=DataConfig(glue_dir=str(glue_dir), max_train_examples=256, max_dev_examples=200, max_seq_length=64,
                        cache_dir=str(cache_dir)),
        train=TrainConfig(epochs=1, batch_size=16, learning_rate=4e-4),
        prune=PruneConfig(schedule="original", rate=0.3, rounds=3, min_gain=-0.05),
    )
    traj = Trajectory(cfg, tmp_path)
    rows = run_rows(traj)
    full, tickets = rows[0], rows[1:]
    assert full["kind"] == "full" and full["metric"] >= 0.62, full
    assert tickets[0]["sparsity"] == pytest.approx(0.3, abs=1e-6) and tickets[0]["metric"] >= 0.62, tickets[0]
    gains = [t["metric"] - full["metric"] for t in tickets]
    assert gains[-1] < -0.05 and all(g >= -0.05 for g in gains[:-1]), gains  # it stopped at the first fall
    last = tickets[-1]["round"]
    assert traj.done_rounds() == list(range(1, last + 1))  # nothing past the stop was trained


def test_prunable_set_applies_exclude_to_an_explicit_include_too(make_cfg):
    prep = prepare(make_cfg())
    attention = [r"encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)\.weight"]
    both = prunable_of(make_cfg(prune__include=attention, prune__exclude=[r".*\.output\.dense\.weight"]), prep.model)
    assert sorted(both) == sorted(n for n in prunable_of(make_cfg(prune__include=attention), prep.model)
                                  if not n.endswith("output.dense.weight"))
    assert len(both) == LAYERS * 3  # query, key and value of every layer


# -- the science, as the papers define it ----------------------------------------------------------------


def test_structured_baselines_follow_the_method_and_standard_pruning_is_its_own_chain(make_cfg, tmp_path):
    cfg = make_cfg(prune__method="structured", prune__head_fraction=0.5, prune__ffn_fraction=0.5, prune__rounds=2,
                   prune__baselines=["oneshot", "standard"])
    traj = Trajectory(cfg, tmp_path)
    rows, masks = run_with_masks(traj)
    at = {(row["round"], row["kind"]): masks[row["mask_id"]] for row in rows if row["mask_id"]}
    for r in (1, 2):  # structured one-shot pruning to the same head and neuron counts, not magnitude
        heads, neurons = removed_units(at[r, "oneshot"])
        assert sum(map(len, heads.values())) == 2 * r and sum(map(len, neurons.values())) == 32 * r
        assert at[r, "oneshot"] == structured_mask(params_of(at[r, "oneshot"]), load_model(cfg.model, 2).config,
                                                   heads, neurons)
    assert at[1, "oneshot"] == at[1, "ticket"] == at[1, "standard"]  # round 1: all prune the full model
    # round 2's oneshot still ranks the full model; the ticket ranks round 1's rewound-and-trained model and
    # standard pruning its own round 1, trained on without rewinding
    prep = prepare(traj.cfg)
    prep.model.load_state_dict(load_file(str(traj.full_dir / "weights.safetensors")))
    hp = traj.method.hp
    batches = rank_batches(prep.train, prep.collate, cfg.train.batch_size, cfg.train.seed, 0, True, hp.importance_batches)
    importance = structured_importance(prep.model, batches, hp.normalize_importance, hp.importance)
    assert at[2, "oneshot"] == structured_mask(params_of(at[2, "oneshot"]), prep.model.config,
                                               *select_structured(importance, 0.5, 0.5))
    assert at[2, "standard"] != at[2, "ticket"]
    assert (traj.round_dir(2) / "chain-standard.safetensors").is_file()  # to resume the chain


def test_a_removed_ffn_sublayer_loses_its_bias_too(make_cfg, tmp_path):
    cfg = make_cfg(prune__method="structured", prune__head_fraction=0.25, prune__ffn_fraction=0.5,
                   prune__ffn_granularity="layer", prune__rounds=1)
    traj = Trajectory(cfg, tmp_path)
    rows, masks = run_with_masks(traj)
    mask = masks[rows[-1]["mask_id"]]
    biases = {n: t for n, t in mask.tensors.items() if n.endswith("output.dense.bias")}
    assert len(biases) == LAYERS and sum(not bool(t.any()) for t in biases.values()) == 1  # one of two layers
    weights = load_file(str(traj.round_dir(1) / "weights.safetensors"))
    for name, keep in biases.items():
        if not keep.any():
            assert not weights[f"bert.{name}"].any(), name  # and it stays 0 through fine-tuning


def test_minilm_leaves_its_pooler_dense_and_collapse_is_reported(tiny_model_dir, glue_dir, cache_dir, tmp_path,
                                                                 capsys):
    from raytickets.models import DEFAULT_INCLUDE, default_include

    assert not any("pooler" in p for p in default_include("minilm")) and DEFAULT_INCLUDE == default_include("bert-base")
    assert any("pooler" in p for p in DEFAULT_INCLUDE)  # Chen et al.'s set for BERT
    # A model whose pooler is 1000x smaller than its encoder, as MiniLM's is 10x: global magnitude pruning
    # takes the whole pooler long before half the weights are gone.
    small = tiny_bert(tmp_path / "small-pooler")
    from safetensors.torch import save_file

    state = load_file(str(small / "model.safetensors"))
    state["pooler.dense.weight"] = state["pooler.dense.weight"] * 1e-3
    save_file(state, str(small / "model.safetensors"))
    code = cli.main(cli_args("imp", small, glue_dir, cache_dir, tmp_path / "out", "--rate", "0.3", "--rounds", "1"))
    out = capsys.readouterr().out
    assert code == 0
    assert "warning: layer collapse in round 1: pooler.dense.weight is 100.0% pruned at 30.0% overall" in out
    from raytickets.analysis.tables import analyze

    # the tiny model learns nothing: a margin of -1 lets its levels be judged, so there is a ticket whose layers
    # the table reports (the chance rule itself: tests/analysis/test_analysis.py)
    layers = analyze(tmp_path / "out", min_above_chance=-1.0)["layer_sparsity"]
    pooler = layers.loc[layers["layer"] == "pooler", "collapsed"]
    assert len(pooler) and pooler.all(), layers  # not vacuous: the pooler's rows exist


def test_two_settings_in_one_results_root_are_two_curves(tiny_model_dir, glue_dir, cache_dir, tmp_path, capsys):
    out = tmp_path / "out"
    for rewind in ("0", "2"):
        assert cli.main(cli_args("imp", tiny_model_dir, glue_dir, cache_dir, out, "--rate", "0.3", "--rounds", "2",
                                 "--rewind-step", rewind, "--max-steps", "3")) == 0
    capsys.readouterr()
    assert cli.main(["analyze", str(out)]) == 0
    from raytickets.analysis.tables import load_analysis

    supers = load_analysis(out)["super_tickets"]
    assert supers["setting_id"].nunique() == 2 and len(supers) == 4  # two curves of two levels each
    rounds = ResultsStore(out).rounds()
    assert rounds.groupby("setting_id")["rewind_step"].nunique().eq(1).all()
    assert sorted(rounds.groupby("setting_id")["rewind_step"].first()) == [0, 2]
    assert rounds[rounds["kind"] == "ticket"].groupby("setting_id")["training_steps"].first().sort_values().tolist() == [1, 3]


def test_the_paper_convention_scores_mrpc_by_accuracy_and_keeps_every_metric(make_cfg, tmp_path):
    glue_rows = run_rows(Trajectory(make_cfg(task="mrpc", prune__rounds=1), tmp_path))
    paper_rows = run_rows(Trajectory(make_cfg(task="mrpc", prune__rounds=1, metrics="paper"), tmp_path))
    assert {r["metric_name"] for r in glue_rows} == {"f1"} and {r["metric_name"] for r in paper_rows} == {"accuracy"}
    for row in paper_rows:
        assert row["metric"] == row["accuracy"] and row["f1"] is not None and row["metric_convention"] == "paper"
