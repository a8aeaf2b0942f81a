"""N:M semi-structured tickets (prune.pattern): the floor every round keeps, the exact pattern of the last round,
every stored mask of an N:M trajectory checked group by group, and bad patterns refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raytickets import cli
from raytickets.config import PruneConfig, TicketConfig, load
from raytickets.errors import ConfigError
from raytickets.masks import Mask
from raytickets.pruning.nm import parse_pattern, pattern_prune, violations
from raytickets.store import ResultsStore

from test_tickets import cache_dir, imp_args  # noqa: F401  (its tokenised-data cache fixture)


def groups(mask: Mask, m: int) -> torch.Tensor:
    """Survivors per group of m consecutive input weights, every tensor's groups concatenated."""
    return torch.cat([t.reshape(-1, m).sum(1) for t in mask.tensors.values()])


@pytest.mark.parametrize("n,m,scope", [(2, 4, "global"), (1, 4, "per_tensor"), (3, 8, "global")])
def test_every_round_keeps_the_floor_and_the_last_is_exactly_n_of_m(n, m, scope):
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (16, 32), "b": (8, 64), "c": (24, 16)}
    total = sum(a * b for a, b in shapes.values())
    mask = Mask({k: torch.ones(s, dtype=torch.bool) for k, s in shapes.items()})
    final = 1 - n / m
    for target in (0.2 * final, 0.7 * final, final):
        scores = {k: torch.rand(s, generator=g) for k, s in shapes.items()}
        before = mask
        mask = pattern_prune(before, target, scope, scores, n, m)
        if scope == "global":
            assert mask.num_pruned == round(target * total)
        else:
            assert all(int((~t).sum()) == round(target * t.numel()) for t in mask.tensors.values())
        assert all(bool((mask.tensors[k] <= before.tensors[k]).all()) for k in shapes)  # nothing regrows
        assert int(groups(mask, m).min()) >= n
    assert bool((groups(mask, m) == n).all()) and violations(mask, n, m) == {}
    assert mask.sparsity() == pytest.approx(final)
    # the last round keeps, in each group, the n highest-scored of the survivors it was given
    for k, keep in mask.tensors.items():
        s = torch.where(before.tensors[k], scores[k], torch.tensor(-1.0)).reshape(-1, m)
        best = torch.zeros_like(s, dtype=torch.bool).scatter_(1, s.topk(n, dim=1).indices, True)
        assert torch.equal(keep.reshape(-1, m), best)


def test_an_unstructured_mask_breaks_the_pattern_and_violations_say_where():
    keep = torch.tensor([[1, 1, 1, 0, 1, 0, 0, 0]], dtype=torch.bool)
    assert violations(Mask({"w": keep}), 2, 4) == {"w": 1}
    with pytest.raises(ConfigError, match="fewer than 2 survivors"):  # a group at 1 cannot be made 2:4 exactly
        pattern_prune(Mask({"w": keep}), 0.5, "global", {"w": torch.rand(1, 8)}, 2, 4)


def test_nm_trajectory_stores_only_masks_of_the_pattern_and_its_export_keeps_it(tiny_model_dir, glue_dir, cache_dir,
                                                                                 tmp_path_factory):
    tmp_path, out = tmp_path_factory.mktemp("nm"), tmp_path_factory.mktemp("nm-export") / "hf"
    # rate 0.3 of the remaining: round 1 at 0.3, round 2 stops at 2:4's 0.5; the random baseline follows the floor
    args = imp_args(tiny_model_dir, glue_dir, cache_dir, tmp_path, "--rate", "0.3", "--baselines", "random",
                    "--keep-weights", "all", "prune.pattern='2:4'")
    assert cli.main(args) == 0
    store = ResultsStore(tmp_path)
    rounds = store.rounds()
    last = rounds[rounds.kind == "ticket"]["round"].max()
    assert last == 2
    stored = set(store.masks().mask_id)  # every mask the results root holds
    assert stored == set(rounds.mask_id.dropna()) and len(stored) == 4  # two tickets, two random masks
    for mask_id in stored:
        mask = store.load_mask(mask_id)
        assert int(groups(mask, 4).min()) >= 2  # every round above the floor
        for _, row in rounds[rounds.mask_id == mask_id].iterrows():
            if row["round"] == last:
                assert violations(mask, 2, 4) == {} and bool((groups(mask, 4) == 2).all())
                assert row.sparsity == 0.5 and row.target_sparsity == 0.5
    # the export keeps the pattern: every prunable tensor of the exported model has at most 2 non-zeros per 4
    task = rounds["task"].iloc[0]
    assert cli.main(["export", str(tmp_path), "--task", task, "--sparsity", "0.5", "--out", str(out)]) == 0
    exported = load_file(out / "model.safetensors")
    ticket = store.load_mask(rounds[(rounds.kind == "ticket") & (rounds["round"] == last)]["mask_id"].iloc[0])
    for name in ticket.names:
        weight = exported[name] if name in exported else exported[f"bert.{name}"]
        assert int((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1).max()) <= 2, name


@pytest.mark.parametrize("override,message", [
    ("prune.pattern='4:4'", "error: prune.pattern: '4:4' keeps 4 of every 4; allowed: \"N:M\" with 1 <= N < M"),
    ("prune.pattern=2:4", "error: prune.pattern: '124' is not a pattern; allowed: null or \"N:M\""),
    ("prune.pattern='2:3'", "error: prune.pattern: \"2:3\" does not divide tensor 'encoder.layer.0.attention.self."
                            "query.weight' (input size 32)"),
])
def test_bad_pattern_is_one_line_before_any_training(tiny_model_dir, glue_dir, cache_dir, tmp_path, capsys,
                                                     override, message):
    code = cli.main(imp_args(tiny_model_dir, glue_dir, cache_dir, tmp_path, "--rounds", "1", override))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not list(tmp_path.rglob("rows.json")) and not (tmp_path / "work" / "runs").exists()


def test_pattern_and_another_target_or_a_structured_method_are_config_errors():
    with pytest.raises(ConfigError, match=r"prune.target_sparsity: 0.7 with pattern '2:4'.*allowed: null or 0.5"):
        load(TicketConfig, overrides=["prune.pattern='2:4'", "prune.target_sparsity=0.7"])
    with pytest.raises(ConfigError, match="prune.pattern: '2:4' is a setting of"):
        load(TicketConfig, overrides=["prune.method=structured", "prune.pattern='2:4'", "prune.rounds=1"])
    assert parse_pattern("1:8") == (1, 8) and PruneConfig(pattern="2:4").method_impl().target(99) == 0.5
