"""The model card of an exported ticket: the Hub's YAML front matter and the provenance a reader needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from ..models import HUB_SHORTCUTS
from .model import FLOPS_LENGTH, ONNX_FILE, ONNX_INPUTS, SHRUNK_DIR, Report
from .select import Ticket, present

# Hub ids of the model shortcuts, for the card's `base_model` (a local directory has none).
BASE_MODELS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", **HUB_SHORTCUTS}


# ---------------------------------------------------------------- the model card


def provenance(ticket: Ticket) -> dict[str, Any]:
    """Where the ticket comes from: the identifiers and numbers the card and ticket.json list."""
    r = ticket.row
    if "task" not in r:  # a mask exported by id that no ticket row names
        return {"mask_id": r["mask_id"], "sparsity": ticket.mask.sparsity()}
    return {
        "task": r["task"], "model": r["model"], "method": r["method"], "sparsity": float(r["sparsity"]),
        "metric_name": r["metric_name"], "metric": float(r["metric"]),
        "full_metric": float(r["full_metric"]) if present(r.get("full_metric")) else None,
        "seed": int(r["seed"]), "round": int(r["round"]), "mask_id": r["mask_id"], "run_id": r.get("run_id"),
        "setting_id": r.get("setting_id"), "weights_path": r["weights_path"] if present(r.get("weights_path")) else None,
        "level_seeds": {int(x["seed"]): float(x["metric"]) for x in ticket.level},
        # the analysis' verdict on the curve: did its full model beat chance by the margin (null: not judged)
        "chance": _float(ticket.curve.get("chance")), "min_above_chance": _float(ticket.curve.get("min_above_chance")),
        "learned": bool(ticket.curve["learned"]) if "learned" in ticket.curve else None,
        "settings": ticket.settings,
    }


def _float(x) -> float | None:
    return float(x) if present(x) else None


def _flat(settings: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in sorted(settings.items()):
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def model_card(ticket: Ticket, report: Report) -> str:
    """README.md: the Hub's YAML front matter, then what the ticket is, how it is stored and where it comes from."""
    import yaml

    p = provenance(ticket)
    front = {"base_model": BASE_MODELS.get(p["model"], p["model"] if _is_hub_id(p["model"]) else None),
             "datasets": ["nyu-mll/glue"], "metrics": [p["metric_name"]],
             "tags": ["pruning", "lottery-ticket", *(["structured-pruning"] if report.structure else []),
                      *(["onnx"] if report.format == "onnx" else [])],
             "library_name": "transformers", "pipeline_tag": "text-classification"}
    front = {k: v for k, v in front.items() if v is not None}
    full = f"{p['full_metric']:.4f}" if p["full_metric"] is not None else "n/a"
    seeds = ", ".join(f"{s}: {m:.4f}" for s, m in p["level_seeds"].items())
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {p['task']} lottery ticket of {p['model']} at {100 * p['sparsity']:.2f}% sparsity", "",
        f"A {p['method']} ticket found by raytickets: {p['metric_name']} {p['metric']:.4f} on the {p['task']} dev set "
        f"against {full} for the full fine-tuned model (seed {p['seed']}).", "", *_chance_lines(p),
        "| | |", "|---|---|",
        f"| task | {p['task']} |", f"| base model | {p['model']} |", f"| method | {p['method']} |",
        f"| sparsity (of the prunable weights) | {p['sparsity']:.4f} |",
        f"| {p['metric_name']} (ticket / full model) | {p['metric']:.4f} / {full} |",
        f"| chance (majority class; + the margin a full model must clear) | {_chance_cell(p)} |",
        f"| exported seed (round) | {p['seed']} ({p['round']}) |",
        f"| seeds at this sparsity ({p['metric_name']}) | {seeds} |",
        f"| mask id | {p['mask_id']} |", f"| run id | {p['run_id']} |", f"| setting id | {p['setting_id']} |",
        "", *_storage_lines(report), "", "## Settings", "",
        "Every setting of the run that made this ticket (`settings` of its row; the task and seed are above):", "",
        "| setting | value |", "|---|---|", *(f"| {k} | {json.dumps(v)} |" for k, v in _flat(p["settings"])),
    ]
    return "\n".join(lines) + "\n"


def _chance_cell(p: dict) -> str:
    if p["chance"] is None:
        return "unknown"
    margin = f" (+ {p['min_above_chance']:.4f})" if p["min_above_chance"] is not None else ""
    return f"{p['chance']:.4f}{margin}: " + ("the full model learned" if p["learned"] else "the full model did not learn")


def _chance_lines(p: dict) -> list[str]:
    """A warning paragraph where the curve's full model did not beat chance: what is exported is no ticket."""
    if p["learned"] is not False:
        return []
    return [f"**Not a ticket: the full model did not learn.** Its mean {p['metric_name']} over seeds is not above "
            f"the chance value {p['chance']:.4f} (a constant majority-class predictor) by the margin "
            f"{p['min_above_chance']:.4f} (two standard errors at the dev size, unless set), so nothing on this "
            "curve can match or beat it; this mask is exported only as asked.", ""]


def _is_hub_id(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).expanduser().exists()


def _storage_lines(report: Report) -> list[str]:
    lines = ["## Files", ""]
    if report.format == "hf":
        lines.append("`model.safetensors` is the masked dense model: pruned weights are zeros, shapes are the base "
                     "model's, so `AutoModelForSequenceClassification.from_pretrained(DIR)` loads it with plain "
                     "transformers.")
    if report.format == "onnx":
        lines.append(f"`{ONNX_FILE}` (inputs {', '.join(ONNX_INPUTS)}: int64 [batch, sequence]; output logits) runs in "
                     "onnxruntime: `onnxruntime.InferenceSession(DIR/model.onnx)`.")
    s = report.structure
    if s is not None:
        where = f"`{SHRUNK_DIR}/`" if report.format == "hf" else f"`{ONNX_FILE}`"
        lines += ["", f"{where} holds the physically shrunk model: the {s.removed_heads} removed attention heads "
                      f"(of {s.num_heads * len(s.heads)}) and {s.removed_neurons} removed FFN neurons (of "
                      f"{s.intermediate_size * len(s.neurons)}) are cut out of the weight matrices, so layers have "
                      "their own head counts and FFN widths: "
                      + ", ".join(f"layer {i}: {len(h)} heads / {len(n)} neurons" for i, (h, n) in
                                  enumerate(zip(s.heads, s.neurons))) + "."]
        if report.format == "hf":
            lines.append("A stock BertConfig cannot express that, so the shapes are in `shrunk/shrink.json`; load it "
                         "with `raytickets.export.load_shrunk(DIR)` (plain transformers refuses the folder).")
        lines.append(f"Parameters {report.params[0]:,} -> {report.params[1]:,} ({report.params[0] / report.params[1]:.2f}x "
                     f"fewer); FLOPs per {FLOPS_LENGTH}-token sequence {report.flops[0] / 1e9:.3f} G -> "
                     f"{report.flops[1] / 1e9:.3f} G ({report.flops[0] / report.flops[1]:.2f}x fewer).")
    if report.sparse_bytes is not None:
        sparse, dense = report.sparse_bytes
        lines += ["", f"{100 * report.residual_sparsity:.2f}% of the prunable weights are zeros inside the dense "
                      f"matrices. A sparse-aware copy (kept values plus a bit-packed mask, safetensors) would take "
                      f"{megabytes(sparse)} against {megabytes(dense)} dense ({dense / sparse:.2f}x smaller). Unstructured sparsity "
                      "buys no speed on CPU here: the zeros go through the same dense matrix multiplications as any "
                      "other weight; only removing whole heads and neurons (a structured ticket) makes the model faster."]
    checks = []
    if report.shrink_gap is not None:
        checks.append(f"shrunk vs masked dense model: max |Δ logit| {report.shrink_gap:.2e}")
    if report.onnx_gap is not None:
        checks.append(f"onnxruntime vs torch: max |Δ logit| {report.onnx_gap:.2e}")
    if checks:
        lines += ["", "Checked at export on a seeded batch: " + "; ".join(checks) + "."]
    if report.dev:
        lines += ["", "Dev metric re-measured from the exported files (the run's tokenised dev split):", "",
                  *(f"- {what}: {value:.4f}" for what, value in report.dev.items())]
    return lines


