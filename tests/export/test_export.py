"""`raytickets export`: a stored ticket as a plain-transformers model (the recorded dev metric), physically shrunk
(the masked model's logits; tiny BERT and the packaged MiniLM), as ONNX (onnxruntime's logits), as a mask —
and every bad input refused in one line with nothing written. Tickets come from real tiny-BERT trajectories on
real SST-2/RTE rows (and the synthetic STS-B of conftest, whose Pearson metric is continuous)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

from raytickets import cli
from raytickets.errors import RayticketsError
from raytickets.export import OnnxModel, load_shrunk
from raytickets.export.card import model_card
from raytickets.export.cli import register_cli
from raytickets.analysis.tables import md_cell
from raytickets.export.model import Report, save_shrunk, ticket_model
from raytickets.export.select import find_ticket
from raytickets.masks import Mask
from raytickets.models import DEFAULT_INCLUDE, load_model, load_tokenizer, prunable_parameters, resolve_model
from raytickets.pruning import random_structured, structured_mask
from raytickets.pruning.structured import FFN_BIAS
from raytickets.export.shrink import count_parameters, masked, shrink, sparse_size
from raytickets.store import ResultsStore
from raytickets.tasks import collate, get_task, tokenized_splits
from raytickets.train import evaluate, predict

ROWS = 48  # train and dev rows of each tiny run


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """The tokenised-split cache, shared by the runs and by export's re-measured dev metric."""
    path = tmp_path_factory.mktemp("tokenized")
    patch = pytest.MonkeyPatch()
    patch.setenv("RAYTICKETS_CACHE", str(path))
    yield path
    patch.undo()


def imp(tiny_model_dir, glue_dir, cache_dir, out: Path, task: str, *extra: str) -> None:
    args = ["imp", "--task", task, "--model", str(tiny_model_dir), "--glue-dir", str(glue_dir),
            "--max-train-examples", str(ROWS), "--max-dev-examples", str(ROWS), "--max-seq-length", "32",
            "--batch-size", "16", "--max-steps", "6", "--lr", "2e-3", "--out", str(out), *extra,
            f"data.cache_dir={cache_dir}", "prune.baselines=[]"]
    assert cli.main(args) == 0


@pytest.fixture(scope="module")
def structured_root(tiny_model_dir, glue_dir, cache_dir, tmp_path_factory):
    """Two seeds of a 2-round structured trajectory (half the heads and FFN neurons at the end) on SST-2."""
    root = tmp_path_factory.mktemp("structured")
    for seed in ("0", "1"):
        imp(tiny_model_dir, glue_dir, cache_dir, root, "sst2", "--method", "structured", "--head-fraction", "0.5",
            "--ffn-fraction", "0.5", "--rounds", "2", "--importance-batches", "1", "--seed", seed)
    return root


@pytest.fixture(scope="module")
def unstructured_root(tiny_model_dir, glue_dir, cache_dir, tmp_path_factory):
    """A one-round magnitude ticket at 50% on SST-2 (weights kept) and one on RTE with keep_weights: none."""
    root = tmp_path_factory.mktemp("unstructured")
    magnitude = ("--method", "magnitude", "--rate", "0.5", "--rounds", "1")
    imp(tiny_model_dir, glue_dir, cache_dir, root, "sst2", *magnitude)
    imp(tiny_model_dir, glue_dir, cache_dir, root, "rte", *magnitude, "--keep-weights", "none")
    return root


PARSER = argparse.ArgumentParser(prog="raytickets")
register_cli(PARSER.add_subparsers(dest="command", required=True))


def export(capsys, *argv) -> tuple[int, str, str]:
    """`raytickets export ARGV` with cli.main's error handling: (exit code, stdout, stderr)."""
    args = PARSER.parse_args(["export", *map(str, argv)])
    try:
        code = args.func(args)
    except RayticketsError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def exported_row(root: Path, out: Path) -> dict:
    """The round row the export came from, by its card's run id and round."""
    cells = dict(line.strip("|").split(" | ", 1) for line in (out / "README.md").read_text().splitlines()
                 if line.startswith("| ") and line.count(" | ") == 1)
    cells = {k.strip(): v.strip() for k, v in cells.items()}
    rows = ResultsStore(root).rounds()
    seed, rnd = cells["exported seed (round)"].replace("(", "").replace(")", "").split()
    row = rows[(rows.kind == "ticket") & (rows.run_id == cells["run id"]) & (rows["round"] == int(rnd))]
    assert len(row) == 1 and int(row.iloc[0].seed) == int(seed)
    return row.iloc[0].to_dict()


def run_dev_split(row: dict, tokenizer, glue_dir, cache_dir):
    """The tokenised dev rows the run scored: its data settings (the row's `settings`), its tokenizer id."""
    data = json.loads(row["settings"])["data"]
    return tokenized_splits(get_task(row["task"]), tokenizer, resolve_model(row["model"]), str(glue_dir),
                            max_seq_length=data["max_seq_length"], max_train_examples=data["max_train_examples"],
                            max_dev_examples=data["max_dev_examples"], seed=data["seed"], cache_dir=cache_dir)["dev"]


def real_batch(tokenizer, n: int = 6) -> dict:
    texts = ["a gorgeous, witty, seductive movie .", "the plot is nothing but boilerplate clichés", "it 's a mess .",
             "an utterly charming and hilarious film that reaffirms your faith in humanity", "dull", "i loved it"]
    return dict(tokenizer(texts[:n], padding=True, return_tensors="pt"))


# ------------------------------------------------------------------------------ hf: plain transformers


def test_hf_export_is_a_plain_transformers_model_with_the_recorded_dev_metric(structured_root, glue_dir, cache_dir,
                                                                              tmp_path, capsys):
    out = tmp_path / "sst2-super"
    code, stdout, err = export(capsys, structured_root, "--task", "sst2", "--best", "--out", out, "--glue-dir", glue_dir)
    assert code == 0, err
    row = exported_row(structured_root, out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"} and model.config.label2id["positive"] == 1

    task = get_task("sst2")
    dev = run_dev_split(row, tokenizer, glue_dir, cache_dir)
    metric = evaluate(model, task, {"dev": dev}, collate(tokenizer), 16)[row["metric_name"]]
    assert abs(metric - row["metric"]) <= 1e-4
    assert f"(recorded {row['metric']:.4f}, {ROWS} dev rows)" in stdout
    assert f"from model.safetensors (plain transformers): {metric:.4f}" in stdout

    # The card's model-index (read back by huggingface_hub) states the metric with the rows it was scored on: the
    # whole GLUE dev set, measured at export from the written files, then the run's own seeded subsample.
    full_dev = tokenized_splits(task, tokenizer, resolve_model(row["model"]), str(glue_dir), max_seq_length=32,
                                max_train_examples=1, cache_dir=cache_dir)["dev"]
    assert len(full_dev) == 872
    full_metric = evaluate(model, task, {"dev": full_dev}, collate(tokenizer), 64)["accuracy"]
    results = ModelCard.load(out / "README.md").data.eval_results
    assert [(r.metric_type, r.dataset_type, r.dataset_config, r.dataset_split) for r in results] == \
        [("accuracy", "nyu-mll/glue", "sst2", "validation")] * 2
    assert results[0].metric_value == pytest.approx(full_metric, abs=1e-6) and "full dev set, 872 rows" in \
        results[0].metric_name
    assert results[1].metric_value == pytest.approx(row["metric"]) and f"{ROWS} of 872 dev rows" in results[1].metric_name
    assert f"full dev set (872 rows) accuracy from model.safetensors (plain transformers): {full_metric:.4f}" in stdout

    # It is the stored ticket: on every dev row the logits of the kept weights with the mask applied (a tiny
    # random BERT often predicts one class, so the metric alone would not tell), and pruned weights exactly 0.
    store = ResultsStore(structured_root)
    ticket = find_ticket(store, "sst2", mask_id=row["mask_id"], seed=int(row["seed"]))
    exported, _ = predict(model, dev, collate(tokenizer), 16)
    stored, _ = predict(ticket_model(store, ticket), dev, collate(tokenizer), 16)
    assert exported.shape == (ROWS, 2) and abs(exported - stored).max() <= 1e-6
    for name, keep in ticket.mask.tensors.items():
        assert not model.bert.get_parameter(name)[~keep].any(), name


def test_a_regression_ticket_scores_its_recorded_pearson_from_both_exported_models(tiny_model_dir, mixed_glue_dir,
                                                                                  cache_dir, tmp_path, capsys):
    """STS-B (synthetic TSVs): a continuous metric, so every logit counts, where SST-2 accuracy is one class."""
    root = tmp_path / "stsb"
    # train.precision fp32: the export recomputes the metric in float32 to 1e-4; the tiny model's scores sit within
    # bf16's step (1/64 near 2.5), so a bf16 run (null, on a bf16 CPU) records another Pearson
    imp(tiny_model_dir, mixed_glue_dir, cache_dir, root, "stsb", "--method", "structured", "--head-fraction", "0.25",
        "--ffn-fraction", "0.25", "--rounds", "1", "--importance-batches", "1", "train.precision=fp32")
    code, stdout, err = export(capsys, root, "--task", "stsb", "--best", "--out", tmp_path / "out",
                               "--glue-dir", mixed_glue_dir)
    assert code == 0, err
    row = exported_row(root, tmp_path / "out")
    assert row["metric_name"] == "pearson" and not row["failed"] and abs(row["metric"]) > 1e-3
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert plain.config.id2label == {0: "score"} and plain.config.problem_type == "regression"
    tokenizer = load_tokenizer(str(tmp_path / "out"))
    dev = run_dev_split(row, tokenizer, mixed_glue_dir, cache_dir)
    for model in (plain, load_shrunk(tmp_path / "out")):
        pearson = evaluate(model, get_task("stsb"), {"dev": dev}, collate(tokenizer), 16)["pearson"]
        assert abs(pearson - row["metric"]) <= 1e-4
    assert f"(recorded {row['metric']:.4f}, " in stdout


def test_the_card_has_the_hub_metadata_what_set_the_sparsity_and_every_setting(structured_root, glue_dir, tmp_path,
                                                                                 capsys):
    out = tmp_path / "card"
    assert export(capsys, structured_root, "--task", "sst2", "--best", "--seed", "1", "--out", out)[0] == 0
    text = (out / "README.md").read_text()
    data = ModelCard.load(out / "README.md").data
    assert data.tags[:2] == ["pruning", "lottery-ticket"] and data.library_name == "transformers"
    assert data.datasets == ["nyu-mll/glue"] and data.metrics == ["accuracy"]
    row = exported_row(structured_root, out)
    assert int(row["seed"]) == 1
    # No --glue-dir: the one model-index entry is the run's metric, on the rows it was scored on.
    [result] = data.eval_results
    assert result.metric_value == pytest.approx(row["metric"]) and f"{ROWS} of 872 dev rows" in result.metric_name
    assert f"| dev rows scored by the run | {ROWS} of the 872 dev rows |" in text
    for value in (row["mask_id"], row["run_id"], row["setting_id"], f"{row['sparsity']:.4f}", f"{row['metric']:.4f}",
                  f"{row['full_metric']:.4f}", "structured", "| exported seed (round) | 1 "):
        assert value in text, value
    seeds_line = text.split("seeds at this sparsity")[1].splitlines()[0]
    assert "| 0: " in seeds_line and ", 1: " in seeds_line  # both seeds of the level, with their metrics
    # What set the sparsity (the setting id leaves these out): the fractions, this round, the rounds run.
    sparsity = text.split("## What set the sparsity")[1].split("## Settings")[0]
    for line in ("| head_fraction | 0.5 |", "| ffn_fraction | 0.5 |", "| ffn_granularity | \"neuron\" |",
                 f"| round | {int(row['round'])} |", "| rounds run | 2 |"):
        assert line in sparsity, line
    for section, values in json.loads(row["settings"]).items():
        for key, value in values.items() if isinstance(values, dict) else [(None, values)]:
            name = f"{section}.{key}" if key else section
            assert f"| {name} | {md_cell(json.dumps(value))} |" in text, name
    assert "@inproceedings{liang2021super," in text  # a structured ticket cites Liang et al.


def test_the_card_names_the_base_model_and_its_license(structured_root):
    store = ResultsStore(structured_root)
    ticket = find_ticket(store, "sst2", best=True, need_weights=False)
    ticket.row = {**ticket.row, "model": "minilm"}
    card = ModelCard(model_card(ticket, Report(format="hf")))
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.license == "apache-2.0"  # from the packaged MiniLM's own card
    ticket.row = {**ticket.row, "model": str(structured_root / "gone")}  # a moved local model: no base, no license
    card = ModelCard(model_card(ticket, Report(format="hf")))
    assert card.data.base_model is None and card.data.license is None
    assert "| license | unknown: see the base model's card |" in card.text


def test_user_strings_cannot_break_the_cards_or_the_summarys_tables(structured_root, tmp_path):
    """A `|`, a newline or HTML in a user's string (a model path, a setting label) stays inside its cell."""
    from raytickets.analysis.tables import SUMMARY_HEADER, analyze, summary_markdown

    store = ResultsStore(structured_root)
    ticket = find_ticket(store, "sst2", best=True, need_weights=False)
    evil = "my|model\nwith <b>html</b> \\|"
    ticket.row = {**ticket.row, "model": evil}
    text = model_card(ticket, Report(format="hf"))
    table = [line for line in text.split("## Files")[0].splitlines() if line.startswith("| ")]
    assert table and all(len(re.split(r"(?<!\\)\|", line.replace("\\\\", ""))) == 4 for line in table), table
    body = text.split("\n---\n", 1)[1]  # the YAML front matter holds it as a YAML string, the Markdown escaped
    assert "| base model | my\\|model with &lt;b&gt;html&lt;/b&gt; \\\\\\| |" in body and "<b>" not in body

    tables = analyze(structured_root, out_dir=tmp_path)
    tables["super_tickets"]["setting_label"] = evil
    rows = [line for line in summary_markdown(tables).splitlines() if line.startswith("| ") and "---|" not in line]
    for line in rows:
        cells = re.split(r"(?<!\\)\|", line.replace("\\\\", ""))
        assert len(cells) == len(SUMMARY_HEADER) + 2, line


# ------------------------------------------------------------------------------ physical shrinking


def test_structured_ticket_is_shrunk_and_its_logits_equal_the_masked_model(structured_root, tmp_path, capsys):
    out = tmp_path / "shrunk"
    code, stdout, _ = export(capsys, structured_root, "--task", "sst2", "--best", "--seed", "0", "--out", out)
    assert code == 0
    dense = AutoModelForSequenceClassification.from_pretrained(out).eval()
    small = load_shrunk(out)
    shrink_json = json.loads((out / "shrunk" / "shrink.json").read_text())
    heads = [len(layer["heads"]) for layer in shrink_json["layers"]]
    widths = [len(layer["neurons"]) for layer in shrink_json["layers"]]
    assert sum(heads) == 4 and sum(widths) == 64  # half of 2 x 4 heads and of 2 x 64 neurons removed
    for layer, h, w in zip(small.bert.encoder.layer, heads, widths):
        assert layer.attention.self.query.out_features == h * 8 and layer.intermediate.dense.out_features == w
        assert layer.attention.output.dense.in_features == h * 8 and layer.output.dense.in_features == w
    assert count_parameters(small) < count_parameters(dense)
    batch = real_batch(load_tokenizer(str(out)))
    with torch.no_grad():
        assert torch.allclose(small(**batch).logits, dense(**batch).logits, atol=1e-5, rtol=0)
    assert "shrunk: 4 heads and 64 FFN neurons removed" in stdout
    # Every plain loader refuses shrunk/ rather than loading it wrongly (a stock BertConfig there used to "load"
    # with ignore_mismatched_sizes=True, re-initialising the cut tensors); the card says how to load it.
    config = json.loads((out / "shrunk" / "config.json").read_text())
    assert config["model_type"] == "raytickets_shrunk_bert" and config["num_attention_heads"] == heads
    with pytest.raises(ValueError, match="raytickets_shrunk_bert"):
        AutoModelForSequenceClassification.from_pretrained(out / "shrunk")
    for kwargs in ({}, {"ignore_mismatched_sizes": True}):
        with pytest.raises(Exception, match="num_attention_heads"):
            BertForSequenceClassification.from_pretrained(out / "shrunk", **kwargs)
    card = (out / "README.md").read_text()
    assert "`raytickets.export.load_shrunk(DIR)`" in card and "portable form of the shrunk model is ONNX" in card


def test_a_removed_ffn_sublayer_is_cut_to_one_zeroed_neuron(tiny_model_dir):
    model = load_model(str(tiny_model_dir), 2, seed=0).eval()
    params = prunable_parameters(model, [*DEFAULT_INCLUDE, FFN_BIAS])
    mask = structured_mask(params, model.config, {1: [0, 2]}, {1: list(range(10))}, ffn_layers=[0])
    small, structure = shrink(model, mask)
    # Layer 0 keeps one neuron (no zero-width matrices) whose weights are zero; layer 1 loses 2 heads, 10 neurons.
    assert [len(n) for n in structure.neurons] == [1, 54] and [len(h) for h in structure.heads] == [4, 2]
    assert not small.bert.encoder.layer[0].output.dense.weight.any()
    batch = real_batch(load_tokenizer(str(tiny_model_dir)))
    with torch.no_grad():
        assert torch.allclose(small(**batch).logits, masked(model, mask)(**batch).logits, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_minilm_with_40_percent_of_heads_and_neurons_removed_keeps_its_logits(tmp_path):
    model = load_model("minilm", 2, seed=0).eval()
    heads, neurons, layers = random_structured(model.config, 0.4, 0.4, "neuron", torch.Generator().manual_seed(0))
    mask = structured_mask(prunable_parameters(model), model.config, heads, neurons, layers)
    small, structure = shrink(model, mask)
    assert structure.removed_heads == int(0.4 * 72) and structure.removed_neurons == round(0.4 * 6 * 1536)
    assert len({len(h) for h in structure.heads}) > 1  # layers keep different head counts
    save_shrunk(small, structure, tmp_path / "shrunk")
    loaded = load_shrunk(tmp_path)
    dense = masked(model, mask)
    batch = real_batch(load_tokenizer("minilm"))
    with torch.no_grad():
        reference = dense(**batch).logits
        assert torch.allclose(small(**batch).logits, reference, atol=1e-5, rtol=0)
        assert torch.allclose(loaded(**batch).logits, reference, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ ONNX


def test_onnx_export_runs_in_onnxruntime_with_torchs_logits(structured_root, glue_dir, tmp_path, capsys):
    import onnx  # the export extra

    out = tmp_path / "onnx"
    code, stdout, err = export(capsys, structured_root, "--task", "sst2", "--best", "--format", "onnx", "--out", out,
                               "--glue-dir", glue_dir)
    assert code == 0, err
    graph = onnx.load(str(out / "model.onnx")).graph
    for tensor in graph.input:  # batch and sequence are symbolic, not the traced example's sizes
        assert all(d.dim_param for d in tensor.type.tensor_type.shape.dim), tensor.name
    assert json.loads((out / "shrink.json").read_text())["layers"]  # the graph is the shrunk model
    store = ResultsStore(structured_root)
    row = exported_row(structured_root, out)
    reference = ticket_model(store, find_ticket(store, "sst2", mask_id=row["mask_id"], seed=int(row["seed"])))
    session = OnnxModel(out)
    tokenizer = load_tokenizer(str(out))
    for n in (1, 5):  # another batch size and sequence length than the traced example
        batch = real_batch(tokenizer, n)
        with torch.no_grad():
            assert torch.allclose(session(**batch).logits, reference(**batch).logits, atol=1e-4, rtol=0)
    assert f"dev accuracy from model.onnx (onnxruntime): {row['metric']:.4f}" in stdout
    data = ModelCard.load(out / "README.md").data
    assert data.library_name == "onnx" and "onnx" in data.tags  # no transformers weights here to from_pretrained
    assert "full dev set, 872 rows; model.onnx (onnxruntime)" in data.eval_results[0].metric_name


def test_int8_static_export_scores_the_quantized_graph_beside_fp32_in_the_card(structured_root, glue_dir, cache_dir,
                                                                              tmp_path, capsys):
    """`--quantize int8-static` (format onnx by default): model_quantized.onnx beside model.onnx, calibrated on 2
    batches of training rows, both scored on the same dev rows; the card and its model-index hold both metrics.
    (Its logits against fp32 within the stated tolerance, and every bad input: test_quantize.py.)"""
    out = tmp_path / "int8"
    code, stdout, err = export(capsys, structured_root, "--task", "sst2", "--best", "--quantize", "int8-static",
                               "--calibration-batches", "2", "--out", out, "--glue-dir", glue_dir)
    assert code == 0, err
    assert (out / "model.onnx").is_file() and (out / "model_quantized.onnx").is_file()
    assert (out / "model_quantized.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    row = exported_row(structured_root, out)
    tokenizer = load_tokenizer(str(out))
    dev = run_dev_split(row, tokenizer, glue_dir, cache_dir)
    fp32, int8 = (evaluate(OnnxModel(out / f), get_task("sst2"), {"dev": dev}, collate(tokenizer), 16)["accuracy"]
                  for f in ("model.onnx", "model_quantized.onnx"))
    assert f"dev accuracy from model.onnx (onnxruntime): {fp32:.4f}" in stdout
    assert f"dev accuracy from model_quantized.onnx (onnxruntime, int8-static): {int8:.4f}" in stdout
    assert "int8-static, calibrated on 64 training rows: model_quantized.onnx" in stdout
    card = ModelCard.load(out / "README.md")
    assert "int8" in card.data.tags
    [full, quantized, recorded] = card.data.eval_results
    assert "model.onnx (onnxruntime)" in full.metric_name and "model_quantized.onnx, int8-static" in quantized.metric_name
    assert f"full dev set (872 rows) accuracy from model_quantized.onnx (int8-static): {quantized.metric_value:.4f} (" \
        in stdout
    assert f"- model_quantized.onnx (onnxruntime, int8-static): {int8:.4f}" in card.text
    assert "calibrated (MinMax) on 64 training rows" in card.text and "max |Δ logit|" in card.text


# ------------------------------------------------------------------------------ unstructured tickets and masks


def test_unstructured_ticket_keeps_its_zeros_and_reports_a_sparse_copy(unstructured_root, tmp_path, capsys):
    out = tmp_path / "magnitude"
    code, stdout, _ = export(capsys, unstructured_root, "--task", "sst2", "--sparsity", "0.5", "--out", out)
    assert code == 0
    assert not (out / "shrunk").exists()  # no whole unit removed: nothing to cut
    card = (out / "README.md").read_text()
    assert "sparse-aware copy" in card and "buys no speed on CPU" in card and "no speed on CPU" in stdout
    store = ResultsStore(unstructured_root)
    ticket = find_ticket(store, "sst2", sparsity=0.5)
    model = ticket_model(store, ticket)
    sparse, dense = sparse_size(model, ticket.mask)
    # Dense float32 weights less 4 bytes per pruned weight, plus one bit per masked weight (headers aside).
    expected = dense - 4 * ticket.mask.num_pruned + sum((t.numel() + 7) // 8 for t in ticket.mask.tensors.values())
    assert abs(sparse - expected) < 8_000 and sparse < dense
    assert f"{sparse / 1e6:.2f} MB vs {dense / 1e6:.2f} MB dense" in stdout


def test_mask_format_writes_the_stored_mask(structured_root, tmp_path, capsys):
    store = ResultsStore(structured_root)
    mask_id = find_ticket(store, "sst2", best=True).row["mask_id"]
    code, stdout, _ = export(capsys, structured_root, "--mask-id", mask_id, "--format", "mask", "--out", tmp_path / "m")
    assert code == 0
    assert Mask.load(tmp_path / "m" / "mask.safetensors") == store.load_mask(mask_id)
    assert json.loads((tmp_path / "m" / "ticket.json").read_text())["mask_id"] == mask_id


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("argv, expected", [
    (["--mask-id", "0123456789abcdef"], "--mask-id: mask '0123456789abcdef' is not in results dir"),
    (["--task", "cola", "--best"], "no ticket of task 'cola'"),
    (["--task", "sst2", "--sparsity", "0.3"], "levels with tickets: 0.5"),
    (["--task", "sst2", "--best", "--seed", "7"], "--seed: no run with seed 7 for task sst2; seeds with runs: 0"),
    (["--task", "rte", "--best"], "weights were not kept; it is its trajectory's best round: keep_weights: best"),
])
def test_bad_input_is_one_line_and_writes_nothing(unstructured_root, tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    code, stdout, err = export(capsys, unstructured_root, *argv, "--out", out)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert "cola" not in expected or "tasks with tickets: rte, sst2" in err
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_a_round_neither_best_nor_last_names_keep_weights_all(structured_root, tmp_path, capsys):
    store = ResultsStore(structured_root)
    rows = store.rounds()
    unkept = rows[(rows.kind == "ticket") & rows.weights_path.isna()]
    assert not unkept.empty  # keep_weights: best keeps a trajectory's best and last rounds, so one round 1 is gone
    row = unkept.iloc[0]
    code, _, err = export(capsys, structured_root, "--task", "sst2", "--mask-id", row.mask_id, "--seed", int(row.seed),
                          "--out", tmp_path / "out")
    assert code == 2 and "neither its trajectory's best nor its last round: only keep_weights: all keeps it" in err


def test_a_task_with_two_curves_needs_a_setting(structured_root, unstructured_root, tmp_path, capsys):
    import shutil

    both = tmp_path / "both"  # a results root is its files: two roots copied together hold both curves
    for root in (structured_root, unstructured_root):
        for table in ("rounds", "masks", "tickets", "weights"):
            shutil.copytree(root / table, both / table, dirs_exist_ok=True)
    code, _, err = export(capsys, both, "--task", "sst2", "--best", "--format", "mask", "--out", tmp_path / "out")
    assert code == 2 and "task sst2 has 2 curves" in err and "choose one with --setting" in err
    setting = ResultsStore(unstructured_root).rounds().setting_id.iloc[0]
    code, stdout, _ = export(capsys, both, "--task", "sst2", "--best", "--setting", setting[:6], "--format", "mask",
                             "--out", tmp_path / "out")
    assert code == 0 and "sst2 magnitude sparsity 0.5000" in stdout


def test_a_full_output_directory_is_refused_unless_forced(structured_root, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = export(capsys, structured_root, "--task", "sst2", "--best", "--format", "mask", "--out", out)
    assert code == 2 and "exists and is not empty; use --force" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    code, _, _ = export(capsys, structured_root, "--task", "sst2", "--best", "--format", "mask", "--out", out, "--force")
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["mask.safetensors", "ticket.json"]
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))


def test_the_raytickets_cli_has_the_export_command():
    """cli.py wires `register_cli` in (`raytickets export --format hf|onnx|mask`)."""
    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    export_parser = sub.choices["export"]
    assert any("--format" in a.option_strings for a in export_parser._actions)


# ------------------------------------------------------------------------------ a task that did not learn


def at_chance_store(root: Path) -> ResultsStore:
    """RTE's full model at 0.48 against a 0.505 chance on 200 dev examples (did not learn), its best level 0.53 at
    30%; SST-2 learned (0.80 against 0.51). Every ticket has a stored mask."""
    from analysis.test_analysis import curve_rows, dev_setting

    store = ResultsStore(root)
    shapes = {"encoder.layer.0.attention.self.query.weight": (8, 8)}
    rows = curve_rows("rte", dev_setting(200), [0.48, 0.48], {0.3: [0.53, 0.52]}, chance_metric=0.505)
    rows += curve_rows("sst2", dev_setting(200), [0.80, 0.81], {0.3: [0.82, 0.83]}, chance_metric=0.51)
    for i, r in enumerate(rows):
        if r["kind"] == "ticket":
            g = torch.Generator().manual_seed(i)
            r["mask_id"] = store.write_mask(Mask({n: torch.rand(s, generator=g) >= 0.3 for n, s in shapes.items()}))
    store.write_rounds(rows)
    return store


def test_best_of_a_task_that_did_not_learn_is_exported_as_no_ticket_and_the_card_says_so(tmp_path, capsys):
    store = at_chance_store(tmp_path / "results")
    ticket = find_ticket(store, "rte", best=True, need_weights=False)
    err = capsys.readouterr().err
    assert err == ("export: rte did not learn: full 0.4800 ≤ chance 0.5050 + 0.0707; its best level (0.3) is no super "
                   "ticket (the card says so)\n")
    assert ticket.row["sparsity"] == 0.3 and ticket.row["metric"] == 0.53 and not ticket.curve["learned"]
    card = model_card(ticket, Report(format="hf"))
    assert "**Not a ticket: the full model did not learn.**" in card
    assert "| chance (majority class; + the margin a full model must clear) | 0.5050 (+ 0.0707): the full model did " \
           "not learn |" in card
    learned = find_ticket(store, "sst2", best=True, need_weights=False)
    assert capsys.readouterr().err == "" and learned.curve["learned"]
    card = model_card(learned, Report(format="hf"))
    assert "Not a ticket" not in card and "0.5100 (+ 0.0707): the full model learned |" in card
    code, _, err = export(capsys, tmp_path / "results", "--task", "rte", "--best", "--format", "mask", "--out",
                          tmp_path / "m")
    assert code == 0 and "did not learn" in err
    written = json.loads((tmp_path / "m" / "ticket.json").read_text())
    assert written["learned"] is False and written["chance"] == pytest.approx(0.505)


# ------------------------------------------------------------------------------ files others can read, no leftovers


def test_an_export_is_readable_by_everyone_whatever_the_umask(structured_root, tmp_path, capsys):
    """Directories 0755 and files 0644 (mkdtemp made them 0700, and a umask of 077 0600): another user or a
    container serving the model can read it."""
    import os
    import stat

    out = tmp_path / "shared"
    previous = os.umask(0o077)
    try:
        assert export(capsys, structured_root, "--task", "sst2", "--best", "--out", out)[0] == 0
    finally:
        os.umask(previous)
    entries = [out, *out.rglob("*")]
    assert (out / "shrunk").is_dir() and len(entries) > 8
    for p in entries:
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p


INTERRUPTED = """
import os, signal, sys, time
from pathlib import Path
from raytickets.atomic import terminate_cleanly, write_dir_atomically

def write(d):
    (d / "model.safetensors").write_bytes(b"half")
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
    time.sleep(30)

with terminate_cleanly():
    write_dir_atomically(Path(sys.argv[1]), write, replace=True, mode=0o755, sweep_stale=True)
"""


def test_an_interrupted_export_leaves_no_temp_dir(structured_root, tmp_path, capsys):
    """SIGTERM (`kill`, `timeout`) and Ctrl-C clean up as they happen; SIGKILL cannot, so the next export to the
    same place sweeps what a dead writer left. The export's own writer runs in `terminate_cleanly` too."""
    import subprocess

    out = tmp_path / "out"
    for sig, code in (("SIGTERM", 128 + 15), ("SIGINT", -2)):  # Python re-raises an unhandled SIGINT on exit
        done = subprocess.run([sys.executable, "-c", INTERRUPTED, str(out), sig], capture_output=True, timeout=60)
        assert done.returncode == code, done.stderr.decode()[-500:]
        assert not out.exists() and list(tmp_path.iterdir()) == [], sig
    done = subprocess.run([sys.executable, "-c", INTERRUPTED, str(out), "SIGKILL"], capture_output=True, timeout=60)
    assert done.returncode == -9 and len(list(tmp_path.glob(".tmp-out-*"))) == 1  # killed: nothing could run
    (tmp_path / ".tmp-out-1-alive").mkdir()  # pid 1 runs: a live writer's temp dir is never touched
    assert export(capsys, structured_root, "--task", "sst2", "--best", "--format", "mask", "--out", out)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-out-1-alive", "out"]


def test_the_export_command_turns_sigterm_into_a_clean_exit(structured_root, tmp_path, capsys, monkeypatch):
    """`raytickets export` itself runs its writer under `terminate_cleanly`: a SIGTERM mid-write exits with 143
    and removes the temp dir. (The handler installed here first would fail the test instead.)"""
    import os
    import signal

    from raytickets.export import write as write_module

    def killed(store, ticket, d, glue_dir):
        (d / "mask.safetensors").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the writer")

    def unhandled(signum, frame):
        raise AssertionError("the export left SIGTERM to the process's default handler")

    monkeypatch.setitem(write_module.WRITERS, "mask", killed)
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        with pytest.raises(SystemExit) as stop:
            export(capsys, structured_root, "--task", "sst2", "--best", "--format", "mask", "--out", tmp_path / "out")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stop.value.code == 128 + signal.SIGTERM and list(tmp_path.iterdir()) == []


def test_shrinking_cuts_matrices_with_transformers_prune_linear_layer(tiny_model_dir, monkeypatch):
    """shrink.py decides which units go; the cutting is transformers' `prune_linear_layer` (six matrices a layer)."""
    import raytickets.export.shrink as shrink_module

    calls = []
    real = shrink_module.prune_linear_layer
    monkeypatch.setattr(shrink_module, "prune_linear_layer", lambda *a, **k: calls.append(k["dim"]) or real(*a, **k))
    model = load_model(str(tiny_model_dir), 2, seed=0).eval()
    heads, neurons, layers = random_structured(model.config, 0.5, 0.5, "neuron", torch.Generator().manual_seed(0))
    small, _ = shrink(model, structured_mask(prunable_parameters(model), model.config, heads, neurons, layers))
    assert sorted(calls) == [0] * 8 + [1] * 4  # per layer: Q, K, V, intermediate rows; attention-output, output columns
    assert small.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.float32
