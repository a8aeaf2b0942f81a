"""The exported ticket as models: the masked dense model, the physically shrunk one (shrink.py), ONNX, and the
dev metric measured from the exported files."""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ResultsError
from ..models import load_model, load_tokenizer, resolve_model
from .shrink import SHRINK_FILE, Structure, count_parameters, masked, reshape_layers
from ..store import ResultsStore
from ..tasks import collate, flat_metrics, get_task, tokenized_splits
from ..train import evaluate
from .select import Ticket

SHRUNK_DIR = "shrunk"
ONNX_FILE = "model.onnx"
QUANTIZED_FILE = "model_quantized.onnx"  # --quantize: the int8 graph beside model.onnx (Optimum's name for it)
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SPAN_OUTPUTS = ("start_logits", "end_logits")  # a question-answering graph's outputs; a classifier's: logits
EVAL_BATCH_SIZE = 64


@dataclass
class QuantizedReport:
    """What the int8 graph is and how far it is from the fp32 one."""

    mode: str
    bytes: tuple[int, int]  # (model.onnx, model_quantized.onnx) on disk
    gap: float  # max |logit int8 - logit fp32| on the export's seeded check batch
    scale: float  # max |logit fp32| on that batch: what the gap is read against
    calibration_rows: int | None = None  # static: training rows the ranges were calibrated on
    full_dev: float | None = None  # its metric on the whole dev set, when the fp32 graph's was measured


@dataclass
class Report:
    """What an export wrote and measured: for the model card and the command's output."""

    format: str
    files: list[str] = field(default_factory=list)
    structure: Structure | None = None  # when the mask removes whole heads or neurons
    params: tuple[int, int] | None = None  # (masked dense, shrunk)
    flops: tuple[int, int] | None = None  # (masked dense, shrunk), one sequence of FLOPS_LENGTH tokens
    shrink_gap: float | None = None  # max |logit| difference, shrunk vs masked dense
    onnx_gap: float | None = None  # max |logit| difference, onnxruntime vs torch
    sparse_bytes: tuple[int, int] | None = None  # (sparse-aware copy, dense copy), unstructured tickets
    residual_sparsity: float = 0.0  # fraction of the prunable weights left in the model as zeros
    dev: dict[str, float] = field(default_factory=dict)  # which exported files -> their dev metric on the run's rows
    dev_rows: int | None = None  # the run's dev rows (all dev splits), re-scored for `dev`
    full_dev: tuple[str, float, int] | None = None  # (which files, metric, rows) on the whole GLUE dev set
    quantized: QuantizedReport | None = None  # --quantize: the int8 graph beside model.onnx


FLOPS_LENGTH = 128



# ---------------------------------------------------------------- the model


def auto_class(task):
    """The transformers auto class a task's export loads with: question answering for squad, else classification."""
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    return AutoModelForQuestionAnswering if task.is_span else AutoModelForSequenceClassification


def outputs_of(out) -> torch.Tensor:
    """A model output as one tensor to compare: the logits, or a span head's start and end logits stacked."""
    if hasattr(out, "start_logits"):
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits


def label_maps(task) -> tuple[dict[int, str], dict[str, int]]:
    """id2label/label2id of a task's head (a regression head has one output, `score`)."""
    names = list(task.label_list) or ["score"]
    return dict(enumerate(names)), {name: i for i, name in enumerate(names)}


def ticket_model(store: ResultsStore, ticket: Ticket):
    """The masked dense model: the kept fine-tuned weights with the mask applied, its config naming the labels."""
    task = get_task(ticket.row["task"])
    state = store.load_weights(ticket.row["weights_path"])  # first: a bad weights file fails before a model loads
    model = load_model(ticket.row["model"], task.num_labels, seed=int(ticket.row["seed"]), objective=task.objective)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ResultsError(f"{ticket.row['weights_path']}: weights do not fit model {ticket.row['model']!r} "
                           f"({str(exc).splitlines()[0]})") from None
    if not task.is_span:  # a span head's two outputs are start and end, not labels
        model.config.id2label, model.config.label2id = label_maps(task)
    return masked(model, ticket.mask).eval()


# shrunk/config.json names what it is: transformers knows no such model type, and the per-layer lists fail stock
# BertConfig's validation, so every plain loader (AutoModel, BertFor….from_pretrained, even with
# ignore_mismatched_sizes=True, which used to re-initialise 60 tensors) refuses the folder instead of mis-loading it.
SHRUNK_MODEL_TYPE = "raytickets_shrunk_bert"
SHRUNK_ARCHITECTURE = "RayticketsShrunkBertForSequenceClassification"
SHRUNK_LOADER = "raytickets.export.load_shrunk"


def save_shrunk(model, structure: Structure, d: Path) -> None:
    """The shrunk model in `d`: its weights, `shrink.json` (the kept units) and a config.json no plain loader takes."""
    model.save_pretrained(d)
    structure.save(d / SHRINK_FILE)
    config = json.loads((d / "config.json").read_text())
    config.update({
        "model_type": SHRUNK_MODEL_TYPE, "architectures": [SHRUNK_ARCHITECTURE],
        "num_attention_heads": [len(h) for h in structure.heads],
        "intermediate_size": [len(n) for n in structure.neurons],
        "raytickets": {"loader": f"{SHRUNK_LOADER}(DIR)", "base_model_type": config["model_type"],
                       "base_architectures": config.get("architectures"),
                       "num_attention_heads": structure.num_heads, "intermediate_size": structure.intermediate_size},
    })
    (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_shrunk(directory: str | os.PathLike):
    """The shrunk model of an `hf` export (DIR or DIR/shrunk): a BertForSequenceClassification whose layers have
    the kept heads and FFN neurons only, built from `shrink.json` and loaded strictly from `model.safetensors`."""
    from safetensors.torch import load_file
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    d = Path(directory)
    d = d / SHRUNK_DIR if (d / SHRUNK_DIR / SHRINK_FILE).is_file() else d
    structure = Structure.load(d / SHRINK_FILE)
    config = json.loads((d / "config.json").read_text())
    dense = config.pop("raytickets", None)
    if dense is not None:  # the dense config it was cut from; exports before the shrunk model type have none
        config.update(model_type=dense["base_model_type"], num_attention_heads=dense["num_attention_heads"],
                      intermediate_size=dense["intermediate_size"])
        config.pop("architectures", None)
    config = CONFIG_MAPPING[config["model_type"]].from_dict(config)
    span = any(a.endswith("ForQuestionAnswering") for a in (dense or {}).get("base_architectures") or [])
    model = (AutoModelForQuestionAnswering if span else AutoModelForSequenceClassification).from_config(config)
    reshape_layers(model, structure)
    model.load_state_dict(load_file(str(d / "model.safetensors")), strict=True)
    return model.eval()


class OnnxModel(torch.nn.Module):
    """An exported `model.onnx` run by onnxruntime, called like a transformers model (`model(**batch).logits`),
    so `train.evaluate` scores it with the very code that scored the run."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        super().__init__()
        path = Path(path)
        self.path = path / ONNX_FILE if path.is_dir() else path
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # Idle ORT threads would spin for a while after each run and take the cores from torch working beside it
        # (evaluation collates batches between runs; the benchmark interleaves torch and ORT): they sleep.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        # `train.predict` asks a model's device from its parameters; onnxruntime runs on the CPU.
        self.anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_):
        from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        inputs = (input_ids, attention_mask, token_type_ids)
        feed = {name: t.cpu().numpy().astype("int64") for name, t in zip(ONNX_INPUTS, inputs)}
        names = [o.name for o in self.session.get_outputs()]
        outputs = [torch.from_numpy(a) for a in self.session.run(names, feed)]
        if names == list(SPAN_OUTPUTS):  # a squad ticket: start and end logits of every token
            return QuestionAnsweringModelOutput(start_logits=outputs[0], end_logits=outputs[1])
        return SequenceClassifierOutput(logits=outputs[0])


class _Logits(torch.nn.Module):
    """What torch.onnx traces: the three inputs in, the logits out (no ModelOutput in the graph)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return (out.start_logits, out.end_logits) if hasattr(out, "start_logits") else out.logits


def example_batch(vocab_size: int, batch: int = 2, length: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded token ids with the last row half padding, so traced and checked graphs take the attention-mask path."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, min(vocab_size, 30000), (batch, length), generator=gen)
    attention = torch.ones_like(ids)
    attention[-1, length // 2:] = 0
    return {"input_ids": ids, "attention_mask": attention, "token_type_ids": torch.zeros_like(ids)}


def output_names(model: torch.nn.Module) -> list[str]:
    return list(SPAN_OUTPUTS) if hasattr(model, "qa_outputs") else ["logits"]


def write_onnx(model: torch.nn.Module, path: Path) -> None:
    """torch.onnx's dynamo exporter with dynamic batch and sequence axes; one file unless the weights pass 1.5 GB."""
    import logging
    import warnings

    axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    example = example_batch(model.config.vocab_size)
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # it reports every skipped torchvision op and each of its steps
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(_Logits(model).eval(), tuple(example[n] for n in ONNX_INPUTS), str(path),
                              input_names=list(ONNX_INPUTS), output_names=output_names(model),
                              dynamic_shapes={n: axes for n in ONNX_INPUTS}, dynamo=True,
                              external_data=count_parameters(model) * 4 > 1.5e9, verbose=False)
    finally:
        logger.setLevel(level)


@torch.no_grad()
def max_logit_gap(a: torch.nn.Module, b: torch.nn.Module, vocab_size: int) -> float:
    """Largest |logit difference| of two models on a seeded batch (4 rows of 32 tokens, one half padding)."""
    batch = example_batch(vocab_size, batch=4, length=32, seed=1)
    return float((outputs_of(a.eval()(**batch)) - outputs_of(b.eval()(**batch))).abs().max())


# ---------------------------------------------------------------- the dev metric, from the exported files


def dev_data(ticket: Ticket, glue_dir: str | os.PathLike, full: bool = False):
    """(task, dev splits, collate) as the run tokenised them: its data settings (from the row's `settings`), its
    tokenizer, the same tokenised-split cache key. `full`: every dev row instead of the run's subsample (and one
    train row: only dev is scored, and tokenising a whole train split would cost more than the scoring)."""
    data = data_settings(ticket)
    task = get_task(ticket.row["task"])
    tokenizer = load_tokenizer(ticket.row["model"])
    limits = ((1, None) if full else (data.get("max_train_examples"), data.get("max_dev_examples")))
    if task.is_span:  # squad: `glue_dir` is the directory of its JSON files; windows as the run made them
        return task, {"dev": squad_split(ticket, tokenizer, data, str(glue_dir), limits, "dev")}, collate(tokenizer)
    splits = tokenized_splits(task, tokenizer, resolve_model(ticket.row["model"]), str(glue_dir),
                              max_seq_length=data["max_seq_length"], max_train_examples=limits[0],
                              max_dev_examples=limits[1], seed=data.get("seed", 0))
    return task, {s: splits[s] for s in task.dev_splits}, collate(tokenizer)


def squad_split(ticket: Ticket, tokenizer, data: dict, squad_dir: str, limits, split: str):
    """A squad ticket's `split` windows (train or dev), made as its run made them; `limits`: (train, dev) rows."""
    from ..config import DataConfig
    from ..squad import squad_splits

    fields = {k: v for k, v in data.items() if k in DataConfig.__dataclass_fields__}
    cfg = DataConfig(**{**fields, "squad_dir": squad_dir, "squad_train": None, "squad_dev": None,
                        "max_train_examples": limits[0], "max_dev_examples": limits[1]})
    return squad_splits(tokenizer, resolve_model(ticket.row["model"]), cfg, seed=data.get("seed", 0))[split]


def dev_rows(dev) -> int:
    """Rows over the dev splits of `dev_data` (MNLI: matched + mismatched)."""
    return sum(len(split) for split in dev[1].values())


def data_settings(ticket: Ticket) -> dict:
    data = ticket.settings.get("data")
    if data is None:
        raise ResultsError(f"ticket of run {ticket.row['run_id']}: its row has no settings (an older results root), "
                           f"so its dev split cannot be rebuilt; drop --glue-dir")
    return data


def dev_metric(model: torch.nn.Module, ticket: Ticket, dev) -> float:
    """The ticket's main metric (its `metric_name`) of `model` on the dev data, scored by `train.evaluate`."""
    task, splits, collate_fn = dev
    return float(flat_metrics(evaluate(model, task, splits, collate_fn, EVAL_BATCH_SIZE))[ticket.row["metric_name"]])


