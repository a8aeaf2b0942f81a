"""int8 ONNX (`raytickets export --format onnx --quantize int8|int8-static`): ONNX Runtime's own quantization of
the exported fp32 `model.onnx`, written beside it as `model_quantized.onnx` (the name Optimum's ORTQuantizer gives
it), and checked against it.

* `int8` — `onnxruntime.quantization.quantize_dynamic`: weights int8 (per tensor, symmetric), activations uint8
  with a scale computed from each batch at run time; no data needed. ORT fuses each MatMul into
  DynamicQuantizeMatMul / MatMulIntegerToFloat. The embedding tables (Gather) are int8 too, which is most of
  the file's shrinking (MiniLM's embeddings are half its weights).
* `int8-static` — `quantize_static` with a MinMax calibration on the task's *training* rows (never dev rows:
  the dev metric reported beside it must stay a held-out number): activation ranges fixed ahead, so no
  quantization work at run time. Only the MatMuls with a constant weight — the encoder's linear layers, nearly
  all the FLOPs — are quantized; the attention products, softmax, LayerNorm and a classifier's pooler and head
  (Gemm) stay fp32.
  QOperator format (QLinearMatMul), uint8 activations and int8 weights: on this project's CPU (AVX512-VNNI,
  AMX) ORT fused the QDQ format's Q/DQ pairs around half the MatMuls only, and ran it barely faster than fp32.

A magnitude (unstructured) or N:M ticket keeps its pruned weights as zeros in dense matrices; they become int8
zeros in a dense int8 graph: the speed-up is int8's, not the sparsity's. ONNX Runtime's CPU kernels have no N:M
path either. Only a structured ticket, shrunk before it is quantized, gains from both.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import load_tokenizer, resolve_model
from ..tasks import collate, get_task, tokenized_splits
from .model import ONNX_FILE, ONNX_INPUTS, QUANTIZED_FILE, OnnxModel, QuantizedReport, data_settings, max_logit_gap, \
    outputs_of, example_batch, squad_split
from .select import Ticket

MODES = {
    "int8": "ONNX Runtime dynamic quantization: int8 weights, activations quantized per batch at run time; no data",
    "int8-static": "ONNX Runtime static quantization: int8 weights, activation ranges calibrated on the task's "
                   "training rows (needs --glue-dir; --calibration-batches)",
}
STATIC_MODES = ("int8-static",)
CALIBRATION_BATCH_SIZE = 32
CALIBRATION_BATCHES = 8  # 256 training rows: MinMax ranges settle within a few batches; more only costs time


@dataclass(frozen=True)
class Quantize:
    """What `--quantize` asked for: the mode (a key of MODES) and, when static, how many training batches calibrate."""

    mode: str
    calibration_batches: int = CALIBRATION_BATCHES

    @property
    def static(self) -> bool:
        return self.mode in STATIC_MODES

    @property
    def label(self) -> str:
        return f"{QUANTIZED_FILE} (onnxruntime, {self.mode})"


def write_quantized(d: Path, request: Quantize, fp32: OnnxModel, vocab_size: int,
                    feeds: list[dict] | None) -> tuple[OnnxModel, QuantizedReport]:
    """d/model_quantized.onnx from d/model.onnx, run by onnxruntime, with its distance from the fp32 graph."""
    quantize(d / ONNX_FILE, d / QUANTIZED_FILE, request, feeds)
    session = OnnxModel(d / QUANTIZED_FILE)
    with torch.no_grad():
        scale = float(outputs_of(fp32(**example_batch(vocab_size, batch=4, length=32, seed=1))).abs().max())
    return session, QuantizedReport(
        mode=request.mode, bytes=((d / ONNX_FILE).stat().st_size, (d / QUANTIZED_FILE).stat().st_size),
        gap=max_logit_gap(session, fp32, vocab_size), scale=scale,
        calibration_rows=sum(len(f["input_ids"]) for f in feeds) if request.static else None)


def quantize(fp32: Path, out: Path, request: Quantize, feeds: list[dict] | None = None) -> None:
    """Write the int8 graph of the fp32 ONNX file `fp32` to `out`; static mode calibrates on `feeds` (input dicts
    of int64 arrays)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if not request.static:
        quantize_dynamic(fp32, out, weight_type=QuantType.QInt8)
        return
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.rest = iter(feeds or [])

        def get_next(self):
            return next(self.rest, None)

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".calibrate-") as tmp:
        # ORT asks for this pre-pass before static quantization (shapes let it place the ranges). Its symbolic
        # shape inference does not follow torch.onnx's dynamo graphs; ONNX's own shape inference does.
        ready = Path(tmp) / "preprocessed.onnx"
        quant_pre_process(str(fp32), str(ready), skip_symbolic_shape=True)
        quantize_static(ready, out, Feeds(), quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True})


def calibration_feeds(ticket: Ticket, glue_dir: str, batches: int) -> list[dict]:
    """`batches` batches of the ticket's task's training rows, tokenised as its run did (sequence length, tokenizer),
    as ONNX input dicts (int64, padded per batch): a seeded sample of the training split, never dev rows."""
    data = data_settings(ticket)
    task = get_task(ticket.row["task"])
    tokenizer = load_tokenizer(ticket.row["model"])
    rows = batches * CALIBRATION_BATCH_SIZE
    if task.is_span:  # squad: the training windows, as the run made them
        train = squad_split(ticket, tokenizer, data, str(glue_dir), (rows, 1), "train")
    else:
        train = tokenized_splits(task, tokenizer, resolve_model(ticket.row["model"]), str(glue_dir),
                                 max_seq_length=data["max_seq_length"], max_train_examples=rows, max_dev_examples=1,
                                 seed=data.get("seed", 0))["train"]
    pad = collate(tokenizer)
    columns = [c for c in ONNX_INPUTS if c in train.column_names]
    feeds = []
    for start in range(0, min(rows, len(train)), CALIBRATION_BATCH_SIZE):
        part = train.select(range(start, min(start + CALIBRATION_BATCH_SIZE, len(train))))
        batch = pad([{c: row[c] for c in columns} for row in part])
        feed = {c: batch[c].numpy().astype("int64") for c in columns}
        if "token_type_ids" not in feed:  # a tokenizer without segments: the graph still takes the input
            feed["token_type_ids"] = feed["input_ids"] * 0
        feeds.append(feed)
    return feeds
