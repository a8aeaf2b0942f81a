"""The model card of an exported ticket, built with huggingface_hub's `ModelCard`/`ModelCardData`: the Hub's
metadata (license of the base model, `base_model`, `datasets`, a `model-index` with the dev metric that
`ModelCard.load(...)` reads back) and the provenance a reader needs, every user string escaped for Markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..analysis.curves import GLUE_DEV_SIZES, dev_examples
from ..analysis.tables import md_cell
from ..models import HUB_SHORTCUTS, MINILM, resolve_model
from ..tasks import HUB_DATASET, get_task
from ..squad import HUB_DATASET as SQUAD_HUB
from .model import FLOPS_LENGTH, ONNX_FILE, ONNX_INPUTS, QUANTIZED_FILE, SHRUNK_DIR, SHRUNK_LOADER, Report
from .select import Ticket, present

# Hub ids of the model shortcuts, for the card's `base_model` (a local directory has none).
BASE_MODELS = {MINILM: "sentence-transformers/all-MiniLM-L6-v2", **HUB_SHORTCUTS}

# The two papers whose methods find the tickets; the card cites the one of its method (and docs/ both).
CHEN2020 = """@inproceedings{chen2020lottery,
  title     = {The Lottery Ticket Hypothesis for Pre-trained {BERT} Networks},
  author    = {Chen, Tianlong and Frankle, Jonathan and Chang, Shiyu and Liu, Sijia and Zhang, Yang and
               Wang, Zhangyang and Carbin, Michael},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {33},
  pages     = {15834--15846},
  year      = {2020}
}"""
LIANG2021 = """@inproceedings{liang2021super,
  title     = {Super Tickets in Pre-Trained Language Models: From Model Compression to Improving Generalization},
  author    = {Liang, Chen and Zuo, Simiao and Chen, Minshuo and Jiang, Haoming and Liu, Xiaodong and He, Pengcheng
               and Zhao, Tuo and Chen, Weizhu},
  booktitle = {Proceedings of the 59th Annual Meeting of the Association for Computational Linguistics and the 11th
               International Joint Conference on Natural Language Processing (Volume 1: Long Papers)},
  pages     = {6524--6538},
  year      = {2021},
  doi       = {10.18653/v1/2021.acl-long.510}
}"""

# What set the sparsity: the row's columns (setting_id leaves them out: they only move a level along the curve).
SPARSITY_COLUMNS = ("method", "schedule", "scope", "rate", "target_sparsity", "head_fraction", "ffn_fraction",
                    "ffn_granularity", "losing", "rewind_step")


# ---------------------------------------------------------------- provenance (card and ticket.json)


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
        "sparsity_settings": sparsity_settings(ticket),
        "dev_rows": dev_examples(r["task"], r["settings"]) if present(r.get("settings")) else None,
        "settings": ticket.settings,
    }


def sparsity_settings(ticket: Ticket) -> dict[str, Any]:
    """What set this ticket's sparsity: the pruning columns of its row (those set), its round and the rounds its
    trajectory ran (the tickets table, where the trajectory finished)."""
    r = ticket.row
    out = {k: _plain(r[k]) for k in SPARSITY_COLUMNS if k in r and present(r[k])}
    out["round"] = int(r["round"])
    if ticket.trajectory:
        out["rounds run"] = int(ticket.trajectory["rounds"])
    return out


def _plain(x):
    """numpy scalars as Python values (for JSON and the card)."""
    return x.item() if hasattr(x, "item") else x


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


# ---------------------------------------------------------------- the Hub's metadata


def base_license(model: str) -> str | None:
    """The base model's license, read from its own card: a local directory's README.md (the packaged MiniLM's
    says apache-2.0) or a hub id's card in the local Hub cache (never downloaded). None when neither is there."""
    from huggingface_hub import ModelCard

    try:
        where = Path(resolve_model(model))
    except Exception:  # a model directory since moved: the card says the license is unknown
        return None
    readme = where / "README.md" if where.is_dir() else None
    if readme is None and _is_hub_id(str(where)):
        from huggingface_hub import hf_hub_download

        try:
            readme = Path(hf_hub_download(str(where), "README.md", local_files_only=True))
        except Exception:  # not in the cache (offline by design)
            return None
    if readme is None or not readme.is_file():
        return None
    license = ModelCard.load(readme).data.license
    return license if isinstance(license, str) else None


def _is_hub_id(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).expanduser().exists()


def eval_results(p: dict, report: Report) -> list:
    """model-index entries: the full dev set's metric when export measured it, and the run's own (a seeded
    subsample when `data.max_dev_examples` cut it), each naming the rows it was scored on."""
    from huggingface_hub import EvalResult

    task = get_task(p["task"])
    total = GLUE_DEV_SIZES.get(p["task"])
    split = "validation" if len(task.dev_splits) == 1 else "+".join(s.replace("dev", "validation")
                                                                     for s in task.dev_splits)
    common = dict(task_type="text-classification", dataset_type=HUB_DATASET, dataset_name=f"GLUE {p['task'].upper()}",
                  dataset_config=task.hub_name, dataset_split=split, metric_type=p["metric_name"])
    out = []
    if report.full_dev is not None:
        what, value, rows = report.full_dev
        out.append(EvalResult(**common, metric_value=round(value, 6),
                              metric_name=f"{p['metric_name']} (full dev set, {rows} rows; {what})"))
        q = report.quantized
        if q is not None and q.full_dev is not None:
            out.append(EvalResult(**common, metric_value=round(q.full_dev, 6), metric_name=f"{p['metric_name']} "
                                  f"(full dev set, {rows} rows; {QUANTIZED_FILE}, {q.mode})"))
    rows = p["dev_rows"]
    of = f"{rows} of {total}" if rows is not None and total is not None else "the run's"
    out.append(EvalResult(**common, metric_value=round(p["metric"], 6),
                          metric_name=f"{p['metric_name']} (as recorded by the run, {of} dev rows)"))
    return out


def card_data(ticket: Ticket, report: Report):
    """The card's YAML front matter as a `ModelCardData`."""
    from huggingface_hub import ModelCardData

    p = provenance(ticket)
    base = BASE_MODELS.get(p["model"], p["model"] if _is_hub_id(p["model"]) else None)
    onnx = report.format == "onnx"
    squad = get_task(p["task"]).is_span  # an extractive QA ticket (raytickets.squad)
    return ModelCardData(
        model_name=f"{p['task']} lottery ticket of {p['model']} at {100 * p['sparsity']:.2f}% sparsity",
        base_model=base, license=base_license(p["model"]), datasets=[SQUAD_HUB if squad else HUB_DATASET],
        metrics=[p["metric_name"]], eval_results=eval_results(p, report) if p["task"] in GLUE_DEV_SIZES else None,
        tags=["pruning", "lottery-ticket", "raytickets", *(["structured-pruning"] if report.structure else []),
              *(["onnx"] if onnx else []), *(["int8"] if report.quantized else [])],
        # The ONNX directory holds no transformers weights: `from_pretrained` cannot load it.
        library_name="onnx" if onnx else "transformers",
        pipeline_tag="question-answering" if squad else "text-classification")


# ---------------------------------------------------------------- the card


def model_card(ticket: Ticket, report: Report) -> str:
    """README.md: the Hub's metadata, then what the ticket is, how it is stored and where it comes from."""
    from huggingface_hub import ModelCard

    p = provenance(ticket)
    data = card_data(ticket, report)
    full = f"{p['full_metric']:.4f}" if p["full_metric"] is not None else "n/a"
    seeds = ", ".join(f"{s}: {m:.4f}" for s, m in p["level_seeds"].items())
    total = GLUE_DEV_SIZES.get(p["task"])
    rows = f"{p['dev_rows']} of the {total} dev rows" if p["dev_rows"] is not None and total else "the run's dev rows"
    lines = [
        f"# {md_cell(p['task'])} lottery ticket of {md_cell(p['model'])} at {100 * p['sparsity']:.2f}% sparsity", "",
        f"A {md_cell(p['method'])} ticket found by raytickets: {p['metric_name']} {p['metric']:.4f} on {rows} of "
        f"{md_cell(p['task'])} against {full} for the full fine-tuned model on the same rows (seed {p['seed']}).", "",
        *_full_dev_lines(p, report), *_chance_lines(p),
        "| | |", "|---|---|",
        *_row("task", p["task"]), *_row("base model", p["model"]), *_row("method", p["method"]),
        *_row("sparsity (of the prunable weights)", f"{p['sparsity']:.4f}"),
        *_row(f"{p['metric_name']} (ticket / full model)", f"{p['metric']:.4f} / {full}"),
        *_row("dev rows scored by the run", rows),
        *_row("chance (majority class; + the margin a full model must clear)", _chance_cell(p)),
        *_row("exported seed (round)", f"{p['seed']} ({p['round']})"),
        *_row(f"seeds at this sparsity ({p['metric_name']})", seeds),
        *_row("mask id", p["mask_id"]), *_row("run id", p["run_id"]), *_row("setting id", p["setting_id"]),
        *_row("license", data.license or "unknown: see the base model's card"),
        "", *_storage_lines(report, get_task(p["task"]).is_span), "", "## What set the sparsity", "",
        "The pruning settings of the trajectory (they move a ticket along its curve, so its setting id leaves them "
        "out), this ticket's round and the rounds its trajectory ran:", "",
        "| setting | value |", "|---|---|", *(f"| {md_cell(k)} | {md_cell(json.dumps(v))} |"
                                             for k, v in p["sparsity_settings"].items()),
        "", "## Settings", "",
        "Every other setting of the run that made this ticket (`settings` of its row; the task and seed are above):", "",
        "| setting | value |", "|---|---|",
        *(f"| {md_cell(k)} | {md_cell(json.dumps(v))} |" for k, v in _flat(p["settings"])),
        "", "## Citation", "", "```bibtex", LIANG2021 if p["method"] == "structured" else CHEN2020, "```", "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def _row(name: str, value) -> list[str]:
    return [f"| {md_cell(name)} | {md_cell(value)} |"]


def _full_dev_lines(p: dict, report: Report) -> list[str]:
    if report.full_dev is None:
        return []
    what, value, rows = report.full_dev
    return [f"On the full dev set ({rows} rows), measured at export from {md_cell(what)}: {p['metric_name']} "
            f"{value:.4f}.", ""]


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


def _storage_lines(report: Report, span: bool = False) -> list[str]:
    """`span`: an extractive QA ticket (squad), whose head gives start and end logits per token."""
    auto = "AutoModelForQuestionAnswering" if span else "AutoModelForSequenceClassification"
    outputs = "outputs start_logits and end_logits [batch, sequence]" if span else "output logits"
    lines = ["## Files", ""]
    if report.format == "hf":
        lines.append("`model.safetensors` is the masked dense model: pruned weights are zeros, shapes are the base "
                     f"model's, so `{auto}.from_pretrained(DIR)` loads it with plain transformers.")
    if report.format == "onnx":
        lines.append(f"`{ONNX_FILE}` (inputs {', '.join(ONNX_INPUTS)}: int64 [batch, sequence]; {outputs}) runs in "
                     "onnxruntime: `onnxruntime.InferenceSession(DIR/model.onnx)`, or "
                     "`raytickets.export.OnnxModel(DIR)`, called like a transformers model. It is the portable form: "
                     "no raytickets or transformers needed.")
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
            lines.append(f"A stock BertConfig cannot express that: `{SHRUNK_DIR}/config.json` has its own model type "
                         "and per-layer sizes, so plain transformers refuses the folder rather than loading it wrongly, "
                         f"and the kept units are in `{SHRUNK_DIR}/shrink.json`. Load it with "
                         f"`{SHRUNK_LOADER}(DIR)` (`pip install raytickets`); the portable form of the shrunk model is "
                         "ONNX (`raytickets export ... --format onnx`).")
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
    lines += _quantized_lines(report)
    checks = []
    if report.shrink_gap is not None:
        checks.append(f"shrunk vs masked dense model: max |Δ logit| {report.shrink_gap:.2e}")
    if report.onnx_gap is not None:
        checks.append(f"onnxruntime vs torch: max |Δ logit| {report.onnx_gap:.2e}")
    if checks:
        lines += ["", "Checked at export on a seeded batch: " + "; ".join(checks) + "."]
    if report.dev:
        lines += ["", f"Dev metric re-measured from the exported files on the run's {report.dev_rows} dev rows "
                      "(its tokenised dev split):", "",
                  *(f"- {md_cell(what)}: {value:.4f}" for what, value in report.dev.items())]
    q = report.quantized
    if q is not None and q.full_dev is not None and report.full_dev is not None:
        what, value, rows = report.full_dev
        lines += ["", f"On the full dev set ({rows} rows): {md_cell(what)} {value:.4f}, {QUANTIZED_FILE} ({q.mode}) "
                      f"{q.full_dev:.4f} ({100 * (q.full_dev - value):+.2f} points)."]
    return lines


QUANTIZATION = {
    "int8": "ONNX Runtime's dynamic quantization (`quantize_dynamic`): int8 weights, activations quantized per "
            "batch at run time (no calibration data)",
    "int8-static": "ONNX Runtime's static quantization (`quantize_static`, QOperator format): int8 weights and "
                   "uint8 activations whose ranges were calibrated (MinMax) on {rows} training rows of the task; the "
                   "encoder's linear layers run as QLinearMatMul, attention products, softmax and LayerNorm in fp32",
}


def _quantized_lines(report: Report) -> list[str]:
    """`--quantize`: what model_quantized.onnx is, how far from fp32, and what it does with a ticket's zeros."""
    q = report.quantized
    if q is None:
        return []
    how = QUANTIZATION[q.mode].format(rows=q.calibration_rows)
    lines = ["", f"`{QUANTIZED_FILE}` is the int8 graph of `{ONNX_FILE}`, made by {how}. It takes "
                 f"{megabytes(q.bytes[1])} against {megabytes(q.bytes[0])} ({q.bytes[0] / q.bytes[1]:.2f}x smaller) and "
                 f"runs like it: `onnxruntime.InferenceSession(DIR/{QUANTIZED_FILE})` or "
                 f"`raytickets.export.OnnxModel(DIR/{QUANTIZED_FILE})`. It approximates the fp32 graph: max |Δ logit| "
                 f"{q.gap:.2e} on the seeded check batch, whose fp32 logits reach {q.scale:.3g} in magnitude (random "
                 "token ids, which stray further from the weights' ranges than text does: the dev metric, listed "
                 "beside fp32's below when measured, is what tells whether the int8 graph keeps the ticket)."]
    if report.residual_sparsity > 0:
        lines.append("The ticket's pruned weights are int8 zeros inside dense int8 matrices: this is a dense int8 "
                     "graph, as fast as the unpruned model's would be; its speed-up over fp32 is int8's, not the "
                     "sparsity's (ONNX Runtime's CPU kernels have no sparse or N:M path).")
    return lines
