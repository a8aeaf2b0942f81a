"""int8 ONNX (`raytickets export --quantize int8|int8-static`): ONNX Runtime's quantized graph of a dense, an
unstructured and a shrunk structured tiny BERT gives the fp32 graph's logits within the stated tolerance on real
SST-2 rows, is really int8, and keeps the ticket (pruned weights int8 zeros, shrunk shapes); bad input is one line.
(The CLI end to end, with the card's fp32 and int8 dev metrics: test_export.py.)"""

from __future__ import annotations

import collections
import csv

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from raytickets import cli
from raytickets.export import OnnxModel, write_onnx
from raytickets.export.quantize import CALIBRATION_BATCH_SIZE, Quantize, quantize
from raytickets.export.shrink import masked, shrink
from raytickets.masks import Mask
from raytickets.models import load_model, load_tokenizer, prunable_parameters, tiny_bert
from raytickets.pruning import random_structured, structured_mask
from raytickets.pruning.magnitude import magnitude_prune

# The stated tolerance: every int8 logit within 20% of the spread of the fp32 logits over the rows (max - min of
# each class, the smaller of the two), and within 5% on average. Measured on two random tiny BERTs (seeds 0 and 1),
# dense / 50% magnitude / half shrunk, both modes: max 5-14%, mean 1.4-3.3%; a graph quantized with wrong scales
# lands near 100%. The classifier of a BERT initialised at std 0.02 gives logits that hardly vary with the input
# (its bias dominates), so the tiny model is initialised at 0.2, where they vary by about 1 over 64 rows.
MAX_GAP, MEAN_GAP = 0.20, 0.05
INT8_OPS = {  # the op each mode's linear layers become
    "int8": "MatMulInteger", "int8-static": "QLinearMatMul"}


def sst2(glue_dir, split: str, n: int) -> list[str]:
    with open(glue_dir / "SST-2" / f"{split}.tsv", encoding="utf-8") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][:n]


def encode(tokenizer, texts: list[str], tensors: str):
    return dict(tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors=tensors))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("tiny-q"), initializer_range=0.2)


def ticket_of(kind: str, model):
    """The model to export: the dense model, a 50% global magnitude ticket, or half its heads and
    FFN neurons removed and cut out."""
    if kind == "dense":
        return model
    params = prunable_parameters(model)
    if kind == "unstructured":
        mask = magnitude_prune(params, Mask.ones_like(params), 0.5, "global")
        return masked(model, mask)
    heads, neurons, layers = random_structured(model.config, 0.5, 0.5, "neuron", torch.Generator().manual_seed(0))
    small, _ = shrink(model, structured_mask(params, model.config, heads, neurons, layers))
    return small


@pytest.mark.parametrize("kind", ["dense", "unstructured", "shrunk"])
def test_int8_logits_match_fp32_within_the_stated_tolerance(tiny, glue_dir, tmp_path, kind):
    model = ticket_of(kind, load_model(str(tiny), 2, seed=0).eval())
    write_onnx(model, tmp_path / "model.onnx")
    tokenizer = load_tokenizer(str(tiny))
    rows = encode(tokenizer, sst2(glue_dir, "dev", 64), "pt")
    train = sst2(glue_dir, "train", 2 * CALIBRATION_BATCH_SIZE)  # calibration: training rows, never the dev rows
    feeds = [{k: v.astype("int64") for k, v in encode(tokenizer, train[i:i + CALIBRATION_BATCH_SIZE], "np").items()}
             for i in range(0, len(train), CALIBRATION_BATCH_SIZE)]
    with torch.no_grad():
        reference = OnnxModel(tmp_path / "model.onnx")(**rows).logits
    spread = float((reference.max(0).values - reference.min(0).values).min())
    assert spread > 0.5  # logits that vary with the input: a gap measured against them means something
    for mode, op in INT8_OPS.items():
        path = tmp_path / f"{mode}.onnx"
        quantize(tmp_path / "model.onnx", path, Quantize(mode), feeds)
        with torch.no_grad():
            gap = (OnnxModel(path)(**rows).logits - reference).abs()
        assert 0 < gap.max() <= MAX_GAP * spread and gap.mean() <= MEAN_GAP * spread, (mode, float(gap.max()), spread)
        graph = onnx.load(str(path)).graph
        assert collections.Counter(n.op_type for n in graph.node)[op] >= 6 * model.config.num_hidden_layers
        int8 = {t.name: numpy_helper.to_array(t) for t in graph.initializer
                if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2}
        encoder = [w for name, w in int8.items() if "pooler" not in name and "classifier" not in name]
        # Every encoder matrix is int8, in the exported model's shapes (the shrunk ones cut; stored [in, out]) ...
        linear = [tuple(m.weight.shape[::-1]) for m in model.bert.encoder.modules() if isinstance(m, torch.nn.Linear)]
        assert sorted(w.shape for w in encoder) == sorted(linear), mode
        # ... and an unstructured ticket's zeros stay zeros (symmetric int8: zero point 0) in its dense matrices,
        # where the dense model's int8 weights round to 0 only near 0.
        zeros = sum(int((w == 0).sum()) for w in encoder) / sum(w.size for w in encoder)
        assert zeros >= 0.5 if kind == "unstructured" else zeros < 0.1, (mode, zeros)


@pytest.mark.parametrize("argv, expected", [
    (["--quantize", "int8", "--format", "hf"], "--quantize: --format hf cannot carry int8; allowed: --format onnx"),
    (["--quantize", "int8-static", "--format", "mask"], "--quantize: --format mask cannot carry int8-static"),
    (["--quantize", "int8-static"], "--quantize int8-static: calibrates on the task's training rows, read from "
                                    "--glue-dir"),
    (["--quantize", "int8-static", "--glue-dir", ".", "--calibration-batches", "0"],
     "--calibration-batches: 0; allowed: an integer >= 1"),
    (["--quantize", "int8", "--calibration-batches", "4"], "--calibration-batches: --quantize int8 needs no "
                                                           "calibration"),
    (["--calibration-batches", "4"], "--calibration-batches: applies to --quantize int8-static only"),
    (["--quantize", "int4"], "argument --quantize: invalid choice: 'int4' (choose from 'int8', 'int8-static')"),
])
def test_bad_quantize_input_is_one_line_before_any_work(tmp_path, capsys, argv, expected):
    """Checked before the results root is even opened (it does not exist here) and nothing is written; an unknown
    mode is argparse's own check of the choices, one line through the CLI's parser."""
    out = tmp_path / "out"
    try:
        code = cli.main(["export", str(tmp_path / "no-results"), "--task", "sst2", "--best", "--out", str(out), *argv])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not out.exists()
