"""`raytickets export`: a stored ticket as a Hugging Face model (shrunk when structured), ONNX, or a mask file."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from ..atomic import terminate_cleanly
import pyarrow.fs as pafs

from ..errors import ConfigError, ResultsError
from ..models import quiet_transformers
from ..store import ResultsStore, check_writable
from .card import megabytes
from .model import Report, data_settings
from .select import DECIMALS, Ticket, find_ticket, present
from .write import FORMATS, WRITERS, check_out, publish_dir


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
    e.add_argument("--glue-dir", help="GLUE TSV directory: re-measure the dev metric from the exported files, on the "
                                      "run's dev rows and on the whole dev set (the card's model-index)")
    e.set_defaults(func=cmd_export)
    return e


def cmd_export(args) -> int:
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
        report = publish_dir(out, lambda d: WRITERS[args.format](store, ticket, d, args.glue_dir), args.force)
    print(summary(ticket, report, out))
    return 0


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
    return "\n".join(lines)
