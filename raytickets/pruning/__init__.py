"""Pruning methods behind one registry: every module in this package that registers a `Method` is a
method (`prune.method: <name>`); adding one is adding a module (see CONTRIBUTING.md)."""

from __future__ import annotations

import importlib
import pkgutil

from .registry import METHODS, Method, PruneContext, Target, get, hparams_fields, owners, register

# Import every module of the package, so a new method module registers itself without an edit here.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from .magnitude import magnitude_prune  # noqa: E402  (the function API the tests and benchmarks use)
from .structured import (  # noqa: E402
    StructuredImportance, _gates, random_structured, select_structured, structured_importance, structured_mask,
)
from .unstructured import prune_lowest, random_prune  # noqa: E402

__all__ = [
    "METHODS", "Method", "PruneContext", "Target", "get", "hparams_fields", "owners", "register",
    "magnitude_prune", "prune_lowest", "random_prune", "StructuredImportance", "random_structured",
    "select_structured", "structured_importance", "structured_mask",
]
