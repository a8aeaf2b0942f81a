"""One ticket trajectory: fine-tune → prune → rewind, round after round, with baselines at each target.

Round 0 fine-tunes the full model (its score is the bar a ticket must match, and its weights are what
round 1 prunes). Round r ≥ 1 asks the pruning method for the next mask from round r-1's fine-tuned weights,
rewinds to the rewind point (the pre-trained encoder with the same fresh task head, or with late
rewinding every weight of the full model after `rewind_step` steps) and fine-tunes for the rest of the
schedule: its dev metric is the round's *ticket score*. Baselines are branches hanging off a round
(`baselines.py`). The loop holds one `RoundState` from round to round; `runs.py` says where it is stored.

On `mlm` only the encoder (`bert.*`) is rewound: the MLM head carries over from the round before, as in
BERT-Tickets (LT_pretrain.py:216-224 keeps only keys containing 'bert' in the rewind dict), and a checkpoint
without an MLM head gets a warmed-up one first (mlm_head.warm_up_head), the rewind point. Each mlm ticket row
says how far its mask is from one-shot magnitude pruning of the rewind weights (`oneshot_diff`).

Past ~400 lines on purpose: the round loop, its resume from disk and the row it records are one state
machine (`RoundState`) that reads best top to bottom; baselines, methods and storage already live elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from . import runs
from .atomic import exclusive, write_dir_atomically
from .baselines import BASELINES, BaselineContext, RewindPoint
from .config import TicketConfig, resolve
from .distributed import agree, barrier, gather, rank_batches, reduce_sum, sync_mask, world
from .errors import ConfigError
from .masks import Mask
from .models import (check_patterns, default_include, encoder, load_model, load_tokenizer, prunable_parameters,
                     resolve_model, tensor_kind)
from .precision import autocast, resolve as resolve_precision
from .pruning import PruneContext, random_prune
from .rows import RoundRow
from .tasks import TaskSpec, collate, flat_metrics, get_task, tokenized_splits
from .train import FinetuneResult, finetune, state_copy, total_steps


@dataclass
class Prepared:
    """What every round of a trajectory needs, loaded once."""

    task: TaskSpec
    train: object
    dev: dict
    collate: Callable
    model: torch.nn.Module
    initial: RewindPoint  # the pre-trained encoder and the freshly initialised head every round starts from
    warmup: object | None = None  # mlm: the head warm-up that made `initial` (mlm_head.Warmup), if one ran


def tokenize(cfg: TicketConfig, tokenizer) -> dict:
    """The task's tokenised splits under the config's data settings (read from the cache once written); for mlm
    the packed, pre-masked corpus (mlm.mlm_splits); for squad the training windows and a `squad.SquadDev`."""
    d = cfg.data
    if get_task(cfg.task).is_span:
        from .squad import squad_splits

        return squad_splits(tokenizer, resolve_model(cfg.model), d, seed=d.seed, cache_dir=d.cache_dir)
    if get_task(cfg.task).is_mlm:
        from .mlm import mlm_splits

        return mlm_splits(tokenizer, resolve_model(cfg.model), d.corpus, d.glue_dir, d.max_seq_length,
                          d.max_train_examples, d.max_dev_examples, d.seed, d.mlm_copies, d.mlm_probability,
                          d.cache_dir)
    return tokenized_splits(
        get_task(cfg.task), tokenizer, resolve_model(cfg.model), d.glue_dir, max_seq_length=d.max_seq_length,
        max_train_examples=d.max_train_examples, max_dev_examples=d.max_dev_examples, seed=d.seed,
        cache_dir=d.cache_dir,
    )


def prepare(cfg: TicketConfig, device: torch.device | str = "cpu") -> Prepared:
    task = get_task(cfg.task)
    tokenizer = load_tokenizer(cfg.model)
    splits = tokenize(cfg, tokenizer)
    warmup = None
    if task.is_mlm:
        from .mlm import collate_blocks
        from .mlm_head import load_mlm_model_and_head, warm_up_head

        (model, pretrained_head), collator = load_mlm_model_and_head(cfg.model, seed=cfg.train.seed), collate_blocks
        model = model.to(device)
        t = cfg.train
        if not pretrained_head and t.mlm_warmup_steps > 0:
            warmup = warm_up_head(model, splits["train"], splits["dev"], max_steps=t.mlm_warmup_steps,
                                  layers=t.mlm_warmup_layers, learning_rate=t.mlm_warmup_learning_rate,
                                  batch_size=t.batch_size, eval_batch_size=t.eval_batch_size, seed=t.seed,
                                  precision=resolve_precision(t.precision, torch.device(device)))
    else:
        model = load_model(cfg.model, task.num_labels, seed=cfg.train.seed, objective=task.objective)
        collator = collate(tokenizer)
    model = model.to(device)
    return Prepared(task=task, train=splits["train"], dev={s: splits[s] for s in task.dev_splits},
                    collate=collator, model=model, initial=RewindPoint(state_copy(model), 0), warmup=warmup)


RANDOM, ONESHOT = "random", "oneshot"  # a transfer's null masks, named in its rows' source_task


def oneshot_diff(mask: Mask, rewind_state: dict[str, torch.Tensor], target: float, scope: str) -> float:
    """The share of `mask`'s pruned weights that one-shot magnitude pruning of the rewind weights (`bert.*` in
    `rewind_state`) to the same target and scope keeps: 0 when IMP found nothing one-shot pruning would not
    have; about 1 - sparsity for a random mask."""
    from .pruning.magnitude import magnitude_prune

    weights = {name: rewind_state[f"bert.{name}"] for name in mask.names}
    oneshot = magnitude_prune(weights, Mask.ones_like(weights), target, scope)
    pruned = sum(int((~t).sum()) for t in mask.tensors.values())
    if pruned == 0:
        return 0.0
    differ = sum(int((~mask.tensors[n] & oneshot.tensors[n]).sum()) for n in mask.names)
    return differ / pruned


def _without_pooler(mask: Mask, params) -> Mask:
    """`mask` less a pooler the target model lacks: a GLUE ticket transferred to squad (BertForQuestionAnswering
    has no pooler) prunes the encoder both share; any other tensor the model lacks stays an error."""
    gone = [n for n in mask.names if n not in params and tensor_kind(n) == "pooler"]
    return Mask({n: t for n, t in mask.tensors.items() if n not in gone}) if gone else mask


def prunable_of(cfg: TicketConfig, model) -> dict[str, torch.nn.Parameter]:
    """The tensors a trajectory prunes: `prune.include` (default: the model's set) less `prune.exclude`, plus
    what the method itself masks (a removed FFN sublayer's bias). A pattern matching nothing is a typo."""
    include = list(cfg.prune.include or default_include(cfg.model))
    names = [n for n, _ in encoder(model).named_parameters()]
    check_patterns("prune.include", cfg.prune.include or [], names)  # a hub model's names are known only now
    check_patterns("prune.exclude", cfg.prune.exclude, names)
    return prunable_parameters(model, [*include, *cfg.prune.method_impl().extra_prunable()], cfg.prune.exclude)


@dataclass
class RoundState:
    """One round as the loop holds it: the ticket's mask and fine-tuned weights (what the next round prunes),
    its rows, every mask trained in it, and the chained baselines' state."""

    round: int
    rows: list[RoundRow]
    mask: Mask | None = None
    weights: dict[str, torch.Tensor] | None = None
    masks: dict[str, Mask] = field(default_factory=dict)
    chains: dict[str, dict] = field(default_factory=dict)
    head: dict[str, torch.Tensor] | None = None  # mlm: the MLM head the round's ticket started from
    resumed: bool = False  # read from disk, not trained by this run
    directory: Path | None = None
    # each kind's per-step training losses, for the trackers (tracking:); empty for what this run did not train
    losses: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ticket(self) -> RoundRow:
        return next(r for r in self.rows if r.kind in ("ticket", "full", "transfer"))

    def mask_of(self, mask_id: str) -> Mask:
        """A mask trained in this round: from memory, or from the round's directory when resumed."""
        if mask_id not in self.masks:
            for name in ("mask.safetensors", f"mask-{mask_id}.safetensors"):
                path = self.directory / name
                if path.is_file() and (m := Mask.load(path)).mask_id == mask_id:
                    self.masks[mask_id] = m
                    break
        return self.masks[mask_id]


RoundCallback = Callable[[RoundState], None]


def round_lines(state: RoundState) -> list[str]:
    """What a run log says about a round: one line per trained model, and a warning per collapsed tensor
    (pruned far beyond the overall sparsity: a classifier left on a few hundred weights, say)."""
    tag = " (saved)" if state.resumed else ""
    lines = [f"round {state.round} {row.kind:8s} sparsity {row.sparsity:.4f} {row.metric_name} {row.metric:.4f}"
             f"{' (failed: scored at chance)' if row.failed else ''}{_oneshot_note(row)}{tag}" for row in state.rows]
    mask = state.mask if state.mask is not None or not state.rows[0].mask_id else state.mask_of(state.rows[0].mask_id)
    if mask is not None:
        per_tensor = mask.sparsity_per_tensor()
        lines += [f"warning: layer collapse in round {state.round}: {name} is {100 * per_tensor[name]:.1f}% pruned at "
                  f"{100 * mask.sparsity():.1f}% overall" for name in mask.collapsed()]
    return lines


def _oneshot_note(row: RoundRow) -> str:
    if row.oneshot_diff is None:
        return ""
    if row.oneshot_diff == 0:
        return " oneshot_diff 0 (the ticket equals one-shot magnitude pruning of the rewind weights)"
    return f" oneshot_diff {row.oneshot_diff:.4f}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Trajectory:
    """A ticket trajectory on disk under `root/runs/<run id>`, sharing full-model runs under `root/full`."""

    def __init__(self, cfg: TicketConfig, root: str | Path, device: torch.device | str = "cpu"):
        cfg.validate()
        self.cfg = resolve(cfg)
        self.device = torch.device(device)
        self.cfg.train.precision = resolve_precision(self.cfg.train.precision, self.device)  # enters the run id
        self.layout = runs.RunLayout(self.cfg, root)
        self.method = self.layout.method
        self.id, self.dir, self.full_dir = self.layout.id, self.layout.dir, self.layout.full_dir
        self.round_dir, self.done_rounds = self.layout.round_dir, self.layout.done_rounds
        self.rank = world()[0]
        self.replica_mask_ids: dict[int, list[str]] = {}  # round -> every rank's mask id

    # -- the trajectory ----------------------------------------------------------------------------
    def run(self, on_round: RoundCallback | None = None) -> list[RoundRow]:
        """Run (or resume) every round, or up to the phase transition (`prune.min_gain`); `on_round` sees each
        round's state; returns the rows of the rounds walked (full model first)."""
        cfg = self.cfg
        prep = self._prepare()
        params = prunable_of(cfg, prep.model)
        self.method.check_params(params, "prune")
        if self.rank == 0:  # only once the settings are known to work: bad input leaves nothing behind
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(json.dumps(runs.settings(cfg), indent=2, default=str))
            if prep.warmup is not None:  # what the rewind point's MLM head scores (README, mlm)
                w = prep.warmup
                (self.dir / "warmup.json").write_text(json.dumps(
                    {"steps": w.steps, "seconds": w.seconds, "dev_accuracy": w.accuracy,
                     "dev_perplexity": w.perplexity, "plateaued": w.plateaued}))
        full, rewind = self._full_model(prep)
        self._context = (prep, params, full, rewind)
        self._emit(on_round, full)
        on_disk = set(self.done_rounds())  # finished before this run (by it, or a trajectory sharing rounds)
        walked, state = list(full.rows), full
        for r in range(1, self.method.num_rounds() + 1):
            if r in on_disk:
                state = self._saved_round(r)
            else:
                if state.weights is None:  # go on from a round read from disk: load its mask and weights
                    state = self._materialise(state, prep, params, full, rewind)
                state = self._round(r, prep, params, state, full, rewind)
            walked += state.rows
            self._emit(on_round, state)
            if self.past_transition(state.rows):
                break
        return walked

    def weights_of(self, r: int) -> dict[str, torch.Tensor]:
        """Round r's fine-tuned ticket weights after `run`: saved, or trained again from its mask."""
        prep, params, full, rewind = self._context
        return self._materialise(self._saved_round(r), prep, params, full, rewind, chains=False).weights

    def _emit(self, on_round: RoundCallback | None, state: RoundState) -> None:
        if on_round:
            on_round(state)

    def past_transition(self, rows: list[RoundRow]) -> bool:
        """Whether a round's ticket fell below the full model by more than `prune.min_gain` allows."""
        min_gain = self.cfg.prune.min_gain
        ticket = next(row for row in rows if row.kind == "ticket")
        return min_gain is not None and ticket.metric - ticket.full_metric < min_gain

    def rows(self) -> list[RoundRow]:
        """Every row written so far (full model first), in round order."""
        out = self._read_rows(self.full_dir) if self.layout.full_done() else []
        for r in self.done_rounds():
            out += self._read_rows(self.round_dir(r))
        return out

    def _prepare(self) -> Prepared:
        cfg = self.cfg
        from transformers import AutoConfig  # fail on impossible settings before loading data or training

        self.method.check_model(AutoConfig.from_pretrained(resolve_model(cfg.model)), "prune")
        prep = prepare(cfg, self.device)
        steps = total_steps(len(prep.train), cfg.train, world()[1])
        if cfg.prune.rewind_step > steps:
            raise ConfigError(f"prune.rewind_step: {cfg.prune.rewind_step} is beyond the {steps} training steps")
        self.method.check_steps(steps, "prune")
        return prep

    # -- round 0 -----------------------------------------------------------------------------------
    def _full_model(self, prep: Prepared) -> tuple[RoundState, RewindPoint]:
        """Round 0: fine-tune the full model once per (task, model, seed, training, data, rewind step)."""
        k = self.cfg.prune.rewind_step
        losses: dict[str, list[float]] = {}
        with exclusive(self.full_dir.parent / f"{self.full_dir.name}.lock", self.rank == 0):
            cached = agree(self.layout.full_done())  # all ranks train together, or none
            if not cached:
                started = _now()
                prep.model.load_state_dict(prep.initial.state)
                res = finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, self.cfg.train,
                               capture_step=k or None, desc="full model")
                row = self._row(0, "full", 0.0, res, None, started, None)
                weights, losses = state_copy(prep.model), {"full": res.losses}
                if self.rank == 0:
                    def write(d: Path) -> None:
                        save_file(weights, str(d / "weights.safetensors"))
                        if k > 0:
                            save_file(res.rewind_state, str(d / "rewind.safetensors"))
                        (d / "rows.json").write_text(json.dumps([_plain(row)], default=str))

                    write_dir_atomically(self.full_dir, write)
                barrier()
        weights = load_file(str(self.full_dir / "weights.safetensors"))
        self._full_weights = weights  # the default distillation teacher
        rewind = RewindPoint(load_file(str(self.full_dir / "rewind.safetensors")), k) if k > 0 else prep.initial
        state = RoundState(0, self._read_rows(self.full_dir), Mask.ones_like(prunable_of(self.cfg, prep.model)),
                           weights, resumed=cached, directory=self.full_dir, losses=losses)
        return state, rewind

    # -- round r -----------------------------------------------------------------------------------
    def _pruning_on(self, prep: Prepared, params, state: dict | None, salt: int = 0) -> PruneContext:
        """A PruneContext on `state`'s weights (None: the model as it is, mid-run for gradual pruning): this rank's
        part of epoch 0's global batches, sums over ranks."""
        if state is not None:
            prep.model.load_state_dict(state)
        train = self.cfg.train
        return PruneContext(
            model=prep.model, params=params,
            batches=lambda n: rank_batches(prep.train, prep.collate, train.batch_size, train.seed, 0, True, n),
            generator=torch.Generator().manual_seed(train.seed * 1_000 + salt), reduce=reduce_sum,
            world_size=world()[1], autocast=lambda: autocast(train.precision, self.device),
        )

    def _train(self, prep: Prepared, params, mask: Mask, point: RewindPoint, desc: str) -> FinetuneResult:
        teacher = self._teacher(prep)
        prep.model.load_state_dict(point.state)
        return finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, self.cfg.train, mask, params,
                        start_step=point.step, desc=desc, teacher=teacher)

    def _teacher(self, prep: Prepared) -> torch.Tensor | None:
        """train.distill: the teacher's logits of every training example, computed once per trajectory (from the
        full fine-tuned model, round 0, unless a teacher directory is named); None without distillation."""
        d = self.cfg.train.distill
        if d is None:
            return None
        if getattr(self, "_teacher_logits", None) is None:
            from .distill import teacher_logits

            if d.teacher is None:
                prep.model.load_state_dict(self._full_weights)
            self._teacher_logits = teacher_logits(prep.model, prep.train, prep.collate, self.cfg.train.eval_batch_size,
                                                  self.cfg.train.precision, d.teacher, span=prep.task.is_span)
        return self._teacher_logits

    def _with_head(self, rewind: RewindPoint, head: dict[str, torch.Tensor] | None) -> RewindPoint:
        """The rewind point with the MLM head replaced by `head` (mlm: only the encoder goes back); else as is."""
        return rewind if head is None else RewindPoint({**rewind.state, **head}, rewind.step)

    def _carried_head(self, prep: Prepared, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """mlm: the head of the previous round's trained weights, which the next round keeps (BERT-Tickets,
        LT_pretrain.py:216-224: only 'bert' keys are rewound); None for GLUE (the task head is rewound)."""
        if not prep.task.is_mlm:
            return None
        from .mlm_head import head_state

        return head_state(prep.model, weights)

    def _oneshot_diff(self, mask: Mask, rewind: RewindPoint, target) -> float | None:
        """mlm rounds of an unstructured method: `oneshot_diff` of the ticket (None elsewhere, so GLUE rows
        stay as they were)."""
        scope = getattr(self.method.hp, "scope", None)
        if not get_task(self.cfg.task).is_mlm or scope is None or not isinstance(target, (int, float)):
            return None
        return oneshot_diff(mask, rewind.state, target, scope)

    def _round(self, r: int, prep: Prepared, params, prev: RoundState, full: RoundState, rewind: RewindPoint,
               ) -> RoundState:
        if self.method.gradual:
            return self._gradual(r, prep, params, full)
        cfg, started = self.cfg, _now()
        target = self.method.target(r)
        ctx = self._pruning_on(prep, params, prev.weights, salt=r + 500_000)
        mask = sync_mask(self.method.select(ctx, prev.mask, target))
        evidence = self.method.evidence()  # what the choice was made from (importance scores), saved beside it
        self.replica_mask_ids[r] = gather(mask.mask_id)
        if len(set(self.replica_mask_ids[r])) != 1:  # DDP replicas must train the same subnetwork
            raise RuntimeError(f"round {r}: ranks hold different masks {self.replica_mask_ids[r]}")
        head = self._carried_head(prep, prev.weights)
        rewind = self._with_head(rewind, head)  # the ticket and its baselines start from the carried head
        res = self._train(prep, params, mask, rewind, f"round {r} ticket")
        rows = [replace(self._row(r, "ticket", mask.sparsity(), res, mask, started, full.rows[0].metric),
                        oneshot_diff=self._oneshot_diff(mask, rewind, target))]
        state = RoundState(r, rows, mask, state_copy(prep.model), {mask.mask_id: mask}, dict(prev.chains), head,
                           losses={"ticket": res.losses})
        for kind in cfg.prune.baselines:
            started = _now()
            b = BASELINES[kind]
            start = b.start(BaselineContext(
                round=r, seed=cfg.train.seed, method=self.method, ticket=mask, target=target, rewind=rewind,
                initial=prep.initial, full_state=full.weights, model=prep.model, params=params,
                generator=torch.Generator().manual_seed(cfg.train.seed * 1_000 + r),
                pruning_on=lambda s: self._pruning_on(prep, params, s, salt=r), chain=prev.chains.get(kind, {}),
            ))
            bmask = sync_mask(start.mask)
            bres = self._train(prep, params, bmask, start.point, f"round {r} {kind}")
            rows.append(self._row(r, kind, bmask.sparsity(), bres, bmask, started, full.rows[0].metric))
            state.masks[bmask.mask_id] = bmask
            state.losses[kind] = bres.losses
            if b.chain:
                state.chains[kind] = {"mask": bmask, "state": state_copy(prep.model)}
        if self.rank == 0:
            write_dir_atomically(self.round_dir(r), lambda d: self._write_round(d, state, evidence))
            self._drop_weights(r - 1)
        barrier()
        state.directory = self.round_dir(r)
        return state

    def _gradual(self, r: int, prep: Prepared, params, full: RoundState) -> RoundState:
        """The gradual kind's one round: fine-tune from the pre-trained weights while the method raises the mask
        (gradual.py): no rewinding, no baselines; the mask updates go to the round's schedule.json."""
        from .gradual import GradualPruner, GradualSchedule

        started = _now()
        steps = total_steps(len(prep.train), self.cfg.train, world()[1])
        teacher = self._teacher(prep)
        prep.model.load_state_dict(prep.initial.state)
        pruner = GradualPruner(self.method, GradualSchedule.of(self.method.hp, steps), params,
                               lambda: self._pruning_on(prep, params, None, salt=r + 500_000), Mask.ones_like(params))
        res = finetune(prep.model, prep.task, prep.train, prep.dev, prep.collate, self.cfg.train, None, params,
                       desc="gradual", pruner=pruner, teacher=teacher)
        mask = pruner.mask
        state = RoundState(r, [self._row(r, "ticket", mask.sparsity(), res, mask, started, full.rows[0].metric)], mask,
                           state_copy(prep.model), {mask.mask_id: mask}, losses={"ticket": res.losses})
        if self.rank == 0:
            def write(d: Path) -> None:
                self._write_round(d, state, {})
                (d / "schedule.json").write_text(json.dumps(pruner.updates))

            write_dir_atomically(self.round_dir(r), write)
        barrier()
        state.directory = self.round_dir(r)
        return state

    def _write_round(self, d: Path, state: RoundState, evidence: dict) -> None:
        state.mask.save(d / "mask.safetensors")
        for mask_id, m in state.masks.items():
            if mask_id != state.mask.mask_id:
                m.save(d / f"mask-{mask_id}.safetensors")
        save_file(state.weights, str(d / "weights.safetensors"))
        for kind, chain in state.chains.items():
            save_file(chain["state"], str(d / f"chain-{kind}.safetensors"))
        if evidence:
            save_file({k: v.contiguous() for k, v in evidence.items()}, str(d / "evidence.safetensors"))
        if state.head is not None:  # to train the round again once its weights are dropped
            save_file(state.head, str(d / "head.safetensors"))
        (d / "rows.json").write_text(json.dumps([_plain(row) for row in state.rows], default=str))

    def _drop_weights(self, r: int) -> None:
        """Only the latest round's weights are needed to go on (a kept round's are in the results root)."""
        if r < 1:
            return
        for path in self.round_dir(r).glob("*.safetensors"):
            if path.name == "weights.safetensors" or path.name.startswith("chain-"):
                path.unlink(missing_ok=True)

    def _saved_round(self, r: int) -> RoundState:
        return RoundState(r, self._read_rows(self.round_dir(r)), resumed=True, directory=self.round_dir(r))

    def _materialise(self, state: RoundState, prep: Prepared, params, full: RoundState, rewind: RewindPoint,
                     chains: bool = True) -> RoundState:
        """A round read from disk, with its mask, weights and chains: saved, or trained again from its masks
        when a trajectory that went further has already removed them (only the latest round's are kept)."""
        d = state.directory
        mask = Mask.load(d / "mask.safetensors")
        path = d / "weights.safetensors"
        if agree(path.is_file()):  # every DDP rank loads, or every rank trains
            weights = load_file(str(path))
        else:
            head = load_file(str(d / "head.safetensors")) if prep.task.is_mlm else None
            self._train(prep, params, mask, self._with_head(rewind, head), f"round {state.round} again")
            weights = state_copy(prep.model)
        chained = {}
        for kind in self.cfg.prune.baselines if chains else ():
            if not BASELINES[kind].chain:
                continue
            chain_mask = state.mask_of(next(row.mask_id for row in state.rows if row.kind == kind))
            saved = d / f"chain-{kind}.safetensors"
            if agree(saved.is_file()):
                chained[kind] = {"mask": chain_mask, "state": load_file(str(saved))}
            else:  # retrain the chain from its previous round (recursively down to the full model)
                before = full if state.round == 1 else self._materialise(self._saved_round(state.round - 1), prep,
                                                                          params, full, rewind)
                start = before.chains.get(kind, {}).get("state", full.weights)
                self._train(prep, params, chain_mask, RewindPoint(start, 0), f"round {state.round} {kind} again")
                chained[kind] = {"mask": chain_mask, "state": state_copy(prep.model)}
        return replace(state, mask=mask, weights=weights, chains=chained)

    # -- transfer ------------------------------------------------------------------------------------
    def transfer(self, mask: Mask | None, source_task: str, source_mask_id: str | None, level: float | None = None,
                 on_round: RoundCallback | None = None) -> list[RoundRow]:
        """Fine-tune a ticket found on `source_task` on this trajectory's task, from its rewind point; with no
        mask, the null `source_task` names at `level`: RANDOM (the random floor of a transfer) or ONESHOT
        (magnitude pruning of the rewind weights, no training). Prunable tensors the source mask lacks (an MLM
        ticket has no pooler) stay dense."""
        prep = self._prepare()
        params = prunable_of(self.cfg, prep.model)
        full, rewind = self._full_model(prep)
        self._emit(on_round, full)
        if mask is None:
            mask = self._null_mask(prep, params, rewind, source_task, level)
            source_mask_id, sparsity = mask.mask_id, mask.sparsity()
        else:
            # The row's level is the source ticket's own sparsity: Chen et al. compare TRANSFER(S, T) with T's
            # ticket at S's level, though tensors S lacks (an MLM ticket's pooler) stay dense on T.
            sparsity, mask = mask.sparsity(), _without_pooler(mask, params).extended_to(params)
        started = _now()
        res = self._train(prep, params, mask, rewind, f"transfer from {source_task}")
        row = replace(self._row(1, "transfer", sparsity, res, mask, started, full.rows[0].metric),
                      source_task=source_task, source_mask_id=source_mask_id)
        self._emit(on_round, RoundState(1, [row], mask, masks={mask.mask_id: mask}, losses={"transfer": res.losses}))
        return [*full.rows, row]

    def _null_mask(self, prep: Prepared, params, rewind: RewindPoint, null: str, level: float) -> Mask:
        """A transfer's null mask at `level` over every prunable tensor of the target."""
        if null not in (RANDOM, ONESHOT):
            raise ConfigError(f"search.transfer: a job without a mask names {null!r}; allowed: {RANDOM}, {ONESHOT}")
        if self.method.whole_units:
            raise ConfigError(f"search.transfer.{null}: {null} transfer masks are unstructured; set {null}: false "
                              f"for {self.cfg.prune.method!r} tickets")
        if null == ONESHOT:  # the scope of the tickets it is compared with
            from .pruning.magnitude import magnitude_prune

            prep.model.load_state_dict(rewind.state)  # `params` now hold the rewind weights
            return magnitude_prune(params, Mask.ones_like(params), level, getattr(self.method.hp, "scope", "global"))
        ctx = self._pruning_on(prep, params, rewind.state, salt=700_001)
        return random_prune(Mask.ones_like(params), level, "global", ctx.generator)

    # -- rows ----------------------------------------------------------------------------------------
    def _read_rows(self, d: Path) -> list[RoundRow]:
        # A shared round or full model may have been written by another trajectory: its rows name this one.
        rows = []
        for row in json.loads((d / "rows.json").read_text()):
            times = {k: datetime.fromisoformat(row[k]) for k in ("started_at", "finished_at") if row.get(k)}
            rows.append(replace(RoundRow(**{**row, **times}), **self._own()))
        return rows

    def _own(self) -> dict:
        """The row fields that describe this trajectory (a shared row is re-labelled with them)."""
        cfg = self.cfg
        columns = {k: v for k, v in self.method.row_columns().items() if k in RoundRow.__dataclass_fields__}
        return {
            "trial": self.id, "run_id": self.id, "setting_id": runs.setting_id(cfg),
            "settings": json.dumps(runs.setting(cfg), sort_keys=True, default=str),
            "task": cfg.task, "model": cfg.model, "method": cfg.prune.method,
            **{c: None for c in ("scope", "schedule", "rate", "target_sparsity", "head_fraction", "ffn_fraction",
                                 "ffn_granularity", "losing")},
            **columns, "rewind_step": cfg.prune.rewind_step, "seed": cfg.train.seed,
            "metric_convention": cfg.metrics,
        }

    def _row(self, r: int, kind: str, sparsity: float, res: FinetuneResult, mask: Mask | None, started,
             full_metric: float | None) -> RoundRow:
        task = get_task(self.cfg.task)
        name = task.main_metric_for(self.cfg.metrics)
        metrics, chance = flat_metrics(res.metrics), flat_metrics(res.chance)
        value = metrics[name]
        failed = res.diverged or value is None or value != value  # NaN: a constant predictor's correlation
        if failed:  # a collapsed run is a real outcome: scored at chance, never dropped
            value = chance[name]
        return RoundRow(
            **self._own(), round=r, kind=kind, sparsity=float(sparsity), metric_name=name, metric=float(value),
            failed=bool(failed), chance_metric=chance[name], **metrics,
            full_metric=float(value) if kind == "full" else full_metric,
            training_steps=int(res.steps), wall_seconds=float(res.seconds),
            mask_id=mask.mask_id if mask is not None else None,
            started_at=started, finished_at=_now(),
        )


def _plain(row: RoundRow) -> dict:
    from dataclasses import asdict

    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(row).items()}
