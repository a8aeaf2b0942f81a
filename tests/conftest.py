"""Shared fixtures: the real GLUE TSVs from ../shared/glue, a tiny random BERT, and synthetic TSVs of the GLUE tasks
the shared folder lacks (STS-B, MNLI) for the tests that need them. (Sweep tests start their own private Ray per
test, in a subprocess: see sweep/test_sweep.py; tests/sweep/ shares one cluster among its tests: sweep/conftest.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="session")
def mixed_glue_dir(glue_dir, tmp_path_factory) -> Path:
    """The real SST-2 and RTE beside a synthetic STS-B, whose Pearson metric is continuous: a tiny model's gains
    differ from trial to trial (on accuracy it predicts one class and every gain is 0)."""
    root = tmp_path_factory.mktemp("glue")
    for task in ("SST-2", "RTE"):
        (root / task).symlink_to(glue_dir / task)
    write_stsb(root, train=64, dev=48)
    return root


STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]
MNLI_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
NOUNS = ["a man", "a woman", "the dog", "a child", "the cat", "two people", "a chef", "the band"]
VERBS = ["is playing a guitar", "is cutting an onion", "runs in the park", "is eating bread",
         "sleeps on the sofa", "rides a horse", "is reading a book", "plays the piano"]


def pairs(n: int, seed: int):
    """Sentence pairs with a graded overlap: identical (score 5), same subject (2.5), unrelated (0)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = f"{NOUNS[rng.integers(8)]} {VERBS[rng.integers(8)]}"
        kind = i % 3
        b = a if kind == 0 else f"{a.split(' is ')[0].split(' ')[0]} {VERBS[rng.integers(8)]}" if kind == 1 else \
            f"{NOUNS[rng.integers(8)]} {VERBS[rng.integers(8)]}"
        out.append((a, b, kind))
    return out


def write_stsb(glue: Path, train: int, dev: int) -> None:
    """STS-B TSVs of sentence pairs whose score follows their overlap (5, 2.5 or 0, plus a little)."""
    for split, n, seed in (("train", train, 0), ("dev", dev, 1)):
        rows = [[i, "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b,
                 f"{(5.0, 2.5, 0.0)[kind] + 0.2 * (i % 3):.3f}"] for i, (a, b, kind) in enumerate(pairs(n, seed))]
        write_tsv(glue / "STS-B" / f"{split}.tsv", STSB_HEADER, rows)


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n", encoding="utf-8")


