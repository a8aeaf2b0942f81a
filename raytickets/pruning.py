"""Choosing masks: magnitude (global or per tensor), random, and structured heads/FFN units by importance.

Unstructured pruning follows Chen et al. 2020 (IMP on BERT): prune the smallest-magnitude weights that
still survive until the requested sparsity is reached exactly. Structured pruning follows Liang et al. 2021
(super tickets) and Michel et al. 2019: the importance of an attention head or feed-forward unit is the
sensitivity |dL/dg| of the loss to a gate g = 1 multiplying that unit's output.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import torch

from .errors import ConfigError, MaskError
from .masks import Mask
from .models import TENSOR_KINDS, encoder

SCOPES = ("global", "per_tensor")
GRANULARITIES = ("neuron", "layer")


def _check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field}: {value!r}; allowed: {', '.join(allowed)}")


def _check_fraction(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{field}: {value!r} is not a fraction in [0, 1]")
    return float(value)


# ---------------------------------------------------------------------------------------------------
# Unstructured: magnitude and random
# ---------------------------------------------------------------------------------------------------


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool selector of exactly the k smallest scores; ties at the threshold go to the lowest indices.

    kthvalue + a tie fix instead of a full sort: linear time and no int64 index array the size of the
    model, and the choice does not depend on how topk happens to order equal values.
    """
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    if k <= 0:
        return chosen
    if k >= scores.numel():
        return ~chosen
    threshold = torch.kthvalue(scores, k).values
    chosen = scores < threshold
    ties = (scores == threshold).nonzero().squeeze(1)
    chosen[ties[: k - int(chosen.sum())]] = True
    return chosen


def _check_reachable(keep: torch.Tensor, target_pruned: int, where: str) -> int:
    """How many more survivors to prune; pruned weights are never regrown, so a lower target is an error."""
    already = keep.numel() - int(keep.sum())
    if target_pruned < already:
        raise ConfigError(
            f"target_sparsity: {target_pruned / keep.numel():.6g} for {where} is below the mask's current "
            f"sparsity {already / keep.numel():.6g}; pruned weights are never regrown"
        )
    return target_pruned - already


def _prune_each(mask: Mask, target: float, scope: str, drop: Callable[[torch.Tensor, int, list[str]], torch.Tensor]) -> Mask:
    """Apply `drop(flat_keep, count, names) -> which survivors to prune` globally or tensor by tensor.

    `drop` returns a bool vector over the survivors (in flat order) selecting exactly `count` of them.
    """
    groups = [[name] for name in mask.names] if scope == "per_tensor" else [mask.names]
    tensors = {}
    for names in groups:
        keep = torch.cat([mask.tensors[n].reshape(-1) for n in names])
        where = repr(names[0]) if scope == "per_tensor" else "all tensors"
        count = _check_reachable(keep, round(target * keep.numel()), where)
        new_keep = keep.clone()
        new_keep[keep] = ~drop(keep, count, names)
        pieces = torch.split(new_keep, [mask.tensors[n].numel() for n in names])
        tensors.update({n: piece.reshape(mask.tensors[n].shape) for n, piece in zip(names, pieces)})
    return Mask({n: tensors[n] for n in mask.names})


def _magnitude_scores(name: str, weight: torch.Tensor, largest: bool) -> torch.Tensor:
    scores = weight.detach().to("cpu", torch.float32).abs().reshape(-1)
    if bool(torch.isnan(scores).any()):
        raise ConfigError(f"weights: tensor {name!r} contains NaN; magnitudes cannot be ranked (did training diverge?)")
    return -scores if largest else scores


def magnitude_prune(
    weights: Mapping[str, torch.Tensor],
    mask: Mask,
    target_sparsity: float,
    scope: str = "global",
    largest: bool = False,
) -> Mask:
    """Prune the smallest-|w| surviving weights until sparsity == round(target * total) / total exactly.

    Already-pruned weights stay pruned and are not ranked. `global` ranks all tensors together (Chen et al.);
    `per_tensor` brings every tensor to round(target * numel) on its own. `largest` prunes the largest instead.
    Equals torch.nn.utils.prune.global_unstructured(L1Unstructured) for the same weights and count.
    """
    target = _check_fraction("target_sparsity", target_sparsity)
    _check_choice("scope", scope, SCOPES)
    mask.validate(weights)

    def drop(keep: torch.Tensor, count: int, names: list[str]) -> torch.Tensor:
        scores = torch.cat([_magnitude_scores(n, weights[n], largest) for n in names])
        return _smallest(scores[keep], count)

    return _prune_each(mask, target, scope, drop)


def random_prune(
    mask: Mask, target_sparsity: float, scope: str = "global", generator: torch.Generator | None = None
) -> Mask:
    """Prune survivors chosen uniformly without replacement, to exactly the count `magnitude_prune` reaches.

    The random baseline must match the ticket's sparsity exactly; sampling with replacement would prune less.
    """
    target = _check_fraction("target_sparsity", target_sparsity)
    _check_choice("scope", scope, SCOPES)
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator: {type(generator).__name__}; pass a seeded torch.Generator")

    def drop(keep: torch.Tensor, count: int, names: list[str]) -> torch.Tensor:
        survivors = int(keep.sum())
        chosen = torch.zeros(survivors, dtype=torch.bool)
        chosen[torch.randperm(survivors, generator=generator)[:count]] = True
        return chosen

    return _prune_each(mask, target, scope, drop)


# ---------------------------------------------------------------------------------------------------
# Structured: attention heads and feed-forward units (Liang et al. 2021)
# ---------------------------------------------------------------------------------------------------


@dataclass
class StructuredImportance:
    """|dL/dg| per unit: heads [L, H], intermediate neurons [L, I], whole FFN sublayers [L]."""

    heads: torch.Tensor
    neurons: torch.Tensor
    ffn_layers: torch.Tensor


def _gated_output(output, gate: torch.Tensor, split_heads: int | None = None):
    """`output` (a tensor, or a tuple whose first item is the tensor) times the gate on its last dim."""
    tensor = output[0] if isinstance(output, tuple) else output
    gate = gate.to(tensor.dtype)
    if split_heads is None:
        gated = tensor * gate
    else:  # context [B, T, H*d] -> [B, T, H, d] so each head's slice gets its own gate
        gated = (tensor.unflatten(-1, (split_heads, -1)) * gate.unsqueeze(-1)).flatten(-2)
    return (gated, *output[1:]) if isinstance(output, tuple) else gated


@contextlib.contextmanager
def _gates(model: torch.nn.Module, heads: torch.Tensor, neurons: torch.Tensor, ffn_layers: torch.Tensor) -> Iterator[None]:
    """Forward hooks multiplying each unit's output by its gate; always removed on exit.

    transformers 5 has no `head_mask` argument, so the gates are hooks on the modules' outputs:
    self-attention returns (context [B,T,H*d], weights); intermediate returns the activation [B,T,I];
    output.dense returns the FFN sublayer's contribution before dropout and the residual.
    """
    handles = []
    num_heads = heads.shape[1]
    try:
        for l, layer in enumerate(encoder(model).encoder.layer):
            # Gates are indexed inside the hook so each forward builds a fresh graph to the leaf tensors.
            handles.append(layer.attention.self.register_forward_hook(
                lambda m, a, out, l=l: _gated_output(out, heads[l], split_heads=num_heads)))
            handles.append(layer.intermediate.register_forward_hook(lambda m, a, out, l=l: _gated_output(out, neurons[l])))
            handles.append(layer.output.dense.register_forward_hook(lambda m, a, out, l=l: _gated_output(out, ffn_layers[l])))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _layer_l2_normalized(scores: torch.Tensor) -> torch.Tensor:
    # Michel et al. / Liang et al.: divide by the L2 norm of the layer so layers are comparable globally.
    return scores / (scores.norm(dim=-1, keepdim=True) + 1e-20)


def structured_importance(model: torch.nn.Module, batches: Iterable[dict], normalize: bool = True) -> StructuredImportance:
    """Sum over batches of |dL/dg| for every head, intermediate neuron and whole FFN sublayer.

    The model is scored in eval mode (no dropout) and put back in its previous mode; gradients are taken
    only w.r.t. the gates (`autograd.grad`), so the parameters' `.grad` are left untouched.
    `normalize` divides heads and neurons by their per-layer L2 norm and the FFN scores by their norm.
    """
    config = model.config
    L, H, I = config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
    device = next(model.parameters()).device
    gates = [torch.ones(shape, device=device, requires_grad=True) for shape in ((L, H), (L, I), (L,))]
    totals = [torch.zeros(g.shape, dtype=torch.float64) for g in gates]
    was_training, count = model.training, 0
    model.eval()
    try:
        with _gates(model, *gates), torch.enable_grad():
            for batch in batches:
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                loss = model(**batch).loss
                if loss is None:
                    raise ConfigError("batches: a batch without 'labels'; importance needs the task loss")
                for total, grad in zip(totals, torch.autograd.grad(loss, gates)):
                    total += grad.detach().abs().to("cpu", torch.float64)
                count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("batches: no batches given; importance needs at least one batch with labels")
    heads, neurons, ffn = (t.float() for t in totals)
    if normalize:
        heads, neurons, ffn = _layer_l2_normalized(heads), _layer_l2_normalized(neurons), _layer_l2_normalized(ffn)
    return StructuredImportance(heads=heads, neurons=neurons, ffn_layers=ffn)


def _unit_names(layer: int) -> dict[str, str]:
    """Kind -> name of each of a layer's prunable weights (the kinds of models.TENSOR_KINDS)."""
    return {kind: f"encoder.layer.{layer}.{module}.weight" for module, kind in TENSOR_KINDS.items() if kind != "pooler"}


def _check_units(field: str, units: Mapping[int, Iterable[int]] | Iterable[int], num_layers: int, size: int | None) -> None:
    layers = units.items() if isinstance(units, Mapping) else ((l, ()) for l in units)
    for l, idx in layers:
        if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < num_layers:
            raise MaskError(f"{field}: layer {l!r} out of range; the model has layers 0..{num_layers - 1}")
        for i in idx:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < size:
                raise MaskError(f"{field}: unit {i!r} of layer {l} out of range; allowed 0..{size - 1}")


def structured_mask(
    params: Mapping[str, torch.Tensor],
    config,
    heads: Mapping[int, Iterable[int]],
    neurons: Mapping[int, Iterable[int]],
    ffn_layers: Iterable[int] = (),
) -> Mask:
    """The mask removing whole heads, intermediate neurons and FFN sublayers (everything else kept).

    Head h of layer l: rows h·d:(h+1)·d of Q, K, V and the same columns of attention.output.dense;
    neuron i: row i of intermediate.dense and column i of output.dense; FFN layer: both tensors entirely.
    """
    L, H, I = config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
    d = config.hidden_size // H
    heads = {l: list(hs) for l, hs in heads.items()}
    neurons = {l: list(ns) for l, ns in neurons.items()}
    ffn_layers = list(ffn_layers)
    _check_units("heads", heads, L, H)
    _check_units("neurons", neurons, L, I)
    _check_units("ffn_layers", ffn_layers, L, None)
    tensors = {name: torch.ones(tuple(p.shape), dtype=torch.bool) for name, p in params.items()}

    def tensor(name: str) -> torch.Tensor:
        if name not in tensors:
            raise MaskError(f"structured_mask: {name!r} is not among the prunable tensors; include it to prune whole units")
        return tensors[name]

    for l, hs in heads.items():
        names = _unit_names(l)
        for h in hs:
            rows = slice(h * d, (h + 1) * d)
            for kind in ("query", "key", "value"):
                tensor(names[kind])[rows, :] = False
            tensor(names["attention_output"])[:, rows] = False
    for l, idx in neurons.items():
        names = _unit_names(l)
        tensor(names["intermediate"])[idx, :] = False
        tensor(names["output"])[:, idx] = False
    for l in ffn_layers:
        names = _unit_names(l)
        tensor(names["intermediate"]).fill_(False)
        tensor(names["output"]).fill_(False)
    return Mask(tensors)


def _pruned_units(current: Mask, L: int, H: int, I: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which heads [L,H], neurons [L,I] and FFN layers [L] a mask removes entirely (every weight False)."""
    heads = torch.zeros(L, H, dtype=torch.bool)
    neurons = torch.zeros(L, I, dtype=torch.bool)
    ffn = torch.zeros(L, dtype=torch.bool)
    for l in range(L):
        names = _unit_names(l)
        missing = [n for n in names.values() if n not in current.tensors]
        if missing:
            raise MaskError(f"current: mask has no tensor {missing[0]!r}; structured pruning needs all Q/K/V/O/FFN weights")
        t = {kind: current.tensors[name] for kind, name in names.items()}
        if t["query"].shape[0] % H or t["intermediate"].shape[0] != I:
            raise MaskError(f"current: layer {l} shapes do not fit {H} heads and {I} neurons of the importance scores")
        any_kept = sum(t[k].unflatten(0, (H, -1)).flatten(1).any(1).int() for k in ("query", "key", "value"))
        any_kept = any_kept + t["attention_output"].unflatten(1, (H, -1)).any(2).any(0).int()
        heads[l] = any_kept == 0
        neurons[l] = ~(t["intermediate"].any(1) | t["output"].any(0))
        ffn[l] = not bool(t["intermediate"].any() or t["output"].any())
    return heads, neurons, ffn


def _choose(
    scores: torch.Tensor, already: torch.Tensor, fraction: float, field: str, losing: bool, keep_one: bool
) -> torch.Tensor:
    """Bool [rows, units]: `already` plus the least (losing: most) important survivors, round(fraction·n) in all.

    keep_one: a unit is skipped when it is the last survivor of its row (layer), so the next one in the
    ranking elsewhere is taken instead: every layer keeps its most important head.
    """
    rows, size = already.shape if already.dim() == 2 else (1, already.numel())
    count = round(fraction * already.numel())
    pruned = already.clone().reshape(rows, size)
    if count < int(already.sum()):
        raise ConfigError(
            f"{field}: {fraction!r} asks for {count} pruned units but the current mask already prunes {int(already.sum())}"
        )
    if keep_one and fraction > (size - 1) / size + 1e-12:
        raise ConfigError(
            f"{field}: {fraction!r} would remove every head of a layer ({count} of {rows * size} heads); "
            f"at most {(size - 1) / size:.4g} leaves one head per layer"
        )
    order = torch.sort(scores.reshape(-1), descending=losing, stable=True).indices.tolist()
    kept_per_row = (~pruned).sum(1).tolist()
    need = count - int(pruned.sum())
    for flat in order:
        if need == 0:
            break
        r, u = divmod(flat, size)
        if pruned[r, u] or (keep_one and kept_per_row[r] <= 1):
            continue
        pruned[r, u] = True
        kept_per_row[r] -= 1
        need -= 1
    if need:
        raise ConfigError(f"{field}: {fraction!r} cannot be reached while keeping one head in every layer of the current mask")
    return pruned.reshape(already.shape)


def _as_units(pruned: torch.Tensor) -> dict[int, list[int]]:
    return {l: row.nonzero().squeeze(1).tolist() for l, row in enumerate(pruned) if bool(row.any())}


def select_structured(
    importance: StructuredImportance,
    head_fraction: float,
    ffn_fraction: float,
    granularity: str = "neuron",
    losing: bool = False,
    current: Mask | None = None,
) -> tuple[dict[int, list[int]], dict[int, list[int]], list[int]]:
    """(heads, neurons, ffn_layers) to prune: the least important units (losing: the most important).

    Fractions are of all heads (global over layers) and of all FFN units (neurons, or whole sublayers with
    granularity "layer"). Units `current` already removes count as pruned and stay in the result, so the
    triple always describes the whole cumulative structured mask. Every layer keeps >= 1 head; a fraction
    that cannot (more than (H-1)/H of the heads) is a ConfigError rather than a silent clamp.
    """
    head_fraction = _check_fraction("head_fraction", head_fraction)
    ffn_fraction = _check_fraction("ffn_fraction", ffn_fraction)
    _check_choice("granularity", granularity, GRANULARITIES)
    (L, H), I = importance.heads.shape, importance.neurons.shape[1]
    if current is None:
        done_heads, done_neurons, done_ffn = (torch.zeros(shape, dtype=torch.bool) for shape in ((L, H), (L, I), (L,)))
    else:
        done_heads, done_neurons, done_ffn = _pruned_units(current, L, H, I)
    heads = _choose(importance.heads, done_heads, head_fraction, "head_fraction", losing, keep_one=True)
    if granularity == "neuron":
        neurons = _choose(importance.neurons, done_neurons, ffn_fraction, "ffn_fraction", losing, keep_one=False)
        return _as_units(heads), _as_units(neurons), []
    ffn = _choose(importance.ffn_layers, done_ffn, ffn_fraction, "ffn_fraction", losing, keep_one=False)
    # Single neurons the current mask removed outside the chosen layers stay removed.
    neurons = done_neurons & ~ffn.unsqueeze(1)
    return _as_units(heads), _as_units(neurons), ffn.nonzero().squeeze(1).tolist()


def random_structured(
    config,
    head_fraction: float,
    ffn_fraction: float,
    granularity: str = "neuron",
    generator: torch.Generator | None = None,
    current: Mask | None = None,
) -> tuple[dict[int, list[int]], dict[int, list[int]], list[int]]:
    """Random heads and FFN units at the same fractions and under the same rules as `select_structured`."""
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator: {type(generator).__name__}; pass a seeded torch.Generator")
    L, H, I = config.num_hidden_layers, config.num_attention_heads, config.intermediate_size

    def ranks(*shape: int) -> torch.Tensor:  # a random permutation: uniform order, no ties
        n = 1
        for s in shape:
            n *= s
        return torch.randperm(n, generator=generator).float().reshape(shape)

    importance = StructuredImportance(heads=ranks(L, H), neurons=ranks(L, I), ffn_layers=ranks(L))
    return select_structured(importance, head_fraction, ffn_fraction, granularity, losing=False, current=current)
