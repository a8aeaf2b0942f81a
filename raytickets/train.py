"""Fine-tuning one model under a fixed mask, and evaluating it on the task's dev set.

The same loop runs in one process (`raytickets finetune`, tests) and inside Ray Train workers: when a
torch.distributed process group exists (Ray Train's TorchTrainer sets one up, gloo on CPU, nccl on
GPU) the model is wrapped in DDP, each rank trains on its part of every global batch and evaluation is
gathered across ranks. Pruned weights get no gradient (zeroed before clipping, so the clipping norm counts
only the weights that exist) and stay exactly zero (the mask is re-applied after every optimiser step) —
no per-forward hooks, so a masked step costs what a dense one does (benchmarks/mask_overhead.py).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from .config import TrainConfig
from .distributed import global_batches, loss_weight, world
from .errors import ConfigError
from .masks import Mask
from .optim import MTDNNAdamax
from .precision import autocast, optimizer_step, resolve as resolve_precision, scaler as make_scaler
from .tasks import TaskSpec, chance_metrics, compute_metrics


@dataclass
class FinetuneResult:
    metrics: dict[str, float]  # dev metrics of the task (all dev splits, MNLI's prefixed by split)
    steps: int
    seconds: float
    rewind_state: dict[str, torch.Tensor] | None = None  # the whole model's weights after `capture_step` steps
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)  # of each step taken
    grad_norms: list[float] = field(default_factory=list)  # the gradient norm each step clipped (pruned excluded)
    chance: dict[str, float] = field(default_factory=dict)  # the metrics of a constant (majority) predictor

    @property
    def diverged(self) -> bool:
        return bool(self.losses) and not math.isfinite(self.losses[-1])


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def total_steps(num_examples: int, cfg: TrainConfig, world_size: int = 1) -> int:
    """Optimiser steps of one fine-tuning run: from max_steps, else epochs over the global batches (an
    optimiser step takes `grad_accumulation` of them)."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_rank = math.ceil(num_examples / world_size)
    batches = math.ceil(cfg.epochs * math.ceil(per_rank / cfg.batch_size))
    return max(1, math.ceil(batches / accumulation(cfg)))


def accumulation(cfg: TrainConfig) -> int:
    return cfg.grad_accumulation or 1


def epoch_data(train_data, epoch: int):
    """The training rows of an epoch: a dataset, or one of several pre-masked copies (`for_epoch`, MLM)."""
    return train_data.for_epoch(epoch) if hasattr(train_data, "for_epoch") else train_data


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps: int):
    """AdamW, torch's Adamax or MT-DNN's Adamax (`optim.MTDNNAdamax`, Liang et al.'s), without decay on biases
    and LayerNorm as BERT's recipe (and MT-DNN's, mt_dnn/model.py:60-68); linear warmup then decay."""
    from transformers import get_linear_schedule_with_warmup

    if cfg.learning_rate is None:  # config.resolve picks the model's default; a bare TrainConfig has none
        raise ConfigError("train.learning_rate: null; give a positive number (or resolve the ticket config, "
                          "which picks the model's default)")

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamax_mtdnn":  # decay after the normalisation, no bias correction, eps 1e-6
        optimizer = MTDNNAdamax(groups, lr=cfg.learning_rate)
    elif cfg.optimizer == "adamax":  # torch's: decay added to the gradient (L2), so ~lr·sign(w) where g ≈ 0
        optimizer = torch.optim.Adamax(groups, lr=cfg.learning_rate)
    else:  # on CUDA one fused kernel updates every tensor (torch's fastest AdamW there)
        cuda = all(p.is_cuda for g in groups for p in g["params"])
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=True if cuda else None)
    warmup = 0.1 if cfg.warmup_ratio is None else cfg.warmup_ratio  # null outside a resolved config: BERT's
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup * steps), steps)
    return optimizer, scheduler


def batches(dataset, collate, batch_size: int, seed: int, epoch: int, shuffle: bool):
    """Epoch `epoch`'s batches in a seeded order, this rank's part of each global batch."""
    for indices, _ in global_batches(len(dataset), batch_size, seed, epoch, shuffle):
        yield collate([dataset[i] for i in indices])


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """Real, contiguous CPU copies of every weight (rewind points must not be `state_dict()` references)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


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
    start_step: int = 0,
    desc: str | None = None,
    pruner=None,
    teacher: torch.Tensor | None = None,
) -> FinetuneResult:
    """Fine-tune `model` in place under `mask` (applied to `params`, the prunable tensors) and evaluate.

    `capture_step`: also return a real copy of the whole model's weights after that many optimiser steps
    (step 0 = before any update): the rewind point of late rewinding. `start_step`: the model holds the
    weights of step `start_step` of this run, which continues from there (the learning-rate schedule and
    the data order as if it had run those steps; the optimiser's moments start fresh, as open_lth's do).
    `pruner`: a gradual.GradualPruner that sees every step's gradients and replaces the mask at its update steps.
    `teacher`: the teacher's logits of every training example (distill.teacher_logits): the loss is then
    `cfg.distill`'s mix of KD and the task loss.
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
    for _ in range(start_step):
        scheduler.step()
    net = _wrap_ddp(_trainable(model, task))
    if cfg.compile:
        net = torch.compile(net)
    device = device_of(model)
    to_device = _mover(device)
    precision = resolve_precision(cfg.precision, device)
    scaler = make_scaler(precision, device)
    torch.manual_seed(cfg.seed)
    rewind = state_copy(model) if capture_step == 0 else None
    grad_masks = _grad_masks(mask, params)
    losses: list[float] = []
    rates: list[float] = []
    norms: list[float] = []
    started = time.perf_counter()
    step, epoch = 0, 0
    model.train()
    bar = _progress(cfg, steps - start_step, desc)
    acc, micro, pending = accumulation(cfg), 0, []  # micro-batches of the optimiser step under way
    while step < steps:
        data = epoch_data(train_data, epoch)
        lengths = _lengths(data) if cfg.bucket_by_length else None
        for indices, global_size in global_batches(len(data), cfg.batch_size, cfg.seed, epoch, True, lengths):
            micro += 1
            if step < start_step:  # the steps before the rewind point: data order only, no compute
                step, micro = (step + 1, 0) if micro == acc else (step, micro)
                continue
            batch = to_device(collate([data[i] for i in indices]))
            # DDP averages gradients on the last micro-batch of a step only (no_sync before it)
            with net.no_sync() if micro < acc and size > 1 else contextlib.nullcontext():
                with autocast(precision, device):
                    out = net(**batch)
                loss = out.loss if teacher is None else _distilled(out, teacher[indices], cfg, task, batch)
                scaled = loss.float() * loss_weight(len(indices), global_size) / acc
                (scaler.scale(scaled) if scaler else scaled).backward()
            pending.append(float(loss.detach()))
            if micro < acc:
                continue
            if scaler:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            if pruner is not None:  # movement scores see the true gradients of every weight still there
                pruner.after_backward()
            for p, keep in grad_masks:  # pruned weights do not exist: no gradient, no share of the clip norm
                p.grad.mul_(keep)
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)))
            rates.append(scheduler.get_last_lr()[0])
            optimizer_step(optimizer, scheduler, scaler)
            if mask is not None:
                mask.apply(params, check=False)  # AdamW's decoupled decay must not move them either
            step, micro = step + 1, 0
            losses.append(sum(pending) / len(pending))
            pending = []
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                bar.update()
            if on_step is not None:
                on_step(step, losses[-1])
            if pruner is not None and (raised := pruner.after_step(step)) is not None:
                mask = raised
                mask.apply(params)
                grad_masks = _grad_masks(mask, params)
            if step == capture_step:
                rewind = state_copy(model)
            if step >= steps:
                break
        epoch += 1
    if bar is not None:
        bar.close()
    metrics, chance = evaluate(model, task, dev_data, collate, cfg.eval_batch_size, with_chance=True,
                               precision=precision)
    return FinetuneResult(metrics, steps - start_step, time.perf_counter() - started, rewind, losses, rates, norms,
                          chance)


def _distilled(out, teacher: torch.Tensor, cfg: TrainConfig, task: TaskSpec, batch: dict) -> torch.Tensor:
    from .distill import kd_loss, span_kd_loss

    d = cfg.distill
    if task.is_span:
        return span_kd_loss(out.start_logits, out.end_logits, teacher, batch["attention_mask"], out.loss, d.alpha,
                            d.temperature)
    return kd_loss(out.logits, teacher, out.loss, d.alpha, d.temperature, task.is_regression)


def _mover(device: torch.device) -> Callable[[dict], dict]:
    """Moves a batch to the device: on CUDA through pinned memory without blocking (the copy overlaps)."""
    if device.type == "cuda":
        return lambda batch: {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return lambda batch: {k: v.to(device) for k, v in batch.items()}


def _lengths(data) -> list[int] | None:
    """Token counts of a dataset's rows (None when every row has one length: packed MLM blocks)."""
    lengths = [len(ids) for ids in data["input_ids"]]
    return None if len(set(lengths)) <= 1 else lengths


def _grad_masks(mask: Mask | None, params) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, keep mask on its device) for every prunable tensor the mask prunes at all."""
    if mask is None:
        return []
    on = mask.on(next(iter(params.values())).device)
    return [(p, on[name]) for name, p in params.items() if not bool(on[name].all())]


def _progress(cfg: TrainConfig, steps: int, desc: str | None):
    """A tqdm bar (steps, loss, ETA) on a terminal; nothing when output goes to a file or inside a sweep."""
    if not cfg.progress or not sys.stderr.isatty() or world()[0] != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc or "fine-tune", unit="step", leave=False, dynamic_ncols=True)


def _trainable(model: nn.Module, task: TaskSpec) -> nn.Module:
    """The module a training step runs: the model, or for MLM its sparse-prediction wrapper (the vocabulary
    head on the masked positions only: the same loss without [B, T, vocab] logits; DDP must wrap it)."""
    if task.is_mlm:
        from .mlm_head import SparsePredictionMLM

        return SparsePredictionMLM(model)
    return model


def _wrap_ddp(model: nn.Module) -> nn.Module:
    rank, size = world()
    if size == 1:
        return model
    device = device_of(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@torch.no_grad()
def predict(model: nn.Module, dataset, collate: Callable, batch_size: int, precision: str = "fp32",
            ) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for this rank's shard of `dataset`, gathered to every rank in dataset order."""
    rank, size = world()
    was_training = model.training
    model.eval()
    device = device_of(model)
    indices = list(range(rank, len(dataset), size))
    logits, labels = [], []
    for batch in DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collate):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(precision, device):
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


def evaluate(model: nn.Module, task: TaskSpec, dev_data: Mapping[str, object], collate, batch_size: int,
             with_chance: bool = False, precision: str = "fp32"):
    """The task's official metrics on every dev split; with several (MNLI), `split/metric` keys too.

    `with_chance`: also the same metrics of a constant predictor (the majority class; 0 for correlations),
    the value a collapsed run is scored at.
    """
    if task.is_span:  # spans read back across each question's windows; chance: the empty answer (F1 0)
        from .squad import evaluate as evaluate_squad

        metrics, chance = evaluate_squad(model, dev_data["dev"], collate, batch_size, precision)
        return (metrics, chance) if with_chance else metrics
    if task.is_mlm:  # masked positions only; chance: always the most frequent masked token of the dev blocks
        from .mlm_head import mlm_chance, mlm_metrics

        with autocast(precision, device_of(model)):
            metrics = mlm_metrics(model, dev_data["dev"], batch_size, collate)
        chance = {"accuracy": mlm_chance(dev_data["dev"]), "perplexity": math.nan}
        return (metrics, chance) if with_chance else metrics
    metrics: dict[str, float] = {}
    chance: dict[str, float] = {}
    for split, dataset in dev_data.items():
        logits, labels = predict(model, dataset, collate, batch_size, precision)
        m, c = compute_metrics(task, logits, labels), chance_metrics(task, labels)
        prefix = "" if len(dev_data) == 1 else f"{split}/"
        metrics.update({f"{prefix}{k}": v for k, v in m.items()})
        chance.update({f"{prefix}{k}": v for k, v in c.items()})
    if len(dev_data) > 1:  # MNLI: the GLUE main metric is the mean over matched and mismatched
        for out in (metrics, chance):
            names = {k.split("/", 1)[1] for k in out if "/" in k}
            for name in names:
                out[name] = float(np.mean([out[f"{s}/{name}"] for s in dev_data]))
    return (metrics, chance) if with_chance else metrics
