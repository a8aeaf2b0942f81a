"""taylor: |w·dL/dw| summed over training batches; exact sparsity, the formula's lowest weights go, in IMP and a sweep."""

from __future__ import annotations

import pytest
import torch

from raytickets.config import DataConfig, PruneConfig, TicketConfig, TrainConfig, load
from raytickets.distributed import rank_batches
from raytickets.errors import ConfigError
from raytickets.masks import Mask
from raytickets.pruning import PruneContext, get
from raytickets.pruning.taylor import taylor_scores
from raytickets.tickets import Trajectory, prepare, prunable_of


@pytest.fixture
def cfg(tiny_model_dir, glue_dir, tmp_path) -> TicketConfig:
    return TicketConfig(
        task="rte", model=str(tiny_model_dir),
        data=DataConfig(glue_dir=str(glue_dir), max_train_examples=24, max_dev_examples=16, max_seq_length=32,
                        cache_dir=str(tmp_path / "cache")),
        train=TrainConfig(max_steps=2, batch_size=8, learning_rate=1e-3),
        prune=PruneConfig(method="taylor", rate=0.3, rounds=2, importance_batches=2),
    )


def by_hand(model, params, batches) -> dict[str, torch.Tensor]:
    """The formula written out: for each batch, the gradient of its mean loss; |w * g| summed."""
    model.eval()
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()  # the model's own mean loss
        for n, p in params.items():
            out[n] += (p.detach() * p.grad).abs()
    model.zero_grad()
    return out


def test_taylor_prunes_exactly_the_weights_the_formula_ranks_lowest(cfg):
    prep = prepare(cfg)
    params = prunable_of(cfg, prep.model)
    batches = list(rank_batches(prep.train, prep.collate, 8, 0, 0, True, 2))
    expected = by_hand(prep.model, params, batches)
    got = taylor_scores(prep.model, params, batches)
    for name in params:
        assert torch.allclose(got[name], expected[name], rtol=1e-4, atol=1e-9), name
    assert all(p.grad is None or not p.grad.any() for p in params.values())  # .grad left as it was

    method = cfg.prune.method_impl()
    ctx = PruneContext(model=prep.model, params=params, batches=lambda n: iter(batches), generator=torch.Generator())
    mask = method.select(ctx, Mask.ones_like(params), 0.3)
    total = sum(p.numel() for p in params.values())
    assert mask.num_pruned == round(0.3 * total)  # exactly
    flat = torch.cat([expected[n].flatten() for n in params])
    keep = torch.cat([mask.tensors[n].flatten() for n in params])
    assert flat[~keep].max() <= flat[keep].min()  # every pruned weight scores at most every kept one
    # the second round prunes within the first's survivors, to its own exact count
    second = method.select(ctx, mask, 0.51)
    assert second.num_pruned == round(0.51 * total) and not any(bool((second.tensors[n] & ~mask.tensors[n]).any())
                                                                 for n in params)


def test_taylor_runs_a_trajectory(cfg, tmp_path):
    rows = Trajectory(cfg, tmp_path / "run").run()
    tickets = [r for r in rows if r.kind == "ticket"]
    assert [r.method for r in tickets] == ["taylor", "taylor"]
    assert [round(r.sparsity, 4) for r in tickets] == [0.3, 0.51]
    assert get("taylor").Hparams is type(cfg.prune.method_impl().hp)


def test_bad_taylor_settings_are_one_line():
    with pytest.raises(ConfigError, match=r"^prune.importance_batches: 0 must be >= 1 or null"):
        load(TicketConfig, overrides=["prune.method=taylor", "prune.rounds=1", "prune.importance_batches=0"])
    with pytest.raises(ConfigError, match=r"^prune.head_fraction: 0.2 is a setting of structured, not of method 'taylor'"):
        load(TicketConfig, overrides=["prune.method=taylor", "prune.rounds=1", "prune.head_fraction=0.2"])
