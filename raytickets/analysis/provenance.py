"""Where results came from and what they cost: the sweeps that wrote them (their stored records), the dates,
data sizes and seeds, and the fine-tunes behind the rows — the report's header.

A fine-tune is counted once however many rows name it: a full model or a round shared by several trajectories
(runs indexed by their settings) is trained once and written once per trajectory with the same `started_at`.
CPU-hours are the fine-tunes' own wall time × Ray Train workers × CPUs per worker of the sweep that ran them (its
record's `resources`); trial start-up, data preparation and the trial driver's share are not in any row.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from .curves import dev_examples

# The columns that name one fine-tune among the rows that repeat it (`tickets._read_rows` relabels a shared row
# with the reading trajectory but keeps its times and its numbers).
FINE_TUNE = ["task", "kind", "source_task", "arm", "round", "sparsity", "started_at", "finished_at", "training_steps",
             "wall_seconds"]


def fine_tunes(rounds: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct fine-tune of the raw rows; a row without `started_at` (older files) counts alone."""
    timed = rounds[rounds["started_at"].notna()]
    untimed = rounds[rounds["started_at"].isna()]
    return pd.concat([timed.drop_duplicates(FINE_TUNE), untimed], ignore_index=True)


def resources_by_sweep(records: list[dict]) -> dict[str, dict | None]:
    """The `resources` section per sweep name; None where records of one name disagree (rows carry no digest)."""
    out: dict[str, dict | None] = {}
    for record in records:
        res = (record.get("config") or {}).get("resources")
        name = record.get("name")
        out[name] = res if name not in out or out[name] == res else None
    return out


def cost(rounds: pd.DataFrame, records: list[dict]) -> dict:
    """The fine-tunes behind the rows: their count per kind, training steps, summed wall time, CPU- and GPU-hours
    (`unpriced`: fine-tunes whose sweep has no record, so no resources to price them by)."""
    runs = fine_tunes(rounds)
    resources = resources_by_sweep(records)
    cpu = gpu = 0.0
    unpriced = 0
    for sweep, group in runs.groupby(runs["sweep"].fillna(""), sort=False):
        res = resources.get(sweep)
        seconds = float(group["wall_seconds"].astype(float).fillna(0).sum())
        if not res or group["wall_seconds"].isna().any():
            unpriced += len(group) if not res else int(group["wall_seconds"].isna().sum())
            if not res:
                continue
        workers = float(res.get("num_workers", 1))
        cpu += seconds * workers * float(res.get("cpus_per_worker", 1.0)) / 3600
        if res.get("use_gpu"):
            gpu += seconds * workers * float(res.get("gpus_per_worker", 1.0)) / 3600
    steps = runs["training_steps"]
    return {
        "fine_tunes": len(runs), "by_kind": runs["kind"].value_counts().sort_index().to_dict(),
        "training_steps": int(steps.sum()) if steps.notna().any() else None, "steps_missing": int(steps.isna().sum()),
        "wall_hours": float(runs["wall_seconds"].astype(float).sum()) / 3600 if runs["wall_seconds"].notna().any()
        else None, "wall_missing": int(runs["wall_seconds"].isna().sum()),
        "cpu_hours": cpu if unpriced < len(runs) else None, "gpu_hours": gpu if unpriced < len(runs) else None,
        "unpriced": unpriced, "nodes": int(runs["node_id"].nunique()),
        "rows": len(rounds),
    }


def dates(rounds: pd.DataFrame) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """First start and last finish over the rows (None where no row has one)."""
    start = rounds["started_at"].dropna()
    end = rounds["finished_at"].dropna()
    return (start.min() if len(start) else None), (end.max() if len(end) else None)


def data_sizes(rounds: pd.DataFrame) -> pd.DataFrame:
    """Per task: dev examples scored (`curves.dev_examples`: the cap per split, capped by the GLUE dev size; -1
    unknown), the train examples in words (`data.max_train_examples` caps them) and the seeds."""
    out = []
    for task, group in rounds.groupby("task", sort=True):
        settings = group["settings"].dropna()
        text = settings.iloc[0] if len(settings) else None
        data = (json.loads(text).get("data") or {}) if isinstance(text, str) else None
        dev = dev_examples(task, text)
        seeds = sorted(int(s) for s in group["seed"].dropna().unique())
        out.append({"task": task, "dev_examples": dev if dev is not None else -1,
                    "train": "unknown (no settings recorded)" if data is None else
                    f"≤ {data['max_train_examples']}" if data.get("max_train_examples") else "the whole split",
                    "seeds": seeds})
    return pd.DataFrame(out, columns=["task", "dev_examples", "train", "seeds"])


def hours(value: float | None) -> str:
    """Hours for a reader: minutes below one hour."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    return f"{value * 60:.1f} min" if value < 1 else f"{value:.2f} h"
