"""Where a sweep runs: connecting to a cluster (or starting an embedded local Ray) and checking, before any
trial starts, that the address answers, the storage is writable and a trial's workers can ever fit.
"""

from __future__ import annotations

import contextlib
import os
import socket
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
    """An unwritable storage path fails before any trial starts; the probe leaves nothing behind (not even the
    sweep's folder: bad input found after this check must leave storage_path as it was)."""
    from ..errors import ResultsError
    from ..store import check_writable, open_filesystem

    try:
        fs, path = open_filesystem(target_dir)
        check_writable(fs, path, "storage_path", repr(target_dir))
    except ResultsError as e:
        raise ConfigError(str(e) if str(e).startswith("storage_path") else f"storage_path: {e}") from None


def connect(address: str | None, cfg: SweepConfig, temp_dir: str | None = None, dashboard_port: int | None = None):
    """Join a cluster (`address`) or start an embedded local Ray with the dashboard on."""
    import ray

    if ray.is_initialized():
        return None
    kwargs = dict(include_dashboard=True, log_to_driver=True)
    if address is None:
        port = dashboard_port or free_port(8265)
        kwargs.update(address="local", num_cpus=cfg.resources.num_cpus, dashboard_host="127.0.0.1", dashboard_port=port,
                      _node_ip_address="127.0.0.1")  # every port on loopback: `loopback_node`
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
        with loopback_node() if address is None else contextlib.nullcontext():
            return ray.init(**kwargs)
    except ConnectionError as e:
        hint = "" if os.environ.get("RAY_AUTH_MODE") else " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token: cluster/README.md)"
        raise ConfigError(f"--address: cannot connect to Ray at {address!r}: {str(e).splitlines()[0]}{hint}") from None


@contextlib.contextmanager
def loopback_node():
    """While an embedded Ray starts: its node IP is 127.0.0.1, so its GCS, raylet, workers, agents and this driver
    listen on loopback only (Ray's servers bind 0.0.0.0 unless the node IP is 127.0.0.1), not on every
    interface. Ray 2.60 has no option for it: `ray.init(_node_ip_address="127.0.0.1")` is turned back into the
    machine's address (services.resolve_ip_for_localhost) unless `ray_constants.ENABLE_RAY_CLUSTER` is off,
    which is what its environment variable does on macOS and Windows. Set for the driver's start and inherited
    by the processes it starts; both are restored after, so a later `--address` in this process is unaffected."""
    from ray._private import ray_constants

    name = getattr(ray_constants, "ENABLE_RAY_CLUSTERS_ENV_VAR", None)
    if name is None or not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):  # a Ray without the switch: as before
        yield
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(name)
    ray_constants.ENABLE_RAY_CLUSTER, os.environ[name] = False, "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved[0]
        if saved[1] is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved[1]


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
