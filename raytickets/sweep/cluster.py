"""Where a sweep runs: connecting to a cluster (or starting an embedded local Ray) and checking, before any
trial starts, that the address answers, the storage is writable and a trial's workers can ever fit.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..config import SweepConfig
from ..errors import ConfigError


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


def check_storage(target_dir: str) -> None:
    """Write and remove a probe file, so an unwritable storage path fails before any trial starts."""
    import pyarrow.fs as pafs

    target = target_dir
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
