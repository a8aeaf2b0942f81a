"""The GLUE tasks: one table (text columns, labels, metrics), two loaders (hub, TSV dir), a tokenised cache.

Both loaders return the same thing: a `datasets.Dataset` with columns `text_a`, `text_b` (None for
single-sentence tasks) and `label` (class index in the `nyu-mll/glue` label order; float score for STS-B),
so everything downstream is blind to where the data came from.

Past ~400 lines on purpose: the task table, its two loaders and the tokenised cache change together
(a new task is a row here and the loaders must read it).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import ConfigError, DataError
from .atomic import write_dir_atomically

HUB_DATASET = "nyu-mll/glue"
CACHE_ENV = "RAYTICKETS_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/raytickets/tokenized"
# Bump when the tokenised layout changes, so old caches are not read as new ones.
CACHE_FORMAT = 1
MIN_SEQ_LENGTH = 8  # room for [CLS]/[SEP]/[SEP] and a few tokens of each text


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE task: where its text and labels are (hub and TSV), how it is scored."""

    name: str  # our id: "sst2"
    glue_name: str  # directory in the GLUE download: "SST-2"
    hub_name: str  # config of nyu-mll/glue: "sst2"
    text_columns: tuple[str, ...]  # hub column names, one or two
    label_list: tuple[str, ...]  # hub label names in label-id order; () for regression
    metrics: tuple[str, ...]
    main_metric: str
    dev_splits: tuple[str, ...]
    # The original TSV release: the columns to read (located by header name) and the raw label
    # strings in label-id order. `tsv_header` is set only for CoLA, whose files have no header line.
    tsv_text_columns: tuple[str, ...]
    tsv_label_column: str
    tsv_labels: tuple[str, ...]
    tsv_header: tuple[str, ...] | None = None
    # Chen et al. 2020 report MRPC and QQP accuracy and MNLI matched accuracy (`metrics: paper`); None = the
    # GLUE main metric above. Every metric is stored either way.
    paper_metric: str | None = None
    # Training settings the task's recipe sets where a config leaves them null (config.resolve).
    recipe: dict = field(default_factory=lambda: {"warmup_ratio": 0.1, "grad_accumulation": 1})
    # "sequence": a GLUE task (a head on the pooled [CLS]); "mlm": masked-language modelling on a corpus (mlm.py);
    # "span": extractive question answering, a start/end head on every token (squad.py)
    objective: str = "sequence"

    @property
    def is_mlm(self) -> bool:
        return self.objective == "mlm"

    @property
    def is_span(self) -> bool:
        return self.objective == "span"

    def main_metric_for(self, convention: str) -> str:
        """The main metric under a convention: "glue" (the GLUE main metric) or "paper" (Chen et al.'s)."""
        return (self.paper_metric or self.main_metric) if convention == "paper" else self.main_metric

    @property
    def is_regression(self) -> bool:
        return not self.label_list and self.objective == "sequence"

    @property
    def num_labels(self) -> int:
        if self.is_span:
            return 2  # a start and an end logit per token
        return 1 if self.is_regression else len(self.label_list)  # 1 = a regression head


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_NLI3 = ("entailment", "neutral", "contradiction")
_PAIR = ("sentence1", "sentence2")

# Official GLUE metrics. Where a task has two, the main metric (the one tickets are judged by) is the
# first GLUE lists: F1 for MRPC/QQP (their classes are imbalanced, so accuracy flatters a majority
# guess) and Pearson for STS-B; Matthews for CoLA; accuracy elsewhere.
TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("cola", "CoLA", "cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews",), "matthews",
                 ("dev",), ("sentence",), "label", _BINARY, tsv_header=("source", "label", "marker", "sentence")),
        TaskSpec("sst2", "SST-2", "sst2", ("sentence",), ("negative", "positive"), ("accuracy",), "accuracy",
                 ("dev",), ("sentence",), "label", _BINARY),
        TaskSpec("mrpc", "MRPC", "mrpc", _PAIR, ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1",
                 ("dev",), ("#1 String", "#2 String"), "Quality", _BINARY, paper_metric="accuracy"),
        TaskSpec("stsb", "STS-B", "stsb", _PAIR, (), ("pearson", "spearman"), "pearson",
                 ("dev",), _PAIR, "score", ()),
        TaskSpec("qqp", "QQP", "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy"),
                 "f1", ("dev",), ("question1", "question2"), "is_duplicate", _BINARY, paper_metric="accuracy"),
        TaskSpec("mnli", "MNLI", "mnli", ("premise", "hypothesis"), _NLI3, ("accuracy",), "accuracy",
                 ("dev_matched", "dev_mismatched"), _PAIR, "gold_label", _NLI3, paper_metric="accuracy_matched"),
        TaskSpec("qnli", "QNLI", "qnli", ("question", "sentence"), _NLI2, ("accuracy",), "accuracy",
                 ("dev",), ("question", "sentence"), "label", _NLI2),
        TaskSpec("rte", "RTE", "rte", _PAIR, _NLI2, ("accuracy",), "accuracy", ("dev",), _PAIR, "label", _NLI2),
        # WNLI's TSV says 0/1 where the hub says not_entailment/entailment: 1 = entailment in both.
        TaskSpec("wnli", "WNLI", "wnli", _PAIR, ("not_entailment", "entailment"), ("accuracy",), "accuracy",
                 ("dev",), _PAIR, "label", _BINARY),
        # Masked-language modelling (Chen et al.'s MLM tickets): a corpus (data.corpus), not a GLUE split. Accuracy
        # over the masked positions is the main metric (higher is better); perplexity is stored beside it. The
        # academic-budget recipe: 6% warmup, a large effective batch (4 accumulated batches here).
        TaskSpec("mlm", "", "", (), (), ("accuracy", "perplexity"), "accuracy", ("dev",), (), "", (),
                 recipe={"warmup_ratio": 0.06, "grad_accumulation": 4}, objective="mlm"),
        # SQuAD v1.1 (squad.py): token F1 is the main metric (the one Chen et al. report), exact match beside it;
        # both after the official answer normalisation, on a 0-1 scale like the GLUE metrics.
        TaskSpec("squad", "", "", ("question", "context"), (), ("f1", "exact_match"), "f1", ("dev",), (), "", (),
                 objective="span"),
    )
}
GLUE = tuple(name for name, t in TASKS.items() if t.objective == "sequence")

STSB_RANGE = (0.0, 5.0)


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ConfigError(f"task: unknown task {name!r}; allowed: {', '.join(TASKS)}")
    return TASKS[name]


# ---------------------------------------------------------------------------------------------- loading


def split_dataset(task: TaskSpec, text_a: Sequence[str], text_b: Sequence[str | None] | None, labels: Sequence):
    """The normalised shape both loaders return: text_a, text_b (None when single-sentence), label."""
    from datasets import ClassLabel, Dataset, Features, Value

    label = Value("float32") if task.is_regression else ClassLabel(names=list(task.label_list))
    features = Features({"text_a": Value("string"), "text_b": Value("string"), "label": label})
    text_b = list(text_b) if text_b is not None else [None] * len(text_a)
    return Dataset.from_dict({"text_a": list(text_a), "text_b": text_b, "label": list(labels)}, features=features)


def from_hub_split(task: TaskSpec, hub_split, source: str = HUB_DATASET):
    """Normalise one split as `nyu-mll/glue` publishes it (hub text columns, `label`, `idx`)."""
    missing = [c for c in (*task.text_columns, "label") if c not in hub_split.column_names]
    if missing:
        raise DataError(f"{source}: no column {missing[0]!r}; found {hub_split.column_names}")
    labels = list(hub_split["label"])
    if not task.is_regression:
        bad = next((i for i, y in enumerate(labels) if not 0 <= y < task.num_labels), None)
        if bad is not None:  # the hub's test splits are unlabelled (-1)
            raise DataError(f"{source}: row {bad}: label {labels[bad]!r} outside 0..{task.num_labels - 1}")
    text_b = list(hub_split[task.text_columns[1]]) if len(task.text_columns) == 2 else None
    return split_dataset(task, list(hub_split[task.text_columns[0]]), text_b, labels)


def load_split(task: TaskSpec, split: str, glue_dir: str | Path | None):
    """One split ("train", "dev", "dev_matched", ...) from a GLUE TSV directory, or from the hub if None."""
    allowed = ("train", *task.dev_splits)
    if split not in allowed:
        raise ConfigError(f"split: {split!r} is not a split of {task.name}; allowed: {', '.join(allowed)}")
    if glue_dir is None:
        return _load_hub_split(task, split)
    return _read_tsv(task, _split_file(task, split, glue_dir))


def _load_hub_split(task: TaskSpec, split: str):
    """The online path: `datasets` downloads (or reuses its own cache of) nyu-mll/glue."""
    import datasets

    hub_split = split.replace("dev", "validation")  # dev_matched -> validation_matched
    source = f"{HUB_DATASET}/{task.hub_name} ({hub_split})"
    try:
        raw = datasets.load_dataset(HUB_DATASET, task.hub_name, split=hub_split)
    except (ConnectionError, OSError) as exc:  # offline and not cached, or the hub is unreachable
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"glue_dir: not set and {source} could not be loaded ({reason}); "
                          f"set glue_dir to a directory in the GLUE TSV layout") from exc
    return from_hub_split(task, raw, source)


def _glue_root(glue_dir: str | Path) -> Path:
    root = Path(glue_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"glue_dir: directory '{glue_dir}' does not exist")
    return root


def _split_file(task: TaskSpec, split: str, glue_dir: str | Path) -> Path:
    path = _glue_root(glue_dir) / task.glue_name / f"{split}.tsv"
    if not path.is_file():
        raise DataError(f"{path}: split file does not exist; expected <glue_dir>/{task.glue_name}/{split}.tsv")
    return path


def _read_tsv(task: TaskSpec, path: Path):
    """Read one GLUE TSV strictly: every malformed line is a DataError naming file and line."""
    # utf-8-sig: MRPC's header starts with a byte-order mark; for the other files it changes nothing.
    # QUOTE_NONE: sentences contain double quotes that are text, not CSV quoting.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = task.tsv_header or next(reader, None)
        if header is None:
            raise DataError(f"{path}:1: file is empty; expected a header line")
        wanted = (*task.tsv_text_columns, task.tsv_label_column)
        for column in wanted:
            if column not in header:
                raise DataError(f"{path}:1: no column {column!r} in header {header}")
        where = [header.index(c) for c in wanted]
        texts: list[list[str]] = [[] for _ in task.tsv_text_columns]
        labels: list = []
        for row in reader:
            if len(row) != len(header):
                raise DataError(f"{path}:{reader.line_num}: {len(row)} columns, expected {len(header)} "
                                f"({', '.join(header)})")
            for column, i in zip(texts, where):
                column.append(row[i])
            labels.append(_parse_label(task, row[where[-1]], f"{path}:{reader.line_num}"))
        if not labels:
            problem = "file is empty" if task.tsv_header else "no data rows after the header"
            raise DataError(f"{path}:{reader.line_num + 1}: {problem}")
    return split_dataset(task, texts[0], texts[1] if len(texts) == 2 else None, labels)


def _parse_label(task: TaskSpec, raw: str, where: str) -> int | float:
    if task.is_regression:
        low, high = STSB_RANGE
        try:
            score = float(raw)
        except ValueError:
            raise DataError(f"{where}: {task.tsv_label_column} {raw!r} is not a number; "
                            f"expected a score from {low:g} to {high:g}") from None
        if not low <= score <= high:  # also rejects nan
            raise DataError(f"{where}: {task.tsv_label_column} {raw!r} outside {low:g}..{high:g}")
        return score
    if raw not in task.tsv_labels:
        raise DataError(f"{where}: {task.tsv_label_column} {raw!r} not in the label set {list(task.tsv_labels)}")
    return task.tsv_labels.index(raw)


# -------------------------------------------------------------------------------- tokenising and cache


def default_cache_dir() -> Path:
    """Where tokenised splits live: $RAYTICKETS_CACHE if set, else ~/.cache/raytickets/tokenized."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def tokenized_splits(task: TaskSpec, tokenizer, tokenizer_id: str, glue_dir: str | Path | None,
                     max_seq_length: int = 128, max_train_examples: int | None = None,
                     max_dev_examples: int | None = None, seed: int = 0,
                     cache_dir: str | Path | None = None) -> dict:
    """Train and dev splits ("train" + task.dev_splits), tokenised without padding, cached on disk.

    The cache key holds everything the result depends on, so a hit is never stale and a second call
    with the same arguments reads Arrow files instead of tokenising again.
    """
    from datasets import DatasetDict, load_from_disk

    check_lengths(tokenizer, max_seq_length, max_train_examples, max_dev_examples, seed)
    key = {
        "format": CACHE_FORMAT, "task": task.name, "tokenizer": tokenizer_id, "max_seq_length": max_seq_length,
        "max_train_examples": max_train_examples, "max_dev_examples": max_dev_examples, "seed": seed,
        "source": _source_fingerprint(task, glue_dir),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / f"{task.name}-{digest}"
    if not final.is_dir():
        with quiet_datasets():
            splits = {}
            for split in ("train", *task.dev_splits):
                limit = max_train_examples if split == "train" else max_dev_examples
                data = subsample(load_split(task, split, glue_dir), limit, seed)
                splits[split] = _tokenize(task, data, tokenizer, max_seq_length, f"{digest}-{split}")

            def write(d: Path) -> None:
                DatasetDict(splits).save_to_disk(str(d))
                (d / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True))

            write_dir_atomically(final, write)
    return dict(load_from_disk(str(final)))


@contextlib.contextmanager
def quiet_datasets():
    """No "Map" or "Saving the dataset" bars while the cache is built: they would bury a run's round lines."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if bars:
            datasets.enable_progress_bars()


def subsample(data, limit: int | None, seed: int):
    """`limit` rows chosen uniformly with `seed`, kept in file order; the same rows on every run."""
    if limit is None or limit >= len(data):
        return data
    rows = np.sort(np.random.default_rng(seed).choice(len(data), size=limit, replace=False))
    return data.select(rows.tolist())


def check_lengths(tokenizer, max_seq_length, max_train_examples, max_dev_examples, seed) -> None:
    longest = getattr(tokenizer, "model_max_length", None) or 512
    if not isinstance(max_seq_length, int) or not MIN_SEQ_LENGTH <= max_seq_length <= longest:
        raise ConfigError(f"max_seq_length: {max_seq_length!r}; allowed: an integer from {MIN_SEQ_LENGTH} "
                          f"to {longest} (the tokenizer's model_max_length)")
    for field, value in (("max_train_examples", max_train_examples), ("max_dev_examples", max_dev_examples)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{field}: {value!r}; allowed: a positive integer or null (all rows)")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed: {seed!r}; allowed: an integer")


def _source_fingerprint(task: TaskSpec, glue_dir: str | Path | None) -> str:
    """What the raw data is: sha256 of the TSV files (edits and copies are caught, `touch` is not a change)."""
    if glue_dir is None:
        # nyu-mll/glue is a fixed published release; its name is its identity.
        return f"hub:{HUB_DATASET}/{task.hub_name}"
    digest = hashlib.sha256()
    for split in ("train", *task.dev_splits):
        path = _split_file(task, split, glue_dir)
        digest.update(f"{split}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _tokenize(task: TaskSpec, data, tokenizer, max_seq_length: int, fingerprint: str):
    """input_ids, token_type_ids, attention_mask, labels; truncated, unpadded (the collator pads)."""
    pair = len(task.text_columns) == 2

    def encode(batch):
        args = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
        return dict(tokenizer(*args, truncation=True, max_length=max_seq_length))

    # new_fingerprint: datasets would otherwise hash `encode` (and the tokenizer in it) to name an
    # in-memory result we never reuse; our own cache key already identifies it.
    encoded = data.map(encode, batched=True, remove_columns=["text_a", "text_b"], new_fingerprint=fingerprint)
    return encoded.rename_column("label", "labels")


def collate(tokenizer) -> Callable:
    """Pads each batch to its own longest row (dynamic padding); returns tensors incl. "labels"."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer=tokenizer, return_tensors="pt")


# ------------------------------------------------------------------------------------------------ metrics


def compute_metrics(task: TaskSpec, predictions, labels) -> dict[str, float]:
    """The task's GLUE metrics from logits [N, C] (or class ids [N]), or scores [N] / [N, 1] for STS-B."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predictions, labels = np.asarray(predictions), np.asarray(labels)
    predicted = _predicted(task, predictions)
    if labels.ndim != 1 or len(labels) != len(predicted):
        raise DataError(f"labels: shape {labels.shape}; expected [{len(predicted)}] to match the predictions")
    scorers = {
        "accuracy": lambda: accuracy_score(labels, predicted),
        "f1": lambda: f1_score(labels, predicted),  # of the positive class (equivalent / duplicate), as GLUE
        "matthews": lambda: matthews_corrcoef(labels, predicted),
        "pearson": lambda: pearsonr(predicted, labels)[0],
        "spearman": lambda: spearmanr(predicted, labels)[0],
    }
    return {name: float(scorers[name]()) for name in task.metrics}


def chance_metrics(task: TaskSpec, labels) -> dict[str, float]:
    """The metrics of a constant predictor: the majority class (ties: the lowest label), or a constant score
    for STS-B. Correlations of a constant are undefined; their chance value is 0. A collapsed run is scored
    at these values rather than dropped."""
    import warnings

    labels = np.asarray(labels)
    if task.is_regression:
        return {name: 0.0 for name in task.metrics}
    majority = int(np.bincount(labels.astype(int), minlength=task.num_labels).argmax())
    with warnings.catch_warnings():  # sklearn warns that a constant predictor has an undefined F1 / MCC
        warnings.simplefilter("ignore")
        values = compute_metrics(task, np.full(len(labels), majority), labels)
    return {k: 0.0 if math.isnan(v) else v for k, v in values.items()}


# Metric columns of a round row; MNLI's splits get their own (`dev_matched/accuracy` -> `accuracy_matched`).
METRIC_COLUMNS = ("accuracy", "f1", "matthews", "pearson", "spearman", "accuracy_matched", "accuracy_mismatched",
                  "perplexity", "exact_match")


def flat_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    """`evaluate`'s metrics as the row's metric columns (None where the task has none)."""
    flat = {k: v for k, v in metrics.items() if "/" not in k}
    for key, value in metrics.items():
        if "/" in key:
            split, name = key.split("/", 1)
            flat[f"{name}_{split.removeprefix('dev_')}"] = value
    return {c: (float(flat[c]) if c in flat else None) for c in METRIC_COLUMNS}


def _predicted(task: TaskSpec, predictions: np.ndarray) -> np.ndarray:
    if task.is_regression:
        if predictions.ndim == 1 or (predictions.ndim == 2 and predictions.shape[1] == 1):
            return predictions.reshape(-1).astype(float)
    elif predictions.ndim == 2 and predictions.shape[1] == task.num_labels:
        return predictions.argmax(axis=1)
    elif predictions.ndim == 1 and np.issubdtype(predictions.dtype, np.integer):
        return predictions
    expected = "[N] or [N, 1] scores" if task.is_regression else f"[N, {task.num_labels}] logits or [N] class ids"
    raise DataError(f"predictions: shape {predictions.shape} for {task.name}; expected {expected}")
