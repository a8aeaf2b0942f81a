"""The distributed ticket sweep: `python -m raytickets.sweep --config configs/smoke.yaml`.

Three seams, as Ray Tune draws them: *what to try* (OptunaSearch with a seeded TPE sampler, or an
exhaustive grid), *when to stop* (ASHA on the per-round reports, so trajectories past their phase
transition stop early), and *how to run one* (a Tune function trainable that drives one trajectory on
Ray Train workers). Ray 2.60's Train V2 cannot hand a TorchTrainer to a Tuner, so the trial driver
builds the trainer and calls `fit()`; the workers start once per trial and run every round (a fit
costs ~25 s of start-up on 2 cores: see ../shared/RAY_NOTES.md).

Results land in `<storage_path>/<name>/results` (Parquet, keyed by (trial, round, kind): a retry or a
resume rewrites the same keys and never duplicates a row); trajectory state under `.../work`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from .config import SweepConfig, TicketConfig, apply_overrides, build, read_yaml, to_dict
from .errors import ConfigError, RayticketsError

MAX_ROUNDS = 1000  # ASHA's max_t: above any trajectory's last round
TRANSFER_KEY = "transfer"  # search-space key of transfer mode: "source_mask_id|source_task|target_task"


# --------------------------------------------------------------------------------------------------
# Configuration and the search space


def load_config(path: str | None, overrides: list[str]) -> SweepConfig:
    data = read_yaml(path) if path else {}
    cfg = build(SweepConfig, apply_overrides(data, overrides))
    cfg.validate()
    return absolute_paths(cfg)


def _absolute(path: str) -> str:
    """A local path made absolute (Ray workers run in other directories); a URI (s3://...) as it is."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def absolute_paths(cfg: SweepConfig) -> SweepConfig:
    """Resolve relative paths against the driver's directory: Ray workers run elsewhere."""
    data = cfg.ticket.data
    if data.glue_dir:
        data.glue_dir = _absolute(data.glue_dir)
    # Tokenise once per sweep into its own work dir, read by every trial (never per trial).
    data.cache_dir = _absolute(data.cache_dir) if data.cache_dir else str(work_dir(cfg) / "data")
    if Path(cfg.ticket.model).expanduser().is_dir():
        cfg.ticket.model = _absolute(cfg.ticket.model)
    cfg.storage_path = _absolute(cfg.storage_path)
    if cfg.results_dir:
        cfg.results_dir = _absolute(cfg.results_dir)
    if cfg.search.transfer_from:
        cfg.search.transfer_from = _absolute(cfg.search.transfer_from)
    return cfg


def sweep_dir(cfg: SweepConfig) -> str:
    """`<storage_path>/<name>`: Tune's experiment directory (a local path or a URI)."""
    return f"{_absolute(cfg.storage_path).rstrip('/')}/{cfg.name}"


def work_dir(cfg: SweepConfig) -> Path:
    """Trajectory state and the tokenised data: a local (or NFS-mounted) directory every worker sees."""
    if "://" in cfg.storage_path:  # object storage: state stays on the node (a retry elsewhere recomputes)
        return Path.home() / "raytickets-work" / cfg.name
    return Path(sweep_dir(cfg)) / "work"


def results_dir(cfg: SweepConfig) -> str:
    return cfg.results_dir or f"{sweep_dir(cfg)}/results"


def param_space(cfg: SweepConfig) -> dict:
    """Tune's search space from the YAML one: choices, (log-)uniform floats, integer ranges, grids."""
    from ray import tune

    space = {}
    for key, spec in cfg.search.space.items():
        if cfg.search.mode == "grid":
            values = spec.values if spec.values is not None else _grid_values(spec)
            space[key] = tune.grid_search(values)
        elif spec.values is not None:
            space[key] = tune.choice(spec.values)
        elif spec.type == "int":
            space[key] = tune.randint(int(spec.low), int(spec.high) + 1)
        elif spec.log:
            space[key] = tune.loguniform(spec.low, spec.high)
        else:
            space[key] = tune.uniform(spec.low, spec.high)
    return space


def _grid_values(spec) -> list:
    n = int(round((spec.high - spec.low) / spec.step)) + 1
    values = [spec.low + i * spec.step for i in range(n)]
    return [int(v) for v in values] if spec.type == "int" else [round(v, 10) for v in values]


def trial_ticket_config(cfg: SweepConfig, params: dict) -> TicketConfig:
    """The trajectory a trial runs: the sweep's ticket defaults with the sampled parameters applied."""
    overrides = [f"{k}={json.dumps(v)}" for k, v in params.items() if k != TRANSFER_KEY]
    if TRANSFER_KEY in params:
        overrides.append(f"task={params[TRANSFER_KEY].split('|')[2]}")
    ticket = build(TicketConfig, apply_overrides(to_dict(cfg.ticket), overrides))
    ticket.validate()
    return ticket


def transfer_pairs(cfg: SweepConfig) -> list[str]:
    """Every (stored source ticket, target task) pair of a transfer sweep, source task != target task."""
    from .store import ResultsStore

    rounds = ResultsStore(cfg.search.transfer_from).rounds()
    tickets = rounds[(rounds["kind"] == "ticket") & rounds["mask_id"].notna()]
    pairs = []
    for (mask_id, task), _ in tickets.groupby(["mask_id", "task"], sort=True):
        pairs += [f"{mask_id}|{task}|{t}" for t in cfg.search.target_tasks if t != task]
    if not pairs:
        raise ConfigError(f"search.transfer_from: {cfg.search.transfer_from!r} holds no ticket of a task other than the targets")
    return pairs


# --------------------------------------------------------------------------------------------------
# Where it runs


def check_address(address: str) -> None:
    """Fail fast on an address nothing listens on (ray.init would retry for a long time)."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        raise ConfigError(f"--address: {address!r} is not auto, host:port or ray://host:port")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"--address: cannot reach {parsed.hostname}:{parsed.port} ({e.strerror or e})") from None


def check_storage(cfg: SweepConfig) -> None:
    """Write and remove a probe file, so an unwritable storage path fails before any trial starts."""
    import pyarrow.fs as pafs

    target = sweep_dir(cfg)
    try:
        if "://" in target:
            fs, path = pafs.FileSystem.from_uri(target)
        else:
            fs, path = pafs.LocalFileSystem(), str(Path(target).expanduser().resolve())
        fs.create_dir(path, recursive=True)
        probe = f"{path}/.write-probe"
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except Exception as e:  # noqa: BLE001 — any failure here means the same thing to the user
        raise ConfigError(f"storage_path: cannot write to {target!r}: {str(e).splitlines()[0]}") from None


def connect(address: str | None, cfg: SweepConfig, temp_dir: str | None = None, dashboard_port: int | None = None):
    """Join a cluster (`address`) or start an embedded local Ray with the dashboard on."""
    import ray

    if ray.is_initialized():
        return None
    kwargs = dict(include_dashboard=True, log_to_driver=True)
    if address is None:
        port = dashboard_port or free_port(8265)
        kwargs.update(address="local", num_cpus=cfg.resources.num_cpus, dashboard_host="127.0.0.1", dashboard_port=port)
        if temp_dir:
            kwargs["_temp_dir"] = temp_dir
        # Train's PlacementGroupCleaner finds the cluster through the state API with no address, which
        # looks in the default /tmp/ray: with a private temp dir it times out and a stopped trial's
        # workers are never released (the next trial then waits forever). Ray's processes inherit this.
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    else:
        check_address(address)
        kwargs = {"address": address}
    try:
        return ray.init(**kwargs)
    except ConnectionError as e:
        hint = "" if os.environ.get("RAY_AUTH_MODE") else " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token: cluster/README.md)"
        raise ConfigError(f"--address: cannot connect to Ray at {address!r}: {str(e).splitlines()[0]}{hint}") from None


def free_port(preferred: int = 0) -> int:
    """`preferred` if nothing listens there, else a free port chosen by the OS."""
    for candidate in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
                return sock.getsockname()[1]
            except OSError:
                continue
    raise ConfigError("--dashboard-port: no free port for the Ray dashboard")


def trial_resources(cfg: SweepConfig) -> dict:
    r = cfg.resources
    worker = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        worker["GPU"] = r.gpus_per_worker
    return worker


def check_resources(cfg: SweepConfig) -> None:
    """One trial's workers must fit the cluster, or Ray would wait for them forever (RAY_NOTES.md)."""
    import ray

    total = ray.cluster_resources()
    r = cfg.resources
    need_cpu = r.trial_driver_cpus + r.num_workers * r.cpus_per_worker
    need_gpu = r.num_workers * r.gpus_per_worker if r.use_gpu else 0
    if r.autoscaling:
        return
    if need_cpu > total.get("CPU", 0) + 1e-9:
        raise ConfigError(
            f"resources.num_workers: {r.num_workers} workers x {r.cpus_per_worker} CPU + {r.trial_driver_cpus} for the"
            f" trial driver need {need_cpu:g} CPUs; the cluster has {total.get('CPU', 0):g}"
        )
    if need_gpu > total.get("GPU", 0) + 1e-9:
        raise ConfigError(
            f"resources.num_workers: {r.num_workers} workers x {r.gpus_per_worker} GPU need {need_gpu:g} GPUs;"
            f" the cluster has {total.get('GPU', 0):g}"
        )


def prepare_data(cfg: SweepConfig, tasks: list[str]) -> None:
    """Tokenise each task once per sweep into the shared cache every trial reads (never per trial)."""
    from .models import load_tokenizer
    from .tickets import tokenize

    tokenizer = load_tokenizer(cfg.ticket.model)
    for name in tasks:
        tokenize(dataclasses.replace(cfg.ticket, task=name), tokenizer)


# --------------------------------------------------------------------------------------------------
# One trial: the driver (a Tune function trainable) and the Ray Train worker loop


def trial_driver(params: dict, sweep: dict) -> None:
    """Tune trainable: run one trajectory on `num_workers` Ray Train workers, forwarding round reports."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = build(SweepConfig, sweep)
    trial_id = tune.get_context().get_trial_id()
    ticket = trial_ticket_config(cfg, params)
    r = cfg.resources
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "ticket": to_dict(ticket), "sweep": cfg.name, "trial": trial_id, "threads": max(1, round(r.cpus_per_worker)),
            "work_dir": str(work_dir(cfg)), "results_dir": results_dir(cfg), "transfer": params.get(TRANSFER_KEY),
            "transfer_from": cfg.search.transfer_from,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=trial_resources(cfg)
        ),
        # A name derived from the trial id: Train V2 resumes a run it has seen when the trial is retried.
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=f"{sweep_dir(cfg)}/train",
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    trainer.fit()



def worker_loop(config: dict) -> None:
    """Ray Train worker: the trajectory's rounds under DDP; rank 0 writes rows, every rank reports."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    from .store import ResultsStore
    from .tickets import Trajectory

    ticket = build(TicketConfig, config["ticket"])
    if ticket.train.threads is None:
        torch.set_num_threads(config["threads"])
    rank = ray.train.get_context().get_world_rank()
    store = ResultsStore(config["results_dir"]) if rank == 0 else None
    traj = Trajectory(ticket, config["work_dir"], device=get_device())
    meta = {"sweep": config["sweep"], "trial": config["trial"]}
    best = {"gain": float("-inf")}

    def on_round(r: int, rows: list[dict], resumed: bool) -> None:
        rows = [{**row, **meta} for row in rows]
        if store is not None:
            if rows[0]["mask_id"]:
                for mask_row in rows:
                    if mask_row["mask_id"] and not store.has_mask(mask_row["mask_id"]):
                        store.write_mask(traj.mask_for(mask_row))
            store.write_rounds(rows)
        if r == 0:
            return  # the full model: the bar, not a point of the trajectory for the scheduler
        main = next(row for row in rows if row["kind"] in ("ticket", "transfer"))
        gain = main["metric"] - main["full_metric"]
        best["gain"] = max(best["gain"], gain)
        ray.train.report({
            "round": r, "task": main["task"], "sparsity": main["sparsity"], "metric": main["metric"],
            "full_metric": main["full_metric"], "gain": gain, "best_gain": best["gain"], "resumed": resumed,
            # every DDP rank's mask id for this round (empty when the round was loaded from disk)
            "replica_mask_ids": ",".join(traj.replica_mask_ids.get(r, [])),
        })

    if config.get("transfer"):
        from .store import ResultsStore as Source

        mask_id, source_task, _ = config["transfer"].split("|")
        mask = Source(config["transfer_from"]).load_mask(mask_id)
        traj.transfer(mask, source_task, mask_id, on_round=on_round)
    else:
        rows = traj.run(on_round=on_round)
        if store is not None:
            store.write_ticket(ticket_row({**meta}, rows))


def ticket_row(meta: dict, rows: list[dict]) -> dict:
    """One row per finished trajectory: its best round (by the task's metric) and its final round."""
    tickets = [r for r in rows if r["kind"] == "ticket"]
    full = next(r for r in rows if r["kind"] == "full")
    best = max(tickets, key=lambda r: r["metric"])
    final = max(tickets, key=lambda r: r["round"])
    return {
        **meta, "task": full["task"], "model": full["model"], "method": full["method"],
        "schedule": full["schedule"], "rate": full["rate"], "seed": full["seed"], "rounds": final["round"],
        "best_round": best["round"], "best_sparsity": best["sparsity"], "best_metric": best["metric"],
        "final_round": final["round"], "final_sparsity": final["sparsity"], "final_metric": final["metric"],
        "full_metric": full["metric"], "gain": best["metric"] - full["metric"], "best_mask_id": best["mask_id"],
        "final_mask_id": final["mask_id"], "finished_at": final["finished_at"],
    }


# --------------------------------------------------------------------------------------------------
# The sweep


def make_tuner(cfg: SweepConfig, space: dict, restore: bool = False):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    metric = cfg.search.metric
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, sweep=to_dict(cfg)), {"cpu": cfg.resources.trial_driver_cpus}
    )
    if restore:
        return tune.Tuner.restore(sweep_dir(cfg), trainable=trainable, resume_unfinished=True, resume_errored=True)
    search_alg = None
    num_samples = cfg.search.num_samples
    if cfg.search.mode == "optuna":
        search_alg = OptunaSearch(metric=metric, mode="max", seed=cfg.search.seed)
    scheduler = None
    if cfg.search.scheduler == "asha":
        # ASHA stops every trial that reaches max_t reports. A searched prune.rounds or target_sparsity
        # can take a trial past the template's rounds, and trajectories end by themselves anyway, so
        # max_t is only an upper bound on rounds (rungs beyond the last round are never reached).
        scheduler = ASHAScheduler(
            time_attr="training_iteration", metric=metric, mode="max", max_t=MAX_ROUNDS,
            grace_period=cfg.search.grace_period, reduction_factor=cfg.search.reduction_factor,
        )
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
            max_concurrent_trials=cfg.search.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=_absolute(cfg.storage_path),
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures), verbose=1,
        ),
    )


def best_tickets(results: str) -> list[dict]:
    """The best ticket per task across the sweep: sparsity, metric and gain over the full model."""
    from .errors import ResultsError
    from .store import ResultsStore

    try:
        rounds = ResultsStore(results).rounds()
    except ResultsError:
        return []  # nothing finished a round
    tickets = rounds[rounds["kind"] == "ticket"]
    out = []
    for task, group in tickets.groupby("task", sort=True):
        best = group.loc[group["metric"].idxmax()]
        out.append({
            "task": task, "sparsity": round(float(best["sparsity"]), 4), "metric_name": best["metric_name"],
            "metric": round(float(best["metric"]), 4), "full_metric": round(float(best["full_metric"]), 4),
            "gain": round(float(best["metric"] - best["full_metric"]), 4), "trial": best["trial"],
        })
    return out


def plan(cfg: SweepConfig, space: dict) -> str:
    r = cfg.resources
    lines = [
        f"sweep {cfg.name}: {cfg.search.mode} search, {cfg.search.num_samples} sample(s), scheduler {cfg.search.scheduler},"
        f" metric {cfg.search.metric}, up to {cfg.search.max_concurrent_trials} trial(s) at once",
        f"trial: {cfg.ticket.prune.method} pruning, {cfg.ticket.prune.num_rounds()} round(s), model {cfg.ticket.model},"
        f" {r.num_workers} worker(s) x {trial_resources(cfg)}",
        "space: " + ", ".join(f"{k}={_describe(v)}" for k, v in cfg.search.space.items()),
        f"results: {results_dir(cfg)}",
    ]
    return "\n".join(lines)


def _describe(spec) -> str:
    if spec.values is not None:
        return "{" + ", ".join(map(str, spec.values)) + "}"
    return f"[{spec.low}, {spec.high}]" + (" log" if spec.log else "") + (f" step {spec.step}" if spec.step else "")


def run(cfg: SweepConfig, address: str | None = None, resume: bool = False, temp_dir: str | None = None,
        dashboard_port: int | None = None) -> list[dict]:
    """Validate, connect, prepare data, run (or resume) the sweep; return the best ticket per task."""
    from ray import tune

    if resume and not tune.Tuner.can_restore(sweep_dir(cfg)):
        raise ConfigError(f"--resume: {sweep_dir(cfg)!r} holds no sweep to resume")
    check_storage(cfg)
    space = param_space(cfg)
    if cfg.search.transfer_from:
        space[TRANSFER_KEY] = tune.grid_search(transfer_pairs(cfg))
    context = connect(address, cfg, temp_dir, dashboard_port)
    check_resources(cfg)
    if context is not None and getattr(context, "dashboard_url", None):
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
    print(plan(cfg, space), flush=True)
    tasks = _tasks(cfg)
    started = time.time()
    prepare_data(cfg, tasks)
    tuner = make_tuner(cfg, space, restore=resume)
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    best = best_tickets(results_dir(cfg))
    print(f"\nsweep finished in {time.time() - started:.0f} s; {len(grid)} trial(s), {len(errors)} failed")
    print("best ticket per task:")
    for b in best:
        print(f"  {b['task']:6s} sparsity {b['sparsity']:.4f}  {b['metric_name']} {b['metric']:.4f}"
              f"  full {b['full_metric']:.4f}  gain {b['gain']:+.4f}")
    print(f"results: {results_dir(cfg)}", flush=True)
    if errors:
        raise RayticketsError(f"{len(errors)} trial(s) failed; first: {str(errors[0]).splitlines()[0]}")
    return best


def _tasks(cfg: SweepConfig) -> list[str]:
    tasks = {cfg.ticket.task}
    if "task" in cfg.search.space and cfg.search.space["task"].values:
        tasks = set(cfg.search.space["task"].values)
    tasks |= set(cfg.search.target_tasks)
    return sorted(tasks)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m raytickets.sweep", description="Run a distributed ticket sweep.")
    p.add_argument("--config", default="configs/smoke.yaml", help="sweep YAML (default configs/smoke.yaml)")
    p.add_argument("--address", help="auto, host:port or ray://host:port of a cluster (default: embedded local Ray)")
    p.add_argument("--resume", action="store_true", help="restore an interrupted sweep of the same name and storage")
    p.add_argument("--dry-run", action="store_true", help="validate the config and print the plan, run nothing")
    p.add_argument("--temp-dir", help="embedded Ray only: its temp/session directory")
    p.add_argument("--dashboard-port", type=int, help="embedded Ray only: the dashboard's port (default 8265)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="any config field, e.g. search.num_samples=8")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            print(plan(cfg, param_space(cfg)))
            return 0
        run(cfg, args.address, args.resume, args.temp_dir, args.dashboard_port)
        return 0
    except RayticketsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
