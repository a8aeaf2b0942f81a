"""GLUE tasks: the task table, both loaders' common shape, strict TSV reading, metrics, the tokenised cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from raytickets.errors import ConfigError, DataError
from raytickets.models import load_tokenizer
from raytickets.atomic import publish
from raytickets.tasks import (
    GLUE,
    TASKS,
    collate,
    compute_metrics,
    default_cache_dir,
    from_hub_split,
    get_task,
    load_split,
    subsample,
    tokenized_splits,
)

# ------------------------------------------------------------------------------------ helpers, fixtures


def write_tsv(path, header, rows, bom=False, trailing_newline=True):
    lines = (["\t".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]
    text = ("\ufeff" if bom else "") + "\n".join(lines) + ("\n" if trailing_newline else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]
QQP_HEADER = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
QNLI_HEADER = ["index", "question", "sentence", "label"]
WNLI_HEADER = ["index", "sentence1", "sentence2", "label"]
MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-2] + ["label1", "label2", "label3", "label4", "label5", "gold_label"]


def stsb_row(i, a, b, score):
    return [i, "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b, score]


def mnli_row(i, a, b, gold, dev=False):
    return [i, 31193, f"{i}n", "government", "( x )", "( y )", "(ROOT x)", "(ROOT y)", a, b,
            *([gold] * (5 if dev else 1)), gold]


@pytest.fixture
def small_glue(tmp_path):
    """STS-B, QQP, QNLI, MNLI and WNLI in the original TSV layout, a few rows each."""
    root = tmp_path / "glue"
    stsb = [stsb_row(0, "A plane is taking off.", "An air plane is taking off.", "5.000"),
            stsb_row(1, 'A man said "hi".', "A man is playing a flute.", "0.8"),
            stsb_row(2, "A cat eats.", "A cat is eating.", "3.75")]
    write_tsv(root / "STS-B" / "train.tsv", STSB_HEADER, stsb)
    write_tsv(root / "STS-B" / "dev.tsv", STSB_HEADER, stsb[:2])
    qqp = [[0, 1, 2, "How do I learn Python?", "What is the best way to learn Python?", 1],
           [1, 3, 4, "Why is the sky blue?", "How tall is Everest?", 0],
           [2, 5, 6, 'What does "GLUE" mean?', "What is GLUE?", 1]]
    write_tsv(root / "QQP" / "train.tsv", QQP_HEADER, qqp)
    write_tsv(root / "QQP" / "dev.tsv", QQP_HEADER, qqp[1:])
    qnli = [[0, "Who wrote Hamlet?", "Hamlet was written by Shakespeare.", "entailment"],
            [1, "When did it rain?", "The sun is hot.", "not_entailment"]]
    write_tsv(root / "QNLI" / "train.tsv", QNLI_HEADER, qnli)
    write_tsv(root / "QNLI" / "dev.tsv", QNLI_HEADER, qnli[::-1])
    wnli = [[0, "The trophy didn't fit in the case because it was too big.", "The trophy was too big.", 1],
            [1, "The trophy didn't fit in the case because it was too big.", "The case was too big.", 0]]
    write_tsv(root / "WNLI" / "train.tsv", WNLI_HEADER, wnli)
    write_tsv(root / "WNLI" / "dev.tsv", WNLI_HEADER, wnli[:1])
    write_tsv(root / "MNLI" / "train.tsv", MNLI_TRAIN_HEADER,
              [mnli_row(0, "A man walks.", "A person moves.", "entailment"),
               mnli_row(1, "A man walks.", "The man is late.", "neutral"),
               mnli_row(2, "A man walks.", "Nobody walks.", "contradiction")])
    write_tsv(root / "MNLI" / "dev_matched.tsv", MNLI_DEV_HEADER,
              [mnli_row(0, "Kids play.", "Children play.", "entailment", dev=True),
               mnli_row(1, "Kids play.", "Kids sleep.", "contradiction", dev=True)])
    # Columns in another order: the reader must find them by header name, not position.
    reordered = MNLI_DEV_HEADER[::-1]
    rows = [mnli_row(0, "It rains.", "It is wet.", "neutral", dev=True)]
    write_tsv(root / "MNLI" / "dev_mismatched.tsv", reordered, [r[::-1] for r in rows])
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm")


class CountingTokenizer:
    """The real tokenizer, counting how often it is asked to tokenise (a cache hit must not ask)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


# ------------------------------------------------------------------------------------------ task table

HUB_LABELS = {  # label names in nyu-mll/glue's label-id order
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "stsb": (),
    "qqp": ("not_duplicate", "duplicate"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
}
MAIN_METRIC = {"cola": "matthews", "mrpc": "f1", "qqp": "f1", "stsb": "pearson"}


def test_task_table_has_all_nine_glue_tasks_with_hub_label_order():
    assert list(GLUE) == list(HUB_LABELS) and list(TASKS) == [*HUB_LABELS, "mlm", "squad"]
    assert TASKS["mlm"].is_mlm and not TASKS["mlm"].is_regression and TASKS["mlm"].main_metric == "accuracy"
    squad = TASKS["squad"]  # question answering: not a GLUE task, not a regression, F1 then exact match
    assert squad.is_span and not squad.is_regression and squad.metrics == ("f1", "exact_match")
    for name in GLUE:
        task = TASKS[name]
        assert get_task(name) is task and task.name == task.hub_name == name
        assert task.label_list == HUB_LABELS[name]
        assert task.main_metric == MAIN_METRIC.get(name, "accuracy")
        assert task.main_metric == task.metrics[0]
        assert task.num_labels == (1 if name == "stsb" else len(HUB_LABELS[name]))
        assert task.is_regression == (name == "stsb")
        assert len(task.text_columns) == (1 if name in ("cola", "sst2") else 2)
    assert TASKS["mnli"].dev_splits == ("dev_matched", "dev_mismatched")
    assert TASKS["mrpc"].metrics == ("f1", "accuracy") and TASKS["stsb"].metrics == ("pearson", "spearman")


def test_unknown_task_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"^task: unknown task 'sst-3'; allowed: cola, sst2, mrpc, stsb, qqp, "
                                          r"mnli, qnli, rte, wnli, mlm, squad$"):
        get_task("sst-3")


# ------------------------------------------------------------------------------------ the real TSVs


@pytest.mark.parametrize("name, train_rows, dev_rows", [
    ("cola", 8551, 1043), ("sst2", 67349, 872), ("mrpc", 3668, 408), ("rte", 2490, 277)])
def test_shared_glue_tasks_have_the_documented_row_counts(glue_dir, name, train_rows, dev_rows):
    task = get_task(name)
    train, dev = load_split(task, "train", glue_dir), load_split(task, "dev", glue_dir)
    assert (len(train), len(dev)) == (train_rows, dev_rows)
    assert train.column_names == ["text_a", "text_b", "label"]
    assert set(train["label"]) == set(dev["label"]) == {0, 1}
    assert train.features["label"].names == list(task.label_list)
    assert all(dev["text_a"]) and (dev["text_b"] == [None] * dev_rows) == (name in ("cola", "sst2"))


def test_shared_glue_first_rows_keep_quotes_bom_free_header_and_label_ids(glue_dir):
    cola = load_split(get_task("cola"), "dev", glue_dir)
    assert cola[0] == {"text_a": "The sailors rode the breeze clear of the rocks.", "text_b": None, "label": 1}
    # CoLA/dev.tsv has no trailing newline: its last line is still a row.
    last_line = (glue_dir / "CoLA" / "dev.tsv").read_text(encoding="utf-8").split("\n")[-1]
    assert cola[-1]["text_a"] == last_line.split("\t")[3] != ""
    mrpc = load_split(get_task("mrpc"), "dev", glue_dir)[0]
    assert mrpc["label"] == 1 and mrpc["text_b"].startswith('"The foodservice pie business')  # quote is text
    rte = load_split(get_task("rte"), "dev", glue_dir)[0]
    assert rte["text_b"] == "Christopher Reeve had an accident." and rte["label"] == 1  # not_entailment


# ------------------------------------------------------------------------- other tasks, small TSVs


def test_stsb_scores_are_floats(small_glue):
    train = load_split(get_task("stsb"), "train", small_glue)
    assert train["label"] == pytest.approx([5.0, 0.8, 3.75])
    assert train[1]["text_a"] == 'A man said "hi".' and train.features["label"] == Value("float32")


def test_qqp_qnli_wnli_read_text_pairs_and_map_labels(small_glue):
    qqp = load_split(get_task("qqp"), "train", small_glue)
    assert qqp["label"] == [1, 0, 1] and qqp[2]["text_a"] == 'What does "GLUE" mean?'
    assert qqp[0]["text_b"] == "What is the best way to learn Python?"
    qnli = load_split(get_task("qnli"), "dev", small_glue)
    assert qnli["label"] == [1, 0] and qnli[1]["text_a"] == "Who wrote Hamlet?"
    wnli = load_split(get_task("wnli"), "train", small_glue)
    assert wnli["label"] == [1, 0] and wnli.features["label"].int2str(1) == "entailment"


def test_mnli_splits_find_columns_by_header_name(small_glue):
    mnli = get_task("mnli")
    train = load_split(mnli, "train", small_glue)
    assert train["label"] == [0, 1, 2] and train[2]["text_b"] == "Nobody walks."
    matched = load_split(mnli, "dev_matched", small_glue)
    assert matched["label"] == [0, 2] and matched[0]["text_a"] == "Kids play."
    mismatched = load_split(mnli, "dev_mismatched", small_glue)
    assert mismatched[0] == {"text_a": "It rains.", "text_b": "It is wet.", "label": 1}
    with pytest.raises(ConfigError, match=r"^split: 'dev' is not a split of mnli; allowed: train, dev_matched"):
        load_split(mnli, "dev", small_glue)


def test_missing_glue_dir_is_a_config_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as err:
        load_split(get_task("rte"), "train", missing)
    assert str(err.value) == f"glue_dir: directory '{missing}' does not exist"


# ------------------------------------------------------------------------------------- malformed input

MALFORMED = {  # id: (task, header, rows, line, message fragment)
    "wrong column count": ("rte", WNLI_HEADER, [[0, "a", "b", "entailment"], [1, "a", "entailment"]],
                           3, "3 columns, expected 4 (index, sentence1, sentence2, label)"),
    "cola wrong column count": ("cola", None, [["gj04", 1, "", "Fine."], ["gj04", 1, "Broken."]],
                                2, "3 columns, expected 4 (source, label, marker, sentence)"),
    "label outside set": ("qnli", QNLI_HEADER, [[0, "q", "s", "entailment"], [1, "q", "s", "maybe"]],
                          3, "label 'maybe' not in the label set ['entailment', 'not_entailment']"),
    "mnli unlabelled": ("mnli", MNLI_TRAIN_HEADER, [mnli_row(0, "a", "b", "-")],
                        2, "gold_label '-' not in the label set ['entailment', 'neutral', 'contradiction']"),
    "binary label outside set": ("sst2", ["sentence", "label"], [["good", 1], ["bad", 2]],
                                 3, "label '2' not in the label set ['0', '1']"),
    "non-numeric score": ("stsb", STSB_HEADER, [stsb_row(0, "a", "b", "high")],
                          2, "score 'high' is not a number; expected a score from 0 to 5"),
    "score out of range": ("stsb", STSB_HEADER, [stsb_row(0, "a", "b", "1"), stsb_row(1, "a", "b", "7.5")],
                           3, "score '7.5' outside 0..5"),
    "missing column": ("qqp", QQP_HEADER[:-1], [[0, 1, 2, "a", "b"]], 1, "no column 'is_duplicate' in header"),
    "header only": ("wnli", WNLI_HEADER, [], 2, "no data rows after the header"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_tsv_names_file_and_line(tmp_path, case):
    name, header, rows, line, fragment = MALFORMED[case]
    task = get_task(name)
    path = write_tsv(tmp_path / task.glue_name / "train.tsv", header, rows)
    with pytest.raises(DataError) as err:
        load_split(task, "train", tmp_path)
    assert str(err.value).startswith(f"{path}:{line}: ") and fragment in str(err.value)


@pytest.mark.parametrize("name", ["sst2", "cola"])
def test_empty_file_is_a_data_error(tmp_path, name):
    task = get_task(name)
    path = tmp_path / task.glue_name / "dev.tsv"
    path.parent.mkdir()
    path.write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_split(task, "dev", tmp_path)
    assert str(err.value).startswith(f"{path}:1: file is empty")


def test_missing_split_file_is_a_data_error(small_glue):
    (small_glue / "QNLI" / "dev.tsv").unlink()
    with pytest.raises(DataError) as err:
        load_split(get_task("qnli"), "dev", small_glue)
    assert str(err.value).startswith(f"{small_glue / 'QNLI' / 'dev.tsv'}: split file does not exist")


# --------------------------------------------------------------------------------- the hub's shape


def hub_split(columns: dict, labels, names=None, regression=False):
    """A split shaped as nyu-mll/glue publishes it: its text columns, `label`, `idx`."""
    features = {c: Value("string") for c in columns}
    features["label"] = Value("float32") if regression else ClassLabel(names=list(names))
    features["idx"] = Value("int32")
    return Dataset.from_dict({**columns, "label": labels, "idx": list(range(len(labels)))}, Features(features))


def test_hub_and_tsv_loaders_return_the_same_dataset(small_glue, glue_dir):
    cases = [
        ("mnli", "dev_matched", {"premise": ["Kids play.", "Kids play."],
                                 "hypothesis": ["Children play.", "Kids sleep."]}, [0, 2]),
        ("wnli", "dev", {"sentence1": ["The trophy didn't fit in the case because it was too big."],
                         "sentence2": ["The trophy was too big."]}, [1]),
        ("stsb", "dev", {"sentence1": ["A plane is taking off.", 'A man said "hi".'],
                         "sentence2": ["An air plane is taking off.", "A man is playing a flute."]}, [5.0, 0.8]),
    ]
    for name, split, columns, labels in cases:
        task = get_task(name)
        from_hub = from_hub_split(task, hub_split(columns, labels, task.label_list, task.is_regression))
        from_tsv = load_split(task, split, small_glue)
        assert from_hub.features == from_tsv.features and from_hub[:] == from_tsv[:]
    sst2 = get_task("sst2")
    tsv = load_split(sst2, "dev", glue_dir).select(range(5))
    hub = hub_split({"sentence": tsv["text_a"]}, tsv["label"], sst2.label_list)
    assert from_hub_split(sst2, hub)[:] == tsv[:]


def test_hub_split_without_labels_or_columns_is_a_data_error():
    rte = get_task("rte")
    unlabelled = hub_split({"sentence1": ["a", "b"], "sentence2": ["c", "d"]}, [0, 0], rte.label_list)
    unlabelled = unlabelled.cast_column("label", Value("int64")).map(lambda row: {"label": -1})
    with pytest.raises(DataError, match=r"^nyu-mll/glue: row 0: label -1 outside 0\.\.1$"):
        from_hub_split(rte, unlabelled)
    with pytest.raises(DataError, match=r"^nyu-mll/glue: no column 'sentence2'"):
        from_hub_split(rte, hub_split({"sentence1": ["a"]}, [0], rte.label_list))


def test_hub_path_loads_or_says_why_not():
    # The tests run offline (conftest): without a local copy of nyu-mll/glue the online path must fail
    # with a one-line config error; with one, it must return the common shape.
    try:
        dev = load_split(get_task("rte"), "dev", None)
    except ConfigError as err:
        assert str(err).startswith("glue_dir: not set and nyu-mll/glue/rte (validation) could not be loaded")
        assert "\n" not in str(err)
    else:
        assert len(dev) == 277 and dev.column_names == ["text_a", "text_b", "label"]


# ------------------------------------------------------------------------------------------- metrics


def test_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    logits = rng.normal(size=(40, 2)) + np.eye(2)[labels]  # better than chance, not perfect
    predicted = logits.argmax(1)
    assert compute_metrics(get_task("cola"), logits, labels) == {
        "matthews": pytest.approx(matthews_corrcoef(labels, predicted))}
    for name in ("mrpc", "qqp"):
        assert compute_metrics(get_task(name), logits, labels) == {
            "f1": pytest.approx(f1_score(labels, predicted)), "accuracy": pytest.approx(accuracy_score(labels, predicted))}
    for name in ("sst2", "rte", "wnli", "qnli"):
        assert compute_metrics(get_task(name), logits, labels) == {"accuracy": pytest.approx(np.mean(predicted == labels))}
    assert compute_metrics(get_task("rte"), predicted, labels) == compute_metrics(get_task("rte"), logits, labels)
    labels3 = rng.integers(0, 3, 30)
    logits3 = rng.normal(size=(30, 3))
    assert compute_metrics(get_task("mnli"), logits3, labels3)["accuracy"] == pytest.approx(
        accuracy_score(labels3, logits3.argmax(1)))
    scores = rng.uniform(0, 5, 25)
    predictions = scores + rng.normal(scale=1.0, size=25)
    expected = {"pearson": pytest.approx(pearsonr(predictions, scores)[0]),
                "spearman": pytest.approx(spearmanr(predictions, scores)[0])}
    assert compute_metrics(get_task("stsb"), predictions[:, None], scores) == expected
    assert compute_metrics(get_task("stsb"), predictions, scores) == expected
    assert 0.3 < expected["pearson"].expected < 1.0


@pytest.mark.parametrize("name, predictions, labels, fragment", [
    ("rte", np.zeros((4, 3)), np.zeros(4, int), "predictions: shape (4, 3) for rte; expected [N, 2] logits"),
    ("rte", np.zeros(4), np.zeros(4, int), "predictions: shape (4,) for rte"),
    ("stsb", np.zeros((4, 2)), np.zeros(4), "predictions: shape (4, 2) for stsb; expected [N] or [N, 1]"),
    ("cola", np.zeros((4, 2)), np.zeros(3, int), "labels: shape (3,); expected [4]"),
])
def test_metrics_reject_mismatched_shapes(name, predictions, labels, fragment):
    with pytest.raises(DataError) as err:
        compute_metrics(get_task(name), predictions, labels)
    assert str(err.value).startswith(fragment)


# ---------------------------------------------------------------------------- subsampling and cache


def test_subsample_is_seeded_sorted_and_without_replacement():
    data = Dataset.from_dict({"i": list(range(100))})
    first, again = subsample(data, 10, seed=3)["i"], subsample(data, 10, seed=3)["i"]
    assert first == again == sorted(set(first)) and len(first) == 10
    assert subsample(data, 10, seed=4)["i"] != first
    assert subsample(data, None, 0) is data and subsample(data, 100, 0) is data


def rte_splits(tokenizer, glue_dir, cache_dir, **overrides):
    options = dict(max_seq_length=32, max_train_examples=40, max_dev_examples=20, seed=0, cache_dir=cache_dir)
    return tokenized_splits(get_task("rte"), tokenizer, "minilm", glue_dir, **{**options, **overrides})


def test_tokenized_splits_truncate_without_padding_and_keep_the_subsample(tokenizer, glue_dir, tmp_path):
    splits = rte_splits(tokenizer, glue_dir, tmp_path)
    assert list(splits) == ["train", "dev"] and (len(splits["train"]), len(splits["dev"])) == (40, 20)
    train = splits["train"]
    assert set(train.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    lengths = [len(ids) for ids in train["input_ids"]]
    assert max(lengths) == 32 and len(set(lengths)) > 1  # truncated to 32, not padded to it
    assert all(all(m) for m in train["attention_mask"])
    source = subsample(load_split(get_task("rte"), "train", glue_dir), 40, 0)
    assert train["labels"] == source["label"]
    expected = tokenizer(list(source["text_a"]), list(source["text_b"]), truncation=True, max_length=32)
    assert train["input_ids"] == expected["input_ids"] and train["token_type_ids"] == expected["token_type_ids"]


def test_second_call_reads_the_cache_instead_of_tokenising(tokenizer, glue_dir, tmp_path):
    counting = CountingTokenizer(tokenizer)
    first = rte_splits(counting, glue_dir, tmp_path)
    calls = counting.calls
    assert calls > 0
    second = rte_splits(counting, glue_dir, tmp_path)
    assert counting.calls == calls
    assert all(f["filename"].startswith(str(tmp_path)) for f in second["train"].cache_files)
    assert second["train"][:] == first["train"][:] and second["dev"][:] == first["dev"][:]
    [entry] = [p for p in tmp_path.iterdir()]
    key = json.loads((entry / "key.json").read_text())
    assert key["tokenizer"] == "minilm" and key["task"] == "rte" and key["max_train_examples"] == 40
    # Every key field makes its own entry: same seed elsewhere gives the same rows, another seed others.
    elsewhere = rte_splits(CountingTokenizer(tokenizer), glue_dir, tmp_path / "elsewhere")
    assert elsewhere["train"][:] == first["train"][:]
    other_seed = rte_splits(counting, glue_dir, tmp_path, seed=1)
    assert counting.calls > calls and other_seed["train"]["input_ids"] != first["train"]["input_ids"]
    rte_splits(counting, glue_dir, tmp_path, max_seq_length=64)
    rte_splits(counting, glue_dir, tmp_path, max_dev_examples=10)
    tokenized_splits(get_task("rte"), counting, "another-tokenizer", glue_dir, 32, 40, 20, 0, tmp_path)
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("rte-")]) == 5


def test_changed_source_file_is_tokenised_again(tokenizer, small_glue, tmp_path):
    counting = CountingTokenizer(tokenizer)
    qnli = get_task("qnli")
    assert len(tokenized_splits(qnli, counting, "minilm", small_glue, cache_dir=tmp_path)["train"]) == 2
    calls = counting.calls
    with open(small_glue / "QNLI" / "train.tsv", "a", encoding="utf-8") as f:
        f.write("2\tIs it new?\tIt is new.\tentailment\n")
    assert len(tokenized_splits(qnli, counting, "minilm", small_glue, cache_dir=tmp_path)["train"]) == 3
    assert counting.calls > calls


def test_half_written_cache_is_never_read(tokenizer, glue_dir, tmp_path):
    first = rte_splits(tokenizer, glue_dir, tmp_path)
    [entry] = list(tmp_path.iterdir())
    os.rename(entry, tmp_path / "unused")
    # A writer killed mid-save leaves only its temp dir; the next call ignores it, rebuilds and
    # publishes a whole entry.
    stale = tmp_path / f".tmp-{entry.name}-killed"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "data-00000-of-00001.arrow").write_bytes(b"half")
    assert rte_splits(tokenizer, glue_dir, tmp_path)["train"][:] == first["train"][:]
    assert (entry / "key.json").is_file() and (stale / "train" / "data-00000-of-00001.arrow").read_bytes() == b"half"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([entry.name, stale.name, "unused"])


def test_publish_keeps_the_entry_another_writer_published_first(tmp_path):
    final, tmp = tmp_path / "rte-key", tmp_path / ".tmp-rte-key-1"
    tmp.mkdir()
    (tmp / "mine").write_text("1")
    publish(tmp, final)
    assert (final / "mine").is_file() and not tmp.exists()
    tmp.mkdir()
    (tmp / "late").write_text("2")
    publish(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["mine"] and not tmp.exists()


def test_cache_dir_comes_from_argument_env_or_home(tokenizer, small_glue, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTICKETS_CACHE", str(tmp_path / "from-env"))
    tokenized_splits(get_task("wnli"), tokenizer, "minilm", small_glue)
    assert [p.name[:5] for p in (tmp_path / "from-env").iterdir()] == ["wnli-"]
    monkeypatch.delenv("RAYTICKETS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "raytickets" / "tokenized"


@pytest.mark.parametrize("option, value, fragment", [
    ("max_seq_length", 4, "max_seq_length: 4; allowed: an integer from 8 to 512"),
    ("max_seq_length", 1024, "max_seq_length: 1024; allowed"),
    ("max_train_examples", 0, "max_train_examples: 0; allowed: a positive integer or null"),
    ("max_dev_examples", "10", "max_dev_examples: '10'; allowed"),
    ("seed", 1.5, "seed: 1.5; allowed: an integer"),
])
def test_bad_tokenisation_options_are_config_errors(tokenizer, glue_dir, tmp_path, option, value, fragment):
    with pytest.raises(ConfigError) as err:
        rte_splits(tokenizer, glue_dir, tmp_path, **{option: value})
    assert str(err.value).startswith(fragment)


def test_mnli_and_stsb_tokenise_every_dev_split_with_their_label_types(tokenizer, small_glue, tmp_path):
    mnli = tokenized_splits(get_task("mnli"), tokenizer, "minilm", small_glue, cache_dir=tmp_path)
    assert {k: len(v) for k, v in mnli.items()} == {"train": 3, "dev_matched": 2, "dev_mismatched": 1}
    stsb = tokenized_splits(get_task("stsb"), tokenizer, "minilm", small_glue, cache_dir=tmp_path)
    batch = collate(tokenizer)([stsb["train"][i] for i in range(3)])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == pytest.approx([5.0, 0.8, 3.75])


def test_collator_pads_each_batch_to_its_longest_row(tokenizer, glue_dir, tmp_path):
    dev = tokenized_splits(get_task("sst2"), tokenizer, "minilm", glue_dir, max_seq_length=128,
                           max_train_examples=8, max_dev_examples=16, cache_dir=tmp_path)["dev"]
    rows = [dev[i] for i in range(8)]
    lengths = [len(r["input_ids"]) for r in rows]
    assert len(set(lengths)) > 1
    batch = collate(tokenizer)(rows)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (8, max(lengths)) and max(lengths) < 128
    assert batch["attention_mask"].sum(1).tolist() == lengths
    shortest = lengths.index(min(lengths))
    assert (batch["input_ids"][shortest, min(lengths):] == tokenizer.pad_token_id).all()
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [r["labels"] for r in rows]
