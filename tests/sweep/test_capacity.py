"""A sweep that can never make progress must not wait forever (issue 20): what does not fit is refused in one line
before Ray starts (or right after connecting) with nothing written; the trials alive at once follow the whole
trials the live nodes hold; workers that cannot be placed fail their trial in one line within Train's worker-group
start timeout; a cluster that cannot grow and holds no trial ends the sweep, resumable. docs/reliability.md
("When capacity drops") names these tests.

The last test kills the nodes of a cluster of its own (a few minutes): it is marked `capacity` and deselected by
default (pyproject addopts); run it with `pytest -m capacity tests/sweep/test_capacity.py`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from raytickets.config import SweepConfig, load
from raytickets.sweep import capacity
from raytickets.sweep.capacity import CapacityError, CapacityWatch, Need, trials_that_fit
from raytickets.sweep.cluster import free_port

from .ray_helpers import ray_cluster
from .test_faults import HOLD_A_NODE, KEY, published, stop, tail, wait_for
from .test_sweep import raw_rounds, sweep_config


def one_trial(tmp_path: Path, model, glue, rates=(0.3,), rounds: int = 1, max_steps: int = 2, **fields) -> Path:
    """A grid over prune.rate on the tiny BERT (RTE), one trial per rate; `fields` replace top-level sections."""
    config = sweep_config(
        tmp_path, model, glue,
        search={"mode": "grid", "space": {"task": {"values": ["rte"]}, "prune.rate": {"values": list(rates)}},
                "num_samples": 1, "scheduler": "none"},
        ticket__train={"max_steps": max_steps, "threads": 1}, ticket__prune={"rounds": rounds})
    data = yaml.safe_load(config.read_text())
    data.update(fields)
    config.write_text(yaml.safe_dump(data))
    return config


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# ---------------------------------------------------------------- whole trials on the live nodes


def test_whole_trials_that_fit_follow_the_live_nodes():
    """The issue's cluster: two 1-CPU nodes, a 0.1-CPU driver and one 0.9-CPU worker per trial. Two whole trials fit;
    after one node is lost, one; none on a node smaller than a worker; GPUs counted where asked for."""
    need = Need({"CPU": 0.1}, {"CPU": 0.9}, 1)
    assert trials_that_fit([{"CPU": 1}, {"CPU": 1}], need, 8) == 2
    assert trials_that_fit([{"CPU": 1}], need, 8) == 1
    assert trials_that_fit([{"CPU": 2}], need, 8) == 2  # max_concurrent_trials 8 x 0.1 CPU of drivers would starve
    assert trials_that_fit([{"CPU": 2}], need, 1) == 1  # never above search.max_concurrent_trials
    assert trials_that_fit([{"CPU": 0.5}, {"CPU": 0.5}], need, 8) == 0
    assert trials_that_fit([], need, 8) == 0
    two = Need({"CPU": 0.1}, {"CPU": 1, "GPU": 1}, 2)
    assert trials_that_fit([{"CPU": 8, "GPU": 4}], two, 8) == 2
    assert trials_that_fit([{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}], two, 8) == 1  # one worker per node
    assert trials_that_fit([{"CPU": 64}], two, 8) == 0


def test_the_watch_lowers_the_limit_as_nodes_go_and_ends_a_sweep_nothing_fits(capsys):
    """CapacityWatch against a cluster whose nodes go one by one: the limit on trials alive at once follows (Tune's
    grid generator reads it before each new trial); after a trial fails it is held at the trials alive for a while;
    once no trial has fitted for the timeout the sweep ends with a CapacityError that says what a trial needs, what
    the cluster has and to --resume."""
    from ray.tune.search import BasicVariantGenerator

    cfg = load(SweepConfig, base={"search": {"max_concurrent_trials": 4}, "resources": {"cpus_per_worker": 0.9}},
               validate=False)
    nodes = [{"CPU": 1}, {"CPU": 1}, {"CPU": 1}]
    generator = BasicVariantGenerator(max_concurrent=4)
    watch = CapacityWatch(cfg, generator, timeout_s=0.3, nodes=lambda: nodes, every_s=0)
    trials = [SimpleNamespace(status="RUNNING"), SimpleNamespace(status="PENDING")]
    watch.on_step_end(0, trials)
    assert generator.max_concurrent == 3
    nodes.pop()
    watch.on_step_end(1, trials)
    assert generator.max_concurrent == 2
    assert "trials at once: at most 2 (a trial needs 0.1 CPU for its driver + 1 worker(s) x 0.9 CPU; the cluster " \
           "has 2 node(s) with 1, 1 CPU)" in capsys.readouterr().out
    # A trial fails (its node may be the next to go, unseen yet): no new trial in the slot it leaves until it settles.
    watch.settle_s = 0.3
    trials[0].status = "PENDING"  # retried
    watch.on_trial_recover(2, trials, trials[0])
    trials.pop()  # the other trial ended
    watch.on_step_end(2, trials)
    assert generator.max_concurrent == 1
    assert "held for up to 0.3 s after a trial failed" in capsys.readouterr().out
    time.sleep(0.4)
    watch.on_step_end(3, trials)
    assert generator.max_concurrent == 2
    trials.append(SimpleNamespace(status="PENDING"))
    nodes[:] = [{"CPU": 0.5}]
    watch.on_step_end(2, trials)  # nothing fits: a node may be on its way back, so it waits the timeout first
    assert generator.max_concurrent == 1
    time.sleep(0.4)
    with pytest.raises(CapacityError, match=r"sweep stopped: no trial fits the cluster for 0 s: a trial needs 0.1 CPU "
                                            r"for its driver \+ 1 worker\(s\) x 0.9 CPU; it has 1 node\(s\) with 0.5 CPU "
                                            r"and cannot grow; 2 trial\(s\) unfinished: add a node, then run again "
                                            r"with --resume"):
        watch.on_step_end(3, trials)
    nodes[:] = []
    autoscaling = load(SweepConfig, base={"resources": {"autoscaling": True}}, validate=False)
    waiting = CapacityWatch(autoscaling, generator, timeout_s=0, nodes=lambda: nodes, every_s=0)
    waiting.on_step_end(0, trials)  # an autoscaling cluster waits for its nodes and says so
    waiting.on_step_end(1, trials)
    assert capsys.readouterr().out.count("waiting for the cluster to grow: a trial needs 0.1 CPU for its driver + "
                                         "1 worker(s) x 1 CPU; it has no node; 2 trial(s) waiting") == 1


# ---------------------------------------------------------------- refused before Ray starts, nothing written


def _gpus() -> int:
    return capacity.local_node(load(SweepConfig, validate=False))["GPU"]


BAD = [
    (["resources.cpus_per_worker=64"], "resources.cpus_per_worker: 64 is more than any node of the embedded Ray"),
    (["resources.num_workers=3"], "resources.num_workers: 3 workers x 1.9 CPU + 0.1 CPU for the trial driver do not "
                                  "fit the embedded Ray (resources.num_cpus: 2) (1 node(s) with 2 CPU)"),
    (["resources.use_gpu=true"] if not _gpus() else ["resources.use_gpu=true", f"resources.gpus_per_worker={_gpus() + 1}"],
     "resources.use_gpu: true, but the embedded Ray" if not _gpus() else "resources.gpus_per_worker"),
    (["resources.use_gpu=true", "resources.gpus_per_worker=-1"], "resources.gpus_per_worker: -1"),
    (["resources.gpus_per_worker=-1"], "resources.gpus_per_worker: -1"),
    (["resources.num_cpus=1000000000000000"], "resources.num_cpus: 1000000000000000 must be null or from 1 to"),
    (["resources.num_cpus=" + "9" * 400], "resources.num_cpus"),
    (["--dashboard-port", "70000"], "--dashboard-port: 70000 is not a port; allowed: 1 to 65535"),
    (["--address", "not an address"], "--address: 'not an address' is not auto, host:port or ray://host:port"),
    (["--address", "localhost:99999"], "--address: 'localhost:99999' is not auto, host:port or ray://host:port"),
    (["--address", "127.0.0.1:{port}"], "--address: cannot reach 127.0.0.1:"),
]


@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_resources_and_where_it_runs_are_refused_in_one_line_before_ray_starts(
        tmp_path, tiny_model_dir, glue_dir, args, message, dry):
    from test_cli import call

    config = one_trial(tmp_path, tiny_model_dir, glue_dir)
    before = tree(tmp_path)
    args = [a.format(port=free_port()) for a in args]
    out = call("--config", str(config), *(["--dry-run", "--steps-per-second", "1"] if dry else []), *args,
               module="raytickets.sweep")
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert "Traceback" not in out.stdout + out.stderr
    assert tree(tmp_path) == before  # no <storage>/<name>, no cache


# ---------------------------------------------------------------- refused right after connecting


@pytest.mark.slow
def test_a_need_the_cluster_cannot_hold_is_refused_after_connecting_with_nothing_written(
        tmp_path, tiny_model_dir, glue_dir, cluster):
    """The shared cluster's only worker node has 2 CPUs: checked against Ray's node table once connected, before any
    directory is made (`check_fits` is the same code for the embedded Ray's machine, tested with every field above)."""
    config = one_trial(tmp_path, tiny_model_dir, glue_dir)
    message = "resources.cpus_per_worker: 3 is more than any node of the cluster at"
    before = tree(tmp_path)
    out = cluster.run_sweep(config, "resources.cpus_per_worker=3", timeout=180)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- workers that cannot be placed


@pytest.mark.slow
def test_workers_that_cannot_be_placed_fail_their_trial_in_one_line_within_the_start_timeout(
        tmp_path, tiny_model_dir, glue_dir, cluster):
    """Another job holds 1.5 of the node's 2 CPUs: the trial's driver (0.1) starts, its 1.9-CPU worker cannot. With a
    5 s worker-group start timeout and no retries the trial fails in one line naming what it needs and what the
    cluster has, and the sweep ends (exit 2) instead of Train retrying every 60 s without end."""
    config = one_trial(tmp_path, tiny_model_dir, glue_dir, max_failures=0)
    blocker = subprocess.Popen([sys.executable, "-c", HOLD_A_NODE.replace('"CPU": 2', '"CPU": 1.5'), cluster.address],
                               stdout=subprocess.PIPE, text=True, env=cluster.env, start_new_session=True)
    try:
        assert blocker.stdout.readline().strip() == "holding"
        began = time.time()
        out = subprocess.run(
            [sys.executable, "-m", "raytickets.sweep", "--config", str(config), "--address", cluster.address],
            capture_output=True, text=True, timeout=300, env={**cluster.env, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "5"})
        took = time.time() - began
    finally:
        stop(blocker)
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("error: ")]  # Ray's logs aside
    assert line.startswith("error: 1 trial(s) failed; first: raytickets.sweep.capacity.CapacityError: trial "), line
    assert re.search(r"its Train workers did not start within 5 s: a trial needs 0.1 CPU for its driver \+ 1 "
                     r"worker\(s\) x 1.9 CPU; the cluster has 2 node\(s\) with 2, 0 CPU \(.* free now\) and cannot grow",
                     line), line
    assert "Error count: 2" not in out.stdout + out.stderr  # Train did not retry the worker group
    print(f"\nworkers that could not be placed: the sweep ended {took:.0f} s after it started (timeout 5 s)")


# ---------------------------------------------------------------- nodes lost with no replacement (marked)


@pytest.mark.capacity
def test_nodes_lost_without_replacement_end_the_sweep_in_one_line_and_resume_completes_every_row_once(
        tmp_path, tiny_model_dir, glue_dir):
    """The issue's cluster: two 1-CPU worker nodes, trials of a 0.1-CPU driver and one 0.9-CPU worker, up to 2 at
    once. One node is killed and not replaced: the limit is held while Ray notices, then drops to one trial, and the
    sweep goes on on the survivor (no new trial's driver sits beside the failed trial's retry, each waiting for a
    worker the other's driver keeps from fitting). Then the survivor is killed: nothing fits, and the
    sweep ends in one line within the bound (node death seen + the start timeout + the watch's period). A node is
    added and `--resume` completes the grid: every row once, those stored before the kills kept."""
    rates = (0.2, 0.3, 0.4, 0.5)
    config = one_trial(tmp_path, tiny_model_dir, glue_dir, rates=rates, rounds=2, max_steps=12,
                       resources={"num_workers": 1, "cpus_per_worker": 0.9, "trial_driver_cpus": 0.1})
    data = yaml.safe_load(config.read_text())
    data["search"]["max_concurrent_trials"] = 2
    config.write_text(yaml.safe_dump(data))
    storage = tmp_path / "storage"
    results, work = storage / "t" / "results", storage / "t" / "work"
    log = tmp_path / "sweep.log"
    timeout_s = 15
    with ray_cluster(head_cpus=0, worker_cpus=(1, 1)) as c:
        env = {**c.env, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(timeout_s)}
        driver = subprocess.Popen(
            [sys.executable, "-m", "raytickets.sweep", "--config", str(config), "--address", c.address],
            stdout=log.open("a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_for(lambda: sum(len(r) for r in published(work).values()) >= 1, 600, "a first round", driver, 0.5)
            first, second = c.nodes[1], c.nodes[2]
            stop(first)
            lost_one = time.time()
            done_then = len(set(raw_rounds(results)["trial"])) if (results / "rounds").is_dir() else 0
            # the survivor finishes trials: at least one more trial's rows after the kill
            wait_for(lambda: len(set(raw_rounds(results)["trial"])) > done_then + 1, 900,
                     "a trial finished on the survivor", driver, 1.0)
            went_on = time.time() - lost_one
            phase_one = log.read_text(errors="replace")
            stop(second)
            lost_all = time.time()
            rc = driver.wait(timeout=300)
            ended = time.time() - lost_all
        finally:
            stop(driver)
        text = log.read_text(errors="replace")
        assert rc == 2, tail(log)
        (line,) = [x for x in text.splitlines() if x.startswith("error: ")]
        assert line.startswith("error: sweep stopped: no trial fits the cluster for ") and "--resume" in line, line
        assert "trials at once: at most 1 (" in text, tail(log)
        # held back new trials after the node's trial failed, where a slot freed before Ray saw the node dead
        held = "held for up to 30 s after a trial failed" in phase_one
        timeouts = phase_one.count("CapacityError: trial ")  # Ray may still place a retry's driver in the way
        assert ended < 30 + timeout_s + 60, ended  # GCS sees the node dead (~15-30 s), the timeout, the watch, Tune
        before = raw_rounds(results)
        assert not before.duplicated(KEY).any()

        c.add_node(2)
        c.wait_for_nodes(2)
        resumed = subprocess.run(
            [sys.executable, "-m", "raytickets.sweep", "--config", str(config), "--address", c.address, "--resume"],
            capture_output=True, text=True, timeout=1200, env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = raw_rounds(results)
    assert not rows.duplicated(KEY).any()
    assert sorted(rows.groupby("rate")["round"].apply(sorted).to_dict().items()) == [(r, [0, 1, 2]) for r in rates]
    kept = before.set_index(KEY).index
    assert kept.isin(rows.set_index(KEY).index).all()  # every row stored before the kills is still there, once
    print(f"\nnodes lost: one node killed, the sweep went on on the survivor ({went_on:.0f} s to the next finished "
          f"trial, {timeouts} worker-group timeout(s) meanwhile, limit held: {held}); the survivor killed, the sweep ended in one line "
          f"{ended:.0f} s later (start timeout {timeout_s} s); --resume on a new node completed {len(rows)} rows, "
          f"{len(before)} of them kept")
