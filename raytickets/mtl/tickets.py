"""Which tickets the tasks share: each task's super ticket in a results root of single-task trajectories, by
the analysis' rule (`analysis.best_tickets`), mapped to one mask per seed — and every way that can fail — and
whether the task trains through it at all (`TICKET_RULES`) or, lacking a super ticket, dense.
"""

from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

import pandas as pd

from ..tasks import GLUE
from ..errors import ConfigError, ResultsError
from ..store import ResultsStore

# When a task trains through its best level's ticket rather than dense (`MTLConfig.ticket_rule`). The best
# pruned level always exists; it is a *super* ticket only if it beats the full model. Liang et al. train a task
# without one dense: super-structured-lottery-tickets/construct_mtl_mask.py, lines 25-26 and 33-34 (0 heads /
# 0 FFN: an empty mask) with lines 66-73 (mnli and cola at (0, 0) for BERT-base); their README ("Multi-task
# Learning", step 1) picks "the winning tickets that perform the best among all sparsity levels".
SIGNIFICANCE = 0.05
TICKET_RULES = {
    "super": "the best level's mean over seeds beats the full model's mean (Liang et al.'s)",
    # the selection test's p has a floor over n seeds (analysis.stats.paired_greater): with few seeds, none passes
    "significant": f"the analysis' selection test: p_selection < {SIGNIFICANCE:g} (Holm over the levels)",
    "always": "the best level's ticket, even below the full model",
}


def check_ticket_rule(rule: str, field: str = "ticket_rule") -> None:
    if rule not in TICKET_RULES:
        raise ConfigError(f"{field}: unknown rule {rule!r}; allowed: {', '.join(TICKET_RULES)}")


def has_ticket(best: Mapping, rule: str) -> bool:
    """Whether a curve's best level (`analysis.best_tickets` row: mean, full_mean, p_selection, learned) is a
    ticket to train through under `rule`; False: the task trains dense. A full model that did not beat chance
    (`learned` False: the analysis judges no level of its curve) has no super ticket; a p_selection of NaN
    (fewer than two paired seeds) is not significant. ResultsError when `super` has no full model to compare with."""
    check_ticket_rule(rule)
    if rule == "always":
        return True
    if rule == "super" and pd.isna(best["full_mean"]):
        raise ResultsError(f"ticket_rule: super compares with the full model, but {best['task']}'s curve "
                           f"{str(best['setting_id'])[:8]} has no full-model rows; use ticket_rule=always")
    if not best.get("learned", True):
        return False
    if rule == "super":
        return bool(best["mean"] > best["full_mean"])
    return bool(not pd.isna(best["p_selection"]) and best["p_selection"] < SIGNIFICANCE)


def super_ticket_masks(store: ResultsStore, tasks: Sequence[str], seeds: Sequence[int], method: str | None = None,
                       setting_id: str | None = None, task_settings: Mapping[str, str] | None = None,
                       rule: str = "always") -> pd.DataFrame:
    """Each task's super ticket (`analysis.best_tickets`) as one row per seed: its ticket row of that seed
    (model, method, task, setting_id, seed, mask_id, sparsity, metric_name, metric — at chance where it
    collapsed —, metric columns, full_metric, training_steps, settings, ...) plus `level`, the chosen
    sparsity level, and the curve's `best_mean`, `full_mean`, `p_selection`, the analysis' `learned` (with
    `chance`, `min_above_chance`) and `dense`: True where `rule`
    (`TICKET_RULES`) finds no super ticket, so the task trains without a mask. `method` and `setting_id` (or
    its prefix; per task: `task_settings`) narrow the candidates — a root that grew over several settings
    holds several curves per task. ResultsError or ConfigError, naming what is there, when a task or a seed
    has no ticket, when a task has several candidate curves, or when the tickets come from different models."""
    from ..analysis.tables import best_tickets
    from ..analysis.curves import CURVE_KEY, SPARSITY_DECIMALS, scored

    rounds = store.rounds()
    # The best level by the analysis' rule whether or not the full model beat chance (a margin of -inf): `always`
    # trains through it; the analysis' own verdict (`learned`, with its chance and margin) decides the others.
    judged = {tuple(b[k] for k in CURVE_KEY): b for b in best_tickets(store.root)}
    best = [{**b, **{k: judged[key][k] for k in ("learned", "chance", "min_above_chance") if key in judged}}
            for b in best_tickets(store.root, min_above_chance=-math.inf)
            for key in [tuple(b[k] for k in CURVE_KEY)]]
    best = [b for b in best if not pd.isna(b["sparsity"])]  # NaN: a curve without a pruned level
    wanted = {t: (task_settings or {}).get(t, setting_id) for t in GLUE}
    best_any = best
    of_method = [b for b in best if method is None or b["method"] == method]
    best = [b for b in of_method
            if wanted.get(b["task"]) is None or str(b["setting_id"]).startswith(str(wanted[b["task"]]))]
    have = sorted({b["task"] for b in best}, key=list(GLUE).index)
    missing = [t for t in tasks if t not in have]
    for t in missing:  # a setting that matches none of the task's curves is a typo: name it and what there is
        theirs = sorted({str(b["setting_id"])[:8] for b in of_method if b["task"] == t})
        if wanted.get(t) is not None and theirs:
            field = f"task_settings.{t}" if t in (task_settings or {}) else "setting_id"
            raise ConfigError(f"{field}: {wanted[t]!r} is no setting of {t}'s tickets in {store.root}; allowed: "
                              f"{', '.join(theirs)} (or a prefix)")
    if missing:
        others = sorted({b["method"] for b in best_any if b["task"] == missing[0]}) if method is not None else []
        hint = f" ({missing[0]}'s tickets are of method {', '.join(others)}, not {method!r})" if others else ""
        raise ResultsError(f"tickets: no super ticket for {', '.join(missing)} in {store.root}; tasks with one: "
                           f"{', '.join(have) or 'none'}{hint}")
    chosen = {}
    for t in tasks:
        curves = [b for b in best if b["task"] == t]
        if len(curves) > 1:
            listed = ", ".join(f"{b['method']} {str(b['setting_id'])[:8]} ({b['model']})" for b in curves)
            raise ConfigError(f"tickets: {t} has super tickets of {len(curves)} settings in {store.root} ({listed}); "
                              f"choose one with method=, setting_id= or task_settings.{t}=")
        chosen[t] = curves[0]
    models = {b["model"] for b in chosen.values()}
    if len(models) > 1:
        listed = ", ".join(f"{t}: {b['model']}" for t, b in chosen.items())
        raise ConfigError(f"tickets: the tasks' super tickets come from different models ({listed}); the tasks "
                          "share one encoder, so their tickets must be of one model")
    tickets = scored(rounds[(rounds["kind"] == "ticket") & rounds["mask_id"].notna()])
    out = []
    for t, b in chosen.items():
        mine = tickets[(tickets["task"] == t) & (tickets["model"] == b["model"]) & (tickets["method"] == b["method"])
                       & (tickets["setting_id"] == b["setting_id"])
                       & (tickets["sparsity"].round(SPARSITY_DECIMALS) == round(b["sparsity"], SPARSITY_DECIMALS))]
        mine = mine.sort_values("finished_at", na_position="first").drop_duplicates("seed", keep="last")
        absent = [s for s in seeds if s not in set(mine["seed"])]
        if absent:
            raise ResultsError(f"seeds: {t}'s super ticket (sparsity {b['sparsity']:.4f}, setting "
                               f"{str(b['setting_id'])[:8]}) has seeds {sorted(mine['seed'].tolist())} in {store.root}; "
                               f"no ticket for seed {', '.join(map(str, absent))}")
        out.append(mine[mine["seed"].isin(seeds)].assign(
            sparsity=rounds.loc[mine.index, "sparsity"].astype(float), level=round(b["sparsity"], SPARSITY_DECIMALS),
            best_mean=float(b["mean"]), full_mean=float(b["full_mean"]), p_selection=float(b["p_selection"]),
            learned=bool(b.get("learned", True)), chance=float(b.get("chance", math.nan)),
            min_above_chance=float(b.get("min_above_chance", math.nan)), dense=not has_ticket(b, rule)))
    return pd.concat(out, ignore_index=True)


def check_dev_rows(data_cfg, chosen: pd.DataFrame) -> None:
    """The `single` arm is comparable only if both were scored on the same dev rows, equally truncated."""
    for r in chosen.drop_duplicates("task").to_dict("records"):
        data = json.loads(r["settings"]).get("data", {}) if isinstance(r["settings"], str) else {}
        for name in ("max_dev_examples", "seed", "max_seq_length"):
            if name in data and data[name] != getattr(data_cfg, name):
                raise ConfigError(f"data.{name}: {getattr(data_cfg, name)!r}, but {r['task']}'s tickets were scored with "
                                  f"data.{name}={data[name]!r}; the single arm compares on the same dev rows only")
