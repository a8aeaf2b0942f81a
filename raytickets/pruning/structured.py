"""Structured pruning (Liang et al. 2021, super tickets; Michel et al. 2019): attention heads and feed-forward
units ranked by the sensitivity of the loss to a gate g = 1 multiplying each unit's output.

Liang et al. score a unit by E_x |∂L(x)/∂g| over the training set: the absolute value per example
(`importance: per_example`, the default), so gradients of opposite sign on different examples do not
cancel; `per_batch` takes |∂(batch-mean loss)/∂g| per batch instead (Michel et al.'s code). A structured
ticket is an ordinary `Mask`: a head's Q/K/V rows and attention-output columns, a neuron's intermediate
row and output column, a whole FFN sublayer's two matrices and its output bias.

Past ~400 lines on purpose: importance scoring, unit selection and building the mask are one method's
parts, tested together against Liang et al.'s counts.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Mapping

import torch

from ..errors import ConfigError, MaskError
from ..masks import Mask
from ..models import TENSOR_KINDS, encoder
from .registry import Method, PruneContext, register
from .unstructured import check_choice, check_fraction

GRANULARITIES = ("neuron", "layer")
IMPORTANCE = ("per_example", "per_batch")
FFN_BIAS = r"encoder\.layer\.\d+\.output\.dense\.bias"


@dataclass
class StructuredHparams:
    head_fraction: float = 0.0  # of all heads, reached at the last round (linearly over the rounds)
    ffn_fraction: float = 0.0  # of all FFN neurons (or whole sublayers), reached at the last round
    ffn_granularity: Literal["neuron", "layer"] = "neuron"
    normalize_importance: bool = True  # per-layer L2 normalisation of the scores (Michel et al.)
    importance: Literal["per_example", "per_batch"] = "per_example"
    importance_batches: int | None = None  # training batches scored per round; null = the whole split
    losing: bool = False  # prune the most important units instead (a losing ticket)

    def validate(self, path: str) -> None:
        for name in ("head_fraction", "ffn_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name}: {getattr(self, name)} must be in [0, 1)")
        if self.head_fraction == 0 and self.ffn_fraction == 0:
            raise ConfigError(f"{path}.head_fraction: structured pruning needs head_fraction or ffn_fraction > 0")
        if self.importance_batches is not None and self.importance_batches < 1:
            raise ConfigError(f"{path}.importance_batches: {self.importance_batches} must be >= 1 or null (all)")


@register
class Structured(Method):
    name = "structured"
    summary = "attention heads and FFN neurons / sublayers by gate sensitivity E|dL/dg| (Liang et al. 2021)"
    Hparams = StructuredHparams
    axis_fields = ("head_fraction", "ffn_fraction")
    row_fields = ("head_fraction", "ffn_fraction", "ffn_granularity", "losing")
    whole_units = True

    def num_rounds(self) -> int:
        return self.rounds or 1

    def target(self, r: int) -> tuple[float, float]:
        n = self.num_rounds()  # approach the fractions linearly over the rounds
        return (self.hp.head_fraction * r / n, self.hp.ffn_fraction * r / n)

    def extra_prunable(self) -> tuple[str, ...]:
        # A removed FFN sublayer must not keep adding its trained output bias to the residual stream.
        return (FFN_BIAS,) if self.hp.ffn_granularity == "layer" else ()

    def check_model(self, model_config, path: str) -> None:
        """Reject fractions the model cannot take (every head of a layer) before anything is trained."""
        c = model_config
        L, H, I = c.num_hidden_layers, c.num_attention_heads, c.intermediate_size
        blank = StructuredImportance(torch.zeros(L, H), torch.zeros(L, I), torch.zeros(L))
        heads, ffn = self.target(self.num_rounds())  # the last round asks for the most
        try:
            select_structured(blank, heads, ffn, granularity=self.hp.ffn_granularity)
        except ConfigError as e:
            raise ConfigError(f"{path}.{e}") from None

    def importance(self, ctx: PruneContext) -> "StructuredImportance":
        return structured_importance(ctx.model, ctx.batches(self.hp.importance_batches), self.hp.normalize_importance,
                                     self.hp.importance, ctx.reduce, ctx.autocast)

    def select(self, ctx: PruneContext, current: Mask, target: tuple[float, float]) -> Mask:
        self.last_importance = self.importance(ctx)
        heads, neurons, layers = select_structured(self.last_importance, target[0], target[1],
                                                   self.hp.ffn_granularity, self.hp.losing, current)
        return structured_mask(ctx.params, ctx.model.config, heads, neurons, layers)

    def random(self, ctx: PruneContext, target: tuple[float, float]) -> Mask:
        heads, neurons, layers = random_structured(ctx.model.config, target[0], target[1], self.hp.ffn_granularity,
                                                   ctx.generator)
        return structured_mask(ctx.params, ctx.model.config, heads, neurons, layers)

    def evidence(self) -> dict[str, torch.Tensor]:
        imp = getattr(self, "last_importance", None)
        return {} if imp is None else {"heads": imp.heads, "neurons": imp.neurons, "ffn_layers": imp.ffn_layers}


@dataclass
class StructuredImportance:
    """Summed |dL/dg| per unit: heads [L, H], intermediate neurons [L, I], whole FFN sublayers [L]."""

    heads: torch.Tensor
    neurons: torch.Tensor
    ffn_layers: torch.Tensor


def _gated_output(output, gate: torch.Tensor, per_example: bool, split_heads: int | None = None):
    """`output` (a tensor, or a tuple whose first item is the tensor) times the gate on its last dim.

    `gate` is [units] (a scalar for a whole sublayer), or with `per_example` [B, units] ([B]).
    """
    tensor = output[0] if isinstance(output, tuple) else output
    gate = gate.to(tensor.dtype)
    if per_example:  # broadcast over tokens: [B, 1, units], or [B, 1, 1] for a whole sublayer
        gate = gate.reshape(gate.shape[0], 1, *gate.shape[1:])
        gate = gate.unsqueeze(-1) if gate.dim() == 2 else gate
    if split_heads is None:
        gated = tensor * gate
    else:  # context [B, T, H*d] -> [B, T, H, d] so each head's slice gets its own gate
        gated = (tensor.unflatten(-1, (split_heads, -1)) * gate.unsqueeze(-1)).flatten(-2)
    return (gated, *output[1:]) if isinstance(output, tuple) else gated


@contextlib.contextmanager
def _gates(model: torch.nn.Module, heads: torch.Tensor, neurons: torch.Tensor, ffn_layers: torch.Tensor) -> Iterator[None]:
    """Forward hooks multiplying each unit's output by its gate; always removed on exit.

    Gates are [L, H], [L, I], [L] (one per unit) or [B, L, H], [B, L, I], [B, L] (one per unit and example).
    transformers 5 has no `head_mask` argument, so the gates are hooks on the modules' outputs:
    self-attention returns (context [B,T,H*d], weights); intermediate returns the activation [B,T,I];
    output.dense returns the FFN sublayer's whole contribution (W·h + b) before dropout and the residual.
    """
    handles = []
    num_heads = heads.shape[-1]
    per_example = heads.dim() == 3

    def at(gates: torch.Tensor, l: int) -> torch.Tensor:
        return gates[:, l] if per_example else gates[l]

    try:
        for l, layer in enumerate(encoder(model).encoder.layer):
            # Gates are indexed inside the hook so each forward builds a fresh graph to the leaf tensors.
            handles.append(layer.attention.self.register_forward_hook(
                lambda m, a, out, l=l: _gated_output(out, at(heads, l), per_example, split_heads=num_heads)))
            handles.append(layer.intermediate.register_forward_hook(
                lambda m, a, out, l=l: _gated_output(out, at(neurons, l), per_example)))
            handles.append(layer.output.dense.register_forward_hook(
                lambda m, a, out, l=l: _gated_output(out, at(ffn_layers, l), per_example)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _layer_l2_normalized(scores: torch.Tensor) -> torch.Tensor:
    # Michel et al. / Liang et al.: divide by the L2 norm of the layer so layers are comparable globally.
    return scores / (scores.norm(dim=-1, keepdim=True) + 1e-20)


def per_example_loss(model: torch.nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each example's loss [B] as the model's own loss would compute it (mean over its labelled tokens for
    token-level labels such as MLM's, where -100 marks the unlabelled ones)."""
    import torch.nn.functional as F

    if labels.dim() == 2:  # token labels
        losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100)
        counts = (labels != -100).sum(1).clamp(min=1)
        return losses.view(labels.shape).sum(1) / counts
    if logits.shape[-1] == 1:  # a regression head
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype), reduction="none")
    return F.cross_entropy(logits, labels, reduction="none")


SPAN_LABELS = ("start_positions", "end_positions")  # extractive QA (squad.py): a start and an end token per window


def batch_losses(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Each example's task loss [B]: from `labels`, or for question answering the mean of the start and end
    cross-entropies (what `BertForQuestionAnswering` averages over the batch)."""
    import torch.nn.functional as F

    if all(k in batch for k in SPAN_LABELS):
        out = model(**{k: v for k, v in batch.items() if k not in SPAN_LABELS})
        starts, ends = (batch[k] for k in SPAN_LABELS)
        return (F.cross_entropy(out.start_logits.float(), starts, reduction="none")
                + F.cross_entropy(out.end_logits.float(), ends, reduction="none")) / 2
    if "labels" not in batch:
        raise ConfigError("batches: a batch without 'labels'; importance needs the task loss")
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    return per_example_loss(model, logits, batch["labels"])


def structured_importance(
    model: torch.nn.Module, batches: Iterable[dict], normalize: bool = True, mode: str = "per_example",
    reduce=None, autocast=contextlib.nullcontext,
) -> StructuredImportance:
    """Summed over batches: |dL(x)/dg| per example (`per_example`) or |dL(batch)/dg| (`per_batch`), for every
    head, intermediate neuron and whole FFN sublayer.

    The model is scored in eval mode (no dropout) and put back in its previous mode; gradients are taken
    only w.r.t. the gates (`autograd.grad`), so the parameters' `.grad` are left untouched. Under DDP
    `reduce` sums over ranks, each rank holding its part of every global batch: the result equals one
    process scoring the global batches. `normalize` divides heads and neurons by their per-layer L2 norm and
    the FFN scores by their norm.
    """
    check_choice("importance", mode, IMPORTANCE)
    reduce = reduce or (lambda t: t)
    config = model.config
    L, H, I = config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
    device = next(model.parameters()).device
    totals = [torch.zeros(shape, dtype=torch.float64, device=device) for shape in ((L, H), (L, I), (L,))]
    was_training, count = model.training, 0
    model.eval()
    try:
        with torch.enable_grad():
            for batch in batches:
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                size = batch["input_ids"].shape[0]
                shapes = ((size, L, H), (size, L, I), (size, L)) if mode == "per_example" else ((L, H), (L, I), (L,))
                gates = [torch.ones(s, device=device, requires_grad=True) for s in shapes]
                with _gates(model, *gates), autocast():
                    losses = batch_losses(model, batch)
                grads = torch.autograd.grad(losses.sum(), gates)  # per-example gates: row b is dL(x_b)/dg
                if mode == "per_example":
                    for total, grad in zip(totals, grads):
                        total += grad.detach().abs().sum(0).double()
                else:  # the global batch's mean loss: summed over ranks, divided by the global batch size
                    n = reduce(torch.tensor(float(size), dtype=torch.float64, device=device))
                    for total, grad in zip(totals, grads):
                        total += (reduce(grad.detach().double()) / n).abs()
                count += 1
    finally:
        model.train(was_training)
    if int(reduce(torch.tensor(count, device=device))) == 0:
        raise ConfigError("batches: no batches given; importance needs at least one batch with labels")
    if mode == "per_example":
        totals = [reduce(t) for t in totals]
    heads, neurons, ffn = (t.float().cpu() for t in totals)
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
    neuron i: row i of intermediate.dense and column i of output.dense; FFN layer: both tensors entirely,
    and its output bias where the prunable set holds it (`Structured.extra_prunable`).
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
        bias = f"encoder.layer.{l}.output.dense.bias"
        if bias in tensors:
            tensors[bias].fill_(False)
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
    scores: torch.Tensor, already: torch.Tensor, fraction: float, field: str, losing: bool, keep_one: bool,
    floor: bool = False,
) -> torch.Tensor:
    """Bool [rows, units]: `already` plus the least (losing: most) important survivors, round(fraction·n) in all
    (floor: int(fraction·n), the head count of Liang et al.'s masking.py).

    keep_one: a unit is skipped when it is the last survivor of its row (layer), so the next one in the
    ranking elsewhere is taken instead: every layer keeps its most important head.
    """
    rows, size = already.shape if already.dim() == 2 else (1, already.numel())
    n = already.numel()
    # Liang et al. count heads as int(total_heads * percent / 100) (masking.py:13): 57 of 144 at 40 %, not 58.
    # The 1e-9 keeps a fraction whose product lands a hair under an integer (0.29·100 = 28.999…) on it.
    count = math.floor(fraction * n + 1e-9) if floor else round(fraction * n)
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
    granularity "layer"): int(fraction·L·H) heads, as Liang et al.'s masking.py:13 counts them, and
    round(fraction·n) FFN units (their FFN masks are counts, 1 ... 12 sublayers, which a fraction written to
    a few digits, 0.0833, gives back only by rounding). Units `current` already removes count as pruned and
    stay in the result, so the triple always describes the whole cumulative structured mask. Every layer
    keeps >= 1 head; a fraction that cannot (more than (H-1)/H of the heads) is a ConfigError rather than a
    silent clamp.
    """
    head_fraction = check_fraction("head_fraction", head_fraction)
    ffn_fraction = check_fraction("ffn_fraction", ffn_fraction)
    check_choice("granularity", granularity, GRANULARITIES)
    (L, H), I = importance.heads.shape, importance.neurons.shape[1]
    if current is None:
        done_heads, done_neurons, done_ffn = (torch.zeros(shape, dtype=torch.bool) for shape in ((L, H), (L, I), (L,)))
    else:
        done_heads, done_neurons, done_ffn = _pruned_units(current, L, H, I)
    heads = _choose(importance.heads, done_heads, head_fraction, "head_fraction", losing, keep_one=True, floor=True)
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
