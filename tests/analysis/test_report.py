"""report: the HTML page renders in headless Chromium with every figure decoded; files and summary on disk."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from raytickets.analysis import tables as analysis
from raytickets.masks import Mask
from raytickets.analysis.report import write_report
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


def build_settings_results(root: Path) -> str:
    """sst2 under two settings (rewind step 0 and 100), 3 seeds; the rewind-100 ticket at 20% has a collapsed
    tensor. Returns the collapsed tensor's name."""
    store = ResultsStore(root)
    collapsed = "encoder.layer.1.intermediate.dense.weight"
    base = dict(model="tiny", method="magnitude", metric_name="accuracy", task="sst2",
                finished_at="2024-01-01T00:00:00Z")
    rows = []
    for rewind, gain in ((0, 0.004), (100, 0.012)):
        text = json.dumps({"prune": {"rewind_step": rewind}, "train": {"learning_rate": 3e-5}}, sort_keys=True)
        sid = f"{rewind:04d}" + "ab" * 6
        for seed in range(3):
            trial = f"sst2-r{rewind}-{seed}"
            ident = dict(base, trial=trial, seed=seed, setting_id=sid, settings=text)
            rows.append(dict(ident, round=0, kind="full", sparsity=0.0, metric=0.90 + 0.002 * seed))
            for r, sparsity in enumerate((0.2, 0.4), start=1):
                mask = _mask(sparsity, 1000 * rewind + 10 * seed + r)
                if rewind == 100:
                    mask = Mask({n: t & (n != collapsed) for n, t in mask.tensors.items()})
                rows.append(dict(ident, round=r, kind="ticket", sparsity=sparsity, mask_id=store.write_mask(mask),
                                 metric=0.90 + 0.002 * seed + gain - 0.02 * (r - 1), failed=False))
                rows.append(dict(ident, round=r, kind="random", sparsity=sparsity, metric=0.85))
    store.write_rounds(rows)
    return collapsed


def test_report_names_settings_tests_failed_seeds_and_collapse(tmp_path):
    collapsed = build_settings_results(tmp_path / "results")
    index = write_report(tmp_path / "results")
    page = index.read_text()
    assert "p from Welch" not in page and "Holm" in page and "p_selection" in page and "failed seeds" in page
    for header in ("setting", "p_selection (paired, Holm over K levels)", "p_welch (unpaired, unadjusted)",
                   "failed seeds (ticket / full)", "trajectories", "layer collapse"):
        assert f"<th>{header}</th>" in page, header
    # The two curves of sst2 are told apart by the setting that differs between them.
    assert page.count("prune.rewind_step=0<") == 1 and page.count("prune.rewind_step=100<") == 1
    # Collapse in words: above the summary table, in its row, and in the caption of the layer figure.
    note = page[page.index("Layer collapse in the chosen tickets"):page.index("<table>")]
    assert "sst2 · 0100abab prune.rewind_step=100" in note and collapsed in note
    caption = page[page.index('id="layers-tiny-magnitude.png"'):]
    assert collapsed in caption[:caption.index("</figcaption>")]
    summary = (index.parent / "summary.md").read_text()
    row = next(line for line in summary.splitlines() if "rewind_step=100" in line)
    assert collapsed in row and "| 0 / 0 |" in row and "| 3 |" in row
    dom = rendered_dom(index, tmp_path / "profile")
    assert image_counts(dom) == (2, 2)  # curves and per-layer sparsity (one task: no overlap)


def test_an_analysis_written_with_other_columns_is_redone(tmp_path):
    build_settings_results(tmp_path)
    analysis.analyze(tmp_path)
    stale = tmp_path / "analysis" / "curves.parquet"
    pd.read_parquet(stale).drop(columns=["failed_seeds"]).to_parquet(stale)
    assert analysis.load_analysis(tmp_path) is None
    write_report(tmp_path)  # re-analyses instead of failing on the missing column
    assert "failed_seeds" in pd.read_parquet(stale).columns


def test_every_curve_has_a_chance_line_and_a_task_that_did_not_learn_no_star(tmp_path):
    from raytickets.analysis.report import curve_figure

    from .test_analysis import at_chance_root

    at_chance_root(tmp_path)  # rte: full 0.48 against chance 0.505 (did not learn); sst2: 0.80 against 0.51
    tables = analysis.analyze(tmp_path)
    fig = curve_figure(tables["super_tickets"], tables["curves"])
    panels = {ax.get_title().split(" ·")[0] + (" — did not learn" in ax.get_title()) * "!": ax for ax in fig.axes}
    assert set(panels) == {"rte!", "sst2"}  # "!": the title says "did not learn"
    for task, chance in (("rte!", 0.505), ("sst2", 0.51)):
        lines = {line.get_label(): line for line in panels[task].get_lines()}
        assert "chance" in lines and list(lines["chance"].get_ydata()) == pytest.approx([chance, chance]), task
    assert "super ticket" not in {line.get_label() for line in panels["rte!"].get_lines()}
    assert "super ticket" in {line.get_label() for line in panels["sst2"].get_lines()}
    page = write_report(tmp_path).read_text()
    assert "did not learn: full 0.4800 ≤ chance 0.5050" in page and "chance (dotted" in page
