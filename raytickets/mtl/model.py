"""One shared pre-trained encoder, one head per task, each task's forward under its own ticket (Tickets-Share).

Liang et al. 2021 §5 (construct_mtl_mask.py): the tasks share one BERT and each batch is masked by its own
task's super ticket, so a unit inside several tickets is trained by all of them. A ticket is applied
without touching the shared weights:

* structured (heads, FFN neurons or sublayers): 0/1 gates on the units' outputs through forward hooks
  (`pruning.structured._gates`, the same hooks importance scoring uses); a gated-off unit adds nothing to
  the forward pass and gets a zero gradient;
* unstructured: the task's forward runs on masked copies `w * m` of the prunable weights through
  `torch.func.functional_call`; the gradient reaching `w` is `m * dL/dw`, zero where the task prunes.

A zero gradient is not yet a frozen weight: Adam's moments (filled by the other tasks' steps) and decoupled
weight decay would still move it. So every ticket also lists the entries it removes (`frozen`), and a
task's optimiser step restores them (`mtl_train.step`): a step of task A moves only what A keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn
from torch.func import functional_call
from transformers.modeling_outputs import SequenceClassifierOutput

from ..errors import ConfigError, MaskError
from ..masks import Mask
from ..pruning.structured import _gates, _pruned_units, structured_mask
from ..tasks import TASKS, TaskSpec

@dataclass
class TaskTicket:
    """How one task's forward is masked: not at all, by unit gates, or by masked weights."""

    kind: str = "dense"  # dense | structured | unstructured
    mask: Mask | None = None
    gates: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # heads [L,H], neurons [L,I], ffn [L]
    keep: dict[str, torch.Tensor] = field(default_factory=dict)  # unstructured: name -> bool, True = kept
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)  # encoder param -> entries this task never moves

    @property
    def sparsity(self) -> float:
        return self.mask.sparsity() if self.mask is not None else 0.0

    @property
    def mask_id(self) -> str | None:
        return self.mask.mask_id if self.mask is not None else None


def _encoder_params(encoder: nn.Module, mask: Mask) -> dict[str, nn.Parameter]:
    """The encoder parameters a mask names, validated against it (names and shapes)."""
    named = dict(encoder.named_parameters())
    unknown = [n for n in mask.names if n not in named]
    if unknown:
        raise MaskError(f"mask: tensor {unknown[0]!r} is not a parameter of the encoder ({len(unknown)} unknown in all)")
    params = {n: named[n] for n in mask.names}
    mask.validate(params)
    return params


def unstructured_ticket(encoder: nn.Module, mask: Mask) -> TaskTicket:
    _encoder_params(encoder, mask)
    device = next(encoder.parameters()).device
    keep = {n: t.to(device) for n, t in mask.tensors.items() if not bool(t.all())}  # dense tensors need no copy
    return TaskTicket("unstructured", mask, keep=keep, frozen={n: ~k for n, k in keep.items()})


def structured_units(mask: Mask, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The heads [L,H], neurons [L,I] and whole FFN sublayers [L] a structured ticket removes (bool).

    MaskError unless the mask is exactly the one `structured_mask` builds from those units: a weight pruned
    outside whole units cannot be expressed as gates. A sublayer counts as removed only when its output
    bias is masked too (granularity "layer"); with every neuron gone but the bias kept, the bias stays.
    """
    L, H, I = config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
    heads, neurons, ffn = _pruned_units(mask, L, H, I)
    for l in range(L):
        bias = mask.tensors.get(f"encoder.layer.{l}.output.dense.bias")
        ffn[l] = bool(ffn[l]) and bias is not None and not bool(bias.any())
    shapes = {n: torch.empty(s) for n, s in mask.shapes.items()}
    as_units = lambda rows: {l: r.nonzero().squeeze(1).tolist() for l, r in enumerate(rows) if bool(r.any())}  # noqa: E731
    rebuilt = structured_mask(shapes, config, as_units(heads), as_units(neurons & ~ffn[:, None]),
                              ffn.nonzero().squeeze(1).tolist())
    if rebuilt != mask:
        raise MaskError(f"mask {mask.mask_id}: prunes weights outside whole heads and FFN units; it is not a "
                        "structured ticket (train it as an unstructured one)")
    return heads, neurons, ffn


def structured_ticket(encoder: nn.Module, mask: Mask) -> TaskTicket:
    params = _encoder_params(encoder, mask)
    config = encoder.config
    heads, neurons, ffn = structured_units(mask, config)
    device = next(encoder.parameters()).device
    gates = tuple((~t).float().to(device) for t in (heads, neurons, ffn))
    frozen = {n: ~mask.tensors[n].to(device) for n in params if not bool(mask.tensors[n].all())}
    # The removed units' biases: their entries get no gradient from this task either.
    named, d = dict(encoder.named_parameters()), config.hidden_size // config.num_attention_heads
    for l in range(config.num_hidden_layers):
        prefix = f"encoder.layer.{l}"
        head_rows = heads[l].repeat_interleave(d).to(device)
        for kind in ("query", "key", "value"):
            _freeze(frozen, named, f"{prefix}.attention.self.{kind}.bias", head_rows)
        _freeze(frozen, named, f"{prefix}.intermediate.dense.bias", neurons[l].to(device))
        if ffn[l]:
            _freeze(frozen, named, f"{prefix}.output.dense.bias", torch.ones(config.hidden_size, dtype=torch.bool, device=device))
    return TaskTicket("structured", mask, gates=gates, frozen=frozen)


def _freeze(frozen: dict, named: Mapping[str, nn.Parameter], name: str, entries: torch.Tensor) -> None:
    if name in named and bool(entries.any()):
        frozen[name] = frozen[name] | entries if name in frozen else entries.clone()


def make_ticket(encoder: nn.Module, mask: Mask | None, structured: bool) -> TaskTicket:
    """A task's ticket on this encoder: dense (no mask), unit gates (`structured`) or masked weights."""
    if mask is None:
        return TaskTicket()
    return structured_ticket(encoder, mask) if structured else unstructured_ticket(encoder, mask)


class TaskHead(nn.Module):
    """BertForSequenceClassification's head on the pooled [CLS]: dropout, then a linear layer."""

    def __init__(self, config, num_labels: int):
        super().__init__()
        rate = config.classifier_dropout if getattr(config, "classifier_dropout", None) is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(rate)
        self.classifier = nn.Linear(config.hidden_size, num_labels)

    def reset(self, std: float, generator: torch.Generator) -> None:
        """BERT's initialisation (normal(0, initializer_range), zero bias), from a seeded generator."""
        with torch.no_grad():
            nn.init.normal_(self.classifier.weight, 0.0, std, generator=generator)
            self.classifier.bias.zero_()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))


class MultiTaskModel(nn.Module):
    """The shared `BertModel` (`bert`, so mask names and `models.encoder` fit), a head and a ticket per task."""

    def __init__(self, encoder: nn.Module, tasks: Mapping[str, TaskSpec], seed: int):
        super().__init__()
        self.bert = encoder
        self.config = encoder.config
        self.specs = dict(tasks)
        self.heads = nn.ModuleDict({name: TaskHead(encoder.config, spec.num_labels) for name, spec in tasks.items()})
        for name, head in self.heads.items():  # a head depends on (seed, task) only: equal in every arm
            head.reset(encoder.config.initializer_range, torch.Generator().manual_seed(seed * 1_000 + list(TASKS).index(name)))
        self.tickets: dict[str, TaskTicket] = {name: TaskTicket() for name in tasks}

    def set_tickets(self, masks: Mapping[str, Mask | None], structured: Mapping[str, bool]) -> None:
        """Each task's ticket (None: dense), built on the model's current device."""
        unknown = [t for t in masks if t not in self.specs]
        if unknown:
            raise ConfigError(f"tasks: {unknown[0]!r} has a mask but no head; heads: {', '.join(self.specs)}")
        self.tickets = {t: make_ticket(self.bert, masks.get(t), structured.get(t, False)) for t in self.specs}

    def encode(self, task: str, **inputs) -> torch.Tensor:
        """The pooled output of the shared encoder under `task`'s ticket."""
        ticket = self.tickets[task]
        if ticket.kind == "structured":
            with _gates(self.bert, *ticket.gates):
                return self.bert(**inputs).pooler_output
        if ticket.kind == "unstructured":
            named = dict(self.bert.named_parameters())
            masked = {n: named[n] * keep for n, keep in ticket.keep.items()}  # new tensors; the shared ones stay
            return functional_call(self.bert, masked, args=(), kwargs=inputs).pooler_output
        return self.bert(**inputs).pooler_output

    def forward(self, task: str, labels: torch.Tensor | None = None, **inputs) -> SequenceClassifierOutput:
        logits = self.heads[task](self.encode(task, **inputs))
        loss = None
        if labels is not None:
            if self.specs[task].is_regression:
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def view(self, task: str) -> "TaskView":
        return TaskView(self, task)


class TaskView(nn.Module):
    """One task's model as `train.evaluate` and `train.predict` call it: `view(**batch).logits`."""

    def __init__(self, model: MultiTaskModel, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, **batch) -> SequenceClassifierOutput:
        return self.model(self.task, **batch)


def load_multitask_model(name: str, tasks: Mapping[str, TaskSpec], seed: int, device="cpu") -> MultiTaskModel:
    """The pre-trained encoder of `name` (pooler included) with a fresh seeded head per task."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    from ..models import resolve_model

    path = resolve_model(name)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        torch.manual_seed(seed)  # anything the checkpoint lacks (a pooler) is initialised the same way every run
        encoder = BertModel.from_pretrained(path)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if getattr(encoder.config, "model_type", None) != "bert":
        raise ConfigError(f"model: {name!r} is a {encoder.config.model_type!r} model; raytickets supports BERT-architecture models")
    return MultiTaskModel(encoder, tasks, seed).to(device)


def random_ticket(mask: Mask, structured: bool, config, seed: int) -> Mask:
    """A random ticket as sparse as `mask`, drawn without replacement: as many random heads and FFN neurons
    (or whole sublayers) as a structured ticket removes, one head per layer kept as the ticket's rule keeps
    it (`pruning.random_structured`); for an unstructured one, as many random weights in every tensor."""
    from ..pruning.structured import random_structured

    generator = torch.Generator().manual_seed(seed)
    shapes = {n: torch.empty(s) for n, s in mask.shapes.items()}
    if structured:
        heads, neurons, ffn = structured_units(mask, config)
        extra = neurons & ~ffn[:, None]
        if bool(ffn.any()) and bool(extra.any()):
            raise MaskError(f"mask {mask.mask_id}: removes both whole FFN sublayers and single neurons; a random "
                            "ticket draws one granularity")
        layers = bool(ffn.any())
        units, total = (ffn, ffn.numel()) if layers else (neurons, neurons.numel())
        chosen = random_structured(config, int(heads.sum()) / heads.numel(), int(units.sum()) / total,
                                   "layer" if layers else "neuron", generator)
        return structured_mask(shapes, config, *chosen)
    tensors = {}
    for name, keep in mask.tensors.items():
        flat = torch.zeros(keep.numel(), dtype=torch.bool)
        flat[torch.randperm(keep.numel(), generator=generator)[: int(keep.sum())]] = True
        tensors[name] = flat.reshape(keep.shape)
    return Mask(tensors)
