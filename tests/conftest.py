"""Shared fixtures: the real GLUE TSVs from ../shared/glue and a tiny random BERT. (Sweep tests start their own
private Ray per test, in a subprocess: see test_sweep.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def _find_glue() -> Path:
    env = os.environ.get("RAYTICKETS_GLUE_DIR")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "glue", REPO / "shared" / "glue"]
    for c in candidates:
        if (c / "SST-2" / "train.tsv").is_file():
            return c
    raise FileNotFoundError(f"GLUE TSVs not found in {candidates}; set RAYTICKETS_GLUE_DIR")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    return _find_glue()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 4-head, 32-wide random BERT with MiniLM's tokenizer, saved once per test session."""
    from raytickets.models import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
