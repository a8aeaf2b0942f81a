"""docs/presets.md against configs/*.yaml: every row's preset value is what the YAML file says, every row
marked "same" has the paper's value, every row that differs says why, and every source cites file:line."""

from __future__ import annotations

import math
import re
from pathlib import Path

import yaml

from raytickets.loader import read_yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "presets.md"
PRESETS = ("chen2020-bert-base.yaml", "liang2021-bert-base.yaml", "liang2021-mtl.yaml", "liang2021-mtl-sweep.yaml",
           "mlm-transfer.yaml")
COLUMNS = ["setting", "paper value", "source", "preset value", "same?"]
UNSET_CELL = "(unset)"  # the file does not set the key
UNSET = object()
MISSING = object()
TEXT = object()  # a cell in words, not a YAML literal: comparable with nothing


def tables(text: str) -> list[tuple[str | None, list[dict[str, str]]]]:
    """(preset file, rows) per Markdown table; a table belongs to the last heading naming one configs/*.yaml."""
    out, current, lines, i = [], None, text.splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("#"):
            names = re.findall(r"configs/([\w.-]+\.yaml)", line)
            current = names[0] if len(names) == 1 else None
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[\s:|-]+\|", lines[i + 1].strip()):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                rows.append(dict(zip(header, cells)) | {"_cells": len(cells), "_header": header})
                i += 1
            out.append((current, rows))
            continue
        i += 1
    return out


def value(cell: str):
    """A cell's value: `yaml literal`, (unset), or TEXT."""
    if cell in (UNSET_CELL, f"`{UNSET_CELL}`"):
        return UNSET
    m = re.fullmatch(r"`([^`]*)`", cell)
    return yaml.safe_load(m.group(1)) if m else TEXT


def lookup(data, dotted: str):
    """data at a dotted key; a key may itself hold dots (per_task's `train.epochs`, a zipped grid axis)."""
    parts, node, i = dotted.split("."), data, 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if isinstance(node, dict) and key in node:
                node, i = node[key], j
                break
        else:
            return MISSING
    return node


def equal(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return a == b


def problems(text: str, configs: Path) -> list[str]:
    """Every disagreement between the doc's tables and the preset files, one line each."""
    found, seen = [], set()
    for name, rows in tables(text):
        if name is None:
            found.append(f"a table under no heading naming one configs/*.yaml: {rows[:1]}")
            continue
        seen.add(name)
        data = read_yaml(configs / name)
        for row in rows:
            where = f"{name} {row.get('setting')}"
            if row["_header"] != COLUMNS or row["_cells"] != len(COLUMNS):
                found.append(f"{where}: columns {row['_header']} ({row['_cells']} cells), want {COLUMNS}")
                continue
            if not re.search(r"[\w.-]+:\d+", row["source"]):
                found.append(f"{where}: source {row['source']!r} cites no file:line")
            paper, preset = value(row["paper value"]), value(row["preset value"])
            actual = lookup(data, row["setting"])
            if preset is TEXT:
                found.append(f"{where}: preset value {row['preset value']!r} is no `yaml literal` or {UNSET_CELL}")
            elif preset is UNSET:
                if actual is not MISSING:
                    found.append(f"{where}: the table says unset, the file has {actual!r}")
            elif actual is MISSING:
                found.append(f"{where}: the file does not set it, the table says {preset!r}")
            elif not equal(preset, actual):
                found.append(f"{where}: the table says {preset!r}, the file has {actual!r}")
            same = row["same?"]
            if same == "same":
                if paper is TEXT or preset in (TEXT, UNSET) or not equal(paper, preset):
                    found.append(f"{where}: marked same, but the paper's {row['paper value']!r} is not the preset's "
                                 f"{row['preset value']!r}")
            elif not re.match(r"no: \S", same):
                found.append(f"{where}: same? is {same!r}; 'same' or 'no: <why>'")
            elif paper not in (TEXT, UNSET) and preset not in (TEXT, UNSET) and equal(paper, preset):
                found.append(f"{where}: marked different, but paper and preset are both {preset!r}")
    for name in PRESETS:
        if name not in seen:
            found.append(f"configs/{name}: no table")
    return found


def test_the_presets_table_agrees_with_the_yaml_files():
    assert problems(DOC.read_text(), REPO / "configs") == []


def test_the_check_catches_each_kind_of_disagreement(tmp_path):
    text = DOC.read_text()
    row = "| ticket.train.learning_rate | `2.0e-5` |"
    assert row in text  # the Chen row the edits below change
    cases = {
        "the table says 3e-05": text.replace(row + " README.md:76 | `2.0e-5` |", row + " README.md:76 | `3.0e-5` |"),
        "marked same, but": text.replace(row, "| ticket.train.learning_rate | `1.0e-5` |"),
        "cites no file:line": text.replace(row + " README.md:76 |", row + " the README |"),
        "configs/mlm-transfer.yaml: no table": text.replace("configs/mlm-transfer.yaml", "configs/elsewhere"),
    }
    for expected, changed in cases.items():
        assert changed != text, expected
        assert any(expected in p for p in problems(changed, REPO / "configs")), expected
    # a preset edited without the table: found
    for name in PRESETS:
        (tmp_path / name).write_text((REPO / "configs" / name).read_text())
    chen = tmp_path / "chen2020-bert-base.yaml"
    chen.write_text(chen.read_text().replace("learning_rate: 2.0e-5", "learning_rate: 3.0e-5"))
    assert problems(text, tmp_path) == ["chen2020-bert-base.yaml ticket.train.learning_rate: the table says 2e-05, "
                                        "the file has 3e-05"]


def test_the_issue_17_settings_have_rows():
    """The settings issue 17 names, each a row of its preset's table with the value it asks for."""
    rows = {(name, r["setting"]): r for name, rs in tables(DOC.read_text()) for r in rs}
    want = {
        ("liang2021-bert-base.yaml", "ticket.train.optimizer"): ("`adamax_mtdnn`", "same"),
        ("liang2021-bert-base.yaml", "search.space.prune.head_fraction,prune.ffn_fraction.values"):
            ("`[[0.1, 0.0833], [0.2, 0.1667], [0.3, 0.25], [0.4, 0.3333], [0.5, 0.4167], [0.6, 0.5], [0.7, 0.5833], "
             "[0.8, 0.6667]]`", "same"),
        ("liang2021-mtl.yaml", "train.optimizer"): ("`adamax_mtdnn`", "same"),
        ("liang2021-mtl.yaml", "train.learning_rate"): ("`5.0e-5`", "same"),
        ("liang2021-mtl.yaml", "train.batch_size"): ("`32`", "same"),
        ("liang2021-mtl.yaml", "train.epochs"): ("`5`", "same"),
        ("liang2021-mtl.yaml", "ticket_rule"): ("`super`", "same"),  # dense where no super ticket
        ("liang2021-mtl-sweep.yaml", "search.mtl.train.optimizer"): ("`adamax_mtdnn`", "same"),
        ("liang2021-mtl-sweep.yaml", "search.mtl.ticket_rule"): ("`super`", "same"),
        ("mlm-transfer.yaml", "ticket.train.epochs"): ("`3`", "same"),
        ("mlm-transfer.yaml", "ticket.train.batch_size"): ("`32`", "same"),
        ("mlm-transfer.yaml", "ticket.data.max_seq_length"): ("`128`", "same"),
        ("mlm-transfer.yaml", "ticket.train.warmup_ratio"): ("`0.0`", "same"),
        ("mlm-transfer.yaml", "ticket.train.weight_decay"): ("`0.0`", "same"),
        ("mlm-transfer.yaml", "ticket.per_task.mlm.train.learning_rate"): ("`5.0e-5`", "same"),
        ("mlm-transfer.yaml", "ticket.per_task.mlm.train.batch_size"): ("`16`", "same"),
        ("mlm-transfer.yaml", "ticket.per_task.mlm.train.weight_decay"): ("`0.0`", "same"),
        ("mlm-transfer.yaml", "ticket.per_task.mlm.train.warmup_ratio"): ("`0.0`", "same"),
    }
    for key, (preset, same) in want.items():
        assert key in rows, key
        assert (rows[key]["preset value"], rows[key]["same?"]) == (preset, same), key
