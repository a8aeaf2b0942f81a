"""Choosing masks: magnitude (checked against torch.nn.utils.prune), random, schedules, structured units."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import prune

from raytickets.config import PruneConfig
from raytickets.errors import ConfigError, MaskError
from raytickets.masks import Mask
from raytickets.models import encoder, load_model, load_tokenizer, prunable_parameters
from raytickets.pruning import (
    StructuredImportance,
    _gates,
    magnitude_prune,
    random_prune,
    random_structured,
    select_structured,
    structured_importance,
    structured_mask,
)


@pytest.fixture
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), num_labels=2)


@pytest.fixture(scope="module")
def batches():
    """Two small labelled batches made by hand from MiniLM's tokenizer (the tiny model shares it)."""
    tokenizer = load_tokenizer("minilm")
    texts = [
        ["a gripping , beautifully acted film", "dull and far too long", "i laughed the whole way through", "meh"],
        ["the plot makes no sense at all", "a small masterpiece", "forgettable", "warm , funny and sharp"],
    ]
    labels = [[1, 0, 1, 0], [0, 1, 0, 1]]
    return [dict(tokenizer(t, padding=True, return_tensors="pt"), labels=torch.tensor(l)) for t, l in zip(texts, labels)]


def distinct_weights(params, seed: int) -> dict[str, torch.Tensor]:
    """Weights whose magnitudes are all different, so 'the k smallest' has exactly one answer."""
    g = torch.Generator().manual_seed(seed)
    total = sum(p.numel() for p in params.values())
    values = (torch.randperm(total, generator=g).float() + 1) * 1e-3
    values *= torch.where(torch.rand(total, generator=g) < 0.5, -1.0, 1.0)
    pieces = torch.split(values, [p.numel() for p in params.values()])
    return {n: piece.reshape(p.shape) for (n, p), piece in zip(params.items(), pieces)}


def module_of(model, name: str):
    return encoder(model).get_submodule(name.rsplit(".", 1)[0])


# -- magnitude ---------------------------------------------------------------------------------------


def test_global_magnitude_equals_torch_global_unstructured_over_two_rounds(tiny):
    params = prunable_parameters(tiny)
    total = sum(p.numel() for p in params.values())
    with torch.no_grad():
        for name, w in distinct_weights(params, seed=0).items():
            params[name].copy_(w)
    weights = {n: p.detach().clone() for n, p in params.items()}
    pairs = [(module_of(tiny, n), "weight") for n in params]

    k1 = round(0.3 * total)
    prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=k1)
    ours = magnitude_prune(weights, Mask.ones_like(weights), k1 / total)
    for name in params:
        assert torch.equal(ours.tensors[name], module_of(tiny, name).weight_mask.bool()), name
    assert ours.num_pruned == k1

    # Round 2 ranks new (e.g. retrained) weights; torch prunes k2 of the survivors, we go to k1 + k2 in all.
    retrained = distinct_weights(params, seed=1)
    k2 = round(0.25 * (total - k1))
    prune.global_unstructured(
        pairs, pruning_method=prune.L1Unstructured, amount=k2,
        importance_scores={(module_of(tiny, n), "weight"): retrained[n] for n in params},
    )
    ours2 = magnitude_prune(retrained, ours, (k1 + k2) / total)
    for name in params:
        assert torch.equal(ours2.tensors[name], module_of(tiny, name).weight_mask.bool()), name
    assert ours2.num_pruned == k1 + k2


def test_per_tensor_magnitude_equals_torch_l1_unstructured(tiny):
    params = prunable_parameters(tiny)
    weights = distinct_weights(params, seed=2)
    ours = magnitude_prune(weights, Mask.ones_like(weights), 0.37, scope="per_tensor")
    for name, w in weights.items():
        holder = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            holder.weight.copy_(w)
        prune.l1_unstructured(holder, "weight", amount=0.37)
        assert torch.equal(ours.tensors[name], holder.weight_mask.bool()), name
        assert int((~ours.tensors[name]).sum()) == round(0.37 * w.numel())


def test_magnitude_prunes_survivors_only_and_reaches_the_exact_count():
    weights = {"a": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]), "b": torch.tensor([0.5, 6.0, 0.1])}
    # 5.0 and 6.0 were pruned in an earlier round: they stay pruned and do not use up the new budget.
    prior = Mask({"a": torch.tensor([0, 1, 1, 1, 1]), "b": torch.tensor([1, 0, 1])})
    mask = magnitude_prune(weights, prior, 4 / 8)
    assert mask.tensors["a"].tolist() == [False, True, True, True, True]
    assert mask.tensors["b"].tolist() == [False, False, False]
    for target in (0.25, 0.3, 0.5, 0.9, 1.0):
        assert magnitude_prune(weights, prior, target).num_pruned == round(target * 8)


def test_per_tensor_brings_every_tensor_to_the_target():
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(10, 10, generator=g), "b": torch.randn(7, generator=g)}
    mask = magnitude_prune(weights, Mask.ones_like(weights), 0.6, scope="per_tensor")
    assert int((~mask.tensors["a"]).sum()) == 60 and int((~mask.tensors["b"]).sum()) == round(0.6 * 7)
    deeper = magnitude_prune(weights, mask, 0.8, scope="per_tensor")
    assert not (deeper.tensors["a"] & ~mask.tensors["a"]).any()
    assert int((~deeper.tensors["a"]).sum()) == 80


def test_magnitude_ties_are_broken_by_position_deterministically():
    weights = {"a": torch.full((6,), 0.5), "b": torch.full((4,), -0.5)}
    mask = magnitude_prune(weights, Mask.ones_like(weights), 0.7)
    assert mask.tensors["a"].tolist() == [False] * 6 and mask.tensors["b"].tolist() == [False, True, True, True]
    assert magnitude_prune(weights, Mask.ones_like(weights), 0.7) == mask


def test_largest_prunes_the_biggest_magnitudes():
    weights = {"a": torch.tensor([0.1, -3.0, 0.2, 2.0])}
    mask = magnitude_prune(weights, Mask.ones_like(weights), 0.5, largest=True)
    assert mask.tensors["a"].tolist() == [True, False, True, False]


def test_magnitude_refuses_bad_requests():
    weights = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    half = Mask({"a": torch.tensor([1, 1, 0, 0])})
    with pytest.raises(ConfigError, match=r"target_sparsity: 0\.25 .*below the mask's current sparsity 0\.5"):
        magnitude_prune(weights, half, 0.25)
    with pytest.raises(ConfigError, match=r"target_sparsity: 1\.5"):
        magnitude_prune(weights, half, 1.5)
    with pytest.raises(ConfigError, match=r"scope: 'layer'; allowed: global, per_tensor"):
        magnitude_prune(weights, half, 0.75, scope="layer")
    with pytest.raises(ConfigError, match="NaN"):
        magnitude_prune({"a": torch.tensor([1.0, float("nan"), 3.0, 4.0])}, half, 0.75)
    with pytest.raises(MaskError, match="'b'"):
        magnitude_prune({"b": torch.ones(4)}, half, 0.75)


# -- random ------------------------------------------------------------------------------------------


def test_random_prune_exact_count_survivors_only_and_seeded():
    shapes = {"a": (40, 30), "b": (50,), "c": (7, 3)}
    dense = Mask({n: torch.ones(s) for n, s in shapes.items()})
    total = dense.num_total

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    first = random_prune(dense, 0.3, generator=gen(0))
    assert first.num_pruned == round(0.3 * total)
    assert random_prune(dense, 0.3, generator=gen(0)) == first
    assert random_prune(dense, 0.3, generator=gen(1)) != first
    second = random_prune(first, 0.7, "global", gen(2))
    assert second.num_pruned == round(0.7 * total)
    for name in shapes:  # previously pruned stay pruned
        assert not (second.tensors[name] & ~first.tensors[name]).any()
    per = random_prune(first, 0.5, scope="per_tensor", generator=gen(3))
    for name, t in per.tensors.items():
        assert int((~t).sum()) == round(0.5 * t.numel())
        assert not (t & ~first.tensors[name]).any()
    with pytest.raises(ConfigError, match="target_sparsity"):
        random_prune(second, 0.5, generator=gen(4))
    with pytest.raises(ConfigError, match="generator"):
        random_prune(dense, 0.5)


def test_random_prune_is_uniform_over_survivors():
    # Half of the weights already pruned; pruning to 75% must take the other quarter evenly from the rest.
    prior = Mask({"w": torch.arange(20_000) % 2 == 0})
    counts = torch.zeros(20_000)
    for seed in range(20):
        counts += (~random_prune(prior, 0.75, generator=torch.Generator().manual_seed(seed)).tensors["w"]).float()
    assert torch.all(counts[1::2] == 20)
    survivors = counts[0::2]
    assert survivors.mean().item() == pytest.approx(10.0)  # exactly 5000 of 10000 survivors each time
    assert survivors[:5000].mean().item() == pytest.approx(10.0, abs=0.25)  # no positional bias


# -- schedules ---------------------------------------------------------------------------------------


def test_schedule_sparsity_remaining_and_original():
    """The schedule trajectories prune to (PruneConfig.sparsity_at; bad rates and schedules: test_config)."""
    def at(schedule, rate, r):
        return PruneConfig(schedule=schedule, rate=rate, rounds=max(r, 1)).sparsity_at(r)

    assert at("remaining", 0.2, 0) == 0.0
    assert at("remaining", 0.2, 1) == pytest.approx(0.2)
    assert at("remaining", 0.2, 3) == pytest.approx(1 - 0.8**3)
    assert at("original", 0.1, 3) == pytest.approx(0.3)
    assert at("original", 0.1, 9) == pytest.approx(0.9)
    with pytest.raises(ConfigError, match=r"rounds: 10 rounds at rate 0\.1 of the original count would prune 100%"):
        PruneConfig(schedule="original", rate=0.1, rounds=10).validate("prune")


# -- structured: gates and importance ----------------------------------------------------------------


def test_gates_scale_exactly_the_units_they_belong_to(tiny, batches):
    """A gate of 0 must do what removing the unit's outgoing weights does: checks the hooks' slicing."""
    batch = {k: v for k, v in batches[0].items() if k != "labels"}
    L, H, I = 2, 4, 64
    heads, neurons, ffn = torch.ones(L, H), torch.ones(L, I), torch.ones(L)
    heads[1, 2], neurons[0, 5], ffn[1] = 0.0, 0.0, 0.0
    with _gates(tiny, heads, neurons, ffn), torch.no_grad():
        gated = tiny(**batch).logits
    layers = encoder(tiny).encoder.layer
    with torch.no_grad():
        layers[1].attention.output.dense.weight[:, 16:24] = 0  # head 2 of 4, d = 8
        layers[0].output.dense.weight[:, 5] = 0
        layers[1].output.dense.weight.zero_()
        layers[1].output.dense.bias.zero_()
        removed = tiny(**batch).logits
    assert torch.allclose(gated, removed, atol=1e-6)
    assert all(len(m._forward_hooks) == 0 for m in tiny.modules())


def test_importance_restores_the_model_and_removes_its_hooks(tiny, batches):
    tiny.train()
    importance = structured_importance(tiny, batches)
    assert tiny.training
    assert all(len(m._forward_hooks) == 0 for m in tiny.modules())
    assert all(p.grad is None for p in tiny.parameters())
    assert importance.heads.shape == (2, 4) and importance.neurons.shape == (2, 64) and importance.ffn_layers.shape == (2,)
    assert torch.all(importance.heads > 0) and torch.all(importance.ffn_layers > 0)
    assert importance.heads.norm(dim=1) == pytest.approx([1.0, 1.0])  # per-layer L2 normalisation
    raw = structured_importance(tiny, batches, normalize=False)
    assert torch.allclose(raw.heads / raw.heads.norm(dim=1, keepdim=True), importance.heads)
    # Scoring runs without dropout: the same batches give the same importance.
    assert torch.equal(structured_importance(tiny, batches, normalize=False).heads, raw.heads)


def test_importance_ranks_an_irrelevant_head_and_neuron_lowest(tiny, batches):
    layers = encoder(tiny).encoder.layer
    with torch.no_grad():
        layers[1].attention.output.dense.weight[:, 8:16] = 0  # head 1 of layer 1 no longer reaches the output
        layers[0].output.dense.weight[:, 33] = 0  # neuron 33 of layer 0 likewise
    raw = structured_importance(tiny, batches, normalize=False)
    assert raw.heads[1, 1] == 0 and (raw.heads.flatten() > 0).sum() == 7
    assert raw.neurons[0, 33] == 0
    importance = structured_importance(tiny, batches)
    assert importance.heads.flatten().argmin().item() == 1 * 4 + 1
    heads, neurons, _ = select_structured(importance, 1 / 8, 1 / 128)
    assert heads == {1: [1]} and neurons == {0: [33]}


def test_importance_needs_labelled_batches(tiny, batches):
    with pytest.raises(ConfigError, match="labels"):
        structured_importance(tiny, [{k: v for k, v in batches[0].items() if k != "labels"}])
    with pytest.raises(ConfigError, match="no batches"):
        structured_importance(tiny, [])
    assert all(len(m._forward_hooks) == 0 for m in tiny.modules())


# -- structured: masks -------------------------------------------------------------------------------


def test_structured_mask_marks_rows_and_columns(tiny):
    params = prunable_parameters(tiny)
    mask = structured_mask(params, tiny.config, heads={0: [3]}, neurons={1: [0, 63]}, ffn_layers=[0])
    q = mask.tensors["encoder.layer.0.attention.self.query.weight"]
    o = mask.tensors["encoder.layer.0.attention.output.dense.weight"]
    assert not q[24:32].any() and q[:24].all()
    assert not o[:, 24:32].any() and o[:, :24].all()
    inter = mask.tensors["encoder.layer.1.intermediate.dense.weight"]
    out = mask.tensors["encoder.layer.1.output.dense.weight"]
    assert not inter[[0, 63]].any() and inter[1:63].all() and not out[:, [0, 63]].any() and out[:, 1:63].all()
    assert not mask.tensors["encoder.layer.0.intermediate.dense.weight"].any()
    assert not mask.tensors["encoder.layer.0.output.dense.weight"].any()
    assert mask.tensors["pooler.dense.weight"].all()
    assert mask.num_pruned == 4 * 8 * 32 + 2 * 2 * 32 + 2 * 64 * 32
    with pytest.raises(MaskError, match="heads: unit 4 of layer 0 out of range"):
        structured_mask(params, tiny.config, heads={0: [4]}, neurons={})
    with pytest.raises(MaskError, match="ffn_layers: layer 2 out of range"):
        structured_mask(params, tiny.config, heads={}, neurons={}, ffn_layers=[2])


def test_applied_structured_mask_silences_removed_units(tiny, batches):
    from raytickets.models import DEFAULT_INCLUDE
    from raytickets.pruning.structured import FFN_BIAS

    params = prunable_parameters(tiny, [*DEFAULT_INCLUDE, FFN_BIAS])  # what Structured.extra_prunable adds
    importance = structured_importance(tiny, batches)
    heads, neurons, ffn = select_structured(importance, 0.5, 0.25)
    assert sum(map(len, heads.values())) == 4 and sum(map(len, neurons.values())) == 32 and ffn == []
    assert all(len(heads.get(l, [])) < 4 for l in range(2))
    _, _, ffn_layers = select_structured(importance, 0.0, 0.5, granularity="layer")
    assert len(ffn_layers) == 1
    (whole,) = ffn_layers
    neurons = {l: n for l, n in neurons.items() if l != whole}
    structured_mask(params, tiny.config, heads, neurons, ffn_layers).apply(params)

    seen = {}

    def record(key):
        return lambda module, args, out: seen.__setitem__(key, (args[0].detach(), out.detach()))

    layers = encoder(tiny).encoder.layer
    handles = [layers[l].attention.output.dense.register_forward_hook(record(("attn", l))) for l in range(2)]
    handles += [layers[l].output.dense.register_forward_hook(record(("ffn", l))) for l in range(2)]
    try:
        with torch.no_grad():
            tiny(**{k: v for k, v in batches[0].items() if k != "labels"})
    finally:
        for h in handles:
            h.remove()

    with torch.no_grad():
        for l in range(2):
            dense = layers[l].attention.output.dense
            context, output = seen[("attn", l)]
            silenced = context.clone()
            for h in heads.get(l, []):
                silenced[..., h * 8:(h + 1) * 8] = 0
                assert not dense.weight[:, h * 8:(h + 1) * 8].any()
                assert not (context[..., h * 8:(h + 1) * 8] @ dense.weight[:, h * 8:(h + 1) * 8].T).any()
            assert torch.equal(dense(silenced), output)  # removed heads contribute exactly nothing

            dense = layers[l].output.dense
            activation, output = seen[("ffn", l)]
            if l == whole:  # not even its bias: a removed sublayer adds nothing to the residual stream
                assert not output.any() and not dense.bias.any()
                continue
            silenced = activation.clone()
            silenced[..., neurons.get(l, [])] = 0
            assert torch.equal(dense(silenced), output)


# -- structured: selection ---------------------------------------------------------------------------


def made_up_importance() -> StructuredImportance:
    # Layer 0's heads are all less important than layer 1's.
    heads = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.9, 0.5, 0.8, 0.7]])
    neurons = torch.arange(2 * 6, dtype=torch.float).reshape(2, 6).flip(1)
    return StructuredImportance(heads=heads, neurons=neurons, ffn_layers=torch.tensor([0.2, 0.1]))


def test_select_keeps_the_most_important_head_of_every_layer():
    importance = made_up_importance()
    heads, neurons, ffn = select_structured(importance, 0.5, 0.25)
    # The four globally least important are all of layer 0: its best head (1) stays, layer 1's worst (1) goes.
    assert heads == {0: [0, 2, 3], 1: [1]}
    assert neurons == {0: [3, 4, 5]} and ffn == []
    heads, _, _ = select_structured(importance, 0.75, 0.0)
    assert heads == {0: [0, 2, 3], 1: [1, 2, 3]}
    with pytest.raises(ConfigError, match=r"head_fraction: 0\.95 would remove every head of a layer.*at most 0\.75"):
        select_structured(importance, 0.95, 0.0)
    with pytest.raises(ConfigError, match=r"granularity: 'block'"):
        select_structured(importance, 0.5, 0.5, granularity="block")


def test_head_counts_are_liangs_int_and_ffn_sublayers_their_counts():
    """BERT-base's 144 heads at Liang et al.'s levels 10 ... 80 % are int(144·p) (masking.py:13): the masks
    their rewind scripts load are mask_14/28/43/57/72/86/100/115_heads (scripts/rewind_rte_winning.sh:31-199),
    so 57 heads at 40 % and 100 at 70 % where round() gave 58 and 101; whole FFN sublayers 1 ... 8 of 12
    (mask_1_ffn ... mask_8_ffn) come back from the preset's four-digit fractions k/12."""
    gen = torch.Generator().manual_seed(0)
    importance = StructuredImportance(heads=torch.rand(12, 12, generator=gen), neurons=torch.rand(12, 4, generator=gen),
                                      ffn_layers=torch.rand(12, generator=gen))
    theirs = [14, 28, 43, 57, 72, 86, 100, 115]
    for k, (heads_pruned, ffn_fraction) in enumerate(zip(theirs, (0.0833, 0.1667, 0.25, 0.3333, 0.4167, 0.5,
                                                                   0.5833, 0.6667)), start=1):
        heads, neurons, ffn = select_structured(importance, k / 10, ffn_fraction, granularity="layer")
        assert sum(map(len, heads.values())) == heads_pruned, k
        assert len(ffn) == k and neurons == {}
        config = type("C", (), dict(num_hidden_layers=12, num_attention_heads=12, intermediate_size=4))
        random_heads, _, random_ffn = random_structured(config, k / 10, ffn_fraction, "layer",
                                                        torch.Generator().manual_seed(k))
        assert sum(map(len, random_heads.values())) == heads_pruned and len(random_ffn) == k
    # 100 heads at 29 %: 0.29·100 is 28.999…96 in floating point; Liang's int(100 * 29 / 100) is 29
    hundred = StructuredImportance(heads=torch.rand(10, 10, generator=gen), neurons=torch.rand(10, 4, generator=gen),
                                   ffn_layers=torch.rand(10, generator=gen))
    heads, _, _ = select_structured(hundred, 0.29, 0.0)
    assert 0.29 * 100 < 29 and sum(map(len, heads.values())) == int(100 * 29 / 100) == 29


def test_select_losing_prunes_the_most_important():
    heads, neurons, ffn = select_structured(made_up_importance(), 0.25, 0.5, granularity="layer", losing=True)
    assert heads == {1: [0, 2]} and neurons == {} and ffn == [0]


def test_select_counts_units_the_current_mask_already_removed(tiny):
    params = prunable_parameters(tiny)
    importance = StructuredImportance(heads=made_up_importance().heads, neurons=torch.rand(2, 64),
                                      ffn_layers=torch.tensor([0.2, 0.1]))
    # Round 1 removed head 1 of layer 1 and neuron 7 of layer 0, which the new scores rate highly.
    units = structured_mask(params, tiny.config, heads={1: [0]}, neurons={0: [7]})
    zeros = magnitude_prune(params, Mask.ones_like(params), 0.3)  # unstructured zeros remove no whole unit
    current = Mask({n: t & zeros.tensors[n] for n, t in units.tensors.items()})
    heads, neurons, _ = select_structured(importance, 0.375, 3 / 128, current=current)
    assert heads == {0: [0, 2], 1: [0]}
    assert 7 in neurons[0] and sum(map(len, neurons.values())) == 3
    # The two new neurons are the least important of those still there.
    order = importance.neurons.flatten().argsort().tolist()
    fresh = [i for i in order if i != 7][:2]
    assert sorted(l * 64 + n for l, ns in neurons.items() for n in ns if (l, n) != (0, 7)) == sorted(fresh)
    with pytest.raises(ConfigError, match=r"head_fraction: 0\.0 asks for 0 pruned units but the current mask already prunes 1"):
        select_structured(importance, 0.0, 3 / 128, current=current)
    # Layer granularity keeps the single neurons removed earlier.
    _, neurons, ffn = select_structured(importance, 0.125, 0.5, granularity="layer", current=current)
    assert ffn == [1] and neurons == {0: [7]}


def test_random_structured_fractions_rule_and_seeds(tiny):
    config = tiny.config

    def draw(seed, *args):
        return random_structured(config, *args, generator=torch.Generator().manual_seed(seed))

    heads, neurons, ffn = draw(0, 0.75, 0.5, "neuron")
    assert [len(heads[l]) for l in range(2)] == [3, 3]  # exactly one head left in each layer
    assert sum(map(len, neurons.values())) == 64 and ffn == []
    assert draw(0, 0.75, 0.5, "neuron") == (heads, neurons, ffn)
    assert any(draw(seed, 0.5, 0.5, "neuron") != draw(0, 0.5, 0.5, "neuron") for seed in (1, 2))
    _, neurons, ffn = draw(1, 0.25, 0.5, "layer")
    assert len(ffn) == 1 and neurons == {}
    with pytest.raises(ConfigError, match="head_fraction"):
        draw(0, 0.9, 0.0, "neuron")
    with pytest.raises(ConfigError, match="generator"):
        random_structured(config, 0.5, 0.5, "neuron")


# -- structured: the importance formula -----------------------------------------------------------------


def test_per_example_importance_is_the_sum_of_each_examples_absolute_gradient(tiny, batches):
    """Liang et al.'s E_x |dL(x)/dg|: scoring each example alone (one-example batches, per batch) is what
    per-example scoring of the whole batches gives; per-batch scores of the whole batches differ, because
    gradients of opposite signs cancel inside a batch."""
    singles = [{k: v[i:i + 1] for k, v in b.items()} for b in batches for i in range(len(b["labels"]))]
    one_by_one = structured_importance(tiny, singles, normalize=False, mode="per_batch")
    per_example = structured_importance(tiny, batches, normalize=False, mode="per_example")
    per_batch = structured_importance(tiny, batches, normalize=False, mode="per_batch")
    for a, b in zip((one_by_one.heads, one_by_one.neurons, one_by_one.ffn_layers),
                    (per_example.heads, per_example.neurons, per_example.ffn_layers)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    # summing |.| per example, not per batch: never smaller, and here strictly larger somewhere
    assert torch.all(per_example.neurons >= per_batch.neurons * len(batches[0]["labels"]) - 1e-5)
    assert (per_example.neurons > per_batch.neurons * len(batches[0]["labels"]) + 1e-4).any()


def test_structured_defaults_are_the_papers():
    from raytickets.pruning.structured import StructuredHparams

    hp = StructuredHparams()
    assert hp.importance == "per_example" and hp.importance_batches is None  # E_x|dL/dg| over the whole split
    with pytest.raises(ConfigError, match="importance: 'mean'; allowed: per_example, per_batch"):
        structured_importance(None, [], mode="mean")
