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
