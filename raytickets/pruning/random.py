"""Random pruning: IMP whose every round prunes survivors chosen uniformly at random (the random baseline's
own trajectory, for curves of random tickets pruned iteratively)."""

from __future__ import annotations

from dataclasses import dataclass

from ..masks import Mask
from .registry import PruneContext, register
from .unstructured import ScheduleHparams, ScheduleMethod, random_prune, random_scores


@dataclass
class RandomHparams(ScheduleHparams):
    pass


@register
class Random(ScheduleMethod):
    name = "random"
    summary = "iterative random pruning on the same schedule (uniform over survivors, exact counts)"
    Hparams = RandomHparams

    def select(self, ctx: PruneContext, current: Mask, target: float) -> Mask:
        current.validate(ctx.params)
        if self.pattern is not None:  # uniform scores under the N:M floor
            return self.prune(current, target, random_scores(ctx))
        return random_prune(current, target, self.hp.scope, ctx.generator)
