"""Real Ray for the sweep tests: a cluster of `ray start` processes (a head and worker nodes, each with a short temp
dir of its own, stopped by PID: never `ray stop`), and the process helpers the tests kill drivers and nodes with."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from raytickets.sweep.cluster import free_port


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it (Ray's workers run in process groups of their own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def kill_tree(root: int) -> None:
    """SIGKILL a driver and every process it started, all at once: a dead machine, not a shutdown."""
    for pid in process_tree(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def node_cpus(address: str, env: dict) -> dict[str, float]:
    """Node id -> CPUs of the cluster at `address`, read from Ray's own node table by a separate driver."""
    code = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
            "print(json.dumps({n['NodeID']: n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive']}))" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass
class Cluster:
    address: str
    env: dict  # token authentication and the state API's address, for every process that joins
    nodes: list[subprocess.Popen] = field(default_factory=list)  # the head first

    @property
    def machine(self) -> subprocess.Popen:
        """The first worker node's `ray start` process: its process tree holds the trials run there."""
        return self.nodes[1]

    def add_node(self, cpus: int) -> subprocess.Popen:
        node = subprocess.Popen(
            ["ray", "start", f"--address={self.address}", f"--num-cpus={cpus}", *_NODE_ARGS,
             f"--temp-dir={tempfile.mkdtemp(prefix='rt', dir='/tmp')}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env, start_new_session=True)
        self.nodes.append(node)
        return node

    def wait_for_nodes(self, n: int, timeout: float = 120) -> dict[str, float]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            nodes = node_cpus(self.address, self.env)
            if len(nodes) == n:
                return nodes
            time.sleep(1)
        raise TimeoutError(f"the cluster did not reach {n} nodes in {timeout} s")

    def sweep(self, config: Path, *extra: str, log: Path) -> subprocess.Popen:
        """`python -m raytickets.sweep --address` in its own session, stdout and stderr to `log`."""
        return subprocess.Popen(
            [sys.executable, "-m", "raytickets.sweep", "--config", str(config), "--address", self.address, *extra],
            stdout=log.open("a"), stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def run_sweep(self, config: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "raytickets.sweep", "--config", str(config), "--address", self.address, *extra],
            capture_output=True, text=True, timeout=timeout, env=self.env)

    def python(self, code: str, timeout: int = 120) -> str:
        """Run `code` as a separate driver (the cluster's address its sys.argv[1]); its stdout."""
        out = subprocess.run([sys.executable, "-c", code, self.address], capture_output=True, text=True,
                             timeout=timeout, env=self.env)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout


_NODE_ARGS = ["--block", "--disable-usage-stats", "--object-store-memory=150000000"]


@contextlib.contextmanager
def ray_cluster(head_cpus: int, worker_cpus: tuple[int, ...] = ()):
    """A head with `head_cpus` CPUs and one worker node per entry of `worker_cpus`, with token authentication on
    (one token for every node and driver, as a user's cluster has it: cluster/README.md). Torn down with
    SIGKILL of each node's whole process tree: nothing it started outlives the test."""
    port, dash = free_port(), free_port()
    env = dict(_env(), RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{dash}", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=os.urandom(16).hex())
    cluster = Cluster(f"127.0.0.1:{port}", env)
    cluster.nodes.append(subprocess.Popen(
        ["ray", "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
         f"--num-cpus={head_cpus}", f"--temp-dir={tempfile.mkdtemp(prefix='rt', dir='/tmp')}", *_NODE_ARGS],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True))
    try:
        _wait_for_port(port)
        for cpus in worker_cpus:
            cluster.add_node(cpus)
        cluster.wait_for_nodes(1 + len(worker_cpus))
        yield cluster
    finally:
        for node in reversed(cluster.nodes):
            kill_tree(node.pid)
            node.wait()
