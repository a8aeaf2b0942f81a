"""Gradual pruning during fine-tuning (prune.trajectory: gradual) and movement pruning: the cubic schedule, masks
raised during one run and never regrown, movement scores as -Σ w·∂L/∂w, the rows beside IMP's (one curve over
targets), bad input in one line — on a tiny BERT and real RTE rows — and a real MiniLM that learns on SST-2."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from raytickets import cli, runs
from raytickets.config import DataConfig, PruneConfig, TicketConfig, TrainConfig, load
from raytickets.errors import ConfigError
from raytickets.gradual import GradualPruner, GradualSchedule, cubic_sparsity
from raytickets.masks import Mask
from raytickets.pruning.unstructured import prune_lowest
from raytickets.tickets import Trajectory, prepare, prunable_of
from raytickets.train import finetune

from test_tickets import TOTAL, cache_dir, imp_args, make_cfg  # noqa: F401  (fixtures)


def test_cubic_schedule_from_initial_to_target_and_its_update_steps():
    # Zhu & Gupta's s_t written out: s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3
    for t in range(0, 25):
        expected = 0.1 if t <= 4 else 0.8 if t >= 20 else 0.8 + (0.1 - 0.8) * (1 - (t - 4) / 16) ** 3
        assert cubic_sparsity(t, 4, 20, 0.1, 0.8) == pytest.approx(expected)
    hp = PruneConfig(trajectory="gradual", target_sparsity=0.8, update_every=5, gradual_begin=0.1,
                     gradual_end=0.8).method_impl().hp
    s = GradualSchedule.of(hp, 100)
    assert (s.begin, s.end) == (10, 80)
    assert s.update_steps() == [15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80]
    assert s.sparsity(80) == s.sparsity(100) == 0.8 and s.sparsity(10) == 0.0
    assert GradualSchedule.of(replace(hp, update_every=100), 100).update_steps() == [80]  # the end is always an update


class Recording(GradualPruner):
    """A pruner that keeps every mask it made (and the movement scores each was chosen from)."""

    def __post_init__(self):
        super().__post_init__()
        self.masks, self.scores = [], []

    def after_step(self, step):
        before = self.mask
        if step in self._due and hasattr(self.method, "movement") and self.method.movement:
            self.scores.append({n: s.clone() for n, s in self.method.movement.items()})
        out = super().after_step(step)
        if out is not None:
            self.masks.append((step, before, out))
        return out


def gradual_run(make_cfg, method: str, **prune):
    cfg = make_cfg(prune__method=method, prune__rounds=None, prune__rate=0.1, prune__trajectory="gradual",
                   prune__target_sparsity=0.6, prune__update_every=2, prune__gradual_begin=0.0,
                   prune__gradual_end=1.0, train__max_steps=6, **prune)
    prep = prepare(cfg)
    params = prunable_of(cfg, prep.model)
    traj = Trajectory(cfg, "unused")
    method_impl = traj.method
    pruner = Recording(method_impl, GradualSchedule.of(method_impl.hp, 6), params,
                       lambda: traj._pruning_on(prep, params, None, salt=1), Mask.ones_like(params))
    res = finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, traj.cfg.train, None, params,
                   pruner=pruner)
    return pruner, params, res


@pytest.mark.parametrize("method", ["magnitude", "movement", "taylor"])
def test_gradual_run_raises_the_mask_on_schedule_and_never_regrows(make_cfg, method):
    extra = {"prune__importance_batches": 1} if method == "taylor" else {}
    pruner, params, res = gradual_run(make_cfg, method, **extra)
    assert [step for step, _, _ in pruner.masks] == [2, 4, 6] and res.steps == 6
    for step, before, after in pruner.masks:
        target = cubic_sparsity(step, 0, 6, 0.0, 0.6)
        assert after.num_pruned == round(target * TOTAL)  # exactly on the curve, to the weight
        assert all(bool((after.tensors[n] <= before.tensors[n]).all()) for n in after.names)  # nothing regrows
    assert pruner.mask.sparsity() == pytest.approx(0.6, abs=1 / TOTAL)
    for name, p in params.items():  # the trained weights are pruned where the final mask says
        assert bool((p.detach()[~pruner.mask.tensors[name]] == 0).all())
    if method == "movement":  # the last update keeps the highest S = -Σ_t w·∂L/∂w among the survivors
        _, before, after = pruner.masks[-1]
        assert after == prune_lowest(before, 0.6, "global", pruner.scores[-1])


def test_movement_scores_are_minus_the_sum_of_weight_times_gradient():
    method = PruneConfig(method="movement", trajectory="gradual", target_sparsity=0.5).method_impl()
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    grads = [torch.tensor([[0.1, 0.2], [-0.3, 0.0]]), torch.tensor([[-0.4, 0.1], [0.2, -1.0]])]
    for g in grads:
        w.grad = g
        method.observe({"w": w})
    # by hand: -(1·0.1 + 1·-0.4), -(-2·0.2 + -2·0.1), -(0.5·-0.3 + 0.5·0.2), -(3·0 + 3·-1)
    assert torch.allclose(method.movement["w"], torch.tensor([[0.3, 0.6], [0.05, 3.0]]))
    w.grad = torch.tensor([[float("inf"), 0.0], [0.0, 0.0]])  # an fp16 overflow, a step GradScaler skips
    method.observe({"w": w})
    assert torch.allclose(method.movement["w"], torch.tensor([[0.3, 0.6], [0.05, 3.0]]))


def test_gradual_trajectory_rows_sit_beside_imp_as_one_curve_over_targets(make_cfg, tmp_path):
    def cfg(target, **kw):
        return make_cfg(prune__method="movement", prune__rounds=None, prune__trajectory="gradual",
                        prune__target_sparsity=target, prune__update_every=1, **kw)

    traj = Trajectory(cfg(0.5), tmp_path)
    rows = traj.run()
    assert [(r.round, r.kind) for r in rows] == [(0, "full"), (1, "ticket")]
    ticket = rows[1]
    assert ticket.sparsity == round(0.5 * TOTAL) / TOTAL and ticket.method == "movement"
    assert ticket.training_steps == 2 and json.loads(ticket.settings)["prune"]["trajectory"] == "gradual"
    updates = json.loads((traj.round_dir(1) / "schedule.json").read_text())
    assert updates[-1]["step"] == 2 and updates[-1]["sparsity"] == ticket.sparsity  # gradual_end 0.8 of 2 steps
    imp = make_cfg(prune__rounds=1)
    assert runs.setting_id(cfg(0.5)) == runs.setting_id(cfg(0.7)) != runs.setting_id(imp)  # one curve over targets
    assert runs.run_id(cfg(0.5)) != runs.run_id(cfg(0.7))  # but the target changes the run
    assert Trajectory(imp, tmp_path).full_dir == traj.full_dir  # the full model is shared with IMP
    assert [r.round for r in Trajectory(cfg(0.5), tmp_path).run()] == [0, 1]  # resumed, not retrained


@pytest.mark.parametrize("overrides,message", [
    (["prune.update_every=50"], "error: prune.update_every: 50 is beyond the 2 training steps of the run; allowed: 1 "
                                "to 2"),
    (["prune.update_every=0"], "error: prune.update_every: 0 must be a positive number of steps"),
    (["prune.rewind_step=1"], "error: prune.rewind_step: 1 with trajectory 'gradual', which neither rewinds"),
])
def test_bad_gradual_input_is_one_line_before_any_training(tiny_model_dir, glue_dir, cache_dir, tmp_path, capsys,
                                                           overrides, message):
    code = cli.main(imp_args(tiny_model_dir, glue_dir, cache_dir, tmp_path, "prune.trajectory=gradual",
                             "prune.target_sparsity=0.5", *overrides))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not list(tmp_path.rglob("rows.json")) and not (tmp_path / "work" / "runs").exists()


def test_gradual_settings_on_an_imp_trajectory_are_config_errors():
    with pytest.raises(ConfigError, match="prune.update_every: 5 is a setting of trajectory 'gradual'"):
        load(TicketConfig, overrides=["prune.update_every=5", "prune.rounds=1"])
    with pytest.raises(ConfigError, match="prune.trajectory: 'imp' with method 'movement'"):
        load(TicketConfig, overrides=["prune.method=movement", "prune.rounds=1"])
    with pytest.raises(ConfigError, match="prune.target_sparsity: null; trajectory 'gradual' needs"):
        load(TicketConfig, overrides=["prune.trajectory=gradual"])


@pytest.mark.slow
def test_gradual_magnitude_on_minilm_learns_sst2(glue_dir, cache_dir, tmp_path):
    """The packaged MiniLM on 256 real SST-2 rows (16 steps at 4e-4, as the IMP check in test_tickets.py), magnitude
    pruning to 30 % during the run, mask raised every 2 steps: measured 0.675 for the full model and 0.72 for the
    gradual ticket on these 200 dev rows (a majority guess scores 0.53). Movement pruning on the same 16 steps
    scored 0.53: its scores need a longer run than this check affords."""
    cfg = TicketConfig(
        task="sst2", model="minilm",
        data=DataConfig(glue_dir=str(glue_dir), max_train_examples=256, max_dev_examples=200, max_seq_length=64,
                        cache_dir=str(cache_dir)),
        train=TrainConfig(epochs=1, batch_size=16, learning_rate=4e-4),
        prune=PruneConfig(method="magnitude", trajectory="gradual", target_sparsity=0.3, update_every=2),
    )
    full, ticket = Trajectory(cfg, tmp_path).run()
    assert ticket.sparsity == pytest.approx(0.3, abs=1e-6) and ticket.training_steps == 16
    assert full.metric >= 0.62 and ticket.metric >= 0.62, (full.metric, ticket.metric)
