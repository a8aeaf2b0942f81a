"""The `raytickets` command: help, one-line errors, finetune's files. Run as a user runs it (a subprocess) where the
process itself is the point (the console script, argparse's exit, the files a run leaves); the many bad-input and
help cases call the same `main` in this process, since a new Python with torch costs seconds a case."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raytickets.masks import Mask

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = {  # subcommand -> something only its help mentions
    "finetune": "--random-mask",
    "imp": "--target-sparsity",
    "sweep": "--dry-run",
    "analyze": "results_dir",
    "report": "results_dir",
    "export": "--mask-id",
    "mtl": "--tickets",
}


def run(*args: str, cwd: Path = REPO, timeout: int = 300, module: str | None = None) -> subprocess.CompletedProcess:
    """`raytickets ARGS` (or `python -m MODULE ARGS`) offline, as a separate process."""
    exe = shutil.which("raytickets")
    assert exe, "the `raytickets` console script is not installed (pip install -e .)"
    cmd = [sys.executable, "-m", module, *args] if module else [exe, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def call(*args: str, module: str | None = None) -> subprocess.CompletedProcess:
    """`raytickets ARGS` (or `python -m raytickets.sweep ARGS`) through its `main` in this process, from the repo."""
    from raytickets import cli
    from raytickets.sweep import cli as sweep_cli

    main = sweep_cli.main if module == "raytickets.sweep" else cli.main
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse: --help, usage errors
                code = e.code
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


# ----------------------------------------------------------------------------------------------- help


def test_top_level_help_lists_every_subcommand():
    res = run("--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: raytickets")
    for name in SUBCOMMANDS:
        assert name in res.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(name):
    res = call(name, "--help")
    assert res.returncode == 0, res.stderr
    assert "usage:" in res.stdout and SUBCOMMANDS[name] in res.stdout
    assert res.stderr == ""


def test_sweep_module_help():
    res = run("--help", module="raytickets.sweep")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: python -m raytickets.sweep")
    assert "--dry-run" in res.stdout and "--address" in res.stdout


# ------------------------------------------------------------------------------------- bad input: exit 2


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr  # no traceback, no progress bars: one line
    assert lines[0].startswith("error: "), lines[0]
    assert res.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["finetune", "--task", "nope"], "error: task: unknown task 'nope'; allowed: cola, sst2, mrpc"),
        (["finetune", "--model", "bertbase"], "error: model: unknown model 'bertbase'; allowed: minilm"),
        (["finetune", "--glue-dir", "/no/such/glue"], "error: data.glue_dir: directory '/no/such/glue' does not exist"),
        (["finetune", "--lr", "0"], "error: train.learning_rate: 0.0 must be positive"),
        (["finetune", "--epochs", "-1"], "error: train.epochs: -1.0 must be positive"),
        (["finetune", "--batch-size", "0"], "error: train.batch_size: 0 must be positive"),
        (["finetune", "train.lerning_rate=1e-4"], "error: train.lerning_rate: unknown key (did you mean learning_rate?); allowed: learning_rate"),
        (["finetune", "prune.schedule=linear"], "error: prune.schedule: 'linear' is not allowed; allowed: remaining"),
        (["finetune", "train.batch_size=big"], "error: train.batch_size: 'big' is not a number (int)"),
        (["finetune", "--random-mask", "1.5"], "error: --random-mask: 1.5 must be in [0, 1)"),
        (["finetune", "--mask", "/no/such/mask.safetensors"], "error: --mask: file '/no/such/mask.safetensors' does not exist"),
        (["finetune", "--config", "/no/such.yaml"], "error: config: file '/no/such.yaml' does not exist"),
        (["imp"], "error: prune.rounds: set rounds or target_sparsity (both are null)"),
        (["imp", "--target-sparsity", "1.5"], "error: prune.target_sparsity: 1.5 must be in (0, 1)"),
        (["imp", "--rounds", "2", "--schedule", "linear"], "error: prune.schedule: 'linear' is not allowed"),
    ],
)
def test_bad_ticket_input_is_one_line_with_exit_code_2(tmp_path, args, expected):
    out = tmp_path / "out"
    line = one_line_error(call(*args, "--out", str(out)))
    assert line.startswith(expected), line
    assert not out.exists()  # rejected before anything ran


def test_typo_in_a_ticket_yaml_is_one_line_with_exit_code_2(tmp_path):
    config = tmp_path / "ticket.yaml"
    config.write_text("task: sst2\ntrain:\n  epochs: 1\n  batchsize: 16\n")
    line = one_line_error(call("finetune", "--config", str(config), "--out", str(tmp_path / "out")))
    assert line.startswith("error: train.batchsize: unknown key (did you mean batch_size?); allowed: learning_rate"), line


@pytest.mark.parametrize("module", [None, "raytickets.sweep"])
def test_bad_sweep_input_is_one_line_with_exit_code_2(module):
    args = ["sweep"] if module is None else []
    line = one_line_error(run(*args, "--config", "configs/smoke.yaml", "--dry-run",
                              "search.space.prune.rate.high=1.5", module=module))  # as a process: exit code 2
    assert line == "error: search.space.prune.rate: 1.5 must be in (0, 1)", line
    line = one_line_error(call(*args, "--config", "/no/such.yaml", module=module))
    assert line == "error: config: file '/no/such.yaml' does not exist", line


def test_argument_errors_exit_2_naming_the_flag(tmp_path):
    res = run("finetune", "--epochs", "abc", "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "argument --epochs: invalid float value: 'abc'" in res.stderr.splitlines()[-1]


# ------------------------------------------------------------------------------------ finetune's files


def check_masked_model(out: Path, expected_sparsity: float) -> Mask:
    """metrics.json, mask.safetensors and model.safetensors agree: every masked weight is exactly 0."""
    result = json.loads((out / "metrics.json").read_text())
    assert result["task"] == "sst2" and result["main_metric"] == "accuracy"
    assert 0 <= result["metrics"]["accuracy"] <= 1
    mask = Mask.load(out / "mask.safetensors")
    assert mask.num_pruned == round(expected_sparsity * mask.num_total)  # exactly, not about
    assert result["sparsity"] == pytest.approx(mask.sparsity())
    state = load_file(str(out / "model.safetensors"))
    for name, keep in mask.tensors.items():
        weight = state[f"bert.{name}"]
        assert weight.shape == keep.shape, name
        assert torch.count_nonzero(weight[~keep]) == 0, f"{name}: masked weights are not 0"
        assert torch.count_nonzero(weight[keep]) == keep.sum(), f"{name}: kept weights were zeroed"
    return mask


def test_finetune_under_a_random_mask_then_under_that_mask_file(tiny_model_dir, glue_dir, tmp_path):
    common = ["finetune", "--task", "sst2", "--model", str(tiny_model_dir), "--glue-dir", str(glue_dir),
              "--max-train-examples", "32", "--max-dev-examples", "16", "--max-seq-length", "32",
              "--max-steps", "3", "--batch-size", "8", "--lr", "1e-3", f"data.cache_dir={tmp_path / 'cache'}",
              "train.threads=1"]
    first = tmp_path / "random"
    res = run(*common, "--random-mask", "0.4", "--out", str(first))
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    assert printed["steps"] == 3 and set(printed["metrics"]) == {"accuracy"}
    mask = check_masked_model(first, 0.4)
    result = json.loads((first / "metrics.json").read_text())
    assert result["config"]["train"]["max_steps"] == 3 and result["config"]["data"]["max_seq_length"] == 32
    assert result["config"]["train"]["learning_rate"] == 1e-3

    second = tmp_path / "given"
    res = run(*common, "--mask", str(first / "mask.safetensors"), "--seed", "1", "--out", str(second))
    assert res.returncode == 0, res.stderr
    assert check_masked_model(second, 0.4) == mask
    # a different seed trained other weights under the same mask
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])


def test_finetune_with_a_mask_of_another_model_is_one_line_with_exit_code_2(tiny_model_dir, glue_dir, tmp_path):
    path = tmp_path / "other.safetensors"
    Mask({"encoder.layer.0.attention.self.query.weight": torch.ones(384, 384, dtype=torch.bool)}).save(path)
    res = run("finetune", "--task", "sst2", "--model", str(tiny_model_dir), "--glue-dir", str(glue_dir),
              "--max-train-examples", "16", "--max-dev-examples", "8", "--max-steps", "1", "train.threads=1",
              f"data.cache_dir={tmp_path / 'cache'}", "--mask", str(path), "--out", str(tmp_path / "out"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: mask")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_minilm_finetune_under_a_50_percent_random_mask(glue_dir, tmp_path):
    out = tmp_path / "masked"
    res = run("finetune", "--task", "sst2", "--model", "minilm", "--glue-dir", str(glue_dir),
              "--max-train-examples", "64", "--max-dev-examples", "64", "--max-seq-length", "64",
              "--max-steps", "4", "--batch-size", "16", "--random-mask", "0.5", "--out", str(out),
              f"data.cache_dir={tmp_path / 'cache'}")
    assert res.returncode == 0, res.stderr
    mask = check_masked_model(out, 0.5)
    # MiniLM: 6 layers x (Q, K, V, attention output, intermediate, output); its pooler stays dense by default
    assert len(mask.names) == 6 * 6 and not any(n.startswith("pooler.") for n in mask.names)
    result = json.loads((out / "metrics.json").read_text())
    assert result["steps"] == 4
    assert result["config"]["train"]["learning_rate"] == 1e-4  # MiniLM's default, resolved and recorded
