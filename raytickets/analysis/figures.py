"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global
backend switch): metric against sparsity per curve, the overlap and transfer heat maps, per-layer sparsity.

What a figure may suggest is what the numbers hold: a level measured on one seed is a point, never a vertex of a
line through levels of other trials (two trials' rounds are not one trajectory); a ratio that cannot be negative
has a colour scale that starts at 0.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from ..baselines import BASELINES
from .curves import BASELINE_KINDS, CURVE_KEY, of_curve

# Marker and colour per baseline kind, from the registry; the ticket is always blue.
BASELINE_STYLE = {name: b.style for name, b in BASELINES.items()}
TICKET_COLOUR = "tab:blue"
# The three marks of a level, drawn concentric and largest first so that none hides another where they fall on
# one level (the common case: the super ticket is often the matching one): (marker, size, edge colour, fill).
MARKS = {"matching (paper)": ("o", 22, "tab:red", "none"), "matching (strict)": ("s", 14, "tab:purple", "none"),
         "super ticket": ("*", 10, "black", "gold")}
MARK_COLUMNS = {"matching (paper)": "matching_sparsity_paper", "matching (strict)": "matching_sparsity_strict",
                "super ticket": "super_sparsity"}


def curve_title(supers: pd.DataFrame, key: tuple) -> str:
    """"task" or "task · setting label": how a curve is named in panels, legends and notes."""
    label = of_curve(supers, key)["setting_label"]
    text = label.iloc[0] if len(label) and isinstance(label.iloc[0], str) else ""
    return f"{key[2]} · {text}" if text else key[2]


def curve_figure(supers: pd.DataFrame, curves: pd.DataFrame, paths: pd.DataFrame | None = None,
                 keys: list[tuple] | None = None) -> Figure:
    """One panel per curve (`keys`, default every curve of `supers`): the ticket (mean ± std over seeds), every
    baseline, the full-model band, the chance line (and the margin above it a full model must clear), the
    matching and super marks; none of the marks where the full model did not learn (`super_tickets.learned`),
    said in the panel's title. `paths`: per-trial ticket values (`trial_paths`), which join one trial's own
    rounds where a level has a single seed."""
    keys = keys or sorted(set(map(tuple, supers[CURVE_KEY].drop_duplicates().to_numpy())))
    cols = min(2, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(8.4 if cols == 1 else 5.2 * cols, 4.0 * rows + 0.6), layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        _curve_panel(ax, key, supers, curves, paths)
        if len(keys) > 1:
            ax.set_title(curve_title(supers, key) + ("" if of_curve(supers, key)["learned"].iloc[0]
                                                     else " — did not learn"), fontsize=9, wrap=True)
    legend = {}  # one legend for all panels: a label drawn in any panel appears once
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    order = ["ticket", "one trial's rounds", *BASELINE_KINDS, "full model ± std", "chance", "chance + margin", *MARKS]
    labels = sorted(legend, key=lambda n: order.index(n) if n in order else len(order))
    fig.legend([legend[n] for n in labels], labels, loc="outside lower center", ncols=min(5, len(labels)),
               fontsize=8, frameon=False, markerscale=0.6)  # the marks' sizes are for nesting, not for the key
    return fig


def _curve_panel(ax, key: tuple, supers: pd.DataFrame, curves: pd.DataFrame, paths: pd.DataFrame | None) -> None:
    t = of_curve(supers, key).sort_values("sparsity")
    first = t.iloc[0]
    if not math.isnan(first["full_mean"]):
        ax.axhspan(first["full_mean"] - first["full_std"], first["full_mean"] + first["full_std"],
                   color="tab:gray", alpha=0.25, lw=0, label="full model ± std")
        ax.axhline(first["full_mean"], color="tab:gray", lw=1)
    if not math.isnan(first["chance"]):
        ax.axhline(first["chance"], color="tab:red", lw=1, ls=":", label="chance")
        if first["min_above_chance"] > 0:
            ax.axhspan(first["chance"], first["chance"] + first["min_above_chance"], color="tab:red", alpha=0.08,
                       lw=0, label="chance + margin")
    mine = of_curve(curves, key)
    for kind in BASELINE_KINDS:
        b = mine[mine["kind"] == kind].sort_values("sparsity")
        if len(b):
            marker, color = BASELINE_STYLE[kind]
            _levels(ax, b, kind, marker, color, ls="--", lw=1)
    if paths is not None:
        _trial_paths(ax, t, of_curve(paths, key))
    _levels(ax, t, "ticket", "o", TICKET_COLOUR, ls="-", lw=2, band=True)
    for label, (marker, size, edge, fill) in MARKS.items():
        sparsity = first[MARK_COLUMNS[label]]
        if not math.isnan(sparsity):
            y = t.loc[np.isclose(t["sparsity"], sparsity), "mean"].iloc[0]
            ax.plot([100 * sparsity], [y], marker=marker, ms=size, ls="none", label=label, mfc=fill, mec=edge,
                    mew=1.0 if fill != "none" else 1.5, zorder=5 + list(MARKS).index(label))
    ax.margins(x=0.06, y=0.08)  # room for the largest mark at the first and last level
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel(first["metric_name"])
    ax.grid(alpha=0.3)


def _levels(ax, levels: pd.DataFrame, label: str, marker: str, color: str, ls: str, lw: float,
            band: bool = False) -> None:
    """A kind's levels: those with >= 2 seeds as a line with ± std bars (and a shaded band), those with one seed
    as unjoined points (gid `points:<label>`), since the next one-seed level may belong to another trial."""
    several = levels[levels["seeds"] >= 2]
    single = levels[levels["seeds"] < 2]
    if len(several):
        x, y, s = 100 * several["sparsity"], several["mean"], several["std"].fillna(0)
        bars = ax.errorbar(x, y, yerr=s, marker=marker, ms=4, lw=lw, ls=ls, capsize=3, color=color, label=label,
                           alpha=1.0 if band else 0.85, zorder=3 if band else 2)
        bars.lines[0].set_gid(f"mean:{label}")
        if band:
            ax.fill_between(x, y - s, y + s, color=color, alpha=0.12, lw=0)
    if len(single):
        (points,) = ax.plot(100 * single["sparsity"], single["mean"], marker=marker, ms=6, ls="none", color=color,
                            mfc=color if band else "white", label=label if several.empty else "_" + label,
                            zorder=4 if band else 2)
        points.set_gid(f"points:{label}")


def _trial_paths(ax, levels: pd.DataFrame, paths: pd.DataFrame) -> None:
    """Where a ticket level has one seed, each trial's own rounds joined by a thin line (gid `trial:<id>`): one
    trajectory, not a curve across trials."""
    singles = set(levels.loc[levels["seeds"] < 2, "sparsity"].round(4))
    if not singles:
        return
    drawn = False
    for trial, rows in paths.groupby("trial", sort=True):
        rows = rows.sort_values("sparsity")
        if len(rows) < 2 or not set(rows["sparsity"].round(4)) & singles:
            continue
        (line,) = ax.plot(100 * rows["sparsity"], rows["metric"], color=TICKET_COLOUR, lw=0.8, alpha=0.45,
                          label="_" if drawn else "one trial's rounds", zorder=1)
        line.set_gid(f"trial:{trial}")
        drawn = True


# ---------------------------------------------------------------- heat maps


def overlap_figure(overlap: pd.DataFrame) -> Figure:
    """Task × task heat map of the overall Jaccard ratio to chance, averaged over seed and setting pairs
    (symmetric). The ratio is >= 0 (1 = chance): the scale runs from 0, white at 1, red above."""
    overall = overlap[overlap["scope"] == "overall"].groupby(["task_a", "task_b"])["ratio"].mean()
    tasks = sorted(set(overlap["task_a"]) | set(overlap["task_b"]))
    matrix = pd.DataFrame(np.nan, index=tasks, columns=tasks)
    for (a, b), v in overall.items():
        matrix.loc[a, b] = matrix.loc[b, a] = v
    return _heatmap(matrix, "Jaccard / random Jaccard (1 = chance)", "RdBu_r", ratio_norm(matrix.to_numpy()),
                    lambda v: f"{v:.2f}")


def ratio_norm(values: np.ndarray) -> TwoSlopeNorm:
    """A colour scale for a ratio to chance: from 0 (none shared) through 1 (white: chance) to the largest value,
    at least 2 (twice chance), so that values near chance stay pale and the scale reads evenly."""
    finite = values[np.isfinite(values)]
    top = max(2.0, float(finite.max())) if len(finite) else 2.0
    return TwoSlopeNorm(vcenter=1.0, vmin=0.0, vmax=top)


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
    sources = sorted(cells["source"].unique(), key=lambda n: (n.startswith(("random", "oneshot")), n))
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
    # Constrained layout sizes the axes around the tick labels and the colour bar, so nothing is clipped; cells
    # wide enough for a "+0.012 ✓✓" label.
    fig = Figure(figsize=(1.3 * n_cols + 2.8 + 0.08 * widest, 0.75 * n_rows + 2.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set_facecolor("#e0e0e0")  # grey = no value (a task with itself, a pair never run)
    image = ax.imshow(matrix.to_numpy(dtype=float), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(n_cols), matrix.columns, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n_rows), matrix.index)
    for i, row in enumerate(matrix.index):
        for j, col in enumerate(matrix.columns):
            v = matrix.loc[row, col]
            if np.isfinite(v):
                text = labels[(row, col)] if labels else fmt(v)
                r, g, b, _ = image.cmap(image.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # readable text on any cell colour
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label=label, shrink=0.9)
    return fig


# ---------------------------------------------------------------- layers


def layer_figure(layers: pd.DataFrame, supers: pd.DataFrame) -> Figure:
    """Grouped bars: sparsity of each layer (encoder layers in order, then the pooler) per curve; a layer holding
    a collapsed tensor is hatched."""
    order = sorted(layers["layer"].unique(), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    keys = sorted(set(map(tuple, layers[CURVE_KEY].drop_duplicates().to_numpy())))
    fig = Figure(figsize=(min(9.5, max(6.0, 0.5 * len(order) * len(keys) + 2)), 3.8), layout="constrained")
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
    fig.legend(loc="outside lower center", fontsize=7, ncols=min(2, len(keys)), frameon=False)
    return fig


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
