"""The embedded Ray a sweep starts (no --address) listens on loopback only: its GCS, raylet, agents, workers and the
driver itself, not on every interface (issue 20, section 3). Run in a fresh process: connect() sets process-wide
state (the dashboard address for Train's cleaner) that must not leak into other tests."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

from .ray_helpers import _env

PROBE = """
import json, os, sys
import ray  # puts Ray's vendored psutil on sys.path
import psutil
from raytickets.config import ResourcesConfig, SweepConfig
from raytickets.sweep.cluster import connect

connect(None, SweepConfig(resources=ResourcesConfig(num_cpus=1)), temp_dir=sys.argv[1])
ray.get(ray.remote(lambda: os.getpid()).remote())  # a worker process is up (it serves gRPC too)
me = psutil.Process()
listening = [[p.pid, p.name(), c.laddr.ip, c.laddr.port] for p in [me, *me.children(recursive=True)]
             for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
print(json.dumps({"driver": me.pid, "listening": listening}))
ray.shutdown()
"""
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_an_embedded_ray_listens_on_loopback_only():
    with tempfile.TemporaryDirectory(prefix="rt-lo-", dir="/tmp") as temp:  # short: Ray's socket paths have a limit
        proc = subprocess.run([sys.executable, "-c", PROBE, temp], capture_output=True, text=True, timeout=180,
                              env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    listening = seen["listening"]
    names = {name for _, name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, listening  # the probe saw Ray's own servers ...
    assert any(pid == seen["driver"] for pid, *_ in listening), listening  # ... and the driver's gRPC server
    exposed = [entry for entry in listening if entry[2] not in LOOPBACK]
    assert exposed == [], exposed
