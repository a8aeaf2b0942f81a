"""Movement pruning (Sanh et al. 2020), hard (top-k) variant, for the gradual trajectory: a weight's importance
is how far fine-tuning moves it away from zero, S = -Σ_t w_t · ∂L/∂w_t summed over the run's optimiser steps so
far; each mask update keeps the highest S (Sanh et al.'s "topK", whose scores' gradient is this sum under the
straight-through estimator). Unlike their masked_bert, whose dense weights keep training and can come back,
pruned weights stay at zero here (as in every raytickets trajectory), so a pruned weight's S stops moving."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..errors import ConfigError
from .registry import PruneContext, register
from .unstructured import ScheduleHparams, ScheduleMethod


@dataclass
class MovementHparams(ScheduleHparams):
    pass


@register
class Movement(ScheduleMethod):
    name = "movement"
    summary = "movement pruning (Sanh et al. 2020): S = -sum_t w*dL/dw while fine-tuning, top-k kept (gradual only)"
    Hparams = MovementHparams

    def __init__(self, hparams, rounds: int | None):
        super().__init__(hparams, rounds)
        self.movement: dict[str, torch.Tensor] = {}

    def validate(self, path: str) -> None:
        if not self.gradual:
            raise ConfigError(f"{path}.trajectory: {self.hp.trajectory!r} with method 'movement', whose scores "
                              f"accumulate during one fine-tuning run; allowed: gradual")
        super().validate(path)

    def observe(self, params: Mapping[str, Any]) -> None:
        # a tensor outside the graph of this step (no .grad) did not move
        steps = {name: -(p.detach().float() * p.grad.detach().float()) for name, p in params.items()
                 if p.grad is not None}
        if not all(bool(torch.isfinite(s).all()) for s in steps.values()):
            return  # an fp16 step whose gradients overflowed: GradScaler skips it, and so do the scores
        for name, step in steps.items():
            if name in self.movement:
                self.movement[name] += step
            else:
                self.movement[name] = step

    def scores(self, ctx: PruneContext) -> Mapping[str, torch.Tensor]:
        if not self.movement:
            raise ConfigError("prune.gradual_begin: movement pruning updated the mask before any training step; "
                              "its scores need at least one")
        return {name: self.movement[name].cpu() for name in ctx.params}
