"""SQuAD v1.1: the JSON layout (file, directory or `rajpurkar/squad`), question + context windows, spans back to
text across windows, and the official v1.1 metric.

Features follow the original BERT recipe (Chen et al.'s `squad_convert_examples_to_features`): the question,
then a window of the context's tokens; windows start every `doc_stride` tokens (the step between windows, as in
their code, not HF run_qa's overlap); a training answer not wholly inside a window is labelled at [CLS] (0).
The context is tokenised once, with a fast tokenizer's character offsets, so every context token maps back to
its characters and a predicted span is a slice of the original context.

The metric is the official v1.1 script's (its `normalize_answer`, `f1_score`, `exact_match_score`; each question
against the best of its gold answers, averaged) on a 0-1 scale like the GLUE metrics (the script prints 0-100).
It is written here, ~30 lines, because `evaluate.load("squad")` fetches its metric script from the hub (raytickets
runs offline) and `datasets` no longer ships metrics.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import write_dir_atomically
from .errors import ConfigError, DataError

HUB_DATASET = "rajpurkar/squad"
SPLITS = ("train", "dev")
CACHE_FORMAT = 1
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
NO_OFFSET = -1  # a token that is not context (question, [CLS], [SEP]): never an answer boundary


# ------------------------------------------------------------------------------------------- the metric


def normalize_answer(s: str) -> str:
    """The official v1.1 normalisation: lower case, no punctuation, no articles (a, an, the), one space."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 of the normalised answers (bag of tokens, as the official script)."""
    pred, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred) & collections.Counter(truth)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(truth)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_metrics(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    """EM and F1 averaged over questions, each question scored against the best of its gold answers."""
    if len(predictions) != len(golds) or not golds:
        raise DataError(f"predictions: {len(predictions)} answers for {len(golds)} questions")
    em = [max(exact_match(p, g) for g in gs) for p, gs in zip(predictions, golds)]
    f1 = [max(f1_score(p, g) for g in gs) for p, gs in zip(predictions, golds)]
    return {"f1": float(np.mean(f1)), "exact_match": float(np.mean(em))}


def chance_metrics(golds: list[list[str]]) -> dict[str, float]:
    """The metrics of the empty answer (F1 and EM 0 on v1.1, where every question has an answer): what a model
    that learned nothing scores, and the value a collapsed run is scored at."""
    return squad_metrics([""] * len(golds), golds)


# ----------------------------------------------------------------------------------------------- loading


def read_json(path: str | Path):
    """One split in the SQuAD JSON layout as a `datasets.Dataset` (id, question, context, answers, answer_starts);
    a file that is not SQuAD JSON, or an answer_start that does not point at its text, is a one-line DataError."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not SQuAD JSON ({str(e).splitlines()[0]})") from None
    rows = {k: [] for k in ("id", "question", "context", "answers", "answer_starts")}
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise DataError(f"{path}: not SQuAD JSON; expected {{\"data\": [{{\"title\", \"paragraphs\": [...]}}], "
                        f"\"version\"}}")
    where = "data"
    try:
        for a, article in enumerate(raw["data"]):
            where = f"data[{a}]"
            for p, paragraph in enumerate(article["paragraphs"]):
                where = f"data[{a}].paragraphs[{p}]"
                for qa in paragraph["qas"]:
                    _add_question(rows, paragraph["context"], qa, path)
    except (KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: not SQuAD JSON at {where} ({type(e).__name__}: {e}); expected paragraphs: "
                        "[{context, qas: [{id, question, answers: [{text, answer_start}]}]}]") from None
    if not rows["id"]:
        raise DataError(f"{path}: SQuAD JSON without a question")
    return _dataset(rows)


def _add_question(rows: dict, context: str, qa: dict, path) -> None:
    answers = qa["answers"]
    if not answers:
        raise DataError(f"{path}: question {qa['id']}: no answer (SQuAD v1.1 has an answer for every question)")
    for ans in answers:
        text, start = ans["text"], ans["answer_start"]
        if not isinstance(start, int) or context[start:start + len(text)] != text:
            raise DataError(f"{path}: question {qa['id']}: answer_start {start!r} does not point at its text "
                            f"{text!r} (the context there: {context[start:start + len(text)]!r})"
                            if isinstance(start, int) else f"{path}: question {qa['id']}: answer_start {start!r} "
                            "is not an integer")
    rows["id"].append(str(qa["id"]))
    rows["question"].append(qa["question"])
    rows["context"].append(context)
    rows["answers"].append([a["text"] for a in answers])
    rows["answer_starts"].append([int(a["answer_start"]) for a in answers])


def _dataset(rows: dict):
    from datasets import Dataset, Features, Sequence, Value

    features = Features({"id": Value("string"), "question": Value("string"), "context": Value("string"),
                         "answers": Sequence(Value("string")), "answer_starts": Sequence(Value("int32"))})
    return Dataset.from_dict(rows, features=features)


def split_file(split: str, squad_dir: str | None, path: str | None) -> Path | None:
    """The JSON file of a split: its own path, else the one `<split>*.json` in `squad_dir`; None = the hub."""
    if path is not None:
        if not Path(path).expanduser().is_file():
            raise ConfigError(f"data.squad_{split}: file {path!r} does not exist")
        return Path(path).expanduser()
    if squad_dir is None:
        return None
    root = Path(squad_dir).expanduser()
    if root.is_file():
        raise ConfigError(f"data.squad_dir: {squad_dir!r} is a file; give a directory, or data.squad_train / "
                          "data.squad_dev for one file per split")
    found = sorted(root.glob(f"{split}*.json"))
    if len(found) != 1:
        raise ConfigError(f"data.squad_dir: {len(found)} files {split}*.json in {squad_dir!r} "
                          f"({', '.join(f.name for f in found) or 'none'}); expected one, or set data.squad_{split}")
    return found[0]


def load_split(split: str, squad_dir: str | None = None, path: str | None = None):
    """A split from its file (or `squad_dir`), or from the hub (`rajpurkar/squad`) when neither is set."""
    file = split_file(split, squad_dir, path)
    if file is not None:
        return read_json(file)
    return _load_hub(split)


def _load_hub(split: str):
    """The online path: `datasets` downloads (or reuses its own cache of) rajpurkar/squad."""
    import datasets

    hub_split = "validation" if split == "dev" else split
    try:
        raw = datasets.load_dataset(HUB_DATASET, split=hub_split)
    except (ConnectionError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"data.squad_dir: not set and {HUB_DATASET} ({hub_split}) could not be loaded ({reason}); "
                          "set data.squad_dir to a directory of SQuAD JSON files") from exc
    return _dataset({"id": raw["id"], "question": raw["question"], "context": raw["context"],
                     "answers": [a["text"] for a in raw["answers"]],
                     "answer_starts": [a["answer_start"] for a in raw["answers"]]})


def source_fingerprint(split: str, squad_dir: str | None, path: str | None) -> str:
    file = split_file(split, squad_dir, path)
    if file is None:
        return f"hub:{HUB_DATASET}"
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -------------------------------------------------------------------------------------------- features


def check_window(max_seq_length: int, doc_stride: int) -> None:
    if not isinstance(doc_stride, int) or isinstance(doc_stride, bool) or not 1 <= doc_stride < max_seq_length:
        raise ConfigError(f"data.doc_stride: {doc_stride!r}; allowed: an integer from 1 to max_seq_length - 1 "
                          f"({max_seq_length - 1}): the step between a context's windows")


def window_starts(n_context: int, room: int, doc_stride: int) -> list[int]:
    """Where each window of `room` context tokens starts: every min(room, doc_stride) tokens until the context's
    end is inside one (BERT's run_squad; a window never skips a token)."""
    starts, start = [0], 0
    while start + room < n_context:
        start += min(room, doc_stride)
        starts.append(start)
    return starts


def answer_tokens(starts: list[int], ends: list[int], char_start: int, char_end: int) -> tuple[int, int]:
    """The first and last context token overlapping the characters [char_start, char_end)."""
    first = bisect.bisect_right(ends, char_start)  # offsets ascend: the first token ending after char_start
    last = bisect.bisect_left(starts, char_end) - 1  # the last token starting before char_end
    return first, max(first, last)


def build_features(examples, tokenizer, max_seq_length: int, doc_stride: int, train: bool) -> dict[str, list]:
    """One row per window. Training rows carry start/end positions ([CLS] when the answer is not wholly inside);
    evaluation rows the example they belong to and each token's context characters (-1 outside the context)."""
    check_window(max_seq_length, doc_stride)
    questions = tokenizer(list(examples["question"]), add_special_tokens=False)["input_ids"]
    contexts = list(dict.fromkeys(examples["context"]))  # a paragraph's questions share its context
    # verbose=False: a whole context is longer than the model's window by design; windows cut it below
    encoded = tokenizer(contexts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    tokens = {c: (ids, offs) for c, ids, offs in zip(contexts, encoded["input_ids"], encoded["offset_mapping"])}
    answer_starts, answers = (list(examples["answer_starts"]), list(examples["answers"])) if train else ([], [])
    out = collections.defaultdict(list)
    for i, (qid, question, context) in enumerate(zip(examples["id"], questions, examples["context"])):
        room = max_seq_length - len(question) - 3  # [CLS] question [SEP] context [SEP]
        if room < 1:
            raise DataError(f"question {qid}: {len(question)} tokens leave no room for context in max_seq_length "
                            f"{max_seq_length}; raise data.max_seq_length above {len(question) + 3}")
        ids, offsets = tokens[context]
        starts, ends = [o[0] for o in offsets], [o[1] for o in offsets]
        answer = None
        if train:
            a = answer_starts[i][0]  # training uses the first gold answer (train has one per question)
            answer = answer_tokens(starts, ends, a, a + len(answers[i][0]))
        for w in window_starts(len(ids), room, doc_stride):
            _window(out, tokenizer, question, ids[w:w + room], starts[w:w + room], ends[w:w + room], w, answer, i)
    return dict(out)


def _window(out, tokenizer, question, ids, starts, ends, w, answer, example) -> None:
    head = len(question) + 2
    out["input_ids"].append([tokenizer.cls_token_id, *question, tokenizer.sep_token_id, *ids, tokenizer.sep_token_id])
    out["token_type_ids"].append([0] * head + [1] * (len(ids) + 1))
    out["attention_mask"].append([1] * (head + len(ids) + 1))
    if answer is not None:
        first, last = answer
        inside = w <= first and last < w + len(ids)
        out["start_positions"].append(first - w + head if inside else 0)
        out["end_positions"].append(last - w + head if inside else 0)
    else:
        pad = [NO_OFFSET] * head
        out["example"].append(example)
        out["offset_start"].append([*pad, *starts, NO_OFFSET])
        out["offset_end"].append([*pad, *ends, NO_OFFSET])


# ------------------------------------------------------------------------------------ the cached splits


@dataclass
class SquadDev:
    """A dev split: its windows (`features`), the questions they came from (`examples`) and how spans are read."""

    features: object
    examples: object
    n_best: int = 20
    max_answer_length: int = 30

    def __len__(self) -> int:
        return len(self.examples)


def squad_splits(tokenizer, tokenizer_id: str, data, seed: int = 0, cache_dir=None) -> dict:
    """{"train": training windows, "dev": SquadDev}, tokenised once per setting and cached like the GLUE tasks.

    `data` is the config's data section (squad_dir / squad_train / squad_dev, max_seq_length, doc_stride,
    max_train_examples and max_dev_examples, which count questions, n_best, max_answer_length)."""
    from datasets import DatasetDict, load_from_disk

    from .tasks import check_lengths, default_cache_dir, quiet_datasets, subsample

    check_lengths(tokenizer, data.max_seq_length, data.max_train_examples, data.max_dev_examples, seed)
    stride = data.squad_stride()
    check_window(data.max_seq_length, stride)
    paths = {s: getattr(data, f"squad_{s}") for s in SPLITS}
    key = {"format": CACHE_FORMAT, "task": "squad", "tokenizer": tokenizer_id, "max_seq_length": data.max_seq_length,
           "doc_stride": stride, "max_train_examples": data.max_train_examples,
           "max_dev_examples": data.max_dev_examples, "seed": seed,
           "source": {s: source_fingerprint(s, data.squad_dir, paths[s]) for s in SPLITS}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / f"squad-{digest}"
    if not final.is_dir():
        with quiet_datasets():
            train = subsample(load_split("train", data.squad_dir, paths["train"]), data.max_train_examples, seed)
            dev = subsample(load_split("dev", data.squad_dir, paths["dev"]), data.max_dev_examples, seed)
            splits = _featurise(train, dev, tokenizer, data.max_seq_length, stride)

            def write(d: Path) -> None:
                DatasetDict(splits).save_to_disk(str(d))
                (d / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True))

            write_dir_atomically(final, write)
    stored = load_from_disk(str(final))
    return {"train": stored["train"], "dev": SquadDev(stored["dev"], stored["dev_examples"], data.n_best,
                                                      data.max_answer_length)}


def _featurise(train, dev, tokenizer, max_seq_length: int, doc_stride: int) -> dict:
    from datasets import Dataset

    return {"train": Dataset.from_dict(build_features(train, tokenizer, max_seq_length, doc_stride, train=True)),
            "dev": Dataset.from_dict(build_features(dev, tokenizer, max_seq_length, doc_stride, train=False)),
            "dev_examples": dev}


# ------------------------------------------------------------------------------ spans back to answers


def best_answers(dev: SquadDev, start_logits: list[np.ndarray], end_logits: list[np.ndarray]) -> list[str]:
    """Each question's answer: the highest start + end logit over its windows' n-best starts and ends, the span
    inside the context, end >= start, at most `max_answer_length` tokens; "" where no window has a valid span."""
    best: dict[int, tuple[float, str]] = {}
    feats = dev.features
    contexts = list(dev.examples["context"])
    for f, (example, o_start, o_end) in enumerate(zip(feats["example"], feats["offset_start"], feats["offset_end"])):
        found = _best_span(start_logits[f], end_logits[f], np.asarray(o_start), dev.n_best, dev.max_answer_length)
        if found is None:
            continue
        score, s, e = found
        if example not in best or score > best[example][0]:
            best[example] = (score, contexts[example][o_start[s]:o_end[e]])
    return [best[i][1] if i in best else "" for i in range(len(dev.examples))]


def _best_span(start: np.ndarray, end: np.ndarray, offset_start: np.ndarray, n_best: int, max_len: int):
    n = min(len(start), len(offset_start))
    start, end = start[:n], end[:n]
    top_s = np.argsort(start)[::-1][:n_best]
    top_e = np.argsort(end)[::-1][:n_best]
    s, e = np.meshgrid(top_s, top_e, indexing="ij")
    valid = (offset_start[s] != NO_OFFSET) & (offset_start[e] != NO_OFFSET) & (e >= s) & (e - s + 1 <= max_len)
    if not valid.any():
        return None
    scores = np.where(valid, start[s] + end[e], -np.inf)
    i = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return float(scores[i]), int(s[i]), int(e[i])


# ----------------------------------------------------------------------------------------- evaluation


def predict_logits(model, features, collate, batch_size: int, precision: str = "fp32"):
    """Start and end logits of every window (each trimmed to its own length), this rank's shard gathered to
    every rank in feature order."""
    import torch
    import torch.distributed as dist

    from .distributed import world
    from .precision import autocast

    rank, size = world()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    mine = list(range(rank, len(features), size))
    inputs = features.select_columns(list(MODEL_INPUTS))
    starts, ends = [], []
    with torch.no_grad():
        for at in range(0, len(mine), batch_size):
            cols = inputs[mine[at:at + batch_size]]
            rows = [dict(zip(MODEL_INPUTS, values)) for values in zip(*(cols[k] for k in MODEL_INPUTS))]
            batch = {k: v.to(device) for k, v in collate(rows).items()}
            with autocast(precision, device):
                out = model(**batch)
            lengths = batch["attention_mask"].sum(1).tolist()
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            starts += [s[j, :n] for j, n in enumerate(lengths)]
            ends += [e[j, :n] for j, n in enumerate(lengths)]
    model.train(was_training)
    if size == 1:
        return starts, ends
    parts = [None] * size
    dist.all_gather_object(parts, (mine, starts, ends))
    order = np.argsort(np.concatenate([p[0] for p in parts]))
    flat_s = [x for p in parts for x in p[1]]
    flat_e = [x for p in parts for x in p[2]]
    return [flat_s[i] for i in order], [flat_e[i] for i in order]


def evaluate(model, dev: SquadDev, collate, batch_size: int, precision: str = "fp32"):
    """(metrics, chance): F1 and EM of the model's best spans on `dev`, and of the empty answer."""
    starts, ends = predict_logits(model, dev.features, collate, batch_size, precision)
    golds = list(dev.examples["answers"])
    return squad_metrics(best_answers(dev, starts, ends), golds), chance_metrics(golds)


def answer(model, tokenizer, question: str, context: str, max_seq_length: int = 384, doc_stride: int = 128,
           n_best: int = 20, max_answer_length: int = 30) -> str:
    """The answer a question-answering model (an exported squad ticket's directory, loaded with
    AutoModelForQuestionAnswering) gives, read as evaluation reads it. transformers 5 removed the
    question-answering pipeline (its MIGRATION_GUIDE_V5), so this is the way to ask one question."""
    from transformers import DataCollatorWithPadding

    examples = _dataset({"id": ["q"], "question": [question], "context": [context], "answers": [[""]],
                         "answer_starts": [[0]]})
    from datasets import Dataset

    features = Dataset.from_dict(build_features(examples, tokenizer, max_seq_length, doc_stride, train=False))
    dev = SquadDev(features, examples, n_best, max_answer_length)
    starts, ends = predict_logits(model, features, DataCollatorWithPadding(tokenizer, return_tensors="pt"), 8)
    return best_answers(dev, starts, ends)[0]
