"""What the unstructured methods share: a sparsity schedule, and pruning the lowest-scored survivors.

Not a method itself. Chen et al. 2020 (IMP on BERT) prune weights until the requested sparsity is reached
exactly; every unstructured method here does the same with its own score (|w| for magnitude, |w·∂L/∂w|
for taylor, |w|·‖x‖ for activation, a random permutation for random).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Literal, Mapping

import torch

from ..errors import ConfigError
from ..masks import Mask
from .registry import Method, PruneContext

SCOPES = ("global", "per_tensor")


def check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field}: {value!r}; allowed: {', '.join(allowed)}")


def check_fraction(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{field}: {value!r} is not a fraction in [0, 1]")
    return float(value)


@dataclass
class ScheduleHparams:
    """An IMP schedule: `rate` of the remaining weights per round (or of the original count), globally or
    per tensor, until `rounds` rounds or `target_sparsity` (the last round prunes exactly to it)."""

    schedule: Literal["remaining", "original"] = "remaining"
    scope: Literal["global", "per_tensor"] = "global"
    rate: float = 0.1
    target_sparsity: float | None = None
    # "N:M" semi-structured tickets (pruning/nm.py): at most N of every M consecutive input weights of a row
    # survive; the trajectory ends at 1 - N/M (target_sparsity null or equal to it), every round above the floor
    pattern: str | None = None
    # imp: rounds of fine-tune -> prune -> rewind (tickets.py). gradual: one fine-tuning run from the pre-trained
    # weights whose mask is raised every `update_every` steps on Zhu & Gupta's cubic curve from
    # `initial_sparsity` to `target_sparsity`, between `gradual_begin` and `gradual_end` (fractions of the run's
    # steps), no rewinding (gradual.py). 0.1 and 0.8: Sanh et al.'s movement pruning runs (one LR-warmup's worth
    # of steps dense, the last two at the target; see gradual.py for the citation).
    trajectory: Literal["imp", "gradual"] = "imp"
    update_every: int = 10
    initial_sparsity: float = 0.0
    gradual_begin: float = 0.1
    gradual_end: float = 0.8

    def validate(self, path: str) -> None:
        from .nm import parse_pattern, pattern_sparsity  # nm builds on this module's helpers

        self.validate_gradual(path)

        if not 0 < self.rate < 1:
            raise ConfigError(f"{path}.rate: {self.rate} must be in (0, 1)")
        if self.target_sparsity is not None and not 0 < self.target_sparsity < 1:
            raise ConfigError(f"{path}.target_sparsity: {self.target_sparsity} must be in (0, 1)")
        nm = parse_pattern(self.pattern, f"{path}.pattern")
        if nm is not None and self.target_sparsity is not None and \
                abs(self.target_sparsity - pattern_sparsity(*nm)) > 1e-9:
            raise ConfigError(f"{path}.target_sparsity: {self.target_sparsity} with pattern {self.pattern!r}, which is "
                              f"{pattern_sparsity(*nm):.6g} sparse by construction; allowed: null or "
                              f"{pattern_sparsity(*nm):.6g}")
        if nm is not None and getattr(self, "scope", None) == "per_row":
            raise ConfigError(f"{path}.scope: 'per_row' with pattern {self.pattern!r}; allowed with a pattern: "
                              f"global, per_tensor (the pattern already fixes every row)")


    def validate_gradual(self, path: str) -> None:
        defaults = ScheduleHparams()
        if self.trajectory == "imp":  # a gradual setting on an IMP trajectory would be silently ignored
            for name in GRADUAL_FIELDS:
                if getattr(self, name) != getattr(defaults, name):
                    raise ConfigError(f"{path}.{name}: {getattr(self, name)!r} is a setting of trajectory 'gradual'; "
                                      f"trajectory is 'imp' (set prune.trajectory: gradual)")
            return
        if not isinstance(self.update_every, int) or self.update_every < 1:
            raise ConfigError(f"{path}.update_every: {self.update_every!r} must be a positive number of steps")
        if self.target_sparsity is None and self.pattern is None:
            raise ConfigError(f"{path}.target_sparsity: null; trajectory 'gradual' needs the sparsity it ends at, "
                              f"in (0, 1)")
        end = self.target_sparsity if self.target_sparsity is not None else 1.0
        if not 0 <= self.initial_sparsity < end:
            raise ConfigError(f"{path}.initial_sparsity: {self.initial_sparsity} must be in [0, target_sparsity)")
        if not 0 <= self.gradual_begin < self.gradual_end <= 1:
            raise ConfigError(f"{path}.gradual_begin: {self.gradual_begin}, gradual_end: {self.gradual_end}; allowed: "
                              f"fractions of the run's steps with 0 <= gradual_begin < gradual_end <= 1")


GRADUAL_FIELDS = ("update_every", "initial_sparsity", "gradual_begin", "gradual_end")


def schedule_sparsity(schedule: str, rate: float, round: int) -> float:
    # remaining: prune p of what is left each round; original: p of the original count (BERT-Tickets' code).
    return 1 - (1 - rate) ** round if schedule == "remaining" else min(rate * round, 1.0)


class ScheduleMethod(Method):
    """An unstructured method on a sparsity schedule. Every round but the last lies on the schedule, so
    trajectories that differ only in where they stop share their rounds."""

    shares_rounds: ClassVar[bool] = True
    stop_fields: ClassVar[tuple[str, ...]] = ("target_sparsity",)
    axis_fields: ClassVar[tuple[str, ...]] = ("rate",)
    row_fields: ClassVar[tuple[str, ...]] = ("schedule", "scope", "rate", "target_sparsity")

    def __init__(self, hparams, rounds: int | None):
        from .nm import parse_pattern, pattern_sparsity

        super().__init__(hparams, rounds)
        self.pattern = parse_pattern(getattr(hparams, "pattern", None))
        if self.pattern is not None and hparams.target_sparsity is None:  # the pattern says where it ends
            self.hp = replace(hparams, target_sparsity=pattern_sparsity(*self.pattern))
        if self.gradual:  # one run per target: the target changes its result (run id), trajectories at several
            self.shares_rounds, self.stop_fields = False, ()  # targets make one curve (setting id)
            self.axis_fields = ("rate", "target_sparsity")

    @property
    def gradual(self) -> bool:
        return self.hp.trajectory == "gradual"

    def check_steps(self, steps: int, path: str) -> None:
        if self.gradual and self.hp.update_every > steps:
            raise ConfigError(f"{path}.update_every: {self.hp.update_every} is beyond the {steps} training steps of "
                              f"the run; allowed: 1 to {steps}")

    def check_params(self, params: Mapping[str, torch.Tensor], path: str) -> None:
        if self.pattern is not None:
            from .nm import check_divides

            check_divides({n: tuple(p.shape) for n, p in params.items()}, *self.pattern, f"{path}.pattern")

    def validate(self, path: str) -> None:
        hp = self.hp
        if self.gradual:
            if self.rounds not in (None, 1):
                raise ConfigError(f"{path}.rounds: {self.rounds} with trajectory 'gradual' (one fine-tuning run); "
                                  f"allowed: null")
            return
        if self.rounds is None and hp.target_sparsity is None:
            raise ConfigError(f"{path}.rounds: set rounds or target_sparsity (both are null)")
        if hp.schedule == "original" and self.rounds is not None and hp.target_sparsity is None:
            if self.rounds * hp.rate >= 1:
                raise ConfigError(
                    f"{path}.rounds: {self.rounds} rounds at rate {hp.rate} of the original count would prune"
                    f" {self.rounds * hp.rate:.0%}; with schedule 'original' rounds * rate must be < 1"
                )

    def num_rounds(self) -> int:
        """Rounds of pruning; with a target sparsity, enough rounds of the schedule to reach it."""
        hp = self.hp
        if self.gradual:  # the one fine-tuning run, recorded as round 1
            return 1
        if hp.target_sparsity is None:
            return int(self.rounds)
        r = 1
        while schedule_sparsity(hp.schedule, hp.rate, r) < hp.target_sparsity - 1e-12:
            r += 1
        return min(r, self.rounds) if self.rounds else r

    def target(self, r: int) -> float:
        """Sparsity after `r` rounds; the last round stops exactly at the target."""
        hp = self.hp
        s = schedule_sparsity(hp.schedule, hp.rate, r)
        if hp.target_sparsity is not None and (s > hp.target_sparsity or r == self.num_rounds()):
            return hp.target_sparsity
        return s

    def scores(self, ctx: PruneContext) -> Mapping[str, torch.Tensor]:
        """Per prunable tensor, how much each weight matters (the lowest-scored survivors are pruned)."""
        raise NotImplementedError

    def select(self, ctx: PruneContext, current: Mask, target: float) -> Mask:
        current.validate(ctx.params)
        return self.prune(current, target, self.scores(ctx), largest=getattr(self.hp, "losing", False))

    def prune(self, current: Mask, target: float, scores: Mapping[str, torch.Tensor], largest: bool = False) -> Mask:
        """The lowest-scored survivors pruned to `target`, under the N:M floor when a pattern is set."""
        if self.pattern is None:
            return prune_lowest(current, target, self.hp.scope, scores, largest=largest)
        from .nm import pattern_prune

        return pattern_prune(current, target, self.hp.scope, scores, *self.pattern, largest=largest)

    def random(self, ctx: PruneContext, target: float) -> Mask:
        if self.pattern is not None:  # uniform scores under the same floor: a random N:M mask
            return self.prune(Mask.ones_like(ctx.params), target, random_scores(ctx))
        return random_prune(Mask.ones_like(ctx.params), target, self.hp.scope, ctx.generator)


def random_scores(ctx: PruneContext) -> dict[str, torch.Tensor]:
    return {n: torch.rand(tuple(p.shape), generator=ctx.generator) for n, p in ctx.params.items()}


def smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool selector of exactly the k smallest scores; ties at the threshold go to the lowest indices.

    kthvalue + a tie fix instead of a full sort: linear time and no int64 index array the size of the
    model, and the choice does not depend on how topk happens to order equal values.
    """
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    if k <= 0:
        return chosen
    if k >= scores.numel():
        return ~chosen
    threshold = torch.kthvalue(scores, k).values
    chosen = scores < threshold
    ties = (scores == threshold).nonzero().squeeze(1)
    chosen[ties[: k - int(chosen.sum())]] = True
    return chosen


def _check_reachable(keep: torch.Tensor, target_pruned: int, where: str) -> int:
    """How many more survivors to prune; pruned weights are never regrown, so a lower target is an error."""
    already = keep.numel() - int(keep.sum())
    if target_pruned < already:
        raise ConfigError(
            f"target_sparsity: {target_pruned / keep.numel():.6g} for {where} is below the mask's current "
            f"sparsity {already / keep.numel():.6g}; pruned weights are never regrown"
        )
    return target_pruned - already


def prune_each(mask: Mask, target: float, scope: str, drop: Callable[[torch.Tensor, int, list[str]], torch.Tensor]) -> Mask:
    """Apply `drop(flat_keep, count, names) -> which survivors to prune` globally or tensor by tensor.

    `drop` returns a bool vector over the survivors (in flat order) selecting exactly `count` of them.
    """
    groups = [[name] for name in mask.names] if scope == "per_tensor" else [mask.names]
    tensors = {}
    for names in groups:
        keep = torch.cat([mask.tensors[n].reshape(-1) for n in names])
        where = repr(names[0]) if scope == "per_tensor" else "all tensors"
        count = _check_reachable(keep, round(target * keep.numel()), where)
        new_keep = keep.clone()
        new_keep[keep] = ~drop(keep, count, names)
        pieces = torch.split(new_keep, [mask.tensors[n].numel() for n in names])
        tensors.update({n: piece.reshape(mask.tensors[n].shape) for n, piece in zip(names, pieces)})
    return Mask({n: tensors[n] for n in mask.names})


def _flat_scores(name: str, score: torch.Tensor, largest: bool) -> torch.Tensor:
    flat = score.detach().to("cpu", torch.float32).reshape(-1)
    if bool(torch.isnan(flat).any()):
        raise ConfigError(f"weights: tensor {name!r} has NaN scores; they cannot be ranked (did training diverge?)")
    return -flat if largest else flat


def prune_lowest(mask: Mask, target_sparsity: float, scope: str, scores: Mapping[str, torch.Tensor],
                 largest: bool = False) -> Mask:
    """Prune the lowest-scored surviving weights until sparsity == round(target * total) / total exactly.

    Already-pruned weights stay pruned and are not ranked. `global` ranks all tensors together (Chen et al.);
    `per_tensor` brings every tensor to round(target * numel) on its own. `largest` prunes the highest instead.
    """
    target = check_fraction("target_sparsity", target_sparsity)
    check_choice("scope", scope, SCOPES)

    def drop(keep: torch.Tensor, count: int, names: list[str]) -> torch.Tensor:
        flat = torch.cat([_flat_scores(n, scores[n], largest) for n in names])
        return smallest(flat[keep], count)

    return prune_each(mask, target, scope, drop)


def random_prune(
    mask: Mask, target_sparsity: float, scope: str = "global", generator: torch.Generator | None = None
) -> Mask:
    """Prune survivors chosen uniformly without replacement, to exactly the count `prune_lowest` reaches.

    The random baseline must match the ticket's sparsity exactly; sampling with replacement would prune less.
    """
    target = check_fraction("target_sparsity", target_sparsity)
    check_choice("scope", scope, SCOPES)
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator: {type(generator).__name__}; pass a seeded torch.Generator")

    def drop(keep: torch.Tensor, count: int, names: list[str]) -> torch.Tensor:
        survivors = int(keep.sum())
        chosen = torch.zeros(survivors, dtype=torch.bool)
        chosen[torch.randperm(survivors, generator=generator)[:count]] = True
        return chosen

    return prune_each(mask, target, scope, drop)
