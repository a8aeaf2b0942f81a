"""The pruning-method registry (open_lth's `pruning/registry.py` is the model).

A method is one module in this package defining one `Method` subclass and decorating it with
`@register`. The class declares everything the rest of raytickets needs to know about it, so nothing
else lists methods: the config's `prune.method` choices and validation, the store's allowed values, the
CLI flags and help are all derived from `METHODS`.

A method declares:
- `name`, `summary` (one line for the CLI help and the README table);
- `Hparams`: its own settings, a dataclass with `validate(path)`; its fields sit flat under `prune:` in
  a config (`prune.rate`, `prune.head_fraction`) and are the method's alone to read;
- its schedule: `num_rounds()` and `target(r)`, the target of round r (a sparsity, or head/FFN fractions);
- `select(ctx, current, target)`: the next mask, chosen from the fine-tuned model in `ctx` (and the
  data, if it needs any), never regrowing what `current` pruned; `random(...)`: the random mask at the
  same target (the random baseline); `one_shot(...)`: the mask chosen in one step from a dense model;
- `stop_fields`: settings that only say where a trajectory stops (left out of its run id, so trajectories
  that stop elsewhere share their rounds when `shares_rounds`); `axis_fields`: settings that only move
  the levels along the sparsity axis (left out of the curve's `setting_id`);
- `row_fields`: its settings copied into readable columns of every row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Literal, Mapping

from ..errors import ConfigError

if TYPE_CHECKING:

    from ..masks import Mask

Target = typing.Union[float, tuple[float, float]]  # a sparsity, or (head fraction, FFN fraction)


@dataclass
class PruneContext:
    """What a method may look at to choose a mask: a model holding the weights to prune, its prunable tensors
    (bare-encoder names), training batches and, under DDP, a sum over ranks.

    `batches(n)` yields this rank's part of the first `n` global training batches of epoch 0 (all of them
    with `n=None`); summing a per-batch quantity over them and then `reduce`-ing gives, on every rank,
    exactly what one process computes over the whole global batches.
    """

    model: Any
    params: Mapping[str, Any]
    batches: Callable[[int | None], Iterable[dict]]
    generator: Any  # a seeded torch.Generator, for random choices
    reduce: Callable[[Any], Any] = lambda t: t  # sum over DDP ranks; identity in one process
    world_size: int = 1
    autocast: Callable[[], Any] = contextlib.nullcontext  # the forward passes' precision (train.precision)


class Method:
    """One pruning method; subclasses set the class attributes and implement the schedule and `select`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Hparams: ClassVar[type]
    shares_rounds: ClassVar[bool] = False
    stop_fields: ClassVar[tuple[str, ...]] = ()
    axis_fields: ClassVar[tuple[str, ...]] = ()
    row_fields: ClassVar[tuple[str, ...]] = ()
    whole_units: ClassVar[bool] = False  # its masks remove whole heads and FFN units (overlap counts them)

    def __init__(self, hparams: Any, rounds: int | None):
        self.hp = hparams
        self.rounds = rounds

    # -- the schedule -------------------------------------------------------------------------------
    def validate(self, path: str) -> None:
        """One-line ConfigErrors for settings this method cannot run with (its hparams were validated)."""

    def num_rounds(self) -> int:
        raise NotImplementedError

    def target(self, r: int) -> Target:
        raise NotImplementedError

    def level(self, target: Target) -> float:
        """A target as one number, for directory names and messages."""
        return float(target) if not isinstance(target, tuple) else float(max(target))

    # -- choosing masks -----------------------------------------------------------------------------
    def select(self, ctx: PruneContext, current: Mask, target: Target) -> Mask:
        raise NotImplementedError

    def random(self, ctx: PruneContext, target: Target) -> Mask:
        """A random mask at the same target (from the dense mask), under the same rules."""
        raise NotImplementedError

    def one_shot(self, ctx: PruneContext, target: Target) -> Mask:
        """The mask this method chooses in one step from the dense mask (the `oneshot` baseline)."""
        from ..masks import Mask

        return self.select(ctx, Mask.ones_like(ctx.params), target)

    def evidence(self) -> dict[str, Any]:
        """Tensors the last `select` chose from (importance scores), saved beside the round's mask; {} if none."""
        return {}

    def check_model(self, model_config: Any, path: str) -> None:
        """Fail before anything is trained when the model cannot take this method's targets."""

    # -- gradual pruning (gradual.py): one fine-tuning run whose mask is raised as it trains ----------------------
    @property
    def gradual(self) -> bool:
        """Whether the trajectory prunes during one fine-tuning run instead of in IMP rounds."""
        return False

    def check_steps(self, steps: int, path: str) -> None:
        """Fail before training when the run's `steps` cannot hold this method's schedule."""

    def observe(self, params: Mapping[str, Any]) -> None:
        """Called after every optimiser step's backward pass of a gradual run (true gradients in `.grad`, before
        the pruned ones are zeroed): where a method accumulates what it scores by (movement)."""

    def check_params(self, params: Mapping[str, Any], path: str) -> None:
        """Fail before anything is trained when the prunable tensors cannot take this method's masks (shapes)."""

    def extra_prunable(self) -> tuple[str, ...]:
        """Regexes of tensors the method masks beyond the configured prunable set (the bias of a whole unit)."""
        return ()

    def row_columns(self) -> dict[str, Any]:
        return {f: getattr(self.hp, f) for f in self.row_fields}


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to the registry (a name registered twice is a programming error)."""
    if cls.name in METHODS:
        raise RuntimeError(f"pruning method {cls.name!r} is registered twice")
    METHODS[cls.name] = cls
    return cls


def get(name: str, path: str = "prune.method") -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"{path}: unknown method {name!r}; allowed: {', '.join(METHODS)}")
    return METHODS[name]


def owners(field: str) -> list[str]:
    """The methods that have a setting called `field`."""
    return [name for name, cls in METHODS.items() if field in {f.name for f in dataclasses.fields(cls.Hparams)}]


def hparams_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """Every method's settings as (name, type, field) for the flat `prune:` section: one entry per name.

    Methods may share a setting (the unstructured ones share `rate`, `schedule`, ...) when they agree on its
    default; choices (`Literal`s) are merged, and each method re-checks the value against its own choices.
    """
    merged: dict[str, tuple[Any, dataclasses.Field]] = {}
    for cls in METHODS.values():
        hints = typing.get_type_hints(cls.Hparams)
        for f in dataclasses.fields(cls.Hparams):
            tp = hints[f.name]
            if f.name not in merged:
                merged[f.name] = (tp, f)
                continue
            seen_tp, seen = merged[f.name]
            if _default(seen) != _default(f):
                raise RuntimeError(f"pruning methods disagree on the default of setting {f.name!r}")
            if typing.get_origin(seen_tp) is Literal and typing.get_origin(tp) is Literal:
                merged[f.name] = (Literal[tuple(dict.fromkeys((*typing.get_args(seen_tp), *typing.get_args(tp))))], seen)
            elif seen_tp != tp:
                raise RuntimeError(f"pruning methods disagree on the type of setting {f.name!r}")
    return [(name, tp, f) for name, (tp, f) in merged.items()]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def default_of(name: str) -> Any:
    return next(_default(f) for n, _, f in hparams_fields() if n == name)
