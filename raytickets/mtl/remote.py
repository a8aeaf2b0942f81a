"""The multi-task runs on Ray Train workers: one `TorchTrainer.fit` trains every pending (arm, seed) under DDP.

The workers start once for all runs (a fit costs ~25 s of start-up on 2 cores: ../shared/RAY_NOTES.md);
every rank trains each run on its part of the global batches (`mtl_train`), rank 0 writes the rows after
each run, so an interrupted fit keeps the runs it finished and a rerun skips them.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable

from ..errors import ConfigError


def run_on_ray(plan, runs: list[tuple[str, int]], address: str | None = None, temp_dir: str | None = None,
               on_run: Callable | None = None) -> None:
    """Train `runs` on `plan.cfg.workers` workers (an embedded local Ray unless `address` names a cluster)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from ..sweep.cluster import connect
    from ..config import ResourcesConfig, SweepConfig
    from ..store import ResultsStore

    cfg = plan.cfg
    need = cfg.workers * cfg.cpus_per_worker
    ours = not ray.is_initialized()
    connect(address, SweepConfig(resources=ResourcesConfig(num_cpus=None if address else max(1, round(need + 0.5)))),
            temp_dir)
    try:
        have = ray.cluster_resources().get("CPU", 0)
        if need > have + 1e-9:  # Ray would wait for the workers forever
            raise ConfigError(f"workers: {cfg.workers} x {cfg.cpus_per_worker} CPU need {need:g} CPUs; the cluster has {have:g}")
        from .data import load_task_data

        load_task_data(sorted(cfg.tasks), plan.model_path, cfg.data)  # tokenise once, before the workers read it
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"plan": plan, "runs": runs},
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers,
                                                   resources_per_worker={"CPU": cfg.cpus_per_worker}),
            run_config=ray.train.RunConfig(name=f"mtl-{plan.setting_id}-{uuid.uuid4().hex[:8]}",
                                           storage_path=str(Path(cfg.out).resolve() / ".ray-train")),
        )
        trainer.fit()
    finally:
        if ours:
            ray.shutdown()
    if on_run:
        rounds = ResultsStore(cfg.out).rounds()
        for arm, seed in runs:
            mine = rounds[(rounds["kind"] == "mtl") & (rounds["trial"] == plan.trial(seed)) & (rounds["arm"] == arm)]
            on_run(arm, seed, [_as_row(r) for r in mine.to_dict("records")], False)


def _as_row(record: dict):
    from ..rows import RoundRow

    clean = {k: (None if v is not None and not isinstance(v, str) and v != v else v) for k, v in record.items()}
    return RoundRow(**{k: v for k, v in clean.items() if k in RoundRow.__dataclass_fields__})


def _worker(config: dict) -> None:
    """Ray Train worker: every run of the list, rank 0 writing its rows and masks."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    from ..distributed import barrier
    from .experiment import record, train_arm
    from ..store import ResultsStore

    plan, runs = config["plan"], config["runs"]
    torch.set_num_threads(max(1, round(plan.cfg.cpus_per_worker)))
    plan.cfg.train.progress = False
    rank = ray.train.get_context().get_world_rank()
    store = ResultsStore(plan.cfg.out) if rank == 0 else None
    for arm, seed in runs:
        rows, masks = train_arm(plan, arm, seed, device=get_device())
        if store is not None:
            record(store, rows, masks)
            print(f"{arm} seed {seed}: " + ", ".join(f"{r.task} {r.metric_name} {r.metric:.4f}" for r in rows), flush=True)
        barrier()
