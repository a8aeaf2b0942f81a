"""The MLM model, its sparse-prediction loss, its metric and its head (the `mlm` task's head side; data: mlm.py).

The metric runs the vocabulary head on the masked positions only (`SparsePredictionMLM`), never on all
[N, T, vocab] logits. A checkpoint without an MLM head (the packaged MiniLM) gets one warmed up on the corpus
(`warm_up_head`) before anything is pruned, and IMP rounds carry the head over instead of rewinding it
(`head_state`), as BERT-Tickets does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import reduce_sum, world
from .errors import ConfigError, DataError
from .mlm import IGNORE, collate_blocks
from .models import quiet_transformers, resolve_model


# --------------------------------------------------------------------------------------------- model, head


def load_mlm_model(name: str, seed: int | None = None):
    """A `BertForMaskedLM` on the pre-trained encoder; `model.bert` is the bare encoder (it has no pooler)."""
    return load_mlm_model_and_head(name, seed)[0]


def load_mlm_model_and_head(name: str, seed: int | None = None):
    """(`load_mlm_model`'s model, whether its MLM head was in the checkpoint).

    A checkpoint without an MLM head (the packaged MiniLM is a bare BertModel) gets one as BERT initialises it,
    checked in tests/test_mlm.py for transformers 5.24: the decoder *is* the word-embedding matrix
    (`tie_word_embeddings`, on by default), the transform's dense layer is normal(0, 0.02) with zero bias, its
    LayerNorm 1/0, and the output bias 0. `seed` fixes that initialisation.
    """
    from transformers import AutoConfig, BertForMaskedLM

    path = resolve_model(name)
    with quiet_transformers():
        model_type = AutoConfig.from_pretrained(path).model_type
        if model_type != "bert":
            raise ConfigError(f"model: {name!r} is a {model_type!r} model; "
                              f"raytickets supports BERT-architecture models")
        if seed is not None:
            torch.manual_seed(seed)
        model, info = BertForMaskedLM.from_pretrained(path, output_loading_info=True)
    from .dropout import use_cheap_dropout

    use_cheap_dropout(model)  # as load_model's: torch's dropout in distribution, cheaper masks on CPU
    return model, not any(k.startswith("cls.") for k in info["missing_keys"])


def head_keys(model) -> list[str]:
    """The state-dict keys of the MLM head's own tensors: `cls.*` less the decoder tied to the word embeddings
    (that one is the encoder's, and is rewound with it)."""
    encoder_storage = {p.data_ptr() for p in model.bert.parameters()}
    return [k for k, v in model.state_dict().items()
            if not k.startswith("bert.") and v.data_ptr() not in encoder_storage]


def head_state(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MLM head's own tensors out of a full state dict (`head_keys`)."""
    return {k: state[k] for k in head_keys(model)}


def masked_logits(lm, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [M, vocab], targets [M]) at the M labelled positions: the head runs on those alone."""
    hidden = lm.bert(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     token_type_ids=batch.get("token_type_ids")).last_hidden_state
    where = batch["labels"] != IGNORE
    return lm.cls(hidden[where]), batch["labels"][where]


class SparsePredictionMLM(nn.Module):
    """A BertForMaskedLM whose loss applies the vocabulary head to the masked positions only (Izsak et al.'s
    sparse token prediction): the same loss as `lm(**batch).loss`, without its [B, T, vocab] logits.

    It shares `lm`'s parameters; wrap this module, not `lm`, in DDP so its forward is the one DDP sees.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, labels, attention_mask=None, token_type_ids=None):
        from transformers.modeling_outputs import MaskedLMOutput

        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "labels": labels}
        logits, targets = masked_logits(self.lm, batch)
        return MaskedLMOutput(loss=F.cross_entropy(logits.float(), targets), logits=logits)


# -------------------------------------------------------------------------------------------------- metric


def masked_lm_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[masked positions, correct predictions, summed cross-entropy] over the positions whose label is not -100."""
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    where = labels != IGNORE
    logits, labels = logits[where].float(), labels[where]
    correct = (logits.argmax(dim=-1) == labels).sum()
    loss = F.cross_entropy(logits, labels, reduction="sum")
    return torch.stack([where.sum(), correct, loss]).to(torch.float64)


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    count, correct, loss = (float(x) for x in sums)
    if count == 0:
        raise DataError("dev: no masked position to score (every label is -100)")
    return {"accuracy": correct / count, "perplexity": math.exp(loss / count)}


@torch.no_grad()
def mlm_metrics(model, dev, batch_size: int, collate=None) -> dict[str, float]:
    """Accuracy over the masked positions and perplexity exp(mean cross-entropy there) on `dev`.

    Under torch.distributed each rank scores every world-th block and the sums are all-reduced, so every rank
    returns the numbers one process would.
    """
    from torch.utils.data import DataLoader, Subset

    lm = getattr(model, "module", model)  # DDP
    lm = getattr(lm, "lm", lm)  # SparsePredictionMLM
    rank, size = world()
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    shard = Subset(dev, range(rank, len(dev), size))
    for batch in DataLoader(shard, batch_size=batch_size, collate_fn=collate or collate_blocks):
        logits, targets = masked_logits(lm, {k: v.to(device) for k, v in batch.items()})
        sums += masked_lm_sums(logits, targets)
    lm.train(was_training)
    return metrics_from_sums(reduce_sum(sums))


def mlm_chance(dev) -> float:
    """The accuracy of always predicting the dev split's most frequent masked token: MLM's chance value (a model
    that learned nothing but the frequency prior, e.g. always "the", scores this, not 0)."""
    import numpy as np

    labels = np.asarray(dev.with_format("numpy")["labels"] if hasattr(dev, "with_format") else dev["labels"]).ravel()
    labels = labels[labels != IGNORE]
    return float(np.bincount(labels).max() / labels.size) if labels.size else 0.0


# ------------------------------------------------------------------------------------------------- warm-up

WARMUP_EVERY = 100  # optimiser steps between two dev evaluations of the head warm-up
# A plateau, where the warm-up stops: over WARMUP_EVERY steps dev accuracy gains less than WARMUP_MIN_GAIN *and*
# dev cross-entropy falls by less than WARMUP_MIN_NATS. Accuracy alone stalls early at the frequency prior (always
# "the": ~4.5% on the GLUE sentences) while the loss is still falling fast; stopping there is the failure mended.
WARMUP_MIN_GAIN = 0.005
WARMUP_MIN_NATS = 0.02


@dataclass
class Warmup:
    """What `warm_up_head` did: its optimiser steps, dev accuracy and perplexity at each evaluation (step 0
    first), whether it stopped on a plateau (else at its step budget), its seconds."""

    steps: int = 0
    accuracy: list[tuple[int, float]] = field(default_factory=list)
    perplexity: list[tuple[int, float]] = field(default_factory=list)
    plateaued: bool = False
    seconds: float = 0.0

    def line(self) -> str:
        trace = ", ".join(f"{a:.4f}@{s}" for s, a in self.accuracy)
        ppl = ", ".join(f"{p:.0f}@{s}" for s, p in self.perplexity)
        why = "plateau" if self.plateaued else "step budget"
        return (f"mlm head warm-up: {self.steps} steps, {self.seconds:.0f}s, dev accuracy {trace}; perplexity {ppl} "
                f"(stopped: {why})")

    def record(self, metrics: dict[str, float]) -> None:
        self.accuracy.append((self.steps, metrics["accuracy"]))
        self.perplexity.append((self.steps, metrics["perplexity"]))

    def flat(self, min_gain: float, min_nats: float) -> bool:
        """Whether the last two evaluations differ by less than both plateau thresholds."""
        (_, a0), (_, a1) = self.accuracy[-2:]
        (_, p0), (_, p1) = self.perplexity[-2:]
        return a1 - a0 < min_gain and math.log(p0) - math.log(p1) < min_nats


def warm_up_head(lm, train, dev, *, max_steps: int, layers: int, learning_rate: float, batch_size: int,
                 eval_batch_size: int, seed: int, precision: str = "fp32", collate=None,
                 every: int = WARMUP_EVERY, min_gain: float = WARMUP_MIN_GAIN,
                 min_nats: float = WARMUP_MIN_NATS) -> Warmup:
    """Train `lm`'s MLM head in place, with its top `layers` encoder layers, everything else frozen, until over
    `every` steps dev accuracy gains less than `min_gain` and dev cross-entropy falls by less than `min_nats`,
    or for `max_steps` steps.

    A freshly initialised head (a checkpoint that is a bare encoder) predicts the most frequent token; an IMP
    round of MLM training from it is spent teaching the head, and the weights barely move, so the "ticket" is
    one-shot magnitude pruning. The warmed model is the trajectory's rewind point instead. Constant learning
    rate, AdamW without decay, gradients clipped at 1. Every DDP rank runs the same steps on the same global
    batches (no communication but the dev metric's sums), so the ranks end with the same weights.
    """
    from .distributed import global_order
    from .precision import autocast
    from .train import epoch_data

    encoder_layers = lm.bert.encoder.layer
    if not isinstance(layers, int) or isinstance(layers, bool) or not 0 <= layers <= len(encoder_layers):
        raise ConfigError(f"train.mlm_warmup_layers: {layers!r}; allowed: an integer from 0 (the head alone) "
                          f"to {len(encoder_layers)} (every encoder layer)")
    trainable = [p for k, p in lm.named_parameters() if k.startswith("cls.")]  # the tied decoder is bert.*'s
    trainable += [p for layer in list(encoder_layers)[len(encoder_layers) - layers:] for p in layer.parameters()]
    chosen = {id(p) for p in trainable}
    flags = {name: p.requires_grad for name, p in lm.named_parameters()}
    for p in lm.parameters():
        p.requires_grad_(id(p) in chosen)
    device = next(lm.parameters()).device
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    net = SparsePredictionMLM(lm)
    collate = collate or collate_blocks
    out, started = Warmup(), time.perf_counter()
    with autocast(precision, device):
        out.record(mlm_metrics(lm, dev, eval_batch_size, collate))
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)  # dropout
    epoch = 0
    try:
        while out.steps < max_steps:
            data = epoch_data(train, epoch)
            order = global_order(len(data), seed, epoch, True)
            for start in range(0, len(order), batch_size):
                batch = {k: v.to(device) for k, v in collate([data[i] for i in order[start:start + batch_size]]).items()}
                net.train()
                with autocast(precision, device):
                    loss = net(**batch).loss
                loss.float().backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                out.steps += 1
                if out.steps % every == 0 or out.steps == max_steps:
                    with autocast(precision, device):
                        out.record(mlm_metrics(lm, dev, eval_batch_size, collate))
                    out.plateaued = out.flat(min_gain, min_nats)
                    if out.plateaued or out.steps >= max_steps:
                        return out
            epoch += 1
        return out
    finally:
        for name, p in lm.named_parameters():
            p.requires_grad_(flags[name])
        torch.set_rng_state(generator_state)
        out.seconds = time.perf_counter() - started
