"""`--dry-run` says what a sweep costs before it runs: trials, fine-tunes of each kind, training steps and a wall
time, counted here by hand for small configs; a transfer sweep lists its jobs; the shipped placeholder bucket is
named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from raytickets.config import SweepConfig, load
from raytickets.models import tiny_bert
from raytickets.sweep.cli import main as sweep_main
from raytickets.sweep.cost import measure_steps_per_second

from .test_transfer import ticket_root

GLUE = str(Path(__file__).resolve().parents[3] / "shared" / "glue")


def write(tmp_path, **sections) -> str:
    cfg = {"name": "cost", "storage_path": str(tmp_path / "store"),
           "ticket": {"task": "rte", "model": "minilm", "data": {"glue_dir": GLUE, "max_train_examples": 100},
                      "train": {"epochs": 2, "batch_size": 16},
                      "prune": {"method": "magnitude", "rounds": 3, "rate": 0.2, "baselines": ["random"]}},
           "search": {"mode": "grid", "num_samples": 1, "scheduler": "none", "max_concurrent_trials": 2,
                      "space": {"task": {"values": ["rte", "mrpc"]}, "train.seed": {"values": [0, 1]}}},
           "resources": {"num_workers": 1, "cpus_per_worker": 1}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def dry(capsys, *argv) -> str:
    assert sweep_main(list(argv)) == 0
    return capsys.readouterr().out


def test_a_grid_costs_each_trajectory_its_full_model_rounds_and_baselines(tmp_path, capsys):
    out = dry(capsys, "--config", write(tmp_path), "--dry-run", "--steps-per-second", "2")
    # 2 tasks x 2 seeds = 4 trials; each: 1 full + 3 tickets + 3 random = 7 fine-tunes of ceil(100 / 16) * 2 = 14 steps
    assert "cost: 4 trial(s), 28 fine-tune(s) (4 full, 12 ticket, 12 random)" in out
    assert "training steps: 392 " in out
    # (392 / 2 + 4 trials x 25 s start-up) / 2 at once = 148 s -> 3 min wall; x1 worker x1 CPU x2 slots: 5 min
    assert "estimate: 3 min wall with 2 trial(s) at once, 5 min CPU-time; 2 steps/s per worker (given)" in out
    assert not (tmp_path / "store").exists()  # a dry run writes nothing


def test_max_steps_and_ddp_workers_change_the_steps_and_full_rows_are_counted_from_the_tsv(tmp_path, capsys):
    out = dry(capsys, "--config", write(tmp_path), "--dry-run", "--steps-per-second", "2", "ticket.train.max_steps=5")
    assert "training steps: 140 " in out  # 28 fine-tunes x 5
    # no cap: RTE's train.tsv has 2490 rows, MRPC's 3668; two workers take half of each global batch's rows each
    out = dry(capsys, "--config", write(tmp_path), "--dry-run", "--steps-per-second", "2",
              "ticket.data.max_train_examples=null", "resources.num_workers=2",
              "resources.cpus_per_worker=0.5")
    steps = 14 * ((-(-1245 // 16)) * 2 + (-(-1834 // 16)) * 2)  # 7 fine-tunes x 2 seeds per task
    assert f"training steps: {steps:,} " in out


def test_without_a_given_speed_one_step_is_measured_and_a_gpu_config_asks_for_one(tmp_path, capsys):
    model = tiny_bert(tmp_path / "tiny")
    out = dry(capsys, "--config", write(tmp_path), "--dry-run", f"ticket.model={model}")
    assert re.search(r"steps/s per worker \(measured here: one step of this config\)", out)
    gpu = ["--config", write(tmp_path), "--dry-run", "resources.use_gpu=true", "resources.gpus_per_worker=1"]
    if torch.cuda.is_available():
        assert "GPU-time" in dry(capsys, *gpu)
    else:  # the plan and its cost still print; then the embedded machine is refused in one line
        assert sweep_main(gpu) == 2
        out, err = capsys.readouterr()
        assert "this machine has none to measure a step on; give --steps-per-second" in out
        assert len(err.strip().splitlines()) == 1 and "use_gpu" in err
    assert measure_steps_per_second(load(SweepConfig, write(tmp_path), [f"ticket.model={model}"]).ticket, 1) > 0


def test_a_transfer_sweep_prints_its_jobs_and_their_cost(tmp_path, capsys):
    ticket_root(tmp_path / "source", tasks=("sst2",), levels=(0.5, 0.7))
    config = write(tmp_path, search={"space": {}, "transfer": {
        "source": str(tmp_path / "source"), "targets": ["rte"], "levels": [0.5, 0.7], "seeds": [0, 1]}})
    out = dry(capsys, "--config", config, "--dry-run", "--steps-per-second", "2")
    # sst2's tickets at 2 levels x 2 seeds, a random mask at each level and seed, and rte's own ticket there (the
    # source root has none): a trajectory that stops at the level
    assert "transfer: 12 job(s), one trial each" in out
    assert ("to rte: sst2 at 0.50 x2 seed(s), sst2 at 0.70 x2 seed(s), random at 0.50 x2 seed(s), own ticket at 0.50 "
            "x2 seed(s), random at 0.70 x2 seed(s), own ticket at 0.70 x2 seed(s)") in out
    # 1 - 0.8^r reaches 0.5 after 4 rounds, 0.7 after 6: own trajectories have 2 x (4 + 6) tickets and random masks
    assert "cost: 12 trial(s), 60 fine-tune(s) (12 full, 8 transfer, 20 ticket, 20 random)" in out
    assert "training steps: 840 " in out  # 60 x ceil(100 / 16) x 2 epochs


def test_the_placeholder_bucket_is_named_by_dry_run_and_refused_by_a_run(tmp_path, capsys):
    config = write(tmp_path, storage_path="s3://YOUR-BUCKET/raytickets")
    out = dry(capsys, "--config", config, "--dry-run", "--steps-per-second", "2")
    assert "is the shipped placeholder 'YOUR-BUCKET'" in out
    assert sweep_main(["--config", config]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "storage_path:" in err[0] and "placeholder" in err[0]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_speed_that_is_not_positive_is_one_line(tmp_path, capsys, value):
    assert sweep_main(["--config", write(tmp_path), "--dry-run", "--steps-per-second", value]) == 2
    assert "--steps-per-second" in capsys.readouterr().err
