"""The multi-task loop: sample a task, one step through its own ticket, and at the end each task's dev metrics.

One optimiser (AdamW or Adamax, linear warmup and decay: `train.make_optimizer`) over the shared encoder
and every head. The same loop runs in one process and in Ray Train workers: every rank draws the same task
sequence, takes its part of that task's global batch (`distributed.global_batches`) and the gradients are
averaged over ranks by hand (`distributed.reduce_sum`) rather than by DDP's wrapper — a step leaves every
other task's head unused, and an unstructured ticket's forward goes through `functional_call`, past the
wrapper's forward, which DDP's reducer needs to see. N workers follow one process with N times the batch.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from ..config import TrainConfig
from ..distributed import gather, loss_weight, reduce_sum, world
from ..errors import ConfigError
from .data import TaskData, batches_per_epoch, task_batches, task_schedule
from .model import MultiTaskModel
from ..precision import autocast, optimizer_step, resolve as resolve_precision, scaler as make_scaler
from ..train import accumulation, device_of, evaluate, make_optimizer


@dataclass
class MTLResult:
    metrics: dict[str, dict[str, float]]  # task -> its dev metrics (as train.evaluate gives them)
    chance: dict[str, dict[str, float]]  # task -> the metrics of a constant predictor
    steps: int
    seconds: float
    task_steps: dict[str, int]  # optimiser steps each task took
    losses: dict[str, list[float]] = field(default_factory=dict)  # per task, each step's mean loss, in step order

    def diverged(self, task: str) -> bool:
        losses = self.losses.get(task, [])
        return bool(losses) and not math.isfinite(losses[-1])


def total_mtl_steps(data: Mapping[str, TaskData], cfg: TrainConfig) -> int:
    """`train.max_steps`, else `train.epochs` cycles of Σ_t n_t batches (one MT-DNN epoch per cycle at alpha
    1), an optimiser step taking `train.grad_accumulation` batches of its task."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    cycle = sum(batches_per_epoch(len(d.train), cfg.batch_size) for d in data.values())
    return max(1, math.ceil(cfg.epochs * cycle / accumulation(cfg)))


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Every rank's gradients replaced by their mean over ranks (one flat all-reduce); a no-op in one process.

    A parameter this step left without a gradient (another task's head) has none on every rank: all ranks
    run the same task.
    """
    size = world()[1]
    if size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = reduce_sum(torch.cat([g.reshape(-1) for g in grads])) / size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def step(model: MultiTaskModel, task: str, micro_batches: Sequence[tuple[Mapping[str, torch.Tensor], float]],
         optimizer, scheduler, max_grad_norm: float, precision: str = "fp32", scaler=None) -> float:
    """One optimiser step of `task` under its ticket, over its micro-batches (gradient accumulation); the
    entries its ticket removes do not move. Returns the mean loss.

    Each micro-batch comes with its weight, `distributed.loss_weight`: this rank's share of the global batch.
    """
    device = device_of(model)
    losses = []
    for batch, weight in micro_batches:
        with autocast(precision, device):
            loss = model(task, **batch).loss
        scaled = loss.float() * weight / len(micro_batches)
        (scaler.scale(scaled) if scaler else scaled).backward()
        losses.append(float(loss.detach()))
    params = [p for p in model.parameters() if p.requires_grad]
    average_gradients(params)  # before unscaling: every rank then sees the same overflow and skips alike
    if scaler:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    named = dict(model.bert.named_parameters())
    frozen = model.tickets[task].frozen
    # Adam's moments from other tasks' steps and weight decay would move what this task's ticket removes.
    kept_out = {n: named[n].detach()[f] for n, f in frozen.items()}  # boolean indexing copies
    optimizer_step(optimizer, scheduler, scaler)
    with torch.no_grad():
        for n, f in frozen.items():
            named[n][f] = kept_out[n]
    return sum(losses) / len(losses)


def train_multitask(model: MultiTaskModel, data: Mapping[str, TaskData], cfg: TrainConfig, seed: int,
                    alpha: float = 1.0, on_step: Callable[[int, str, float], None] | None = None,
                    desc: str | None = None) -> MTLResult:
    """Train the shared model on the sampled task sequence for `total_mtl_steps` steps, then evaluate each
    task on its dev split(s) under its own ticket."""
    if set(data) != set(model.specs):
        raise ConfigError(f"tasks: data for {sorted(data)} but heads for {sorted(model.specs)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    steps = total_mtl_steps(data, cfg)
    optimizer, scheduler = make_optimizer(model, cfg, steps)
    device = device_of(model)
    precision = resolve_precision(cfg.precision, device)
    scaler = make_scaler(precision, device)
    schedule = task_schedule({t: batches_per_epoch(len(d.train), cfg.batch_size) for t, d in data.items()}, alpha, seed)
    streams = {t: task_batches(d, cfg.batch_size, seed) for t, d in data.items()}
    torch.manual_seed(seed)  # dropout
    losses: dict[str, list[float]] = {t: [] for t in data}
    bar = _progress(cfg, steps, desc)
    started = time.perf_counter()
    model.train()
    for i in range(steps):
        task = next(schedule)
        micro = []
        for _ in range(accumulation(cfg)):
            batch, global_size = next(streams[task])
            micro.append(({k: v.to(device) for k, v in batch.items()}, loss_weight(len(batch["labels"]), global_size)))
        losses[task].append(step(model, task, micro, optimizer, scheduler, cfg.max_grad_norm, precision, scaler))
        if bar is not None:
            bar.set_postfix(task=task, loss=f"{losses[task][-1]:.4f}", refresh=False)
            bar.update()
        if on_step is not None:
            on_step(i + 1, task, losses[task][-1])
    if bar is not None:
        bar.close()
    _check_replicas(model)
    metrics, chance = {}, {}
    for t, d in data.items():
        metrics[t], chance[t] = evaluate(model.view(t), d.task, d.dev, d.collate, cfg.eval_batch_size, with_chance=True,
                                         precision=precision)
    return MTLResult(metrics, chance, steps, time.perf_counter() - started, {t: len(v) for t, v in losses.items()}, losses)


def _check_replicas(model: MultiTaskModel) -> None:
    """Every rank must end with the same weights (the same tasks, averaged gradients); fail loudly if not."""
    if world()[1] == 1:
        return
    with torch.no_grad():
        checksum = float(sum(p.double().sum() for p in model.parameters()))
    sums = gather(checksum)
    if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
        raise RuntimeError(f"multi-task DDP: ranks hold different weights (checksums {sums})")


def _progress(cfg: TrainConfig, steps: int, desc: str | None):
    if not cfg.progress or not sys.stderr.isatty() or world()[0] != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc or "multi-task", unit="step", leave=False, dynamic_ncols=True)
