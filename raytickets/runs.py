"""Run identity and the disk layout of a trajectory's state (publishing and locking: `atomic`).

Runs are indexed by their settings (open_lth): identical settings give the same run id and directory, a
finished round (a directory renamed into place when complete) is never recomputed, and an interrupted
trajectory resumes at its first unfinished round. Three ids, each a hash of settings:

* `run_id`: the trajectory (every setting that changes a result, seed included; where it stops left out
  when the method shares rounds);
* `full_id`: the full-model run it starts from (task, model, data, training, metric convention, rewind step);
* `setting_id`: the curve it belongs to — every setting except the task, the seed, where it stops, and the
  values that only move its levels along the sparsity axis (`Method.axis_fields`, e.g. magnitude's rate).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .loader import to_dict

if TYPE_CHECKING:
    from .config import TicketConfig

# Settings that do not change a run's results, so enter no id.
NOT_IN_ID = {("data", "glue_dir"), ("data", "cache_dir"), ("train", "threads"), ("train", "eval_batch_size"),
             ("train", "progress")}
GENERIC_PRUNE = ("method", "rounds", "rewind_step", "min_gain", "include", "exclude", "baselines")
# Settings added after runs were first stored, whose default is what every run did before they existed. They
# enter an id only when set away from that default, so adding a field never renames the runs (and curves) of
# existing results roots: their rounds stay resumable and their rows stay one curve with new ones (open_lth
# leaves new hyperparameters out of its hashes the same way). A new field joins this list.
ID_ONLY_WHEN_SET = (("data", "corpus"), ("data", "mlm_probability"), ("data", "mlm_copies"), ("data", "doc_stride"),
                    ("data", "max_answer_length"), ("data", "n_best"), ("data", "squad_dir"), ("data", "squad_train"),
                    ("data", "squad_dev"), ("prune", "pattern"),
                    ("prune", "trajectory"), ("prune", "update_every"), ("prune", "initial_sparsity"),
                    ("prune", "gradual_begin"), ("prune", "gradual_end"),
                    ("train", "bucket_by_length"), ("train", "compile"), ("train", "mlm_warmup_steps"),
                    ("train", "mlm_warmup_layers"), ("train", "mlm_warmup_learning_rate"),
                    ("train", "distill"))
# ... except in an mlm run's id, which holds the head warm-up settings always: mlm rounds changed meaning when
# the MLM head began to be warmed up and carried over between rounds (issue 17), so an mlm round stored before
# must not be resumed as one of today's.
ID_ALWAYS_FOR_MLM = {("train", "mlm_warmup_steps"), ("train", "mlm_warmup_layers"),
                     ("train", "mlm_warmup_learning_rate")}


def settings(cfg: TicketConfig) -> dict:
    """A resolved config as plain data, with only the configured method's own pruning settings."""
    d = to_dict(cfg)
    d.pop("per_task", None)
    d.pop("keep_weights", None)
    for section, key in NOT_IN_ID:
        d[section].pop(key, None)
    for section, key in ID_ONLY_WHEN_SET:
        if cfg.task == "mlm" and (section, key) in ID_ALWAYS_FOR_MLM:
            continue
        if key in d[section] and d[section][key] == getattr(type(getattr(cfg, section))(), key):
            del d[section][key]
    own = set(GENERIC_PRUNE) | set(cfg.prune.method_impl().hp.__dataclass_fields__)
    d["prune"] = {k: v for k, v in d["prune"].items() if k in own}
    return d


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _without_stops(cfg: TicketConfig) -> dict:
    d = settings(cfg)
    method = cfg.prune.method_impl()
    d["prune"].pop("min_gain", None)  # where to stop: no round's result depends on it
    if method.shares_rounds:
        d["prune"].pop("rounds", None)
    for name in method.stop_fields:
        d["prune"].pop(name, None)
    return d


def run_id(cfg: TicketConfig) -> str:
    """Content id of a trajectory's settings: the same request always names the same run.

    When the method shares rounds (every round but the last lies on its schedule), the stopping rule is left
    out, so trajectories that differ only in where they stop share their rounds (round directories are named
    by index *and* target, so an off-schedule last round is stored apart). A search over target sparsities
    then never retrains a prefix another trial trained. `prune.min_gain` is always left out.
    """
    return digest(_without_stops(cfg))


def full_id(cfg: TicketConfig) -> str:
    """Id of the full-model run a trajectory starts from (pruning settings other than rewinding excluded)."""
    d = settings(cfg)
    d["train"].pop("distill", None)  # the full model is never distilled: it is the default teacher
    return digest({**{k: d[k] for k in ("task", "model", "metrics", "data", "train")},
                   "rewind_step": cfg.prune.rewind_step})


def setting(cfg: TicketConfig) -> dict:
    """The settings that make a curve: everything but the task, the seed, the stop and the axis values."""
    d = _without_stops(cfg)
    d.pop("task")
    d["train"].pop("seed")
    for name in cfg.prune.method_impl().axis_fields:
        d["prune"].pop(name, None)
    return d


def setting_id(cfg: TicketConfig) -> str:
    return digest(setting(cfg))


class RunLayout:
    """Where a trajectory's state lives: `root/runs/<run id>/round-NNN[-s<target>]` and `root/full/<full id>`."""

    def __init__(self, cfg: TicketConfig, root: str | Path):
        self.cfg = cfg
        self.method = cfg.prune.method_impl()
        self.id = run_id(cfg)
        self.dir = Path(root) / "runs" / self.id
        self.full_dir = Path(root) / "full" / full_id(cfg)

    def round_dir(self, r: int) -> Path:
        if self.method.shares_rounds:
            return self.dir / f"round-{r:03d}-s{self.method.level(self.method.target(r)):.6f}"
        return self.dir / f"round-{r:03d}"

    def done_rounds(self) -> list[int]:
        """This trajectory's finished rounds (another trajectory may have written them)."""
        return [r for r in range(1, self.method.num_rounds() + 1) if (self.round_dir(r) / "rows.json").is_file()]

    def full_done(self) -> bool:
        return (self.full_dir / "rows.json").is_file()
