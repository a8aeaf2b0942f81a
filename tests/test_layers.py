"""The layer rule (core < analysis < sweep < {mtl, export} < cli) is only as good as its contract's list: a new
module that no layer names would escape `lint-imports`. Every module of the package must be in a layer."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_module_and_package_of_raytickets_is_in_a_layer_of_the_contract():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for part in layer.split("|") for m in part.split(":")}
    package = REPO / "raytickets"
    top = {f"raytickets.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    top |= {f"raytickets.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert sorted(top - named) == [], "modules no layer names (add them to [tool.importlinter] in pyproject.toml)"
    assert sorted(named - top) == [], "layers name modules that do not exist"
