"""The sweep modes: what a sweep's trials are, behind one small interface and a registry (as pruning methods are).

`search.mode` names one. The sweep (`tuner.py`) validates the config through it, asks it for the stages one
command runs, the Tune trials of a stage, the job each trial runs on Ray Train workers and what that trial
reports, then lets it print the stage's result. It never branches on a mode's name.

A mode is registered under the entry-point group `raytickets.sweep_modes` in `pyproject.toml`, so a package
above the sweep (mtl) adds its mode without the sweep importing it, and a package outside raytickets can too
(open_lth's `lottery/branch/registry.py` and torchtune's recipe registry keep the same direction). The
ticket sweeps `grid` and `optuna` are `sweep/tickets.py`; `mtl` is `mtl/sweep.py`.
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import SweepConfig

GROUP = "raytickets.sweep_modes"


@dataclass
class TrialJob:
    """What one trial runs: a Ray Train worker loop and its config, then, optionally, what the trial reports."""

    loop: Callable[[dict], None] | None = None  # None: nothing to train (stored already, by a run before a kill)
    config: dict = field(default_factory=dict)
    result: Callable[[], dict] | None = None  # called after the workers are done: the trial's report to Tune


class SweepMode(abc.ABC):
    """What a mode says about its sweep; each method gets the validated `SweepConfig`. `state` is what `start`
    returned (a mode's plan, built once per stage before any cluster starts)."""

    name: str = ""
    summary: str = ""
    searcher: str | None = None  # "optuna": Tune's OptunaSearch samples the space; None: every trial of the grid
    uses_scheduler: bool = True  # whether `search.scheduler` (ASHA) may stop its trials early

    def reads_ticket(self, cfg: SweepConfig) -> bool:
        """Whether the trials train from the ticket template (`ticket:`), which is then validated."""
        return True

    def validate(self, cfg: SweepConfig) -> None:
        """One-line ConfigErrors for the fields this mode reads (and those it refuses)."""

    def other_command(self, data: dict) -> str | None:
        """Where a config file that is not a sweep's belongs, when it is this mode's command's (`raytickets mtl`):
        asked only after the file failed to load as a sweep, so a user gets the command instead of "unknown key"."""
        return None

    def absolute_paths(self, cfg: SweepConfig, absolute: Callable[[str], str]) -> None:
        """Make this mode's own local paths absolute in place (trials run in other directories)."""

    def stages(self, cfg: SweepConfig) -> list[SweepConfig]:
        """The sweeps one command runs, in order (`cfg` alone unless the mode needs a first stage)."""
        return [cfg]

    def start(self, cfg: SweepConfig) -> Any:
        """Every bad-input check that needs data on disk; the stage's plan (handed to the methods below)."""
        return None

    @abc.abstractmethod
    def space(self, cfg: SweepConfig, state: Any) -> dict:
        """Tune's param space: one trial per grid point (or per sample)."""

    def describe(self, cfg: SweepConfig, state: Any, space: dict) -> str:
        """The plan in words, printed before a run and by `--dry-run`."""
        return f"sweep {cfg.name}: mode {self.name}"

    def describe_stage(self, cfg: SweepConfig) -> str:
        """`--dry-run`'s line for a later stage, whose inputs the first stage writes."""
        return f"then sweep {cfg.name}: mode {self.name}"

    def cost(self, cfg: SweepConfig, state: Any) -> Any:
        """What the stage will cost (`cost.Cost`: trials, fine-tunes, steps), or None where the mode cannot say."""
        return None

    def prepare(self, cfg: SweepConfig, state: Any) -> None:
        """Driver-side work before the trials start (tokenise once for every trial)."""

    def samples(self, cfg: SweepConfig) -> int:
        """Tune's num_samples: samples of the space (optuna) or repeats of the whole grid."""
        return cfg.search.num_samples

    def group_of(self, cfg: SweepConfig) -> Callable[[dict], str] | None:
        """A trial's group for ASHA (trials are ranked only within their group), or None for one group."""
        return None

    @abc.abstractmethod
    def trial_job(self, cfg: SweepConfig, params: dict, trial: dict) -> TrialJob:
        """The job of the trial with Tune parameters `params`, run in its driver (a Ray task), not on the Tune
        driver. `trial`: {"id": Tune's trial id, "pg": the trial's placement group id or None}."""

    def finish(self, cfg: SweepConfig, state: Any, started: float) -> list[dict]:
        """Print the stage's result; return its summary rows."""
        return []


@functools.cache
def _registered() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def names() -> list[str]:
    return sorted(_registered())


def get(name: str, field: str = "search.mode") -> SweepMode:
    """The registered mode `name`; a one-line ConfigError naming the allowed ones otherwise."""
    found = _registered().get(name)
    if found is None:
        allowed = ", ".join(names()) or f"none registered (entry points {GROUP!r}: pip install -e . first)"
        raise ConfigError(f"{field}: unknown mode {name!r}; allowed: {allowed}")
    mode = found.load()
    if not isinstance(mode, SweepMode):
        raise ConfigError(f"{field}: {name!r} is registered as {found.value}, which is not a SweepMode")
    return mode


def other_command(data: dict) -> str | None:
    """The first registered mode's word on a config file that did not load as a sweep (None: none claims it)."""
    for name in names():
        try:
            hint = get(name).other_command(data)
        except ConfigError:
            continue
        if hint:
            return hint
    return None


def of(cfg: SweepConfig) -> SweepMode:
    return get(cfg.search.mode)
