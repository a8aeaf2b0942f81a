"""One trial of a sweep: the driver (a Tune function trainable) and the Ray Train worker loop it starts.

Ray 2.60's Train V2 cannot hand a TorchTrainer to a Tuner, so the trial driver builds the trainer and
calls `fit()`; the workers start once per trial and run every round (a fit costs ~25 s of start-up on 2
cores: ../shared/RAY_NOTES.md). The sweep's config crosses the Ray boundary as one plain dict and each
process rebuilds it once; a transfer trial's (mask, source, target) travels as a `TransferPair`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import SweepConfig, TicketConfig
from .loader import apply_overrides, build, to_dict

TRANSFER_KEY = "transfer"  # search-space key of a transfer trial: a TransferPair as a dict


@dataclass(frozen=True)
class TransferPair:
    """A stored ticket (`mask_id`, found on `source_task`) to fine-tune on `task`."""

    mask_id: str
    source_task: str
    task: str


def sweep_dir(cfg: SweepConfig) -> str:
    """`<storage_path>/<name>`: Tune's experiment directory (a local path or a URI)."""
    return f"{cfg.storage_path.rstrip('/')}/{cfg.name}"


def work_dir(cfg: SweepConfig) -> Path:
    """Trajectory state and the tokenised data: a local (or NFS-mounted) directory every worker sees."""
    if "://" in cfg.storage_path:  # object storage: state stays on the node (a retry elsewhere recomputes)
        return Path.home() / "raytickets-work" / cfg.name
    return Path(sweep_dir(cfg)) / "work"


def results_dir(cfg: SweepConfig) -> str:
    return cfg.results_dir or f"{sweep_dir(cfg)}/results"


def trial_ticket(cfg: SweepConfig, params: dict) -> TicketConfig:
    """The trajectory a trial runs: the sweep's ticket template with the sampled parameters applied."""
    overrides = [f"{part}={json.dumps(value)}" for k, v in params.items() if k != TRANSFER_KEY
                 for part, value in (zip(k.split(","), v) if "," in k else [(k, v)])]
    if TRANSFER_KEY in params:
        overrides.append(f"task={json.dumps(TransferPair(**params[TRANSFER_KEY]).task)}")
    ticket = build(TicketConfig, apply_overrides(to_dict(cfg.ticket), overrides))
    ticket.validate()
    return ticket


def trial_driver(params: dict, sweep: dict) -> None:
    """Tune trainable: run one trajectory on `num_workers` Ray Train workers, forwarding round reports."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from .cluster import trial_resources

    cfg = build(SweepConfig, sweep)
    trial_id = tune.get_context().get_trial_id()
    r = cfg.resources
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"sweep": sweep, "params": params, "trial": trial_id},
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
    import ray
    import ray.train
    import torch
    from ray.train.torch import get_device

    from .results import Recorder
    from .store import ResultsStore
    from .tickets import Trajectory, round_lines

    cfg = build(SweepConfig, config["sweep"])
    ticket = trial_ticket(cfg, config["params"])
    ticket.train.progress = False  # a sweep logs one line a round, never a per-step bar
    if ticket.train.threads is None:
        torch.set_num_threads(max(1, round(cfg.resources.cpus_per_worker)))
    rank = ray.train.get_context().get_world_rank()
    traj = Trajectory(ticket, work_dir(cfg), device=get_device())
    recorder = Recorder(ResultsStore(results_dir(cfg)) if rank == 0 else None, ticket.keep_weights,
                        sweep=cfg.name, trial=config["trial"], node_id=ray.get_runtime_context().get_node_id())
    best: dict[str, float] = {}

    def on_round(state) -> None:
        recorder(state)
        main = state.ticket
        for line in round_lines(state):  # the trial's log (the dashboard shows it per worker)
            print(line, flush=True)
        if state.round == 0:
            return  # the full model: the bar, not a point of the trajectory for the scheduler
        report = {"gain": main.metric - main.full_metric, "metric": main.metric, "sparsity": main.sparsity}
        for key, value in report.items():  # Optuna scores a trial by its best round, not its last
            best[key] = max(best.get(key, float("-inf")), value)
        ray.train.report({
            "round": state.round, "task": main.task, "full_metric": main.full_metric, "resumed": state.resumed,
            **report, **{f"best_{k}": v for k, v in best.items()},
            # every DDP rank's mask id for this round (empty when the round was loaded from disk)
            "replica_mask_ids": ",".join(traj.replica_mask_ids.get(state.round, [])),
            "node_id": ray.get_runtime_context().get_node_id(),
        })

    params = config["params"]
    if TRANSFER_KEY in params:
        pair = TransferPair(**params[TRANSFER_KEY])
        source = ResultsStore(cfg.search.transfer_from)
        traj.transfer(source.load_mask(pair.mask_id), pair.source_task, pair.mask_id, on_round=on_round)
    else:
        traj.run(on_round=on_round)
        recorder.finish(traj)


def transfer_pairs(cfg: SweepConfig) -> list[dict]:
    """Every (stored source ticket, target task) pair of a transfer sweep, source task != target task."""
    from .errors import ConfigError
    from .store import ResultsStore

    rounds = ResultsStore(cfg.search.transfer_from).rounds()
    tickets = rounds[(rounds["kind"] == "ticket") & rounds["mask_id"].notna()]
    pairs = []
    for (mask_id, task), _ in tickets.groupby(["mask_id", "task"], sort=True):
        pairs += [asdict(TransferPair(mask_id, task, t)) for t in cfg.search.target_tasks if t != task]
    if not pairs:
        raise ConfigError(f"search.transfer_from: {cfg.search.transfer_from!r} holds no ticket of a task other than the targets")
    return pairs
