"""A ticket leaves the lab: a stored ticket as a Hugging Face model directory, an ONNX model or a mask file.

`raytickets export RESULTS_DIR --task T (--best | --sparsity S | --mask-id ID) --format hf|onnx|mask --out DIR`

* `hf`: DIR holds the *masked dense* model (`config.json` with id2label/label2id, `model.safetensors`, the
  tokenizer), loadable by plain `AutoModelForSequenceClassification.from_pretrained(DIR)`, and a model card
  `README.md`. When the mask removes whole heads or FFN neurons (a structured ticket), `DIR/shrunk/` also
  holds the *physically shrunk* model (`shrink.py`): a stock BertConfig cannot express per-layer head counts
  and FFN widths, so its shapes are in `shrunk/shrink.json` and `load_shrunk(DIR)` rebuilds it (plain
  transformers refuses that folder with a size-mismatch error rather than loading it wrongly).
* `onnx`: DIR holds `model.onnx` — the shrunk model for a structured ticket, the masked dense one otherwise —
  with dynamic batch and sequence axes (inputs `input_ids`, `attention_mask`, `token_type_ids`, int64;
  output `logits`), plus config, tokenizer and card. onnxruntime runs it as is.
* `mask`: DIR holds `mask.safetensors` (for `raytickets finetune --mask`) and `ticket.json`.

Every check runs before anything is written; DIR is filled as a temp dir beside it and renamed into place.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


from .errors import ConfigError, ResultsError
from .models import load_tokenizer, quiet_transformers
from .shrink import (
    SHRINK_FILE, count_parameters, flops_per_sequence, residual_pruned, shrink, sparse_size, structure_of,
)
from .store import ResultsStore
from .export_model import (  # noqa: F401  (load_shrunk, OnnxModel: the export API, importable from here)
    FLOPS_LENGTH, ONNX_FILE, SHRUNK_DIR, OnnxModel, Report, data_settings, dev_data, dev_metric, load_shrunk,
    max_logit_gap, ticket_model, write_onnx,
)
from .export_select import DECIMALS, Ticket, present, find_ticket
from .model_card import megabytes, model_card, provenance

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
    from transformers import AutoModelForSequenceClassification

    report = Report(format="hf")
    model, small = _measure(store, ticket, report)
    tokenizer = load_tokenizer(ticket.row["model"])
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    plain = AutoModelForSequenceClassification.from_pretrained(d).eval()
    _check_gap(max_logit_gap(plain, model, model.config.vocab_size), "the saved model's logits")
    loaded = {"model.safetensors (plain transformers)": plain}
    if small is not None:
        small.save_pretrained(d / SHRUNK_DIR)
        report.structure.save(d / SHRUNK_DIR / SHRINK_FILE)
        shrunk = load_shrunk(d)
        report.shrink_gap = max_logit_gap(shrunk, model, model.config.vocab_size)
        _check_gap(report.shrink_gap, "the shrunk model's logits")
        loaded[f"{SHRUNK_DIR}/ (load_shrunk)"] = shrunk
    if glue_dir is not None:
        dev = dev_data(ticket, glue_dir)
        report.dev = {what: dev_metric(m, ticket, dev) for what, m in loaded.items()}
    _finish(d, ticket, report)
    return report


def write_onnx_dir(store: ResultsStore, ticket: Ticket, d: Path, glue_dir: str | None) -> Report:
    """DIR: model.onnx (shrunk when the ticket is structured), config, tokenizer, card."""
    report = Report(format="onnx")
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
    if glue_dir is not None:
        report.dev = {f"{ONNX_FILE} (onnxruntime)": dev_metric(session, ticket, dev_data(ticket, glue_dir))}
    _finish(d, ticket, report)
    return report


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
    """Fill a temp dir beside `out`, then rename it into place: `out` is the complete export or untouched.

    Unlike `runs.write_dir_atomically` (which keeps the first of two identical copies), `--force` replaces the
    existing directory: the old one is renamed aside only once the new one is complete, then deleted.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        report = write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = None
    if out.is_dir():
        check_out(out, force)  # filled by someone else meanwhile: still refused without --force
        aside = out.with_name(f".old-{out.name}-{tmp.name.rsplit('-', 1)[-1]}")
        os.rename(out, aside)
    os.rename(tmp, out)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return report


# ---------------------------------------------------------------- the command


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add `raytickets export` to the CLI's subparsers; the handler is `cmd_export`."""
    e = subparsers.add_parser("export", help="a stored ticket as a Hugging Face model (shrunk when structured), "
                                             "an ONNX model, or a mask file")
    e.add_argument("results_dir")
    e.add_argument("--task", help="the ticket's GLUE task (needed with --best and --sparsity)")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true", help="the task's super ticket (the analysis' rule)")
    which.add_argument("--sparsity", type=float, help=f"the ticket at this sparsity (rounded to {DECIMALS} decimals)")
    which.add_argument("--mask-id", help="the ticket with this stored mask")
    e.add_argument("--seed", type=int, help="which seed's ticket (default: the best metric at the level)")
    e.add_argument("--setting", help="which setting (curve), by setting id or its first characters")
    e.add_argument("--format", default="hf", choices=FORMATS,
                   help="hf: masked dense HF model (+ shrunk/ when structured); onnx: model.onnx; mask: mask.safetensors")
    e.add_argument("--out", required=True, help="output directory (absent or empty, unless --force)")
    e.add_argument("--force", action="store_true", help="replace a non-empty --out")
    e.add_argument("--glue-dir", help="GLUE TSV directory: re-measure the dev metric from the exported files")
    e.set_defaults(func=cmd_export)
    return e


def cmd_export(args) -> int:
    out = Path(args.out)
    check_out(out, args.force)
    if args.glue_dir is not None and not Path(args.glue_dir).expanduser().is_dir():
        raise ConfigError(f"--glue-dir: directory {args.glue_dir!r} does not exist")
    if args.format == "onnx":
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"--format onnx: needs {', '.join(missing)}; pip install 'raytickets[export]'")
    store = ResultsStore(args.results_dir)
    if args.format == "mask" and args.mask_id is not None and args.task is None and store.has_mask(args.mask_id):
        ticket = _bare_mask(store, args.mask_id)  # as before: any stored mask, a ticket's or not
    else:
        ticket = find_ticket(store, args.task, best=args.best, sparsity=args.sparsity, mask_id=args.mask_id,
                             seed=args.seed, setting=args.setting, need_weights=args.format != "mask")
    if args.glue_dir is not None and args.format != "mask":
        data_settings(ticket)  # a row without settings cannot be re-scored: say so before anything is written
    with quiet_transformers():
        report = publish_dir(out, lambda d: WRITERS[args.format](store, ticket, d, args.glue_dir), args.force)
    print(summary(ticket, report, out))
    return 0


def _bare_mask(store: ResultsStore, mask_id: str) -> Ticket:
    """A stored mask exported by id alone (`--format mask`): its ticket row when it has one."""
    try:
        return find_ticket(store, mask_id=mask_id, need_weights=False)
    except ResultsError:
        return Ticket(row={"mask_id": mask_id}, mask=store.load_mask(mask_id))


def summary(ticket: Ticket, report: Report, out: Path) -> str:
    """The command's output: the ticket, what was written, the checks and the sizes."""
    r = ticket.row
    lines = []
    if "task" in r:
        full = f"{r['full_metric']:.4f}" if present(r.get("full_metric")) else "n/a"
        lines.append(f"ticket: {r['task']} {r['method']} sparsity {r['sparsity']:.4f} {r['metric_name']} {r['metric']:.4f}"
                     f" (full {full}) seed {int(r['seed'])} mask {r['mask_id']} run {r['run_id']}")
    else:
        lines.append(f"mask {r['mask_id']}: sparsity {ticket.mask.sparsity():.4f}")
    lines.append(f"wrote {out} ({report.format}): {', '.join(report.files)}")
    s = report.structure
    if s is not None:
        lines.append(f"shrunk: {s.removed_heads} heads and {s.removed_neurons} FFN neurons removed; parameters "
                     f"{report.params[0] / report.params[1]:.2f}x fewer, FLOPs "
                     f"{report.flops[0] / report.flops[1]:.2f}x fewer"
                     f" (max |Δ logit| vs masked {report.shrink_gap:.1e})")
    if report.onnx_gap is not None:
        lines.append(f"onnxruntime vs torch: max |Δ logit| {report.onnx_gap:.1e}")
    if report.sparse_bytes is not None:
        sparse, dense = report.sparse_bytes
        lines.append(f"unstructured zeros ({100 * report.residual_sparsity:.1f}% of prunable weights): a sparse-aware "
                     f"copy would take {megabytes(sparse)} vs {megabytes(dense)} dense ({dense / sparse:.2f}x smaller); "
                     f"they buy no speed on CPU")
    for what, value in report.dev.items():
        lines.append(f"dev {r['metric_name']} from {what}: {value:.4f} (recorded {r['metric']:.4f})")
    return "\n".join(lines)
