"""activation (Wanda-style): |w_ij|·||x_j|| over calibration batches; exact sparsity globally and per output row,
the formula's lowest weights go, in IMP."""

from __future__ import annotations

import pytest
import torch

from raytickets.config import DataConfig, PruneConfig, TicketConfig, TrainConfig, load
from raytickets.distributed import rank_batches
from raytickets.errors import ConfigError
from raytickets.masks import Mask
from raytickets.models import encoder
from raytickets.pruning import PruneContext
from raytickets.tickets import Trajectory, prepare, prunable_of


@pytest.fixture
def cfg(tiny_model_dir, glue_dir, tmp_path) -> TicketConfig:
    return TicketConfig(
        task="sst2", model=str(tiny_model_dir),
        data=DataConfig(glue_dir=str(glue_dir), max_train_examples=24, max_dev_examples=16, max_seq_length=32,
                        cache_dir=str(tmp_path / "cache")),
        train=TrainConfig(max_steps=2, batch_size=8, learning_rate=1e-3),
        prune=PruneConfig(method="activation", rate=0.3, rounds=2, calibration_batches=2),
    )


def by_hand(model, params, batches) -> dict[str, torch.Tensor]:
    """The formula written out: record each matrix's input on the real tokens, then |w| * ||x_j||."""
    model.eval()
    inputs = {n: [] for n in params}
    bare = encoder(model)
    handles = [bare.get_submodule(n.rsplit(".", 1)[0]).register_forward_hook(
        lambda m, a, o, n=n: inputs[n].append(a[0].detach())) for n in params]
    masks = []
    with torch.no_grad():
        for batch in batches:
            masks.append(batch["attention_mask"].bool())
            model(**{k: v for k, v in batch.items() if k != "labels"})
    for h in handles:
        h.remove()
    out = {}
    for n, p in params.items():
        rows = [x[m] if x.dim() == 3 else x for x, m in zip(inputs[n], masks)]  # real tokens (pooler: [CLS])
        norm = torch.cat(rows).double().pow(2).sum(0).sqrt().float()
        out[n] = p.detach().abs() * norm
    return out


@pytest.mark.parametrize("scope", ["global", "per_row"])
def test_activation_prunes_exactly_the_weights_the_formula_ranks_lowest(cfg, scope):
    cfg.prune.scope = scope
    prep = prepare(cfg)
    params = prunable_of(cfg, prep.model)
    batches = list(rank_batches(prep.train, prep.collate, 8, 0, 0, True, 2))
    expected = by_hand(prep.model, params, batches)
    method = cfg.prune.method_impl()
    ctx = PruneContext(model=prep.model, params=params, batches=lambda n: iter(batches), generator=torch.Generator())
    for name, s in method.scores(ctx).items():
        assert torch.allclose(s, expected[name], rtol=1e-5, atol=1e-8), name
    mask = method.select(ctx, Mask.ones_like(params), 0.3)
    if scope == "global":
        total = sum(p.numel() for p in params.values())
        assert mask.num_pruned == round(0.3 * total)
        flat = torch.cat([expected[n].flatten() for n in params])
        keep = torch.cat([mask.tensors[n].flatten() for n in params])
        assert flat[~keep].max() <= flat[keep].min()
    else:  # every output row keeps the same count; within a row the lowest go
        for name, keep in mask.tensors.items():
            assert ((~keep).sum(1) == round(0.3 * keep.shape[1])).all(), name
            s = expected[name]
            assert bool((torch.where(~keep, s, -torch.inf).amax(1) <= torch.where(keep, s, torch.inf).amin(1)).all())
    second = method.select(ctx, mask, 0.51)
    assert not any(bool((second.tensors[n] & ~mask.tensors[n]).any()) for n in params)  # nested


def test_activation_runs_a_trajectory_per_row(cfg, tmp_path):
    cfg.prune.scope = "per_row"
    rows = Trajectory(cfg, tmp_path / "run").run()
    tickets = [r for r in rows if r.kind == "ticket"]
    assert [r.method for r in tickets] == ["activation", "activation"] and tickets[0].scope == "per_row"
    assert tickets[1].sparsity > tickets[0].sparsity > 0.25


def test_bad_activation_settings_are_one_line():
    with pytest.raises(ConfigError, match=r"^prune.calibration_batches: 0 must be >= 1 or null"):
        load(TicketConfig, overrides=["prune.method=activation", "prune.rounds=1", "prune.calibration_batches=0"])
    with pytest.raises(ConfigError, match=r"^prune.scope: 'per_row' is not allowed; allowed: global, per_tensor"):
        load(TicketConfig, overrides=["prune.method=magnitude", "prune.rounds=1", "prune.scope=per_row"])
