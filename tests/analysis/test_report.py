"""report: the HTML page renders in headless Chromium with every figure decoded; files and summary on disk."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
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
    base = dict(model="tiny", method="magnitude", metric_name="accuracy", finished_at="2024-01-01T00:00:00Z",
                sweep="fixture", chance_metric=0.5, training_steps=10, wall_seconds=36.0)
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
    _record(root)
    _record(root)  # a resumed sweep: its record is kept, the resume counted
    return root, write_report(root)


def test_report_renders_in_headless_chromium(report, tmp_path):
    root, index = report
    assert index == root / "report" / "index.html"
    dom = rendered_dom(index, tmp_path / "profile")
    assert image_counts(dom) == (6, 6)  # a curve per task, overlap, transfer, per-layer sparsity
    assert "<title>raytickets report: fixture [rendered]</title>" in dom
    assert "<td>sst2</td>" in dom and "<td>40.0%</td>" in dom


def test_a_broken_figure_is_detected_by_the_render_check(report, tmp_path):
    _, index = report
    html = index.read_text()
    first = html.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = tmp_path / "broken.html"
    broken.write_text(html[:first] + base64.b64encode(b"not a png").decode() + html[html.index('"', first):])
    dom = rendered_dom(broken, tmp_path / "profile")
    assert image_counts(dom) == (5, 6) and "<title>raytickets report: fixture</title>" in dom


def test_report_files_summary_and_analysis(report):
    root, index = report
    out = index.parent
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"curves-tiny-magnitude-{task}.png" for task in sorted(TASKS)] + [
        "layers-tiny-magnitude.png", "overlap-tiny-magnitude.png", "transfer-tiny-magnitude.png"]
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    html = index.read_text()
    assert html.count("data:image/png;base64,") == 6 and "src=\"http" not in html  # self-contained
    assert "<style>" in html and "<link" not in html  # styled inline
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
    assert html.count("data:image/png;base64,") == 4  # curves and transfer: overlap and layers need masks
    assert sorted(p.name for p in index.parent.glob("*.png")) == [
        *(f"curves-tiny-magnitude-{task}.png" for task in sorted(TASKS)), "transfer-tiny-magnitude.png"]
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
    # The two curves of sst2 are told apart by the setting that differs between them: in the section's title, the
    # full table and the side-by-side table's column (the compact summary names the setting by its id, linked).
    assert page.count("prune.rewind_step=0<") == 3 and page.count("prune.rewind_step=100<") == 3
    assert "<th>magnitude prune.rewind_step=0</th>" in page
    assert '<a href="#curve-tiny-magnitude-sst2-0000abab">sst2 · 0000abab</a>' in page
    assert page.count("<h3>sst2 · 0000abab prune.rewind_step=0</h3>") == 1
    # Collapse in words: above the summary table, in its row, and in the caption of the layer figure.
    note = page[page.index("Layer collapse in the chosen tickets"):page.index("<table>")]
    assert "sst2 · 0100abab prune.rewind_step=100" in note and collapsed in note
    caption = page[page.index('id="layers-tiny-magnitude.png"'):]
    assert collapsed in caption[:caption.index("</figcaption>")]
    summary = (index.parent / "summary.md").read_text()
    row = next(line for line in summary.splitlines() if "rewind_step=100" in line)
    assert collapsed in row and "| 0 / 0 |" in row and "| 3 |" in row
    dom = rendered_dom(index, tmp_path / "profile")
    assert image_counts(dom) == (3, 3)  # a curve per setting and per-layer sparsity (one task: no overlap)


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


# ---------------------------------------------------------------- what a reviewer reads first


def _record(root: Path, name: str = "fixture", workers: int = 2, cpus: float = 1.5) -> dict:
    from raytickets.config import SweepConfig
    from raytickets.sweep.layout import sweep_record

    cfg = SweepConfig(name=name)
    cfg.resources.num_workers, cfg.resources.cpus_per_worker = workers, cpus
    record = sweep_record(cfg)
    ResultsStore(root).write_sweep_record(record)
    return record


def test_header_names_the_sweep_config_versions_data_and_cost(report):
    root, index = report
    (record,) = ResultsStore(root).sweep_records()
    assert len(record["resumed_at"]) == 1 and record["versions"]["torch"] == torch.__version__
    page = index.read_text()
    header = page[page.index("<header>"):page.index("</header>")]
    assert f"<code>{record['config_digest']}</code>" in header and "<b>fixture</b>" in header
    assert f"torch {torch.__version__}" in header and "transformers " in header and "ray " in header
    assert "<summary>Resolved config of fixture" in header and "num_workers: 2" in header  # the YAML, collapsed
    assert "(resumed 1×)" in header
    assert "<b>rte</b>: 277 dev examples" in header and "seeds 0, 1, 2" in header  # GLUE's RTE dev size
    # 3 tasks x 3 seeds x (1 full + 4 x (ticket, random, reinit)) + 18 transfers, 10 steps and 36 s each
    fine_tunes = 3 * 3 * 13 + 18
    assert f"{fine_tunes} fine-tunes (9 full, 36 random, 36 reinit, 36 ticket, 18 transfer)" in header
    assert f"{10 * fine_tunes:,} training steps" in header
    assert f"{fine_tunes * 36 / 3600:.2f} h of fine-tuning wall time" in header
    assert f"{fine_tunes * 36 / 3600 * 2 * 1.5:.2f} h CPU" in header  # wall x workers x CPUs per worker


def test_a_fine_tune_shared_by_trajectories_is_counted_once():
    from raytickets.analysis.provenance import cost

    shared = dict(task="sst2", kind="full", source_task=None, arm=None, round=0, sparsity=0.0, training_steps=50,
                  wall_seconds=360.0, started_at=pd.Timestamp("2026-01-01T10:00Z"),
                  finished_at=pd.Timestamp("2026-01-01T10:06Z"), node_id="n1", sweep="s")
    rows = pd.DataFrame([{**shared, "trial": t} for t in ("a", "b", "c")]
                        + [{**shared, "trial": "a", "kind": "ticket", "round": 1, "sparsity": 0.3,
                            "started_at": pd.Timestamp("2026-01-01T10:07Z")}])
    records = [{"name": "s", "config": {"resources": {"num_workers": 1, "cpus_per_worker": 2.0, "use_gpu": True,
                                                      "gpus_per_worker": 1.0}}}]
    c = cost(rows, records)
    assert c["fine_tunes"] == 2 and c["by_kind"] == {"full": 1, "ticket": 1} and c["training_steps"] == 100
    assert c["cpu_hours"] == pytest.approx(0.4) and c["gpu_hours"] == pytest.approx(0.2) and c["unpriced"] == 0
    assert cost(rows, [])["cpu_hours"] is None and cost(rows, [])["unpriced"] == 2  # no record: not priced


def test_the_curve_shows_chance_every_baseline_and_concentric_marks(report):
    from raytickets.analysis.report import curve_figure

    tables = analysis.load_analysis(report[0])
    key = ("tiny", "magnitude", "sst2", "")
    ax = curve_figure(tables["super_tickets"], tables["curves"], keys=[key]).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["chance"].get_ydata()) == [0.5, 0.5]
    for kind in ("random", "reinit", "ticket"):  # every baseline's curve: 4 levels, 3 seeds each
        mean = next(line for line in ax.get_lines() if line.get_gid() == f"mean:{kind}")
        assert len(mean.get_xdata()) == 4 and mean.get_linestyle() != "None", kind
    # On sst2 the super ticket (40%) is also the strict match: star inside the square, neither hiding the other.
    star, square = lines["super ticket"], lines["matching (strict)"]
    assert star.get_xdata()[0] == square.get_xdata()[0] == pytest.approx(40)
    assert star.get_markersize() < square.get_markersize() < lines["matching (paper)"].get_markersize()
    assert star.get_zorder() > square.get_zorder() and square.get_markerfacecolor() == "none"


def test_single_seed_levels_are_points_and_never_joined_across_trials(tmp_path):
    """The smoke sweep's shape: one seed, trials at different pruning rates, each with its own two levels."""
    from raytickets.analysis.report import curve_figure, trial_paths

    base = dict(model="tiny", method="magnitude", metric_name="accuracy", task="rte", seed=0, chance_metric=0.5)
    rows, levels = [], {"t1": (0.36, 0.59), "t2": (0.38, 0.62), "t3": (0.49, 0.74)}
    for i, (trial, sparsities) in enumerate(levels.items()):
        rows.append(dict(base, trial=trial, round=0, kind="full", sparsity=0.0, metric=0.70))
        for r, s in enumerate(sparsities, start=1):
            rows.append(dict(base, trial=trial, round=r, kind="ticket", sparsity=s, metric=0.70 + 0.01 * (i - r)))
    ResultsStore(tmp_path).write_rounds(rows)
    tables = analysis.analyze(tmp_path)
    paths = trial_paths(analysis.scored(ResultsStore(tmp_path).rounds()))
    ax = curve_figure(tables["super_tickets"], tables["curves"], paths).axes[0]
    assert not [line for line in ax.get_lines() if line.get_gid() == "mean:ticket"]  # no mean line through 1 seed
    points = next(line for line in ax.get_lines() if line.get_gid() == "points:ticket")
    assert points.get_linestyle() == "None" and len(points.get_xdata()) == 6
    trial_of = {round(100 * s, 4): t for t, ss in levels.items() for s in ss}
    joined = [line for line in ax.get_lines() if line.get_linestyle() != "None" and len(line.get_xdata()) > 1
              and line.get_label() not in ("chance",) and line.get_gid() != "_"]
    joined = [line for line in joined if not np.allclose(line.get_ydata(), line.get_ydata()[0])]  # not a level line
    assert sorted(line.get_gid() for line in joined) == ["trial:t1", "trial:t2", "trial:t3"]
    for line in joined:  # each line joins one trial's own rounds
        assert {trial_of[round(x, 4)] for x in line.get_xdata()} == {line.get_gid()[len("trial:"):]}


def test_the_overlap_colour_scale_starts_at_zero():
    from raytickets.analysis.figures import overlap_figure

    overlap = pd.DataFrame({"task_a": ["sst2", "sst2", "mrpc"], "task_b": ["mrpc", "rte", "rte"],
                            "scope": "overall", "ratio": [2.9, 0.1, 1.0]})
    fig = overlap_figure(overlap)
    image = fig.axes[0].images[0]
    assert image.norm.vmin == 0 and image.norm.vmax == pytest.approx(2.9) and image.norm.vcenter == 1
    assert min(fig.axes[1].get_ylim()) >= 0  # the colour bar shows no negative ratio
    fig.canvas.draw()  # every tick label inside the figure: none clipped
    box = fig.bbox
    for label in [*fig.axes[0].get_xticklabels(), *fig.axes[0].get_yticklabels()]:
        extent = label.get_window_extent()
        assert extent.x0 >= box.x0 and extent.y0 >= box.y0 and extent.x1 <= box.x1 and extent.y1 <= box.y1


def test_the_summary_is_compact_with_every_column_behind_it(report):
    from raytickets.analysis.report import COMPACT_HEADER

    page = report[1].read_text()
    summary = page[page.index("<h2>Summary</h2>"):]
    compact = summary[:summary.index("</table>")]
    assert compact.count("<th>") == len(COMPACT_HEADER) <= 8 and compact.count("<tr>") == 1 + len(TASKS)
    assert 'href="#curve-tiny-magnitude-sst2"' in compact and 'id="curve-tiny-magnitude-sst2"' in page
    assert '<td class="num">0.9000 ± 0.0020 (n=3)</td>' in compact
    assert summary.index("<details><summary>Every column") < summary.index("<th>p_welch (unpaired, unadjusted)</th>")
    rules = page[page.index("<h2>Rules</h2>"):page.index("<h2>Summary</h2>")]
    assert rules.count("<li>") == 6 and "<details><summary>The rules in full" in rules
    level = page[page.index('id="curve-tiny-magnitude-sst2"'):]
    level = level[level.index("<table>"):level.index("</table>")]
    assert "<th>round</th><th>sparsity</th><th>ticket</th><th>random</th><th>reinit</th>" in level
    assert '<td class="num">40.0%</td><td class="num">0.9100 ± 0.0020 (n=3)</td>' in level and "★ super" in level


def test_a_multi_task_root_has_its_section_and_no_empty_summary(tmp_path, tmp_path_factory):
    rows = []
    for arm, gain in (("plain", 0.0), ("tickets_share", 0.01), ("single", 0.005), ("random", -0.02)):
        for task, value in (("sst2", 0.85), ("rte", 0.62)):
            rows += [dict(sweep="mtl", trial=f"m-{seed}", model="tiny", method="magnitude", task=task, seed=seed,
                          round=0, kind="mtl", arm=arm, sparsity=0.0 if arm == "plain" else 0.3, metric_name="accuracy",
                          metric=value + gain + 0.002 * seed, chance_metric=0.5, setting_id="abcdef0123456789",
                          wall_seconds=20.0, training_steps=40, started_at=f"2026-01-01T10:0{seed}:00Z",
                          finished_at=f"2026-01-01T10:0{seed}:30Z") for seed in range(2)]
    ResultsStore(tmp_path).write_rounds(rows)
    index = write_report(tmp_path)
    page = index.read_text()
    assert 'id="mtl.png"' in page and "<h3>Experiment abcdef01</h3>" in page and "tickets_share - plain (p)" in page
    assert "<h2>Summary</h2>" not in page and "```" not in page  # no empty ticket summary, no Markdown fences
    assert "16 fine-tunes (16 mtl) behind 16 rows · 640 training steps" in page
    assert "<b>mtl</b> · no sweep record" in page and "unknown CPU" in page  # raytickets mtl records no sweep
    dom = rendered_dom(index, tmp_path_factory.mktemp("profile"))
    assert image_counts(dom) == (1, 1)
