"""Magnitude pruning (Chen et al. 2020, IMP on BERT): prune the smallest-|w| surviving weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from ..masks import Mask
from .registry import PruneContext, register
from .unstructured import SCOPES, ScheduleHparams, ScheduleMethod, check_choice, check_fraction, prune_lowest


@dataclass
class MagnitudeHparams(ScheduleHparams):
    losing: bool = False  # prune the largest magnitudes instead (a losing ticket)


@register
class Magnitude(ScheduleMethod):
    name = "magnitude"
    summary = "iterative magnitude pruning with rewinding (Chen et al. 2020): the smallest |w| go"
    Hparams = MagnitudeHparams
    row_fields = (*ScheduleMethod.row_fields, "losing")

    def scores(self, ctx: PruneContext) -> Mapping[str, torch.Tensor]:
        return {name: p.detach().abs() for name, p in ctx.params.items()}


def magnitude_prune(
    weights: Mapping[str, torch.Tensor],
    mask: Mask,
    target_sparsity: float,
    scope: str = "global",
    largest: bool = False,
) -> Mask:
    """Prune the smallest-|w| surviving weights until sparsity == round(target * total) / total exactly.

    Equals torch.nn.utils.prune.global_unstructured(L1Unstructured) for the same weights and count.
    """
    check_fraction("target_sparsity", target_sparsity)
    check_choice("scope", scope, SCOPES)
    mask.validate(weights)
    return prune_lowest(mask, target_sparsity, scope, {n: w.detach().abs() for n, w in weights.items()}, largest)
