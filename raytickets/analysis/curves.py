"""The results along the sparsity axis: per-seed values, curves, the full model, super tickets, transfer.

One curve is one (model, method, task, setting_id); the rules are written out in `raytickets.analysis.tables`.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd

from ..baselines import BASELINES
from ..errors import ResultsError
from .stats import selection_test, welch_greater

SPARSITY_DECIMALS = 4
BASELINE_KINDS = tuple(BASELINES)  # the registry decides which kinds are baselines
CURVE_KINDS = ("ticket", *BASELINE_KINDS)
CURVE_KEY = ["model", "method", "task", "setting_id"]
# A constant predictor's correlation is undefined; its chance value is 0 (as `tasks.chance_metrics` scores it).
CORRELATIONS = ("pearson", "spearman", "matthews")
# How far a full model's mean must beat its chance value before anything on its curve is judged (a model that
# learned nothing has no tickets). None: two standard errors of the metric at chance, at the dev size
# (`chance_margin`); a number: that margin for every curve (`raytickets analyze --min-above-chance`).
MIN_ABOVE_CHANCE: float | None = None
# The public GLUE dev splits' sizes (MNLI: matched + mismatched), for the margin where a run's settings carry no
# smaller `data.max_dev_examples` (a cap per split). Any other task (mlm) has no size here: see `chance_margin`.
GLUE_DEV_SIZES = {"cola": 1043, "sst2": 872, "mrpc": 408, "stsb": 1500, "qqp": 40430, "mnli": 9815 + 9832,
                  "qnli": 5463, "rte": 277, "wnli": 71}


def of_curve(frame: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The rows of `frame` that belong to the curve `key` (model, method, task, setting_id)."""
    return frame[(frame[CURVE_KEY] == pd.Series(key, index=CURVE_KEY)).all(axis=1)]


# ---------------------------------------------------------------- per-seed values


def scored(rounds: pd.DataFrame) -> pd.DataFrame:
    """The rounds with `setting_id` "" where null (older files: one curve per task) and every collapsed run
    (`failed`, or a NaN metric in older files) scored at its chance value and flagged in `collapsed`."""
    metric = rounds["metric"].astype(float)
    collapsed = rounds["failed"].fillna(False).astype(bool) | metric.isna()
    chance = rounds["chance_metric"].astype(float)
    chance = chance.where(chance.notna() | ~rounds["metric_name"].isin(CORRELATIONS), 0.0)
    # A collapsed row written by this version already holds its chance value in `metric`.
    value = metric.where(~collapsed, chance.where(chance.notna(), metric))
    unknown = collapsed & value.isna()
    if unknown.any():
        first = rounds[unknown].iloc[0]
        warnings.warn(f"{int(unknown.sum())} collapsed run(s) have no chance_metric (e.g. trial {first['trial']!r}, "
                      f"{first['metric_name']}); the levels holding them have no mean", stacklevel=3)
    out = rounds.assign(
        setting_id=rounds["setting_id"].fillna(""), metric=value, collapsed=collapsed,
        sparsity=rounds["sparsity"].astype(float).round(SPARSITY_DECIMALS), source_task=rounds["source_task"].fillna(""),
    )
    _check_one_metric(out)
    return out


def _check_one_metric(rounds: pd.DataFrame) -> None:
    """A curve averages one metric: accuracy and F1 (two metric conventions) never share a mean."""
    names = rounds.groupby(CURVE_KEY, sort=True)["metric_name"].unique()
    mixed = names[names.map(len) > 1]
    if len(mixed):
        key, found = mixed.index[0], sorted(mixed.iloc[0])
        raise ResultsError(f"rounds.metric_name: curve {dict(zip(CURVE_KEY, key))} holds {found}; a curve has one "
                           "metric (rows of another metric_convention need their own setting_id)")


def seed_values(rounds: pd.DataFrame) -> pd.DataFrame:
    """One value per (curve, kind, source_task, sparsity level, seed) of `scored` rounds: the mean of the
    seed's rows there (NaN if any is NaN), and whether any of them collapsed (`failed`)."""
    keys = [*CURVE_KEY, "kind", "source_task", "sparsity", "seed"]
    frame = _with_oneshot_diff(rounds.assign(unknown=rounds["metric"].isna()))
    out = frame.groupby(keys, as_index=False, sort=True).agg(
        metric=("metric", "mean"), unknown=("unknown", "any"), failed=("collapsed", "any"),
        metric_name=("metric_name", "first"), metric_convention=("metric_convention", "first"),
        oneshot_diff=("oneshot_diff", lambda s: s.astype(float).mean()),  # carried to the curves (mlm tickets)
    )
    out.loc[out["unknown"], "metric"] = math.nan
    return out.drop(columns="unknown")


def level_trials(rounds: pd.DataFrame) -> pd.DataFrame:
    """`trajectories` per (curve, kind, source_task, level): distinct trials with a row there, so a level
    reached only by the survivors of early stopping shows it."""
    keys = [*CURVE_KEY, "kind", "source_task", "sparsity"]
    return rounds.groupby(keys, as_index=False, sort=True).agg(trajectories=("trial", "nunique"))


def setting_labels(rounds: pd.DataFrame) -> pd.DataFrame:
    """Per curve a short `setting_label`: the first 8 characters of its setting_id and, where a task has
    several curves of its method, the settings (from the `settings` JSON) whose values differ between them;
    and `compare_label`: the method and the settings that set the curve apart from the task's curves of every
    method (the columns of `tables.side_by_side`)."""
    labels = _labels(rounds, [0, 1, 2], "setting_label")
    across = _labels(rounds, [0, 2], "compare_label")
    across["compare_label"] = [f"{m} {label.partition(' ')[2] or label}" for m, label in
                               zip(across["method"], across["compare_label"])]
    return labels.merge(across, on=CURVE_KEY, how="left")


def _labels(rounds: pd.DataFrame, levels: list[int], column: str) -> pd.DataFrame:
    """The setting id's first 8 characters and the settings that differ within each group of curves (the
    CURVE_KEY `levels` that make a group)."""
    first = rounds.groupby(CURVE_KEY, sort=True)["settings"].first()  # first non-null JSON per curve
    rows = []
    for _, group in first.groupby(level=levels, sort=True):
        flat = {key: _flatten(json.loads(text)) if isinstance(text, str) else {} for key, text in group.items()}
        names = sorted({name for f in flat.values() for name in f})
        differ = [n for n in names if len({json.dumps(f.get(n), sort_keys=True) for f in flat.values()}) > 1]
        for key, f in flat.items():
            parts = ", ".join(f"{n}={f.get(n, 'unset')}" for n in differ)
            label = " ".join(p for p in (key[3][:8], parts) if p)
            rows.append({**dict(zip(CURVE_KEY, key)), column: label})
    return pd.DataFrame(rows, columns=[*CURVE_KEY, column])


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------- chance


def dev_examples(task: str, settings: str | None) -> int | None:
    """The dev examples a curve was scored on: its `data.max_dev_examples` (per split) capped by the GLUE dev
    size, or the GLUE dev size; None where neither is known."""
    cap = (json.loads(settings).get("data") or {}).get("max_dev_examples") if isinstance(settings, str) else None
    full = GLUE_DEV_SIZES.get(task)
    if cap is None:
        return full
    splits = 2 if task == "mnli" else 1
    return min(int(cap) * splits, full) if full is not None else int(cap) * splits


def chance_margin(metric_name: str, chance: float, n: int | None) -> float:
    """Two standard errors of the metric of a predictor at chance on `n` dev examples: 2·sqrt(c(1-c)/n) for
    a rate (accuracy, F1 — F1 treated as one, the usual approximation) and 2/sqrt(n) for a correlation
    (its standard error under no association; for Matthews, n·MCC² is the χ² of the 2×2 table). Unknown `n`:
    0 for a chance of 0 (masked-token accuracy, where n is thousands of tokens), else NaN."""
    if metric_name in CORRELATIONS:
        return 2 / math.sqrt(n) if n else math.nan
    c = min(max(float(chance), 0.0), 1.0)
    if c in (0.0, 1.0):
        return 0.0
    return 2 * math.sqrt(c * (1 - c) / n) if n else math.nan


def learned(full_mean: float, chance: float, margin: float) -> bool:
    """Whether a full model beat chance by the margin. A curve without a full-model value, or whose chance (older
    files) or margin is unknown, is not judged: True, so it keeps every finding it had."""
    if math.isnan(full_mean) or math.isnan(chance) or math.isnan(margin):
        return True
    return bool(full_mean > chance + margin)


# ---------------------------------------------------------------- curves and the full model


def _with_oneshot_diff(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with an `oneshot_diff` column: NaN for rows written before schema 3, which never measured it."""
    return frame if "oneshot_diff" in frame else frame.assign(oneshot_diff=math.nan)


def level_stats(values: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, sample std, seed count and failed-seed count over the seeds of each group of `keys`."""
    frame = _with_oneshot_diff(values.assign(unknown=values["metric"].isna()))
    out = frame.groupby(keys, as_index=False, sort=True).agg(
        metric_name=("metric_name", "first"), metric_convention=("metric_convention", "first"), mean=("metric", "mean"),
        std=("metric", "std"), seeds=("seed", "nunique"), failed_seeds=("failed", "sum"), unknown=("unknown", "any"),
        oneshot_diff=("oneshot_diff", lambda s: s.astype(float).mean()),  # NaN where no row measured it (GLUE)
    )
    out.loc[out["unknown"], ["mean", "std"]] = math.nan  # a seed without a value: the level has no mean
    return out.drop(columns="unknown")


def curves(values: pd.DataFrame, trials: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Per curve, the ticket's and every baseline's levels: mean, std, seeds, failed seeds, trajectories."""
    frame = values[values["kind"].isin(CURVE_KINDS)]
    out = level_stats(frame, [*CURVE_KEY, "kind", "sparsity"])
    out = out.merge(trials[trials["source_task"] == ""].drop(columns="source_task"), on=[*CURVE_KEY, "kind", "sparsity"],
                    how="left")
    return out.merge(labels, on=CURVE_KEY, how="left")


def full_model(rounds: pd.DataFrame, min_above_chance: float | None = MIN_ABOVE_CHANCE) -> pd.DataFrame:
    """Per curve: the full model's value per seed (`full_by_seed`), mean, std (single seed: 0), seeds, failed
    seeds and source: the `kind == "full"` rows, or, lacking them, the `full_metric` column of the other rows
    (where a collapse cannot be seen: its failed count is 0); its chance value (the curve's `chance_metric`, 0
    for a correlation), the dev examples, the margin (`min_above_chance`, or `chance_margin`) and `learned`."""
    out = []
    for key, group in rounds.groupby(CURVE_KEY, sort=True):
        full_rows = group[group["kind"] == "full"]
        if len(full_rows):
            per_seed, source = full_rows.groupby("seed")["metric"].mean(), "full rows"
            failed = int(full_rows.groupby("seed")["collapsed"].any().sum())
        else:
            per_seed = group.dropna(subset=["full_metric"]).groupby("seed")["full_metric"].mean()
            source, failed = "full_metric column", 0
        values = per_seed.to_numpy(dtype=float)
        full_mean = values.mean() if len(values) else math.nan
        chance = group["chance_metric"].astype(float).dropna()  # one dev set per curve: every row holds the same
        metric = group["metric_name"].iloc[0]
        chance = float(chance.mean()) if len(chance) else 0.0 if metric in CORRELATIONS else math.nan
        n = dev_examples(key[2], group["settings"].dropna().iloc[0] if group["settings"].notna().any() else None)
        margin = float(min_above_chance) if min_above_chance is not None else chance_margin(metric, chance, n)
        out.append({
            **dict(zip(CURVE_KEY, key)), "full_by_seed": per_seed.astype(float),
            "full_source": source if len(values) else "none", "full_mean": full_mean,
            "full_std": values.std(ddof=1) if len(values) > 1 else 0.0 if len(values) else math.nan,
            "full_seeds": len(values), "full_failed_seeds": failed, "chance": chance,
            "dev_examples": n if n is not None else -1, "min_above_chance": margin,
            "learned": learned(full_mean, chance, margin),
        })
    columns = [*CURVE_KEY, "full_by_seed", "full_source", "full_mean", "full_std", "full_seeds", "full_failed_seeds",
               *FULL_CHANCE]
    return pd.DataFrame(out, columns=columns)


FULL_CHANCE = ("chance", "dev_examples", "min_above_chance", "learned")  # dev_examples -1: unknown


# ---------------------------------------------------------------- matching and super tickets


def super_tickets(values: pd.DataFrame, curve: pd.DataFrame, full: pd.DataFrame) -> pd.DataFrame:
    """Every ticket curve's levels with its matching sparsities, super ticket, its tests and phase transition."""
    seeds = values[values["kind"] == "ticket"].groupby(CURVE_KEY, sort=True)
    full = full.set_index(CURVE_KEY)
    rows = []
    for key, levels in curve[curve["kind"] == "ticket"].groupby(CURVE_KEY, sort=True):
        rows += _curve_rows(key, levels.set_index("sparsity").sort_index(), seeds.get_group(key),
                            full.loc[key] if key in full.index else None)
    return pd.DataFrame(rows)


def _curve_rows(key: tuple, levels: pd.DataFrame, seeds: pd.DataFrame, full: pd.Series | None) -> list[dict]:
    full_mean = float(full["full_mean"]) if full is not None else math.nan
    full_std = float(full["full_std"]) if full is not None else math.nan
    chance = {k: full[k] for k in FULL_CHANCE} if full is not None else {
        "chance": math.nan, "dev_examples": -1, "min_above_chance": math.nan, "learned": True}
    # The matching rules, once: Chen et al.'s (within one std of the full model) and the strict one. A full
    # model that did not beat chance learned nothing a ticket could match or beat: no level is judged (no
    # matching level, no super ticket, no phase transition).
    pruned_level = (levels.index > 0) & bool(chance["learned"])
    levels["matches_paper"] = pruned_level & (levels["mean"] >= full_mean - full_std)
    levels["matches_strict"] = pruned_level & (levels["mean"] >= full_mean)
    pruned = levels[pruned_level]
    test = super_test(pruned, seeds, full["full_by_seed"] if full is not None else pd.Series(dtype=float))
    best = pruned.loc[test["super_sparsity"]] if not math.isnan(test["super_sparsity"]) else None
    curve = {
        **dict(zip(CURVE_KEY, key)), "setting_label": levels["setting_label"].iloc[0],
        "metric_name": levels["metric_name"].iloc[0], "metric_convention": levels["metric_convention"].iloc[0],
        "full_mean": full_mean, "full_std": full_std, "full_seeds": int(full["full_seeds"]) if full is not None else 0,
        "full_failed_seeds": int(full["full_failed_seeds"]) if full is not None else 0,
        "full_source": full["full_source"] if full is not None else "none", **chance,
        # an empty index's max() is nan: no level matches
        "matching_sparsity_paper": float(levels.index[levels["matches_paper"]].max()),
        "matching_sparsity_strict": float(levels.index[levels["matches_strict"]].max()),
        "super_mean": float(best["mean"]) if best is not None else math.nan,
        "super_std": float(best["std"]) if best is not None else math.nan,
        "super_seeds": int(best["seeds"]) if best is not None else 0,
        "gain": float(best["mean"]) - full_mean if best is not None else math.nan, **test,
        "phase_transition": phase_transition(pruned.index.to_numpy(), pruned["mean"].to_numpy(), full_mean),
    }
    return [
        {
            **curve, "sparsity": float(s), "mean": float(lv["mean"]), "std": float(lv["std"]), "seeds": int(lv["seeds"]),
            "failed_seeds": int(lv["failed_seeds"]), "trajectories": int(lv["trajectories"]),
            "matches_paper": bool(lv["matches_paper"]), "matches_strict": bool(lv["matches_strict"]),
            "is_super": bool(s == curve["super_sparsity"]),
        }
        for s, lv in levels.iterrows()
    ]


def super_test(pruned: pd.DataFrame, seeds: pd.DataFrame, full_by_seed: pd.Series) -> dict:
    """The super ticket of one curve (`pruned`: its levels > 0) and its tests (`stats.selection_test`, and
    Welch's for comparison) on the per-seed ticket values `seeds` and full-model values `full_by_seed`."""
    nan = {"super_sparsity": math.nan, "levels_tested": 0, "t_paired": math.nan, "p_paired": math.nan,
           "p_selection": math.nan, "holdout_sparsity": math.nan, "holdout_seeds": 0, "p_holdout": math.nan,
           "t_statistic": math.nan, "p_welch": math.nan}
    if pruned.empty:
        return nan
    matrix = seeds.set_index(["sparsity", "seed"])["metric"].unstack("seed")
    columns = sorted(set(matrix.columns) | set(full_by_seed.index))
    matrix = matrix.reindex(index=pruned.index, columns=columns)
    full = full_by_seed.reindex(columns).to_numpy(dtype=float)
    sparsities = pruned.index.to_numpy(dtype=float)
    r = selection_test(matrix.to_numpy(dtype=float), full, sparsities, pruned["mean"].to_numpy(dtype=float))
    level, held = int(r["level"]), int(r["holdout_level"])
    if level < 0:
        return {**nan, "levels_tested": int(r["levels_tested"])}
    chosen = matrix.iloc[level].dropna().to_numpy()
    t_welch, p_welch = welch_greater(chosen, full_by_seed.dropna().to_numpy(dtype=float))
    return {
        "super_sparsity": float(sparsities[level]), "levels_tested": int(r["levels_tested"]),
        "t_paired": float(r["t_paired"]), "p_paired": float(r["p_paired"]), "p_selection": float(r["p_selection"]),
        "holdout_sparsity": float(sparsities[held]) if held >= 0 else math.nan,
        "holdout_seeds": int(r["holdout_seeds"]), "p_holdout": float(r["p_holdout"]),
        "t_statistic": float(t_welch), "p_welch": float(p_welch),
    }


def phase_transition(sparsities: np.ndarray, means: np.ndarray, full_mean: float) -> bool:
    """True if the curve (sparsity > 0, ascending) exceeds `full_mean` somewhere and is below it at a higher sparsity."""
    order = np.argsort(sparsities)
    means = np.asarray(means, dtype=float)[order]
    above = np.flatnonzero(means > full_mean)
    return bool(len(above) and (means[above[0] + 1:] < full_mean).any())


# ---------------------------------------------------------------- transfer


TRANSFER_TOLERANCE = 0.01  # sparsities closer than this are one level (transfer.TOLERANCE)
# The source_task of a transfer's null masks (tickets.RANDOM, tickets.ONESHOT): a floor, not a source ticket.
NULL_SOURCES = ("random", "oneshot")


def transfer(values: pd.DataFrame, curve: pd.DataFrame, full: pd.DataFrame) -> pd.DataFrame:
    """Each transferred ticket against the target's own ticket at the same sparsity (Chen et al. 2020).

    TRANSFER(S, T) is a source task's mask fine-tuned on target T, over seeds; TRANSFER(T, T) is T's own
    ticket at the same level (the nearest ticket level within 0.01, of the same setting where T has that
    setting, else of any setting of T: `own_setting_id` says which). Chen et al.'s rule: S's ticket
    *transfers* to T when mean(S, T) >= mean(T, T) - std(T, T) over seeds (`transfers`; with one own seed
    the std is 0), strictly when mean(S, T) >= mean(T, T) (`transfers_strict`). A source ticket is
    *universal* at its level when it transfers to every target it was trained on (`universal`,
    `universal_strict`). A random mask at the same sparsity on T (source `random`) is the floor
    (`random_mean`); one-shot magnitude pruning of T's rewind weights (source `oneshot`, `oneshot_mean`,
    `vs_oneshot`) is the null a ticket found without training-moved weights would equal (issue 17: an MLM
    ticket from rounds too short to move its mask). Their own rows say how they compare. No verdict (`learned` False) where T's full model, or
    S's of the same setting, did not beat chance (`full_model`): a ticket of a model that learned nothing; and
    none (`own_learned` False) where T's own ticket at that level did not beat T's chance by the same margin:
    a transfer that "matches" a ticket at chance matches nothing. Universality is judged over every target of
    the source ticket whatever each target's settings (a per-task setting gives each target its own setting_id).
    """
    moved = values[values["kind"] == "transfer"]
    agg = level_stats(moved, ["model", "method", "source_task", "task", "setting_id", "sparsity"])
    own = curve[curve["kind"] == "ticket"]
    by_curve = full.set_index(CURVE_KEY)  # full_model() always gives chance and min_above_chance (NaN: unknown)
    full_mean, learned_by = by_curve["full_mean"], by_curve["learned"]
    nulls = {null: agg[agg["source_task"] == null] for null in NULL_SOURCES}
    rows = []
    for r in agg.to_dict("records"):
        key = tuple(r[k] for k in CURVE_KEY)
        match = _own_level(own, r)
        null_means = {f"{null}_mean": _level_mean(rows_, key, r["sparsity"]) for null, rows_ in nulls.items()}
        own_mean = match["mean"] if match is not None else math.nan
        own_std = (0.0 if match["seeds"] == 1 else match["std"]) if match is not None else math.nan
        fm = float(full_mean.get(key, math.nan))
        source_key = (r["model"], r["method"], r["source_task"], r["setting_id"])
        judged = bool(learned_by.get(key, True)) and bool(learned_by.get(source_key, True))
        own_learned = learned(own_mean, float(by_curve["chance"].get(key, math.nan)),
                              float(by_curve["min_above_chance"].get(key, math.nan)))
        verdict = match is not None and judged and own_learned
        rows.append({
            **r, "own_setting_id": match["setting_id"] if match is not None else None,
            "ticket_sparsity": match["sparsity"] if match is not None else math.nan, "ticket_mean": own_mean,
            "ticket_std": own_std, "ticket_seeds": int(match["seeds"]) if match is not None else 0,
            **null_means, "full_mean": fm, "vs_ticket": r["mean"] - own_mean, "vs_full": r["mean"] - fm,
            "vs_oneshot": r["mean"] - null_means["oneshot_mean"],
            "transfers": bool(r["mean"] >= own_mean - own_std) if verdict else None,
            "transfers_strict": bool(r["mean"] >= own_mean) if verdict else None,
            "learned": judged, "own_learned": own_learned,
        })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    others = (out["source_task"] != out["task"]) & ~out["source_task"].isin(NULL_SOURCES)
    groups = ["model", "method", "source_task", "sparsity"]
    for column, rule in (("universal", "transfers"), ("universal_strict", "transfers_strict")):
        every = out[others].groupby(groups)[rule].agg(lambda v: bool(v.notna().all() and v.astype(bool).all()))
        out[column] = [bool(every.get(tuple(r[g] for g in groups), False)) if o else None
                       for r, o in zip(out.to_dict("records"), others)]
    return out


def _level_mean(agg: pd.DataFrame, key: tuple, sparsity: float) -> float:
    """The mean of `agg`'s row of curve `key` at `sparsity` (within the tolerance), NaN where there is none."""
    near = agg[(agg[list(CURVE_KEY)] == list(key)).all(axis=1) & ((agg["sparsity"] - sparsity).abs() <= TRANSFER_TOLERANCE)]
    return float(near["mean"].iloc[0]) if len(near) else math.nan


def _own_level(own: pd.DataFrame, r: dict):
    """The target's own ticket level nearest a transfer's sparsity (within the tolerance): same setting first."""
    of_task = own[(own["model"] == r["model"]) & (own["method"] == r["method"]) & (own["task"] == r["task"])]
    near = of_task[(of_task["sparsity"] - r["sparsity"]).abs() <= TRANSFER_TOLERANCE]
    if near.empty:
        return None
    near = near.assign(other=near["setting_id"] != r["setting_id"], off=(near["sparsity"] - r["sparsity"]).abs())
    return near.sort_values(["other", "off", "seeds"], ascending=[True, True, False]).iloc[0]

