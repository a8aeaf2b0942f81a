"""How many training steps the Optuna + ASHA sweep spends to locate each task's super ticket, against the
exhaustive grid that defines it (target: <= 35 % of the grid's steps).

Design (MiniLM on CPU-sized GLUE subsets; both sweeps run through `raytickets.sweep.run` on one embedded
local Ray with a private temp dir, and keep their Parquet results under `--out`):

* **grid** (`<out>/grid/results`): for each task in `--tasks` and seed in `--seeds`, one IMP trajectory of
  R rounds (default: Chen et al.'s schedule, 10 % of the original weights per round, levels 10 %..90 %),
  as a grid sweep (mode grid, scheduler none). Its super ticket per task = the level with the best mean
  ticket metric over seeds. Grid cost = training steps of every row it computed (a full model once per
  task and seed; each level once, since a trajectory's rounds are the grid's levels in order).
* **search** (`<out>/search/results`): Optuna (seeded TPE) + ASHA (on the per-round gain, from
  `--grace-period` rounds on, reduction 2) over task x `prune.target_sparsity` in the grid's levels, N
  samples, on one seed (the grid's first: one curve per task shows where its transition is; the grid's
  extra seeds make the answer the search is checked against robust). A trial runs the rounds up to its target,
  but ends after the first round whose ticket falls `--min-gain` below its full model
  (`prune.min_gain`: past the phase transition). Trials that differ only in their target share rounds
  on disk, so a trial pays only for rounds no earlier trial trained, and the full model of a task is
  trained once. Its located super ticket per task = the level whose ticket rows (every row any trial
  computed) have the best mean metric; it *locates* the grid's super ticket if within one level of it.
  Search cost = training steps of the rows it computed.

The search is cheaper for three reasons the figures separate: one seed instead of the grid's S (full
models: T against T x S), no level past a task's transition trained, and no round trained twice.

Subsets are CPU-sized (256 train / 200 dev examples, 64 tokens, 1 epoch of batch 16 = 16 steps per
fine-tune), with a learning rate of 4e-4: at 5e-5 MiniLM predicts one class on SST-2 after 16 steps, so
every level ties. At this size RTE stays at chance (~0.5; so does MRPC at 1024 examples, and CoLA's
Matthews is 0): it never crosses `min_gain`, so the search walks it as deep as its targets go, and its
best level is a noise peak. "Located" is therefore judged on the tasks where the grid has a super ticket
the analysis module calls significant (its selection-aware p: a paired test of the best level against the
full model over seeds, Holm-adjusted over the levels, p < `--alpha`); every task's figures are printed either way, with each grid seed's own best
level (what a one-curve search could at most find on that seed).

Level means follow the analysis module's rule: a seed's value at a level is the mean of its rows
there, and the level's value the mean over seeds.

A row is "computed" once however many trials carry it: a full-model row reused from the cache, or a
round read from disk by a trial with another target, keeps the start and finish times of the run that
trained it, so rows are counted once per (task, seed, kind, round, started_at, finished_at).

The script also prints the steps the search had spent when every task was located for good (rows in
finish order; from that row on every task stays located): a hindsight figure, since only the grid
tells when that point was reached. With N at or below Optuna's `n_startup_trials` (10 for TPE) most
samples are TPE's random start-up.

    python benchmarks/search_efficiency.py [--out /tmp/search_efficiency] [--samples 12] [--rounds 9]
        [--schedule original] [--rate 0.1] [--tasks sst2,rte] [--seeds 0,1,2] [--min-gain -0.05]
        [--grace-period 3] [--search-seed 0] [--search-only | --analyze-only]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("RAY_ADDRESS", None)  # start a private embedded Ray, never join another

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from raytickets.analysis import tables as analysis  # noqa: E402
from raytickets.sweep import tuner as sweep  # noqa: E402
from raytickets.config import PruneConfig  # noqa: E402
from raytickets.errors import RayticketsError  # noqa: E402
from raytickets.store import ResultsStore  # noqa: E402

from common import add_ray_args, ray_temp_and_port, resources  # noqa: E402  (benchmarks/common.py)

COMPUTED = ["task", "seed", "kind", "round", "started_at", "finished_at"]  # one computation


def levels(args) -> list[float]:
    prune = PruneConfig(schedule=args.schedule, rate=args.rate, rounds=args.rounds)
    return [prune.sparsity_at(r) for r in range(1, args.rounds + 1)]


def config(args, name: str, search: dict) -> dict:
    return {
        "name": name,
        "storage_path": str(args.out),
        "ticket": {
            "task": args.tasks[0],
            "model": args.model,
            "data": {"glue_dir": args.glue_dir, "max_train_examples": args.max_train_examples,
                     "max_dev_examples": args.max_dev_examples, "max_seq_length": args.max_seq_length,
                     "cache_dir": str(args.out / "data")},  # tokenised once for both sweeps (no training in it)
            "train": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                      "seed": 0},
            "prune": {"method": "magnitude", "schedule": args.schedule, "rate": args.rate, "rounds": args.rounds},
        },
        "search": {"max_concurrent_trials": 1, "seed": args.search_seed, **search},
        "resources": resources(args.cpus),
    }


def grid_config(args) -> dict:
    return config(args, "grid", {
        "mode": "grid", "num_samples": 1, "scheduler": "none",
        "space": {"task": {"values": args.tasks}, "train.seed": {"values": args.seeds}},
    })


def search_config(args) -> dict:
    data = config(args, "search", {
        "mode": "optuna", "num_samples": args.samples, "scheduler": "asha", "grace_period": args.grace_period,
        "reduction_factor": 2, "metric": "gain",
        "space": {"task": {"values": args.tasks}, "prune.target_sparsity": {"values": levels(args)}},
    })
    data["ticket"]["train"]["seed"] = args.seeds[0]  # one curve per task locates its transition
    data["ticket"]["prune"]["min_gain"] = args.min_gain
    return data


def run_sweep(data: dict, out: Path, temp_dir: str, port: int) -> float:
    path = out / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = sweep.load_config(str(path), [])
    started = time.perf_counter()
    try:
        sweep.run(cfg, temp_dir=temp_dir, dashboard_port=port)
    except RayticketsError as e:  # analyse what finished; say so
        print(f"warning: sweep {cfg.name}: {e}", flush=True)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------------
# Analysis: everything below reads only the two Parquet results roots


def trial_order(experiment: Path, trials) -> dict[str, int]:
    """Tune's start order of each trial: the counter in its folder name `trial_driver_<id>_<n>_<params>_<time>`."""
    order = {}
    for trial in trials:
        for d in experiment.glob(f"trial_driver_{trial}_*"):
            counter = d.name[len(f"trial_driver_{trial}_"):].split("_", 1)[0]
            if counter.isdigit():
                order[trial] = int(counter)
    return order


def computed(rounds: pd.DataFrame, order: dict[str, int]) -> pd.DataFrame:
    """Each computation once, attributed to the first trial (in Tune's start order) that carries it."""
    rounds = rounds.assign(trial_no=rounds["trial"].map(order)).sort_values(["trial_no", "round"])
    return rounds.drop_duplicates(subset=COMPUTED).sort_values("finished_at").reset_index(drop=True)


def with_level(rows: pd.DataFrame, grid_levels: list[float]) -> pd.DataFrame:
    """Index of the nearest grid level of each ticket row (masks hit the schedule to a weight or two)."""
    tickets = rows[rows["kind"] == "ticket"].copy()
    lv = np.asarray(grid_levels)
    tickets["level"] = [int(np.abs(lv - s).argmin()) for s in tickets["sparsity"]]
    return tickets


def level_means(tickets: pd.DataFrame) -> pd.DataFrame:
    """Per task and level: the mean over seeds of each seed's mean (the analysis module's rule), and seeds."""
    per_seed = tickets.groupby(["task", "level", "seed"])["metric"].mean().reset_index()
    return per_seed.groupby(["task", "level"])["metric"].agg(["mean", "count"]).reset_index()


def best_levels(tickets: pd.DataFrame) -> dict[str, int]:
    """Per task, the level with the best mean ticket metric (ties: the lower sparsity)."""
    means = level_means(tickets)
    return {task: int(g.sort_values(["mean", "level"], ascending=[False, True]).iloc[0]["level"])
            for task, g in means.groupby("task")}


def located(search_best: dict[str, int], grid_best: dict[str, int], tolerance: int) -> dict[str, bool]:
    return {t: t in search_best and abs(search_best[t] - g) <= tolerance for t, g in grid_best.items()}


def grid_super_tickets(grid_raw: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Per task: the analysis module's super ticket of the grid (sparsity, selection-aware p over seeds)."""
    from raytickets.analysis.curves import scored

    table = analysis.findings(scored(grid_raw))["super_tickets"]
    best = table[table["is_super"]] if len(table) else table
    return {row.task: (float(row.super_sparsity), float(row.p_selection)) for row in best.itertuples()}


def steps_to_locate(rows: pd.DataFrame, grid_levels, grid_best, tolerance) -> int | None:
    """Cumulative steps (rows in finish order) from which on every task stays located; None if never."""
    cumulative = rows["training_steps"].cumsum().tolist()
    first = None
    for i in range(len(rows) - 1, -1, -1):  # walk back while every task is located
        tickets = with_level(rows.iloc[: i + 1], grid_levels)
        if not all(located(best_levels(tickets), grid_best, tolerance).values()):
            break
        first = i
    return None if first is None else int(cumulative[first])


def report(args) -> None:
    grid_levels = levels(args)
    grid_raw = ResultsStore(args.out / "grid" / "results").rounds()
    search_raw = ResultsStore(args.out / "search" / "results").rounds()
    grid_order = trial_order(args.out / "grid", grid_raw["trial"].unique())
    search_order = trial_order(args.out / "search", search_raw["trial"].unique())
    grid, search = computed(grid_raw, grid_order), computed(search_raw, search_order)
    grid_tickets, search_tickets = with_level(grid, grid_levels), with_level(search, grid_levels)
    grid_best, search_best = best_levels(grid_tickets), best_levels(search_tickets)
    found = located(search_best, grid_best, args.tolerance)
    # A task has a super ticket to locate when the grid shows one the analysis module calls significant
    # (its best level beats the full model over seeds, selection-aware p < alpha); at chance (RTE at CPU
    # sizes) the grid's "best" level is a noise peak that its own seeds do not reproduce.
    significant = grid_super_tickets(grid_raw)
    has_super = {t: t in significant and significant[t][1] < args.alpha for t in grid_best}
    names = [f"{s:.4f}" for s in grid_levels]

    print(f"\nsearch efficiency: model {args.model}, tasks {','.join(args.tasks)}, grid seeds {','.join(map(str, args.seeds))}"
          f" (search: seed {args.seeds[0]}, min_gain {args.min_gain}, ASHA grace {args.grace_period}),"
          f" schedule {args.schedule} rate {args.rate}, {args.rounds} rounds (levels {', '.join(names)}), {args.max_train_examples} train /"
          f" {args.max_dev_examples} dev examples, seq {args.max_seq_length}, batch {args.batch_size}")

    print("\nsearch trials (Tune start order):")
    print(f"  {'trial':14s} {'task':5s} {'seed':>4s} {'target':>7s} {'rounds':>6s} {'of':>3s} {'new steps':>9s}")
    new_steps = search.groupby("trial")["training_steps"].sum()
    for trial, g in search_raw.assign(no=search_raw["trial"].map(search_order)).sort_values("no").groupby("trial", sort=False):
        target = float(g["target_sparsity"].iloc[0])
        need = PruneConfig(schedule=args.schedule, rate=args.rate, rounds=args.rounds,
                           target_sparsity=target).num_rounds()
        tickets = g[g["kind"] == "ticket"].sort_values("round")
        done = int(tickets["round"].max()) if len(tickets) else 0
        last_gain = float(tickets["metric"].iloc[-1] - tickets["full_metric"].iloc[-1]) if len(tickets) else 0.0
        note = "" if done >= need else ("  past the transition (min_gain)" if last_gain < args.min_gain
                                        else "  stopped by ASHA")
        print(f"  {trial:14s} {g['task'].iloc[0]:5s} {int(g['seed'].iloc[0]):4d} {target:7.4f} {done:6d} {need:3d}"
              f" {int(new_steps.get(trial, 0)):9d}{note}")

    print("\nmean ticket metric per level (seeds):")
    print(f"  {'task':5s} {'':7s} " + " ".join(f"{n:>12s}" for n in names) + "   best")
    for task in sorted(grid_best):
        for label, tickets, best in (("grid", grid_tickets, grid_best), ("search", search_tickets, search_best)):
            m = level_means(tickets[tickets["task"] == task]).set_index("level")
            cells = [f"{m.loc[k, 'mean']:.4f} ({int(m.loc[k, 'count'])})" if k in m.index else "-" for k in range(len(names))]
            b = names[best[task]] if task in best else "-"
            print(f"  {task:5s} {label:7s} " + " ".join(f"{c:>12s}" for c in cells) + f"   {b}")

    # How reproducible the grid's answer is: each seed's own best level, and whether it lies within the
    # tolerance of the mean's best (what a one-curve search could at most achieve on that seed).
    per_seed = {seed: best_levels(grid_tickets[grid_tickets["seed"] == seed]) for seed in args.seeds}
    print(f"\n  {'task':5s} {'grid best':>9s} {'search best':>11s}  {'located (within ' + str(args.tolerance) + ' level)':28s}"
          f"  {'grid super ticket p':19s}  grid seeds' own best levels (within tolerance of the grid's best)")
    for task in sorted(grid_best):
        s = names[search_best[task]] if task in search_best else "-"
        exact = " (same level)" if search_best.get(task) == grid_best[task] else ""
        seeds = ", ".join(f"{seed}: {names[b[task]]} ({'yes' if abs(b[task] - grid_best[task]) <= args.tolerance else 'no'})"
                          for seed, b in per_seed.items() if task in b)
        p = f"{significant[task][1]:.3f}" if task in significant else "-"
        p += "" if has_super[task] else " (none)"
        print(f"  {task:5s} {names[grid_best[task]]:>9s} {s:>11s}  {('yes' if found[task] else 'no') + exact:28s}"
              f"  {p:19s}  {seeds}")

    def split(rows):
        full = int(rows.loc[rows["kind"] == "full", "training_steps"].sum())
        return full, int(rows["training_steps"].sum()) - full, len(rows)

    g_full, g_rounds, g_n = split(grid)
    s_full, s_rounds, s_n = split(search)
    g_total, s_total = g_full + g_rounds, s_full + s_rounds
    print(f"\n  grid steps:   {g_total:6d}  ({g_n} fine-tunes: full models {g_full}, rounds {g_rounds})")
    print(f"  search steps: {s_total:6d}  ({s_n} fine-tunes: full models {s_full}, rounds {s_rounds})")
    with_super = [t for t in sorted(grid_best) if has_super[t]]
    print(f"  ratio search / grid: {s_total / g_total:.3f}  (target <= 0.35: {'met' if s_total / g_total <= 0.35 else 'not met'};"
          f" every task located: {'yes' if all(found.values()) else 'no'}; tasks with a significant super ticket"
          f" (p < {args.alpha}): {', '.join(with_super) or 'none'}, located: "
          f"{'yes' if with_super and all(found[t] for t in with_super) else 'no'})")
    # The same (task, seed, round) trained again under the same mask by a trial with another target:
    # target_sparsity enters the run id, so trajectories that share a prefix of rounds do not share them.
    tickets = search[search["kind"] == "ticket"]
    again = int(tickets[tickets.duplicated(["task", "seed", "round", "mask_id"])]["training_steps"].sum())
    print(f"  of the search's steps, prefix rounds trained again by trials with another target: {again}"
          f" (without them {s_total - again}, ratio {(s_total - again) / g_total:.3f})")
    to_locate = steps_to_locate(search, grid_levels, {t: grid_best[t] for t in with_super}, args.tolerance)
    if not with_super or to_locate is None:
        print("  steps until every task with a super ticket was located for good: never (not located at the end)")
    else:
        print(f"  steps until every task with a super ticket was located for good: {to_locate}"
              f" ({to_locate / g_total:.3f} of the grid)")
    print(f"  results: {args.out / 'grid' / 'results'}, {args.out / 'search' / 'results'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/search_efficiency", help="its grid/, search/ and data/ folders are replaced")
    p.add_argument("--model", default="minilm")
    p.add_argument("--tasks", default="sst2,rte")
    p.add_argument("--seeds", default="0,1,2", help="the grid's seeds; the search walks the first")
    p.add_argument("--schedule", default="original", choices=["original", "remaining"])
    p.add_argument("--rate", type=float, default=0.1, help="default: Chen et al.'s 10%% of the weights per round")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--samples", type=int, default=12, help="Optuna trials of the search")
    p.add_argument("--min-gain", type=float, default=-0.05, help="the search's prune.min_gain")
    p.add_argument("--grace-period", type=int, default=3, help="rounds before ASHA may stop a search trial")
    p.add_argument("--search-seed", type=int, default=0, help="seed of Optuna's TPE sampler")
    p.add_argument("--tolerance", type=int, default=1, help="levels the search may be off by and still locate")
    p.add_argument("--alpha", type=float, default=0.05, help="significance of a grid super ticket worth locating")
    p.add_argument("--max-train-examples", type=int, default=256)
    p.add_argument("--max-dev-examples", type=int, default=200)
    p.add_argument("--max-seq-length", type=int, default=64)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=4e-4,
                   help="4e-4: in 16 steps MiniLM at 5e-5 predicts one class on SST-2 (every level ties)")
    add_ray_args(p)
    p.add_argument("--analyze-only", action="store_true", help="print the figures of results already under --out")
    p.add_argument("--search-only", action="store_true",
                   help="keep the grid under --out (same grid flags) and run the search again, e.g. with another --search-seed")
    args = p.parse_args(argv)
    args.out = Path(args.out).resolve()
    args.tasks = args.tasks.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]

    if args.search_only and not (args.out / "grid" / "results").is_dir():
        p.error(f"--search-only: no grid results under {args.out / 'grid'}")
    if not args.analyze_only:
        sweeps = [("search", search_config(args))]
        if not args.search_only:
            sweeps.insert(0, ("grid", grid_config(args)))
        # Fresh caches: nothing computed before counts. The search keeps its own work dir, so a kept
        # grid (--search-only) lends it no trained round; the tokenised data holds no training.
        for name, _ in sweeps:
            shutil.rmtree(args.out / name, ignore_errors=True)
        if not args.search_only:
            shutil.rmtree(args.out / "data", ignore_errors=True)
        args.out.mkdir(parents=True, exist_ok=True)
        temp_dir, port = ray_temp_and_port(args)
        walls = {}
        for name, data in sweeps:
            print(f"\n=== {name} ===", flush=True)
            walls[name] = run_sweep(data, args.out, temp_dir, port)  # the second joins the Ray the first started
        import ray

        ray.shutdown()
        print("\nwall time: " + ", ".join(f"{name} {wall:.0f} s" for name, wall in walls.items()), flush=True)
    report(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
