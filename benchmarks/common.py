"""What the benchmark scripts share (they run as `python benchmarks/NAME.py`, so this sits beside them)."""

import argparse
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_glue_dir() -> str:
    """GLUE TSVs: $RAYTICKETS_GLUE_DIR, else ../shared/glue beside the checkout (as the tests find them)."""
    return os.environ.get("RAYTICKETS_GLUE_DIR") or str(REPO.parent / "shared" / "glue")


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """The flags of a benchmark that runs sweeps on its own embedded Ray."""
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray; a trial's worker gets cpus - 0.1")
    p.add_argument("--glue-dir", default=default_glue_dir())
    p.add_argument("--temp-dir", help="Ray temp dir (default: a new /tmp/rtbXXXX)")
    p.add_argument("--dashboard-port", type=int, help="default: a free port")


def resources(cpus: int) -> dict:
    """One worker per trial on all but the 0.1 CPU its trial driver needs, one trial at a time."""
    return {"num_workers": 1, "cpus_per_worker": cpus - 0.1, "trial_driver_cpus": 0.1, "num_cpus": cpus}


def ray_temp_and_port(args) -> tuple[str, int]:
    """The embedded Ray's private temp dir and dashboard port (short /tmp path: Ray's socket paths are capped)."""
    from raytickets.sweep.cluster import free_port

    return args.temp_dir or tempfile.mkdtemp(prefix="rtb", dir="/tmp"), args.dashboard_port or free_port()
