"""Faults a sweep must survive (the issue "Survive the cluster"): a worker node lost mid-round, a Train worker
killed mid-round, the driver killed ten times at random moments, the results root full or read-only mid-sweep,
and the placement groups that stopped trials leave behind (ray-project/ray#54305). docs/reliability.md says
what each guarantees and names these tests.

As in test_sweep.py, every sweep runs as `python -m raytickets.sweep` in a subprocess, here against a cluster
started by `ray start` with short temp dirs of its own and stopped by PID (never `ray stop`). Each test prints
what its fault cost (`pytest -s` shows it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from raytickets.store import TMP_PREFIX, TMP_SUFFIX, ResultsStore
from .ray_helpers import kill_tree, node_cpus, process_tree
from .test_sweep import cli, raw_rounds, sweep_config, trial_results, trials_in_start_order

pytestmark = pytest.mark.slow

KEY = ["trial", "round", "kind"]  # a round row's key in the results root (store.round_key)


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL a driver's whole process tree (as a crash would) and reap it."""
    kill_tree(proc.pid)
    proc.wait()


# ---------------------------------------------------------------- what a sweep leaves on disk


def grid(tmp_path: Path, model: Path, glue: Path, rates=(0.3,), rounds: int = 2, max_steps: int = 12,
         **sections) -> Path:
    """An RTE grid over prune.rate: one trial per rate, `rounds` rounds of `max_steps` steps, one thread per worker
    (so a trial's numbers do not depend on the threads it got), on the 2-CPU head."""
    sections = {"resources": {"num_workers": 1, "cpus_per_worker": 1.9, "trial_driver_cpus": 0.1}, **sections}
    return sweep_config(
        tmp_path, model, glue,
        search={"mode": "grid", "space": {"task": {"values": ["rte"]}, "prune.rate": {"values": list(rates)}},
                "num_samples": 1, "scheduler": "none"},
        ticket__train={"max_steps": max_steps, "threads": 1}, ticket__prune={"rounds": rounds}, **sections)


def edit(config: Path, **fields) -> Path:
    data = yaml.safe_load(config.read_text())
    data.update(fields)
    config.write_text(yaml.safe_dump(data))
    return config


def published(work: Path) -> dict[str, set[int]]:
    """Run id -> the rounds (>= 1) its trajectory has published (round directories renamed into place)."""
    runs = work / "runs"
    if not runs.is_dir():
        return {}
    return {run.name: {int(p.name[6:9]) for p in run.glob("round-*")} for run in runs.iterdir()}


def between_rounds(work: Path, last: int) -> tuple[str, int] | None:
    """(run id, r) of a trajectory that has published rounds 1..r (1 <= r < last) and so is training round r + 1."""
    for run, done in published(work).items():
        if done and done == set(range(1, max(done) + 1)) and max(done) < last:
            return run, max(done)
    return None


def fingerprint(directory: Path) -> dict[str, tuple[str, int]]:
    """name -> (sha256, mtime_ns) of a round directory's rows and masks: a round redone would change both. (Its
    weights are left out: a trajectory deletes them on purpose once the next round is published.)"""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.iterdir()) if p.name == "rows.json" or p.name.startswith("mask")}


def round_dirs(work: Path, run: str) -> dict[int, Path]:
    return {int(p.name[6:9]): p for p in (work / "runs" / run).glob("round-*")}


def round_seconds(work: Path, run: str, skip: int) -> float:
    """How long one round takes here: the longest gap between consecutive rounds' rows.json, but for the gap
    that ends at round `skip` (the one a fault interrupted)."""
    times = {r: (d / "rows.json").stat().st_mtime for r, d in round_dirs(work, run).items()}
    return max((times[r] - times[r - 1] for r in times if r - 1 in times and r != skip), default=0.0)


def readable_or_temporary(results: Path) -> list[str]:
    """Every file under a results root a reader would trip over: a `*.parquet` that does not read, or anything that
    is neither a table file, kept weights, the sweep's JSON record nor a writer's temporary `.tmp-*.partial`. Empty
    when all is well."""
    from safetensors.torch import load_file

    bad = []
    for path in results.rglob("*"):
        if not path.is_file():
            continue
        name = path.name
        try:
            if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
                continue  # what a writer left when it died (or failed) mid-write: readers skip it
            if name.endswith(".parquet"):
                pq.read_table(path)
            elif name.endswith(".safetensors"):
                load_file(str(path))
            elif path.parent.name == "sweeps" and name.endswith(".json"):  # the sweep's record (report header)
                json.loads(path.read_text())
            else:
                bad.append(f"{path}: unexpected file")
        except Exception as exc:  # noqa: BLE001 — any failure to read is what this looks for
            bad.append(f"{path}: {type(exc).__name__}: {exc}")
    return bad


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, every: float = 0.05):
    """Poll `condition()` until it returns something truthy; fail if `proc` ends first or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (value := condition()):
            return value
        assert proc is None or proc.poll() is None, f"the sweep ended (rc {proc.returncode}) before {what}"
        time.sleep(every)
    raise AssertionError(f"no {what} within {timeout} s")


def processes(root: int, title: str) -> list[int]:
    """PIDs in `root`'s process tree whose command line (Ray sets it to `ray::<actor class>...`) contains `title`."""
    found = []
    for pid in process_tree(root):
        try:
            if title in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(pid)
        except OSError:
            continue
    return found


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


# ---------------------------------------------------------------- 1. a worker node dies mid-round


def test_a_node_lost_mid_round_costs_that_round_and_tune_retries_the_trial_on_the_surviving_node(
        tmp_path, tiny_model_dir, glue_dir, cluster):
    """The node that runs a trial (its driver and its Train worker) is SIGKILLed, process tree and all, while a
    round trains. Tune retries the trial on the other node; the retry reads the finished rounds from the shared
    work dir (their files untouched) and trains from the lost round on; every row lands once."""
    rounds = 3
    config = grid(tmp_path, tiny_model_dir, glue_dir, rounds=rounds, max_steps=24,
                  resources={"num_workers": 1, "cpus_per_worker": 1.5, "trial_driver_cpus": 0.1})
    storage = tmp_path / "storage"
    results, work = storage / "t" / "results", storage / "t" / "work"
    log = tmp_path / "sweep.log"
    survivor_id = {n for n, cpus in node_cpus(cluster.address, cluster.env).items() if cpus}
    # The survivor's CPUs are held by another driver until the trial is placed, so that the trial's driver and
    # its worker both land on the node that dies (where each goes is otherwise Ray's choice).
    blocker = subprocess.Popen([sys.executable, "-c", HOLD_A_NODE, cluster.address], stdout=subprocess.PIPE,
                               text=True, env=cluster.env, start_new_session=True)
    driver = None
    try:
        assert blocker.stdout.readline().strip() == "holding", "the blocker could not reserve the survivor's CPUs"
        doomed = cluster.add_node(2)
        (doomed_id,) = {n for n, cpus in cluster.wait_for_nodes(3).items() if cpus} - survivor_id
        driver = cluster.sweep(config, log=log)
        wait_for(lambda: processes(doomed.pid, "RayTrainWorker"), 300, "a Train worker on the doomed node", driver)
        assert processes(doomed.pid, "ImplicitFunc"), "the trial's driver is not on the doomed node"
        stop(blocker)  # its job ends, its placement group goes: the survivor's CPUs are free for the retry
        run, done = wait_for(lambda: between_rounds(work, rounds), 300, "a trajectory between two rounds", driver)
        before = {r: fingerprint(d) for r, d in round_dirs(work, run).items()}
        full_before = {d.name: fingerprint(d) for d in (work / "full").iterdir() if d.is_dir()}
        killed = time.time()
        kill_tree(doomed.pid)  # the node's raylet, its workers and the trial: a machine gone, not a shutdown
        doomed.wait()
        rows_before = raw_rounds(results)
        assert between_rounds(work, rounds) == (run, done), f"round {done + 1} was published as the node died"
        wait_for(lambda: max(published(work)[run]) > done, 400, f"round {done + 1} after the node died", driver,
                 every=0.2)
        redone = time.time()
        assert driver.wait(timeout=600) == 0, tail(log)
        finished = time.time()
    finally:
        for proc in (blocker, driver):
            if proc is not None:
                stop(proc)

    rows = raw_rounds(results)
    assert not rows.duplicated(KEY).any()
    assert sorted(rows["round"]) == list(range(rounds + 1))  # the full model and every round, each once
    # the rounds finished before the fault were read from disk by the retry, never written again
    assert {r: fingerprint(d) for r, d in round_dirs(work, run).items() if r <= done} == before
    assert {d.name: fingerprint(d) for d in (work / "full").iterdir() if d.is_dir()} == full_before
    assert set(rows_before["node_id"]) == {doomed_id}  # trained before the fault ...
    assert set(rows.loc[rows["round"] > done, "node_id"]) == survivor_id  # ... and after it, elsewhere
    # The retry wrote the saved rounds' rows again, under the same keys and with the same values (not
    # retrained: same finished_at), but names itself as their node: node_id says who recorded a row.
    same = rows.set_index(KEY).loc[rows_before.set_index(KEY).index].drop(columns="node_id")
    assert same.equals(rows_before.set_index(KEY).drop(columns="node_id"))
    (trial,) = trial_results(storage)
    reports = trial["reports"]
    retried = [r for r in reports if r["resumed"]]  # the retry's reports of the rounds it found on disk
    assert {r["round"] for r in retried} == set(range(1, done + 1)) and {r["node_id"] for r in retried} == survivor_id
    assert not any(r["resumed"] for r in reports if r["round"] > done)  # the rest was trained after the fault
    assert (storage / "t" / trial["dir"] / "error.txt").is_file()  # the trial errored: Tune, not Train, retried it
    lost, per_round = redone - killed, round_seconds(work, run, skip=done + 1)
    print(f"\nnode loss: killed mid-round {done + 1}; that round was published {lost:.0f} s later, where a round "
          f"takes ~{per_round:.0f} s here: ~{lost - per_round:.0f} s lost to detection, rescheduling and restart; "
          f"the sweep ended {finished - killed:.0f} s after the kill")


HOLD_A_NODE = textwrap.dedent("""
    import sys, time, ray
    from ray.util.placement_group import placement_group
    ray.init(address=sys.argv[1], log_to_driver=False)
    ray.get(placement_group([{"CPU": 2}]).ready())
    print("holding", flush=True)
    time.sleep(3600)
""")


# ---------------------------------------------------------------- 2. a Train worker dies mid-round


def test_a_train_worker_killed_mid_round_is_restarted_by_train_and_redoes_only_that_round(
        tmp_path, tiny_model_dir, glue_dir, cluster):
    """SIGKILL of the trial's RayTrainWorker process while a round trains: Train's FailureConfig starts a new worker
    group and calls the train function again (Train V2), which finds the finished rounds on disk and redoes the
    lost one from its rewind point. Tune sees no failure; no row is written twice."""
    rounds = 3
    config = grid(tmp_path, tiny_model_dir, glue_dir, rounds=rounds, max_steps=24)
    storage = tmp_path / "storage"
    results, work = storage / "t" / "results", storage / "t" / "work"
    log = tmp_path / "sweep.log"
    driver = cluster.sweep(config, log=log)
    try:
        run, done = wait_for(lambda: between_rounds(work, rounds), 300, "a trajectory between two rounds", driver)
        before = {r: fingerprint(d) for r, d in round_dirs(work, run).items()}
        (worker,) = processes(cluster.machine.pid, "RayTrainWorker")
        killed = time.time()
        os.kill(worker, signal.SIGKILL)
        assert between_rounds(work, rounds) == (run, done), f"round {done + 1} was published as the worker died"
        wait_for(lambda: max(published(work)[run]) > done, 300, f"round {done + 1} after the worker died", driver,
                 every=0.2)
        redone = time.time()
        restarted = processes(cluster.machine.pid, "RayTrainWorker")
        assert driver.wait(timeout=600) == 0, tail(log)
    finally:
        stop(driver)

    assert worker not in restarted  # a new worker process trained the lost round
    rows = raw_rounds(results)
    assert not rows.duplicated(KEY).any() and sorted(rows["round"]) == list(range(rounds + 1))
    assert {r: fingerprint(d) for r, d in round_dirs(work, run).items() if r <= done} == before
    (trial,) = trial_results(storage)
    assert not (storage / "t" / trial["dir"] / "error.txt").exists()  # Train recovered: the trial never failed
    reports = trial["reports"]
    assert {r["round"] for r in reports if r["resumed"]} == set(range(1, done + 1))  # the restart read them
    assert [r["round"] for r in reports if not r["resumed"]][-(rounds - done):] == list(range(done + 1, rounds + 1))
    lost, per_round = redone - killed, round_seconds(work, run, skip=done + 1)
    print(f"\nTrain worker loss: killed mid-round {done + 1}; that round was published {lost:.0f} s later, where a "
          f"round takes ~{per_round:.0f} s here: ~{lost - per_round:.0f} s lost to the worker group's restart")


# ---------------------------------------------------------------- 3. the driver dies, again and again


def reference_rows(config: Path, root: Path) -> dict[tuple, tuple]:
    """(task, rate, round, kind) -> (metric, sparsity, mask_id) of the sweep's grid, every trajectory run here in one
    process, uninterrupted, from the same config and seed."""
    from raytickets.sweep.tuner import load_config
    from raytickets.tickets import Trajectory
    from raytickets.sweep.trial import trial_ticket

    cfg = load_config(str(config), [])
    space = cfg.search.space
    out = {}
    for task in space["task"].values:
        for rate in space["prune.rate"].values:
            for row in Trajectory(trial_ticket(cfg, {"task": task, "prune.rate": rate}), root).run():
                out[(row.task, row.rate, row.round, row.kind)] = (row.metric, row.sparsity, row.mask_id)
    return out


def check_rows(results: Path, reference: dict[tuple, tuple]) -> int:
    """What a reader finds in the results root at any moment: no file it cannot read, no row twice (by key, or by
    grid point under another trial id), and every row the reference's. Returns the number of rows."""
    assert readable_or_temporary(results) == []
    if not (results / "rounds").is_dir() or not any((results / "rounds").glob("*.parquet")):
        return 0
    rows = raw_rounds(results)
    point = ["task", "rate", "round", "kind"]
    assert not rows.duplicated(KEY).any() and not rows.duplicated(point).any()
    for r in rows.itertuples():
        stored = (r.metric, r.sparsity, r.mask_id if isinstance(r.mask_id, str) else None)  # the full model has none
        assert stored == reference[(r.task, r.rate, r.round, r.kind)], (r.task, r.rate, r.round, r.kind)
    return len(rows)


# Where in a driver's life a kill lands: what to wait for since the driver started (None: its start), and the
# longest random delay after that. Anchored on events, not on seconds since the start, so that a loaded machine
# (a trial takes 20-60 s to start here) still sees kills in every phase of the sweep. KILLS says how often each
# comes in the ten: few of those that let the sweep go further, or it would be done before the tenth.
MOMENTS = {
    "while Ray connects and Tune restores": (None, 8.0),
    "as a trial's driver starts": ("ImplicitFunc", 3.0),
    "as a trial's Train worker starts": ("RayTrainWorker", 3.0),
    "just after a round is published": ("round", 1.5),
    "just after a trajectory finishes": ("ticket", 3.0),
}
KILLS = {"while Ray connects and Tune restores": 3, "as a trial's driver starts": 2,
         "as a trial's Train worker starts": 2, "just after a round is published": 2,
         "just after a trajectory finishes": 1}
TRIAL_PROCESSES = ("ImplicitFunc", "TrainController", "RayTrainWorker")


def progress(work: Path, results: Path) -> tuple[int, int]:
    """(model runs published: full models and rounds, trajectories finished) so far."""
    full = [d for d in (work / "full").glob("*") if d.is_dir() and not d.name.startswith(".")]
    tickets = list((results / "tickets").glob("*.parquet"))
    return len(full) + sum(map(len, published(work).values())), len(tickets)


def test_the_driver_killed_ten_times_at_random_moments_ends_with_the_rows_of_an_uninterrupted_run(
        tmp_path, tiny_model_dir, glue_dir, cluster):
    """Ten SIGKILLs of the driver's process tree at seeded random moments of its life (MOMENTS), each followed by
    `--resume` (or by a fresh start when the kill came before Tune saved anything to resume). After every kill
    the rows on disk are a subset of an uninterrupted run's, none twice and none unreadable; the last `--resume`
    completes them, equal to the uninterrupted run's metrics, sparsities and mask ids."""
    config = grid(tmp_path, tiny_model_dir, glue_dir, rates=(0.2, 0.4), rounds=2, max_steps=6)
    storage = tmp_path / "storage"
    results, work, experiment = storage / "t" / "results", storage / "t" / "work", storage / "t"
    reference = reference_rows(config, tmp_path / "reference")
    assert len(reference) == 2 * 3  # two trials x (full model + 2 rounds)
    rng = random.Random(0)
    machine = cluster.machine.pid
    log, history = tmp_path / "sweep.log", []
    started = time.time()
    moments = [m for m, n in sorted(KILLS.items()) for _ in range(n)]
    rng.shuffle(moments)
    for moment in moments:
        anchor, longest = MOMENTS[moment]
        delay = rng.uniform(0.5 if anchor is None else 0.0, longest)
        resume = (experiment / "tuner.pkl").is_file()  # what `Tuner.can_restore` looks for
        before, t0 = progress(work, results), time.time()
        driver = cluster.sweep(config, *(("--resume",) if resume else ()), log=log)
        seen = {"ImplicitFunc": lambda: processes(machine, "ImplicitFunc"),
                "RayTrainWorker": lambda: processes(machine, "RayTrainWorker"),
                "round": lambda: progress(work, results)[0] > before[0],
                "ticket": lambda: progress(work, results)[1] > before[1]}
        if anchor is not None:
            with contextlib.suppress(AssertionError):  # the sweep may end first: nothing left to kill it in
                wait_for(seen[anchor], 300, moment, driver)
        with contextlib.suppress(subprocess.TimeoutExpired):
            driver.wait(timeout=delay)
        rc, at = driver.poll(), time.time() - t0
        stop(driver)
        # Ray ends a dead driver's actors (trial drivers, Train controllers and workers) by itself; wait for that
        # before the next start, so that its events are not mistaken for the next driver's
        gone = wait_for(lambda: not any(processes(machine, t) for t in TRIAL_PROCESSES) and time.time(), 120,
                        "the end of the dead driver's actors")
        history.append(f"{'killed' if rc is None else f'ended rc {rc}'} {moment} (+{delay:.1f} s, {at:.0f} s in"
                       f"{', resumed' if resume else ''}): {check_rows(results, reference)} rows on disk, its actors "
                       f"gone {gone - t0 - at:.0f} s later")
    final = cluster.sweep(config, "--resume", log=log)
    try:
        rc = final.wait(timeout=480)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        stop(final)
    assert rc == 0, (rc, cluster.python(STATE), tail(log))
    assert check_rows(results, reference) == len(reference)
    ticket_rows = ResultsStore(results).tickets()
    assert len(ticket_rows) == 2 and not ticket_rows.duplicated("trial").any()
    removed = log.read_text().count("removed placement group")  # left by a driver killed as its trial started
    print("\ndriver kills:\n  " + "\n  ".join(history) + f"\n  then --resume completed; "
          f"{time.time() - started:.0f} s in all; the sweep removed {removed} placement group(s) killed drivers left")


def test_a_driver_killed_before_tune_saved_any_trial_resumes_the_searched_space(
        tmp_path, tiny_model_dir, glue_dir, cluster):
    """Tune writes tuner.pkl as it builds the Tuner, before any trial or searcher state exists, and leaves the param
    space out of it: a driver killed in that window left a sweep that `--resume` ran as one trial of an empty space
    (the template's own task and rate, a grid point nobody asked for). The searched grid must run instead."""
    config = grid(tmp_path, tiny_model_dir, glue_dir, rates=(0.2,), rounds=1, max_steps=2)
    experiment = tmp_path / "storage" / "t"
    cluster.python(textwrap.dedent(f"""
        import sys
        import ray
        from raytickets.sweep.tickets import param_space
        from raytickets.sweep.tuner import load_config, make_tuner

        ray.init(address=sys.argv[1], log_to_driver=False)
        cfg = load_config({str(config)!r}, [])
        make_tuner(cfg, param_space(cfg))  # what a driver has done when the kill comes: built the Tuner, no fit()
    """))
    assert (experiment / "tuner.pkl").is_file() and not list(experiment.glob("experiment_state*"))
    out = cluster.run_sweep(config, "--resume", timeout=480)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = raw_rounds(experiment / "results")
    assert set(zip(rows.task, rows.rate)) == {("rte", 0.2)} and sorted(rows["round"]) == [0, 1], rows


STATE = textwrap.dedent("""
    # What holds the cluster: free resources and every live placement group with its creator (for a failure message).
    import json, sys
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    ray.init(address=sys.argv[1], log_to_driver=False)
    gcs = state._connect_and_get_accessor()
    groups = []
    for raw in gcs.get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if pg.state != pg.REMOVED:
            creator = ray.ActorID(pg.creator_actor_id)
            info = None if creator.is_nil() else gcs.get_actor_info(creator)
            groups.append({"id": pg.placement_group_id.hex(), "state": pg.state, "job": pg.creator_job_id.hex(),
                           "creator": gcs_pb2.ActorTableData.FromString(info).class_name if info else "driver",
                           "creator_dead": pg.creator_actor_dead, "job_dead": pg.creator_job_dead})
    print(json.dumps({"available": ray.available_resources(), "placement_groups": groups}))
""")


# ---------------------------------------------------------------- 4. the results root fills up or turns read-only


@contextlib.contextmanager
def small_filesystem(path: Path, size: str):
    """A tmpfs of `size` at `path` (root only: root ignores permission bits, so a chmod'ed directory would not
    refuse it anything; a mount's size and its read-only flag bind root too)."""
    path.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mount.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(mount: Path) -> None:
    """Write zeros to `mount`/filler until the filesystem is full."""
    subprocess.run(["dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=64k"], capture_output=True)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_results_root_full_or_read_only_refuses_the_write_and_leaves_no_partial_file(tmp_path, fault):
    import pyarrow as pa

    from raytickets.store import write_parquet_atomic

    big = pa.table({"x": pa.array([os.urandom(400_000)], type=pa.binary())})  # incompressible: more than is left
    with small_filesystem(tmp_path / "fs", "1m") as root:
        store = ResultsStore(root / "results")
        write_parquet_atomic(pa.table({"x": [1]}), store.fs, store.path("rounds", "before.parquet"))
        if fault == "full":
            fill(root)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        with pytest.raises(OSError, match="No space left on device" if fault == "full" else "Read-only file system"):
            write_parquet_atomic(big, store.fs, store.path("rounds", "after.parquet"))
        assert [p.name for p in (root / "results" / "rounds").iterdir()] == ["before.parquet"]
        assert readable_or_temporary(root / "results") == []


def test_results_root_full_mid_sweep_fails_in_one_line_and_resume_completes_every_row_once(
        tmp_path, tiny_model_dir, glue_dir, cluster):
    """The results root (a 16 MB tmpfs) fills up once the first row is stored: the sweep ends with one line naming
    the cause, readers see only complete files, and `--resume` after the space returns stores every row once."""
    with small_filesystem(tmp_path / "fs", "16m") as fs:
        root = fs / "results"
        # No retries: a full disk fails every one of them the same way (max_failures applies to Train and Tune).
        config = edit(grid(tmp_path, tiny_model_dir, glue_dir, rounds=2, max_steps=12), results_dir=str(root),
                      max_failures=0)
        log = tmp_path / "sweep.log"
        driver = cluster.sweep(config, log=log)
        try:
            wait_for(lambda: any((root / "rounds").glob("*.parquet")), 300, "the first row", driver)
            fill(fs)
            full_at = time.time()
            assert driver.wait(timeout=300) == 2, tail(log)
        finally:
            stop(driver)
        failed = time.time() - full_at
        (last,) = [line for line in log.read_text().splitlines() if line.startswith("error: ")]  # Ray's logs aside
        assert last.startswith("error: 1 trial(s) failed; first: OSError: [Errno 28] No space left on device"), last
        assert readable_or_temporary(root) == []
        assert not raw_rounds(root).duplicated(KEY).any()

        (fs / "filler").unlink()
        began = time.time()
        proc = cluster.run_sweep(config, "--resume")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        resumed = time.time() - began
        rows = raw_rounds(root)
        assert not rows.duplicated(KEY).any() and sorted(rows["round"]) == [0, 1, 2]
        assert len(ResultsStore(root).tickets()) == 1 and readable_or_temporary(root) == []
    print(f"\nresults root full: the sweep failed {failed:.0f} s after the disk filled (with max_failures=0); "
          f"--resume completed in {resumed:.0f} s; message: {last}")


# ---------------------------------------------------------------- 5. placement groups left behind


LEAK = textwrap.dedent("""
    # Two "trials", each a placement group with a controller actor inside it that creates a placement group of its
    # own, as Tune and Ray Train do; one trial's controller is killed (Tune stopping a trial kills its driver, and
    # the controller with it).
    import json, sys, time
    import ray
    from ray.util.placement_group import placement_group, placement_group_table
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    from raytickets.sweep.trial import leftover_placement_groups, remove_leftover_placement_groups

    ray.init(address=sys.argv[1], log_to_driver=False)

    @ray.remote(num_cpus=0)
    class TrainController:  # the class name Ray Train's controller has
        def start_workers(self):
            pg = placement_group([{"CPU": 0.5}])
            ray.get(pg.ready())
            return pg.id.hex()

    def trial():
        home = placement_group([{"CPU": 0.1}])
        ray.get(home.ready())
        inside = PlacementGroupSchedulingStrategy(home, placement_group_capture_child_tasks=True)
        controller = TrainController.options(scheduling_strategy=inside).remote()
        return home.id.hex(), controller, ray.get(controller.start_workers.remote())

    (stopped, controller, leaked), (running, _alive, in_use) = trial(), trial()
    ray.kill(controller)
    deadline = time.time() + 60
    while not leftover_placement_groups() and time.time() < deadline:
        time.sleep(0.2)
    state = lambda pg: placement_group_table()[pg]["state"]
    out = {"leaked": leaked, "in_use": in_use, "after_kill": state(leaked),
           "found": leftover_placement_groups(), "found_by_driver": sorted(leftover_placement_groups(running)),
           "removed": remove_leftover_placement_groups(owners={stopped: "trial-a"})}
    time.sleep(1)
    out.update(leaked_now=state(leaked), in_use_now=state(in_use), stopped=stopped, running=running)
    print(json.dumps(out))
""")


def test_a_placement_group_left_by_a_dead_train_controller_is_found_and_removed(cluster):
    """The leak itself (ray-project/ray#54305): a placement group created by an actor outlives it until the job
    ends. `trial.remove_leftover_placement_groups` finds it by its creator (Ray records none of Train's names) and
    removes it, and only it: a running trial's placement group is left alone."""
    out = cluster.python(LEAK)
    result = json.loads(out.strip().splitlines()[-1])
    leaked, in_use = [result["leaked"], result["stopped"]], [result["in_use"], result["running"]]
    assert result["after_kill"] == "CREATED"  # the leak: its creator is dead, the placement group is not
    assert leaked in result["found"] and in_use not in result["found"]
    # a trial driver whose fit() has ended claims every placement group of its controllers, dead or alive
    assert leaked in result["found_by_driver"] and in_use in result["found_by_driver"]
    assert result["leaked"] in result["removed"] and result["in_use"] not in result["removed"]
    assert result["leaked_now"] == "REMOVED" and result["in_use_now"] == "CREATED"
    assert f"removed placement group {result['leaked']} left behind by the Train run of trial trial-a" in out


WATCH = textwrap.dedent("""
    # Every half second: the live placement groups created by a Ray Train controller, and since when that
    # controller has been dead (None while it lives).
    import json, sys, time
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    ray.init(address=sys.argv[1], log_to_driver=False)
    gcs = state._connect_and_get_accessor()
    print(json.dumps({"t": time.time(), "live": []}), flush=True)
    while True:
        live, now = [], time.time()
        for raw in gcs.get_placement_group_table():
            pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
            creator = ray.ActorID(pg.creator_actor_id)
            info = None if pg.state == pg.REMOVED or creator.is_nil() else gcs.get_actor_info(creator)
            actor = gcs_pb2.ActorTableData.FromString(info) if info else None
            if actor is not None and actor.class_name == "TrainController":
                dead = actor.end_time / 1000 if actor.state == actor.DEAD else None
                live.append({"pg": pg.placement_group_id.hex(), "dead_since": dead})
        print(json.dumps({"t": now, "live": live}), flush=True)
        time.sleep(0.5)
""")


def test_optuna_asha_on_gain_stops_trials_only_against_their_own_task_and_leaves_no_placement_group(
        tmp_path, tiny_model_dir, mixed_glue_dir, cluster):
    """The documented objective, gain, with Optuna and ASHA on the 2-CPU worker node, watched from a second driver.
    The tiny model predicts one class on SST-2 (every gain 0) while STS-B's Pearson differs from trial to trial,
    mostly below its full model: a global ASHA would stop STS-B trials for falling behind SST-2's zeros; per task,
    the first trial of each task is never stopped and STS-B trials are stopped only by STS-B trials. Later trials
    still get workers after a stop, no Train placement group stays alive long after its controller died (ray-
    project/ray#54305), none is left at the end, and the tables it leaves are read by analyze, report and export."""
    config = sweep_config(tmp_path, tiny_model_dir, mixed_glue_dir, search__num_samples=7,
                          search__space={"task": {"values": ["sst2", "stsb"]}, "prune.rate": {"low": 0.2, "high": 0.7}},
                          # fp32: in bf16 (auto on a bf16 CPU) the tiny model's STS-B Pearsons came out alike,
                          # so ASHA had nothing to stop and the test checked nothing
                          ticket__train={"max_steps": 6, "learning_rate": 1e-2, "precision": "fp32"},
                          resources={"num_workers": 1, "cpus_per_worker": 1.9, "trial_driver_cpus": 0.1})
    watch_log = tmp_path / "watch.jsonl"
    watcher = subprocess.Popen([sys.executable, "-c", WATCH, cluster.address], stdout=watch_log.open("w"),
                               stderr=subprocess.DEVNULL, env=cluster.env, start_new_session=True)
    try:
        wait_for(lambda: watch_log.stat().st_size > 0, 120, "the watcher", watcher)
        proc = cluster.run_sweep(config, timeout=900)  # seven trials: ~3 min on a quiet 2-core machine
        time.sleep(1)
    finally:
        stop(watcher)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "super ticket per task" in proc.stdout

    trials = trials_in_start_order(tmp_path / "storage")
    assert len(trials) == 7
    tasks = [t["reports"][0]["task"] for t in trials]
    rounds_done = [max(r["round"] for r in t["reports"]) for t in trials]
    stopped = [i for i, n in enumerate(rounds_done) if n < 2]
    assert stopped, f"ASHA stopped no trial: rounds per trial {rounds_done}"
    assert all(tasks[i] == "stsb" for i in stopped)  # SST-2's gains are all 0: nothing to stop there
    first = {task: tasks.index(task) for task in set(tasks)}
    assert not set(first.values()) & set(stopped)  # the first trial of each task has nobody to fall behind
    assert first["sst2"] < first["stsb"]  # ... although an SST-2 trial with a higher gain came before
    for i in stopped:  # a stopped trial fell behind a trial of its own task at the same round
        gain = trials[i]["reports"][-1]["gain"]
        same_task = [t["reports"][0]["gain"] for j, t in enumerate(trials[:i]) if tasks[j] == tasks[i]]
        assert same_task and gain < max(same_task)
    assert min(rounds_done) >= 1  # every trial got workers, also after a stop

    results = tmp_path / "storage" / "t" / "results"
    raw = raw_rounds(results)
    assert not raw.duplicated(["trial", "round", "kind"]).any()
    stored = raw[raw["kind"] == "ticket"].groupby("trial")["round"].apply(set)
    for t, n in zip(trials, rounds_done):
        # every round a trial reported landed exactly once; a stopped trial's workers may finish the round
        # they were in before Train's cleaner removes them (that row is stored too, never twice)
        assert set(range(1, n + 1)) <= stored[t["dir"].split("_")[2]] <= {1, 2}
    full = raw[raw["kind"] == "full"]  # each task's full model was trained once, reused by every trial
    assert full.groupby("task")["finished_at"].nunique().max() == 1
    finished = {t["dir"].split("_")[2] for t, n in zip(trials, rounds_done) if n == 2}
    assert finished <= set(ResultsStore(results).tickets()["trial"])

    seen = [json.loads(line) for line in watch_log.read_text().splitlines() if line.strip()]
    orphaned = {}  # placement group -> the longest it was seen alive after its controller died
    for s in seen:
        for pg in s["live"]:
            if pg["dead_since"] is not None:
                orphaned[pg["pg"]] = max(orphaned.get(pg["pg"], 0.0), s["t"] - pg["dead_since"])
    assert len({pg["pg"] for s in seen for pg in s["live"]}) >= len(trials)  # the watcher saw every trial's
    assert max(orphaned.values(), default=0.0) < 20, orphaned
    left = cluster.python(WATCH.replace("while True:", "for _ in range(1):"))  # once, after the sweep
    assert json.loads(left.strip().splitlines()[-1])["live"] == []
    removals = proc.stdout.count("removed placement group")
    print(f"\nASHA: rounds per trial {rounds_done}; {len(orphaned)} placement group(s) outlived their controller, "
          f"longest by {max(orphaned.values(), default=0.0):.1f} s; the sweep removed {removals} itself")

    # The tables a sweep leaves are read by the other commands, as a user runs them.
    analyzed = cli("analyze", results)
    assert analyzed.returncode == 0, analyzed.stderr[-2000:]
    assert "stsb" in analyzed.stdout and "sst2" in analyzed.stdout
    supers = pd.read_parquet(results / "analysis" / "super_tickets.parquet")
    assert set(supers["task"]) == {"sst2", "stsb"} and supers["trajectories"].min() >= 1
    reported = cli("report", results)
    assert reported.returncode == 0 and (results / "report" / "index.html").is_file(), reported.stderr[-2000:]
    mask_id = raw.loc[raw["kind"] == "ticket", "mask_id"].iloc[0]
    exported = cli("export", results, "--mask-id", mask_id, "--format", "mask", "--out", tmp_path / "mask")
    assert exported.returncode == 0, exported.stderr[-2000:]
    from raytickets.masks import Mask

    assert Mask.load(tmp_path / "mask" / "mask.safetensors").mask_id == mask_id


def test_a_sweep_by_address_runs_its_trials_on_the_worker_node_and_rows_name_it(tmp_path, tiny_model_dir, glue_dir,
                                                                                cluster):
    """A sweep joining a two-node cluster by host:port with token authentication (one token for every node and
    the driver): its trial runs on the worker node (the head has no CPU for it) and every row names that node."""
    config = grid(tmp_path, tiny_model_dir, glue_dir, rates=(0.3,), max_steps=2)
    proc = cluster.run_sweep(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = ResultsStore(tmp_path / "storage" / "t" / "results").rounds()
    assert set(rows["task"]) == {"rte"} and (rows["kind"] == "ticket").sum() == 2
    nodes = node_cpus(cluster.address, cluster.env)
    assert len(nodes) == 2 and set(rows["node_id"]) == {n for n, cpus in nodes.items() if cpus == 2}
