"""The CLI habits a Hugging Face / Ray user expects: `--version`, help that lists every command and names itself,
an unknown key answered with where it belongs, `analyze` saying where its tables went and what a sweep's folder
is, configs found by name and read from any directory, and an mtl config recognised as one."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytickets.cli import parser

from sweep.test_transfer import ticket_root
from test_cli import call

REPO = Path(__file__).resolve().parents[1]


def test_version_and_help_list_every_command():
    from importlib.metadata import version

    res = call("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"raytickets {version('raytickets')}"
    commands = set(parser()._subparsers._group_actions[0].choices)
    assert {"finetune", "imp", "sweep", "analyze", "report", "export", "mtl"} <= commands
    head = call("--help").stdout.split("positional arguments")[0]
    assert all(c in head for c in commands)  # the description names each, mtl too
    assert call("sweep", "--help").stdout.startswith("usage: raytickets sweep")
    imp = " ".join(call("imp", "--help").stdout.split())  # defaults shown: the config's, for the flags that set it
    assert "--epochs EPOCHS (default: 3.0)" in imp and "after k steps (default: 0)" in imp
    assert "--dashboard-port DASHBOARD_PORT embedded Ray only: the dashboard's port (default 8265)" in " ".join(
        call("sweep", "--help").stdout.split())


@pytest.mark.parametrize("override, hint", [
    ("train.learning_rate=3e-5", "train: unknown key (did you mean ticket.train.learning_rate?)"),
    ("max_failure=3", "max_failure: unknown key (did you mean max_failures?)"),
    ("resources.num_worker=2", "resources.num_worker: unknown key (did you mean num_workers?)"),
])
def test_an_unknown_key_says_where_it_belongs(override, hint):
    res = call("--config", "configs/smoke.yaml", "--dry-run", override, module="raytickets.sweep")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [f"error: {hint}; allowed: " +
                                                                       res.stderr.split("; allowed: ", 1)[1].strip()]


def test_analyze_says_where_its_tables_are_and_names_the_results_root_inside_a_sweep_folder(tmp_path):
    ticket_root(tmp_path / "storage" / "smoke" / "results", tasks=("sst2",), levels=(0.5,))
    res = call("analyze", str(tmp_path / "storage" / "smoke" / "results"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith(f"tables: {tmp_path / 'storage' / 'smoke' / 'results'}/analysis")
    res = call("analyze", str(tmp_path / "storage" / "smoke"))  # Tune's folder, one level up
    assert res.returncode == 2
    assert f"is a sweep's folder: its results root is {tmp_path / 'storage' / 'smoke'}/results" in res.stderr


def test_a_shipped_config_runs_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    from raytickets.sweep.cli import main as sweep_main

    monkeypatch.chdir(tmp_path)
    assert sweep_main(["--config", "smoke", "--dry-run", "--steps-per-second", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sweep smoke:") and f"results: {tmp_path}/results/smoke/results" in out  # outputs: here
    assert sweep_main(["--config", "smok", "--dry-run"]) == 2
    assert "'smok' is neither a file nor a shipped config; shipped: " in capsys.readouterr().err


def test_input_paths_in_a_config_file_are_read_from_its_folder_and_outputs_from_the_working_directory(tmp_path,
                                                                                                       monkeypatch):
    from raytickets.config import SweepConfig, load

    folder = tmp_path / "exp"
    (folder / "data").mkdir(parents=True)
    (folder / "tiny").mkdir()
    (folder / "sweep.yaml").write_text(
        "storage_path: out\nticket:\n  model: tiny\n  data: {glue_dir: data, cache_dir: cache}\n"
        "search:\n  transfer: {source: results/smoke/results, targets: [rte]}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load(SweepConfig, "exp/sweep.yaml", ["ticket.task=rte"], validate=False)
    assert cfg.ticket.data.glue_dir == str(folder / "data") and cfg.ticket.model == str(folder / "tiny")
    assert cfg.storage_path == "out" and cfg.ticket.data.cache_dir == "cache"  # outputs: where the command runs
    assert cfg.search.transfer.source == "results/smoke/results"
    (folder / "hub.yaml").write_text("ticket: {model: bert-base}\n")  # no such folder there: a hub name, as it is
    assert load(SweepConfig, "exp/hub.yaml", validate=False).ticket.model == "bert-base"


def test_an_mtl_config_is_named_as_one_and_mtl_has_a_dry_run(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from raytickets.cli import main
    from raytickets.sweep.cli import main as sweep_main

    assert sweep_main(["--config", "configs/liang2021-mtl.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a `raytickets mtl` config" in err[0] and "raytickets mtl --config" in err[0]
    monkeypatch.chdir(tmp_path)  # no tickets here yet: the sweep's plan and cost, then what the arms will be
    assert main(["mtl", "--config", "liang2021-mtl", "--sweep", "--dry-run", f"sweep.ticket.model={tiny_model_dir}",
                 "model=null"]) == 0
    out = capsys.readouterr().out
    assert "sweep liang2021-tickets: grid search" in out and "cost: 12 trial(s), 48 fine-tune(s)" in out
    assert "then raytickets mtl: 4 tasks (sst2, mrpc, rte, cola)" in out
    assert not (tmp_path / "results").exists()
