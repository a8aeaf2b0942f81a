"""The multi-task findings: per task and arm over seeds (with the paired test against `plain`), how much the
tasks' tickets share, and a bar chart. Inputs are the stored rows and masks; nothing here trains.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .curves import CORRELATIONS, MIN_ABOVE_CHANCE, chance_margin, dev_examples, learned, scored
from .overlap import overlap
from .stats import holm, paired_greater
from ..store import ResultsStore
from ..tasks import TASKS

AVERAGE = "average"  # the task-average row (GLUE's score: the mean of each task's main metric)
TABLE_COLUMNS = ["setting_id", "task", "metric_name", "arm", "mean", "std", "seeds", "failed_seeds", "sparsity",
                 "diff_vs_plain", "p_vs_plain", "paired_seeds", "dense"]
SHARING_COLUMNS = ["model", "method", "task_a", "task_b", "unit", "shared", "random", "ratio", "seed_pairs"]
# overlap.aggregate_counts' (scope, group) of each unit counted over the whole encoder.
_UNITS = {("overall", "all"): "weight", ("head", "all"): "head", ("ffn", "all"): "ffn"}
UNIT_NAMES = {"head": "heads", "ffn": "FFN units", "weight": "weights"}
ARM_COLOURS = {"plain": "#7f7f7f", "tickets_share": "#1f77b4", "single": "#ff7f0e", "random": "#2ca02c"}


def _task_order(task: str) -> int:
    return list(TASKS).index(task) if task in TASKS else len(TASKS)


def seed_values(rounds: pd.DataFrame) -> pd.DataFrame:
    """One value per (setting_id, task, arm, seed) of the multi-task rows (collapsed runs at chance), plus the
    per-seed task average where a seed has every task of its experiment."""
    mtl = rounds[rounds["kind"] == "mtl"]
    if mtl.empty:
        return pd.DataFrame(columns=["setting_id", "task", "arm", "seed", "metric", "metric_name", "failed", "sparsity"])
    mtl = scored(mtl)
    keys = ["setting_id", "task", "arm", "seed"]
    values = mtl.groupby(keys, as_index=False).agg(metric=("metric", "mean"), metric_name=("metric_name", "first"),
                                                   failed=("collapsed", "any"), sparsity=("sparsity", "mean"))
    tasks = values.groupby("setting_id")["task"].nunique()
    per_seed = values.groupby(["setting_id", "arm", "seed"], as_index=False).agg(
        metric=("metric", "mean"), n=("task", "nunique"), failed=("failed", "any"), sparsity=("sparsity", "mean"))
    complete = per_seed[per_seed["n"] == per_seed["setting_id"].map(tasks)].drop(columns="n")
    average = complete.assign(task=AVERAGE, metric_name=AVERAGE)
    return pd.concat([values, average[values.columns]], ignore_index=True)


def plain_learned(rounds: pd.DataFrame, min_above_chance: float | None = MIN_ABOVE_CHANCE) -> dict[tuple, bool]:
    """(setting_id, task) -> whether its `plain` arm (the dense multi-task model: this table's full model) beat
    the task's chance value by the margin, the analysis' `learned` rule (`curves.full_model`)."""
    plain = rounds[(rounds["kind"] == "mtl") & (rounds["arm"] == "plain")]
    out = {}
    for (setting, task), g in (scored(plain).groupby(["setting_id", "task"]) if len(plain) else ()):
        metric, chance = g["metric_name"].iloc[0], g["chance_metric"].astype(float).dropna()
        c = float(chance.mean()) if len(chance) else 0.0 if metric in CORRELATIONS else math.nan
        settings = g["settings"].dropna()
        margin = (float(min_above_chance) if min_above_chance is not None else
                  chance_margin(metric, c, dev_examples(task, settings.iloc[0] if len(settings) else None)))
        out[(setting, task)] = learned(float(g.groupby("seed")["metric"].mean().mean()), c, margin)
    return out


def mtl_table(rounds: pd.DataFrame, min_above_chance: float | None = MIN_ABOVE_CHANCE) -> pd.DataFrame:
    """Per experiment (setting_id), task and the task average, and arm: mean and sample std over seeds,
    failed seeds, mean sparsity, `dense` (every seed ran without a mask: plain, or a task without a super ticket
    under the experiment's ticket_rule), and the paired difference from `plain` over the seeds both have, with its
    one-sided p-value (that the arm beats `plain`; NaN under two paired seeds): the exact sign-flip permutation
    test over seeds (`stats.paired_greater`), Holm-adjusted over the tasks (the average included) x arms of
    the experiment, so that no row of its table is below 0.05 by chance more than 5% of the time. A task whose
    `plain` arm did not beat chance (`plain_learned`) learned nothing to compare with: its difference is kept, its
    p is NaN (no verdict)."""
    values = seed_values(rounds)
    learned_of = plain_learned(rounds, min_above_chance)
    rows = []
    for (setting, task), group in values.groupby(["setting_id", "task"], sort=False):
        by_arm = {arm: g.set_index("seed")["metric"] for arm, g in group.groupby("arm", sort=False)}
        plain = by_arm.get("plain")
        for arm, g in group.groupby("arm", sort=False):
            metric = g["metric"].astype(float)
            diff, p, paired = math.nan, math.nan, 0
            if plain is not None and arm != "plain":
                common = sorted(set(plain.index) & set(by_arm[arm].index))
                a, b = by_arm[arm].reindex(common).to_numpy(float), plain.reindex(common).to_numpy(float)
                paired = len(common)
                if paired:
                    diff = float(np.mean(a - b))
                    # no verdict (p) where the dense model learned nothing: the difference is only described
                    p = float(paired_greater(a, b)[1]) if learned_of.get((setting, task), True) else math.nan
            rows.append({"setting_id": setting, "task": task, "metric_name": g["metric_name"].iloc[0], "arm": arm,
                         "mean": float(metric.mean()), "std": float(metric.std(ddof=1)) if len(metric) > 1 else math.nan,
                         "seeds": int(g["seed"].nunique()), "failed_seeds": int(g["failed"].sum()),
                         "sparsity": float(g["sparsity"].mean()), "diff_vs_plain": diff, "p_vs_plain": p,
                         "paired_seeds": paired, "dense": bool((g["sparsity"] == 0).all())})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    if table.empty:
        return table
    # One family per experiment: its table's rows (tasks and average x arms) are read together.
    table["p_vs_plain"] = table.groupby("setting_id", sort=False, dropna=False)["p_vs_plain"].transform(
        lambda p: holm(p.to_numpy(float)))
    arms = ["plain", "tickets_share", "single", "random"]
    order = table.assign(_t=table["task"].map(_task_order), _a=table["arm"].map(lambda a: arms.index(a) if a in arms else 9))
    return order.sort_values(["setting_id", "_t", "_a"], kind="stable").drop(columns=["_t", "_a"]).reset_index(drop=True)


def sharing_table(store: ResultsStore, chosen: pd.DataFrame) -> pd.DataFrame:
    """Per pair of tasks (same model and method): the fraction of attention heads and FFN units (structured
    tickets) and of weights that both tickets keep, as Jaccard |A∩B|/|A∪B| of the kept sets, beside the
    value two independent random tickets of the same sparsities would share; mean over seed pairs.

    `chosen`: one row per (task, seed) with model, method, task, setting_id, seed, mask_id, sparsity (the
    tickets `mtl.super_ticket_masks` picks) — `overlap.overlap` pairs them."""
    if chosen.empty or chosen["task"].nunique() < 2:
        return pd.DataFrame(columns=SHARING_COLUMNS)
    load = functools.lru_cache(maxsize=None)(store.load_mask)
    pairs = overlap(store, chosen, load)
    if pairs.empty:
        return pd.DataFrame(columns=SHARING_COLUMNS)
    pairs = pairs.assign(unit=[_UNITS.get((s, g)) for s, g in zip(pairs["scope"], pairs["group"])]).dropna(subset=["unit"])
    out = pairs.groupby(["model", "method", "task_a", "task_b", "unit"], as_index=False, sort=True).agg(
        shared=("jaccard", "mean"), random=("random_jaccard", "mean"), seed_pairs=("seed_a", "size"))
    out["ratio"] = out["shared"] / out["random"]
    return out[SHARING_COLUMNS]


def chosen_from_rows(rounds: pd.DataFrame, arm: str = "tickets_share") -> pd.DataFrame:
    """The tickets an arm's stored multi-task rows trained under, in the shape `sharing_table` takes — so a
    multi-task results root alone (it stores those masks) gives its sharing table."""
    rows = rounds[(rounds["kind"] == "mtl") & (rounds["arm"] == arm) & rounds["mask_id"].notna()]
    columns = ["model", "method", "task", "setting_id", "seed", "mask_id", "sparsity"]
    return rows.drop_duplicates(["setting_id", "task", "seed"], keep="last")[columns].reset_index(drop=True)


def task_sharing(sharing: pd.DataFrame) -> pd.DataFrame:
    """Per task and unit: the mean over the task's pairs of the shared fraction and of its random value."""
    if sharing.empty:
        return pd.DataFrame(columns=["task", "unit", "shared", "random"])
    both = pd.concat([sharing.assign(task=sharing["task_a"]), sharing.assign(task=sharing["task_b"])])
    return both.groupby(["task", "unit"], as_index=False).agg(shared=("shared", "mean"), random=("random", "mean"))


def format_table(table: pd.DataFrame, sharing: pd.DataFrame | None = None, setting_id: str | None = None) -> str:
    """The per-task table as text: each arm's mean ± std ("dense" beside a masked arm's that trained the task
    without a mask: no super ticket), each arm's paired difference from `plain` (p), and
    beside each task's gain the fraction of heads / FFN units / weights its ticket shares with the others'
    (random expectation in parentheses)."""
    if setting_id is not None:
        table = table[table["setting_id"] == setting_id]
    if table.empty:
        return "(no multi-task rows)"
    arms = list(dict.fromkeys(table["arm"]))
    others = [a for a in arms if a != "plain" and "plain" in arms]
    per_task = task_sharing(sharing if sharing is not None else pd.DataFrame())
    units = [u for u in ("head", "ffn", "weight") if u in set(per_task["unit"])]
    seeds = {a: int(table.loc[table["arm"] == a, "seeds"].max()) for a in arms}
    head = ["task", "metric", *[f"{a} (n={seeds[a]})" for a in arms], *[f"{a} - plain (p)" for a in others],
            *[f"{UNIT_NAMES[u]} shared (random)" for u in units]]
    lines = []
    for task, g in table.groupby("task", sort=False):
        at = g.set_index("arm")
        cells = [task, str(at["metric_name"].iloc[0])]
        cells += [_mean_std(at.loc[a]) + (" (dense)" if a != "plain" and task != AVERAGE and at.loc[a].get("dense", False)
                                          else "") if a in at.index else "—" for a in arms]
        cells += [f"{at.loc[a, 'diff_vs_plain']:+.4f} ({_p(at.loc[a, 'p_vs_plain'])})" if a in at.index else "—" for a in others]
        mine = per_task[per_task["task"] == task].set_index("unit")
        cells += [f"{mine.loc[u, 'shared']:.3f} ({mine.loc[u, 'random']:.3f})" if u in mine.index else "—" for u in units]
        lines.append(cells)
    widths = [max(len(str(r[i])) for r in [head, *lines]) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def _mean_std(r: pd.Series) -> str:
    std = "" if math.isnan(r["std"]) else f" ± {r['std']:.4f}"
    return f"{r['mean']:.4f}{std}"


def _p(p: float) -> str:
    return "—" if p is None or math.isnan(p) else f"p={p:.3g}"


def mtl_figure(table: pd.DataFrame) -> Figure:
    """Grouped bars per task (and the average): each arm's mean over seeds with its std as the error bar; one
    panel per experiment. Drawn on matplotlib's object API (Agg canvas, no pyplot)."""
    settings = list(dict.fromkeys(table["setting_id"])) or [None]
    fig = Figure(figsize=(max(6.0, 1.6 * table["task"].nunique() + 2), 3.6 * len(settings)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(settings), 1, squeeze=False)[:, 0])
    for ax, setting in zip(axes, settings):
        part = table[table["setting_id"] == setting] if setting is not None else table
        tasks = list(dict.fromkeys(part["task"]))
        arms = list(dict.fromkeys(part["arm"]))
        width = 0.8 / max(1, len(arms))
        for i, arm in enumerate(arms):
            at = part[part["arm"] == arm].set_index("task").reindex(tasks)
            x = np.arange(len(tasks)) + (i - (len(arms) - 1) / 2) * width
            ax.bar(x, at["mean"], width, yerr=at["std"].fillna(0), capsize=3, label=arm,
                   color=ARM_COLOURS.get(arm), edgecolor="white")
        ax.set_xticks(np.arange(len(tasks)), [f"{t}\n({part[part['task'] == t]['metric_name'].iloc[0]})" for t in tasks])
        ax.set_ylabel("dev metric (mean ± std over seeds)")
        ax.set_title(f"multi-task arms{f' — experiment {str(setting)[:8]}' if setting else ''}")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.legend(fontsize="small", ncols=len(arms))
    if not len(table):
        axes[0].text(0.5, 0.5, "no multi-task rows", ha="center", va="center", transform=axes[0].transAxes)
    return fig
