"""Gradual pruning during fine-tuning (Zhu & Gupta 2017), the trajectory kind beside IMP-with-rewinding
(`prune.trajectory: gradual`): one fine-tuning run from the pre-trained weights, no rewinding, whose mask the
configured unstructured method raises every `prune.update_every` optimiser steps along the cubic curve

    s_t = s_f + (s_i - s_f) · (1 - (t - t_0) / (t_1 - t_0))³   for t_0 <= t <= t_1,

s_i below t_0 and s_f from t_1 to the end, so the run's last stretch recovers at the target. Sanh et al.'s
movement pruning uses this curve with t_0 one LR warm-up into the run and t_1 two warm-ups before its end
(huggingface/transformers examples/research_projects/movement-pruning/masked_run_glue.py, `schedule_threshold`;
README.md: `--warmup_steps 5400 --num_train_epochs 10 ... --initial_warmup 1 --final_warmup 2`, a warm-up of
about one epoch of ten): hence `gradual_begin` 0.1 and `gradual_end` 0.8 of the run's steps by default.

Pruned weights are never regrown (as in IMP and Zhu & Gupta), so every update prunes among the survivors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .distributed import sync_mask
from .masks import Mask
from .pruning import Method, PruneContext


def cubic_sparsity(step: int, begin: int, end: int, initial: float, final: float) -> float:
    """Zhu & Gupta's s_t (above): `initial` up to `begin`, `final` from `end` on, cubic in between."""
    if step <= begin:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1 - (step - begin) / (end - begin)) ** 3


@dataclass(frozen=True)
class GradualSchedule:
    """When the mask of a run of `steps` optimiser steps is updated, and to which sparsity."""

    begin: int
    end: int
    every: int
    initial: float
    final: float

    @classmethod
    def of(cls, hp: Any, steps: int) -> "GradualSchedule":
        end = max(1, round(hp.gradual_end * steps))
        return cls(min(round(hp.gradual_begin * steps), end - 1), end, hp.update_every, hp.initial_sparsity,
                   hp.target_sparsity)

    def update_steps(self) -> list[int]:
        """begin + every, begin + 2·every, ... before `end`, and `end` itself (the target is always reached)."""
        return [*range(self.begin + self.every, self.end, self.every), self.end]

    def sparsity(self, step: int) -> float:
        return self.final if step >= self.end else cubic_sparsity(step, self.begin, self.end, self.initial, self.final)


@dataclass
class GradualPruner:
    """What a gradual run's training loop calls (train.finetune `pruner=`): `after_backward` once per optimiser
    step with the true gradients in place, `after_step(step)` after it, which returns the new mask at an update
    step (None otherwise). `context()` is a PruneContext on the live model."""

    method: Method
    schedule: GradualSchedule
    params: Mapping[str, torch.Tensor]
    context: Callable[[], PruneContext]
    mask: Mask
    updates: list[dict] = field(default_factory=list)  # step, target and sparsity of every update (schedule.json)

    def __post_init__(self) -> None:
        self._due = set(self.schedule.update_steps())

    def after_backward(self) -> None:
        self.method.observe(self.params)

    def after_step(self, step: int) -> Mask | None:
        if step not in self._due:
            return None
        target = self.schedule.sparsity(step)
        if target <= self.mask.sparsity() and step != self.schedule.end:  # nothing to prune yet (s_i = 0 at t_0)
            return None
        self.mask = sync_mask(self.method.select(self.context(), self.mask, target))
        self.updates.append({"step": step, "target": target, "sparsity": self.mask.sparsity()})
        return self.mask
