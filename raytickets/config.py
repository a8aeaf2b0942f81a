"""Typed config objects and their validation at the edge; `load` is the one entry point (CLI and sweep).

A config says *what* to run, never *how*. Every field is checked when the config is loaded, so a typo or
an out-of-range value fails with one line naming the field, the value and what is allowed — before any
data is read, any model loaded or any cluster started. `validate()` only checks; defaults that depend on
other fields (the model's learning rate, per-task settings) are filled in by `resolve()`.

Past ~400 lines on purpose: it is the one typed schema of everything a user can set (data, train, prune, the
ticket, search, resources, the sweep); split, one schema would spread over files every change must touch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from . import pruning
from .baselines import BASELINES
from .errors import ConfigError
from .loader import SECTIONS, apply_overrides, build, read_config, read_yaml, to_dict
from .tasks import MIN_SEQ_LENGTH, TASKS  # the task table; tasks imports no torch

__all__ = ["DataConfig", "TrainConfig", "PruneConfig", "TicketConfig", "ParamSpec", "TransferConfig", "SearchConfig",
           "ResourcesConfig", "SweepConfig", "GLUE_TASKS", "load", "resolve", "default_learning_rate",
           "apply_overrides", "build", "read_yaml", "to_dict", "DistillConfig"]

GLUE_TASKS = tuple(TASKS)  # every task of the table: the GLUE tasks and mlm


@dataclass
class DataConfig:
    glue_dir: str | None = None  # a directory in the original GLUE TSV layout; None = Hugging Face hub
    max_train_examples: int | None = None  # seeded subsample of the training split
    max_dev_examples: int | None = None
    max_seq_length: int = 128
    seed: int = 0  # subsample seed: kept apart from train.seed so every training seed sees the same rows
    cache_dir: str | None = None  # tokenised-data cache; default ~/.cache/raytickets/tokenized
    # task mlm only (mlm.py): a text file or directory, a datasets id (wikitext-103-raw-v1), or null for the
    # sentences of every GLUE train split in glue_dir; the share of positions masked and the pre-masked copies
    corpus: str | None = None
    mlm_probability: float = 0.15
    mlm_copies: int = 10
    # task squad only (squad.py): a directory holding one train*.json and one dev*.json in the SQuAD JSON layout,
    # or a file per split (squad_train / squad_dev win over the directory); all null: the hub's rajpurkar/squad.
    # Windows of max_seq_length tokens start every doc_stride context tokens (null: BERT's run_squad's 128, or half
    # the window where that is less); an answer is at most max_answer_length tokens, chosen from each window's
    # n_best starts and ends (run_squad: 30, 20).
    squad_dir: str | None = None
    squad_train: str | None = None
    squad_dev: str | None = None
    doc_stride: int | None = None
    max_answer_length: int = 30
    n_best: int = 20

    def validate(self, path: str) -> None:
        if self.glue_dir is not None and not Path(self.glue_dir).expanduser().is_dir():
            raise ConfigError(f"{path}.glue_dir: directory {self.glue_dir!r} does not exist")
        for name in ("max_train_examples", "max_dev_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{path}.{name}: {value} must be a positive integer or null (all rows)")
        if not MIN_SEQ_LENGTH <= self.max_seq_length <= 512:
            raise ConfigError(f"{path}.max_seq_length: {self.max_seq_length} must be in [{MIN_SEQ_LENGTH}, 512]")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"{path}.mlm_probability: {self.mlm_probability} must be in (0, 1)")
        if self.mlm_copies < 1:
            raise ConfigError(f"{path}.mlm_copies: {self.mlm_copies} must be >= 1")
        for name in ("max_answer_length", "n_best"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name}: {getattr(self, name)!r} must be a positive integer")
        if self.squad_dir is not None and not Path(self.squad_dir).expanduser().is_dir():
            raise ConfigError(f"{path}.squad_dir: directory {self.squad_dir!r} does not exist")
        for name in ("squad_train", "squad_dev"):
            if getattr(self, name) is not None and not Path(getattr(self, name)).expanduser().is_file():
                raise ConfigError(f"{path}.{name}: file {getattr(self, name)!r} does not exist")

    def squad_stride(self) -> int:
        """doc_stride, or where null BERT's 128 capped at half the window (so `task: squad` runs at any length)."""
        return self.doc_stride if self.doc_stride is not None else min(128, self.max_seq_length // 2)

    def validate_squad(self, path: str) -> None:
        """The window must move: a stride of a whole window or more would skip context (task squad only)."""
        if self.doc_stride is None:
            return
        if not isinstance(self.doc_stride, int) or not 1 <= self.doc_stride < self.max_seq_length:
            raise ConfigError(f"{path}.doc_stride: {self.doc_stride!r}; allowed: an integer from 1 to "
                              f"max_seq_length - 1 ({self.max_seq_length - 1})")


@dataclass
class DistillConfig:
    """Knowledge distillation of every pruned model (distill.py): alpha · KD + (1 - alpha) · the task loss. The
    defaults are Sanh et al.'s movement-pruning scripts' (alpha_distil 0.5, temperature 2.0; distill.py)."""

    alpha: float = 0.5  # the KD term's weight; the task's own loss gets 1 - alpha
    temperature: float = 2.0  # softens both distributions (classification); the KD term is scaled by its square
    teacher: str | None = None  # null: the trajectory's own full fine-tuned model (round 0); or a model directory

    def validate(self, path: str) -> None:
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"{path}.alpha: {self.alpha} must be in [0, 1] (the KD term's weight)")
        if not self.temperature > 0 or not math.isfinite(self.temperature):
            raise ConfigError(f"{path}.temperature: {self.temperature} must be a positive number")


@dataclass
class TrainConfig:
    learning_rate: float | None = None  # null: the model's default (`default_learning_rate`), set by resolve()
    epochs: float = 3.0
    batch_size: int = 32
    eval_batch_size: int = 128
    # Linear warmup over this fraction of the steps, then linear decay. null: the task's recipe, filled by
    # resolve() (BERT's 0.1 for GLUE, the academic-budget recipe's 0.06 for mlm); a bare TrainConfig uses 0.1.
    warmup_ratio: float | None = None
    # Optimiser steps accumulate this many global batches (a large effective batch on small hardware).
    # null: the task's recipe (1 for GLUE, 4 for mlm), filled by resolve().
    grad_accumulation: int | None = None
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # adamax_mtdnn: Liang et al.'s (MT-DNN's Adamax, optim.MTDNNAdamax: decay after the normalisation);
    # adamax: torch's, whose decay is L2 on the gradient (about lr per step off every weight with g ≈ 0)
    optimizer: Literal["adamw", "adamax", "adamax_mtdnn"] = "adamw"
    # Compute dtype of training, evaluation and importance scoring (weights, mask and optimiser stay fp32).
    # null: bf16 where the hardware has it natively (CUDA capability >= 8, a CPU with AVX512-BF16 or AMX), else fp32;
    # a trajectory fixes it for its device before its run id is computed (precision.resolve).
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    bucket_by_length: bool = False  # batches of similar-length examples: fewer pad tokens (another data order)
    compile: bool = False  # torch.compile the model for training (its first steps pay for compilation)
    max_steps: int | None = None  # overrides epochs when set
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None = torch's default
    progress: bool = True  # a progress bar per fine-tune on a terminal (never inside a sweep)
    # task mlm, a checkpoint without an MLM head only (the packaged MiniLM): before round 0 the new head and the
    # top `mlm_warmup_layers` encoder layers train, the rest frozen, until dev accuracy plateaus (mlm_head.py
    # warm_up_head) or for `mlm_warmup_steps` steps; the warmed model is the rewind point. 0 steps: no warm-up.
    # Head only by default: the rewind encoder stays the pre-trained one (what a transferred ticket meets), and on
    # MiniLM it did as well as two layers (README, mlm: 150 steps, 9.9% vs 10.1% dev accuracy; one layer at 3e-3: 5.5%).
    mlm_warmup_steps: int = 1000
    mlm_warmup_layers: int = 0
    mlm_warmup_learning_rate: float = 3e-3
    # Knowledge distillation of every fine-tune but the full model's (distill.py); null: none
    distill: DistillConfig | None = None

    def validate(self, path: str) -> None:
        if self.distill is not None:
            self.distill.validate(f"{path}.distill")
        for name in ("learning_rate", "epochs", "batch_size", "eval_batch_size", "max_grad_norm"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{path}.{name}: {getattr(self, name)} must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"{path}.max_steps: {self.max_steps} must be a positive integer or null")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"{path}.warmup_ratio: {self.warmup_ratio} must be in [0, 1)")
        if self.grad_accumulation is not None and self.grad_accumulation < 1:
            raise ConfigError(f"{path}.grad_accumulation: {self.grad_accumulation} must be >= 1 or null")
        if self.weight_decay < 0:
            raise ConfigError(f"{path}.weight_decay: {self.weight_decay} must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{path}.threads: {self.threads} must be a positive integer or null")
        if not isinstance(self.mlm_warmup_steps, int) or self.mlm_warmup_steps < 0:
            raise ConfigError(f"{path}.mlm_warmup_steps: {self.mlm_warmup_steps!r} must be an integer >= 0 (0: none)")
        if not isinstance(self.mlm_warmup_layers, int) or self.mlm_warmup_layers < 0:
            raise ConfigError(f"{path}.mlm_warmup_layers: {self.mlm_warmup_layers!r} must be an integer >= 0 "
                              f"(0: the head alone)")
        if not self.mlm_warmup_learning_rate > 0:
            raise ConfigError(f"{path}.mlm_warmup_learning_rate: {self.mlm_warmup_learning_rate} must be positive")


class _PruneBehaviour:
    """What PruneConfig does. Its fields are generated below: the generic ones, then every registered
    method's settings, flat (`prune.rate`, `prune.head_fraction`); each method reads only its own."""

    def method_impl(self) -> pruning.Method:
        """The configured method, holding its own settings (a `Hparams` instance)."""
        cls = pruning.get(self.method)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(cls.Hparams)}
        return cls(build(cls.Hparams, values, "prune"), self.rounds)

    def num_rounds(self) -> int:
        return self.method_impl().num_rounds()

    def target(self, r: int) -> pruning.Target:
        return self.method_impl().target(r)

    def sparsity_at(self, r: int) -> pruning.Target:
        """The schedule's target after `r` rounds (a sparsity for the unstructured methods)."""
        return self.target(r)

    def validate(self, path: str, imp: bool = True) -> None:
        """`imp=False`: the config only fine-tunes (no pruning rounds), so no stopping point is needed."""
        cls = pruning.get(self.method, f"{path}.method")
        own = {f.name for f in dataclasses.fields(cls.Hparams)}
        for name, _, f in pruning.hparams_fields():  # a setting of another method is a mistake, not a no-op
            if name not in own and getattr(self, name) != pruning.registry.default_of(name):
                raise ConfigError(
                    f"{path}.{name}: {getattr(self, name)!r} is a setting of {', '.join(pruning.owners(name))}, "
                    f"not of method {self.method!r}; its settings: {', '.join(sorted(own))}"
                )
        if self.rounds is not None and self.rounds < 1:
            raise ConfigError(f"{path}.rounds: {self.rounds} must be >= 1")
        method = cls(build(cls.Hparams, {n: getattr(self, n) for n in own}, path), self.rounds)
        method.hp.validate(path)
        if imp:
            method.validate(path)
        if method.gradual and (self.baselines or self.rewind_step):  # one run from the pre-trained weights
            name, value = ("baselines", self.baselines) if self.baselines else ("rewind_step", self.rewind_step)
            raise ConfigError(f"{path}.{name}: {value!r} with trajectory 'gradual', which neither rewinds nor has "
                              f"baselines; allowed: {'[]' if name == 'baselines' else '0'}")
        if self.rewind_step < 0:
            raise ConfigError(f"{path}.rewind_step: {self.rewind_step} must be >= 0")
        if self.min_gain is not None and not -1 <= self.min_gain <= 1:
            raise ConfigError(f"{path}.min_gain: {self.min_gain} must be in [-1, 1] (a metric difference) or null")
        for b in self.baselines:
            if b not in BASELINES:
                raise ConfigError(f"{path}.baselines: unknown baseline {b!r}; allowed: {', '.join(BASELINES)}")


def _prune_fields() -> list[tuple[str, Any, Any]]:
    generic = [
        ("method", str, field(default="magnitude")),  # a registered method: raytickets.pruning.METHODS
        ("rounds", int | None, field(default=None)),
        ("rewind_step", int, field(default=0)),  # 0 = pre-trained weights; k = every weight after k steps
        # End the trajectory after the first round whose ticket falls this far below the full model (gain <
        # min_gain, e.g. -0.03): past the phase transition the metric only falls (Liang et al. 2021). null = never.
        ("min_gain", float | None, field(default=None)),
        ("include", list[str] | None, field(default=None)),  # full-match regexes; None = the model's default set
        ("exclude", list[str], field(default_factory=list)),
        ("baselines", list[str], field(default_factory=list)),  # kinds of raytickets.baselines.BASELINES
    ]
    methods = []
    for name, tp, f in pruning.hparams_fields():
        default = {"default": f.default} if f.default is not dataclasses.MISSING else {"default_factory": f.default_factory}
        methods.append((name, tp, field(**default)))
    return generic + methods


PruneConfig = dataclasses.make_dataclass("PruneConfig", _prune_fields(), bases=(_PruneBehaviour,))
PruneConfig.__module__ = __name__
PruneConfig.__doc__ = ("The pruning section: generic fields (method, rounds, rewind_step, min_gain, include, "
                       "exclude, baselines) and every registered method's settings, flat.")


def default_learning_rate(model: str) -> float:
    """BERT's recipe (2e-5) for base and large models; the small MiniLM needs a larger step.

    Measured here: MiniLM on 2000 SST-2 rows, 2 epochs: dev accuracy 0.766 at 2e-5, 0.811 at 1e-4.
    """
    return 1e-4 if model == "minilm" else 2e-5


@dataclass
class TicketConfig:
    """One trajectory: what `raytickets imp` runs and what one sweep trial runs."""

    task: str = "sst2"
    model: str = "minilm"
    metrics: Literal["glue", "paper"] = "glue"  # which metric is a task's main one (TaskSpec.main_metric_for)
    # Fine-tuned weights stored in the results root for export: the best and last rounds ("best"), the last,
    # every round, or none. Changes no result, so it enters no run id.
    keep_weights: Literal["best", "last", "all", "none"] = "best"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    # Settings for some tasks only, as `key.sub: value` (Liang et al. train MNLI and QNLI for fewer epochs):
    # {mnli: {train.epochs: 3}}. Applied by resolve() when the trajectory's task is one of them.
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self, path: str = "", imp: bool = True) -> None:
        p = f"{path}." if path else ""
        if self.task not in GLUE_TASKS:
            raise ConfigError(f"{p}task: unknown task {self.task!r}; allowed: {', '.join(GLUE_TASKS)}")
        from .models import resolve_model  # no torch import: resolve_model only looks at names and paths

        try:
            resolve_model(self.model)
        except ConfigError as e:
            raise ConfigError(f"{p}{e}") from None
        self.data.validate(f"{p}data")
        if self.data.corpus is not None and not TASKS[self.task].is_mlm:
            raise ConfigError(f"{p}data.corpus: {self.data.corpus!r} is read by the mlm task only; task is {self.task!r}")
        if TASKS[self.task].is_span and self.task not in self.per_task:  # else checked with its per_task settings
            self.data.validate_squad(f"{p}data")
        self.train.validate(f"{p}train")
        if self.train.distill is not None:  # the teacher must read this model's inputs and score this task
            from .distill import check_distill

            check_distill(self.train.distill, TASKS[self.task], self.model, f"{p}train.distill")
        self.prune.validate(f"{p}prune", imp=imp)
        from .models import check_patterns, parameter_names

        names = parameter_names(self.model)  # from the checkpoint's header: no weights are read
        if names is not None:
            for name in ("include", "exclude"):
                check_patterns(f"{p}prune.{name}", getattr(self.prune, name) or [], names)
        if self.prune.rewind_step > 0 and self.train.max_steps is not None and self.prune.rewind_step > self.train.max_steps:
            raise ConfigError(
                f"{p}prune.rewind_step: {self.prune.rewind_step} is beyond the {self.train.max_steps} training steps"
            )
        if TASKS[self.task].is_mlm:  # on disk, so after every field's own check
            check_mlm_data(self.data, p)
        for task, settings in self.per_task.items():
            if task not in GLUE_TASKS:
                raise ConfigError(f"{p}per_task: unknown task {task!r}; allowed: {', '.join(GLUE_TASKS)}")
            for key in settings:
                if key.partition(".")[0] not in SECTIONS or key in ("task", "per_task"):
                    raise ConfigError(f"{p}per_task.{task}: {key!r} is not a setting; allowed: data.*, train.*, prune.*")
            _with_task_settings(self, task, f"{p}per_task.{task}").validate(path, imp)


def check_mlm_data(data: DataConfig, prefix: str = "") -> None:
    """The mlm task's corpus (or, when null, the GLUE train splits it falls back to) exists and starts as UTF-8
    text: checked with the config, so `--dry-run` finds what the run would only find after Ray started."""
    from .mlm import check_corpus  # numpy and the task table only; torch is imported where tensors are made

    try:
        check_corpus(data.corpus, data.glue_dir)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None


def _with_task_settings(cfg: TicketConfig, task: str, path: str) -> TicketConfig:
    data = to_dict(cfg)
    data.pop("per_task")
    data["task"] = task  # validated as that task's trials run (a corpus is valid for mlm only)
    overrides = [f"{k}={_yaml(v)}" for k, v in cfg.per_task.get(task, {}).items()]
    try:
        return build(TicketConfig, apply_overrides(data, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value)


def resolve(cfg: TicketConfig) -> TicketConfig:
    """The config a trajectory runs: its task's `per_task` settings applied and the model's default learning
    rate filled in (run ids see these values, not the nulls)."""
    out = _with_task_settings(cfg, cfg.task, "per_task") if cfg.task in cfg.per_task else copy.deepcopy(cfg)
    out.per_task = {}
    if out.train.learning_rate is None:
        out.train.learning_rate = default_learning_rate(out.model)
    for name, value in TASKS[out.task].recipe.items():  # the task's training recipe, where left null
        if getattr(out.train, name) is None:
            setattr(out.train, name, value)
    return out


@dataclass
class ParamSpec:
    """One dimension of the search space: `values` (categorical/grid) or `low`..`high` (range)."""

    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    type: Literal["float", "int"] = "float"
    step: float | None = None  # grid mode: the step between low and high

    def validate(self, path: str) -> None:
        if self.values is not None:
            if self.low is not None or self.high is not None:
                raise ConfigError(f"{path}: give either values or low/high, not both")
            if len(self.values) == 0:
                raise ConfigError(f"{path}.values: empty choice; give at least one value")
            return
        if self.low is None or self.high is None:
            raise ConfigError(f"{path}: needs values: [...] or both low and high")
        if self.low > self.high:
            raise ConfigError(f"{path}: low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ConfigError(f"{path}.low: {self.low} must be > 0 with log: true")


# Search-space keys that are fractions: (excludes 0, the interval as the error names it).
_SPACE_RANGES = {
    "prune.target_sparsity": (True, "(0, 1)"),
    "prune.rate": (True, "(0, 1)"),
    "prune.head_fraction": (False, "[0, 1)"),
    "prune.ffn_fraction": (False, "[0, 1)"),
}


@dataclass
class TransferConfig:
    """Transfer as Chen et al. ran it: tickets found on source tasks (and on mlm) fine-tuned on target tasks,
    each compared with the target's own ticket at the same sparsity and with a random mask there."""

    # The results root holding the source tickets (and, where there, the targets' own); "self": the tickets of
    # this config's own search space, found first by the same command (`sweep.stages`).
    source: str = ""
    sources: list[str] = field(default_factory=list)  # source tasks; empty = every task with tickets in `source`
    # Which source tickets: "matching" (each source's matching ticket, paper rule) and sparsity levels
    levels: list[Any] = field(default_factory=lambda: ["matching", 0.5, 0.7, 0.9])
    mask_ids: list[str] = field(default_factory=list)  # these masks instead of sources x levels
    targets: list[str] = field(default_factory=list)  # target tasks
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds of every transfer run
    random: bool = True  # a random mask at each level on each target (by the method's own rule)
    # One-shot magnitude pruning of the target's rewind weights (the pre-trained ones) at each level: the mask an
    # MLM ticket collapses to when its rounds are too short for training to move it (issue 17, item 5). A
    # transferred ticket that does no better than this null found nothing that pruning without training would not.
    oneshot: bool = False
    own: bool = True  # the target's own ticket at each level: read from `source`, or trained when missing

    def validate(self, path: str) -> None:
        if not self.source:  # whether it holds tickets is checked when the trials are planned (transfer.plan)
            raise ConfigError(f"{path}.source: the results root with the source tickets is required")
        for name in ("sources", "targets"):
            for t in getattr(self, name):
                if t not in GLUE_TASKS:
                    raise ConfigError(f"{path}.{name}: unknown task {t!r}; allowed: {', '.join(GLUE_TASKS)}")
        if not self.targets:
            raise ConfigError(f"{path}.targets: give at least one target task")
        for level in self.levels:
            if level != "matching" and (isinstance(level, bool) or not isinstance(level, (int, float))
                                        or not 0 < level < 1):
                raise ConfigError(f"{path}.levels: {level!r}; allowed: 'matching' or a sparsity in (0, 1)")
        if not self.seeds:
            raise ConfigError(f"{path}.seeds: give at least one seed")


@dataclass
class SearchConfig:
    # a sweep mode registered with raytickets.sweep.modes (optuna, grid, mtl, ...), which checks it and the
    # fields only it reads; this module knows no mode
    mode: str = "optuna"
    # Keys are TicketConfig paths ("prune.rate"); "a,b" zips dimensions: values are [a, b] pairs, one trial each.
    space: dict[str, ParamSpec] = field(default_factory=dict)
    num_samples: int = 4  # optuna: trials; grid: repeats of the whole grid
    max_concurrent_trials: int = 1
    scheduler: Literal["asha", "none"] = "asha"  # ASHA ranks a trial only against trials of its own task
    grace_period: int = 1  # ASHA: rounds every trial gets before it may be stopped
    reduction_factor: int = 2
    seed: int = 0
    metric: str = "gain"  # ticket metric minus the full model's on the same task and seed
    # a ticket sweep whose trials are the transfer experiment (raytickets/sweep/transfer.py), not the space
    transfer: TransferConfig | None = None
    # the section of the mtl mode (raytickets/mtl/sweep.py), kept raw: that mode builds and checks it
    mtl: dict[str, Any] | None = None
    # grid mode without a scheduler: k grid points per trial, trained one after another on the same Ray Train
    # workers, so a Train start-up (~15 s on 2 cores: README "How a sweep runs") is paid once for k trajectories
    trajectories_per_trial: int = 1

    def validate(self, path: str, ticket: TicketConfig | None = None) -> None:
        if self.trajectories_per_trial < 1:
            raise ConfigError(f"{path}.trajectories_per_trial: {self.trajectories_per_trial} must be >= 1")
        for key, spec in self.space.items():
            spec.validate(f"{path}.space.{key}")
            parts = key.split(",")  # "prune.head_fraction,prune.ffn_fraction": values are tuples, zipped
            if len(parts) > 1:
                bad = next((v for v in spec.values or [None] if not isinstance(v, list) or len(v) != len(parts)), 0)
                if spec.values is None or bad != 0:
                    raise ConfigError(f"{path}.space.{key}: a zipped dimension needs values: a list of "
                                      f"{len(parts)}-item lists, got {bad!r}")
            for i, part in enumerate(parts):
                values = None if spec.values is None else [v[i] if len(parts) > 1 else v for v in spec.values]
                _check_space_key(f"{path}.space", part, values, spec)
            if len(parts) == 1 and key in ("prune.method", "metrics", "model") and spec.values and ticket is not None:
                for v in spec.values:  # every choice must make a valid trajectory with the template
                    try:
                        build(TicketConfig, apply_overrides(to_dict(ticket), [f"{key}={_yaml(v)}"])).validate()
                    except ConfigError as e:
                        raise ConfigError(f"{path}.space.{key}: value {v!r}: {e}") from None
        tasks = self.space["task"].values or [] if "task" in self.space else []
        for t in tasks if ticket is not None else []:  # the template validated its own task and per_task ones
            if t in TASKS and TASKS[t].is_mlm and t != ticket.task and t not in ticket.per_task:
                check_mlm_data(ticket.data, f"{path}.space.task: value {t!r}: ticket.")
        if self.num_samples < 1:
            raise ConfigError(f"{path}.num_samples: {self.num_samples} must be >= 1")
        if self.max_concurrent_trials < 1:
            raise ConfigError(f"{path}.max_concurrent_trials: {self.max_concurrent_trials} must be >= 1")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise ConfigError(f"{path}.grace_period: must be >= 1 and reduction_factor >= 2")
        if self.transfer is not None:
            self.transfer.validate(f"{path}.transfer")


def _check_space_key(path: str, key: str, values: list | None, spec: ParamSpec) -> None:
    section, _, leaf = key.partition(".")
    if not (key in ("task", "model", "metrics") or (section in SECTIONS and leaf in _section_fields(section))):
        raise ConfigError(f"{path}: unknown parameter {key!r}; allowed: task, model, data.*, train.*, prune.*")
    if key == "task" and values:
        for t in values:
            if t not in GLUE_TASKS:
                raise ConfigError(f"{path}.task: unknown task {t!r}; allowed: {', '.join(GLUE_TASKS)}")
    if key in _SPACE_RANGES:  # fail here, not inside a trial on a cluster
        low_open, allowed = _SPACE_RANGES[key]
        for v in values if values is not None else [spec.low, spec.high]:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not ok or not (0 < v < 1 if low_open else 0 <= v < 1):
                raise ConfigError(f"{path}.{key}: {v!r} must be in {allowed}")


def _section_fields(section: str) -> set[str]:
    return {f.name for f in dataclasses.fields({"data": DataConfig, "train": TrainConfig, "prune": PruneConfig}[section])}


MAX_RESOURCE_QUANTITY = 100e12  # the most of one resource Ray accepts (ray/_private/ray_constants.py)


@dataclass
class ResourcesConfig:
    num_workers: int = 1  # Ray Train workers per trial (DDP)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    trial_driver_cpus: float = 0.1  # the Tune function trainable only orchestrates; it needs little
    num_cpus: int | None = None  # embedded local Ray only: CPUs to give it (None = all)
    autoscaling: bool = False  # the cluster grows on demand (ray up): skip the "can it ever fit" check

    def validate(self, path: str) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"{path}.num_workers: {self.num_workers} must be >= 1")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"{path}.cpus_per_worker: {self.cpus_per_worker} must be > 0")
        if self.trial_driver_cpus <= 0:  # Tune cannot place a trial that asks for nothing
            raise ConfigError(f"{path}.trial_driver_cpus: {self.trial_driver_cpus} must be > 0 (e.g. 0.1)")
        if self.num_cpus is not None and not 1 <= self.num_cpus <= MAX_RESOURCE_QUANTITY:
            raise ConfigError(f"{path}.num_cpus: {self.num_cpus} must be null or from 1 to {MAX_RESOURCE_QUANTITY:.0e}")
        for name in ("cpus_per_worker", "gpus_per_worker", "trial_driver_cpus"):  # nan passes every comparison
            if getattr(self, name) > MAX_RESOURCE_QUANTITY or not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{path}.{name}: {getattr(self, name)} must be a finite number of at most "
                                  f"{MAX_RESOURCE_QUANTITY:.0e}")
        if self.gpus_per_worker < 0 or (self.use_gpu and self.gpus_per_worker == 0):
            raise ConfigError(f"{path}.gpus_per_worker: {self.gpus_per_worker} must be > 0 with use_gpu (>= 0 without)")


NAME_MAX_BYTES = 200  # a folder name: filesystems allow 255 bytes, and the mtl / transfer stages add a suffix


def check_name(name: str, field: str = "name") -> None:
    """A sweep's name is one folder under storage_path (`<storage_path>/<name>`): `..` would put the results
    in storage_path's parent and `.` in storage_path itself, a separator would nest them elsewhere, and a tab,
    newline or other unprintable character makes a path no one can type."""
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    bad = next((c for c in name if c in seps or c.isspace() or not c.isprintable()), None)
    if not name or name in (".", "..") or bad is not None or len(name.encode()) > NAME_MAX_BYTES:
        what = f" (it holds {bad!r})" if bad is not None else ""
        raise ConfigError(f"{field}: {name!r}{what} is not a folder name; allowed: one non-empty path component, not "
                          f"'.' or '..', without slashes, whitespace or control characters, at most "
                          f"{NAME_MAX_BYTES} bytes")


@dataclass
class MlflowTracking:
    tracking_uri: str | None = None  # null: a SQLite store in the results root (sweep/tracking.py says why not file:)
    experiment: str | None = None  # null: the sweep's name


@dataclass
class WandbTracking:
    project: str | None = None  # null: the sweep's name
    mode: Literal["auto", "online", "offline"] = "auto"  # auto: offline unless WANDB_API_KEY is set


@dataclass
class TrackingConfig:
    """Experiment trackers fed by Ray Tune's logger callbacks: one run per trial, each round's metrics and every
    training step's loss (sweep/tracking.py). TensorBoard needs no entry: Tune writes event files per trial."""

    mlflow: MlflowTracking | None = None
    wandb: WandbTracking | None = None


@dataclass
class SweepConfig:
    name: str = "sweep"
    storage_path: str = "results"  # local directory or s3://bucket/prefix (every node must reach it)
    results_dir: str | None = None  # Parquet tables; default <storage_path>/<name>/results
    work_dir: str | None = None  # trajectory state and tokenised data; default <storage_path>/<name>/work
    ticket: TicketConfig = field(default_factory=TicketConfig)  # defaults for every trial
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_failures: int = 2  # Tune retries of a trial whose workers died
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self, path: str = "", reads_ticket: bool = True) -> None:
        """`reads_ticket`: whether the sweep's mode trains from the ticket template (its mode says; one that reads
        none checks that it is unset)."""
        check_name(self.name)
        if reads_ticket:
            self.ticket.validate("ticket")  # the template of every trial
        self.search.validate("search", self.ticket if reads_ticket else None)
        self.resources.validate("resources")
        if self.max_failures < 0:
            raise ConfigError(f"max_failures: {self.max_failures} must be >= 0")


def load(cls=None, path: str | os.PathLike | None = None, overrides: Sequence[str] = (), base: dict | None = None,
         imp: bool = True, validate: bool = True):
    """The one way to make a config: YAML (optional) or `base`, then `key.sub=value` overrides, then validate.

    `cls` is TicketConfig or SweepConfig (default SweepConfig); `imp=False` for a ticket that only fine-tunes;
    `validate=False` for a sweep, whose mode decides what is read (`sweep.tuner.load_config` validates it).
    """
    cls = cls or SweepConfig
    data = read_config(path) if path else dict(base or {})
    cfg = build(cls, apply_overrides(data, overrides))
    if not validate:
        return cfg
    if cls is TicketConfig:
        cfg.validate(imp=imp)
    else:
        cfg.validate()
    return cfg
