"""Fine-tuning one model under a fixed mask, and evaluating it on the task's dev set.

The same loop runs in one process (`raytickets finetune`, tests) and inside Ray Train workers: when a
torch.distributed process group exists (Ray Train's TorchTrainer sets one up, gloo on CPU, nccl on
GPU) the model is wrapped in DDP, each rank trains on its shard and evaluation is gathered across
ranks. Pruned weights are kept exactly zero by re-applying the mask after every optimiser step — no
per-forward hooks, so a masked step costs what a dense one does (benchmarks/mask_overhead.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from .config import TrainConfig
from .errors import ConfigError
from .masks import Mask
from .models import encoder_state
from .tasks import TaskSpec, compute_metrics


@dataclass
class FinetuneResult:
    metrics: dict[str, float]  # dev metrics of the task (all dev splits, MNLI's prefixed by split)
    steps: int
    seconds: float
    rewind_state: dict[str, torch.Tensor] | None = None  # encoder weights after `capture_step` steps
    losses: list[float] = field(default_factory=list)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def total_steps(num_examples: int, cfg: TrainConfig, world_size: int = 1) -> int:
    """Optimiser steps of one fine-tuning run: from max_steps, else epochs over this rank's shard."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_rank = math.ceil(num_examples / world_size)
    return max(1, math.ceil(cfg.epochs * math.ceil(per_rank / cfg.batch_size)))


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps: int):
    """AdamW without decay on biases and LayerNorm (as BERT's recipe), linear warmup then linear decay."""
    from transformers import get_linear_schedule_with_warmup

    if cfg.learning_rate is None:  # TicketConfig.validate picks the model's default; a bare TrainConfig has none
        raise ConfigError("train.learning_rate: null; give a positive number (or validate the ticket config, "
                          "which picks the model's default)")

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * steps), steps)
    return optimizer, scheduler


def _shard(dataset, rank: int, size: int):
    # A contiguous stride of indices per rank: every example is seen by exactly one rank.
    return dataset if size == 1 else Subset(dataset, list(range(rank, len(dataset), size)))


def batches(dataset, collate, batch_size: int, seed: int, epoch: int, shuffle: bool):
    """Epoch `epoch`'s batches in a seeded order: the same on every run (and, per shard, every replica)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)


def finetune(
    model: nn.Module,
    task: TaskSpec,
    train_data,
    dev_data: Mapping[str, object],
    collate: Callable,
    cfg: TrainConfig,
    mask: Mask | None = None,
    params: Mapping[str, torch.Tensor] | None = None,
    capture_step: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune `model` in place under `mask` (applied to `params`, the prunable tensors) and evaluate.

    `capture_step`: also return a real copy of the encoder weights after that many optimiser steps
    (step 0 = before any update): the rewind point of Chen et al.'s late rewinding.
    """
    if mask is not None:
        mask.apply(params)  # validates the mask against params once, before the first step
    rank, size = world()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    steps = total_steps(len(train_data), cfg, size)
    if capture_step is not None and capture_step > steps:
        raise ConfigError(f"prune.rewind_step: {capture_step} is beyond the {steps} training steps")
    optimizer, scheduler = make_optimizer(model, cfg, steps)
    net = _wrap_ddp(model)
    device = device_of(model)
    shard = _shard(train_data, rank, size)
    torch.manual_seed(cfg.seed)
    rewind = encoder_state(model) if capture_step == 0 else None
    losses: list[float] = []
    started = time.perf_counter()
    step, epoch = 0, 0
    model.train()
    while step < steps:
        for batch in batches(shard, collate, cfg.batch_size, cfg.seed, epoch, shuffle=True):
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = net(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if mask is not None:
                mask.apply(params, check=False)  # AdamW's decay and momentum would revive pruned weights otherwise
            step += 1
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, losses[-1])
            if step == capture_step:
                rewind = encoder_state(model)
            if step >= steps:
                break
        epoch += 1
    metrics = evaluate(model, task, dev_data, collate, cfg.eval_batch_size)
    return FinetuneResult(metrics, steps, time.perf_counter() - started, rewind, losses)


def _wrap_ddp(model: nn.Module) -> nn.Module:
    rank, size = world()
    if size == 1:
        return model
    device = device_of(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@torch.no_grad()
def predict(model: nn.Module, dataset, collate: Callable, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for this rank's shard of `dataset`, gathered to every rank in dataset order."""
    rank, size = world()
    was_training = model.training
    model.eval()
    device = device_of(model)
    indices = list(range(rank, len(dataset), size))
    logits, labels = [], []
    for batch in DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collate):
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        logits.append(out.logits.float().cpu().numpy())
        labels.append(batch["labels"].cpu().numpy())
    model.train(was_training)
    local = (indices, np.concatenate(logits) if logits else None, np.concatenate(labels) if labels else None)
    if size == 1:
        return local[1], local[2]
    parts = [None] * size
    dist.all_gather_object(parts, local)
    order = np.argsort(np.concatenate([p[0] for p in parts]))
    return (
        np.concatenate([p[1] for p in parts if p[1] is not None])[order],
        np.concatenate([p[2] for p in parts if p[2] is not None])[order],
    )


def evaluate(model: nn.Module, task: TaskSpec, dev_data: Mapping[str, object], collate, batch_size: int) -> dict:
    """The task's official metrics on every dev split; with several (MNLI), `split/metric` keys too."""
    metrics: dict[str, float] = {}
    for split, dataset in dev_data.items():
        logits, labels = predict(model, dataset, collate, batch_size)
        m = compute_metrics(task, logits, labels)
        if len(dev_data) == 1:
            metrics.update(m)
        else:
            metrics.update({f"{split}/{k}": v for k, v in m.items()})
    if len(dev_data) > 1:  # MNLI: the main metric is the mean over matched and mismatched
        names = {k.split("/", 1)[1] for k in metrics}
        for name in names:
            metrics[name] = float(np.mean([metrics[f"{s}/{name}"] for s in dev_data]))
    return metrics
