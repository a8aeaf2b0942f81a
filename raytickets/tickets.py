"""One ticket trajectory: fine-tune → prune → rewind, round after round, with baselines at each sparsity.

Round 0 fine-tunes the full model (its score is the bar a ticket must match, and its weights are what
round 1 prunes). Round r ≥ 1 prunes the previous round's fine-tuned weights to the schedule's sparsity,
rewinds the survivors to the rewind point (pre-trained weights, or the full model's weights after
`rewind_step` steps) with the same freshly initialised task head, and fine-tunes: its dev metric is the
round's *ticket score*. Baselines are branches hanging off a round (open_lth's word), at the ticket's
exact sparsity.

Runs are indexed by their settings (open_lth): identical settings give the same run id and directory,
a finished round (a directory renamed into place when complete) is never recomputed, and an interrupted
trajectory resumes at its first unfinished round. The full-model run of a (task, model, seed, training,
data, rewind step) is computed once and shared by every trajectory that needs it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from . import pruning
from .config import TicketConfig, to_dict
from .errors import ConfigError
from .masks import Mask
from .models import DEFAULT_INCLUDE, encoder, encoder_state, load_model, load_tokenizer, prunable_parameters, resolve_model, snapshot
from .tasks import TaskSpec, collate, get_task, tokenized_splits, write_dir_atomically
from .train import batches, finetune, world

# Settings that do not change a run's results, so do not enter its id.
_NOT_IN_ID = {("data", "glue_dir"), ("data", "cache_dir"), ("train", "threads"), ("train", "eval_batch_size")}

RoundCallback = Callable[[int, list[dict], bool], None]  # (round, rows, resumed from disk)


def _settings(cfg: TicketConfig, keep: Iterable[str] | None = None) -> dict:
    d = to_dict(cfg)
    for section, key in _NOT_IN_ID:
        d[section].pop(key, None)
    if keep is not None:
        d = {k: v for k, v in d.items() if k in keep}
    return d


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_id(cfg: TicketConfig) -> str:
    """Content id of a trajectory's settings: the same request always names the same run.

    The early stop past the phase transition (`prune.min_gain`) is left out, and for magnitude pruning
    so is the stopping rule (rounds, target sparsity): every round but the
    last lies on the schedule, so trajectories that differ only in where they stop share their rounds
    (round directories are named by index *and* target sparsity, so an off-schedule last round is
    stored apart). A search over target sparsities then never retrains a prefix another trial trained.
    """
    d = _settings(cfg)
    d["prune"].pop("min_gain", None)  # where to stop, like rounds: no round's result depends on it
    if cfg.prune.method == "magnitude":
        d["prune"].pop("rounds", None)
        d["prune"].pop("target_sparsity", None)
    return _hash(d)


def full_id(cfg: TicketConfig) -> str:
    """Id of the full-model run a trajectory starts from (pruning settings other than rewinding excluded)."""
    d = _settings(cfg, keep=("task", "model", "data", "train"))
    d["rewind_step"] = cfg.prune.rewind_step
    return _hash(d)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def _agree(value):
    """Rank 0's value on every rank (decisions that depend on the file system must not diverge)."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value) -> list:
    """`value` from every rank, in rank order."""
    if world()[1] == 1:
        return [value]
    out = [None] * world()[1]
    dist.all_gather_object(out, value)
    return out


def _sync_mask(mask: Mask) -> Mask:
    """Make every DDP rank hold rank 0's mask (importance scores differ across data shards)."""
    if world()[1] == 1:
        return mask
    tensors = {}
    for name, t in mask.tensors.items():
        buf = t.to(torch.uint8).clone()
        dist.broadcast(buf, src=0)
        tensors[name] = buf.bool()
    return Mask(tensors)


@dataclass
class Prepared:
    """What every round of a trajectory needs, loaded once."""

    task: TaskSpec
    train: object
    dev: dict
    collate: Callable
    model: torch.nn.Module
    pretrained: dict[str, torch.Tensor]  # encoder weights as loaded: the default rewind point
    head: dict[str, torch.Tensor]  # the freshly initialised task head every round starts from


def tokenize(cfg: TicketConfig, tokenizer) -> dict:
    """The task's tokenised splits under the config's data settings (read from the cache once written)."""
    d = cfg.data
    return tokenized_splits(
        get_task(cfg.task), tokenizer, resolve_model(cfg.model), d.glue_dir, max_seq_length=d.max_seq_length,
        max_train_examples=d.max_train_examples, max_dev_examples=d.max_dev_examples, seed=d.seed,
        cache_dir=d.cache_dir,
    )


def prepare(cfg: TicketConfig, device: torch.device | str = "cpu") -> Prepared:
    task = get_task(cfg.task)
    tokenizer = load_tokenizer(cfg.model)
    splits = tokenize(cfg, tokenizer)
    model = load_model(cfg.model, task.num_labels, seed=cfg.train.seed).to(device)
    head = {n: p for n, p in model.named_parameters() if not n.startswith("bert.")}
    return Prepared(
        task=task,
        train=splits["train"],
        dev={s: splits[s] for s in task.dev_splits},
        collate=collate(tokenizer),
        model=model,
        pretrained=encoder_state(model),
        head=snapshot(head),
    )


def rewind(model: torch.nn.Module, encoder_weights: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> None:
    """Reset the encoder to a rewind point and the task head to its initial values (copies, in place)."""
    encoder(model).load_state_dict(encoder_weights)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in head.items():
            params[name].copy_(value)


def prunable_of(cfg: TicketConfig, model) -> dict[str, torch.nn.Parameter]:
    """The tensors a trajectory prunes: `prune.include` (default: Chen et al.'s set) less `prune.exclude`."""
    return prunable_parameters(model, cfg.prune.include or DEFAULT_INCLUDE, cfg.prune.exclude)


class Trajectory:
    """A ticket trajectory on disk under `root/runs/<run id>`, sharing full-model runs under `root/full`."""

    def __init__(self, cfg: TicketConfig, root: str | Path, device: torch.device | str = "cpu"):
        cfg.validate()
        self.cfg = cfg
        self.root = Path(root)
        self.id = run_id(cfg)
        self.dir = self.root / "runs" / self.id
        self.full_dir = self.root / "full" / full_id(cfg)
        self.device = torch.device(device)
        self.rank = world()[0]
        self.replica_mask_ids: dict[int, list[str]] = {}  # round -> every rank's mask id

    # -- state on disk ------------------------------------------------------------------------------
    def round_dir(self, r: int) -> Path:
        if self.cfg.prune.method == "magnitude":
            return self.dir / f"round-{r:03d}-s{self.cfg.prune.sparsity_at(r):.6f}"
        return self.dir / f"round-{r:03d}"

    def done_rounds(self) -> list[int]:
        """This trajectory's finished rounds (another trajectory may have written them)."""
        n = self.cfg.prune.num_rounds()
        return [r for r in range(1, n + 1) if (self.round_dir(r) / "rows.json").is_file()]

    def rows(self) -> list[dict]:
        """Every row written so far (full model first), in round order."""
        out = self._full_rows() if (self.full_dir / "rows.json").is_file() else []
        for r in self.done_rounds():
            out += self._round_rows(r)
        return out

    def _round_rows(self, r: int) -> list[dict]:
        # A shared round may have been written by a trajectory with another stopping rule.
        return [{**row, **self._own()} for row in json.loads((self.round_dir(r) / "rows.json").read_text())]

    def _full_rows(self) -> list[dict]:
        # The full-model run may have been computed by another trajectory: its row must name this one.
        return [{**row, **self._own()} for row in json.loads((self.full_dir / "rows.json").read_text())]

    # -- the trajectory ----------------------------------------------------------------------------
    def run(self, on_round: RoundCallback | None = None) -> list[dict]:
        """Run (or resume) every round, or up to the phase transition (`prune.min_gain`); `on_round` sees each
        round's rows; returns the rows of the rounds walked (full model first)."""
        cfg = self.cfg
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, default=str))
        self._check_structured()
        prep = prepare(cfg, self.device)
        self._check_rewind_step(prep)
        params = prunable_of(cfg, prep.model)
        cached = (self.full_dir / "rows.json").is_file()
        rows0, full_state, rewind_point = self._full_model(prep, params)
        if on_round:
            on_round(0, rows0, cached)
        full_metric = rows0[0]["metric"]
        mask = Mask.ones_like(params)
        state = full_state  # the fine-tuned weights the next round prunes
        n_rounds = cfg.prune.num_rounds()
        on_disk = set(self.done_rounds())  # finished before this run (by it, or a trajectory sharing rounds)
        walked = rows0
        for r in range(1, n_rounds + 1):
            if r in on_disk:
                rows, resumed = self._round_rows(r), True
            else:
                if r - 1 in on_disk:  # go on from a round read from disk: load its mask and weights
                    mask = Mask.load(self.round_dir(r - 1) / "mask.safetensors")
                    state = self._weights_after(r - 1, prep, params, mask, rewind_point)
                mask, state, rows = self._round(r, prep, params, mask, state, full_state, rewind_point, full_metric)
                resumed = False
            walked = walked + rows
            if on_round:
                on_round(r, rows, resumed)
            if self.past_transition(rows):
                break
        return walked

    def past_transition(self, rows: list[dict]) -> bool:
        """Whether a round's ticket fell below the full model by more than `prune.min_gain` allows."""
        min_gain = self.cfg.prune.min_gain
        ticket = next(row for row in rows if row["kind"] == "ticket")
        return min_gain is not None and ticket["metric"] - ticket["full_metric"] < min_gain

    def _weights_after(self, r: int, prep: Prepared, params, mask: Mask, rewind_point) -> dict:
        """Round r's fine-tuned weights: saved, or trained again from its mask when a trajectory that
        went further has already removed them (only the latest round's weights are kept)."""
        path = self.round_dir(r) / "weights.safetensors"
        if path.is_file():
            return load_file(str(path))
        rewind(prep.model, rewind_point, prep.head)
        finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, self.cfg.train, mask, params)
        return contiguous(prep.model.state_dict())

    def _check_rewind_step(self, prep: Prepared) -> None:
        from .train import total_steps

        steps = total_steps(len(prep.train), self.cfg.train, world()[1])
        if self.cfg.prune.rewind_step > steps:
            raise ConfigError(f"prune.rewind_step: {self.cfg.prune.rewind_step} is beyond the {steps} training steps")

    def _check_structured(self) -> None:
        """Reject fractions the model cannot take (every head of a layer) before anything is loaded or trained."""
        if self.cfg.prune.method != "structured":
            return
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(resolve_model(self.cfg.model))
        L, H, I = c.num_hidden_layers, c.num_attention_heads, c.intermediate_size
        blank = pruning.StructuredImportance(torch.zeros(L, H), torch.zeros(L, I), torch.zeros(L))
        heads, ffn = self._target(self.cfg.prune.num_rounds())  # the last round asks for the most
        try:
            pruning.select_structured(blank, heads, ffn, granularity=self.cfg.prune.ffn_granularity)
        except ConfigError as e:
            raise ConfigError(f"prune.{e}") from None

    def _full_model(self, prep: Prepared, params) -> tuple[list[dict], dict, dict]:
        """Round 0: fine-tune the full model once per (task, model, seed, training, data, rewind step)."""
        with _exclusive(self.full_dir.parent / f"{self.full_dir.name}.lock", self.rank == 0):
            return self._full_model_locked(prep, params)

    def _full_model_locked(self, prep: Prepared, params) -> tuple[list[dict], dict, dict]:
        cfg = self.cfg
        if _agree(not (self.full_dir / "rows.json").is_file()):  # all ranks train together, or none
            started = _now()
            rewind(prep.model, prep.pretrained, prep.head)
            k = cfg.prune.rewind_step
            res = finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, cfg.train, capture_step=k)
            row = self._row(0, "full", 0.0, res, None, started, None)
            if self.rank == 0:

                def write(d: Path) -> None:
                    save_file(contiguous(prep.model.state_dict()), str(d / "weights.safetensors"))
                    if k > 0:
                        save_file(contiguous(res.rewind_state), str(d / "rewind.safetensors"))
                    (d / "rows.json").write_text(json.dumps([row], default=str))

                write_dir_atomically(self.full_dir, write)
            _barrier()
        rows = self._full_rows()
        state = load_file(str(self.full_dir / "weights.safetensors"))
        if cfg.prune.rewind_step > 0:
            rewind_point = load_file(str(self.full_dir / "rewind.safetensors"))
        else:
            rewind_point = prep.pretrained
        return rows, state, rewind_point

    def _round(self, r, prep, params, mask, state, full_state, rewind_point, full_metric):
        cfg = self.cfg
        started = _now()
        prep.model.load_state_dict(state)
        target = self._target(r)
        new_mask = _sync_mask(self._prune(r, prep, params, mask, target))
        self.replica_mask_ids[r] = _gather(new_mask.mask_id)
        if len(set(self.replica_mask_ids[r])) != 1:  # DDP replicas must train the same subnetwork
            raise RuntimeError(f"round {r}: ranks hold different masks {self.replica_mask_ids[r]}")
        sparsity = new_mask.sparsity()
        rewind(prep.model, rewind_point, prep.head)
        res = finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, cfg.train, new_mask, params)
        rows = [self._row(r, "ticket", sparsity, res, new_mask, started, full_metric)]
        weights = contiguous(prep.model.state_dict())
        masks = {new_mask.mask_id: new_mask}
        for kind in cfg.prune.baselines:
            row, mask = self._baseline(kind, r, prep, params, new_mask, target, state, full_state, rewind_point, full_metric)
            rows.append(row)
            masks[mask.mask_id] = mask
        if self.rank == 0:

            def write(d: Path) -> None:
                new_mask.save(d / "mask.safetensors")
                for mask_id, mask in masks.items():
                    if mask_id != new_mask.mask_id:
                        mask.save(d / f"mask-{mask_id}.safetensors")
                save_file(weights, str(d / "weights.safetensors"))
                (d / "rows.json").write_text(json.dumps(rows, default=str))

            write_dir_atomically(self.round_dir(r), write)
            old = self.round_dir(r - 1) / "weights.safetensors"
            if r > 1 and old.is_file():
                old.unlink()  # only the latest round's weights are needed to go on
        _barrier()
        return new_mask, weights, rows

    def _target(self, r: int) -> float | tuple[float, float]:
        p = self.cfg.prune
        if p.method == "magnitude":
            return p.sparsity_at(r)
        n = p.num_rounds()  # structured: approach the fractions linearly over the rounds
        return (p.head_fraction * r / n, p.ffn_fraction * r / n)

    def _prune(self, r, prep, params, mask: Mask, target) -> Mask:
        p = self.cfg.prune
        if p.method == "magnitude":
            return pruning.magnitude_prune(params, mask, target, scope=p.scope, largest=p.losing)
        importance = pruning.structured_importance(prep.model, self._importance_batches(prep), p.normalize_importance)
        heads, neurons, layers = pruning.select_structured(
            importance, target[0], target[1], granularity=p.ffn_granularity, losing=p.losing, current=mask
        )
        return pruning.structured_mask(params, prep.model.config, heads, neurons, layers)

    def _importance_batches(self, prep: Prepared):
        # The first importance_batches batches of epoch 0's order (structured_importance moves them to the model).
        train = self.cfg.train
        return itertools.islice(batches(prep.train, prep.collate, train.batch_size, train.seed, 0, True),
                                self.cfg.prune.importance_batches)

    def _baseline(self, kind, r, prep, params, ticket: Mask, target, state, full_state, rewind_point, full_metric):
        """One baseline at the ticket's exact sparsity (see the module docstring)."""
        started = _now()
        mask, start_from = self.baseline_start(kind, r, prep, params, ticket, target, full_state, rewind_point)
        mask = _sync_mask(mask)
        if start_from is None:
            prep.model.load_state_dict(state)
        else:
            rewind(prep.model, start_from, prep.head)
        res = finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, self.cfg.train, mask, params)
        return self._row(r, kind, mask.sparsity(), res, mask, started, full_metric), mask

    def baseline_start(self, kind, r, prep, params, ticket: Mask, target, full_state, rewind_point):
        """(mask, encoder weights to start from) of one baseline; None = the previous round's fine-tuned model.

        Magnitude baselines prune to the schedule's `target` with the ticket's scope, not to the ticket's
        overall sparsity: per tensor, round(s·n) of the overall s differs from the ticket's count by a weight.
        """
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.train.seed * 1_000 + r)
        mask, start_from = ticket, rewind_point
        if kind == "random":
            if cfg.prune.method == "structured":
                h, n, layers = pruning.random_structured(prep.model.config, target[0], target[1], cfg.prune.ffn_granularity, gen)
                mask = pruning.structured_mask(params, prep.model.config, h, n, layers)
            else:
                mask = pruning.random_prune(Mask.ones_like(params), target, cfg.prune.scope, gen)
        elif kind == "reinit":
            start_from = _fresh_encoder(prep.model, cfg.train.seed + 7919)
        elif kind == "shuffled":
            start_from = dict(rewind_point)
            for name in params:  # values permuted within each prunable tensor
                t = rewind_point[name]
                start_from[name] = t.flatten()[torch.randperm(t.numel(), generator=gen)].view_as(t).clone()
        elif kind == "oneshot":
            full_params = {n: full_state[f"bert.{n}"] for n in params}
            level = target if cfg.prune.method == "magnitude" else ticket.sparsity()
            mask = pruning.magnitude_prune(full_params, Mask.ones_like(params), level, scope=cfg.prune.scope)
        elif kind == "standard":  # no rewinding: prune the previous round's fine-tuned model, keep training
            start_from = None
        return mask, start_from

    def mask_for(self, row: dict) -> Mask:
        """The mask a stored row was trained under (ticket, baseline or transferred ticket)."""
        if row["kind"] == "transfer":
            return self._transfer_mask
        d = self.round_dir(row["round"])
        ticket = Mask.load(d / "mask.safetensors")
        return ticket if ticket.mask_id == row["mask_id"] else Mask.load(d / f"mask-{row['mask_id']}.safetensors")

    def transfer(self, mask: Mask, source_task: str, source_mask_id: str, on_round: RoundCallback | None = None) -> list[dict]:
        """Fine-tune a ticket found on `source_task` on this trajectory's task, from the rewind point."""
        prep = prepare(self.cfg, self.device)
        params = prunable_of(self.cfg, prep.model)
        mask.validate(params)
        cached = (self.full_dir / "rows.json").is_file()
        rows0, _, rewind_point = self._full_model(prep, params)
        if on_round:
            on_round(0, rows0, cached)
        started = _now()
        rewind(prep.model, rewind_point, prep.head)
        res = finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, self.cfg.train, mask, params)
        row = self._row(1, "transfer", mask.sparsity(), res, mask, started, rows0[0]["metric"])
        row.update(source_task=source_task, source_mask_id=source_mask_id)
        self._transfer_mask = mask
        if on_round:
            on_round(1, [row], False)
        return rows0 + [row]

    def _own(self) -> dict:
        """The row fields that describe this trajectory (a shared full-model row is re-labelled with them)."""
        cfg, p = self.cfg, self.cfg.prune
        return {
            "trial": self.id,
            "task": cfg.task,
            "model": cfg.model,
            "method": p.method,
            "scope": p.scope,
            "schedule": p.schedule if p.method == "magnitude" else None,
            "rate": p.rate if p.method == "magnitude" else None,
            "target_sparsity": p.target_sparsity,
            "head_fraction": p.head_fraction if p.method == "structured" else None,
            "ffn_fraction": p.ffn_fraction if p.method == "structured" else None,
            "rewind_step": p.rewind_step,
            "seed": cfg.train.seed,
        }

    def _row(self, r, kind, sparsity, res, mask: Mask | None, started, full_metric) -> dict:
        task = get_task(self.cfg.task)
        m = res.metrics
        return {
            **self._own(),
            "round": r,
            "kind": kind,
            "sparsity": float(sparsity),
            "metric_name": task.main_metric,
            "metric": float(m[task.main_metric]),
            **{k: (float(m[k]) if k in m else None) for k in ("accuracy", "f1", "matthews", "pearson", "spearman")},
            "full_metric": float(m[task.main_metric]) if kind == "full" else full_metric,
            "training_steps": int(res.steps),
            "wall_seconds": float(res.seconds),
            "mask_id": mask.mask_id if mask is not None else None,
            "source_task": None,
            "source_mask_id": None,
            "started_at": started.isoformat(),
            "finished_at": _now().isoformat(),
        }


class _exclusive:
    """An exclusive lock file (flock: released by the kernel if its holder dies) held by rank 0 only."""

    def __init__(self, path: Path, active: bool):
        self.path, self.active, self.fd = path, active, None

    def __enter__(self):
        if self.active:
            import fcntl

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR)
            fcntl.flock(self.fd, fcntl.LOCK_EX)  # a concurrent trial computing the same full model: wait
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)


def contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of a state dict, as safetensors needs (it refuses shared or strided storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _fresh_encoder(model, seed: int) -> dict[str, torch.Tensor]:
    """Freshly initialised encoder weights of the same architecture (the random re-initialisation baseline)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return encoder_state(AutoModelForSequenceClassification.from_config(model.config))


def mask_of_round(root: str | Path, cfg: TicketConfig, r: int) -> Mask:
    """The ticket mask a finished round saved."""
    return Mask.load(Trajectory(cfg, root).round_dir(r) / "mask.safetensors")

