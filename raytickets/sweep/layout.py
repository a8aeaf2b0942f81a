"""Where a sweep writes: Tune's experiment directory, the Parquet results root and the shared work dir."""

from __future__ import annotations

from pathlib import Path

from ..config import SweepConfig


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
