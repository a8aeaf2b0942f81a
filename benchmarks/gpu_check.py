"""Prepare the two-trial GPU check (benchmarks/gpu_check.sh): one folder, under 64 MiB, holding everything the sweep
on the GPU machine reads, so that machine needs neither the network nor ../shared.

    python benchmarks/gpu_check.py [--out build/gpu-check] [--train-rows 8000]

It writes
  minilm-bf16/   the packaged pre-trained MiniLM's weights stored in bf16 (45 MB; the package's float32 file is 90 MB,
                 over the cap with nothing else), its tokenizer, and a config saying float32: transformers loads
                 the bf16 values into float32 weights exactly, so training keeps float32 weights as everywhere else;
                 what changes is the starting point, each pre-trained weight rounded to bf16 (relative error
                 <= 2**-9, as in every checkpoint published in bf16);
  glue/SST-2/    the first --train-rows rows of SST-2's train.tsv and the whole dev.tsv (872 rows);
  sweep.yaml     two trials (train.seed 0 and 1, a grid) of an IMP trajectory of magnitude pruning (2 rounds of
                 30 %: the full model and 2 tickets, 250 steps each), MiniLM on SST-2, one epoch, length 64, one
                 Ray Train worker with one GPU; train.precision null: bf16 on compute capability >= 8.

Why not the alternatives: the installed package's path is not on the GPU machine unless pip can reach PyPI there;
a tiny random BERT (raytickets.models.tiny_bert, 1 MB) would check the machinery but learn nothing, and the sweep
should show that the full model learns on the GPU as on CPU (accuracy ~0.8 at 2,000 rows on CPU,
benchmarks/precision.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, default_glue_dir  # noqa: E402

CAP = 64 * 2**20  # what travels to the GPU machine, with the working tree


def sweep_config(train_rows: int) -> dict:
    from raytickets.models import ENCODER_INCLUDE

    return {
        "name": "gpu-check",
        "storage_path": "results",  # relative to where the command runs, as every sweep's
        "ticket": {
            "task": "sst2",
            "model": "minilm-bf16",  # relative to this file's folder (raytickets.loader.read_config)
            "data": {"glue_dir": "glue", "max_train_examples": train_rows, "max_seq_length": 64},
            # MiniLM's defaults, spelled out: a directory is not `minilm` to raytickets (models.default_include)
            "train": {"epochs": 1, "batch_size": 32, "learning_rate": 1.0e-4, "warmup_ratio": 0.1, "seed": 0},
            "keep_weights": "none",  # 87 MB a round otherwise: what comes back from the GPU machine stays small
            "prune": {"method": "magnitude", "schedule": "remaining", "rate": 0.3, "rounds": 2,
                      "include": list(ENCODER_INCLUDE)},
        },
        "search": {"mode": "grid", "space": {"train.seed": {"values": [0, 1]}}, "num_samples": 1,
                   "max_concurrent_trials": 1, "scheduler": "none"},
        "resources": {"num_workers": 1, "use_gpu": True, "gpus_per_worker": 1, "cpus_per_worker": 2,
                      "trial_driver_cpus": 0.1},
    }


def write_model(out: Path) -> None:
    import torch
    from transformers import BertModel

    from raytickets.models import MINILM, load_tokenizer, packaged_minilm_dir, quiet_transformers

    with quiet_transformers():
        model = BertModel.from_pretrained(packaged_minilm_dir()).to(torch.bfloat16)
        model.save_pretrained(out)
    load_tokenizer(MINILM).save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "float32"  # load as float32 weights (transformers 5 would keep the file's bf16 otherwise)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_glue(glue_dir: Path, out: Path, train_rows: int) -> None:
    (out / "SST-2").mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train_rows), ("dev", None)):
        lines = (glue_dir / "SST-2" / f"{split}.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        (out / "SST-2" / f"{split}.tsv").write_text("".join(lines[:None if rows is None else rows + 1]), "utf-8")


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "build" / "gpu-check"))
    p.add_argument("--train-rows", type=int, default=8000)
    p.add_argument("--glue-dir", default=default_glue_dir())
    args = p.parse_args()
    import yaml

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_model(out / "minilm-bf16")
    write_glue(Path(args.glue_dir), out / "glue", args.train_rows)
    (out / "sweep.yaml").write_text(
        "# Written by benchmarks/gpu_check.py; run by benchmarks/gpu_check.sh on one GPU (about 10 minutes at most).\n"
        + yaml.safe_dump(sweep_config(args.train_rows), sort_keys=False))
    total = size(out) + size_of_tree()
    print(f"{out}: {size(out) / 2**20:.1f} MiB (+ {size_of_tree() / 2**20:.1f} MiB of the working tree = "
          f"{total / 2**20:.1f} MiB of the {CAP // 2**20} MiB that travel)")
    if total > CAP:
        raise SystemExit(f"gpu_check: {total / 2**20:.1f} MiB is over the {CAP // 2**20} MiB cap; lower --train-rows "
                         f"or clear untracked files (git status)")


def size_of_tree() -> int:
    import subprocess

    # tracked files and untracked ones git does not ignore: what the working tree carries along
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file())


if __name__ == "__main__":
    main()
