"""`raytickets export`: a stored ticket as a Hugging Face model (shrunk when structured), ONNX (and its int8 graph),
or a mask file."""

from __future__ import annotations

import argparse
import importlib.util
from functools import partial
from pathlib import Path

from ..atomic import terminate_cleanly
import pyarrow.fs as pafs

from ..errors import ConfigError, ResultsError
from ..models import quiet_transformers
from ..store import ResultsStore, check_writable
from .card import megabytes
from .model import ONNX_FILE, QUANTIZED_FILE, Report, data_settings
from .select import DECIMALS, Ticket, find_ticket, present
from .quantize import CALIBRATION_BATCH_SIZE, CALIBRATION_BATCHES, MODES, STATIC_MODES, Quantize
from .write import FORMATS, WRITERS, check_out, publish_dir, write_onnx_dir


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
    e.add_argument("--format", choices=FORMATS,
                   help="hf: masked dense HF model (+ shrunk/ when structured); onnx: model.onnx; mask: "
                        "mask.safetensors (default: hf; onnx with --quantize)")
    e.add_argument("--quantize", choices=tuple(MODES), help="also write model_quantized.onnx, the int8 graph (--format "
                   "onnx only), scored beside fp32 with --glue-dir; " + "; ".join(f"{k}: {v}" for k, v in MODES.items()))
    e.add_argument("--calibration-batches", type=int, help=f"--quantize int8-static: batches of "
                   f"{CALIBRATION_BATCH_SIZE} training rows the activation ranges are calibrated on "
                   f"(default: {CALIBRATION_BATCHES})")
    e.add_argument("--out", required=True, help="output directory (absent or empty, unless --force)")
    e.add_argument("--force", action="store_true", help="replace a non-empty --out")
    e.add_argument("--glue-dir", help="GLUE TSV directory: re-measure the dev metric from the exported files, on the "
                                      "run's dev rows and on the whole dev set (the card's model-index)")
    e.set_defaults(func=cmd_export)
    return e


def cmd_export(args) -> int:
    quantize = check_quantize(args)
    out = Path(args.out)
    check_apart(out, args.results_dir)
    check_out(out, args.force)
    check_writable(pafs.LocalFileSystem(), str(out), "--out", args.out)
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
    with quiet_transformers(), terminate_cleanly():  # a `kill` mid-export leaves no temp dir behind
        write = partial(write_onnx_dir, quantize=quantize) if quantize else WRITERS[args.format]
        report = publish_dir(out, lambda d: write(store, ticket, d, args.glue_dir), args.force)
    print(summary(ticket, report, out))
    return 0


def check_quantize(args) -> Quantize | None:
    """`--quantize` and its format, one line each before any work; sets the default format (onnx with --quantize)."""
    if args.format is None:
        args.format = "onnx" if args.quantize else "hf"
    if args.quantize is None:
        if args.calibration_batches is not None:
            raise ConfigError("--calibration-batches: applies to --quantize int8-static only")
        return None
    if args.format != "onnx":
        raise ConfigError(f"--quantize: --format {args.format} cannot carry {args.quantize}; allowed: --format onnx "
                          "(ONNX Runtime quantizes the ONNX graph)")
    request = Quantize(args.quantize)
    if not request.static:
        if args.calibration_batches is not None:
            raise ConfigError(f"--calibration-batches: --quantize {args.quantize} needs no calibration; it applies to "
                              f"{', '.join(STATIC_MODES)} only")
        return request
    if args.glue_dir is None:
        raise ConfigError(f"--quantize {args.quantize}: calibrates on the task's training rows, read from --glue-dir; "
                          "give --glue-dir (or --quantize int8, which needs no data)")
    batches = CALIBRATION_BATCHES if args.calibration_batches is None else args.calibration_batches
    if batches < 1:
        raise ConfigError(f"--calibration-batches: {batches}; allowed: an integer >= 1")
    return Quantize(args.quantize, batches)


def check_apart(out: Path, results_dir: str) -> None:
    """`--out` neither inside the results root (files there would join its tables: a `rounds/x.parquet` export
    makes `pandas.read_parquet` of the table fail) nor holding it (`--force` would replace the root with the
    export)."""
    if "://" in str(results_dir):
        return  # a URI's root is not on this disk
    root, target = Path(results_dir).expanduser().resolve(), out.expanduser().resolve()
    if target == root or root in target.parents:
        raise ConfigError(f"--out: {out} is inside the results root {results_dir}; give a directory outside it")
    if target in root.parents:
        raise ConfigError(f"--out: {out} holds the results root {results_dir}; give a directory outside it")


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
    q = report.quantized
    if q is not None:
        calibrated = f", calibrated on {q.calibration_rows} training rows" if q.calibration_rows else ""
        lines.append(f"{q.mode}{calibrated}: {QUANTIZED_FILE} {megabytes(q.bytes[1])} vs {ONNX_FILE} "
                     f"{megabytes(q.bytes[0])} ({q.bytes[0] / q.bytes[1]:.2f}x smaller); max |Δ logit| vs fp32 "
                     f"{q.gap:.1e} (fp32 logits up to {q.scale:.2g})")
    if report.sparse_bytes is not None:
        sparse, dense = report.sparse_bytes
        lines.append(f"unstructured zeros ({100 * report.residual_sparsity:.1f}% of prunable weights): a sparse-aware "
                     f"copy would take {megabytes(sparse)} vs {megabytes(dense)} dense ({dense / sparse:.2f}x smaller); "
                     f"they buy no speed on CPU")
    for what, value in report.dev.items():
        lines.append(f"dev {r['metric_name']} from {what}: {value:.4f} (recorded {r['metric']:.4f}, "
                     f"{report.dev_rows} dev rows)")
    if report.full_dev is not None:
        what, value, rows = report.full_dev
        lines.append(f"full dev set ({rows} rows) {r['metric_name']} from {what}: {value:.4f} (the card's model-index)")
        q = report.quantized
        if q is not None and q.full_dev is not None:
            lines.append(f"full dev set ({rows} rows) {r['metric_name']} from {QUANTIZED_FILE} ({q.mode}): "
                         f"{q.full_dev:.4f} ({100 * (q.full_dev - value):+.2f} points)")
    return "\n".join(lines)
