"""Where a sweep writes: Tune's experiment directory, the Parquet results root and the shared work dir."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ..config import SweepConfig
from ..loader import to_dict
from ..runs import digest

# The packages whose versions can change a sweep's numbers, recorded with it for the report's header.
RECORDED_VERSIONS = ("raytickets", "torch", "transformers", "ray", "optuna", "pyarrow", "numpy")


def sweep_dir(cfg: SweepConfig) -> str:
    """`<storage_path>/<name>`: Tune's experiment directory (a local path or a URI)."""
    return f"{cfg.storage_path.rstrip('/')}/{cfg.name}"


def work_dir(cfg: SweepConfig) -> Path:
    """Trajectory state and the tokenised data: a local (or NFS-mounted) directory every worker sees."""
    if cfg.work_dir:
        return Path(cfg.work_dir)
    if "://" in cfg.storage_path:  # object storage: state stays on the node (a retry elsewhere recomputes)
        return Path.home() / "raytickets-work" / cfg.name
    return Path(sweep_dir(cfg)) / "work"


def results_dir(cfg: SweepConfig) -> str:
    return cfg.results_dir or f"{sweep_dir(cfg)}/results"


def sweep_record(cfg: SweepConfig) -> dict:
    """What a sweep runs with, stored next to its results (`ResultsStore.write_sweep_record`): the resolved
    config, its digest, the start time and the package versions; the report reads it for its header and cost."""
    config = to_dict(cfg)
    versions = {"python": platform.python_version()}
    for name in RECORDED_VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"name": cfg.name, "config_digest": digest(config), "config": config,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions}
