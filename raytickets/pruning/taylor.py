"""First-order Taylor pruning inside IMP (Molchanov et al. 2019; SNIP's saliency on the fine-tuned model):
a weight's importance is |w · ∂L/∂w|, the loss change its removal predicts to first order, summed over
training batches of the fine-tuned model."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Mapping

import torch

from ..errors import ConfigError
from .registry import PruneContext, register
from .structured import batch_losses
from .unstructured import ScheduleHparams, ScheduleMethod


@dataclass
class TaylorHparams(ScheduleHparams):
    losing: bool = False  # prune the most important weights instead (a losing ticket)
    importance_batches: int | None = None  # training batches scored per round; null = the whole split

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.importance_batches is not None and self.importance_batches < 1:
            raise ConfigError(f"{path}.importance_batches: {self.importance_batches} must be >= 1 or null (all)")


@register
class Taylor(ScheduleMethod):
    name = "taylor"
    summary = "first-order Taylor importance |w·dL/dw| summed over training batches (Molchanov et al. 2019)"
    Hparams = TaylorHparams
    row_fields = (*ScheduleMethod.row_fields, "losing")

    def scores(self, ctx: PruneContext) -> Mapping[str, torch.Tensor]:
        return taylor_scores(ctx.model, ctx.params, ctx.batches(self.hp.importance_batches), ctx.reduce, ctx.autocast)


def taylor_scores(model: torch.nn.Module, params: Mapping[str, torch.Tensor], batches, reduce=None,
                  autocast=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """Σ_batches |w ⊙ ∂L(batch)/∂w| for every prunable tensor, L the batch's mean loss, dropout off.

    Under DDP each rank holds part of every global batch: the gradients of the parts' summed losses are
    summed over ranks (`reduce`) and divided by the global batch size before the absolute value, so the
    scores equal one process scoring whole global batches. `.grad` of the parameters is left untouched.
    """
    reduce = reduce or (lambda t: t)
    names, tensors = list(params), list(params.values())
    totals = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
    was_training, device = model.training, tensors[0].device
    model.eval()
    seen = 0
    try:
        with torch.enable_grad():
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast():
                    loss = batch_losses(model, batch).sum()
                grads = torch.autograd.grad(loss, tensors)
                size = reduce(torch.tensor(float(batch["input_ids"].shape[0]), device=device))
                for total, weight, grad in zip(totals, tensors, grads):
                    total += (weight.detach() * reduce(grad.detach()) / size).abs()
                seen += 1
    finally:
        model.train(was_training)
    if seen == 0:
        raise ConfigError("prune.importance_batches: no training batches to score; taylor needs at least one")
    return {n: t.cpu() for n, t in zip(names, totals)}
