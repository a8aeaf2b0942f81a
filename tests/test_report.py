"""report: the HTML page renders in headless Chromium with every figure decoded; files and summary on disk."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from raytickets import analysis
from raytickets.masks import Mask
from raytickets.report import write_report
from raytickets.store import ResultsStore

SHAPES = {f"encoder.layer.{l}.{n}.weight": s for l in range(2) for n, s in (
    ("attention.self.query", (16, 16)), ("attention.self.key", (16, 16)), ("attention.self.value", (16, 16)),
    ("attention.output.dense", (16, 16)), ("intermediate.dense", (32, 16)), ("output.dense", (16, 32)))}
SHAPES["pooler.dense.weight"] = (16, 16)
# Per task: the full-model value and the ticket's gain over it at 20/40/60/80% sparsity (plus seed noise).
TASKS = {"sst2": (0.90, [0.004, 0.010, -0.001, -0.03]), "mrpc": (0.84, [0.0005, -0.004, -0.02, -0.05]),
         "rte": (0.66, [0.010, 0.006, 0.001, -0.04])}


def _mask(sparsity: float, seed: int) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(s, generator=g) >= sparsity for n, s in SHAPES.items()})


def build_results(root: Path, with_masks: bool = True) -> None:
    store = ResultsStore(root)
    rows = []
    base = dict(model="tiny", method="magnitude", metric_name="accuracy", finished_at="2024-01-01T00:00:00Z")
    for t, (task, (full, gains)) in enumerate(TASKS.items()):
        for seed in range(3):
            noise = (seed - 1) * 0.002
            rows.append(dict(base, trial=f"{task}-{seed}", task=task, seed=seed, round=0, kind="full", sparsity=0.0,
                             metric=full + noise))
            for r, gain in enumerate(gains, start=1):
                sparsity = round(0.2 * r, 4)
                mask_id = store.write_mask(_mask(sparsity, 100 * t + 10 * seed + r)) if with_masks else None
                rows.append(dict(base, trial=f"{task}-{seed}", task=task, seed=seed, round=r, kind="ticket",
                                 sparsity=sparsity, metric=full + gain + noise, mask_id=mask_id))
                rows.append(dict(base, trial=f"{task}-{seed}", task=task, seed=seed, round=r, kind="random",
                                 sparsity=sparsity, metric=full - 0.1 * sparsity + noise))
                rows.append(dict(base, trial=f"{task}-{seed}", task=task, seed=seed, round=r, kind="reinit",
                                 sparsity=sparsity, metric=full - 0.2 + noise))
            for target in TASKS:
                if target != task:
                    rows.append(dict(base, trial=f"{task}-{seed}", task=target, source_task=task, seed=seed, round=2,
                                     kind="transfer", sparsity=0.4, metric=TASKS[target][0] - 0.01 + noise))
    store.write_rounds(rows)


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert exe, "the report test needs headless Chromium: apt-get install -y chromium"
    return exe


def rendered_dom(page: Path, profile: Path) -> str:
    """The DOM after Chromium loaded the page and its load handler ran (virtual time: no fixed sleeps)."""
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def image_counts(dom: str) -> tuple[int, int]:
    body = re.search(r"<body[^>]*>", dom).group(0)
    loaded, total = (re.search(rf'data-images-{k}="(\d+)"', body) for k in ("loaded", "total"))
    assert loaded and total, body
    return int(loaded.group(1)), int(total.group(1))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    build_results(root)
    return root, write_report(root)


def test_report_renders_in_headless_chromium(report, tmp_path):
    root, index = report
    assert index == root / "report" / "index.html"
    dom = rendered_dom(index, tmp_path / "profile")
    assert image_counts(dom) == (4, 4)  # curves, overlap, transfer, per-layer sparsity
    assert "<title>raytickets report [rendered]</title>" in dom
    assert "<td>sst2</td>" in dom and "<td>40.0%</td>" in dom


def test_a_broken_figure_is_detected_by_the_render_check(report, tmp_path):
    _, index = report
    html = index.read_text()
    first = html.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = tmp_path / "broken.html"
    broken.write_text(html[:first] + base64.b64encode(b"not a png").decode() + html[html.index('"', first):])
    dom = rendered_dom(broken, tmp_path / "profile")
    assert image_counts(dom) == (3, 4) and "<title>raytickets report</title>" in dom


def test_report_files_summary_and_analysis(report):
    root, index = report
    out = index.parent
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["curves-tiny-magnitude.png", "layers-tiny-magnitude.png", "overlap-tiny-magnitude.png",
                    "transfer-tiny-magnitude.png"]
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    html = index.read_text()
    assert html.count("data:image/png;base64,") == 4 and "src=\"http" not in html  # self-contained
    # The report ran the analysis (its tables were missing) and its summary is the analysis summary.
    tables = analysis.load_analysis(root)
    assert tables is not None and (root / "analysis" / "super_tickets.parquet").is_file()
    summary = (out / "summary.md").read_text()
    assert summary == analysis.summary_markdown(tables)
    sst2 = next(line for line in summary.splitlines() if "| sst2 |" in line)
    assert "| 40.0% | +0.0100 |" in sst2  # the super ticket written in TASKS
    transfer = tables["transfer"]
    assert len(transfer) == 6 and transfer["vs_full"].tolist() == pytest.approx([-0.01] * 6)


def test_report_without_masks_has_only_the_curves(tmp_path):
    build_results(tmp_path, with_masks=False)
    index = write_report(tmp_path, out_dir=tmp_path / "elsewhere")
    assert index == tmp_path / "elsewhere" / "index.html"
    html = index.read_text()
    assert html.count("data:image/png;base64,") == 2  # curves and transfer: overlap and layers need masks
    assert sorted(p.name for p in index.parent.glob("*.png")) == ["curves-tiny-magnitude.png",
                                                                   "transfer-tiny-magnitude.png"]
    assert pd.read_parquet(tmp_path / "analysis" / "overlap.parquet").empty
