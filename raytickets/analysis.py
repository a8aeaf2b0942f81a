"""From stored rounds to findings: matching and super tickets, cross-task mask overlap, ticket transfer.

`analyze(results_dir)` reads the `rounds` table (and masks where needed) and writes five Parquet tables
into `<results_dir>/analysis/` (see docs/SCHEMA.md). Every decision is a written rule applied in code,
never picked from a plot:

* sparsity levels are round sparsities rounded to 4 decimals; a value per seed is the mean over that
  seed's rows at the level (normally exactly one row);
* the full model is the `kind == "full"` rows, or, where a task has none, the `full_metric` column of its
  other rows (one value per seed); mean and sample std (ddof=1) over seeds; a single seed has std 0;
* matching sparsity, paper rule (Chen et al. 2020): the highest sparsity > 0 whose ticket mean is within
  one std of the full model, `mean >= full_mean - full_std`; strict rule: `mean >= full_mean`;
* super ticket (Liang et al. 2021): the sparsity > 0 with the best ticket mean; its gain is
  `mean - full_mean`, tested over seeds with Welch's t-test, one-sided ("ticket > full");
* phase transition: the curve rises above the full-model mean at some sparsity > 0 and falls below it
  at a higher sparsity.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from itertools import combinations
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from scipy import stats

from .errors import ResultsError
from .models import layer_of, tensor_kind
from .store import (
    META_VERSION,
    SCHEMA_VERSION,
    ResultsStore,
    first_line,
    open_filesystem,
    tag_table,
    write_parquet_atomic,
)

if TYPE_CHECKING:  # masks import torch; analysis loads it only when masks are read
    from .masks import Mask

SPARSITY_DECIMALS = 4
BASELINE_KINDS = ("random", "reinit", "shuffled", "oneshot", "standard")
CURVE_KINDS = ("ticket", *BASELINE_KINDS)
TASK_KEY = ["model", "method", "task"]

_S, _F, _I, _B = pa.string(), pa.float64(), pa.int64(), pa.bool_()


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(name, type_) for name, type_ in fields])


ANALYSIS_SCHEMAS: dict[str, pa.Schema] = {
    "curves": _schema(
        ("model", _S), ("method", _S), ("task", _S), ("kind", _S), ("metric_name", _S),
        ("sparsity", _F), ("mean", _F), ("std", _F), ("seeds", _I),
    ),
    "super_tickets": _schema(
        ("model", _S), ("method", _S), ("task", _S), ("metric_name", _S),
        ("sparsity", _F), ("mean", _F), ("std", _F), ("seeds", _I),
        ("matches_paper", _B), ("matches_strict", _B), ("is_super", _B),
        ("full_mean", _F), ("full_std", _F), ("full_seeds", _I), ("full_source", _S),
        ("matching_sparsity_paper", _F), ("matching_sparsity_strict", _F),
        ("super_sparsity", _F), ("super_mean", _F), ("super_std", _F), ("super_seeds", _I),
        ("gain", _F), ("t_statistic", _F), ("p_value", _F), ("phase_transition", _B),
    ),
    "overlap": _schema(
        ("model", _S), ("method", _S), ("task_a", _S), ("task_b", _S), ("seed_a", _I), ("seed_b", _I),
        ("mask_id_a", _S), ("mask_id_b", _S), ("sparsity_a", _F), ("sparsity_b", _F),
        ("scope", _S), ("group", _S), ("total", _I), ("kept_a", _I), ("kept_b", _I),
        ("intersection", _I), ("union", _I), ("jaccard", _F), ("random_jaccard", _F), ("ratio", _F),
    ),
    "transfer": _schema(
        ("model", _S), ("method", _S), ("source_task", _S), ("task", _S), ("metric_name", _S),
        ("sparsity", _F), ("mean", _F), ("std", _F), ("seeds", _I),
        ("ticket_sparsity", _F), ("ticket_mean", _F), ("full_mean", _F), ("vs_ticket", _F), ("vs_full", _F),
    ),
    "layer_sparsity": _schema(
        ("model", _S), ("method", _S), ("task", _S), ("ticket", _S), ("seed", _I), ("mask_id", _S),
        ("sparsity", _F), ("layer", _S), ("layer_sparsity", _F),
    ),
}
ANALYSIS_TABLES = tuple(ANALYSIS_SCHEMAS)


# ---------------------------------------------------------------- entry points


def analyze(
    results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
    num_heads: int | Mapping[str, int] | None = None,
) -> dict[str, pd.DataFrame]:
    """Compute every analysis table from a results root and write them (all or none) to `out_dir`.

    `num_heads` (per model name, or one int) is needed only to count shared attention heads of structured
    tickets; by default it is read from each model's config.
    """
    store = ResultsStore(results_dir)
    rounds = store.rounds()
    values = seed_values(rounds)
    full = full_model(rounds)
    tables = {"curves": conform("curves", curves(values))}
    tables["super_tickets"] = conform("super_tickets", super_tickets(values, full))
    # Each chosen mask is looked up once and read from the store at most once, for both tables below.
    matching = ticket_masks(store, rounds, tables["super_tickets"], "matching")
    load = functools.cache(store.load_mask)
    tables["overlap"] = conform("overlap", overlap(store, matching, load, num_heads))
    tables["transfer"] = conform("transfer", transfer(values, tables["curves"], full))
    supers = ticket_masks(store, rounds, tables["super_tickets"], "super")
    tables["layer_sparsity"] = conform("layer_sparsity", layer_sparsity(matching, supers, load))
    # Everything is computed before anything is written: bad input leaves the old analysis in place.
    fs, out = out_location(store, out_dir)
    for name, frame in tables.items():
        write_parquet_atomic(_to_arrow(name, frame), fs, f"{out}/{name}.parquet")
    return tables


def load_analysis(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, pd.DataFrame] | None:
    """The analysis tables written by `analyze`, or None if any of them is missing."""
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
        tables[name] = table.to_pandas()
    return tables


SUMMARY_HEADER = (
    "model", "method", "task", "metric", "full model (mean ± std)", "matching sparsity (paper / strict)",
    "super ticket sparsity", "gain", "p (Welch, one-sided)", "seeds", "phase transition",
)


def summary_rows(tables: Mapping[str, pd.DataFrame]) -> list[list[str]]:
    """One row of SUMMARY_HEADER cells per (model, method, task): full model, matching and super tickets."""
    per_task = tables["super_tickets"].drop_duplicates(TASK_KEY)
    rows = [
        [
            r.model, r.method, r.task, r.metric_name,
            f"{_num(r.full_mean)} ± {_num(r.full_std)} (n={r.full_seeds})",
            f"{_pct(r.matching_sparsity_paper)} / {_pct(r.matching_sparsity_strict)}",
            _pct(r.super_sparsity), _num(r.gain, signed=True), _num(r.p_value, fmt=".3g"),
            str(r.super_seeds), "yes" if r.phase_transition else "no",
        ]
        for r in per_task.itertuples(index=False)
    ]
    return rows or [["—"] * len(SUMMARY_HEADER)]


def summary_markdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """The summary rows as a Markdown table (what `raytickets analyze` prints and summary.md holds)."""
    lines = ["| " + " | ".join(SUMMARY_HEADER) + " |", "|" + "---|" * len(SUMMARY_HEADER)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in summary_rows(tables)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- curves and the full model


def seed_values(rounds: pd.DataFrame) -> pd.DataFrame:
    """One metric value per (model, method, task, kind, source_task, sparsity level, seed)."""
    frame = rounds.assign(
        sparsity=rounds["sparsity"].astype(float).round(SPARSITY_DECIMALS),
        source_task=rounds["source_task"].fillna(""),
    )
    keys = [*TASK_KEY, "kind", "source_task", "sparsity", "seed"]
    return frame.groupby(keys, as_index=False, sort=True).agg(metric=("metric", "mean"), metric_name=("metric_name", "first"))


def curves(values: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and seed count per sparsity level of the ticket and of every baseline kind."""
    frame = values[values["kind"].isin(CURVE_KINDS)]
    keys = [*TASK_KEY, "kind", "sparsity"]
    return frame.groupby(keys, as_index=False, sort=True).agg(
        metric_name=("metric_name", "first"), mean=("metric", "mean"), std=("metric", "std"), seeds=("seed", "nunique"),
    )


def full_model(rounds: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, task): the full model's per-seed values, mean, std (single seed: 0) and source."""
    out = []
    for key, group in rounds.groupby(TASK_KEY, sort=True):
        full_rows = group[group["kind"] == "full"]
        if len(full_rows):
            per_seed, source = full_rows.groupby("seed")["metric"].mean(), "full rows"
        else:
            per_seed, source = group.dropna(subset=["full_metric"]).groupby("seed")["full_metric"].mean(), "full_metric column"
        values = per_seed.to_numpy(dtype=float)
        out.append({
            **dict(zip(TASK_KEY, key)), "full_values": values, "full_source": source if len(values) else "none",
            "full_mean": values.mean() if len(values) else math.nan,
            "full_std": values.std(ddof=1) if len(values) > 1 else 0.0 if len(values) else math.nan,
            "full_seeds": len(values),
        })
    return pd.DataFrame(out, columns=[*TASK_KEY, "full_values", "full_source", "full_mean", "full_std", "full_seeds"])


# ---------------------------------------------------------------- matching and super tickets


def super_tickets(values: pd.DataFrame, full: pd.DataFrame) -> pd.DataFrame:
    """The ticket curve of every task with matching sparsities, super ticket, its test and phase transition."""
    tickets = values[values["kind"] == "ticket"]
    full = full.set_index(TASK_KEY)
    rows = []
    for key, group in tickets.groupby(TASK_KEY, sort=True):
        f = full.loc[key] if key in full.index else None
        rows += _task_rows(key, group, f)
    return pd.DataFrame(rows)


def _task_rows(key: tuple, group: pd.DataFrame, full: pd.Series | None) -> list[dict]:
    levels = group.groupby("sparsity").agg(mean=("metric", "mean"), std=("metric", "std"), seeds=("seed", "nunique"))
    full_values = full["full_values"] if full is not None else np.array([])
    full_mean = float(full["full_mean"]) if full is not None else math.nan
    full_std = float(full["full_std"]) if full is not None else math.nan
    # The matching rules, once: Chen et al.'s (within one std of the full model) and the strict one.
    pruned_level = levels.index > 0
    levels["matches_paper"] = pruned_level & (levels["mean"] >= full_mean - full_std)
    levels["matches_strict"] = pruned_level & (levels["mean"] >= full_mean)
    pruned = levels[pruned_level]
    best = pruned.loc[pruned["mean"].idxmax()] if len(pruned) else None
    super_sparsity = float(best.name) if best is not None else math.nan
    t_stat, p_value = math.nan, math.nan
    if best is not None:
        ticket_values = group.loc[group["sparsity"] == super_sparsity, "metric"].to_numpy(dtype=float)
        t_stat, p_value = welch_greater(ticket_values, full_values)
    task = {
        **dict(zip(TASK_KEY, key)), "metric_name": group["metric_name"].iloc[0],
        "full_mean": full_mean, "full_std": full_std, "full_seeds": len(full_values),
        "full_source": full["full_source"] if full is not None else "none",
        # an empty index's max() is nan: no level matches
        "matching_sparsity_paper": float(levels.index[levels["matches_paper"]].max()),
        "matching_sparsity_strict": float(levels.index[levels["matches_strict"]].max()),
        "super_sparsity": super_sparsity,
        "super_mean": float(best["mean"]) if best is not None else math.nan,
        "super_std": float(best["std"]) if best is not None else math.nan,
        "super_seeds": int(best["seeds"]) if best is not None else 0,
        "gain": float(best["mean"]) - full_mean if best is not None else math.nan,
        "t_statistic": t_stat, "p_value": p_value,
        "phase_transition": phase_transition(pruned.index.to_numpy(), pruned["mean"].to_numpy(), full_mean),
    }
    return [
        {
            **task, "sparsity": float(s), "mean": float(lv["mean"]), "std": float(lv["std"]), "seeds": int(lv["seeds"]),
            "matches_paper": bool(lv["matches_paper"]), "matches_strict": bool(lv["matches_strict"]),
            "is_super": bool(s == super_sparsity),
        }
        for s, lv in levels.iterrows()
    ]


def welch_greater(ticket: np.ndarray, full: np.ndarray) -> tuple[float, float]:
    """Welch's t-test that the ticket's seeds score higher than the full model's: (t, one-sided p).

    NaN where either side has fewer than two seeds (no variance estimate, no test).
    """
    if len(ticket) < 2 or len(full) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():  # identical values on both sides: scipy warns and returns NaN, which we keep
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(ticket, full, equal_var=False, alternative="greater")
    return float(result.statistic), float(result.pvalue)


def phase_transition(sparsities: np.ndarray, means: np.ndarray, full_mean: float) -> bool:
    """True if the curve (sparsity > 0, ascending) exceeds `full_mean` somewhere and is below it at a higher sparsity."""
    order = np.argsort(sparsities)
    means = np.asarray(means, dtype=float)[order]
    above = np.flatnonzero(means > full_mean)
    return bool(len(above) and (means[above[0] + 1:] < full_mean).any())


# ---------------------------------------------------------------- overlap of matching tickets


def overlap(
    store: ResultsStore, chosen: pd.DataFrame, load: Callable[[str], Mask],
    num_heads: int | Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Jaccard overlap of the matching tickets (paper rule) of every pair of tasks of one model and method.

    Masks are paired seed by seed where both tasks have the seed, otherwise the first seed of each.
    Counts are given overall, per layer and per tensor kind, each with the Jaccard expected of two independent
    random masks of the same sparsities in that group; structured tickets add shared heads and FFN neurons.
    """
    rows = []
    for (model, method), group in chosen.groupby(["model", "method"], sort=True):
        by_task = {task: g.set_index("seed") for task, g in group.groupby("task", sort=True)}
        # Read the model's config once per group, and only when there is a pair to count heads for.
        heads = _heads(model, num_heads) if method == "structured" and len(by_task) > 1 else None
        for task_a, task_b in combinations(sorted(by_task), 2):
            a, b = by_task[task_a], by_task[task_b]
            common = sorted(set(a.index) & set(b.index))
            pairs = [(s, s) for s in common] or [(min(a.index), min(b.index))]
            for seed_a, seed_b in pairs:
                ra, rb = a.loc[seed_a], b.loc[seed_b]
                mask_a, mask_b = load(ra["mask_id"]), load(rb["mask_id"])
                _check_layout(store, mask_a, mask_b, ra["mask_id"], rb["mask_id"])
                ident = {
                    "model": model, "method": method, "task_a": task_a, "task_b": task_b, "seed_a": seed_a,
                    "seed_b": seed_b, "mask_id_a": ra["mask_id"], "mask_id_b": rb["mask_id"],
                    "sparsity_a": ra["sparsity"], "sparsity_b": rb["sparsity"],
                }
                counts = tensor_counts(mask_a, mask_b)
                if method == "structured":
                    counts = pd.concat([counts, unit_counts(mask_a, mask_b, heads)])
                rows += [{**ident, **r} for r in aggregate_counts(counts)]
    return pd.DataFrame(rows)


def ticket_masks(store: ResultsStore, rounds: pd.DataFrame, supers: pd.DataFrame, which: str) -> pd.DataFrame:
    """Per (model, method, task, seed) the mask id of the ticket at the matching ("matching", paper rule)
    or super ("super") sparsity; tasks without such a ticket or without stored masks are left out
    (with a warning for masks that rows name but the store lacks)."""
    column = {"matching": "matching_sparsity_paper", "super": "super_sparsity"}[which]
    levels = supers.drop_duplicates(TASK_KEY)[[*TASK_KEY, column]].dropna().rename(columns={column: "level"})
    tickets = rounds[(rounds["kind"] == "ticket") & rounds["mask_id"].notna()]
    tickets = tickets.assign(level_here=tickets["sparsity"].astype(float).round(SPARSITY_DECIMALS))
    merged = tickets.merge(levels, on=TASK_KEY)
    merged = merged[np.isclose(merged["level_here"], merged["level"])]
    merged = merged.sort_values([*TASK_KEY, "seed", "finished_at"], na_position="first")
    merged = merged.drop_duplicates([*TASK_KEY, "seed"], keep="last")
    stored = merged["mask_id"].map(store.has_mask).astype(bool)
    if not stored.all():
        warnings.warn(f"{(~stored).sum()} {which} ticket mask(s) named in the rounds table are not stored in "
                      f"{store.display(store.path('masks'))} (e.g. {merged.loc[~stored, 'mask_id'].iloc[0]}); "
                      "overlap and layer sparsity leave them out", stacklevel=2)
        merged = merged[stored]
    return merged[[*TASK_KEY, "seed", "mask_id"]].assign(sparsity=merged["level"]).reset_index(drop=True)


def tensor_counts(mask_a, mask_b) -> pd.DataFrame:
    """Per tensor: its layer and kind, size, kept weights in each mask, intersection and union."""
    rows = []
    for name, a in mask_a.tensors.items():
        b = mask_b.tensors[name]
        rows.append({
            "layer": layer_of(name), "kind": tensor_kind(name), "unit": "weight", "total": a.numel(),
            "kept_a": int(a.sum()), "kept_b": int(b.sum()),
            "intersection": int((a & b).sum()), "union": int((a | b).sum()),
        })
    return pd.DataFrame(rows)


def unit_counts(mask_a, mask_b, heads: int | None) -> pd.DataFrame:
    """Per layer: attention heads (all Q rows of the head kept) and FFN neurons (whole intermediate row kept).

    Heads are left out, with a warning, when the model's head count is unknown.
    """
    rows = []
    for name, a in mask_a.tensors.items():
        b = mask_b.tensors[name]
        kind = tensor_kind(name)
        if kind == "query" and heads:
            alive_a, alive_b = a.reshape(heads, -1).all(dim=1), b.reshape(heads, -1).all(dim=1)
            unit = "head"
        elif kind == "intermediate":
            alive_a, alive_b = a.all(dim=1), b.all(dim=1)
            unit = "ffn"
        else:
            continue
        rows.append({
            "layer": layer_of(name), "kind": kind, "unit": unit, "total": alive_a.numel(),
            "kept_a": int(alive_a.sum()), "kept_b": int(alive_b.sum()),
            "intersection": int((alive_a & alive_b).sum()), "union": int((alive_a | alive_b).sum()),
        })
    return pd.DataFrame(rows)


def aggregate_counts(counts: pd.DataFrame) -> list[dict]:
    """Rows of (scope, group, counts, jaccard, random_jaccard, ratio): weights overall, per layer and per
    tensor kind; structured units ("head", "ffn") overall ("all") and per layer."""
    from .masks import Mask

    rows = []
    weights, units = counts[counts["unit"] == "weight"], counts[counts["unit"] != "weight"]
    parts = [("overall", weights.assign(group="all")), ("layer", weights.assign(group=weights["layer"])),
             ("kind", weights.assign(group=weights["kind"]))]
    for unit, g in units.groupby("unit", sort=False):
        parts += [(unit, g.assign(group="all")), (unit, g.assign(group=g["layer"]))]
    for scope, frame in parts:
        sums = frame.groupby("group", sort=False)[["total", "kept_a", "kept_b", "intersection", "union"]].sum()
        for group, s in sums.iterrows():
            s = {k: int(v) for k, v in s.items()}
            jaccard = s["intersection"] / s["union"] if s["union"] else 1.0
            chance = Mask.expected_random_jaccard(1 - s["kept_a"] / s["total"], 1 - s["kept_b"] / s["total"])
            rows.append({"scope": scope, "group": str(group), **s, "jaccard": jaccard, "random_jaccard": chance,
                         "ratio": jaccard / chance if chance else math.nan})
    return rows


def _check_layout(store: ResultsStore, a, b, id_a: str, id_b: str) -> None:
    if a.shapes != b.shapes:
        diff = sorted(set(a.shapes.items()) ^ set(b.shapes.items()))[0][0]
        path_a, path_b = (store.display(store.path("masks", f"{i}.parquet")) for i in (id_a, id_b))
        raise ResultsError(f"{path_a} and {path_b}: the masks' tensors or shapes disagree (first at {diff!r}); cannot compare")


def _heads(model: str, num_heads: int | Mapping[str, int] | None) -> int | None:
    if isinstance(num_heads, int):
        return num_heads
    if isinstance(num_heads, Mapping) and model in num_heads:
        return int(num_heads[model])
    try:
        from transformers import AutoConfig

        from .models import resolve_model

        return int(AutoConfig.from_pretrained(resolve_model(model)).num_attention_heads)
    except Exception as exc:  # offline hub id, deleted directory: heads are then simply not counted
        warnings.warn(f"model {model!r}: cannot read its head count ({first_line(exc)}); shared heads not counted; "
                      f"pass num_heads", stacklevel=2)
        return None


# ---------------------------------------------------------------- transfer and layer sparsity


def transfer(values: pd.DataFrame, curve: pd.DataFrame, full: pd.DataFrame) -> pd.DataFrame:
    """Each transferred ticket (source task's mask trained on a target task) against the target's own ticket
    at the nearest ticket sparsity (`vs_ticket = mean - ticket_mean`) and its full model (`vs_full`)."""
    moved = values[values["kind"] == "transfer"]
    keys = ["model", "method", "source_task", "task", "sparsity"]
    agg = moved.groupby(keys, as_index=False, sort=True).agg(
        metric_name=("metric_name", "first"), mean=("metric", "mean"), std=("metric", "std"), seeds=("seed", "nunique"),
    )
    own = curve[curve["kind"] == "ticket"]
    full_mean = full.set_index(TASK_KEY)["full_mean"]
    rows = []
    for r in agg.to_dict("records"):
        key = (r["model"], r["method"], r["task"])
        candidates = own[(own["model"] == key[0]) & (own["method"] == key[1]) & (own["task"] == key[2])]
        ticket_sparsity, ticket_mean = math.nan, math.nan
        if len(candidates):
            nearest = (candidates["sparsity"] - r["sparsity"]).abs().idxmin()
            ticket_sparsity, ticket_mean = candidates.loc[nearest, "sparsity"], candidates.loc[nearest, "mean"]
        fm = float(full_mean.get(key, math.nan))
        rows.append({**r, "ticket_sparsity": ticket_sparsity, "ticket_mean": ticket_mean, "full_mean": fm,
                     "vs_ticket": r["mean"] - ticket_mean, "vs_full": r["mean"] - fm})
    return pd.DataFrame(rows)


def layer_sparsity(matching: pd.DataFrame, supers: pd.DataFrame, load: Callable[[str], Mask]) -> pd.DataFrame:
    """Per task, the sparsity of every layer of its matching ticket (or, lacking one, its super ticket), first seed.

    `matching` and `supers` are `ticket_masks` tables; "matching" sorts before "super", so a task's matching
    ticket wins even when only its super ticket exists for a lower seed."""
    chosen = pd.concat([matching.assign(ticket="matching"), supers.assign(ticket="super")])
    chosen = chosen.sort_values([*TASK_KEY, "ticket", "seed"], kind="stable").drop_duplicates(TASK_KEY, keep="first")
    rows = []
    for r in chosen.to_dict("records"):
        per_layer = load(r["mask_id"]).sparsity_per_layer()
        rows += [{**r, "layer": layer, "layer_sparsity": s} for layer, s in per_layer.items()]
    return pd.DataFrame(rows)


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


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"
