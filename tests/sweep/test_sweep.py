"""The distributed sweep against real Ray: Optuna + per-task ASHA on gain, the results read end to end, resume after
a SIGKILL mid-trajectory, DDP weight for weight, two nodes, transfer, the smoke config, bad input.

Every sweep runs as `python -m raytickets.sweep` in a subprocess, as a user runs it: by address on the folder's
shared cluster (conftest.py), or, where the embedded Ray is the point (the README's smoke run, a driver killed
with its Ray), with an embedded Ray of its own temp dir (a short path: Ray's unix sockets live there) and
dashboard port; nothing here calls `ray stop`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
import torch
import yaml
from safetensors.torch import load_file

from raytickets.masks import Mask
from raytickets.pruning.magnitude import magnitude_prune
from raytickets.sweep.cluster import free_port
from raytickets.store import ResultsStore

from .ray_helpers import _env, kill_tree

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_tmp():
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield path


REPO = Path(__file__).resolve().parents[2]


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


def trials_in_start_order(storage: Path) -> list[dict]:
    """Tune's trials, ordered as they started (their directory names carry the trial's sequence number)."""
    return sorted(trial_results(storage), key=lambda t: int(t["dir"].split("_")[3]))


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raytickets.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=_env())


def mid_trajectory(work: Path) -> str | None:
    """The run id of a trajectory that has finished round 1 and not yet round 2 (None if there is none yet)."""
    for run in (work / "runs").glob("*") if (work / "runs").is_dir() else []:
        done = {p.name[:9] for p in run.glob("round-*")}
        if done == {"round-001"}:
            return run.name
    return None


def test_driver_killed_mid_trajectory_resumes_at_its_first_unfinished_round(tmp_path, tiny_model_dir, glue_dir, ray_tmp):
    config = sweep_config(
        tmp_path, tiny_model_dir, glue_dir,
        search={"mode": "grid", "space": {"task": {"values": ["rte"]}, "prune.rate": {"values": [0.2, 0.4]}},
                "num_samples": 1, "scheduler": "none"},
        ticket__train={"max_steps": 12},  # a round long enough to be caught in the middle of
    )
    results, work = tmp_path / "storage" / "t" / "results", tmp_path / "storage" / "t" / "work"
    cmd = [sys.executable, "-m", "raytickets.sweep", "--config", str(config), "--temp-dir", ray_tmp,
           "--dashboard-port", str(free_port())]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                              start_new_session=True)
    deadline, cut = time.time() + 400, None
    while time.time() < deadline and cut is None:  # kill once a trajectory is between rounds 1 and 2
        assert driver.poll() is None, "the sweep ended before it could be killed"
        cut = mid_trajectory(work)
        time.sleep(0.1)
    assert cut is not None, "no trajectory was caught between its rounds within 400 s"
    kill_tree(driver.pid)  # the driver, the embedded Ray it started and its workers (they would finish the round)
    driver.wait()
    cut = mid_trajectory(work)  # what is on disk now is what the resume finds
    assert cut is not None, "the trajectory caught mid-way finished its round before its workers died"
    before = raw_rounds(results)
    assert len(before) < 2 * 3, "the sweep finished before the kill"
    assert not ((before["run_id"] == cut) & (before["round"] == 2)).any()  # cut mid-way: no round 2 yet

    proc = run_sweep(config, tempfile.mkdtemp(prefix="rt", dir="/tmp"), "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = raw_rounds(results)
    assert not after.duplicated(["trial", "round", "kind"]).any()
    assert len(after) == 2 * 3  # 2 trials x (full model + 2 rounds): none lost, none twice
    kept = before.set_index(["trial", "round", "kind"])
    again = after.set_index(["trial", "round", "kind"]).loc[kept.index]
    assert (again["finished_at"] == kept["finished_at"]).all()  # rows written before the kill were not redone
    # the cut trajectory went on at its first unfinished round: rounds 0-1 read from disk, round 2 trained
    (trial_id,) = set(after.loc[after["run_id"] == cut, "trial"])
    (trial,) = [t for t in trial_results(tmp_path / "storage") if t["reports"][0]["trial_id"] == trial_id]
    resumed = {r["round"]: r["resumed"] for r in trial["reports"]}  # the restarted run's reports, last wins
    assert resumed == {1: True, 2: False}


def test_resume_of_a_directory_without_a_sweep_fails_cleanly(tmp_path, tiny_model_dir, glue_dir, ray_tmp):
    config = sweep_config(tmp_path, tiny_model_dir, glue_dir)
    proc = run_sweep(config, ray_tmp, "--resume", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --resume:")
    assert "holds no sweep to resume" in proc.stderr


def test_two_ddp_workers_train_what_one_worker_trains_weight_for_weight(tmp_path, glue_dir, cluster):
    """Two gloo workers on batches of 8 against one process on batches of 16, structured pruning: every
    global batch is split between the ranks and DDP averages their gradients, so the weights after
    training, the importance scores (summed over ranks before any mask is chosen or broadcast) and the
    masks equal the one-process run's. Dropout is off (its masks cannot match across a batch split); the
    tolerance covers the order of float sums (gloo sums on CPU; observed differences ~1e-7)."""
    from safetensors.torch import load_file

    from raytickets.config import TicketConfig, build
    from raytickets.models import tiny_bert
    from raytickets.tickets import Trajectory

    model = tiny_bert(tmp_path / "no-dropout", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config = sweep_config(
        tmp_path, model, glue_dir,
        search={"mode": "grid", "space": {"task": {"values": ["rte"]}}, "num_samples": 1, "scheduler": "none"},
        resources={"num_workers": 2, "cpus_per_worker": 0.9, "trial_driver_cpus": 0.1, "num_cpus": 2},
        # a global batch of 16, split over two ranks; fp32: bf16 (null, on a bf16 CPU) rounds a batch of 8 and one
        # of 16 differently, and the structured scores then pick other heads
        ticket__train={"batch_size": 8, "max_steps": 3, "precision": "fp32"},
        ticket__prune={"method": "structured", "head_fraction": 0.5, "ffn_fraction": 0.5, "rate": 0.1, "rounds": 2},
    )
    proc = cluster.run_sweep(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (trial,) = trial_results(tmp_path / "storage")
    for report in trial["reports"]:
        ids = report["replica_mask_ids"].split(",")
        assert len(ids) == 2 and ids[0] == ids[1]
    double = ResultsStore(tmp_path / "storage" / "t" / "results").rounds()

    ticket = yaml.safe_load(config.read_text())["ticket"]
    ticket["task"] = "rte"
    ticket["train"]["batch_size"] = 16  # one process, the whole global batch
    single_traj = Trajectory(build(TicketConfig, ticket), tmp_path / "single")
    single = pd.DataFrame([vars(r) for r in single_traj.run()])
    s, d = (x.set_index(["round", "kind"]).sort_index() for x in (single, double))
    assert list(s.index) == list(d.index)
    assert list(s["mask_id"]) == list(d["mask_id"])  # the same heads and neurons chosen in every round
    assert (s["metric"] - d["metric"]).abs().max() <= 1e-6

    work = tmp_path / "storage" / "t" / "work"
    (ddp_run,) = (work / "runs").iterdir()
    (ddp_full,) = [d for d in (work / "full").iterdir() if d.is_dir()]
    compared = [(ddp_full, single_traj.full_dir, "weights.safetensors")]  # the full model
    compared += [(ddp_run / f"round-00{r}", single_traj.round_dir(r), name)  # importance, then the ticket
                 for r, name in ((1, "evidence.safetensors"), (2, "evidence.safetensors"), (2, "weights.safetensors"))]
    for ddp_dir, one_dir, name in compared:
        a, b = load_file(str(ddp_dir / name)), load_file(str(one_dir / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), (name, key, (a[key] - b[key]).abs().max())


def test_a_packed_grid_trains_each_point_once_as_its_own_trial_of_the_results(tmp_path, tiny_model_dir, glue_dir,
                                                                               cluster):
    """`search.trajectories_per_trial: 2` on a three-point grid: two Tune trials (one Ray Train start-up each) train
    the three trajectories an unpacked sweep would, each its own `trial` in the rows with its own ticket row, the
    same metrics and masks as the trajectory run alone; `--resume` afterwards rewrites nothing."""
    from raytickets.sweep.tuner import load_config
    from raytickets.tickets import Trajectory
    from raytickets.sweep.trial import trial_ticket

    config = sweep_config(
        tmp_path, tiny_model_dir, glue_dir,
        search={"mode": "grid", "space": {"task": {"values": ["rte"]}, "prune.rate": {"values": [0.2, 0.3, 0.4]}},
                "num_samples": 1, "scheduler": "none", "trajectories_per_trial": 2},
        ticket__train={"threads": 1})  # numbers that do not depend on the threads a process got
    proc = cluster.run_sweep(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "packed: 3 grid points as 2 trial(s) of up to 2 trajectories" in proc.stdout
    trials = trial_results(tmp_path / "storage")
    assert sorted(len(t["reports"]) for t in trials) == [2, 4]  # 2 rounds per trajectory, reported to Tune
    assert sorted({r["trajectory"] for t in trials for r in t["reports"]}) == [0, 1]
    results = tmp_path / "storage" / "t" / "results"
    rows = raw_rounds(results)
    assert not rows.duplicated(["trial", "round", "kind"]).any() and len(rows) == 3 * 3
    assert rows.groupby("trial")["rate"].nunique().eq(1).all() and sorted(set(rows["rate"])) == [0.2, 0.3, 0.4]
    tune_ids = {t["dir"].split("_")[2] + "_" + t["dir"].split("_")[3] for t in trials}
    assert {name.rsplit("-", 1)[0] for name in rows["trial"]} == tune_ids  # <tune trial>-<point>
    assert len(ResultsStore(results).tickets()) == 3

    cfg = load_config(str(config), [])
    for rate in (0.2, 0.3, 0.4):
        alone = {(r.round, r.kind): (r.metric, r.mask_id) for r in
                 Trajectory(trial_ticket(cfg, {"task": "rte", "prune.rate": rate}), tmp_path / f"alone-{rate}").run()}
        packed = {(r["round"], r["kind"]): (r["metric"], r["mask_id"] if isinstance(r["mask_id"], str) else None)
                  for r in rows[rows["rate"] == rate].to_dict("records")}
        assert packed == alone, rate


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
def test_bad_sweep_input_is_one_line_before_any_trial(tmp_path, tiny_model_dir, glue_dir, cluster, override, message):
    config = sweep_config(tmp_path, tiny_model_dir, glue_dir)
    proc = cluster.run_sweep(config, override, timeout=180)
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


def test_transfer_sweep_writes_one_row_per_source_target_and_seed(tmp_path, tiny_model_dir, glue_dir, cluster):
    """Transfer as Chen et al. ran it, end to end on the tiny BERT: a results root from `raytickets imp` (SST-2
    tickets at 30% and 51%), then a transfer sweep of the 51% ticket to RTE over two seeds: one transfer row per
    (source ticket, target, seed), a random mask and one-shot magnitude pruning of the pre-trained weights per
    (target, level, seed), and the target's own ticket trained where the root lacks it — each exactly once — and
    the transfer table's rule on them."""
    source = tmp_path / "source"
    made = cli("imp", "--task", "sst2", "--model", tiny_model_dir, "--glue-dir", glue_dir, "--max-train-examples", 32,
               "--max-dev-examples", 32, "--max-seq-length", 32, "--max-steps", 2, "--batch-size", 16, "--lr", 1e-3,
               "--rate", 0.3, "--rounds", 2, "--out", source, f"data.cache_dir={tmp_path / 'cache'}")
    assert made.returncode == 0, made.stderr[-2000:]
    config = sweep_config(tmp_path, tiny_model_dir, glue_dir, results_dir=str(source),
                          search={"mode": "grid", "num_samples": 1, "scheduler": "none",
                                  "trajectories_per_trial": 4,  # eight jobs in two trials: two Train start-ups
                                  "transfer": {"source": str(source), "targets": ["rte"], "levels": [0.51],
                                               "seeds": [0, 1], "oneshot": True}})
    proc = cluster.run_sweep(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "packed: 8 grid points as 2 trial(s)" in proc.stdout
    raw = raw_rounds(source)
    moved = raw[raw["kind"] == "transfer"]
    (mask,) = raw.query("kind == 'ticket' and task == 'sst2' and round == 2")["mask_id"]
    ticketed = moved[moved["source_task"] == "sst2"]
    assert len(ticketed) == 2 and set(ticketed["source_mask_id"]) == {mask} and sorted(ticketed["seed"]) == [0, 1]
    random = moved[moved["source_task"] == "random"]
    assert len(random) == 2 and set(random["sparsity"].round(2)) == {0.51} and sorted(random["seed"]) == [0, 1]
    # one-shot: the smallest 51% of the pre-trained weights (the rewind point), the same mask for every seed
    oneshot = moved[moved["source_task"] == "oneshot"]
    assert len(oneshot) == 2 and oneshot["source_mask_id"].nunique() == 1 and random["source_mask_id"].nunique() == 2
    stored = ResultsStore(source).load_mask(oneshot["source_mask_id"].iloc[0])
    pretrained = load_file(Path(tiny_model_dir) / "model.safetensors")
    weights = {n: pretrained[n] if n in pretrained else pretrained[f"bert.{n}"] for n in stored.names}
    expected = magnitude_prune(weights, Mask.ones_like(weights), float(oneshot["sparsity"].iloc[0]), "global")
    assert all(torch.equal(stored.tensors[n], expected.tensors[n]) for n in stored.names)
    own = raw.query("kind == 'ticket' and task == 'rte'")  # trained here: the root had no RTE ticket
    assert sorted(own.loc[own["sparsity"].round(2) == 0.51, "seed"]) == [0, 1]
    assert not moved.duplicated(["trial", "round", "kind", "task", "source_task"]).any()
    assert set(moved["task"]) == {"rte"}
    from raytickets.analysis.tables import analyze

    table = analyze(source)["transfer"]
    sst2 = table[table["source_task"] == "sst2"]
    assert len(sst2) == 1 and sst2["ticket_seeds"].eq(2).all() and sst2["random_mean"].notna().all()
    assert sst2["oneshot_mean"].notna().all()
    # the tiny model learns nothing, so the rule gives no verdict (it is tested on numbers in test_transfer.py)
    learned = sst2["learned"].astype(bool)
    assert sst2.loc[~learned, "transfers"].isna().all()
    judged = sst2[learned]
    assert (judged["transfers"] == (judged["mean"] >= judged["ticket_mean"] - judged["ticket_std"])).all()


def test_the_smoke_config_runs_as_shipped_on_a_tiny_model(tmp_path, tiny_model_dir, glue_dir, ray_tmp):
    """configs/smoke.yaml, the README's main job, with only the model and the amount of work made small, and MLflow
    and W&B tracking on (`tracking.mlflow: {}`: the real package, its default store in the results root; W&B
    offline): one run per trial in each, with each round's metrics and every training step's loss."""
    import mlflow

    proc = run_sweep(REPO / "configs" / "smoke.yaml", ray_tmp, f"storage_path={tmp_path / 'storage'}",
                     f"ticket.model={tiny_model_dir}", f"ticket.data.glue_dir={glue_dir}",
                     "ticket.data.max_train_examples=32", "ticket.data.max_dev_examples=32", "ticket.train.max_steps=2",
                     "search.num_samples=2", f"ticket.data.cache_dir={tmp_path / 'cache'}", "tracking.mlflow={}",
                     "tracking.wandb={mode: offline}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "sweep smoke: optuna search" in proc.stdout and "super ticket per task" in proc.stdout
    results = tmp_path / "storage" / "smoke" / "results"
    rows = ResultsStore(results).rounds()
    assert (rows["kind"] == "ticket").sum() >= 2 and rows["setting_id"].notna().all()

    uri = f"sqlite:///{results / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_names=["smoke"], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    tickets = rows[rows["kind"] == "ticket"]
    assert sorted(r.info.run_name.split("_")[-1] for r in runs) == sorted(
        {t.split("_")[-1] for t in tickets["trial"]})  # one run per trial (Tune's trial name, its id at the end)
    for run in runs:
        reported = client.get_metric_history(run.info.run_id, "gain")
        assert [m.step for m in reported] == list(range(1, len(reported) + 1))  # one point per round
        ticket_losses = client.get_metric_history(run.info.run_id, "train_loss/ticket")
        assert [m.step for m in ticket_losses] == list(range(2 * len(reported)))  # 2 steps a round
        assert all(m.value > 0 for m in ticket_losses)
        assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(results)  # not ./mlruns
    # the trials share one full model (task, seed and training alike): the trial that trained it logs its 2 steps
    assert sum(len(client.get_metric_history(r.info.run_id, "train_loss/full")) for r in runs) == 2
    # W&B offline (no key needed): one run per trial in <results>/wandb, its records holding the round metrics and
    # the step losses (an offline run is a binary log that only `wandb sync` reads: its keys are checked as bytes)
    offline = sorted((results / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == len(runs)
    for f in offline:
        data = f.read_bytes()
        assert b"train_loss/ticket" in data and b"gain" in data


def test_the_mlm_transfer_config_is_one_command_of_two_stages_and_resumes_without_duplicates(
        tmp_path, tiny_model_dir, glue_dir, cluster):
    """configs/mlm-transfer.yaml (`search.transfer.source: self`) as shipped but for the model and the amount of
    work: stage 1 finds IMP tickets on mlm and SST-2, stage 2 transfers the MLM ticket to SST-2 next to SST-2's own
    ticket (read from stage 1, not retrained), into one results root; `--resume` afterwards restores both stages
    and writes no row twice. (The null masks' transfer trials are the test above's: two trials fewer here.)"""
    cfg = yaml.safe_load((REPO / "configs" / "mlm-transfer.yaml").read_text())
    cfg["storage_path"] = str(tmp_path / "storage")
    cfg["ticket"]["model"] = str(tiny_model_dir)
    cfg["ticket"]["data"].update(glue_dir=str(glue_dir), max_train_examples=32, max_dev_examples=32,
                                 max_seq_length=32, cache_dir=str(tmp_path / "cache"))
    cfg["ticket"]["per_task"]["mlm"]["data.max_seq_length"] = 32
    # A small text corpus: the offline default (every GLUE training sentence, 87k) takes minutes to tokenise here.
    sentences = [line.split("\t")[0] for line in (Path(glue_dir) / "SST-2" / "train.tsv").read_text().splitlines()[1:401]]
    (tmp_path / "corpus.txt").write_text("\n".join(sentences) + "\n")
    cfg["ticket"]["per_task"]["mlm"]["data.corpus"] = str(tmp_path / "corpus.txt")
    cfg["ticket"]["train"] = {"max_steps": 2, "batch_size": 16, "learning_rate": 1e-3}
    cfg["search"]["space"] = {"task": {"values": ["mlm", "sst2"]}, "train.seed": {"values": [0]}}
    cfg["search"]["trajectories_per_trial"] = 2  # one Train start-up for both stage-1 trajectories
    # the null masks are the test above's: one trial here
    cfg["search"]["transfer"].update(sources=["mlm"], targets=["sst2"], seeds=[0], random=False, oneshot=False)
    config = tmp_path / "mlm-transfer.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = cluster.run_sweep(config, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== stage 1/2: mlm-transfer ==" in proc.stdout and "== stage 2/2: mlm-transfer-transfer ==" in proc.stdout
    results = tmp_path / "storage" / "mlm-transfer" / "results"
    raw = raw_rounds(results)
    tickets = raw[raw["kind"] == "ticket"]
    assert sorted(set(tickets["task"])) == ["mlm", "sst2"] and set(tickets["sparsity"].round(2)) == {0.3, 0.51}
    moved = raw[raw["kind"] == "transfer"]
    (mlm_mask,) = tickets.query("task == 'mlm' and round == 2")["mask_id"]
    assert list(zip(moved["source_task"], moved["task"])) == [("mlm", "sst2")]
    assert set(moved.loc[moved["source_task"] == "mlm", "source_mask_id"]) == {mlm_mask}
    assert len(tickets.query("task == 'sst2'")) == 2  # SST-2's own ticket was read, not trained again
    assert not (tmp_path / "storage" / "mlm-transfer-transfer" / "work").exists()  # stage 2 used stage 1's work dir

    again = cluster.run_sweep(config, "--resume")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    after = raw_rounds(results)
    assert len(after) == len(raw) and not after.duplicated(["trial", "round", "kind", "task", "source_task"]).any()
    from raytickets.analysis.tables import analyze

    table = analyze(results)["transfer"]
    mlm = table[table["source_task"] == "mlm"]
    assert len(mlm) == 1 and mlm["ticket_seeds"].eq(1).all() and mlm["ticket_mean"].notna().all()
