"""Multi-task data: each task's tokenised splits, and which task trains at each step.

Tasks are drawn with p_t ∝ n_t^alpha, n_t the task's training batches per epoch (MT-DNN's temperature
sampling; alpha = 1 is proportional to the number of batches, alpha → 0 uniform over tasks). Draws come in
cycles of C = Σ n_t steps: a cycle holds each task round(C·p_t) times (largest remainder), in an order
shuffled by the seed. With alpha = 1 a cycle is one MT-DNN epoch — every batch of every task once, task
order shuffled (mt_dnn/batcher.py MultiTaskBatchSampler, the sampler Liang et al. train with); with
alpha < 1 small tasks repeat batches within a cycle. Exact counts per cycle (rather than i.i.d. draws) keep
a small task's share at its formula in a short run too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..distributed import global_batches, world
from ..errors import ConfigError
from ..tasks import TASKS, TaskSpec, collate, get_task


@dataclass
class TaskData:
    """One task's tokenised training and dev splits and the collator that pads its batches."""

    task: TaskSpec
    train: object
    dev: dict
    collate: Callable


def load_task_data(tasks: Sequence[str], model: str, data_cfg, tokenizer=None) -> dict[str, TaskData]:
    """Every task's splits under one data config, from the tokenised cache (`tickets.tokenize`)."""
    from ..config import TicketConfig
    from ..models import load_tokenizer
    from ..tickets import tokenize

    tokenizer = tokenizer or load_tokenizer(model)
    out = {}
    for name in tasks:
        spec = get_task(name)
        splits = tokenize(TicketConfig(task=name, model=model, data=data_cfg), tokenizer)
        out[name] = TaskData(spec, splits["train"], {s: splits[s] for s in spec.dev_splits}, collate(tokenizer))
    return out


def check_alpha(alpha: float, field: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ConfigError(f"{field}: {alpha!r} must be in (0, 1]; 1 samples tasks in proportion to their batches, "
                          "smaller values flatten towards uniform")
    return float(alpha)


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    """Global batches in one epoch of a task (`batch_size` per rank, as `train.total_steps` counts them)."""
    return max(1, math.ceil(num_examples / (batch_size * world()[1])))


def task_probabilities(num_batches: Mapping[str, int], alpha: float) -> dict[str, float]:
    """p_t = n_t^alpha / Σ_s n_s^alpha, in the order of `num_batches`."""
    check_alpha(alpha)
    weights = {t: float(n) ** alpha for t, n in num_batches.items()}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def cycle_counts(num_batches: Mapping[str, int], alpha: float) -> dict[str, int]:
    """Draws of each task in one cycle of Σ n_t steps: the largest-remainder rounding of Σn · p_t."""
    size = sum(num_batches.values())
    quota = {t: size * p for t, p in task_probabilities(num_batches, alpha).items()}
    counts = {t: math.floor(q) for t, q in quota.items()}
    # Remainders, largest first; ties go to the task listed first, so the counts are deterministic.
    for t in sorted(quota, key=lambda t: counts[t] - quota[t])[: size - sum(counts.values())]:
        counts[t] += 1
    return counts


def task_schedule(num_batches: Mapping[str, int], alpha: float, seed: int) -> Iterator[str]:
    """The task of every step, cycle after cycle (endless). Tasks are taken in sorted order so the schedule
    depends on the task set, not on the order it was listed in."""
    ordered = {t: num_batches[t] for t in sorted(num_batches)}
    counts = cycle_counts(ordered, alpha)
    pool = np.repeat(np.array(list(counts)), list(counts.values()))
    rng = np.random.default_rng([seed, 0x6D746C])  # its own stream: the data order uses `seed` as well
    while True:
        yield from (str(t) for t in rng.permutation(pool))


def task_seed(seed: int, task: str) -> int:
    """The data-order seed of one task in a run: distinct per task, stable across task sets."""
    return seed * 1_000 + list(TASKS).index(task)


def task_batches(data: TaskData, batch_size: int, seed: int) -> Iterator[tuple[dict, int]]:
    """(this rank's collated part, global batch size) of a task's batches, epoch after epoch (endless)."""
    epoch = 0
    while True:
        for indices, global_size in global_batches(len(data.train), batch_size, task_seed(seed, data.task.name), epoch):
            yield data.collate([data.train[i] for i in indices]), global_size
        epoch += 1
