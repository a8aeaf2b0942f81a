"""One trial of a sweep: the driver (a Tune function trainable) and the Ray Train worker loop it starts.

Ray 2.60's Train V2 cannot hand a TorchTrainer to a Tuner, so the trial driver builds the trainer and
calls `fit()`; the workers start once per trial and run every round (a fit costs ~25 s of start-up on 2
cores: ../shared/RAY_NOTES.md). The sweep's config crosses the Ray boundary as one plain dict and each
process rebuilds it once; a transfer trial's job (`transfer.TransferJob` / `OwnJob`) travels as a dict.
"""

from __future__ import annotations

import json
import os

from ..config import SweepConfig, TicketConfig
from ..loader import apply_overrides, build, to_dict
from .layout import results_dir, sweep_dir, work_dir
from .transfer import TransferJob, job_of, overrides_of

STEP_LOSSES = "step_losses"  # a round report's per-step training losses: {kind: [loss of each step]}
JOB_KEY = "job"  # search-space key of a transfer sweep's trials: a transfer job as a dict (transfer.plan)
PACK_KEY = "trajectories"  # search.trajectories_per_trial > 1: a trial's grid points, a list of params dicts


def trial_ticket(cfg: SweepConfig, params: dict) -> TicketConfig:
    """The trajectory a trial runs: the sweep's ticket template with the sampled parameters applied."""
    overrides = [f"{part}={json.dumps(value)}" for k, v in params.items() if k != JOB_KEY
                 for part, value in (zip(k.split(","), v) if "," in k else [(k, v)])]
    if JOB_KEY in params:
        overrides += overrides_of(job_of(params[JOB_KEY]))
    ticket = build(TicketConfig, apply_overrides(to_dict(cfg.ticket), overrides))
    ticket.validate()
    return ticket


def trial_driver(params: dict, sweep: dict, start_timeout_s: float | None = None) -> None:
    """Tune trainable: run the mode's job for this trial on `num_workers` Ray Train workers (their round reports
    reach Tune through TuneReportCallback), then report what the mode reads back, if anything. On a cluster that
    cannot grow, workers not placed within `start_timeout_s` fail the trial in one line (`capacity.CapacityError`)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.constants import WORKER_GROUP_START_TIMEOUT_S_ENV_VAR
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError
    from ray.tune.integration.ray_train import TuneReportCallback

    from .capacity import start_timeout_s as start_timeout
    from .capacity import workers_did_not_start
    from .cluster import trial_resources
    from .modes import of

    cfg = build(SweepConfig, sweep)
    mode = of(cfg)
    trial_id = tune.get_context().get_trial_id()
    own = ray.util.get_current_placement_group()  # Tune's for this trial; the Train controller runs inside it
    trial_pg = own.id.hex() if own is not None else None
    job = mode.trial_job(cfg, params, {"id": trial_id, "pg": trial_pg})
    if job.loop is not None:
        r = cfg.resources
        timeout_s = start_timeout_s or start_timeout()
        os.environ[WORKER_GROUP_START_TIMEOUT_S_ENV_VAR] = str(timeout_s)  # Train hands it on to its controller
        trainer = TorchTrainer(
            job.loop,
            train_loop_config=job.config,
            scaling_config=ray.train.ScalingConfig(
                num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=trial_resources(cfg)
            ),
            # A name derived from the trial id: Train V2 resumes a run it has seen when the trial is retried.
            run_config=ray.train.RunConfig(
                name=f"train-{trial_id}",
                storage_path=f"{sweep_dir(cfg)}/train",
                callbacks=[TuneReportCallback()],
                # A worker group not placed in time is a controller failure, which Train retries without end by
                # default: on a cluster that cannot grow, one try; Tune's retry waits for room (capacity.py).
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures,
                                                       controller_failure_limit=-1 if r.autoscaling else 0),
            ),
        )
        try:
            trainer.fit()
        except ControllerError as error:
            if isinstance(error.controller_failure, WorkerGroupStartupTimeoutError):
                raise workers_did_not_start(cfg, trial_id, timeout_s) from None
            raise
        finally:  # the run is over: nothing of it may hold the cluster (ray-project/ray#54305)
            if trial_pg is not None:
                remove_leftover_placement_groups(trial_pg, owners={trial_pg: trial_id})
    if job.result is not None:  # workers that report nothing to Tune: the rows they stored are the result
        tune.report(job.result())


TRAIN_CONTROLLER = "TrainController"  # Ray 2.60's class of the actor that creates a Train run's placement group


def leftover_placement_groups(trial_pg: str | None = None) -> list[tuple[str, str]]:
    """(placement group, Tune trial placement group it belongs to) of every live placement group that a Ray Train
    controller created and no longer manages: the controller is dead or, given `trial_pg` (a trial driver whose
    `fit()` has ended), it ran inside that trial's own placement group.

    Train V2 names none of its placement groups (2.60: `WorkerGroup._create_placement_group`), but the GCS records
    each one's creator: the controller, which Tune places inside the trial's placement group. One whose creator
    died lives on until its job ends (ray-project/ray#54305), and forever when it was registered just as its
    driver was killed (seen here: its job and creator dead, the GCS flags never set, 1.9 CPUs held and the next
    trial's workers waiting on them). So the creator's own state decides, whatever the job. Read through
    `ray._private.state`: the public `ray.util.placement_group_table()` leaves the creator out.
    """
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    gcs = state._connect_and_get_accessor()
    found = []
    for raw in gcs.get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if pg.state == pg.REMOVED or pg.is_detached:
            continue
        creator = ray.ActorID(pg.creator_actor_id)
        info = None if creator.is_nil() else gcs.get_actor_info(creator)
        if info is None:
            continue  # made by a driver (Tune's trial placement groups), not by an actor
        actor = gcs_pb2.ActorTableData.FromString(info)
        if actor.class_name != TRAIN_CONTROLLER:
            continue
        home, dead = actor.placement_group_id.hex(), pg.creator_actor_dead or actor.state == actor.DEAD
        if dead or (trial_pg is not None and home == trial_pg):
            found.append((pg.placement_group_id.hex(), home))
    return found


def remove_leftover_placement_groups(trial_pg: str | None = None, owners: dict[str, str] | None = None) -> list[str]:
    """Remove what `leftover_placement_groups(trial_pg)` finds, one log line each; `owners` (Tune trial placement
    group -> trial id) names the trial. Never raises: a failed check must not fail a trial or the sweep."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = []
    try:
        for pg_id, home in leftover_placement_groups(trial_pg):
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
            owner = (owners or {}).get(home)
            whose = f"trial {owner}" if owner else f"a trial that has ended (Tune placement group {home})"
            print(f"removed placement group {pg_id} left behind by the Train run of {whose} (ray-project/ray#54305)",
                  flush=True)
            removed.append(pg_id)
    except Exception as exc:  # noqa: BLE001 — e.g. the GCS unreachable while the cluster goes down
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"warning: could not check for leftover placement groups: {reason}", flush=True)
    return removed


def worker_loop(config: dict) -> None:
    """Ray Train worker: the trial's trajectory (or, with `search.trajectories_per_trial`, each of its grid points
    in turn, on the same workers) round by round under DDP; rank 0 writes rows, every rank reports."""
    import ray.train
    import torch

    cfg = build(SweepConfig, config["sweep"])
    params = config["params"]
    points = params[PACK_KEY] if PACK_KEY in params else [params]
    rank = ray.train.get_context().get_world_rank()
    for i, point in enumerate(points):
        ticket = trial_ticket(cfg, point)
        if ticket.train.threads is None:
            torch.set_num_threads(max(1, round(cfg.resources.cpus_per_worker)))
        # each trajectory of a packed trial is a trial of the results (its own rows, ticket row and curve count)
        name = config["trial"] if PACK_KEY not in params else f"{config['trial']}-{i}"
        run_trajectory(cfg, ticket, point, name, rank, config.get("trial_pg"), i if PACK_KEY in params else None)


def run_trajectory(cfg: SweepConfig, ticket: TicketConfig, params: dict, trial: str, rank: int, trial_pg: str | None,
                   index: int | None) -> None:
    """One trajectory (or transfer job) of a trial on this Ray Train worker, reporting each round to Tune."""
    import ray
    import ray.train
    from ray.train.torch import get_device

    from ..results import Recorder
    from ..store import ResultsStore
    from ..tickets import Trajectory, round_lines

    ticket.train.progress = False  # a sweep logs one line a round, never a per-step bar
    traj = Trajectory(ticket, work_dir(cfg), device=get_device())
    recorder = Recorder(ResultsStore(results_dir(cfg)) if rank == 0 else None, ticket.keep_weights,
                        sweep=cfg.name, trial=trial, node_id=ray.get_runtime_context().get_node_id())
    best: dict[str, float] = {}
    full_losses: dict[str, list[float]] = {}

    def on_round(state) -> None:
        recorder(state)
        main = state.ticket
        for line in round_lines(state):  # the trial's log (the dashboard shows it per worker)
            print(line, flush=True)
        if state.round == 0:
            full_losses.update(state.losses)  # reported with round 1
            return  # the full model: the bar, not a point of the trajectory for the scheduler
        losses = {**full_losses, **state.losses}
        full_losses.clear()
        report = {"gain": main.metric - main.full_metric, "metric": main.metric, "sparsity": main.sparsity}
        for key, value in report.items():  # Optuna scores a trial by its best round, not its last
            best[key] = max(best.get(key, float("-inf")), value)
        ray.train.report({
            "round": state.round, "task": main.task, "full_metric": main.full_metric, "resumed": state.resumed,
            **report, **{f"best_{k}": v for k, v in best.items()},
            **({"trajectory": index} if index is not None else {}),  # which grid point of a packed trial
            # every DDP rank's mask id for this round (empty when the round was loaded from disk)
            "replica_mask_ids": ",".join(traj.replica_mask_ids.get(state.round, [])),
            "node_id": ray.get_runtime_context().get_node_id(),
            "trial_placement_group": trial_pg,  # names the trial in sweep.PlacementGroupSweeper's log
            STEP_LOSSES: losses,  # per-step training losses of each kind, for the trackers (tracking.py)
        })

    job = job_of(params.get(JOB_KEY, {}))
    if isinstance(job, TransferJob):
        mask = ResultsStore(cfg.search.transfer.source).load_mask(job.mask_id) if job.mask_id else None
        traj.transfer(mask, job.source_task, job.mask_id, level=job.level, on_round=on_round)
    else:  # an ordinary trajectory, or a transfer target's own ticket (OwnJob: it stops at the level)
        traj.run(on_round=on_round)
        recorder.finish(traj)
