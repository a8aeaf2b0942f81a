"""Baselines behind a registry: branches hanging off each round (open_lth's `lottery/branch/registry.py`).

A baseline is one function `start(ctx) -> Start`: the mask it trains under and the weights (and step) it
starts from, at the ticket's exact target. Registering it is all it takes: the config's allowed
`prune.baselines`, the store's row kinds, the analysis' curve kinds, the report's styles and the CLI help
are read from `BASELINES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

    from .masks import Mask
    from .pruning import Method, PruneContext, Target


@dataclass
class RewindPoint:
    """Weights to start fine-tuning from (a whole model state: encoder and head) and the step they are of.

    Step 0 is the pre-trained encoder with the freshly initialised head; step k > 0 is the full model after
    k steps of its fine-tuning (late rewinding: Frankle et al., as open_lth rewinds), from which training
    continues the original schedule for the remaining steps.
    """

    state: dict[str, Any]
    step: int = 0


@dataclass
class Start:
    mask: Mask
    point: RewindPoint


@dataclass
class BaselineContext:
    """What a baseline may use: the round, the method, the ticket and its target, the rewind point, the full
    model's fine-tuned state, a seeded generator, and this baseline's own chain state (standard pruning)."""

    round: int
    seed: int  # the trajectory's training seed
    method: Method
    ticket: Mask
    target: Target
    rewind: RewindPoint
    initial: RewindPoint  # the pre-trained encoder with the fresh head, step 0
    full_state: dict[str, Any]
    model: Any
    params: dict[str, Any]
    generator: torch.Generator
    pruning_on: Callable[[dict[str, Any]], PruneContext]  # load weights into the model, give a PruneContext
    chain: dict[str, Any] = field(default_factory=dict)  # kept across rounds for chained baselines


@dataclass(frozen=True)
class Baseline:
    name: str
    summary: str
    style: tuple[str, str]  # (marker, colour) of its curve in the report
    start: Callable[[BaselineContext], Start]
    chain: bool = False  # its state carries from round to round (saved with the round, for resuming)


BASELINES: dict[str, Baseline] = {}


def baseline(name: str, summary: str, style: tuple[str, str], chain: bool = False):
    """Decorator registering `start(ctx) -> Start` as the baseline `name`."""

    def register(fn: Callable[[BaselineContext], Start]) -> Callable[[BaselineContext], Start]:
        if name in BASELINES:
            raise RuntimeError(f"baseline {name!r} is registered twice")
        BASELINES[name] = Baseline(name, summary, style, fn, chain)
        return fn

    return register


@baseline("random", "a random mask at the ticket's target, under the method's own rules", ("s", "tab:orange"))
def _random(ctx: BaselineContext) -> Start:
    return Start(ctx.method.random(ctx.pruning_on(ctx.rewind.state), ctx.target), ctx.rewind)


@baseline("reinit", "the ticket's mask on a freshly initialised encoder", ("v", "tab:green"))
def _reinit(ctx: BaselineContext) -> Start:
    import torch

    torch.manual_seed(ctx.seed + 7919)
    fresh = type(ctx.model)._from_config(ctx.model.config).state_dict()  # what AutoModel*.from_config builds
    state = {**ctx.initial.state, **{k: v for k, v in fresh.items() if k.startswith("bert.")}}
    return Start(ctx.ticket, RewindPoint(state, 0))


@baseline("shuffled", "the ticket's mask; rewind weights permuted within each prunable tensor", ("D", "tab:purple"))
def _shuffled(ctx: BaselineContext) -> Start:
    import torch

    state = dict(ctx.rewind.state)
    for name in ctx.params:
        t = state[f"bert.{name}"]
        state[f"bert.{name}"] = t.flatten()[torch.randperm(t.numel(), generator=ctx.generator)].view_as(t).clone()
    return Start(ctx.ticket, RewindPoint(state, ctx.rewind.step))


@baseline("oneshot", "the method's choice in one step from the full fine-tuned model, rewound", ("^", "tab:brown"))
def _oneshot(ctx: BaselineContext) -> Start:
    return Start(ctx.method.one_shot(ctx.pruning_on(ctx.full_state), ctx.target), ctx.rewind)


@baseline("standard", "standard pruning: its own chain, pruned from its previous round and never rewound",
          ("P", "tab:pink"), chain=True)
def _standard(ctx: BaselineContext) -> Start:
    from .masks import Mask

    state = ctx.chain.get("state", ctx.full_state)
    current = ctx.chain.get("mask") or Mask.ones_like(ctx.params)
    mask = ctx.method.select(ctx.pruning_on(state), current, ctx.target)
    return Start(mask, RewindPoint(state, 0))
