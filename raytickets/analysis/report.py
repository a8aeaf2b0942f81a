"""The results as a self-contained HTML page with PNG figures, and a Markdown summary.

`write_report(results_dir)` writes `<results_dir>/report/index.html` (figures embedded as base64 data URIs,
so the page can be mailed or attached as one file), the same figures as PNG files next to it, and
`summary.md`. Figures are drawn with matplotlib's object API on the Agg canvas: no pyplot, no display,
no global backend switch.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from .tables import (
    BASELINE_KINDS, CURVE_KEY, SUMMARY_HEADER, analyze, collapse_text, load_analysis, of_curve, out_location,
    mtl_markdown, summary_markdown, summary_rows,
)
from ..baselines import BASELINES
from .multitask import mtl_figure
from ..store import ResultsStore, write_bytes_atomic

MTL_TABLES = ("mtl", "mtl_sharing")  # one set per results root, not per (model, method): drawn after the rest

# Marker and colour per baseline kind, from the registry; the ticket is always blue.
BASELINE_STYLE = {name: b.style for name, b in BASELINES.items()}


def write_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path | str:
    """Write the report and return the location of index.html (a Path locally, a URI string otherwise).

    Runs `analyze` first if the analysis tables are missing (or were written by an older raytickets).
    """
    store = ResultsStore(results_dir)
    tables = load_analysis(results_dir) or analyze(results_dir)
    figures = build_figures(tables)  # [(file name, caption, png bytes)]
    summary = summary_markdown(tables)
    page = render_html(summary_rows(tables), figures, collapse_notes(tables), mtl_markdown(tables))
    fs, out = out_location(store, out_dir, "report")
    where = store.display(f"{out}/index.html") if out_dir is None else f"{os.fspath(out_dir).rstrip('/')}/index.html"
    for name, _, png in figures:
        write_bytes_atomic(png, fs, f"{out}/{name}")
    write_bytes_atomic(summary.encode(), fs, f"{out}/summary.md")
    write_bytes_atomic(page.encode(), fs, f"{out}/index.html")  # last: the page exists only with its figures
    return where if "://" in where else Path(where)


def collapse_notes(tables: dict[str, pd.DataFrame]) -> list[str]:
    """One sentence per curve whose chosen ticket has a collapsed layer: which task, setting and tensors."""
    layers = tables["layer_sparsity"]
    notes = []
    for key, _ in layers[layers["collapsed"]].groupby(CURVE_KEY, sort=True):
        notes.append(f"{curve_title(tables['super_tickets'], key)}: {collapse_text(layers, key)}")
    return notes


def curve_title(supers: pd.DataFrame, key: tuple) -> str:
    """"task" or "task · setting label": how a curve is named in panels, legends and notes."""
    label = of_curve(supers, key)["setting_label"]
    text = label.iloc[0] if len(label) and isinstance(label.iloc[0], str) else ""
    return f"{key[2]} · {text}" if text else key[2]


# ---------------------------------------------------------------- figures


def build_figures(tables: dict[str, pd.DataFrame]) -> list[tuple[str, str, bytes]]:
    """Every figure of the report as (file name, caption, PNG bytes), one set per (model, method)."""
    supers = tables["super_tickets"]
    groups = sorted(set(map(tuple, supers[["model", "method"]].drop_duplicates().to_numpy())))
    figures = []
    for model, method in groups:
        tag = _slug(f"{model}-{method}")
        name = f"{Path(model).name or model} / {method}"
        sel = {k: _select(t, model, method) for k, t in tables.items() if k not in MTL_TABLES}
        figures.append((f"curves-{tag}.png", f"Metric vs sparsity per task and setting ({name}): ticket mean ± std "
                        "over seeds, baselines, full-model band (mean ± std), chance (dotted; shaded up to the margin "
                        "a full model must clear); ○ matching (paper), □ matching (strict), ★ super ticket; a panel "
                        "marked 'did not learn' has none", _png(curve_figure(sel["super_tickets"], sel["curves"]))))
        if not sel["overlap"].empty:
            figures.append((f"overlap-{tag}.png", f"Overlap of matching tickets across tasks ({name}): "
                            "Jaccard / Jaccard of independent random masks (1 = chance), mean over seed and setting pairs",
                            _png(overlap_figure(sel["overlap"]))))
        if not sel["transfer"].empty:
            figures.append((f"transfer-{tag}.png", f"Ticket transfer ({name}): each source ticket trained on each "
                            "target minus the target's own ticket at that sparsity; ✓ transfers (Chen et al.: within "
                            "one std of the own ticket), ✓✓ also strictly, ✗ not; ★ universal (transfers to every target)",
                            _png(transfer_figure(sel["transfer"]))))
        if not sel["layer_sparsity"].empty:
            notes = collapse_notes(sel)
            collapse = "Layer collapse: " + "; ".join(notes) if notes else "No layer collapse (no tensor > 95% pruned)"
            figures.append((f"layers-{tag}.png", f"Per-layer sparsity of each curve's matching ticket (super ticket "
                            f"where none matches), first seed ({name}). {collapse}.",
                            _png(layer_figure(sel["layer_sparsity"], sel["super_tickets"]))))
    if "mtl" in tables and not tables["mtl"].empty:
        figures.append(("mtl.png", "Multi-task arms per task and the task average (raytickets mtl): mean ± std over "
                        "seeds; plain = one shared encoder without masks, tickets_share = each task through its own "
                        "super ticket, single = the tickets fine-tuned alone, random = random tickets of the same sizes",
                        _png(mtl_figure(tables["mtl"]))))
    return figures


def curve_figure(supers: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """One panel per curve (task and setting): ticket, baselines, full-model band, the chance line (and the margin
    above it the full model must clear), matching and super marks; none of them where the full model did not
    learn (`super_tickets.learned`), said in the panel's title."""
    keys = sorted(set(map(tuple, supers[CURVE_KEY].drop_duplicates().to_numpy())))
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows), layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        t = of_curve(supers, key).sort_values("sparsity")
        first = t.iloc[0]
        if not math.isnan(first["full_mean"]):
            ax.axhspan(first["full_mean"] - first["full_std"], first["full_mean"] + first["full_std"],
                       color="tab:gray", alpha=0.25, label="full model ± std")
            ax.axhline(first["full_mean"], color="tab:gray", lw=1)
        if not math.isnan(first["chance"]):
            ax.axhline(first["chance"], color="tab:red", lw=1, ls=":", label="chance")
            if first["min_above_chance"] > 0:
                ax.axhspan(first["chance"], first["chance"] + first["min_above_chance"], color="tab:red", alpha=0.08,
                           label="chance + margin")
        mine = of_curve(curves, key)
        for kind in BASELINE_KINDS:
            b = mine[mine["kind"] == kind].sort_values("sparsity")
            if len(b):
                marker, color = BASELINE_STYLE[kind]
                ax.errorbar(100 * b["sparsity"], b["mean"], yerr=b["std"].fillna(0), marker=marker, color=color,
                            ms=4, lw=1, ls="--", capsize=2, alpha=0.8, label=kind)
        ax.errorbar(100 * t["sparsity"], t["mean"], yerr=t["std"].fillna(0), marker="o", ms=4, lw=2, capsize=3,
                    color="tab:blue", label="ticket")
        _mark(ax, t, first["matching_sparsity_paper"], "o", 13, "matching (paper)")
        _mark(ax, t, first["matching_sparsity_strict"], "s", 11, "matching (strict)")
        _mark(ax, t, first["super_sparsity"], "*", 16, "super ticket", filled=True)
        ax.set_title(curve_title(supers, key) + ("" if first["learned"] else " — did not learn"), fontsize=9)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel(first["metric_name"])
        ax.grid(alpha=0.3)
    legend = {}  # one legend for all panels: a label drawn in any panel appears once
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(5, len(legend)), fontsize=8)
    return fig


def _mark(ax, t: pd.DataFrame, sparsity: float, marker: str, size: int, label: str, filled: bool = False) -> None:
    if math.isnan(sparsity):
        return
    y = t.loc[np.isclose(t["sparsity"], sparsity), "mean"].iloc[0]
    ax.plot([100 * sparsity], [y], marker=marker, ms=size, ls="none", label=label,
            mfc="gold" if filled else "none", mec="black" if filled else "tab:red", mew=1.5, zorder=5)


def overlap_figure(overlap: pd.DataFrame) -> Figure:
    """Task × task heatmap of the overall Jaccard ratio to chance, averaged over seed and setting pairs
    (symmetric)."""
    overall = overlap[overlap["scope"] == "overall"].groupby(["task_a", "task_b"])["ratio"].mean()
    tasks = sorted(set(overlap["task_a"]) | set(overlap["task_b"]))
    matrix = pd.DataFrame(np.nan, index=tasks, columns=tasks)
    for (a, b), v in overall.items():
        matrix.loc[a, b] = matrix.loc[b, a] = v
    finite = matrix.to_numpy()[np.isfinite(matrix.to_numpy())]
    spread = max(0.05, float(np.abs(finite - 1.0).max())) if len(finite) else 1.0
    norm = TwoSlopeNorm(1.0, 1.0 - spread, 1.0 + spread)  # white = chance; red = more shared than chance
    return _heatmap(matrix, "Jaccard / random Jaccard (1 = chance)", "RdBu_r", norm, lambda v: f"{v:.2f}")


def transfer_figure(transfer: pd.DataFrame) -> Figure:
    """The transfer matrix: one row per source ticket (task @ sparsity; `random` is the random mask), one column
    per target; the colour is `vs_ticket` (TRANSFER(S, T) - TRANSFER(T, T)) and each cell is marked with Chen
    et al.'s rule: ✓ transfers (within one std of the target's own ticket), ✓✓ also strictly, ✗ not; a source
    that transfers to every target is starred (universal). A source is named with its setting where the
    transfers come from several settings."""
    several = transfer["setting_id"].nunique() > 1
    name = (transfer["source_task"] + " @" + (100 * transfer["sparsity"]).round().astype(int).astype(str) + "%"
            + np.where(transfer["universal"].fillna(False).astype(bool), " ★", "")
            + (" · " + transfer["setting_id"].str[:8] if several else ""))
    cells = transfer.assign(source=name)
    sources = sorted(cells["source"].unique(), key=lambda n: (n.startswith("random"), n))
    matrix = pd.DataFrame(np.nan, index=sources, columns=sorted(cells["task"].unique()))
    labels = {}
    for r in cells.itertuples(index=False):
        matrix.loc[r.source, r.task] = r.vs_ticket
        mark = "" if pd.isna(r.transfers) else "✓✓" if r.transfers_strict else "✓" if r.transfers else "✗"
        labels[(r.source, r.task)] = f"{r.vs_ticket:+.3f} {mark}" if np.isfinite(r.vs_ticket) else "no own ticket"
    finite = matrix.to_numpy()[np.isfinite(matrix.to_numpy())]
    bound = float(np.abs(finite).max()) if len(finite) and np.abs(finite).max() > 0 else 1.0
    fig = _heatmap(matrix, "TRANSFER(S, T) − TRANSFER(T, T)", "RdBu", TwoSlopeNorm(0.0, -bound, bound), None, labels)
    fig.axes[0].set_xlabel("target task T")
    fig.axes[0].set_ylabel("source ticket S (task @ sparsity; ★ universal)")
    return fig


def _heatmap(matrix: pd.DataFrame, label: str, cmap: str, norm, fmt, labels: dict | None = None) -> Figure:
    n_rows, n_cols = matrix.shape
    widest = max((len(str(i)) for i in matrix.index), default=0)  # room for long row names (task · setting)
    fig = Figure(figsize=(1.2 * n_cols + 2.5 + 0.08 * widest, 1.0 * n_rows + 1.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_facecolor("#e0e0e0")  # grey = no value (a task with itself, a pair never run)
    image = ax.imshow(matrix.to_numpy(dtype=float), cmap=cmap, norm=norm)
    ax.set_xticks(range(n_cols), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(n_rows), matrix.index)
    for i, row in enumerate(matrix.index):
        for j, col in enumerate(matrix.columns):
            v = matrix.loc[row, col]
            if np.isfinite(v):
                text = labels[(row, col)] if labels else fmt(v)
                r, g, b, _ = image.cmap(image.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # readable text on any cell colour
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label=label)
    return fig


def layer_figure(layers: pd.DataFrame, supers: pd.DataFrame) -> Figure:
    """Grouped bars: sparsity of each layer (encoder layers in order, then the pooler) per curve; a layer holding
    a collapsed tensor is hatched."""
    order = sorted(layers["layer"].unique(), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    keys = sorted(set(map(tuple, layers[CURVE_KEY].drop_duplicates().to_numpy())))
    fig = Figure(figsize=(max(5.0, 0.9 * len(order) * max(1, len(keys)) ** 0.5 + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        t = of_curve(layers, key).set_index("layer").reindex(order)
        first = t.dropna(subset=["layer_sparsity"]).iloc[0]
        x = np.arange(len(order)) + k * width - 0.4 + width / 2
        bars = ax.bar(x, 100 * t["layer_sparsity"], width,
                      label=f"{curve_title(supers, key)} ({first['ticket']}, {100 * first['sparsity']:.1f}%)")
        for bar, collapsed in zip(bars, t["collapsed"].fillna(False).astype(bool)):
            if collapsed:
                bar.set_hatch("//")
                bar.set_edgecolor("black")
    ax.set_xticks(range(len(order)), order)
    ax.set_xlabel("layer (hatched: holds a collapsed tensor)")
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _select(table: pd.DataFrame, model: str, method: str) -> pd.DataFrame:
    return table[(table["model"] == model) & (table["method"] == method)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[-80:] or "results"


# ---------------------------------------------------------------- the page


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>raytickets report</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
th {{ background: #f0f0f0; }}
figure {{ margin: 2em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: 0.9em; }}
</style>
</head>
<body>
<h1>raytickets report</h1>
<p>One curve per task and setting (setting: the first 8 characters of its setting_id, and the settings that
differ between the curves of one task). A collapsed run is scored at its chance value and counted under
failed seeds. Matching sparsity: paper rule = highest sparsity with ticket mean &ge; full mean &minus; full
std; strict rule = ticket mean &ge; full mean. Super ticket: the sparsity &gt; 0 with the best ticket mean,
ties to the sparser level. p_selection: exact sign-flip permutation test over seeds (ticket &gt; full model of
the same seed) at each of the K levels tested, Holm-adjusted over the K levels, at the super ticket: it
accounts for picking the best of K; with n seeds no p is below 2<sup>&minus;n</sup>, so p_selection &lt; 0.05 needs
2<sup>&minus;n</sup> &lt; 0.05/K (9 seeds for K = 16). p_holdout (&ge; 4 paired seeds): the level chosen on the
first half of the seeds, tested on the other half by the same permutation test. p_welch: Welch's unpaired
t-test of the chosen level on the seeds that chose it, uncorrected, for comparison only (it overstates
significance). Trajectories: trials reaching the level. Did not learn: a full model whose mean is not above
its chance value (majority class; 0 for a correlation) by the margin (two standard errors at the dev size,
unless set) learned nothing, so its curve has no matching sparsity, super ticket or transfer verdict.</p>
<h2>Summary</h2>
{notes}
{table}
<h2>Figures</h2>
{figures}
<script>
// Marks the page once every figure has decoded, so a headless browser can check the report renders.
window.addEventListener("load", function () {{
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-images-loaded", String(loaded));
  if (images.length > 0 && loaded === images.length) {{ document.title += " [rendered]"; }}
}});
</script>
</body>
</html>
"""


def render_html(rows: list[list[str]], figures: list[tuple[str, str, bytes]], notes: list[str] = (),
                mtl_text: str = "") -> str:
    """The page: layer-collapse notes, the summary table (`analysis.summary_rows`), the multi-task tables
    (`analysis.mtl_markdown`, preformatted) and every figure as a base64 data URI."""
    parts = [f"<pre>{html.escape(mtl_text)}</pre>"] if mtl_text else []
    for name, caption, png in figures:
        data = base64.b64encode(png).decode()
        parts.append(f'<figure id="{html.escape(name)}"><img alt="{html.escape(caption)}" '
                     f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>')
    if not figures:
        parts.append("<p>No ticket rounds in these results: nothing to plot.</p>")
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    notes_html = f'<p class="collapse">Layer collapse in the chosen tickets:</p><ul>{items}</ul>' if notes else ""
    return PAGE.format(table=html_table(SUMMARY_HEADER, rows), figures="\n".join(parts), notes=notes_html)


def html_table(header, rows) -> str:
    """A header and rows of cells as an HTML table; cells are escaped."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
