"""From stored rounds to findings: matching and super tickets, cross-task mask overlap, ticket transfer.

`analyze(results_dir)` reads the `rounds` table (and masks where needed) and writes five Parquet tables
into `<results_dir>/analysis/` (their columns: README, "Analysis tables"). Every decision is a written
rule applied in code, never picked from a plot:

* a curve is one (model, method, task, setting_id). `setting_id` (see `runs.setting`) hashes every
  setting of a trajectory that can change its results — model, metric convention, data (subsample sizes
  and seed, sequence length), training (learning rate, epochs or steps, batch size, warmup, weight decay,
  clipping, optimiser), and pruning: method, rewind step, include/exclude, baselines and the method's own
  settings (scope, schedule, losing, structured importance and granularity, ...) — except the task, the
  training seed, where the trajectory stops (`min_gain`, `rounds` for a method whose rounds lie on one
  schedule, magnitude's `target_sparsity`) and values that only move its levels along the sparsity axis
  (magnitude's `rate`, structured `head_fraction`/`ffn_fraction`): trajectories differing only in those
  lie on one curve. Trajectories with a different rewind step, scope or learning rate are separate curves.
  Rows of older files without a setting_id form one curve per task (setting_id "");
* sparsity levels are round sparsities rounded to 4 decimals; a value per seed is the mean over that
  seed's rows at the level (normally exactly one row);
* a collapsed run (`failed`, or a NaN metric in older files) is scored at its chance value
  (`chance_metric`; where that is null, 0 for pearson, spearman and matthews) and counted in
  `failed_seeds`: a failed seed never vanishes from a mean;
* the full model is the `kind == "full"` rows, or, where a curve has none, the `full_metric` column of its
  other rows (one value per seed); mean and sample std (ddof=1) over seeds; a single seed has std 0;
* matching sparsity, paper rule (Chen et al. 2020): the highest sparsity > 0 whose ticket mean is within
  one std of the full model, `mean >= full_mean - full_std`; strict rule: `mean >= full_mean`;
* super ticket (Liang et al. 2021): the sparsity > 0 with the best ticket mean, ties going to the sparser
  level (the rule `rows.ticket_row` uses for a trajectory's best round); its gain is `mean - full_mean`.
  Since it is the best of `levels_tested` levels, its significance is `p_selection`: an exact sign-flip
  permutation test over seeds (a ticket and the full model of one seed share head initialisation and data
  order; `p_paired` at the chosen level, raw) at every level, Holm-adjusted over the levels tested, taken at
  the chosen level. Its p is at least 2**-n for n paired seeds, so p_selection < 0.05 needs 2**-n < 0.05 / K:
  at least 8 seeds for K = 10 levels, 9 for K = 16; fewer seeds can never show a super ticket significant.
  `t_paired` is the paired t statistic of the mean difference, a description only (inf where the seeds'
  differences are equal). With >= 4 paired seeds, `p_holdout` re-chooses the level on the first half of
  the seeds (in seed order) and tests it, by the same permutation test, on the other half. `p_welch`
  (unpaired, unadjusted, the best level tested on the seeds that chose it) is kept for comparison only:
  with no effect, in simulated sweeps of 10 levels x 10 seeds, it is below 0.05 in up to 22% of them (17%
  with 3 seeds), `p_selection` in about 3% (never with 3 seeds) (tests/analysis/test_stats.py);
* phase transition: the curve rises above the full-model mean at some sparsity > 0 and falls below it
  at a higher sparsity;
* a full model that did not learn: its mean is not above its chance value (`chance_metric`: the majority
  class for accuracy and F1, 0 for Matthews and correlations) by `min_above_chance` — by default two standard
  errors of the metric at chance on the curve's dev examples (2·sqrt(c(1-c)/n); 2/sqrt(n) for a correlation;
  `curves.chance_margin`), else the number `analyze(min_above_chance=)` / `raytickets analyze
  --min-above-chance` sets for every curve. Such a curve (`learned` false) has no matching sparsity, no
  super ticket, no phase transition and no transfer verdict; the summary says "did not learn". A curve
  whose chance value is unknown (older files without `chance_metric`) is not judged;
* `trajectories` at a level: the distinct trials with a row there (fewer at high sparsity: a curve made of
  the survivors of early stopping);
* layer collapse: the chosen ticket holds a tensor `Mask.collapsed()` lists (more than 95% of it pruned
  while the mask as a whole prunes less than 60%).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .curves import (  # noqa: F401  (re-exported: the analysis' public names)
    BASELINE_KINDS, CURVE_KEY, CURVE_KINDS, MIN_ABOVE_CHANCE, SPARSITY_DECIMALS, curves, full_model, level_trials,
    of_curve, phase_transition, scored, seed_values, setting_labels, super_tickets, transfer,
)
from ..errors import ResultsError
from .multitask import chosen_from_rows, format_table, mtl_table, sharing_table
from .overlap import aggregate_counts, layer_sparsity, overlap, tensor_counts, ticket_masks, unit_counts  # noqa: F401
from .stats import welch_greater  # noqa: F401
from ..store import (
    META_VERSION, SCHEMA_VERSION, ResultsStore, check_writable, first_line, open_filesystem, tag_table,
    write_parquet_atomic,
)


_S, _F, _I, _B = pa.string(), pa.float64(), pa.int64(), pa.bool_()
_CURVE = (("model", _S), ("method", _S), ("task", _S), ("setting_id", _S), ("setting_label", _S))


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(name, type_) for name, type_ in fields])


ANALYSIS_SCHEMAS: dict[str, pa.Schema] = {
    "curves": _schema(
        *_CURVE, ("kind", _S), ("metric_name", _S), ("metric_convention", _S),
        ("sparsity", _F), ("mean", _F), ("std", _F), ("seeds", _I),
        ("failed_seeds", _I), ("trajectories", _I), ("oneshot_diff", _F), ("compare_label", _S),
    ),
    "super_tickets": _schema(
        *_CURVE, ("metric_name", _S), ("metric_convention", _S),
        ("sparsity", _F), ("mean", _F), ("std", _F), ("seeds", _I), ("failed_seeds", _I), ("trajectories", _I),
        ("matches_paper", _B), ("matches_strict", _B), ("is_super", _B),
        ("full_mean", _F), ("full_std", _F), ("full_seeds", _I), ("full_failed_seeds", _I), ("full_source", _S),
        ("chance", _F), ("dev_examples", _I), ("min_above_chance", _F), ("learned", _B),
        ("matching_sparsity_paper", _F), ("matching_sparsity_strict", _F),
        ("super_sparsity", _F), ("super_mean", _F), ("super_std", _F), ("super_seeds", _I), ("gain", _F),
        ("levels_tested", _I), ("t_paired", _F), ("p_paired", _F), ("p_selection", _F),
        ("holdout_sparsity", _F), ("holdout_seeds", _I), ("p_holdout", _F),
        ("t_statistic", _F), ("p_welch", _F), ("phase_transition", _B),
    ),
    "overlap": _schema(
        ("model", _S), ("method", _S), ("task_a", _S), ("task_b", _S), ("setting_id_a", _S), ("setting_id_b", _S),
        ("seed_a", _I), ("seed_b", _I), ("mask_id_a", _S), ("mask_id_b", _S), ("sparsity_a", _F), ("sparsity_b", _F),
        ("scope", _S), ("group", _S), ("total", _I), ("kept_a", _I), ("kept_b", _I),
        ("intersection", _I), ("union", _I), ("jaccard", _F), ("random_jaccard", _F), ("ratio", _F),
    ),
    "transfer": _schema(
        ("model", _S), ("method", _S), ("setting_id", _S), ("source_task", _S), ("task", _S), ("metric_name", _S),
        ("sparsity", _F), ("mean", _F), ("std", _F), ("seeds", _I), ("own_setting_id", _S),
        ("ticket_sparsity", _F), ("ticket_mean", _F), ("ticket_std", _F), ("ticket_seeds", _I), ("random_mean", _F),
        ("oneshot_mean", _F), ("full_mean", _F), ("vs_ticket", _F), ("vs_full", _F), ("vs_oneshot", _F),
        ("transfers", _B), ("transfers_strict", _B),
        ("universal", _B), ("universal_strict", _B), ("learned", _B), ("own_learned", _B),
    ),
    "layer_sparsity": _schema(
        ("model", _S), ("method", _S), ("task", _S), ("setting_id", _S), ("ticket", _S), ("seed", _I),
        ("mask_id", _S), ("sparsity", _F), ("layer", _S), ("layer_sparsity", _F), ("collapsed", _B),
        ("collapsed_tensors", _S),
    ),
    # Multi-task experiments (`raytickets mtl`, rows of kind "mtl"): `mtl_tables.mtl_table` / `sharing_table`.
    "mtl": _schema(
        ("setting_id", _S), ("task", _S), ("metric_name", _S), ("arm", _S), ("mean", _F), ("std", _F), ("seeds", _I),
        ("failed_seeds", _I), ("sparsity", _F), ("diff_vs_plain", _F), ("p_vs_plain", _F), ("paired_seeds", _I),
        ("dense", _B),  # the arm trained the task without a mask (plain; a task without a super ticket)
    ),
    "mtl_sharing": _schema(
        ("model", _S), ("method", _S), ("task_a", _S), ("task_b", _S), ("unit", _S), ("shared", _F), ("random", _F),
        ("ratio", _F), ("seed_pairs", _I),
    ),
}
ANALYSIS_TABLES = tuple(ANALYSIS_SCHEMAS)


# ---------------------------------------------------------------- entry points


def analyze(
    results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
    num_heads: int | Mapping[str, int] | None = None, min_above_chance: float | None = MIN_ABOVE_CHANCE,
) -> dict[str, pd.DataFrame]:
    """Compute every analysis table from a results root and write them (all or none) to `out_dir`.

    `num_heads` (per model name, or one int) is needed only to count shared attention heads of structured
    tickets; by default it is read from each model's config. `min_above_chance`: how far a full model must
    beat chance to have learned (None: two standard errors at the dev size; see the rules above).
    """
    store = ResultsStore(results_dir)
    check_writable(*out_location(store, out_dir), "--out" if out_dir is not None else "results dir")  # before the work
    raw = store.rounds()
    rounds = scored(raw)
    tables = findings(rounds, min_above_chance)
    # Each chosen mask is looked up once and read from the store at most once, for both tables below.
    matching = ticket_masks(store, rounds, tables["super_tickets"], "matching")
    load = functools.cache(store.load_mask)
    tables["overlap"] = conform("overlap", overlap(store, matching, load, num_heads))
    supers = ticket_masks(store, rounds, tables["super_tickets"], "super")
    tables["layer_sparsity"] = conform("layer_sparsity", layer_sparsity(matching, supers, load))
    tables["mtl"] = conform("mtl", mtl_table(raw, min_above_chance))
    tables["mtl_sharing"] = conform("mtl_sharing", sharing_table(store, chosen_from_rows(raw)))
    # Everything is computed before anything is written: bad input leaves the old analysis in place.
    fs, out = out_location(store, out_dir)
    for name in ANALYSIS_TABLES:
        write_parquet_atomic(_to_arrow(name, tables[name]), fs, f"{out}/{name}.parquet")
    return {name: tables[name] for name in ANALYSIS_TABLES}


def findings(rounds: pd.DataFrame, min_above_chance: float | None = MIN_ABOVE_CHANCE) -> dict[str, pd.DataFrame]:
    """The tables that need no masks (curves, super_tickets, transfer) from `scored` rounds."""
    values, trials = seed_values(rounds), level_trials(rounds)
    full = full_model(rounds, min_above_chance)
    tables = {"curves": conform("curves", curves(values, trials, setting_labels(rounds)))}
    tables["super_tickets"] = conform("super_tickets", super_tickets(values, tables["curves"], full))
    tables["transfer"] = conform("transfer", transfer(values, tables["curves"], full))
    return tables


def best_tickets(results_dir: str | os.PathLike, min_above_chance: float | None = MIN_ABOVE_CHANCE) -> list[dict]:
    """The super ticket of every curve, as the sweep prints it at its end: the super_tickets table's own
    rule and tie-break (computed by the same code). A curve whose full model did not learn (`learned` False)
    is listed with its chance value and margin and no super ticket (sparsity, mean, gain NaN). [] when no
    round has finished yet."""
    try:
        rounds = ResultsStore(results_dir).rounds()
    except ResultsError:
        return []
    per_curve = findings(scored(rounds), min_above_chance)["super_tickets"].drop_duplicates(CURVE_KEY)
    fields = {"sparsity": "super_sparsity", "mean": "super_mean", "seeds": "super_seeds"}
    return [
        {**{k: r[k] for k in (*CURVE_KEY, "setting_label", "metric_name")}, **{k: r[v] for k, v in fields.items()},
         **{k: r[k] for k in ("full_mean", "gain", "p_selection", "chance", "min_above_chance", "learned")}}
        for r in per_curve.to_dict("records")
    ]


def did_not_learn(r) -> str:
    """Why a curve has no findings, in one phrase: its full model against chance and the margin."""
    return (f"did not learn: full {_num(r['full_mean'])} ≤ chance {_num(r['chance'])} + "
            f"{_num(r['min_above_chance'])}")


def load_analysis(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, pd.DataFrame] | None:
    """The analysis tables written by `analyze`, or None if any of them is missing or was written with other
    columns (an older raytickets: the caller re-analyses)."""
    store = ResultsStore(results_dir)
    fs, out = out_location(store, out_dir)
    paths = {name: f"{out}/{name}.parquet" for name in ANALYSIS_TABLES}
    if any(fs.get_file_info(p).type != pafs.FileType.File for p in paths.values()):
        return None
    tables = {}
    for name, path in paths.items():
        try:
            table = pq.read_table(path, filesystem=fs)
        except (pa.ArrowException, OSError) as exc:
            raise ResultsError(f"{path}: not a complete Parquet file ({first_line(exc)})") from None
        version = int((table.schema.metadata or {}).get(META_VERSION, b"0") or 0)
        if version > SCHEMA_VERSION:
            raise ResultsError(f"{path}: schema version {version} is newer than this raytickets reads ({SCHEMA_VERSION})")
        if table.column_names != ANALYSIS_SCHEMAS[name].names:
            return None
        tables[name] = table.to_pandas()
    return tables


SUMMARY_HEADER = (
    "model", "method", "task", "setting", "metric", "full model (mean ± std)", "chance (+ margin)",
    "matching sparsity (paper / strict)",
    "super ticket sparsity", "gain", "p_selection (paired, Holm over K levels)", "p_holdout (held-out seeds)",
    "p_welch (unpaired, unadjusted)", "seeds", "failed seeds (ticket / full)", "trajectories", "phase transition",
    "layer collapse",
)


def summary_rows(tables: Mapping[str, pd.DataFrame]) -> list[list[str]]:
    """One row of SUMMARY_HEADER cells per curve (model, method, task, setting): full model, chance, matching and
    super tickets, the super ticket's tests, failed seeds, trajectories and layer collapse. A curve whose full
    model did not learn says so in place of its matching sparsity."""
    supers = tables["super_tickets"]
    rows = []
    for key, levels in supers.groupby(CURVE_KEY, sort=True):
        r, best = levels.iloc[0], levels[levels["is_super"]]
        at = best.iloc[0] if len(best) else None
        held = (f"{_num(r.p_holdout, fmt='.3g')} (n={r.holdout_seeds} @ {_pct(r.holdout_sparsity)})"
                if r.holdout_seeds else "—")
        rows.append([
            r.model, r.method, r.task, _text(r.setting_label),
            r.metric_name + (f" ({r.metric_convention})" if isinstance(r.metric_convention, str) else ""),
            f"{_num(r.full_mean)} ± {_num(r.full_std)} (n={r.full_seeds})",
            f"{_num(r.chance)} (+ {_num(r.min_above_chance)})",
            f"{_pct(r.matching_sparsity_paper)} / {_pct(r.matching_sparsity_strict)}" if r.learned
            else did_not_learn(r),
            _pct(r.super_sparsity), _num(r.gain, signed=True), f"{_num(r.p_selection, fmt='.3g')} (K={r.levels_tested})",
            held, _num(r.p_welch, fmt=".3g"), str(r.super_seeds),
            f"{at.failed_seeds if at is not None else '—'} / {r.full_failed_seeds}",
            _trajectories(levels, at), "yes" if r.phase_transition else "no",
            collapse_text(tables["layer_sparsity"], key),
        ])
    return rows or [["—"] * len(SUMMARY_HEADER)]


def summary_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """The summary rows as a Markdown table (what `raytickets analyze` prints and summary.md holds)."""
    lines = ["| " + " | ".join(SUMMARY_HEADER) + " |", "|" + "---|" * len(SUMMARY_HEADER)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in summary_rows(tables)]
    return ("\n".join(lines) + "\n" + side_by_side_markdown(tables) + oneshot_markdown(tables)
            + transfer_markdown(tables) + mtl_markdown(tables))


def side_by_side(tables: Mapping[str, pd.DataFrame]) -> dict[tuple[str, str], tuple[list[str], list[list[str]]]]:
    """Per (model, task) with more than one curve (methods, IMP vs gradual, with and without distillation): a
    header and rows — the full model first, then one row per sparsity level — with a column per curve (its
    method and the settings that set it apart), each cell the ticket's mean ± std over seeds (n seeds)."""
    supers = tables["super_tickets"]
    curves = tables["curves"]
    tickets = curves[curves["kind"] == "ticket"]
    out = {}
    for (model, task), group in supers.groupby(["model", "task"], sort=True):
        keys = group.drop_duplicates(CURVE_KEY).sort_values(CURVE_KEY)
        if len(keys) < 2:
            continue
        mine = tickets[(tickets["model"] == model) & (tickets["task"] == task)]
        names = mine.drop_duplicates(CURVE_KEY).set_index(CURVE_KEY)["compare_label"]
        labels = [names.get(tuple(getattr(r, k) for k in CURVE_KEY), r.setting_label) for r in keys.itertuples()]
        rows = [["full model"] + [f"{_num(r.full_mean)} ± {_num(r.full_std)} (n={r.full_seeds})"
                                  for r in keys.itertuples()]]
        for level in sorted(set(mine["sparsity"].round(3))):
            cells = []
            for r in keys.itertuples():
                at = mine[(mine["method"] == r.method) & (mine["setting_id"] == r.setting_id)
                          & ((mine["sparsity"] - level).abs() < 5e-4)]
                cells.append(f"{_num(at['mean'].iloc[0])} ± {_num(at['std'].iloc[0])} (n={at['seeds'].iloc[0]})"
                             if len(at) else "—")
            rows.append([_pct(level)] + cells)
        out[(model, task)] = (["sparsity", *labels], rows)
    return out


def side_by_side_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    out = []
    for (model, task), (header, rows) in side_by_side(tables).items():
        out += [f"\n## {md_cell(task)} ({md_cell(model)}): curves side by side, ticket mean ± std over seeds\n",
                "| " + " | ".join(md_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n" if out else ""


def md_cell(value) -> str:
    """A value as Markdown text that stays one table cell: a `|` or a newline in a user's string (a model path, a
    setting label) would end the cell or the row, `<` would open HTML, `\\` would escape what follows."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.splitlines())


def oneshot_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """Where a curve's tickets measured `oneshot_diff` (mlm): per level, the share of the ticket's pruned weights
    that one-shot magnitude pruning of the rewind weights would keep, mean over seeds; 0 says the "ticket" is
    one-shot pruning, and training moved no weight across the threshold. "" when no curve measured it."""
    curves = tables["curves"]
    measured = curves[(curves["kind"] == "ticket") & curves["oneshot_diff"].notna()]
    if measured.empty:
        return ""
    lines = ["\n## Tickets against one-shot magnitude pruning (`oneshot_diff`)\n"]
    for key, group in measured.groupby(CURVE_KEY, sort=True):
        levels = ", ".join(f"{_pct(r.sparsity)}: {r.oneshot_diff:.4f}" + (" (equals one-shot pruning)"
                                                                          if r.oneshot_diff == 0 else "")
                           for r in group.sort_values("sparsity").itertuples())
        lines.append(f"- {md_cell(key[2])} ({md_cell(key[1])}, setting {md_cell(str(key[3])[:8])}): {levels}")
    return "\n".join(lines) + "\n"


def transfer_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """The transfer table: each source ticket (and null mask) on each target against the target's own ticket,
    the random mask and one-shot pruning at that level, with Chen et al.'s verdict; "" when nothing transferred."""
    moved = tables.get("transfer")
    if moved is None or moved.empty:
        return ""
    header = ("source @ sparsity", "target", "metric", "TRANSFER(S, T)", "own ticket TRANSFER(T, T)", "random",
              "one-shot", "verdict (Chen et al.: ≥ own − 1 std)")
    lines = ["\n## Ticket transfer\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in moved.sort_values(["source_task", "sparsity", "task"]).itertuples():
        own = f"{_num(r.ticket_mean)} ± {_num(r.ticket_std)} (n={r.ticket_seeds})" if r.ticket_seeds else "—"
        cells = [f"{r.source_task} @ {_pct(r.sparsity)}", r.task, r.metric_name,
                 f"{_num(r.mean)} ± {_num(r.std)} (n={r.seeds})", own, _num(r.random_mean), _num(r.oneshot_mean),
                 _transfer_verdict(r)]
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _transfer_verdict(r) -> str:
    if r.source_task in ("random", "oneshot"):
        return "null mask"
    if not r.learned:
        return "no verdict (a full model did not learn)"
    if r.ticket_seeds and not r.own_learned:
        return "no verdict (the own ticket did not beat chance)"
    if pd.isna(r.transfers):
        return "no own ticket at this level"
    verdict = "transfers (also strictly)" if r.transfers_strict else "transfers" if r.transfers else "does not transfer"
    if not math.isnan(r.oneshot_mean) and r.mean <= r.oneshot_mean:
        verdict += "; no better than one-shot pruning"
    return verdict + ("; universal" if r.universal else "")


def mtl_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """Each multi-task experiment's per-task table (as `raytickets mtl` prints it), or "" when there is none."""
    mtl = tables.get("mtl")
    if mtl is None or mtl.empty:
        return ""
    parts = []
    for setting in dict.fromkeys(mtl["setting_id"]):
        text = format_table(mtl, tables.get("mtl_sharing"), setting_id=setting)
        parts.append(f"\n## Multi-task experiment {str(setting)[:8]} (raytickets mtl)\n\n```\n{text}\n```\n")
    return "".join(parts)


def collapse_text(layers: pd.DataFrame, key: tuple) -> str:
    """The collapsed tensors of one curve's chosen ticket in words, "none", or "—" without a stored mask."""
    mine = of_curve(layers, key)
    if mine.empty:
        return "—"
    names = [n for text in mine.loc[mine["collapsed"], "collapsed_tensors"] for n in text.split(", ")]
    first = mine.iloc[0]
    where = f"{first['ticket']} ticket at {_pct(first['sparsity'])}, seed {first['seed']}"
    return f"{', '.join(names)} ({where})" if names else "none"


def _trajectories(levels: pd.DataFrame, at: pd.Series | None) -> str:
    """Trials at the super level, and the range over the curve's levels where it varies (early stopping)."""
    low, high = int(levels["trajectories"].min()), int(levels["trajectories"].max())
    here = str(at.trajectories) if at is not None else "—"
    return here if low == high else f"{here} (levels: {low}–{high})"


# ---------------------------------------------------------------- writing


def conform(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with exactly the columns of its schema, in order, and the schema's types."""
    return _to_arrow(name, frame).to_pandas()


def _to_arrow(name: str, frame: pd.DataFrame) -> pa.Table:
    schema = ANALYSIS_SCHEMAS[name]
    if frame.empty:
        table = schema.empty_table()
    else:
        table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    return tag_table(table, name)


def out_location(store: ResultsStore, out_dir: str | os.PathLike | None, default: str = "analysis",
                 ) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of an output folder: `out_dir`, or `<results root>/<default>`."""
    if out_dir is None:
        return store.fs, store.path(default)
    return open_filesystem(out_dir)


def _num(x, signed: bool = False, fmt: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, ("+" if signed else "") + fmt)


def _text(x) -> str:
    return x if isinstance(x, str) and x else "—"


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"
