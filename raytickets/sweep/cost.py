"""What a sweep will cost, printed by `--dry-run` before anything runs: trials, fine-tunes of each kind, optimiser
steps, and a wall-time estimate from one measured training step (or the user's `--steps-per-second`).

The counts are upper bounds: a trajectory that ends early (`prune.min_gain`), a trial ASHA stops, and full models
shared by trajectories of one task and seed (they read the same work dir) only make a sweep cheaper. Evaluation
and Ray Train's start-up per trial are not in the steps; the estimate adds the start-up as measured here.
"""

from __future__ import annotations

import functools
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from ..config import SweepConfig, TicketConfig, resolve
from ..errors import ConfigError

# Train examples of each GLUE task's official split (the nyu-mll/glue dataset card, "train" column), used when the
# data comes from the hub and so cannot be counted before it is downloaded.
GLUE_TRAIN_SIZES = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "qqp": 363846, "mnli": 392702,
                    "qnli": 104743, "rte": 2490, "wnli": 635}
# Ray Train start-up of one trial (TorchTrainer.fit: controller, worker group): ~25 s on 2 cores
# (../shared/RAY_NOTES.md "Each TorchTrainer.fit() starts a controller and several helper actors").
STARTUP_S = 25.0


@dataclass
class Cost:
    trials: int
    finetunes: Counter = field(default_factory=Counter)  # kind (full, ticket, a baseline, transfer) -> count
    steps: int = 0  # optimiser steps of every fine-tune, summed over trials (each worker takes them all)
    unknown: list[str] = field(default_factory=list)  # what could not be counted, in words
    note: str = ""  # how the trials were counted (a grid exactly; optuna at the template's values)

    def add(self, other: Cost) -> None:
        self.trials += other.trials
        self.finetunes.update(other.finetunes)
        self.steps += other.steps
        self.unknown += [u for u in other.unknown if u not in self.unknown]


def train_examples(ticket: TicketConfig) -> int | None:
    """Training examples one fine-tune of `ticket` reads: counted from the TSV directory, the official size for
    the hub, capped by `data.max_train_examples`; None where it cannot be known before the run (an MLM corpus)."""
    from ..tasks import get_task

    task = get_task(ticket.task)
    limit = ticket.data.max_train_examples
    if task.is_mlm:
        return limit
    if ticket.data.glue_dir:
        size = _rows(task.name, ticket.data.glue_dir)
    else:
        size = GLUE_TRAIN_SIZES.get(task.name)
    if size is None:
        return limit
    return min(size, limit) if limit else size


@functools.lru_cache(maxsize=None)
def _rows(task: str, glue_dir: str) -> int:
    """A TSV training split's rows, read once per task however many trials train it."""
    from ..tasks import get_task, load_split

    try:
        return len(load_split(get_task(task), "train", glue_dir))
    except (OSError, ConfigError) as e:
        raise ConfigError(f"data.glue_dir: cannot count {task}'s training rows: {e}") from None


def finetune_steps(ticket: TicketConfig, num_workers: int) -> int | None:
    """Optimiser steps of one fine-tune (each DDP worker takes every step on its share of a global batch)."""
    from ..train import total_steps

    ticket = resolve(ticket)
    if ticket.train.max_steps is not None:
        return ticket.train.max_steps
    n = train_examples(ticket)
    return None if n is None else total_steps(n, ticket.train, num_workers)


def trajectory_cost(ticket: TicketConfig, num_workers: int, rounds: int | None = None) -> Cost:
    """One trial's trajectory: the full model, then per round a ticket and each baseline (`rounds`: where it
    stops, e.g. a transfer target's own ticket; default: the method's schedule)."""
    rounds = ticket.prune.num_rounds() if rounds is None else rounds
    kinds = Counter({"full": 1, "ticket": rounds})
    for b in ticket.prune.baselines:
        kinds[b] += rounds
    return _priced(Cost(1, kinds), ticket, num_workers)


def _priced(cost: Cost, ticket: TicketConfig, num_workers: int) -> Cost:
    steps = finetune_steps(ticket, num_workers)
    if steps is None:
        cost.unknown.append(f"steps of {ticket.task} (epochs over a corpus of unknown size: set train.max_steps or "
                            "data.max_train_examples)")
    else:
        cost.steps = steps * sum(cost.finetunes.values())
    return cost


def ticket_sweep_cost(cfg: SweepConfig, jobs: list[dict] | None) -> Cost:
    """Every trial of a grid or optuna ticket sweep (or of a transfer sweep's `jobs`)."""
    from .tickets import grid_points
    from .trial import JOB_KEY, trial_ticket

    workers = cfg.resources.num_workers
    total = Cost(0)
    if jobs:
        for job in jobs:
            ticket = trial_ticket(cfg, {JOB_KEY: job})  # an own job's ticket stops at its level (transfer.overrides_of)
            if "own" in job:
                total.add(trajectory_cost(ticket, workers))
            else:  # the target's full model (shared by its jobs of one seed) and one fine-tune under the mask
                total.add(_priced(Cost(1, Counter({"full": 1, "transfer": 1})), ticket, workers))
        total.note = "the transfer jobs, each counted with its target's full model (shared ones cost less)"
        return total
    points = grid_points(cfg)
    if cfg.search.mode == "grid":
        for _ in range(cfg.search.num_samples):
            for params in points:
                total.add(trajectory_cost(trial_ticket(cfg, params), workers))
        total.note = "every grid point"
        return total
    # optuna samples the space as it goes: price each task of the space at the template's other values
    tasks = [p for p in points if set(p) <= {"task"}] or [{}]
    for i in range(cfg.search.num_samples):
        total.add(trajectory_cost(trial_ticket(cfg, tasks[i % len(tasks)]), workers))
    total.note = "optuna samples: each trial priced at the template's values (tasks taken in turn)"
    return total


def measure_steps_per_second(ticket: TicketConfig, threads: int, gpu: bool = False, budget_s: float = 10.0) -> float:
    """Optimiser steps per second of one worker on this machine: the config's architecture (randomly initialised:
    no weights need downloading), its batch size, rows padded to `max_seq_length` (real batches pad to their
    longest row, so short texts run faster), AdamW; after one warm-up step, up to 3 steps within `budget_s`."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig

    from ..models import HUB_SHORTCUTS, resolve_model

    ticket = resolve(ticket)
    name = resolve_model(ticket.model)
    if ticket.model == "bert-large" or name == HUB_SHORTCUTS["bert-large"]:
        arch = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    elif ticket.model == "bert-base" or name == HUB_SHORTCUTS["bert-base"]:
        arch = BertConfig()  # BertConfig's defaults are bert-base-uncased's shape
    else:
        try:
            arch = AutoConfig.from_pretrained(name)
        except OSError as e:
            raise ConfigError(f"--steps-per-second: cannot read {ticket.model!r}'s architecture to measure a step "
                              f"({e.__class__.__name__}); give --steps-per-second for your machines") from None
    device = "cuda" if gpu else "cpu"
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        torch.manual_seed(0)
        arch.num_labels = 2
        model = AutoModelForSequenceClassification.from_config(arch).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        b, t = ticket.train.batch_size, ticket.data.max_seq_length
        batch = {"input_ids": torch.randint(1000, 2000, (b, t)), "attention_mask": torch.ones(b, t, dtype=torch.long),
                 "labels": torch.randint(0, 2, (b,))}
        batch = {k: v.to(device) for k, v in batch.items()}
        done, started = -1, 0.0
        while done < 3 and (done < 1 or time.perf_counter() - started < budget_s):
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
            if gpu:
                torch.cuda.synchronize()
            done += 1
            if done == 0:
                started = time.perf_counter()
        return done / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)


def describe(cost: Cost, cfg: SweepConfig, steps_per_second: float | None, measured: bool) -> str:
    """The cost block of `--dry-run`."""
    kinds = ", ".join(f"{n} {k}" for k, n in cost.finetunes.items())
    lines = [f"cost: {cost.trials} trial(s), {sum(cost.finetunes.values())} fine-tune(s) ({kinds}); {cost.note}"]
    if cost.unknown:
        lines.append("  not counted: " + "; ".join(cost.unknown))
    lines.append(f"  training steps: {cost.steps:,} (each worker takes every step; an upper bound: early ends and "
                 "shared full models cost less)")
    if steps_per_second:
        r = cfg.resources
        at_once = max(1, min(cfg.search.max_concurrent_trials, cost.trials))
        busy = cost.steps / steps_per_second + cost.trials * STARTUP_S  # seconds of one trial slot, all trials
        unit, per_worker = ("GPU", r.gpus_per_worker) if r.use_gpu else ("CPU", r.cpus_per_worker)
        source = "measured here: one step of this config" if measured else "given"
        lines.append(f"  estimate: {_hours(busy / at_once)} wall with {at_once} trial(s) at once, "
                     f"{_hours(busy * r.num_workers * per_worker)} {unit}-time; {steps_per_second:.3g} steps/s per "
                     f"worker ({source}), {STARTUP_S:.0f} s of Ray Train start-up per trial, evaluation not counted")
    return "\n".join(lines)


def _hours(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(1, math.ceil(seconds / 60))} min"
    return f"{seconds / 3600:.1f} h"
