"""SQuAD v1.1: the official metric on hand-checked cases, the window round trip on the shared dev set, bad input,
and a tiny random BERT through IMP with structured pruning on a few SQuAD questions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from raytickets.errors import DataError
from raytickets.squad import (
    answer_tokens,
    build_features,
    exact_match,
    f1_score,
    normalize_answer,
    read_json,
    squad_metrics,
    window_starts,
)

REPO = Path(__file__).resolve().parents[1]


def _find_squad() -> Path:
    env = os.environ.get("RAYTICKETS_SQUAD_DIR")
    for c in ([Path(env)] if env else []) + [REPO.parent / "shared" / "squad", REPO / "shared" / "squad"]:
        if (c / "dev-v1.1.json").is_file():
            return c
    raise FileNotFoundError("SQuAD JSON not found in ../shared/squad; set RAYTICKETS_SQUAD_DIR")


SQUAD = _find_squad()


@pytest.fixture(scope="module")
def tokenizer():
    from raytickets.models import load_tokenizer

    return load_tokenizer("minilm")


def small_squad(root: Path, paragraphs: int = 3) -> Path:
    """A squad_dir with the first `paragraphs` paragraphs of the shared train and dev files."""
    root.mkdir(parents=True, exist_ok=True)
    for name, out in (("train-v1.1-first44.json", "train.json"), ("dev-v1.1.json", "dev.json")):
        raw = json.loads((SQUAD / name).read_text())
        article = raw["data"][0]
        small = {"version": "1.1", "data": [{"title": article["title"], "paragraphs": article["paragraphs"][:paragraphs]}]}
        (root / out).write_text(json.dumps(small))
    return root


# ------------------------------------------------------------------------------------------ the metric


def test_normalisation_drops_case_punctuation_articles_and_extra_space():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theory") == "theory"  # "the" only as a word
    assert normalize_answer("U.S.-based") == "usbased"  # punctuation removed, not replaced by a space


def test_metric_against_hand_checked_values():
    # Token F1: pred "denver broncos team" vs gold "denver broncos": P = 2/3, R = 1, F1 = 0.8.
    assert f1_score("the Denver Broncos team", "Denver Broncos") == pytest.approx(0.8)
    assert exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert f1_score("Carolina", "Denver Broncos") == 0.0
    assert f1_score("", "Denver Broncos") == 0.0
    # Repeated tokens count as a bag: pred "a a b" -> "b" after articles go; gold "b b" -> P = 1, R = 1/2.
    assert f1_score("a a b", "b b") == pytest.approx(2 / 3)
    # Each question takes its best gold answer, then questions are averaged:
    # q1: golds "Broncos", "Denver Broncos"; pred "Denver Broncos" -> EM 1, F1 1.
    # q2: golds "1858", "in 1858"; pred "1858 in Lourdes" -> EM 0, F1 max(2*(1/3)/(4/3), 2*(2/3)(1)/(5/3)) = 0.8.
    # q3: gold "Saint Bernadette Soubirous"; pred "Bernadette" -> P 1, R 1/3, F1 0.5.
    m = squad_metrics(["Denver Broncos", "1858 in Lourdes", "Bernadette"],
                      [["Broncos", "Denver Broncos"], ["1858", "in 1858"], ["Saint Bernadette Soubirous"]])
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx((1 + 0.8 + 0.5) / 3)


# -------------------------------------------------------------------------------------------- windows


def test_windows_cover_the_context_with_the_configured_step():
    assert window_starts(10, 20, 5) == [0]
    assert window_starts(50, 20, 15) == [0, 15, 30]  # the last window (30..50) reaches the end
    assert window_starts(50, 10, 15) == [0, 10, 20, 30, 40]  # a step never skips a token
    assert answer_tokens([0, 4, 10], [3, 9, 14], 4, 9) == (1, 1)
    assert answer_tokens([0, 4, 10], [3, 9, 14], 5, 12) == (1, 2)  # partial tokens count


def test_every_dev_gold_answer_round_trips_through_its_window_labels(tokenizer):
    """Each of dev's 34,726 gold answers (each distinct one once), labelled as a training answer, lies in some window and reads back
    from that window's offsets as its own text (after normalisation) unless the answer is part of a word."""
    dev = read_json(SQUAD / "dev-v1.1.json")
    # One row per distinct (question, gold answer) -- annotators often gave the same span -- so every gold answer
    # is the labelled one once.
    rows = {"id": [], "question": [], "context": [], "answers": [], "answer_starts": []}
    golds = 0
    for qid, q, c, answers, starts in zip(dev["id"], dev["question"], dev["context"], dev["answers"], dev["answer_starts"]):
        golds += len(answers)
        for start, text in sorted(set(zip(starts, answers))):
            for k, v in zip(rows, (qid, q, c, [text], [start])):
                rows[k].append(v)
    from raytickets.squad import _dataset

    labelled = build_features(_dataset(rows), tokenizer, 384, 128, train=True)
    read = build_features(_dataset(rows), tokenizer, 384, 128, train=False)
    found, same, inside_word, truncated = {}, 0, 0, 0
    for w, example in enumerate(read["example"]):
        s, e = labelled["start_positions"][w], labelled["end_positions"][w]
        if s and example not in found:
            found[example] = rows["context"][example][read["offset_start"][w][s]:read["offset_end"][w][e]]
    for i, text in enumerate(rows["answers"]):
        if i not in found:
            truncated += 1
        elif normalize_answer(found[i]) == normalize_answer(text[0]):
            same += 1
        else:  # a word piece of a longer word ("gold" in "golden"): the span is the whole word
            assert text[0].strip() in found[i], (found[i], text)
            inside_word += 1
    print(f"dev gold answers: {golds}, distinct {len(rows['id'])}, read back {same}, inside a word {inside_word}, "
          f"truncated {truncated}")
    assert golds == 34726 and len(rows["id"]) < golds
    assert truncated == 0  # no dev answer is longer than a 384-token window less its question
    assert inside_word < 0.005 * len(rows["id"])


# ------------------------------------------------------------------------------------------ bad input


def test_bad_squad_input_is_one_line(tmp_path, tokenizer):
    (tmp_path / "not.json").write_text("{\"rows\": []}")
    with pytest.raises(DataError, match="not SQuAD JSON") as e:
        read_json(tmp_path / "not.json")
    assert "\n" not in str(e.value)
    bad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "Denver won the game.",
                                                                     "qas": [{"id": "q7", "question": "Who won?",
                                                                              "answers": [{"text": "Denver",
                                                                                           "answer_start": 3}]}]}]}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="question q7: answer_start 3 does not point at its text 'Denver'"):
        read_json(tmp_path / "bad.json")
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 0
    bad["data"][0]["paragraphs"][0]["qas"][0]["question"] = "why " * 40
    (tmp_path / "long.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="question q7: 40 tokens leave no room for context in max_seq_length 32"):
        build_features(read_json(tmp_path / "long.json"), tokenizer, 32, 16, train=True)


@pytest.mark.parametrize("override, expected", [
    ("data.doc_stride=128", "data.doc_stride: 128; allowed: an integer from 1 to max_seq_length - 1 (127)"),
    ("data.squad_dir=/no/such/dir", "data.squad_dir: directory '/no/such/dir' does not exist"),
    ("data.n_best=0", "data.n_best: 0 must be a positive integer"),
])
def test_bad_squad_config_is_one_line_with_exit_code_2(tmp_path, override, expected):
    from test_cli import call

    res = call("imp", "--task", "squad", "--rounds", "1", "--out", str(tmp_path / "out"), "data.max_seq_length=128",
               override)
    assert res.returncode == 2 and res.stderr.strip().endswith(expected), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- through IMP


def test_tiny_bert_through_imp_and_structured_pruning_on_squad(tiny_model_dir, tmp_path):
    """Two IMP rounds with a random baseline, then one structured round (heads and FFN units by gate gradients
    of the span loss), on a few SQuAD paragraphs; every row has F1 as its metric and EM beside it."""
    from raytickets.config import TicketConfig, build
    from raytickets.tickets import Trajectory

    squad = small_squad(tmp_path / "squad")
    base = {"task": "squad", "model": str(tiny_model_dir),
            "data": {"squad_dir": str(squad), "max_seq_length": 96, "doc_stride": 48, "max_dev_examples": 20,
                     "cache_dir": str(tmp_path / "cache")},
            "train": {"max_steps": 4, "batch_size": 8, "learning_rate": 1e-3, "progress": False}}
    magnitude = build(TicketConfig, {**base, "prune": {"method": "magnitude", "rounds": 2, "rate": 0.3,
                                                       "baselines": ["random"]}})
    rows = Trajectory(magnitude, tmp_path / "work").run()
    assert [(r.round, r.kind) for r in rows] == [(0, "full"), (1, "ticket"), (1, "random"), (2, "ticket"),
                                                 (2, "random")]
    assert all(r.metric_name == "f1" and r.metric == r.f1 and 0 <= r.exact_match <= r.f1 <= 1 for r in rows)
    assert all(r.chance_metric == 0.0 for r in rows)  # the empty answer
    assert rows[3].sparsity == pytest.approx(0.51, abs=0.01)
    structured = build(TicketConfig, {**base, "prune": {"method": "structured", "rounds": 1, "head_fraction": 0.5,
                                                        "ffn_fraction": 0.5}})
    rows = Trajectory(structured, tmp_path / "work").run()
    assert [r.kind for r in rows] == ["full", "ticket"] and rows[1].sparsity > 0.3


def test_tickets_transfer_between_squad_and_a_glue_task(tiny_model_dir, glue_dir, tmp_path):
    """A GLUE ticket prunes the pooler, which BertForQuestionAnswering lacks: on squad it prunes the encoder both
    share. A squad ticket has no pooler: on SST-2 the pooler stays dense."""
    import torch

    from raytickets.config import TicketConfig, build
    from raytickets.masks import Mask
    from raytickets.models import default_include, load_model, prunable_parameters
    from raytickets.pruning import random_prune
    from raytickets.tickets import Trajectory

    tiny = str(tiny_model_dir)
    train = {"max_steps": 2, "batch_size": 8, "learning_rate": 1e-3, "progress": False}
    squad = build(TicketConfig, {"task": "squad", "model": tiny, "train": train, "prune": {"rounds": 1},
                                 "data": {"squad_dir": str(small_squad(tmp_path / "squad", 2)), "max_seq_length": 96,
                                          "doc_stride": 48, "max_dev_examples": 10, "cache_dir": str(tmp_path / "c")}})
    sst2 = build(TicketConfig, {"task": "sst2", "model": tiny, "train": train, "prune": {"rounds": 1},
                                "data": {"glue_dir": str(glue_dir), "max_train_examples": 16, "max_dev_examples": 16,
                                         "max_seq_length": 32, "cache_dir": str(tmp_path / "c")}})
    glue_params = prunable_parameters(load_model(tiny, 2, seed=0), default_include(tiny))
    assert "pooler.dense.weight" in glue_params
    glue_ticket = random_prune(Mask.ones_like(glue_params), 0.5, "global", torch.Generator().manual_seed(0))
    rows = Trajectory(squad, tmp_path / "work").transfer(glue_ticket, "sst2", glue_ticket.mask_id)
    assert [r.kind for r in rows] == ["full", "transfer"] and rows[1].source_task == "sst2"
    assert rows[1].sparsity == pytest.approx(0.5, abs=0.01) and rows[1].metric_name == "f1"

    squad_params = prunable_parameters(load_model(tiny, 2, seed=0, objective="span"), default_include(tiny))
    assert "pooler.dense.weight" not in squad_params
    squad_ticket = random_prune(Mask.ones_like(squad_params), 0.5, "global", torch.Generator().manual_seed(0))
    rows = Trajectory(sst2, tmp_path / "work").transfer(squad_ticket, "squad", squad_ticket.mask_id)
    assert [r.kind for r in rows] == ["full", "transfer"] and rows[1].metric_name == "accuracy"


def test_a_structured_squad_ticket_exports_for_the_qa_pipeline_and_onnx(tiny_model_dir, tmp_path, monkeypatch):
    """`raytickets imp --task squad` (structured: the shrunk model too), then `export --format hf`: the directory
    loads with AutoModelForQuestionAnswering and answers a question from it; `--format onnx`:
    start and end logits equal torch's; with the SQuAD directory the dev F1 is re-measured from the files."""
    import onnx
    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from raytickets import cli
    from raytickets.export.model import OnnxModel, ticket_model
    from raytickets.export.select import find_ticket
    from raytickets.squad import answer
    from raytickets.store import ResultsStore

    monkeypatch.setenv("RAYTICKETS_CACHE", str(tmp_path / "cache"))
    squad, root = small_squad(tmp_path / "squad"), tmp_path / "root"
    assert cli.main(["imp", "--task", "squad", "--model", str(tiny_model_dir), "--squad-dir", str(squad),
                     "--max-seq-length", "96", "--max-dev-examples", "12", "--batch-size", "8", "--max-steps", "3",
                     "--method", "structured", "--head-fraction", "0.5", "--ffn-fraction", "0.5", "--rounds", "1",
                     "--importance-batches", "1", "--out", str(root), "data.doc_stride=48"]) == 0
    row = ResultsStore(root).rounds().query("kind == 'ticket'").iloc[0]
    which = ["--task", "squad", "--mask-id", row.mask_id, "--seed", str(row.seed), "--glue-dir", str(squad)]
    assert cli.main(["export", str(root), *which, "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "shrunk" / "shrink.json").is_file()
    card = ModelCard.load(tmp_path / "hf" / "README.md").data
    assert card.pipeline_tag == "question-answering" and card.datasets == ["rajpurkar/squad"]
    text = (tmp_path / "hf" / "README.md").read_text()
    assert "AutoModelForQuestionAnswering.from_pretrained(DIR)" in text and "SequenceClassification" not in text
    # transformers 5 removed pipeline("question-answering"); squad.answer reads a span as that pipeline did
    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "hf")
    context = "The Denver Broncos won Super Bowl 50 in 2016."
    said = answer(model, AutoTokenizer.from_pretrained(tmp_path / "hf"), "Who won Super Bowl 50?", context)
    assert said and said in context

    assert cli.main(["export", str(root), *which, "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert [o.name for o in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.output] == ["start_logits",
                                                                                                 "end_logits"]
    store = ResultsStore(root)
    reference = ticket_model(store, find_ticket(store, "squad", mask_id=row.mask_id, seed=int(row.seed)))
    batch = AutoTokenizer.from_pretrained(tmp_path / "onnx")(["Who won?", "When?"], ["Denver won.", "In 2016."],
                                                             return_tensors="pt", padding=True)
    with torch.no_grad():
        got, want = OnnxModel(tmp_path / "onnx")(**batch), reference(**batch)
    assert torch.allclose(got.start_logits, want.start_logits, atol=1e-4)
    assert torch.allclose(got.end_logits, want.end_logits, atol=1e-4)


@pytest.mark.slow
def test_the_packaged_minilm_learns_squad_on_the_shared_train_subset(tmp_path):
    """The real pre-trained MiniLM, 40 steps on windows of the shared train subset, scored on 100 dev questions:
    F1 above the empty answer's 0 (the chance value of task squad) and exact matches: the same 40 steps from a
    random-init tiny BERT reach F1 0.073 by overlap of long spans but no exact match (EM 0.00), while MiniLM gave
    F1 0.099, EM 0.06. The longer run in docs/squad.md (60 steps, 300 questions) reached F1 0.10-0.14."""
    from raytickets import cli

    out = tmp_path / "ft"
    assert cli.main(["finetune", "--task", "squad", "--model", "minilm", "--squad-dir", str(SQUAD),
                     "--max-train-examples", "640", "--max-dev-examples", "100", "--max-seq-length", "128",
                     "--max-steps", "40", "--batch-size", "16", "--learning-rate", "2e-4", "--out", str(out),
                     "data.doc_stride=64", "train.progress=false", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["f1"] > 0.05 and 0.03 <= metrics["exact_match"] <= metrics["f1"], metrics
    print(f"\nMiniLM on squad after 40 steps: F1 {metrics['f1']:.4f}, EM {metrics['exact_match']:.4f}")
