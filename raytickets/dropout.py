"""Dropout with cheaper masks on CPU: the same Bernoulli(1 - p) keep mask and 1/(1 - p) scaling as torch's,
drawn as 31-bit integers compared with a threshold instead of through `bernoulli_`.

Why: on CPU, torch draws a dropout mask with `bernoulli_`, one double-precision uniform per element (two
mt19937 draws; ~4.8 ns an element here, whatever the dtype), and then divides the mask by 1 - p in the input's
dtype; it was the bf16 training step's most expensive operator (benchmarks/precision.py). `random_()` on an
int32 tensor takes one mt19937 draw per element (~1.9 ns) uniform on [0, 2**31); keeping an element when that
draw is below round((1 - p) * 2**31) keeps it with probability 1 - p to within 2**-32 (torch.rand's float32
uniforms resolve 2**-24; no 1/256 quantisation as with byte draws). The kept values are x * (1/(1 - p)) rounded
once in the input's dtype (torch's bf16 dropout multiplies by 1/(1 - p) already rounded to bf16, 1.109 for 1.111).
Autograd saves the mask alone, in the input's dtype, as torch's dropout does.

Where: every `nn.Dropout` of a loaded model becomes `Dropout` (same class behaviour, same `p`), and the attention
probabilities' dropout, which HF BERT hands to `scaled_dot_product_attention` (whose CPU math kernel upcasts to
float32 and calls torch's dropout), runs through `attention`: the same float32 math with this mask. On CUDA, under
torch.compile and in eval mode everything is torch's own (CUDA's fused dropout kernel is already cheap; inductor
fuses its own masks; eval has no mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION = "raytickets_sdpa"
_BITS = 2**31  # int32 random_() draws uniformly from [0, 2**31): one 32-bit mt19937 draw, top bit dropped


def keep_threshold(p: float) -> int:
    """The int32 draw below which an element is kept: P(keep) = threshold / 2**31 = 1 - p within 2**-32."""
    return round((1.0 - p) * _BITS)


def _cheap(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`torch.nn.functional.dropout(x, p, training)` in distribution, with the cheaper mask on CPU."""
    if not training or p == 0.0:
        return x
    if p == 1.0 or not _cheap(x):
        return F.dropout(x, p, training)
    bits = torch.empty(x.shape, dtype=torch.int32).random_()  # the default CPU generator: torch.manual_seed holds
    keep = torch.lt(bits, keep_threshold(p), out=torch.empty(x.shape, dtype=x.dtype))  # 0/1 in x's dtype
    scale = 1.0 / (1.0 - p)
    if x.dtype.itemsize >= 4:  # float32: the scale folded into the mask (as torch's); the gradient is grad * keep
        return x * keep.mul_(scale)
    # bf16/fp16: a mask holding 1/(1 - p) would round it to 8 (11) bits, 1.109 for 1.111, as torch's bf16 dropout
    # does, shrinking every kept value; x * keep is exact (0 or 1) and the scalar scale stays float32 in the
    # kernel: one rounding per element, unbiased. One pass more each way, on the smaller hidden-state tensors.
    return (x * keep).mul_(scale)


class Dropout(nn.Dropout):
    """`nn.Dropout` (same `p`, `inplace` ignored as the model's never set it) drawing the cheaper mask on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              **kwargs):
    """transformers' "sdpa" attention, except when it would drop attention probabilities on CPU: then the math
    SDPA's CPU kernel runs (float32 whatever autocast says; softmax(q·kᵀ·scale + mask), dropout, ·v) with the
    cheaper mask. Anything BERT's encoder does not pass (a causal flag, a position bias) goes to "sdpa" as is."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (dropout == 0.0 or not module.training or not _cheap(query) or kwargs.get("is_causal")
             or kwargs.get("position_bias") is not None or getattr(module, "is_causal", False))
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return math_attention(query, key, value, attention_mask, dropout, scaling), None


def math_attention(query, key, value, attention_mask, p: float, scaling: float | None) -> torch.Tensor:
    """[batch, length, heads, head_dim] attention output (what transformers' sdpa_attention_forward returns)."""
    with torch.autocast("cpu", enabled=False):  # SDPA's CPU math kernel computes in float32 under autocast too
        q, k, v = query.float(), key.float(), value.float()
        scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scaling is None else scaling)
        if attention_mask is not None:  # a boolean mask says who may be attended; a float one is added
            scores = (scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
                      if attention_mask.dtype == torch.bool else scores + attention_mask.float())
        probs = dropout(scores.softmax(-1), p, True)
        out = torch.matmul(probs, v).to(query.dtype)
    return out.transpose(1, 2).contiguous()


def use_cheap_dropout(model: nn.Module) -> nn.Module:
    """Swap every `nn.Dropout` of `model` for `Dropout` and route its attention through `attention` (in place;
    returned for chaining). Parameters, state dict and the saved config are unchanged."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:  # a new module starts in training mode: keep the old one's mode
                setattr(parent, name, Dropout(child.p).train(child.training))
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
        config._attn_implementation = ATTENTION
    return model


def _register() -> None:
    """Make `ATTENTION` a name transformers resolves, for the attention and for the padding mask it builds (an
    implementation without a mask function gets no mask: padding would be attended). At import, so a model
    unpickled in another process (a Ray worker) finds it: unpickling its `Dropout` modules imports this module."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


_register()
