"""The chosen tickets' masks: which mask is a curve's matching or super ticket, how much two tasks' masks
share (overlap), and where a ticket prunes (per-layer sparsity, layer collapse). Rules: `analysis.tables` and `curves`.
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations, product
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
import pandas as pd

from .curves import CURVE_KEY, SPARSITY_DECIMALS
from ..errors import ResultsError
from ..models import layer_of, tensor_kind
from ..store import ResultsStore, first_line

if TYPE_CHECKING:  # masks import torch; analysis loads it only when masks are read
    import torch

    from ..masks import Mask


def ticket_masks(store: ResultsStore, rounds: pd.DataFrame, supers: pd.DataFrame, which: str) -> pd.DataFrame:
    """Per (curve, seed) the mask id of the ticket at the matching ("matching", paper rule) or super
    ("super") sparsity of `scored` rounds; curves without such a ticket or without stored masks are left
    out (with a warning for masks that rows name but the store lacks)."""
    column = {"matching": "matching_sparsity_paper", "super": "super_sparsity"}[which]
    levels = supers.drop_duplicates(CURVE_KEY)[[*CURVE_KEY, column]].dropna().rename(columns={column: "level"})
    tickets = rounds[(rounds["kind"] == "ticket") & rounds["mask_id"].notna()]
    tickets = tickets.assign(level_here=tickets["sparsity"].astype(float).round(SPARSITY_DECIMALS))
    merged = tickets.merge(levels, on=CURVE_KEY)
    merged = merged[np.isclose(merged["level_here"], merged["level"])]
    merged = merged.sort_values([*CURVE_KEY, "seed", "finished_at"], na_position="first")
    merged = merged.drop_duplicates([*CURVE_KEY, "seed"], keep="last")
    stored = merged["mask_id"].map(store.has_mask).astype(bool)
    if not stored.all():
        warnings.warn(f"{(~stored).sum()} {which} ticket mask(s) named in the rounds table are not stored in "
                      f"{store.display(store.path('masks'))} (e.g. {merged.loc[~stored, 'mask_id'].iloc[0]}); "
                      "overlap and layer sparsity leave them out", stacklevel=2)
        merged = merged[stored]
    return merged[[*CURVE_KEY, "seed", "mask_id"]].assign(sparsity=merged["level"]).reset_index(drop=True)


# ---------------------------------------------------------------- overlap of matching tickets


def overlap(
    store: ResultsStore, chosen: pd.DataFrame, load: Callable[[str], Mask],
    num_heads: int | Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Jaccard overlap of the matching tickets (paper rule) of every pair of tasks of one model and method.

    Settings are paired first: the setting_ids both tasks have a matching ticket for, each with itself; a
    pair sharing none pairs every setting of one with every setting of the other. Within a setting pair,
    masks are paired seed by seed where both have the seed, otherwise the first seed of each. Counts are
    given overall, per layer and per tensor kind, each with the Jaccard expected of two independent random
    masks of the same sparsities in that group; structured tickets add shared heads and FFN neurons.
    """
    rows = []
    for (model, method), group in chosen.groupby(["model", "method"], sort=True):
        by_task = {task: {s: g.set_index("seed") for s, g in tg.groupby("setting_id", sort=True)}
                   for task, tg in group.groupby("task", sort=True)}
        # Read the model's config once per group, and only when there is a pair to count heads for.
        heads = _heads(model, num_heads) if _whole_units(method) and len(by_task) > 1 else None
        for task_a, task_b in combinations(sorted(by_task), 2):
            a, b = by_task[task_a], by_task[task_b]
            settings = [(s, s) for s in sorted(set(a) & set(b))] or list(product(sorted(a), sorted(b)))
            for setting_a, setting_b in settings:
                ident = {"model": model, "method": method, "task_a": task_a, "task_b": task_b,
                         "setting_id_a": setting_a, "setting_id_b": setting_b}
                rows += _pair_rows(store, ident, a[setting_a], b[setting_b], load, method, heads)
    return pd.DataFrame(rows)


def _pair_rows(store: ResultsStore, ident: dict, a: pd.DataFrame, b: pd.DataFrame, load: Callable[[str], Mask],
               method: str, heads: int | None) -> list[dict]:
    common = sorted(set(a.index) & set(b.index))
    rows = []
    for seed_a, seed_b in [(s, s) for s in common] or [(min(a.index), min(b.index))]:
        ra, rb = a.loc[seed_a], b.loc[seed_b]
        mask_a, mask_b = load(ra["mask_id"]), load(rb["mask_id"])
        _check_layout(store, mask_a, mask_b, ra["mask_id"], rb["mask_id"])
        masks = {"seed_a": seed_a, "seed_b": seed_b, "mask_id_a": ra["mask_id"], "mask_id_b": rb["mask_id"],
                 "sparsity_a": ra["sparsity"], "sparsity_b": rb["sparsity"]}
        counts = tensor_counts(mask_a, mask_b)
        if _whole_units(method):
            counts = pd.concat([counts, unit_counts(mask_a, mask_b, heads)])
        rows += [{**ident, **masks, **r} for r in aggregate_counts(counts)]
    return rows


def _whole_units(method: str) -> bool:
    """Whether a method's masks remove whole heads and FFN units (then shared units are counted too)."""
    from ..pruning import METHODS

    return method in METHODS and METHODS[method].whole_units


def tensor_counts(mask_a, mask_b) -> pd.DataFrame:
    """Per tensor: its layer and kind, size, kept weights in each mask, intersection and union."""
    rows = []
    for name, a, b in shared_tensors(mask_a, mask_b):
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
    for name, a, b in shared_tensors(mask_a, mask_b):
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
    from ..masks import Mask

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


def shared_tensors(mask_a, mask_b) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, tensor of a, tensor of b) of every tensor both masks hold. An MLM ticket has no pooler (its model
    has none) while a GLUE ticket may prune it: two tickets are compared on the encoder they share."""
    return [(name, a, mask_b.tensors[name]) for name, a in mask_a.tensors.items() if name in mask_b.tensors]


def _check_layout(store: ResultsStore, a, b, id_a: str, id_b: str) -> None:
    common = set(a.shapes) & set(b.shapes)
    wrong = sorted(n for n in common if a.shapes[n] != b.shapes[n])
    if wrong or not common:
        diff = wrong[0] if wrong else sorted(set(a.shapes) ^ set(b.shapes))[0]
        path_a, path_b = (store.display(store.path("masks", f"{i}.parquet")) for i in (id_a, id_b))
        raise ResultsError(f"{path_a} and {path_b}: the masks' tensors or shapes disagree (first at {diff!r}); cannot compare")


def _heads(model: str, num_heads: int | Mapping[str, int] | None) -> int | None:
    if isinstance(num_heads, int):
        return num_heads
    if isinstance(num_heads, Mapping) and model in num_heads:
        return int(num_heads[model])
    try:
        from transformers import AutoConfig

        from ..models import resolve_model

        return int(AutoConfig.from_pretrained(resolve_model(model)).num_attention_heads)
    except Exception as exc:  # offline hub id, deleted directory: heads are then simply not counted
        warnings.warn(f"model {model!r}: cannot read its head count ({first_line(exc)}); shared heads not counted; "
                      f"pass num_heads", stacklevel=2)
        return None


# ---------------------------------------------------------------- layer sparsity and collapse


def layer_sparsity(matching: pd.DataFrame, supers: pd.DataFrame, load: Callable[[str], Mask]) -> pd.DataFrame:
    """Per curve, the sparsity of every layer of its matching ticket (or, lacking one, its super ticket), first
    seed, and whether the layer holds a collapsed tensor (`Mask.collapsed`: nearly all of it pruned while
    the mask as a whole is not).

    `matching` and `supers` are `ticket_masks` tables; "matching" sorts before "super", so a curve's matching
    ticket wins even when only its super ticket exists for a lower seed."""
    chosen = pd.concat([matching.assign(ticket="matching"), supers.assign(ticket="super")])
    chosen = chosen.sort_values([*CURVE_KEY, "ticket", "seed"], kind="stable").drop_duplicates(CURVE_KEY, keep="first")
    rows = []
    for r in chosen.to_dict("records"):
        mask = load(r["mask_id"])
        collapsed: dict[str, list[str]] = {}
        for name in mask.collapsed():
            collapsed.setdefault(layer_of(name), []).append(name)
        rows += [{**r, "layer": layer, "layer_sparsity": s, "collapsed": layer in collapsed,
                  "collapsed_tensors": ", ".join(collapsed.get(layer, []))}
                 for layer, s in mask.sparsity_per_layer().items()]
    return pd.DataFrame(rows)
