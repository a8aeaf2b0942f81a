"""`python -m raytickets.sweep` (and `raytickets sweep`): run, resume or dry-run a sweep config."""

from __future__ import annotations

import argparse
import os

from ..errors import ConfigError, OneLineParser, one_line
from . import modes
from .capacity import preflight
from .tuner import load_config, run, stages


PROG = "python -m raytickets.sweep"


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description="Run a distributed ticket sweep.")
    p.add_argument("--config", default="configs/smoke.yaml", help="sweep YAML (default configs/smoke.yaml)")
    p.add_argument("--address", help="auto, host:port or ray://host:port of a cluster (default: embedded local Ray)")
    p.add_argument("--resume", action="store_true", help="restore an interrupted sweep of the same name and storage")
    p.add_argument("--dry-run", action="store_true", help="validate the config and print the plan, run nothing")
    p.add_argument("--temp-dir", help="embedded Ray only: its temp/session directory")
    p.add_argument("--dashboard-port", type=int, help="embedded Ray only: the dashboard's port (default 8265)")
    p.add_argument("--steps-per-second", type=float, metavar="X",
                   help="--dry-run: your workers' training steps per second for the wall-time estimate (default: "
                        "measure one step of the config on this machine)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="any config field, e.g. search.num_samples=8")
    return p


def dry_run(cfg, steps_per_second: float | None = None) -> str:
    """The plan of every stage and what it costs, checked as far as it can be before anything runs."""
    from .cost import describe, measure_steps_per_second

    parts = stages(cfg)
    first = modes.of(parts[0])
    state = first.start(parts[0])
    lines = [first.describe(parts[0], state, first.space(parts[0], state))]
    cost = first.cost(parts[0], state)
    if cost is None:
        lines.append(f"cost: not estimated for mode {first.name}")
    else:
        measured = steps_per_second is None and cost.steps > 0
        r = parts[0].resources
        if measured and r.use_gpu and not _has_gpu():
            lines.append(describe(cost, parts[0], None, False))
            lines.append("  estimate: the config trains on GPUs and this machine has none to measure a step on; "
                         "give --steps-per-second (one worker's steps per second on your GPUs)")
        else:
            if measured:
                steps_per_second = measure_steps_per_second(parts[0].ticket, round(r.cpus_per_worker), r.use_gpu)
            lines.append(describe(cost, parts[0], steps_per_second, measured))
    for stage in parts[1:]:
        lines += [modes.of(stage).describe_stage(stage), "  its cost: known once the first stage has written its "
                  "tickets"]
    if placeholder := placeholder_storage(cfg.storage_path):
        lines.append(f"storage_path: {cfg.storage_path!r} is the shipped placeholder {placeholder!r}: set your bucket "
                     "(storage_path=s3://...) before a real run")
    return "\n".join(lines)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


PLACEHOLDERS = ("YOUR-BUCKET",)  # what the shipped cluster configs hold where the user's bucket goes


def placeholder_storage(path: str) -> str | None:
    return next((p for p in PLACEHOLDERS if p in path), None)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """`prog`: the command as the user typed it (`raytickets sweep`), which its usage errors name."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return one_line(_main, parser(prog).parse_args(argv))


def _main(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.steps_per_second is not None and not args.steps_per_second > 0:
        raise ConfigError(f"--steps-per-second: {args.steps_per_second} must be > 0")
    if args.dry_run:
        # the plan and its cost first (what a cluster config would cost is worth knowing on a laptop), then what
        # the run checks before Ray starts (capacity.py), which may refuse this machine in one line
        print(dry_run(cfg, args.steps_per_second), flush=True)
        preflight(cfg, args.address, args.dashboard_port)
        return 0
    if placeholder := placeholder_storage(cfg.storage_path):
        raise ConfigError(f"storage_path: {cfg.storage_path!r} is the placeholder {placeholder!r}; set your bucket, "
                          "e.g. storage_path=s3://my-bucket/raytickets")
    run(cfg, args.address, args.resume, args.temp_dir, args.dashboard_port)
    return 0
