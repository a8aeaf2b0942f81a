"""Typed config objects, YAML loading, `key.sub=value` overrides and validation at the edge.

A config says *what* to run, never *how*. Every field is checked when the config is built, so a typo or
an out-of-range value fails with one line naming the field, the value and what is allowed — before any
data is read, any model loaded or any cluster started.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from .errors import ConfigError
from .tasks import MIN_SEQ_LENGTH, TASKS  # the task table; tasks imports no torch

GLUE_TASKS = tuple(TASKS)
BASELINES = ("random", "reinit", "shuffled", "oneshot", "standard")


@dataclass
class DataConfig:
    glue_dir: str | None = None  # a directory in the original GLUE TSV layout; None = Hugging Face hub
    max_train_examples: int | None = None  # seeded subsample of the training split
    max_dev_examples: int | None = None
    max_seq_length: int = 128
    seed: int = 0  # subsample seed: kept apart from train.seed so every training seed sees the same rows
    cache_dir: str | None = None  # tokenised-data cache; default ~/.cache/raytickets/tokenized

    def validate(self, path: str) -> None:
        if self.glue_dir is not None and not Path(self.glue_dir).expanduser().is_dir():
            raise ConfigError(f"{path}.glue_dir: directory {self.glue_dir!r} does not exist")
        for name in ("max_train_examples", "max_dev_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{path}.{name}: {value} must be a positive integer or null (all rows)")
        if not MIN_SEQ_LENGTH <= self.max_seq_length <= 512:
            raise ConfigError(f"{path}.max_seq_length: {self.max_seq_length} must be in [{MIN_SEQ_LENGTH}, 512]")


@dataclass
class TrainConfig:
    # null: chosen for the model when the ticket config is validated (default_learning_rate)
    learning_rate: float | None = None
    epochs: float = 3.0
    batch_size: int = 32
    eval_batch_size: int = 128
    warmup_ratio: float = 0.1  # linear warmup over this fraction of the steps, then linear decay
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None = torch's default

    def validate(self, path: str) -> None:
        for name in ("learning_rate", "epochs", "batch_size", "eval_batch_size", "max_grad_norm"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{path}.{name}: {getattr(self, name)} must be positive")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"{path}.max_steps: {self.max_steps} must be a positive integer or null")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"{path}.warmup_ratio: {self.warmup_ratio} must be in [0, 1)")
        if self.weight_decay < 0:
            raise ConfigError(f"{path}.weight_decay: {self.weight_decay} must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{path}.threads: {self.threads} must be a positive integer or null")


@dataclass
class PruneConfig:
    method: Literal["magnitude", "structured"] = "magnitude"
    # magnitude (Chen et al. 2020): iterative magnitude pruning with rewinding
    schedule: Literal["remaining", "original"] = "remaining"  # p of remaining weights, or p of the original count
    scope: Literal["global", "per_tensor"] = "global"
    rate: float = 0.1
    rounds: int | None = None
    target_sparsity: float | None = None  # stop here; the last round prunes exactly to it
    rewind_step: int = 0  # 0 = pre-trained weights; k = weights after k steps of fine-tuning the full model
    # End the trajectory after the first round whose ticket falls this far below the full model (gain <
    # min_gain, e.g. -0.03): past the phase transition the metric only falls (Liang et al. 2021), so the
    # deeper rounds cannot hold the super ticket. null = run every round.
    min_gain: float | None = None
    include: list[str] | None = None  # regexes of prunable tensor names; None = Chen et al.'s set
    exclude: list[str] = field(default_factory=list)
    # structured (Liang et al. 2021): attention heads and feed-forward units by gate sensitivity
    head_fraction: float = 0.0
    ffn_fraction: float = 0.0
    ffn_granularity: Literal["neuron", "layer"] = "neuron"
    normalize_importance: bool = True
    importance_batches: int = 32
    losing: bool = False  # prune the most important units instead (losing tickets)
    baselines: list[str] = field(default_factory=list)

    def validate(self, path: str, imp: bool = True) -> None:
        """`imp=False`: the config only fine-tunes (no pruning rounds), so no stopping point is needed."""
        if not 0 < self.rate < 1:
            raise ConfigError(f"{path}.rate: {self.rate} must be in (0, 1)")
        if self.rounds is not None and self.rounds < 1:
            raise ConfigError(f"{path}.rounds: {self.rounds} must be >= 1")
        if self.target_sparsity is not None and not 0 < self.target_sparsity < 1:
            raise ConfigError(f"{path}.target_sparsity: {self.target_sparsity} must be in (0, 1)")
        if imp and self.method == "magnitude" and self.rounds is None and self.target_sparsity is None:
            raise ConfigError(f"{path}.rounds: set rounds or target_sparsity (both are null)")
        if self.schedule == "original" and self.rounds is not None and self.target_sparsity is None:
            if self.rounds * self.rate >= 1:
                raise ConfigError(
                    f"{path}.rounds: {self.rounds} rounds at rate {self.rate} of the original count would prune"
                    f" {self.rounds * self.rate:.0%}; with schedule 'original' rounds * rate must be < 1"
                )
        if self.rewind_step < 0:
            raise ConfigError(f"{path}.rewind_step: {self.rewind_step} must be >= 0")
        if self.min_gain is not None and not -1 <= self.min_gain <= 1:
            raise ConfigError(f"{path}.min_gain: {self.min_gain} must be in [-1, 1] (a metric difference) or null")
        for name in ("head_fraction", "ffn_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name}: {getattr(self, name)} must be in [0, 1)")
        if self.method == "structured" and self.head_fraction == 0 and self.ffn_fraction == 0:
            raise ConfigError(f"{path}.head_fraction: structured pruning needs head_fraction or ffn_fraction > 0")
        if self.importance_batches < 1:
            raise ConfigError(f"{path}.importance_batches: {self.importance_batches} must be >= 1")
        for b in self.baselines:
            if b not in BASELINES:
                raise ConfigError(f"{path}.baselines: unknown baseline {b!r}; allowed: {', '.join(BASELINES)}")

    def num_rounds(self) -> int:
        """Rounds of pruning; with a target sparsity, enough rounds of the schedule to reach it."""
        if self.method == "structured":
            return self.rounds or 1
        if self.target_sparsity is None:
            return int(self.rounds)
        r = 1
        while _schedule(self.schedule, self.rate, r) < self.target_sparsity - 1e-12:
            r += 1
        return min(r, self.rounds) if self.rounds else r

    def sparsity_at(self, round: int) -> float:
        """Target sparsity after `round` rounds of magnitude pruning; the last round stops at the target."""
        s = _schedule(self.schedule, self.rate, round)
        if self.target_sparsity is not None and (s > self.target_sparsity or round == self.num_rounds()):
            return self.target_sparsity
        return s


def default_learning_rate(model: str) -> float:
    """BERT's recipe (2e-5) for base and large models; the small MiniLM needs a larger step.

    Measured here: MiniLM on 2000 SST-2 rows, 2 epochs: dev accuracy 0.766 at 2e-5, 0.811 at 1e-4.
    """
    return 1e-4 if model == "minilm" else 2e-5


def _schedule(schedule: str, rate: float, round: int) -> float:
    # remaining: prune p of what is left each round; original: p of the original count (BERT-Tickets' code).
    return 1 - (1 - rate) ** round if schedule == "remaining" else min(rate * round, 1.0)


@dataclass
class TicketConfig:
    """One trajectory: what `raytickets imp` runs and what one sweep trial runs."""

    task: str = "sst2"
    model: str = "minilm"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

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
        self.train.validate(f"{p}train")
        if self.train.learning_rate is None:  # resolved here so run ids see the value actually used
            self.train.learning_rate = default_learning_rate(self.model)
        self.prune.validate(f"{p}prune", imp=imp)
        if self.prune.rewind_step > 0:
            steps = self.train.max_steps
            if steps is not None and self.prune.rewind_step > steps:
                raise ConfigError(
                    f"{p}prune.rewind_step: {self.prune.rewind_step} is beyond the {steps} training steps"
                )


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
class SearchConfig:
    mode: Literal["optuna", "grid"] = "optuna"
    space: dict[str, ParamSpec] = field(default_factory=dict)  # keys are TicketConfig paths: "prune.rate"
    num_samples: int = 4  # optuna: trials; grid: repeats of the whole grid
    max_concurrent_trials: int = 1
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = 1  # ASHA: rounds every trial gets before it may be stopped
    reduction_factor: int = 2
    seed: int = 0
    metric: str = "gain"  # ticket metric minus the full model's on the same task and seed
    # transfer mode: fine-tune stored source tickets on target tasks
    transfer_from: str | None = None  # a results directory of an earlier sweep
    target_tasks: list[str] = field(default_factory=list)

    def validate(self, path: str) -> None:

        top_level = {"task", "model"}
        for key, spec in self.space.items():
            section, _, leaf = key.partition(".")
            ok = key in top_level or (
                section in ("data", "train", "prune")
                and leaf in {f.name for f in dataclasses.fields(_SECTIONS[section])}
            )
            if not ok:
                raise ConfigError(
                    f"{path}.space: unknown parameter {key!r}; allowed: task, model, data.*, train.*, prune.*"
                )
            spec.validate(f"{path}.space.{key}")
            if key == "task" and spec.values:
                for t in spec.values:
                    if t not in GLUE_TASKS:
                        raise ConfigError(f"{path}.space.task: unknown task {t!r}; allowed: {', '.join(GLUE_TASKS)}")
            if key in _SPACE_RANGES:  # fail here, not inside a trial on a cluster
                vals = spec.values if spec.values is not None else [spec.low, spec.high]
                low_open, allowed = _SPACE_RANGES[key]
                for v in vals:
                    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
                    if not ok or not (0 < v < 1 if low_open else 0 <= v < 1):
                        raise ConfigError(f"{path}.space.{key}: {v!r} must be in {allowed}")
        if self.mode == "optuna" and self.num_samples < 1:
            raise ConfigError(f"{path}.num_samples: {self.num_samples} must be >= 1")
        if self.mode == "grid":
            for key, spec in self.space.items():
                if spec.values is None and spec.step is None:
                    raise ConfigError(f"{path}.space.{key}: grid mode needs values or a step")
        if self.max_concurrent_trials < 1:
            raise ConfigError(f"{path}.max_concurrent_trials: {self.max_concurrent_trials} must be >= 1")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise ConfigError(f"{path}.grace_period: must be >= 1 and reduction_factor >= 2")
        for t in self.target_tasks:
            if t not in GLUE_TASKS:
                raise ConfigError(f"{path}.target_tasks: unknown task {t!r}; allowed: {', '.join(GLUE_TASKS)}")
        if self.transfer_from is not None and not self.target_tasks:
            raise ConfigError(f"{path}.target_tasks: transfer_from needs at least one target task")


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
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"{path}.num_cpus: {self.num_cpus} must be >= 1 or null")


@dataclass
class SweepConfig:
    name: str = "sweep"
    storage_path: str = "results"  # local directory or s3://bucket/prefix (every node must reach it)
    results_dir: str | None = None  # Parquet tables; default <storage_path>/<name>/results
    ticket: TicketConfig = field(default_factory=TicketConfig)  # defaults for every trial
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_failures: int = 2  # Tune retries of a trial whose workers died

    def validate(self, path: str = "") -> None:
        if not self.name or any(c in self.name for c in "/\\ "):
            raise ConfigError(f"name: {self.name!r} must be non-empty, without slashes or spaces")
        # Validate a copy: the ticket is every trial's template, and validation resolves a null
        # learning rate for the template's model, which a searched `model` may replace.
        copy.deepcopy(self.ticket).validate("ticket")
        self.search.validate("search")
        self.resources.validate("resources")
        if self.max_failures < 0:
            raise ConfigError(f"max_failures: {self.max_failures} must be >= 0")


_SECTIONS = {"data": DataConfig, "train": TrainConfig, "prune": PruneConfig}


# ---------------------------------------------------------------------------------------------------
# Building configs from plain data. Written here rather than taken from a library because the
# project's rule is one-line errors naming the field path, and dataclasses + typing give the types.


def build(cls: type, data: Mapping[str, Any] | None, path: str = ""):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and converting scalar types."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key; allowed: {', '.join(names)}")
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def _convert(tp, value, path: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not allowed; allowed: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            value = [v.strip() for v in str(value).split(",") if v.strip()] if isinstance(value, str) else None
            if value is None:
                raise ConfigError(f"{path}: expected a list")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if value is None:
        raise ConfigError(f"{path}: null is not allowed; expected {tp.__name__}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: {value!r} is not a boolean (true/false)")
    if tp in (int, float):
        if isinstance(value, bool):  # float(True) == 1.0: a boolean must not pass as a number
            raise ConfigError(f"{path}: {value!r} is not a number ({tp.__name__})")
        if not isinstance(value, (int, float)):
            try:
                value = float(value) if tp is float else int(str(value))
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: {value!r} is not a number ({tp.__name__})") from None
        if not math.isfinite(value):  # "nan" would pass every range check (nan <= 0 is False)
            raise ConfigError(f"{path}: {value!r} is not a finite number ({tp.__name__})")
        if tp is int and float(value) != int(value):
            raise ConfigError(f"{path}: {value!r} is not an integer")
        return tp(value)
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{path}: {value!r} is not a string")
        return str(value)
    return value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply `key.sub=value` overrides (values parsed as YAML: 3, 0.1, true, [a, b], null)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = _split_key(key, data)
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _split_key(key: str, data: dict) -> list[str]:
    """Split `a.b.c=` into path parts, keeping dotted keys that exist (search.space."prune.rate")."""
    parts, node, rest = [], data, key.split(".")
    while rest:
        for n in range(len(rest), 0, -1):  # the longest existing dotted key wins
            candidate = ".".join(rest[:n])
            if isinstance(node, dict) and candidate in node or n == 1:
                parts.append(candidate)
                node = node.get(candidate) if isinstance(node, dict) else None
                rest = rest[n:]
                break
    # A search-space key is itself a ticket path ("prune.rate"): keep it whole when it is new too.
    if parts[:2] == ["search", "space"] and len(parts) > 3 and parts[2] in _SECTIONS:
        parts[2:4] = [f"{parts[2]}.{parts[3]}"]
    return parts


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top level")
    return data


def load(cls, path: str | os.PathLike | None = None, overrides: Sequence[str] = (), base: dict | None = None):
    """Load `cls` from YAML (optional), apply overrides, validate."""
    data = read_yaml(path) if path else dict(base or {})
    cfg = build(cls, apply_overrides(data, overrides))
    cfg.validate()
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
