"""Activation-aware magnitude pruning (Wanda, Sun et al. 2024) inside IMP: weight w_ij scores |w_ij| · ‖x_j‖₂,
its magnitude times the L2 norm of its input feature over calibration batches, so a small weight on a
large activation survives. Ranked globally, per tensor, or per output row (`scope: per_row`, Wanda's
choice: every row of every matrix keeps the same fraction)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal, Mapping

import torch

from ..errors import ConfigError
from ..masks import Mask
from ..models import encoder
from .registry import PruneContext, register
from .unstructured import ScheduleHparams, ScheduleMethod, check_fraction, prune_lowest


@dataclass
class ActivationHparams(ScheduleHparams):
    scope: Literal["global", "per_tensor", "per_row"] = "global"
    losing: bool = False  # prune the highest-scored weights instead (a losing ticket)
    calibration_batches: int | None = 16  # training batches whose activations are measured; null = all

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.calibration_batches is not None and self.calibration_batches < 1:
            raise ConfigError(f"{path}.calibration_batches: {self.calibration_batches} must be >= 1 or null (all)")


@register
class Activation(ScheduleMethod):
    name = "activation"
    summary = "Wanda-style |w_ij|·||x_j|| over calibration batches, global, per tensor or per output row (Sun et al. 2024)"
    Hparams = ActivationHparams
    row_fields = (*ScheduleMethod.row_fields, "losing")

    def scores(self, ctx: PruneContext) -> Mapping[str, torch.Tensor]:
        norms = input_norms(ctx.model, ctx.params, ctx.batches(self.hp.calibration_batches), ctx.reduce, ctx.autocast)
        return {n: p.detach().abs().float().cpu() * norms[n] for n, p in ctx.params.items()}

    def select(self, ctx: PruneContext, current: Mask, target: float) -> Mask:
        if self.hp.scope != "per_row":
            return super().select(ctx, current, target)
        current.validate(ctx.params)
        return prune_rows(current, target, self.scores(ctx), largest=self.hp.losing)

    def random(self, ctx: PruneContext, target: float) -> Mask:
        if self.hp.scope != "per_row":
            return super().random(ctx, target)
        scores = {n: torch.rand(p.shape, generator=ctx.generator) for n, p in ctx.params.items()}
        return prune_rows(Mask.ones_like(ctx.params), target, scores)


def input_norms(model: torch.nn.Module, params: Mapping[str, torch.Tensor], batches, reduce=None,
                autocast=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """‖x_j‖₂ over every (non-padding) token of the batches, per input feature of each prunable matrix,
    broadcastable to the weight [out, in]; a 1-D tensor (a bias) gets 1s: there is no input to weigh it by.

    Forward hooks on the matrices' modules sum x_j² in float64 (summed over DDP ranks by `reduce`); they are
    removed on exit. Dropout is off while measuring."""
    reduce = reduce or (lambda t: t)
    bare = encoder(model)
    modules = {n: bare.get_submodule(n.rsplit(".", 1)[0]) for n, p in params.items() if p.dim() == 2}
    sums = {n: torch.zeros(params[n].shape[1], dtype=torch.float64) for n in modules}
    token_mask: list[torch.Tensor] = []

    def hook(name):
        def record(module, args, output):
            x = args[0].detach().double()
            tokens = token_mask[0] if token_mask and x.dim() == 3 and x.shape[:2] == token_mask[0].shape else None
            keep = tokens.to(x.dtype).unsqueeze(-1) if tokens is not None else 1.0  # padding is not an input
            sums[name] += (x.pow(2) * keep).flatten(0, -2).sum(0).cpu()
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                token_mask[:] = [inputs["attention_mask"]] if "attention_mask" in inputs else []
                with autocast():
                    model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {n: (reduce(sums[n]).sqrt().float().unsqueeze(0) if n in sums else torch.ones(p.shape))
            for n, p in params.items()}


def prune_rows(mask: Mask, target_sparsity: float, scores: Mapping[str, torch.Tensor], largest: bool = False) -> Mask:
    """Prune every row of every matrix to exactly round(target · row length) weights, the lowest-scored
    survivors first; pruned weights stay pruned (a row already past the target is an error)."""
    target = check_fraction("target_sparsity", target_sparsity)
    out = {}
    for name, keep in mask.tensors.items():
        if keep.dim() != 2:  # a bias: prune it like a tensor of its own
            out[name] = prune_lowest(Mask({name: keep}), target, "global", {name: scores[name]}, largest).tensors[name]
            continue
        score = scores[name].float().cpu()
        score = -score if largest else score
        count = round(target * keep.shape[1])
        already = (~keep).sum(1)
        if bool((already > count).any()):
            raise ConfigError(f"target_sparsity: {target:.6g} per row of {name!r} is below the mask's current row "
                              f"sparsity; pruned weights are never regrown")
        ranked = torch.where(keep, score, torch.full_like(score, float("-inf")))  # the pruned rank first
        order = torch.sort(ranked, dim=1, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(keep.shape[1]).expand_as(order).contiguous())
        out[name] = rank >= count
    return Mask({n: out[n] for n in mask.names})
