"""The results as one self-contained HTML page (inline CSS, figures as base64 PNG), and a Markdown summary.

`write_report(results_dir)` writes `<results_dir>/report/index.html` (one file that can be mailed or attached),
the same figures as PNG files next to it, and `summary.md`. The page reads top to bottom as a reviewer asks:
which sweep, config, versions, data and cost (`provenance`); the rules; a compact summary; then per curve its
figure (`figures.curve_figure`) and per-level table; overlap, transfer, per-layer sparsity and multi-task last.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd
import yaml

from .curves import SPARSITY_DECIMALS, scored
from .figures import (  # noqa: F401  (BASELINE_STYLE, curve_title: the report's names, read from here)
    BASELINE_STYLE, curve_figure, curve_title, layer_figure, overlap_figure, png, transfer_figure,
)
from .multitask import format_table, mtl_figure
from .provenance import cost, data_sizes, dates, hours
from .tables import (
    BASELINE_KINDS, CURVE_KEY, SUMMARY_HEADER, analyze, collapse_text, did_not_learn, load_analysis,
    of_curve, out_location, side_by_side, summary_markdown, summary_rows,
)
from ..store import ResultsStore, check_writable, write_bytes_atomic

MTL_TABLES = ("mtl", "mtl_sharing")  # one set per results root, not per (model, method): drawn after the rest


def write_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path | str:
    """Write the report and return the location of index.html (a Path locally, a URI string otherwise).

    Runs `analyze` first if the analysis tables are missing (or were written by an older raytickets).
    """
    store = ResultsStore(results_dir)
    check_writable(*out_location(store, out_dir, "report"), "--out" if out_dir is not None else "results dir")
    tables = load_analysis(results_dir) or analyze(results_dir)
    rounds = store.rounds()
    figures: list[tuple[str, str, bytes]] = []  # (file name, caption, png bytes), filled as the page is built
    page = render_page(tables, rounds, store.sweep_records(), figures, root=store.root)
    fs, out = out_location(store, out_dir, "report")
    where = store.display(f"{out}/index.html") if out_dir is None else f"{os.fspath(out_dir).rstrip('/')}/index.html"
    for name, _, data in figures:
        write_bytes_atomic(data, fs, f"{out}/{name}")
    write_bytes_atomic(summary_markdown(tables).encode(), fs, f"{out}/summary.md")
    write_bytes_atomic(page.encode(), fs, f"{out}/index.html")  # last: the page exists only with its figures
    return where if "://" in where else Path(where)


def collapse_notes(tables: dict[str, pd.DataFrame]) -> list[str]:
    """One sentence per curve whose chosen ticket has a collapsed layer: which task, setting and tensors."""
    layers = tables["layer_sparsity"]
    notes = []
    for key, _ in layers[layers["collapsed"]].groupby(CURVE_KEY, sort=True):
        notes.append(f"{curve_title(tables['super_tickets'], key)}: {collapse_text(layers, key)}")
    return notes


# ---------------------------------------------------------------- per-trial data for the curves


def trial_paths(rounds: pd.DataFrame) -> pd.DataFrame:
    """Each trial's ticket value per level (its own rounds, `scored`): what joins one trajectory's points."""
    tickets = rounds[rounds["kind"] == "ticket"]
    return tickets.groupby([*CURVE_KEY, "trial", "sparsity"], as_index=False, sort=True)["metric"].mean()


def level_rounds(rounds: pd.DataFrame) -> pd.DataFrame:
    """The round numbers that reached each (curve, kind, level), as text ("1", "1, 2")."""
    keys = [*CURVE_KEY, "kind", "sparsity"]
    return rounds.groupby(keys, as_index=False, sort=True)["round"].agg(
        lambda r: ", ".join(str(int(x)) for x in sorted(set(r))))


# ---------------------------------------------------------------- the page


def render_page(tables: dict[str, pd.DataFrame], rounds: pd.DataFrame, records: list[dict],
                figures: list[tuple[str, str, bytes]], root: str = "") -> str:
    """The whole page; every figure drawn is appended to `figures` (to be written next to it as PNG)."""
    rounds = scored(rounds) if len(rounds) else rounds
    supers = tables["super_tickets"]
    groups = sorted(set(map(tuple, supers[["model", "method"]].drop_duplicates().to_numpy())))
    parts = [header_html(tables, rounds, records, root), RULES]
    if groups:
        parts.append(summary_html(tables, len(groups) > 1))
        parts += [f"<h3>{html.escape(task)} ({html.escape(Path(model).name or model)}): curves side by side</h3>"
                  "<p>Ticket mean ± std over seeds (n) per level, one column per curve: IMP and gradual pruning, "
                  "each method, with and without distillation.</p>"
                  f"<div class=\"scroll\">{html_table(header, rows, numeric=range(1, len(header)))}</div>"
                  for (model, task), (header, rows) in side_by_side(tables).items()]
    paths, level_round = trial_paths(rounds), level_rounds(rounds)
    for model, method in groups:
        sel = {k: t[(t["model"] == model) & (t["method"] == method)] for k, t in tables.items() if k not in MTL_TABLES}
        parts.append(group_html(sel, paths, level_round, figures, model, method, len(groups) > 1))
    if "mtl" in tables and not tables["mtl"].empty:
        parts.append("<h2 id=\"mtl\">Multi-task (raytickets mtl)</h2>" + _figure(figures, "mtl.png", (
            "Multi-task arms per task and the task average: mean ± std over seeds; plain = one shared encoder "
            "without masks, tickets_share = each task through its own super ticket, single = the tickets fine-tuned "
            "alone, random = random tickets of the same sizes"), mtl_figure(tables["mtl"]))
            + mtl_html(tables))
    if not groups and not ("mtl" in tables and not tables["mtl"].empty):
        parts.append("<p>No ticket rounds in these results: nothing to plot.</p>")
    return PAGE.format(title=html.escape(_title(rounds, records)), body="\n".join(parts))


def mtl_html(tables: dict) -> str:
    """Each multi-task experiment's per-task table, as `raytickets mtl` prints it."""
    mtl = tables["mtl"]
    return "".join(f"<h3>Experiment {html.escape(str(setting)[:8])}</h3><pre>"
                   f"{html.escape(format_table(mtl, tables.get('mtl_sharing'), setting_id=setting))}</pre>"
                   for setting in dict.fromkeys(mtl["setting_id"]))


def group_html(sel: dict[str, pd.DataFrame], paths: pd.DataFrame, level_round: pd.DataFrame,
               figures: list, model: str, method: str, several: bool) -> str:
    """One (model, method): a section per curve, then overlap, transfer and per-layer sparsity."""
    supers = sel["super_tickets"]
    tag = _slug(f"{model}-{method}")
    name = f"{Path(model).name or model} / {method}"
    out = [f"<h2>{html.escape(name)}</h2>"] if several else []
    for key in sorted(set(map(tuple, supers[CURVE_KEY].drop_duplicates().to_numpy()))):
        out.append(curve_html(key, sel, paths, level_round, figures, tag))
    if not sel["overlap"].empty:
        out.append(f"<h2>Mask overlap across tasks{_of(name, several)}</h2>" + _figure(figures, f"overlap-{tag}.png", (
            "Overlap of matching tickets across tasks: Jaccard of the kept weights / Jaccard of independent random "
            "masks of the same sparsities (1 = chance, 0 = nothing shared; the ratio cannot be negative), mean over "
            "seed and setting pairs"), overlap_figure(sel["overlap"])))
    if not sel["transfer"].empty:
        out.append(f"<h2>Ticket transfer{_of(name, several)}</h2>" + _figure(figures, f"transfer-{tag}.png", (
            "Each source ticket trained on each target minus the target's own ticket at that sparsity; ✓ transfers "
            "(Chen et al.: within one std of the own ticket), ✓✓ also strictly, ✗ not; ★ universal (transfers to "
            "every target)"), transfer_figure(sel["transfer"])))
    if not sel["layer_sparsity"].empty:
        notes = collapse_notes(sel)
        collapse = "Layer collapse: " + "; ".join(notes) if notes else "No layer collapse (no tensor > 95% pruned)"
        out.append(f"<h2>Per-layer sparsity{_of(name, several)}</h2>" + _figure(figures, f"layers-{tag}.png", (
            f"Per-layer sparsity of each curve's matching ticket (super ticket where none matches), first seed. "
            f"{collapse}."), layer_figure(sel["layer_sparsity"], supers)))
    return "\n".join(out)


def curve_html(key: tuple, sel: dict, paths: pd.DataFrame, level_round: pd.DataFrame, figures: list,
               tag: str) -> str:
    """One curve: its title, a one-line status (full model, chance, dev size), its figure and per-level table."""
    supers = sel["super_tickets"]
    first = of_curve(supers, key).iloc[0]
    title = curve_title(supers, key)
    anchor = curve_anchor(tag, key)
    status = (f"{first.metric_name}" + (f" ({first.metric_convention})" if isinstance(first.metric_convention, str)
                                        else "")
              + f" · full model {_mean_std(first.full_mean, first.full_std, first.full_seeds)}"
              + (f" · chance {_num(first.chance)} + margin {_num(first.min_above_chance)}"
                 if not math.isnan(first.chance) else " · chance unknown (rows without chance_metric)")
              + (f" · {first.dev_examples} dev examples" if first.dev_examples > 0 else ""))
    verdict = ("" if first.learned else
               f'<p class="warn">{html.escape(did_not_learn(first))}: no matching sparsity or super ticket.</p>')
    mine = of_curve(sel["curves"], key)
    baselines = [k for k in BASELINE_KINDS if (mine["kind"] == k).any()]
    caption = ("Ticket mean ± std over seeds (line and shaded band)"
               + (f", baselines ({', '.join(baselines)}; dashed)" if baselines else ", no baseline in these rows")
               + ", full model (grey band: mean ± std), chance (dotted; shaded up to the margin a full model must "
               "clear); ○ matching (paper), □ matching (strict), ★ super ticket"
               + ("; a level measured on one seed is a point, not joined to levels of other trials; a thin line joins "
                  "one trial's own rounds" if (mine["seeds"] < 2).any() else ""))
    fig = curve_figure(supers, sel["curves"], paths, keys=[key])
    name = curve_anchor(tag, key).replace("curve-", "curves-", 1) + ".png"
    return (f'<section class="curve" id="{anchor}"><h3>{html.escape(title)}</h3>'
            f'<p class="status">{html.escape(status)}</p>{verdict}'
            + _figure(figures, name, caption, fig) + level_table(key, sel, level_round) + "</section>")


def level_table(key: tuple, sel: dict, level_round: pd.DataFrame) -> str:
    """Per sparsity level: the rounds that reached it, the ticket and each baseline (mean ± std, seeds),
    trajectories, and the marks of the rules."""
    supers = of_curve(sel["super_tickets"], key).sort_values("sparsity")
    curves = of_curve(sel["curves"], key)
    rounds = of_curve(level_round, key)
    kinds = [k for k in BASELINE_KINDS if (curves["kind"] == k).any()]
    header = ["round", "sparsity", "ticket", *kinds, "trajectories", "rules"]
    rows = []
    for r in supers.itertuples(index=False):
        at = curves[(curves["sparsity"] - r.sparsity).abs() < 10 ** -SPARSITY_DECIMALS]
        which = rounds[(rounds["kind"] == "ticket") & ((rounds["sparsity"] - r.sparsity).abs() < 10 ** -SPARSITY_DECIMALS)]
        marks = [m for m, on in (("matching (paper)", r.matches_paper), ("strict", r.matches_strict),
                                 ("★ super", r.is_super)) if on]
        cells = [which["round"].iloc[0] if len(which) else "—", f"{100 * r.sparsity:.1f}%",
                 _mean_std(r.mean, r.std, r.seeds)]
        for kind in kinds:
            b = at[at["kind"] == kind]
            cells.append(_mean_std(b["mean"].iloc[0], b["std"].iloc[0], b["seeds"].iloc[0]) if len(b) else "—")
        rows.append([*cells, str(r.trajectories), ", ".join(marks)])
    return '<div class="scroll">' + html_table(header, rows, numeric=range(1, len(header) - 1)) + "</div>"


def header_html(tables: dict, rounds: pd.DataFrame, records: list[dict], root: str) -> str:
    """Which sweep, config, versions, dates, data sizes and seeds, and what the rows cost."""
    items = []
    names = sorted(rounds["sweep"].dropna().unique()) if len(rounds) else []
    recorded = {r.get("name") for r in records}
    for record in records:
        run = record.get("versions") or {}
        versions = ", ".join(f"{k} {v}" for k, v in run.items() if v)
        resumed = record.get("resumed_at") or []
        items.append(("sweep", f"<b>{html.escape(str(record.get('name')))}</b> · config "
                      f"<code>{html.escape(str(record.get('config_digest')))}</code> · started "
                      f"{html.escape(_when(record.get('started_at')))}"
                      + (f" (resumed {len(resumed)}×)" if resumed else "")))
        items.append(("versions", html.escape(versions or "not recorded")))
    for name in names:
        if name not in recorded:
            items.append(("sweep", (f"<b>{html.escape(name)}</b> · no sweep record in this results root (written "
                                    "by <code>raytickets mtl</code>/<code>imp</code>, or before sweeps were recorded): "
                                    "its config, versions and CPU-hours are unknown")))
    start, end = dates(rounds) if len(rounds) else (None, None)
    items.append(("results", f"<code>{html.escape(root)}</code>"))
    items.append(("dates", f"{_when(start)} → {_when(end)} (first fine-tune started, last finished)"))
    sizes = data_sizes(rounds) if len(rounds) else pd.DataFrame()
    data = "".join(
        f"<li><b>{html.escape(r.task)}</b>: {r.dev_examples if r.dev_examples > 0 else 'unknown'} dev examples, "
        f"train {html.escape(r.train)}, seeds {_seed_list(r.seeds)}</li>" for r in sizes.itertuples(index=False))
    items.append(("data, seeds", f'<ul class="plain">{data}</ul>' if data else "—"))
    if len(rounds):
        c = cost(rounds, records)
        kinds = ", ".join(f"{n} {k}" for k, n in c["by_kind"].items())
        text = (f"{c['fine_tunes']} fine-tunes ({kinds}) behind {c['rows']} rows · "
                + (f"{c['training_steps']:,} training steps" if c["training_steps"] is not None else "steps unknown")
                + f" · {hours(c['wall_hours'])} of fine-tuning wall time"
                + (f" on {c['nodes']} node(s)" if c["nodes"] else "") + " · "
                + f"{hours(c['cpu_hours'])} CPU" + (f" · {hours(c['gpu_hours'])} GPU" if c["gpu_hours"] else "")
                + (f" ({c['unpriced']} fine-tunes without a sweep record: not priced)" if c["unpriced"] else ""))
        items.append(("cost", html.escape(text)))
    items.append(("report", html.escape(f"raytickets {_version('raytickets')}, written "
                                        f"{_when(datetime.now(timezone.utc))}")))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    configs = "".join(
        f"<details><summary>Resolved config of {html.escape(str(r.get('name')))} "
        f"(<code>{html.escape(str(r.get('config_digest')))}</code>)</summary>"
        f"<pre>{html.escape(yaml.safe_dump(r.get('config'), sort_keys=False))}</pre></details>" for r in records)
    return f'<header><h1>{html.escape(_title(rounds, records))}</h1><dl class="meta">{dl}</dl>{configs}</header>'


RULES = """<h2>Rules</h2>
<ul class="rules">
<li>A <b>curve</b> is one model, method, task and setting; its points are sparsity levels, mean &plusmn; std over
seeds. A level measured on one seed is a point: it is not joined to other trials' levels.</li>
<li><b>Did not learn</b>: a full model not above chance by the margin (two standard errors at the dev size) has no
findings.</li>
<li><b>Matching</b> (Chen et al. 2020): the highest sparsity whose ticket mean &ge; full mean &minus; full std;
<b>strict</b>: &ge; full mean.</li>
<li><b>Super ticket</b> (Liang et al. 2021): the level &gt; 0 with the best ticket mean, ties to the sparser.</li>
<li><b>p_selection</b>: exact sign-flip test over paired seeds, Holm over the K levels; with n seeds it is
&ge; 2<sup>&minus;n</sup>.</li>
<li>A <b>collapsed run</b> is scored at its chance value and counted as a failed seed.</li>
</ul>
<details><summary>The rules in full</summary><p>One curve per task and setting (setting: the first 8 characters
of its setting_id, and the settings that differ between the curves of one task). A collapsed run is scored at its
chance value and counted under failed seeds. Matching sparsity: paper rule = highest sparsity with ticket mean
&ge; full mean &minus; full std; strict rule = ticket mean &ge; full mean. Super ticket: the sparsity &gt; 0 with
the best ticket mean, ties to the sparser level. p_selection: exact sign-flip permutation test over seeds (ticket
&gt; full model of the same seed) at each of the K levels tested, Holm-adjusted over the K levels, at the super
ticket: it accounts for picking the best of K; with n seeds no p is below 2<sup>&minus;n</sup>, so p_selection
&lt; 0.05 needs 2<sup>&minus;n</sup> &lt; 0.05/K (9 seeds for K = 16). p_holdout (&ge; 4 paired seeds): the level
chosen on the first half of the seeds, tested on the other half by the same permutation test. p_welch: Welch's
unpaired t-test of the chosen level on the seeds that chose it, uncorrected, for comparison only (it overstates
significance). Trajectories: trials reaching the level. Did not learn: a full model whose mean is not above its
chance value (majority class; 0 for a correlation) by the margin (two standard errors at the dev size, unless
set) learned nothing, so its curve has no matching sparsity, super ticket or transfer verdict.</p></details>"""


COMPACT_HEADER = ("curve", "metric", "full model (seeds)", "matching (paper / strict)", "super ticket", "gain",
                  "p_selection")


def summary_html(tables: dict, several_groups: bool) -> str:
    """A compact table (one row per curve, linked to its section) and, behind it, every column of summary.md."""
    supers = tables["super_tickets"]
    rows = []
    for key, levels in supers.groupby(CURVE_KEY, sort=True):
        r = levels.iloc[0]
        # The setting's id only: its full label (the settings that differ) heads the curve's section.
        title = " · ".join(p for p in (key[2], str(key[3])[:8]) if p)
        if several_groups:
            title = f"{Path(key[0]).name or key[0]} / {key[1]} · {title}"
        tag = _slug(f"{key[0]}-{key[1]}")
        link = f'<a href="#{curve_anchor(tag, key)}">{html.escape(title)}</a>'
        matching = (f"{_pct(r.matching_sparsity_paper)} / {_pct(r.matching_sparsity_strict)}" if r.learned
                    else "did not learn")
        rows.append([link, html.escape(r.metric_name), html.escape(_mean_std(r.full_mean, r.full_std, r.full_seeds)),
                     html.escape(matching), _pct(r.super_sparsity), _num(r.gain, signed=True),
                     html.escape(f"{_num(r.p_selection, '.3g')} (K={r.levels_tested})" if r.levels_tested else "—")])
    notes = collapse_notes(tables)
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    notes_html = f'<p class="collapse">Layer collapse in the chosen tickets:</p><ul>{items}</ul>' if notes else ""
    compact = html_table(COMPACT_HEADER, rows, numeric=range(2, 7), escape=False, cls="compact")
    full = html_table(SUMMARY_HEADER, summary_rows(tables))
    return (f"<h2>Summary</h2>{notes_html}<div class=\"scroll\">{compact}</div>"
            f"<details><summary>Every column (as summary.md)</summary><div class=\"scroll\">{full}</div></details>")


def html_table(header, rows, numeric=(), escape: bool = True, cls: str = "") -> str:
    """A header and rows of cells as an HTML table; cells are escaped unless `escape` is False (cells built as
    HTML); columns in `numeric` are right-aligned and never wrap."""
    numeric = set(numeric)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    attr = {i: ' class="num"' for i in numeric}
    body = "".join("<tr>" + "".join(
        f"<td{attr.get(i, '')}>{html.escape(str(c)) if escape else c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    table_class = f' class="{cls}"' if cls else ""
    return f"<table{table_class}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(figures: list, name: str, caption: str, fig) -> str:
    data = png(fig)
    figures.append((name, caption, data))
    return (f'<figure id="{html.escape(name)}"><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def curve_anchor(tag: str, key: tuple) -> str:
    """The id of a curve's section (and its figure's file name): model-method tag, task, setting's first 8."""
    return _slug("-".join(p for p in ("curve", tag, key[2], str(key[3])[:8]) if p))


def _title(rounds: pd.DataFrame, records: list[dict]) -> str:
    names = sorted({str(r.get("name")) for r in records} | (set(rounds["sweep"].dropna()) if len(rounds) else set()))
    return "raytickets report" + (f": {', '.join(names)}" if names else "")


def _of(name: str, several: bool) -> str:
    return f" ({name})" if several else ""


def _mean_std(mean: float, std: float, seeds: int) -> str:
    """"mean ± std (n=k)"; one seed has no std to show: "mean (n=1)"."""
    return f"{_num(mean)} ± {_num(std)} (n={seeds})" if seeds > 1 else f"{_num(mean)} (n={seeds})"


def _seed_list(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds)) if len(seeds) <= 6 else f"{len(seeds)} ({seeds[0]}–{seeds[-1]})"


def _num(x, fmt: str = ".4f", signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, ("+" if signed else "") + fmt)


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _when(t) -> str:
    if t is None or t is pd.NaT:
        return "unknown"
    return pd.Timestamp(t).tz_convert("UTC").strftime("%Y-%m-%d %H:%M UTC") if pd.Timestamp(t).tzinfo else str(t)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[-80:] or "results"


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
:root {{ --ink: #1d2330; --muted: #5b6474; --rule: #dde1e8; --soft: #f5f7fa; --accent: #1f5fa8; --warn: #9a3412; }}
body {{ font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: var(--ink); max-width: 62rem; margin: 2.5rem auto 4rem; padding: 0 1.5rem; }}
h1 {{ font-size: 1.75rem; margin: 0 0 0.75rem; }}
h2 {{ font-size: 1.3rem; margin: 2.5rem 0 0.75rem; padding-bottom: 0.3rem; border-bottom: 1px solid var(--rule); }}
h3 {{ font-size: 1.1rem; margin: 2rem 0 0.25rem; }}
a {{ color: var(--accent); text-decoration: none; }} a:hover {{ text-decoration: underline; }}
code, pre {{ font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.85em; }}
pre {{ background: var(--soft); padding: 0.75rem 1rem; overflow-x: auto; border-radius: 4px; }}
header {{ background: var(--soft); border: 1px solid var(--rule); border-radius: 6px; padding: 1.25rem 1.5rem; }}
dl.meta {{ display: grid; grid-template-columns: max-content 1fr; gap: 0.3rem 1.25rem; margin: 0; font-size: 0.92em; }}
dl.meta dt {{ color: var(--muted); font-weight: 600; }} dl.meta dd {{ margin: 0; }}
details {{ margin: 0.75rem 0; }} summary {{ cursor: pointer; color: var(--accent); font-size: 0.92em; }}
ul.rules {{ padding-left: 1.2rem; }} ul.plain {{ list-style: none; padding: 0; margin: 0; }} ul.rules li {{ margin: 0.2rem 0; }}
.scroll {{ overflow-x: auto; }}
table {{ border-collapse: collapse; font-size: 0.88em; margin: 0.5rem 0; }}
th, td {{ border-bottom: 1px solid var(--rule); padding: 0.35em 0.7em; text-align: left; vertical-align: top; }}
th {{ background: var(--soft); font-weight: 600; white-space: nowrap; }}
td.num {{ text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }}
tbody tr:nth-child(even) {{ background: #fafbfc; }} table.compact td {{ white-space: nowrap; }}
p.status {{ color: var(--muted); font-size: 0.92em; margin: 0 0 0.5rem; }}
p.warn {{ color: var(--warn); font-size: 0.92em; margin: 0 0 0.5rem; }}
figure {{ margin: 1rem 0; }} img {{ max-width: 100%; height: auto; display: block; }}
figcaption {{ color: var(--muted); font-size: 0.85em; margin-top: 0.4rem; }}
section.curve {{ margin-bottom: 2.5rem; }}
</style>
</head>
<body>
{body}
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
