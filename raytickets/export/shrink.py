"""Physical shrinking of a ticket: attention heads and FFN neurons the mask removes entirely are cut out of the
weight matrices, so the model is smaller and faster instead of dense with zeros.

transformers 5 no longer has `PreTrainedModel.prune_heads` (and never removed FFN neurons), so which units go is
decided here; cutting a matrix is transformers' `pytorch_utils.prune_linear_layer`. The rule that makes it exact: a head reaches the residual stream only through its
d columns of `attention.output.dense`, and an FFN neuron only through its column of `output.dense`. When the
mask prunes those outgoing columns entirely, the unit adds exactly 0 — its biases included (a head with
zeroed Q/K/V rows still emits its value bias, which the zeroed columns then drop) — so removing it, incoming
rows and all, leaves the logits unchanged up to float rounding. A structured ticket (`pruning/structured.py`)
prunes exactly such units; an unstructured one almost never empties a whole column, and then nothing is cut.

The result has per-layer head counts and FFN widths, which a stock `BertConfig` cannot express: the
shapes are kept in a `Structure` (saved as `shrink.json` beside the weights) and `reshape_layers` rebuilds
the module from it before the weights are loaded.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from ..errors import MaskError
from ..masks import Mask
from ..models import encoder

FORMAT = "raytickets.shrunk"
VERSION = 1
SHRINK_FILE = "shrink.json"  # the Structure, saved beside the shrunk weights


@dataclass(frozen=True)
class Structure:
    """Which original heads and FFN neurons every encoder layer keeps (indices into the dense model's units)."""

    heads: tuple[tuple[int, ...], ...]  # per layer, kept head indices
    neurons: tuple[tuple[int, ...], ...]  # per layer, kept intermediate-neuron indices
    num_heads: int  # of the dense model, per layer
    intermediate_size: int  # of the dense model, per layer

    @property
    def removed_heads(self) -> int:
        return self.num_heads * len(self.heads) - sum(map(len, self.heads))

    @property
    def removed_neurons(self) -> int:
        return self.intermediate_size * len(self.neurons) - sum(map(len, self.neurons))

    @property
    def shrinks(self) -> bool:
        return bool(self.removed_heads or self.removed_neurons)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "num_heads": self.num_heads,
                "intermediate_size": self.intermediate_size,
                "layers": [{"heads": list(h), "neurons": list(n)} for h, n in zip(self.heads, self.neurons)]}

    @classmethod
    def from_json(cls, data: dict, where: str) -> "Structure":
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise MaskError(f"{where}: format {data.get('format')!r} version {data.get('version')!r}; "
                            f"expected {FORMAT!r} version {VERSION}")
        layers = data["layers"]
        return cls(tuple(tuple(l["heads"]) for l in layers), tuple(tuple(l["neurons"]) for l in layers),
                   int(data["num_heads"]), int(data["intermediate_size"]))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> "Structure":
        if not path.is_file():
            raise MaskError(f"{path}: no shrink.json; not a directory written by `raytickets export` with a shrunk model")
        return cls.from_json(json.loads(path.read_text()), str(path))


def structure_of(mask: Mask, config) -> Structure:
    """The heads and neurons a mask keeps: every unit whose outgoing weights are not all pruned.

    A layer that would lose every head (or every neuron) keeps its first one: its outgoing weights are zero,
    so it still adds nothing, and no tensor gets a zero dimension (`view(..., -1, d)` and ONNX Runtime need one).
    A tensor the mask does not cover is dense, so its units are all kept.
    """
    L, H, I = config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
    d = config.hidden_size // H
    heads, neurons = [], []
    for l in range(L):
        attn_out = mask.tensors.get(f"encoder.layer.{l}.attention.output.dense.weight")
        ffn_out = mask.tensors.get(f"encoder.layer.{l}.output.dense.weight")
        for name, t, cols in (("attention.output.dense", attn_out, H * d), ("output.dense", ffn_out, I)):
            if t is not None and t.shape[1] != cols:
                raise MaskError(f"mask tensor 'encoder.layer.{l}.{name}.weight': {t.shape[1]} columns; "
                                f"the model has {cols}")
        # A head's d output columns, or a neuron's one: kept when any of them is kept.
        kept_h = range(H) if attn_out is None else attn_out.unflatten(1, (H, d)).any(2).any(0).nonzero().flatten()
        kept_h = [int(h) for h in kept_h]
        kept_n = [int(i) for i in (range(I) if ffn_out is None else ffn_out.any(0).nonzero().flatten())]
        heads.append(tuple(kept_h) or (0,))
        neurons.append(tuple(kept_n) or (0,))
    return Structure(tuple(heads), tuple(neurons), H, I)


def _keep(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A Linear keeping only these output units (dim 0: weight rows and bias entries) or input units (dim 1: weight
    columns; the bias is the whole output's): transformers' own `prune_linear_layer`, in the layer's dtype (it
    builds the new layer in the default dtype)."""
    return prune_linear_layer(linear, index, dim=dim).to(linear.weight.dtype)


def _head_rows(heads: tuple[int, ...], d: int) -> torch.Tensor:
    return torch.tensor([h * d + j for h in heads for j in range(d)], dtype=torch.long)


def _check_fits(model: nn.Module, structure: Structure) -> None:
    c = encoder(model).config
    layers = encoder(model).encoder.layer
    if (len(structure.heads), structure.num_heads, structure.intermediate_size) != (
            len(layers), c.num_attention_heads, c.intermediate_size):
        raise MaskError(f"structure: {len(structure.heads)} layers x {structure.num_heads} heads x "
                        f"{structure.intermediate_size} neurons does not fit the model's {len(layers)} x "
                        f"{c.num_attention_heads} x {c.intermediate_size}")


def _cut(model: nn.Module, structure: Structure) -> nn.Module:
    """Replace every layer's six matrices by their kept rows/columns, in place; returns the model."""
    _check_fits(model, structure)
    d = encoder(model).config.hidden_size // structure.num_heads
    for layer, heads, neurons in zip(encoder(model).encoder.layer, structure.heads, structure.neurons):
        rows, units = _head_rows(heads, d), torch.tensor(neurons, dtype=torch.long)
        attn = layer.attention.self
        attn.query, attn.key, attn.value = (_keep(m, rows, 0) for m in (attn.query, attn.key, attn.value))
        # Only informative since the forward infers the head count from the projections' width; kept true.
        attn.num_attention_heads, attn.all_head_size = len(heads), len(heads) * d
        layer.attention.output.dense = _keep(layer.attention.output.dense, rows, 1)
        layer.intermediate.dense = _keep(layer.intermediate.dense, units, 0)
        layer.output.dense = _keep(layer.output.dense, units, 1)
    return model


@torch.no_grad()
def masked(model: nn.Module, mask: Mask) -> nn.Module:
    """The model with the mask's pruned weights set to 0 (the dense ticket), in place; returns the model."""
    names = set(mask.names)
    params = {n: p for n, p in encoder(model).named_parameters() if n in names}
    mask.apply(params)  # MaskError if the mask names a tensor the model lacks, or a shape differs
    return model


def shrink(model: nn.Module, mask: Mask) -> tuple[nn.Module, Structure]:
    """A physically smaller copy of the masked model (the input is left as it is) and its `Structure`."""
    structure = structure_of(mask, encoder(model).config)
    small = masked(copy.deepcopy(model), mask)
    return _cut(small, structure).eval(), structure


def residual_pruned(mask: Mask, structure: Structure, hidden_size: int) -> int:
    """Pruned matrix entries that stay in the shrunk model as zeros (inside kept units, or in matrices never cut
    such as the pooler). A removed FFN sublayer's zeroed output bias is not counted: it is a vector."""
    d = hidden_size // structure.num_heads
    count = 0
    for name, keep in mask.tensors.items():
        if keep.dim() != 2:
            continue
        parts = name.split(".")
        if name.startswith("encoder.layer."):
            l = int(parts[2])
            rows, units = _head_rows(structure.heads[l], d), torch.tensor(structure.neurons[l], dtype=torch.long)
            module = ".".join(parts[3:-1])
            keep = {"attention.self.query": lambda t: t[rows], "attention.self.key": lambda t: t[rows],
                    "attention.self.value": lambda t: t[rows], "attention.output.dense": lambda t: t[:, rows],
                    "intermediate.dense": lambda t: t[units], "output.dense": lambda t: t[:, units],
                    }.get(module, lambda t: t)(keep)
        count += int((~keep).sum())
    return count


def reshape_layers(model: nn.Module, structure: Structure) -> nn.Module:
    """Give a freshly built dense model the shrunk shapes, so a shrunk state dict loads into it strictly."""
    _check_fits(model, structure)
    full = Structure(tuple(tuple(range(len(h))) for h in structure.heads),
                     tuple(tuple(range(len(n))) for n in structure.neurons), structure.num_heads,
                     structure.intermediate_size)
    # Cutting to the first k units gives modules of the right shapes; their values are overwritten on load.
    return _cut(model, full)


def sparse_size(model: nn.Module, mask: Mask) -> tuple[int, int]:
    """(bytes of a sparse-aware copy, bytes of the dense copy) of the masked model's weights, as safetensors.

    The sparse copy stores each masked tensor as its kept values (in the tensor's dtype) and its bit-packed
    mask, every other tensor as it is; it is the smallest lossless form a loader could rebuild the dense
    model from. Sizes are of the serialised bytes, nothing is written.
    """
    import numpy as np
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    prefix = "bert." if hasattr(model, "bert") else ""
    sparse = dict(state)
    for name, keep in mask.tensors.items():
        key = prefix + name
        if key not in state:
            raise MaskError(f"mask tensor {name!r} is not a parameter of this model")
        del sparse[key]
        sparse[f"{key}.kept_values"] = state[key][keep].contiguous()
        sparse[f"{key}.mask_bits"] = torch.from_numpy(np.packbits(keep.reshape(-1).numpy()))
    return len(save(sparse)), len(save(state))


def flops_per_sequence(model: nn.Module, seq_len: int) -> int:
    """Multiply-adds x 2 of one sequence through the encoder's layers and the classifier head, read from the
    modules' actual shapes (so dense and shrunk models are counted by the same code). Embedding look-ups,
    LayerNorm, softmax and activations are left out: they are the same in both and small."""
    total = 0
    enc = encoder(model)
    for layer in enc.encoder.layer:
        attn = layer.attention.self
        width = attn.query.out_features  # kept heads x d
        linears = (attn.query, attn.key, attn.value, layer.attention.output.dense, layer.intermediate.dense,
                   layer.output.dense)
        total += 2 * seq_len * sum(m.in_features * m.out_features for m in linears)
        total += 2 * 2 * seq_len * seq_len * width  # scores Q·K^T and the weighted sum of V, per kept head
    in_layers = {id(m) for m in enc.encoder.modules()}
    for m in model.modules():  # the pooler and classifier: once per sequence, on [CLS]
        if isinstance(m, nn.Linear) and id(m) not in in_layers:
            total += 2 * m.in_features * m.out_features
    return total


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
