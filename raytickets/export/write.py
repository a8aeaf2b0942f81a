"""A ticket leaves the lab: a stored ticket as a Hugging Face model directory, an ONNX model or a mask file.

`raytickets export RESULTS_DIR --task T (--best | --sparsity S | --mask-id ID) --format hf|onnx|mask --out DIR`

* `hf`: DIR holds the *masked dense* model (`config.json` with id2label/label2id, `model.safetensors`, the
  tokenizer), loadable by plain `AutoModelForSequenceClassification.from_pretrained(DIR)` (a squad ticket:
  `AutoModelForQuestionAnswering`, which `pipeline("question-answering", model=DIR)` runs), and a model card
  `README.md`. When the mask removes whole heads or FFN neurons (a structured ticket), `DIR/shrunk/` also
  holds the *physically shrunk* model (`shrink.py`): a stock BertConfig cannot express per-layer head counts
  and FFN widths, so its kept units are in `shrunk/shrink.json`, its config.json has its own model type and
  per-layer sizes (so every plain transformers loader refuses the folder rather than loading it wrongly), and
  `load_shrunk(DIR)` rebuilds it.
* `onnx`: DIR holds `model.onnx` — the shrunk model for a structured ticket, the masked dense one otherwise —
  with dynamic batch and sequence axes (inputs `input_ids`, `attention_mask`, `token_type_ids`, int64;
  output `logits`; a squad ticket's: `start_logits`, `end_logits`), plus config, tokenizer and card.
  onnxruntime runs it as is. `--quantize int8|int8-static` adds `model_quantized.onnx`, its int8 graph made by ONNX
  Runtime's quantization (quantize.py), scored beside fp32 with `--glue-dir`.
* `mask`: DIR holds `mask.safetensors` (for `raytickets finetune --mask`) and `ticket.json`.

Every check runs before anything is written; DIR is filled as a temp dir beside it and renamed into place,
readable by all (0755/0644). With `--glue-dir` the dev metric is measured from the written files on the run's
dev rows and, for the card's model-index, on the whole GLUE dev set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..atomic import write_dir_atomically
from ..errors import ConfigError
from ..models import load_tokenizer
from ..tasks import get_task
from .shrink import (
    SHRINK_FILE, count_parameters, flops_per_sequence, residual_pruned, shrink, sparse_size, structure_of,
)
from ..store import ResultsStore
from .model import (  # noqa: F401  (load_shrunk, OnnxModel: the export API, importable from here)
    FLOPS_LENGTH, ONNX_FILE, SHRUNK_DIR, OnnxModel, Report, auto_class, data_settings, dev_data, dev_metric, dev_rows,
    load_shrunk, max_logit_gap, save_shrunk, ticket_model, write_onnx,
)
from .select import Ticket
from .card import model_card, provenance
from .quantize import Quantize, calibration_feeds, write_quantized

FORMATS = ("hf", "onnx", "mask")
CHECK_ATOL = 1e-4  # an export whose files disagree with the masked model by more is a bug: nothing is written


# ---------------------------------------------------------------- writing DIR


def _check_gap(gap: float, what: str) -> None:
    if not gap <= CHECK_ATOL:  # a bug, not bad input: refuse to publish a model that is not the ticket
        raise RuntimeError(f"export: {what} differ from the masked model by {gap:.3g} > {CHECK_ATOL} in logits")


def _measure(store: ResultsStore, ticket: Ticket, report: Report):
    """The masked dense model, its shrunk copy (None when the mask removes no whole unit) and the sizes."""
    model = ticket_model(store, ticket)
    structure = structure_of(ticket.mask, model.config)
    small = None
    if structure.shrinks:
        small, structure = shrink(model, ticket.mask)
        report.structure = structure
        report.params = (count_parameters(model), count_parameters(small))
        report.flops = (flops_per_sequence(model, FLOPS_LENGTH), flops_per_sequence(small, FLOPS_LENGTH))
    residual = residual_pruned(ticket.mask, structure, model.config.hidden_size)
    report.residual_sparsity = residual / ticket.mask.num_total
    if residual:
        report.sparse_bytes = sparse_size(model, ticket.mask)
    return model, small


def write_hf(store: ResultsStore, ticket: Ticket, d: Path, glue_dir: str | None) -> Report:
    """DIR: the masked dense model for plain transformers, `shrunk/` when the ticket is structured, the card."""
    report = Report(format="hf")
    model, small = _measure(store, ticket, report)
    tokenizer = load_tokenizer(ticket.row["model"])
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    plain = auto_class(get_task(ticket.row["task"])).from_pretrained(d).eval()  # squad: AutoModelForQuestionAnswering
    _check_gap(max_logit_gap(plain, model, model.config.vocab_size), "the saved model's logits")
    loaded = {"model.safetensors (plain transformers)": plain}
    if small is not None:
        save_shrunk(small, report.structure, d / SHRUNK_DIR)
        shrunk = load_shrunk(d)
        report.shrink_gap = max_logit_gap(shrunk, model, model.config.vocab_size)
        _check_gap(report.shrink_gap, "the shrunk model's logits")
        loaded[f"{SHRUNK_DIR}/ (load_shrunk)"] = shrunk
    if glue_dir is not None:
        _score(ticket, glue_dir, report, loaded)
    _finish(d, ticket, report)
    return report


def write_onnx_dir(store: ResultsStore, ticket: Ticket, d: Path, glue_dir: str | None,
                   quantize: Quantize | None = None) -> Report:
    """DIR: model.onnx (shrunk when the ticket is structured), config, tokenizer, card; with `quantize`, also its int8
    graph model_quantized.onnx (quantize.py), scored beside it."""
    report = Report(format="onnx")
    feeds = calibration_feeds(ticket, glue_dir, quantize.calibration_batches) if quantize and quantize.static else None
    model, small = _measure(store, ticket, report)
    graph = small if small is not None else model
    write_onnx(graph, d / ONNX_FILE)
    model.config.save_pretrained(d)  # the labels (id2label); the graph's own shapes are in model.onnx
    load_tokenizer(ticket.row["model"]).save_pretrained(d)
    if small is not None:
        report.structure.save(d / SHRINK_FILE)
        report.shrink_gap = max_logit_gap(small, model, model.config.vocab_size)
        _check_gap(report.shrink_gap, "the shrunk model's logits")
    session = OnnxModel(d)
    report.onnx_gap = max_logit_gap(session, model, model.config.vocab_size)
    _check_gap(report.onnx_gap, "onnxruntime's logits")
    loaded = {f"{ONNX_FILE} (onnxruntime)": session}
    if quantize is not None:
        loaded[quantize.label], report.quantized = write_quantized(d, quantize, session, model.config.vocab_size, feeds)
    if glue_dir is not None:
        _score(ticket, glue_dir, report, loaded)
    _finish(d, ticket, report)
    return report


def _score(ticket: Ticket, glue_dir: str, report: Report, loaded: dict) -> None:
    """The dev metric from the exported files: each on the run's dev rows (what it recorded), the first on the
    whole GLUE dev set (what the card's model-index states; the run's rows are often a seeded subsample)."""
    dev = dev_data(ticket, glue_dir)
    report.dev = {what: dev_metric(m, ticket, dev) for what, m in loaded.items()}
    report.dev_rows = dev_rows(dev)
    what, model = next(iter(loaded.items()))
    full = dev if data_settings(ticket).get("max_dev_examples") is None else dev_data(ticket, glue_dir, full=True)
    rows = dev_rows(full)
    report.full_dev = (what, report.dev[what] if rows == report.dev_rows else dev_metric(model, ticket, full), rows)
    if report.quantized is not None:  # the int8 graph beside fp32 on the whole dev set too (the last one loaded)
        what, model = list(loaded.items())[-1]
        report.quantized.full_dev = report.dev[what] if rows == report.dev_rows else dev_metric(model, ticket, full)


def write_mask(store: ResultsStore, ticket: Ticket, d: Path, glue_dir: str | None) -> Report:
    """DIR: mask.safetensors (for `raytickets finetune --mask`) and the ticket's provenance."""
    ticket.mask.save(d / "mask.safetensors")
    (d / "ticket.json").write_text(json.dumps(provenance(ticket), indent=1, default=str))
    report = Report(format="mask")
    report.files = sorted(p.name for p in d.iterdir())
    return report


WRITERS = {"hf": write_hf, "onnx": write_onnx_dir, "mask": write_mask}


def _finish(d: Path, ticket: Ticket, report: Report) -> None:
    (d / "README.md").write_text(model_card(ticket, report))
    report.files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def check_out(out: Path, force: bool) -> None:
    """ConfigError unless `out` is absent, an empty directory, or `force` allows replacing it."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file; give a directory (absent, empty, or replaced with --force)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out: directory {out} exists and is not empty; use --force to replace it")


def publish_dir(out: Path, write: Callable[[Path], Report], force: bool) -> Report:
    """`out` becomes the complete export or stays untouched (`atomic.write_dir_atomically`, replacing an existing
    directory); one filled by someone else meanwhile is still refused without --force."""
    out = out.resolve()

    def checked(d: Path) -> Report:
        report = write(d)
        check_out(out, force)
        return report

    # 0755/0644: an export is for other users and containers to read (mkdtemp's 0700 would hide it); a temp dir
    # left by an export killed beyond cleanup (SIGKILL) is swept first.
    return write_dir_atomically(out, checked, replace=True, mode=0o755, sweep_stale=True)
