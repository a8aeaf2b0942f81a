"""Whether a sweep's trials fit where they run, checked before anything starts and watched while it runs.

A trial needs its driver (`resources.trial_driver_cpus`, placed by Tune) and then its Train workers (placed by
Train V2 in a placement group of their own, which Tune cannot reserve with the driver's: the controller creates
it). Ray never refuses a need that cannot fit: the trial waits for its workers forever (RAY_NOTES.md). So:

- `preflight`: the checks needing no Ray (ports, the address, the embedded machine's CPUs and GPUs);
- `check_cluster`: right after connecting, the same fit against the live nodes;
- `CapacityWatch`: a Tune callback that caps the trials alive at once by how many whole trials (driver + every
  worker) the live nodes hold, re-read every few seconds, as Ray's Train + Tune guide advises
  (`max_concurrent_trials` from the limiting resource); on a cluster that cannot grow and holds no trial at all it
  ends the sweep after Train's worker-group start timeout, resumable once a node is back;
- `trial.trial_driver` gives a worker group that timeout once (`controller_failure_limit` 0): a trial whose workers
  cannot start fails in one line (`CapacityError`) instead of Train retrying it every 60 s without end.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from ray.tune import Callback

from ..config import SweepConfig
from ..errors import ConfigError, RayticketsError

EPS = 1e-4  # Ray keeps resource amounts in units of 1e-4
WATCH_EVERY_S = 5.0
SAY_WAITING_EVERY_S = 60.0
# After a trial fails, no new trial starts in the slots it and others leave for this long: a lost node is seen dead
# by Ray seconds after its trials fail (~10 s here), and a new trial started in between would sit beside the
# failed one's retry on the survivors, each driver holding CPUs the other's workers need.
SETTLE_S = 30.0


class CapacityError(RayticketsError):
    """A trial, or the whole sweep, cannot get the resources it needs on a cluster that cannot grow."""


@dataclass(frozen=True)
class Need:
    """One trial's resources: its driver's bundle and `workers` copies of one worker's bundle."""

    driver: dict
    worker: dict
    workers: int

    def __str__(self) -> str:
        return f"a trial needs {_amounts(self.driver)} for its driver + {self.workers} worker(s) x {_amounts(self.worker)}"


def need_of(cfg: SweepConfig) -> Need:
    r = cfg.resources
    worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}
    return Need({"CPU": r.trial_driver_cpus}, worker, r.num_workers)


def _amounts(resources: dict) -> str:
    return " + ".join(f"{v:g} {k}" for k, v in resources.items())


def describe_nodes(nodes: list[dict]) -> str:
    if not nodes:
        return "no node"
    nodes = sorted(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), reverse=True)
    parts = [", ".join(f"{n.get(k, 0):g}" for n in nodes) + f" {k}" for k in ("CPU", "GPU") if any(n.get(k) for n in nodes)]
    return f"{len(nodes)} node(s) with " + (" and ".join(parts) or "no CPU")


def trials_that_fit(nodes: list[dict], need: Need, limit: int) -> int:
    """How many whole trials (driver + every worker), up to `limit`, the nodes' totals hold at once, placed one
    trial after another as Ray places them (each bundle on the first node with room, a trial's workers first).
    Ray may place them less tightly; the worker-group start timeout covers that."""
    free = [dict(n) for n in nodes]
    for placed in range(limit):
        if not _place(free, [need.worker] * need.workers + [need.driver]):
            return placed
    return limit


def _place(free: list[dict], bundles: list[dict]) -> bool:
    """Take `bundles` from `free` (all of them, or none)."""
    taken = []
    for bundle in bundles:
        node = next((n for n in free if all(n.get(k, 0) + EPS >= v for k, v in bundle.items())), None)
        if node is None:
            for node, bundle in taken:
                for k, v in bundle.items():
                    node[k] += v
            return False
        for k, v in bundle.items():
            node[k] = node.get(k, 0) - v
        taken.append((node, bundle))
    return True


def check_fits(cfg: SweepConfig, nodes: list[dict], where: str) -> int:
    """How many trials fit `nodes` at once (>= 1), or the one-line ConfigError naming the field that cannot fit."""
    r, need = cfg.resources, need_of(cfg)
    most = {k: max((n.get(k, 0) for n in nodes), default=0) for k in ("CPU", "GPU")}
    if r.use_gpu and most["GPU"] <= 0:
        raise ConfigError(f"resources.use_gpu: true, but {where} has no GPU; allowed: false (CPU workers) or a "
                          "machine or cluster with GPUs")
    if r.use_gpu and r.gpus_per_worker > most["GPU"] + EPS:
        raise ConfigError(f"resources.gpus_per_worker: {r.gpus_per_worker:g} is more than any node of {where} has "
                          f"(at most {most['GPU']:g} GPU); allowed: up to {most['GPU']:g}")
    if r.cpus_per_worker > most["CPU"] + EPS:
        raise ConfigError(f"resources.cpus_per_worker: {r.cpus_per_worker:g} is more than any node of {where} has "
                          f"(at most {most['CPU']:g} CPU); allowed: up to {most['CPU']:g}")
    fit = trials_that_fit(nodes, need, 1)
    if fit < 1:
        raise ConfigError(f"resources.num_workers: {r.num_workers} workers x {_amounts(need.worker)} + "
                          f"{_amounts(need.driver)} for the trial driver do not fit {where} ({describe_nodes(nodes)}); "
                          "lower resources.num_workers, cpus_per_worker or trial_driver_cpus")
    return fit


# ---------------------------------------------------------------- before Ray starts


def local_node(cfg: SweepConfig) -> dict:
    """The embedded Ray's one node as Ray itself will size it: `resources.num_cpus` or the CPUs Ray detects (cgroup
    limits included), and the GPUs Ray detects."""
    from ray._private.accelerators import get_accelerator_manager_for_resource
    from ray._private.utils import get_num_cpus

    gpus = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    return {"CPU": cfg.resources.num_cpus or get_num_cpus(), "GPU": gpus}


def preflight(cfg: SweepConfig, address: str | None, dashboard_port: int | None) -> None:
    """Everything about where the sweep runs that is checkable before Ray starts and before anything is written:
    the dashboard port, the address (its form and that something listens there) and, for the embedded Ray, whether
    a trial fits this machine. `--dry-run` runs it too."""
    from .cluster import check_address

    if dashboard_port is not None and not 1 <= dashboard_port <= 65535:
        raise ConfigError(f"--dashboard-port: {dashboard_port} is not a port; allowed: 1 to 65535")
    if address is None:
        num_cpus = cfg.resources.num_cpus
        check_fits(cfg, [local_node(cfg)], "the embedded Ray" + (f" (resources.num_cpus: {num_cpus})" if num_cpus
                                                                 else " (this machine)"))
        return
    if not address.strip() or any(c.isspace() for c in address):
        raise ConfigError(f"--address: {address!r} is not auto, host:port or ray://host:port")
    try:
        check_address(address)
    except ValueError as e:  # urlparse's port out of range or not a number
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"--address: {address!r} is not auto, host:port or ray://host:port ({e})") from None


# ---------------------------------------------------------------- once connected


def live_nodes() -> list[dict]:
    """Each live node's total CPU and GPU (Ray's node table; a node killed drops out once the GCS sees it dead)."""
    import ray

    return [{k: n["Resources"].get(k, 0) for k in ("CPU", "GPU")} for n in ray.nodes() if n.get("Alive")]


def check_cluster(cfg: SweepConfig, address: str | None) -> int:
    """`check_fits` against the live nodes, right after connecting and before any trial; an autoscaling cluster
    (`resources.autoscaling`) may grow into the need, so only its GPU and per-node sizes are not checked."""
    if cfg.resources.autoscaling:
        return cfg.search.max_concurrent_trials
    return check_fits(cfg, live_nodes(), f"the cluster at {address}" if address else "the embedded Ray")


def free_now() -> str:
    import ray

    free = ray.available_resources()
    return ", ".join(f"{free.get(k, 0):g} {k}" for k in ("CPU", "GPU") if k == "CPU" or free.get(k)) + " free now"


def start_timeout_s() -> float:
    """How long a trial's workers may wait to be placed: Ray Train's worker-group start timeout (its environment
    variable in the sweep's environment, else Ray's default, 60 s)."""
    from ray.train.v2._internal.constants import (
        DEFAULT_WORKER_GROUP_START_TIMEOUT_S,
        WORKER_GROUP_START_TIMEOUT_S_ENV_VAR,
    )

    raw = os.environ.get(WORKER_GROUP_START_TIMEOUT_S_ENV_VAR, "")
    try:
        value = float(raw) if raw else DEFAULT_WORKER_GROUP_START_TIMEOUT_S
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{WORKER_GROUP_START_TIMEOUT_S_ENV_VAR}: {raw!r} is not a number of seconds > 0")
    return value


def workers_did_not_start(cfg: SweepConfig, trial: str, timeout_s: float) -> CapacityError:
    """The one line a trial fails with when its worker group was not placed within the timeout."""
    return CapacityError(
        f"trial {trial}: its Train workers did not start within {timeout_s:g} s: {need_of(cfg)}; the cluster has "
        f"{describe_nodes(live_nodes())} ({free_now()}) and cannot grow (resources.autoscaling: false)")


# ---------------------------------------------------------------- while the sweep runs


def limited(search_alg, cap: int):
    """`search_alg` (None: Tune's grid generator) with a concurrency limit that `CapacityWatch` can lower and raise
    while the sweep runs: Tune's own `BasicVariantGenerator(max_concurrent)` or `ConcurrencyLimiter`."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if search_alg is None:
        return BasicVariantGenerator(max_concurrent=cap)
    return ConcurrencyLimiter(search_alg, max_concurrent=cap)


class CapacityWatch(Callback):
    """Keeps the trials alive at once to what the live nodes hold whole (at most `search.max_concurrent_trials`),
    re-read every WATCH_EVERY_S, and says so when it changes. Where not even one trial fits: an autoscaling cluster
    waits and says what for (every minute); a fixed one ends the sweep with a CapacityError once that has lasted the
    worker-group start timeout (a node restarting comes back within it), leaving Tune's state for `--resume`. After
    a trial fails the limit is held at the trials alive for SETTLE_S, until Ray has seen what the failure cost."""

    def __init__(self, cfg: SweepConfig, search_alg, timeout_s: float, nodes=None, every_s: float = WATCH_EVERY_S,
                 settle_s: float = SETTLE_S):
        self.nodes = nodes or live_nodes  # what the cluster holds now (a test gives its own)
        self.every_s, self.settle_s = every_s, settle_s
        self.need = need_of(cfg)
        self.most = cfg.search.max_concurrent_trials
        self.autoscaling = cfg.resources.autoscaling
        self.search_alg = search_alg  # the object `limited` made; Tune pickles it together with this callback
        self.timeout_s = timeout_s
        self._reset()

    def _reset(self) -> None:
        self._checked = 0.0
        self._cap: int | None = None
        self._none_since: float | None = None
        self._said: float | None = None
        self._hold_until = 0.0
        self._nodes: list[dict] = []

    def setup(self, **info) -> None:  # a resumed sweep starts its clocks again
        self._reset()

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._failed()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._failed()

    def _failed(self) -> None:
        self._hold_until = time.monotonic() + self.settle_s

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self._checked >= self.every_s:
            self._checked, self._nodes = now, self.nodes()
        elif now >= self._hold_until:
            return  # while held, every step: a trial that ends must not leave its slot to a new one
        nodes = self._nodes
        cap = trials_that_fit(nodes, self.need, self.most)
        if not self.autoscaling:
            alive = sum(t.status in ("PENDING", "RUNNING", "PAUSED") for t in trials)
            held = now < self._hold_until and alive < max(cap, 1)
            self._set_limit(max(alive, 1) if held else max(cap, 1), nodes, cap, held)
        if cap >= 1:
            self._none_since = None
            return
        self._none_since = self._none_since or now
        waiting = [t for t in trials if t.status in ("PENDING", "RUNNING")]
        if self.autoscaling:
            if self._said is None or now - self._said >= SAY_WAITING_EVERY_S:
                self._said = now
                print(f"waiting for the cluster to grow: {self.need}; it has {describe_nodes(nodes)}; "
                      f"{len(waiting)} trial(s) waiting", flush=True)
            return
        if now - self._none_since >= self.timeout_s:
            raise CapacityError(
                f"sweep stopped: no trial fits the cluster for {now - self._none_since:.0f} s: {self.need}; it has "
                f"{describe_nodes(nodes)} and cannot grow; {len(waiting)} trial(s) unfinished: add a node, then run "
                "again with --resume")

    def _set_limit(self, limit: int, nodes: list[dict], cap: int, held: bool) -> None:
        if limit == self._cap:
            return
        if self._cap is not None or limit < self.most:
            note = f"; held for up to {self.settle_s:g} s after a trial failed" if held else ""
            print(f"trials at once: at most {limit} ({self.need}; the cluster has {describe_nodes(nodes)}"
                  + ("; none fits now" if not cap else "") + note + ")", flush=True)
        self._cap = limit
        self.search_alg.max_concurrent = limit  # both read it before each new trial
