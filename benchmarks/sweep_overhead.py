"""What Ray Tune + Ray Train add per trial over a plain loop running the same trajectories.

The same small set of IMP trajectories (one task, a grid over `prune.rate`, a few rounds) runs twice,
one mode after the other in this one process:
  sweep - `raytickets.sweep.run`: embedded local Ray (private temp dir, free dashboard port), grid
          search, no scheduler, one Ray Train worker per trial (the trial driver + worker shape of
          configs/smoke.yaml);
  loop  - `Trajectory(cfg, root).run()` for the very same trial configs (`trial.trial_ticket`), one after
          another, writing the same Parquet rows, masks and ticket rows as a sweep worker (`results.Recorder`).
Each mode has its own root (trajectory state, full-model cache, tokenised data), shared by its own
trials the same way, so each mode trains the full model once and every round once.

Training time = sum of `wall_seconds` (fine-tune + dev evaluation) over the rows a mode computed, read
from its own Parquet results; a full-model row reused from the cache appears under every trial with the
same start and finish times and is counted once. What is left of a mode's wall time is the rest of the
work: loading models and data, pruning, saving state, and (sweep only) Ray. So

    overhead per trial = ((sweep wall - sweep training) - (loop wall - loop training)) / trials

is what Ray adds per trial beyond what the loop spends itself, shown also as a percentage of a trial
that trains for `--trial-minutes` (default 5; target <= 3 %). With `--trajectories-per-trial k` the sweep packs k
grid points into one trial (`search.trajectories_per_trial`): one Ray Train start-up for k trajectories. The machine is shared: the load average
is printed with each mode, since other work on it stretches both training and overhead.

    python benchmarks/sweep_overhead.py [--model minilm|tiny|DIR] [--rates 0.2,0.3,0.4] [--rounds 2]
        [--max-train-examples 128 --max-seq-length 64 --epochs 1 --batch-size 16] [--order loop,sweep]
        [--trajectories-per-trial 1] [--timeline]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("RAY_ADDRESS", None)  # the sweep must start its own embedded Ray, never join another

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from raytickets.sweep import tuner as sweep  # noqa: E402
from raytickets.store import ResultsStore  # noqa: E402


from common import add_ray_args, ray_temp_and_port, resources  # noqa: E402  (benchmarks/common.py)

# A computation is identified by its own start and finish times: a row reused from the full-model
# cache (or a resumed round) carries the times of the run that computed it.
COMPUTED = ["task", "model", "seed", "kind", "round", "started_at", "finished_at"]


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def computed_rows(rounds: pd.DataFrame) -> pd.DataFrame:
    """The rows a mode trained itself: every computation once, however many trials reused it."""
    return rounds.drop_duplicates(subset=COMPUTED)


def sweep_config(args, out: Path, model: str) -> dict:
    return {
        "name": "overhead",
        "storage_path": str(out / "sweep"),
        "ticket": {
            "task": args.task,
            "model": model,
            "data": {"glue_dir": args.glue_dir, "max_train_examples": args.max_train_examples,
                     "max_dev_examples": args.max_dev_examples, "max_seq_length": args.max_seq_length},
            "train": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": 5e-5, "seed": 0},
            "prune": {"method": "magnitude", "schedule": "remaining", "rounds": args.rounds, "rate": args.rates[0]},
        },
        "search": {"mode": "grid", "space": {"prune.rate": {"values": args.rates}}, "num_samples": 1,
                   "scheduler": "none", "max_concurrent_trials": 1,
                   "trajectories_per_trial": args.trajectories_per_trial},
        "resources": resources(args.cpus),
    }


def run_sweep(cfg, temp_dir: str, port: int, timeline: bool = False) -> dict:
    import ray

    started = time.perf_counter()
    sweep.run(cfg, temp_dir=temp_dir, dashboard_port=port)
    span = print_timeline() if timeline else None
    ray.shutdown()  # a user's sweep ends with its Ray too: part of the cost
    wall = time.perf_counter() - started
    from raytickets.sweep.layout import results_dir

    return {"wall": wall, "rounds": ResultsStore(results_dir(cfg)).rounds(), "trials_span": span}


def run_loop(cfg, root: Path, rates: list[float], threads: int) -> dict:
    """The same trajectories in this process, storing rows, masks and ticket rows as a sweep worker does."""
    import torch

    from raytickets.results import Recorder
    from raytickets.tickets import Trajectory
    from raytickets.sweep.trial import trial_ticket

    torch.set_num_threads(threads)  # what the sweep's worker uses (round(cpus_per_worker))
    store = ResultsStore(root / "results")
    started = time.perf_counter()
    for i, rate in enumerate(rates):
        ticket = trial_ticket(cfg, {"prune.rate": rate})
        ticket.data.cache_dir = str(root / "data")  # not the sweep's: each mode tokenises once itself
        ticket.train.progress = False
        traj = Trajectory(ticket, root / "work")
        recorder = Recorder(store, ticket.keep_weights, sweep="loop", trial=f"loop-{i}")
        traj.run(on_round=recorder)
        recorder.finish(traj)
    wall = time.perf_counter() - started
    return {"wall": wall, "rounds": store.rounds()}


# A trial's life as Ray's task events record it: (phase, the event that ends it: task name, which time, first/last).
PHASES = [
    ("trial driver process up (spawn, imports, Tune's trainable)", "ImplicitFunc.__ray_ready__", "end_time_ms", min),
    ("Train controller up (spawn, imports)", "TrainController.run", "start_time_ms", min),
    ("Train worker group up (placement group, spawn, imports)", "RayTrainWorker.get_metadata", "end_time_ms", min),
    ("Train context (torch process group, dataset manager)", "RayTrainWorker.run_train_fn", "start_time_ms", min),
    ("worker loop: the trajectories (imports, loading, rounds; to the health-check poll that saw it end)",
     "RayTrainWorker.poll_status", "end_time_ms", max),
    ("fit returns (health-check poll, shutdown, cleaner)", "TrainController.get_result", "end_time_ms", max),
]


def print_timeline() -> float:
    """Where a trial's seconds go, per trial, from Ray's task events (the state API the dashboard serves): the end
    of each phase relative to the trial driver's creation. Trials run one at a time here, so a trial's events are
    those created between its driver's creation and the next one's. Returns the seconds from the first trial's
    start to the last fit's return: the sweep's wall time less what it pays once (Ray, data, Tune, shutdown)."""
    from ray.util.state import list_tasks

    tasks = [t if isinstance(t, dict) else vars(t)
             for t in list_tasks(detail=True, limit=10_000, raise_on_missing_output=False)]
    drivers = sorted(t["creation_time_ms"] for t in tasks if t["func_or_class_name"] == "ImplicitFunc.__init__")
    print("\ntimeline per trial (s since its trial driver was created; each phase's own length in parentheses):")
    for i, (lo, hi) in enumerate(zip(drivers, drivers[1:] + [float("inf")])):
        mine = [t for t in tasks if lo <= t["creation_time_ms"] < hi]
        last, cells = lo, []
        for phase, name, field, pick in PHASES:
            times = [t[field] for t in mine if t["func_or_class_name"] == name and t.get(field)]
            if not times:
                cells.append(f"{phase}: -")
                continue
            at = pick(times)
            cells.append(f"{phase}: {(at - lo) / 1e3:.1f} ({(at - last) / 1e3:.1f})")
            last = at
        print(f"  trial {i}: " + "; ".join(cells))
    ends = [t["end_time_ms"] for t in tasks if t["func_or_class_name"] == "TrainController.get_result" and t.get("end_time_ms")]
    return (max(ends) - drivers[0]) / 1e3 if ends and drivers else float("nan")


def summarise(result: dict) -> dict:
    rows = computed_rows(result["rounds"])
    return {
        "wall": result["wall"],
        "training": float(rows["wall_seconds"].sum()),
        "fine_tunes": len(rows),
        "steps": int(rows["training_steps"].sum()),
        "trials": result["rounds"]["trial"].nunique(),
        "trials_span": result.get("trials_span"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm", help="minilm (default), tiny (a 2-layer random BERT) or a directory")
    p.add_argument("--task", default="sst2")
    p.add_argument("--rates", default="0.2,0.3,0.4", help="prune.rate grid: one trajectory per value")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-train-examples", type=int, default=128)
    p.add_argument("--max-dev-examples", type=int, default=128)
    p.add_argument("--max-seq-length", type=int, default=64)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default="/tmp/sweep_overhead", help="its sweep/ and loop/ subfolders are replaced")
    add_ray_args(p)
    p.add_argument("--order", default="loop,sweep", help="which mode runs first: loop,sweep or sweep,loop")
    p.add_argument("--trial-minutes", type=float, default=5.0, help="training time of the reference trial")
    p.add_argument("--timeline", action="store_true", help="print where each trial's seconds go (Ray task events)")
    p.add_argument("--trajectories-per-trial", type=int, default=1,
                   help="search.trajectories_per_trial: grid points trained one after another in one trial")
    args = p.parse_args(argv)
    args.rates = [float(x) for x in args.rates.split(",")]
    order = args.order.split(",")
    if sorted(order) != ["loop", "sweep"]:
        p.error("--order: give loop,sweep or sweep,loop")

    out = Path(args.out).resolve()
    for sub in ("sweep", "loop"):
        shutil.rmtree(out / sub, ignore_errors=True)  # fresh caches: nothing computed before counts
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model == "tiny":
        from raytickets.models import tiny_bert

        model = str(tiny_bert(out / "tiny-bert"))
    config_path = out / "sweep.yaml"
    config_path.write_text(yaml.safe_dump(sweep_config(args, out, model), sort_keys=False))
    cfg = sweep.load_config(str(config_path), [])
    threads = max(1, round(cfg.resources.cpus_per_worker))
    temp_dir, port = ray_temp_and_port(args)

    results, loads = {}, {}
    for mode in order:
        before = load_average()
        print(f"\n=== {mode} (load average {before}) ===", flush=True)
        if mode == "sweep":
            results[mode] = summarise(run_sweep(cfg, temp_dir, port, args.timeline))
        else:
            results[mode] = summarise(run_loop(cfg, out / "loop", args.rates, threads))
        loads[mode] = f"{before} -> {load_average()}"

    n = len(args.rates)  # trajectories, whatever the packing
    s, lp = results["sweep"], results["loop"]
    other = {m: r["wall"] - r["training"] for m, r in results.items()}
    per_trial = (other["sweep"] - other["loop"]) / n  # per trajectory: a packed trial shares its start-up
    reference = args.trial_minutes * 60
    print(f"\nsweep overhead: {n} trajectories of {args.rounds} round(s), model {args.model}, task {args.task},"
          f" {args.max_train_examples} train examples, seq {args.max_seq_length}, batch {args.batch_size},"
          f" {threads} thread(s), {args.trajectories_per_trial} trajectory(ies) per trial")
    print(f"{'mode':6s} {'wall s':>8s} {'training s':>11s} {'other s':>8s} {'fine-tunes':>11s} {'steps':>6s}"
          f" {'trials':>7s}  load average (1/5/15 min, before -> after)")
    for mode in order:
        r = results[mode]
        print(f"{mode:6s} {r['wall']:8.1f} {r['training']:11.1f} {other[mode]:8.1f} {r['fine_tunes']:11d}"
              f" {r['steps']:6d} {r['trials']:7d}  {loads[mode]}")
    if (s["fine_tunes"], s["steps"]) != (lp["fine_tunes"], lp["steps"]):
        print("warning: the two modes did not compute the same fine-tunes; the comparison is off")
    print(f"orchestration overhead per trajectory: ({other['sweep']:.1f} - {other['loop']:.1f}) / {n} = {per_trial:.1f} s")
    print(f"as a share of a trajectory training {args.trial_minutes:g} min: {per_trial / reference:.1%}"
          f" (target <= 3%: {'met' if per_trial / reference <= 0.03 else 'not met'})")
    if s.get("trials_span"):  # what the sweep pays once (Ray's start and stop, tokenising, Tune) set apart
        once = s["wall"] - s["trials_span"]
        inside = (s["trials_span"] - s["training"] - other["loop"]) / n
        print(f"of the sweep's {other['sweep']:.1f} s: {once:.1f} s once per sweep (Ray start and stop, data, Tune), the"
              f" rest in its trials: {inside:.1f} s per trajectory beyond the loop's = {inside / reference:.1%} of"
              f" {args.trial_minutes:g} min")
    print(f"all included (wall difference per trial): ({s['wall']:.1f} - {lp['wall']:.1f}) / {n} ="
          f" {(s['wall'] - lp['wall']) / n:.1f} s; training time sweep / loop: {s['training'] / lp['training']:.2f}"
          " (Ray's own processes share the CPUs with the worker)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
