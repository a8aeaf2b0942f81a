"""The sweep-mode registry: modes come from the `raytickets.sweep_modes` entry points, so a package registers
one without the sweep importing it, and `search.mode` is checked against what is registered."""

from __future__ import annotations

import sys
import textwrap

import pytest

from raytickets.errors import ConfigError
from raytickets.sweep import modes


def test_the_shipped_modes_are_registered_and_each_is_a_sweep_mode():
    assert modes.names() == ["grid", "mtl", "optuna"]
    for name in modes.names():
        mode = modes.get(name)
        assert isinstance(mode, modes.SweepMode) and mode.name == name


def test_an_unknown_mode_is_one_line_naming_the_registered_ones():
    with pytest.raises(ConfigError) as info:
        modes.get("random")
    assert str(info.value) == "search.mode: unknown mode 'random'; allowed: grid, mtl, optuna"


def _register(tmp_path, monkeypatch, module: str, source: str, entry: str) -> None:
    """A package outside raytickets on sys.path: `module`.py with `source`, and a dist-info whose entry point
    `entry` (name = module:attr) is in the sweep-modes group; the registry's cache is cleared to see it."""
    (tmp_path / f"{module}.py").write_text(source)
    info = tmp_path / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[raytickets.sweep_modes]\n{entry}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    modes._registered.cache_clear()


def test_a_package_outside_raytickets_adds_a_mode_with_one_entry_point(tmp_path, monkeypatch):
    """What CONTRIBUTING's "Add a sweep mode" promises: one module and one registration, nothing in the sweep."""
    _register(tmp_path, monkeypatch, "echo_mode", textwrap.dedent('''
        from raytickets.sweep.modes import SweepMode, TrialJob

        class Echo(SweepMode):
            name = "echo"

            def space(self, cfg, state):
                return {"x": {"grid_search": [1, 2]}}

            def trial_job(self, cfg, params, trial):
                return TrialJob(result=lambda: {"x": params["x"]})

        MODE = Echo()
    '''), "echo = echo_mode:MODE")
    try:
        assert "echo" in modes.names()
        echo = modes.get("echo")
        assert echo.trial_job(None, {"x": 2}, {"id": "t", "pg": None}).result() == {"x": 2}
        assert echo.trial_job(None, {"x": 2}, {"id": "t", "pg": None}).loop is None
    finally:
        modes._registered.cache_clear()
        sys.modules.pop("echo_mode", None)


def test_an_entry_point_that_is_not_a_sweep_mode_is_refused(tmp_path, monkeypatch):
    _register(tmp_path, monkeypatch, "not_a_mode", "MODE = object()\n", "bogus = not_a_mode:MODE")
    try:
        with pytest.raises(ConfigError, match="'bogus' is registered as not_a_mode:MODE, which is not a SweepMode"):
            modes.get("bogus")
    finally:
        modes._registered.cache_clear()
        sys.modules.pop("not_a_mode", None)
