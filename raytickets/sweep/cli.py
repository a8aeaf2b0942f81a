"""`python -m raytickets.sweep` (and `raytickets sweep`): run, resume or dry-run a sweep config."""

from __future__ import annotations

import argparse
import os

from ..errors import OneLineParser, one_line
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
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="any config field, e.g. search.num_samples=8")
    return p


def dry_run(cfg) -> str:
    """The plan of every stage, checked as far as it can be before anything runs."""
    parts = stages(cfg)
    first = modes.of(parts[0])
    state = first.start(parts[0])
    lines = [first.describe(parts[0], state, first.space(parts[0], state))]
    lines += [modes.of(stage).describe_stage(stage) for stage in parts[1:]]
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """`prog`: the command as the user typed it (`raytickets sweep`), which its usage errors name."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return one_line(_main, parser(prog).parse_args(argv))


def _main(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(dry_run(cfg), flush=True)
        preflight(cfg, args.address, args.dashboard_port)  # what the run checks before Ray starts (capacity.py)
        return 0
    run(cfg, args.address, args.resume, args.temp_dir, args.dashboard_port)
    return 0
