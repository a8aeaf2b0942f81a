"""The distributed sweep against real Ray: Optuna + ASHA, resume after SIGKILL, DDP, two nodes, bad input.

Every sweep runs as `python -m raytickets.sweep` in a subprocess with its own Ray temp dir (a short path:
Ray's unix sockets live there) and dashboard port, as a user runs it; nothing here calls `ray stop`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
import yaml

from raytickets.store import ResultsStore
from raytickets.sweep import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_tmp():
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield path


def sweep_config(tmp_path: Path, tiny_model_dir, glue_dir, **sections) -> Path:
    """A small sweep on the tiny BERT: two tasks, 2 rounds, one 1.9-CPU worker per trial on 2 CPUs."""
    cfg = {
        "name": "t",
        "storage_path": str(tmp_path / "storage"),
        "ticket": {
            "model": str(tiny_model_dir),
            "data": {"glue_dir": str(glue_dir), "max_train_examples": 48, "max_dev_examples": 48,
                     "max_seq_length": 32, "cache_dir": str(tmp_path / "cache")},
            "train": {"max_steps": 2, "batch_size": 16, "learning_rate": 1e-3},
            "prune": {"rounds": 2, "rate": 0.3},
        },
        "search": {"mode": "optuna", "space": {"task": {"values": ["sst2", "rte"]},
                                               "prune.rate": {"low": 0.2, "high": 0.6}},
                   "num_samples": 4, "scheduler": "asha", "grace_period": 1, "seed": 0},
        "resources": {"num_workers": 1, "cpus_per_worker": 1.9, "trial_driver_cpus": 0.1, "num_cpus": 2},
    }
    for key, value in sections.items():
        section, _, leaf = key.partition("__")
        if leaf:
            cfg[section].update({leaf: value}) if not isinstance(cfg[section].get(leaf), dict) else cfg[section][leaf].update(value)
        else:
            cfg[section] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_sweep(config: Path, ray_tmp: str, *extra: str, timeout: int = 600, **popen) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "raytickets.sweep", "--config", str(config), "--temp-dir", ray_tmp,
           "--dashboard-port", str(free_port()), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), **popen)


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def raw_rounds(results: Path):
    """Every row in the rounds files as written (no read-side deduplication)."""
    return ds.dataset(str(results / "rounds"), format="parquet").to_table().to_pandas()


def trial_results(storage: Path) -> list[dict]:
    """Tune's per-trial report history (result.json lines) of the experiment 't'."""
    out = []
    for f in sorted((storage / "t").glob("*/result.json")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out.append({"dir": f.parent.name, "reports": rows})
    return out


def test_optuna_asha_sweep_stops_a_trial_and_keeps_going(tmp_path, tiny_model_dir, glue_dir, ray_tmp):
    # Maximising sparsity makes ASHA's decision deterministic: a trial whose rate (Optuna-sampled) puts
    # it below the rung's cutoff after round 1 is stopped; later trials must still get workers
    # (ray-project/ray#54305: a stopped trial's placement group used to hang the next one).
    config = sweep_config(tmp_path, tiny_model_dir, glue_dir, search__metric="sparsity", search__num_samples=6)
    proc = run_sweep(config, ray_tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Ray dashboard: http://127.0.0.1:" in proc.stdout
    assert "best ticket per task:" in proc.stdout

    trials = trial_results(tmp_path / "storage")
    assert len(trials) == 6
    rounds_done = [max(r["round"] for r in t["reports"]) for t in trials]
    stopped = [i for i, n in enumerate(rounds_done) if n < 2]
    assert stopped, f"ASHA stopped no trial: rounds per trial {rounds_done}"
    # the trials are numbered in start order in their directory names: one started after a stop ran
    order = sorted(range(6), key=lambda i: int(trials[i]["dir"].split("_")[3]))
    first_stop = min(order.index(i) for i in stopped)
    assert first_stop < 5 and all(rounds_done[order[j]] >= 1 for j in range(first_stop + 1, 6))

    results = tmp_path / "storage" / "t" / "results"
    raw = raw_rounds(results)
    assert not raw.duplicated(["trial", "round", "kind"]).any()
    tickets = raw[raw["kind"] == "ticket"]
    # every round a trial reported landed exactly once; a stopped trial's workers may finish the round
    # they were in before Train's cleaner removes them (that row is stored too, never twice)
    stored = tickets.groupby("trial")["round"].apply(set)
    for t, n in zip(trials, rounds_done):
        trial_id = t["dir"].split("_")[2]
        assert set(range(1, n + 1)) <= stored[trial_id] <= set(range(1, 3))
    assert set(raw["task"]) == {"sst2", "rte"}
    # the full model of each task was trained once and reused by every trial of that task
    full = raw[raw["kind"] == "full"]
    assert len(full) == 6 and full.groupby("task")["finished_at"].nunique().max() == 1
    # every trajectory that finished has its tickets row
    finished = {t["dir"].split("_")[2] for t, n in zip(trials, rounds_done) if n == 2}
    assert finished <= set(ResultsStore(results).tickets()["trial"])


def test_killed_driver_resumes_without_duplicates(tmp_path, tiny_model_dir, glue_dir, ray_tmp):
    config = sweep_config(
        tmp_path, tiny_model_dir, glue_dir,
        search={"mode": "grid", "space": {"task": {"values": ["sst2", "rte"]}, "prune.rate": {"values": [0.2, 0.4]}},
                "num_samples": 1, "scheduler": "none"},
    )
    results = tmp_path / "storage" / "t" / "results"
    cmd = [sys.executable, "-m", "raytickets.sweep", "--config", str(config), "--temp-dir", ray_tmp,
           "--dashboard-port", str(free_port())]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                              start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline:  # kill once the first trajectory finished and the second is under way
        if (results / "tickets").is_dir() and any((results / "tickets").glob("*.parquet")):
            break
        assert driver.poll() is None, "the sweep ended before it could be killed"
        time.sleep(1)
    else:
        pytest.fail("no trajectory finished within 400 s")
    time.sleep(8)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the embedded Ray it started
    driver.wait()
    before = raw_rounds(results)
    assert len(before) < 4 * 3, "the sweep finished before the kill"

    proc = run_sweep(config, tempfile.mkdtemp(prefix="rt", dir="/tmp"), "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = raw_rounds(results)
    assert not after.duplicated(["trial", "round", "kind"]).any()
    assert len(after) == 4 * 3  # 4 trials x (full model + 2 rounds): none lost, none twice
    kept = before.set_index(["trial", "round", "kind"])
    again = after.set_index(["trial", "round", "kind"]).loc[kept.index]
    assert (again["finished_at"] == kept["finished_at"]).all()  # rows written before the kill were not redone


def test_resume_of_a_directory_without_a_sweep_fails_cleanly(tmp_path, tiny_model_dir, glue_dir, ray_tmp):
    config = sweep_config(tmp_path, tiny_model_dir, glue_dir)
    proc = run_sweep(config, ray_tmp, "--resume", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --resume:")
    assert "holds no sweep to resume" in proc.stderr


def test_two_ddp_workers_hold_identical_masks_and_match_one_worker(tmp_path, tiny_model_dir, glue_dir, ray_tmp):
    from raytickets.config import TicketConfig, build
    from raytickets.tickets import Trajectory

    config = sweep_config(
        tmp_path, tiny_model_dir, glue_dir,
        search={"mode": "grid", "space": {"task": {"values": ["rte"]}}, "num_samples": 1, "scheduler": "none"},
        resources={"num_workers": 2, "cpus_per_worker": 0.9, "trial_driver_cpus": 0.1, "num_cpus": 2},
        ticket__train={"batch_size": 8, "max_steps": 3},  # a global batch of 16, split over two ranks
    )
    proc = run_sweep(config, ray_tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (trial,) = trial_results(tmp_path / "storage")
    for report in trial["reports"]:
        ids = report["replica_mask_ids"].split(",")
        assert len(ids) == 2 and ids[0] == ids[1]
    double = ResultsStore(tmp_path / "storage" / "t" / "results").rounds()

    # one worker, no Ray: the same trajectory in this process with the whole batch of 16
    ticket = yaml.safe_load(config.read_text())["ticket"]
    ticket["task"] = "rte"
    ticket["train"]["batch_size"] = 16
    rows = Trajectory(build(TicketConfig, ticket), tmp_path / "single").run()
    single = pd.DataFrame(rows)
    s, d = (x.set_index(["round", "kind"]).sort_index() for x in (single, double))
    assert list(s.index) == list(d.index)
    assert (s["sparsity"] - d["sparsity"]).abs().max() < 1e-9  # the same number of weights pruned
    assert (s["metric"] - d["metric"]).abs().max() <= 0.1  # and the metrics agree within a tolerance


def test_two_node_cluster_runs_a_sweep_by_address(tmp_path, tiny_model_dir, glue_dir, ray_tmp):
    port, dash = free_port(), free_port()
    # Token authentication on, with one token for the head, the worker node and the driver (Ray 2.60
    # turns it on for `ray start --head` whenever ~/.ray/auth_token exists; a driver joining by
    # host:port must then say so). RAY_API_SERVER_ADDRESS: see sweep.connect.
    env = dict(_env(), RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{dash}", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=os.urandom(16).hex())
    head = subprocess.Popen(
        ["ray", "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
         "--num-cpus=1", f"--temp-dir={ray_tmp}", "--block", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    worker = None
    try:
        _wait_for_port(port)
        worker = subprocess.Popen(
            ["ray", "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", "--block", "--disable-usage-stats"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        config = sweep_config(
            tmp_path, tiny_model_dir, glue_dir,
            search={"mode": "grid", "space": {"task": {"values": ["rte"]}}, "num_samples": 1, "scheduler": "none"},
            resources={"num_workers": 1, "cpus_per_worker": 1.5, "trial_driver_cpus": 0.1},
        )
        deadline = time.time() + 60
        proc = None
        while time.time() < deadline:  # the worker node needs a moment to register
            proc = subprocess.run([sys.executable, "-m", "raytickets.sweep", "--config", str(config),
                                   "--address", f"127.0.0.1:{port}"], capture_output=True, text=True,
                                  timeout=600, env=env)
            if "the cluster has" not in proc.stderr:
                break
            time.sleep(3)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        # a 1.5-CPU worker fits only on the 2-CPU node: the trials really ran on the second node
        rows = ResultsStore(tmp_path / "storage" / "t" / "results").rounds()
        assert set(rows["task"]) == {"rte"} and (rows["kind"] == "ticket").sum() == 2
    finally:
        for p in (worker, head):
            if p is not None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.mark.parametrize(
    "override, message",
    [
        ("resources.num_workers=5", "error: resources.num_workers: 5 workers"),
        ("storage_path=/proc/raytickets-cannot-write", "error: storage_path: cannot write to"),
        ("search.space.task.values=[]", "error: search.space.task.values: empty choice"),
        ("search.space.prune.rate.low=0.9", "error: search.space.prune.rate: low 0.9 > high 0.6"),
        ("search.space.prune.rate.high=1.2", "error: search.space.prune.rate: 1.2 must be in (0, 1)"),
    ],
)
def test_bad_sweep_input_is_one_line_before_any_trial(tmp_path, tiny_model_dir, glue_dir, ray_tmp, override, message):
    config = sweep_config(tmp_path, tiny_model_dir, glue_dir)
    proc = run_sweep(config, ray_tmp, override, timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(message), last
    assert not (tmp_path / "storage" / "t" / "results").exists()  # no trial started


def test_unreachable_address_is_one_line(tmp_path, tiny_model_dir, glue_dir):
    config = sweep_config(tmp_path, tiny_model_dir, glue_dir)
    proc = subprocess.run([sys.executable, "-m", "raytickets.sweep", "--config", str(config),
                           "--address", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60, env=_env())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --address: cannot reach 127.0.0.1:")
