"""The MLM model, its sparse-prediction loss and its metric (the `mlm` task's head side; data: mlm.py).

The metric runs the vocabulary head on the masked positions only (`SparsePredictionMLM`), never on all
[N, T, vocab] logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import reduce_sum, world
from .errors import ConfigError, DataError
from .mlm import IGNORE, collate_blocks
from .models import quiet_transformers, resolve_model


# --------------------------------------------------------------------------------------------- model, head


def load_mlm_model(name: str, seed: int | None = None):
    """A `BertForMaskedLM` on the pre-trained encoder; `model.bert` is the bare encoder (it has no pooler).

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
        return BertForMaskedLM.from_pretrained(path)


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
