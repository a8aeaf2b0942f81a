"""analysis: hand-built results with known answers (super ticket, matching rules, overlap, transfer)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from raytickets.analysis import tables as analysis
from raytickets.errors import ResultsError
from raytickets.masks import Mask
from raytickets.store import ResultsStore

# sst2: full model over 5 seeds has mean 0.900 and sample std sqrt(10e-6) = 0.0031623.
FULL_SST2 = [0.900, 0.904, 0.896, 0.902, 0.898]
# Ticket curve, 5 seeds per level. 40%: mean 0.910, one point (0.010) above the full model -> super ticket.
# 60%: mean 0.899 is within one std of the full model (paper rule) but below its mean (strict rule fails).
# 80%: mean 0.880, far below -> so the curve rises above the full model and falls below it: phase transition.
CURVE_SST2 = {
    0.2: [0.903, 0.905, 0.901, 0.904, 0.902],
    0.4: [0.910, 0.912, 0.908, 0.911, 0.909],
    0.6: [0.899, 0.901, 0.897, 0.900, 0.898],
    0.8: [0.880, 0.882, 0.878, 0.881, 0.879],
}
# mrpc: no "full" rows (full_metric column used instead); the curve only falls: no phase transition.
FULL_MRPC = [0.850, 0.852, 0.848]
CURVE_MRPC = {0.2: [0.849, 0.851, 0.847], 0.4: [0.845, 0.846, 0.844], 0.6: [0.830, 0.831, 0.829]}


def bert_shapes(layers=2, hidden=32, intermediate=64) -> dict[str, tuple[int, int]]:
    shapes = {}
    for layer in range(layers):
        p = f"encoder.layer.{layer}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[p + name + ".weight"] = (hidden, hidden)
        shapes[p + "intermediate.dense.weight"] = (intermediate, hidden)
        shapes[p + "output.dense.weight"] = (hidden, intermediate)
    shapes["pooler.dense.weight"] = (hidden, hidden)
    return shapes


def random_mask(shapes, sparsity: float, seed: int) -> Mask:
    """Exactly round(sparsity * n) weights pruned, chosen uniformly without replacement."""
    total = sum(math.prod(s) for s in shapes.values())
    g = torch.Generator().manual_seed(seed)
    flat = torch.ones(total, dtype=torch.bool)
    flat[torch.randperm(total, generator=g)[: round(sparsity * total)]] = False
    tensors, start = {}, 0
    for name, shape in shapes.items():
        tensors[name] = flat[start:start + math.prod(shape)].reshape(shape)
        start += math.prod(shape)
    return Mask(tensors)


def row(task, kind, sparsity, seed, metric, **extra) -> dict:
    base = dict(
        sweep="s", trial=f"{task}-seed{seed}", task=task, model="tiny", method="magnitude", scope="global",
        schedule="remaining", rate=0.2, seed=seed, round=int(round(sparsity * 10)), kind=kind, sparsity=sparsity,
        metric_name="accuracy", metric=metric, started_at="2024-01-01T00:00:00+00:00",
        finished_at="2024-01-01T01:00:00+00:00",
    )
    return {**base, **extra}


def build_results(root, shapes=None) -> ResultsStore:
    """sst2 and mrpc curves with masks at every ticket level, and sst2 -> mrpc transfer rows."""
    shapes = shapes or bert_shapes()
    store = ResultsStore(root)
    rows = [row("sst2", "full", 0.0, seed, v, round=0) for seed, v in enumerate(FULL_SST2)]
    for task, curve, fulls in (("sst2", CURVE_SST2, FULL_SST2), ("mrpc", CURVE_MRPC, FULL_MRPC)):
        for sparsity, values in curve.items():
            for seed, v in enumerate(values):
                mask = random_mask(shapes, sparsity, seed=1000 * seed + round(100 * sparsity) + 500 * (task == "mrpc"))
                full = fulls[seed] if task == "mrpc" else None
                rows.append(row(task, "ticket", sparsity, seed, v, mask_id=store.write_mask(mask), full_metric=full))
                rows.append(row(task, "random", sparsity, seed, v - 0.05 - sparsity / 10))
    for seed, v in enumerate([0.840, 0.842, 0.838]):
        rows.append(row("mrpc", "transfer", 0.4, seed, v, source_task="sst2", trial=f"sst2-seed{seed}"))
    store.write_rounds(rows)
    return store


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    build_results(root)
    return root, analysis.analyze(root)


def task_row(tables, task) -> pd.Series:
    t = tables["super_tickets"]
    return t[t["task"] == task].iloc[0]


def test_super_ticket_at_40_percent_beats_full_model_by_one_point(analysed):
    root, tables = analysed
    r = task_row(tables, "sst2")
    assert r["full_mean"] == pytest.approx(0.900) and r["full_std"] == pytest.approx(math.sqrt(10e-6))
    assert r["super_sparsity"] == 0.4 and r["super_seeds"] == 5 and r["full_seeds"] == 5
    assert r["gain"] == pytest.approx(0.010, abs=1e-9)
    # Welch by hand: se = sqrt(2.5e-6/5 + 10e-6/5) = 0.0015811, t = 0.010 / se = 6.3246,
    # df = (2.5e-6)^2 / ((0.5e-6)^2/4 + (2e-6)^2/4) = 5.882; one-sided p = P(T_5.88 > 6.32) = 3.94e-4.
    assert r["t_statistic"] == pytest.approx(6.3246, abs=1e-3)
    assert 3e-4 < r["p_welch"] < 5e-4
    assert bool(r["phase_transition"])
    written = pd.read_parquet(root / "analysis" / "super_tickets.parquet")
    assert written.loc[written["task"] == "sst2", "p_welch"].iloc[0] == pytest.approx(r["p_welch"])


def test_matching_sparsity_differs_between_paper_and_strict_rule(analysed):
    _, tables = analysed
    r = task_row(tables, "sst2")
    assert r["matching_sparsity_paper"] == 0.6  # 0.899 >= 0.900 - 0.00316
    assert r["matching_sparsity_strict"] == 0.4  # 0.899 < 0.900
    levels = tables["super_tickets"].query("task == 'sst2'").set_index("sparsity")
    assert list(levels.index) == [0.2, 0.4, 0.6, 0.8]
    assert levels["matches_paper"].tolist() == [True, True, True, False]
    assert levels["matches_strict"].tolist() == [True, True, False, False]
    assert levels["is_super"].tolist() == [False, True, False, False]
    assert levels.loc[0.6, "mean"] == pytest.approx(0.899) and levels.loc[0.6, "std"] == pytest.approx(math.sqrt(2.5e-6))


def test_curve_without_phase_transition_and_full_metric_fallback(analysed):
    _, tables = analysed
    r = task_row(tables, "mrpc")
    assert r["full_source"] == "full_metric column" and r["full_mean"] == pytest.approx(0.850)
    assert not r["phase_transition"]
    assert r["super_sparsity"] == 0.2 and r["gain"] == pytest.approx(-0.001)
    assert r["matching_sparsity_paper"] == 0.2 and math.isnan(r["matching_sparsity_strict"])
    assert r["p_welch"] > 0.5  # the ticket is worse: "ticket > full" is not supported


@pytest.mark.parametrize("means, expected", [
    ([0.91, 0.95, 0.85], True),   # rises above 0.9, then falls below
    ([0.89, 0.88, 0.85], False),  # never above
    ([0.91, 0.95, 0.92], False),  # above, never falls below
    ([0.85, 0.91, 0.90], False),  # below first, then above; ends exactly at the full mean (not below)
    ([0.85, 0.91, 0.89], True),
])
def test_phase_transition_rule(means, expected):
    assert analysis.phase_transition(np.array([0.2, 0.4, 0.6]), np.array(means), 0.9) is expected


def test_curves_include_baselines(analysed):
    _, tables = analysed
    c = tables["curves"]
    rnd = c[(c["task"] == "sst2") & (c["kind"] == "random") & (c["sparsity"] == 0.4)].iloc[0]
    assert rnd["mean"] == pytest.approx(0.910 - 0.05 - 0.04) and rnd["seeds"] == 5


def test_overlap_rows_add_up_and_match_chance_for_random_masks(analysed):
    _, tables = analysed
    o = tables["overlap"]
    assert set(o["task_a"] + "/" + o["task_b"]) == {"mrpc/sst2"}
    # sst2's matching ticket is at 60%, mrpc's at 20%; seeds 0-2 exist for both: seed-by-seed pairs.
    pairs = o[o["scope"] == "overall"]
    assert sorted(pairs["seed_a"]) == [0, 1, 2] and (pairs["seed_a"] == pairs["seed_b"]).all()
    assert set(pairs["sparsity_a"]) == {0.2} and set(pairs["sparsity_b"]) == {0.6}
    for (_, _), g in o.groupby(["seed_a", "seed_b"]):
        overall = g[g["scope"] == "overall"].iloc[0]
        for scope in ("layer", "kind"):
            parts = g[g["scope"] == scope]
            for col in ("total", "kept_a", "kept_b", "intersection", "union"):
                assert parts[col].sum() == overall[col], (scope, col)
        assert set(g.loc[g["scope"] == "layer", "group"]) == {"0", "1", "pooler"}
        assert set(g.loc[g["scope"] == "kind", "group"]) == {
            "query", "key", "value", "attention_output", "intermediate", "output", "pooler"}
        # Independent random masks: Jaccard near ab/(a+b-ab). The sd of the Jaccard is about
        # sqrt(n a b (1-a)(1-b)) * n / union^2 (delta method on a hypergeometric intersection).
        n, a, b = overall["total"], overall["kept_a"] / overall["total"], overall["kept_b"] / overall["total"]
        sd = math.sqrt(n * a * b * (1 - a) * (1 - b)) * (overall["kept_a"] + overall["kept_b"]) / overall["union"] ** 2
        assert overall["random_jaccard"] == pytest.approx(a * b / (a + b - a * b))
        assert abs(overall["jaccard"] - overall["random_jaccard"]) < 5 * sd
        assert overall["ratio"] == pytest.approx(overall["jaccard"] / overall["random_jaccard"])


def test_overlap_of_a_mask_with_itself_is_one():
    mask = random_mask(bert_shapes(), 0.7, seed=3)
    rows = analysis.aggregate_counts(analysis.tensor_counts(mask, mask))
    assert {r["scope"] for r in rows} == {"overall", "layer", "kind"}
    assert all(r["jaccard"] == 1.0 and r["intersection"] == r["kept_a"] for r in rows)
    overall = next(r for r in rows if r["scope"] == "overall")
    assert overall["random_jaccard"] == pytest.approx(0.3 * 0.3 / (0.6 - 0.09), abs=1e-4)


def test_structured_tickets_count_shared_heads_and_ffn_neurons(tmp_path, tiny_model_dir):
    shapes = bert_shapes()  # the tiny BERT's: 2 layers, hidden 32, 4 heads of 8, intermediate 64
    def structured(heads: dict[int, list[int]], neurons: dict[int, list[int]]) -> Mask:
        tensors = {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}
        for layer, hs in heads.items():
            for h in hs:
                for part in ("query", "key", "value"):
                    tensors[f"encoder.layer.{layer}.attention.self.{part}.weight"][h * 8:(h + 1) * 8] = False
                tensors[f"encoder.layer.{layer}.attention.output.dense.weight"][:, h * 8:(h + 1) * 8] = False
        for layer, ns in neurons.items():
            tensors[f"encoder.layer.{layer}.intermediate.dense.weight"][ns] = False
            tensors[f"encoder.layer.{layer}.output.dense.weight"][:, ns] = False
        return Mask(tensors)

    store = ResultsStore(tmp_path)
    a = structured({0: [1], 1: [0, 2]}, {0: list(range(16)), 1: []})
    b = structured({0: [1, 3], 1: [0]}, {0: list(range(8, 24)), 1: list(range(32))})
    rows = []
    for task, mask in (("rte", a), ("cola", b)):
        mask_id = store.write_mask(mask)
        rows.append(row(task, "full", 0.0, 0, 0.6, round=0, model=str(tiny_model_dir), method="structured"))
        rows.append(row(task, "ticket", round(mask.sparsity(), 4), 0, 0.6, round=1, mask_id=mask_id,
                        model=str(tiny_model_dir), method="structured", trial=f"{task}-structured"))
    store.write_rounds(rows)
    o = analysis.analyze(tmp_path)["overlap"]
    assert set(o["scope"]) == {"overall", "layer", "kind", "head", "ffn"}
    heads = o[o["scope"] == "head"].set_index("group")
    # task_a = cola (b), task_b = rte (a). Alive heads: a: L0 {0,2,3}, L1 {1,3}; b: L0 {0,2}, L1 {1,2,3}.
    assert heads.loc["all", ["kept_a", "kept_b", "intersection", "union"]].tolist() == [5, 5, 4, 6]
    assert heads.loc["0", ["intersection", "union"]].tolist() == [2, 3]
    ffn = o[o["scope"] == "ffn"].set_index("group")
    # a prunes neurons 0-15 of layer 0; b prunes 8-23 of layer 0 and 0-31 of layer 1.
    assert ffn.loc["0", ["kept_a", "kept_b", "intersection", "union"]].tolist() == [48, 48, 40, 56]
    assert ffn.loc["1", ["kept_a", "kept_b", "intersection", "union"]].tolist() == [32, 64, 32, 64]
    assert ffn.loc["all", "jaccard"] == pytest.approx((40 + 32) / (56 + 64))


def test_transfer_relative_to_own_ticket_and_full_model(analysed):
    _, tables = analysed
    t = tables["transfer"].iloc[0]
    assert (t["source_task"], t["task"], t["sparsity"], t["seeds"]) == ("sst2", "mrpc", 0.4, 3)
    assert t["ticket_sparsity"] == 0.4 and t["ticket_mean"] == pytest.approx(0.845)
    assert t["vs_ticket"] == pytest.approx(0.840 - 0.845) and t["vs_full"] == pytest.approx(0.840 - 0.850)


def test_layer_sparsity_of_matching_tickets(analysed):
    _, tables = analysed
    ls = tables["layer_sparsity"]
    sst2 = ls[ls["task"] == "sst2"]
    assert list(sst2["layer"]) == ["0", "1", "pooler"] and (sst2["ticket"] == "matching").all()
    assert sst2["sparsity"].iloc[0] == 0.6
    sizes = np.array([8192, 8192, 1024])
    assert float((sst2["layer_sparsity"].to_numpy() * sizes).sum() / sizes.sum()) == pytest.approx(0.6, abs=1e-4)


def test_summary_markdown_reports_the_rules(analysed):
    _, tables = analysed
    md = analysis.summary_markdown(tables)
    lines = md.strip().split("\n\n")[0].splitlines()  # the summary table; the fixture's transfer table follows
    assert len(lines) == 4  # header, separator, mrpc, sst2
    assert "\n## Ticket transfer\n" in md
    sst2 = next(line for line in lines if "| sst2 |" in line)
    assert "60.0% / 40.0%" in sst2 and "| 40.0% |" in sst2 and "+0.0100" in sst2 and "| yes |" in sst2
    assert "0.9000 ± 0.0032 (n=5)" in sst2


def test_masks_with_different_shapes_are_refused_and_nothing_is_written(tmp_path):
    store = ResultsStore(tmp_path)
    small, big = bert_shapes(hidden=32), bert_shapes(hidden=16)
    rows = []
    for task, shapes in (("sst2", small), ("rte", big)):
        mask_id = store.write_mask(random_mask(shapes, 0.5, seed=1))
        rows += [row(task, "full", 0.0, 0, 0.9, round=0), row(task, "ticket", 0.5, 0, 0.9, mask_id=mask_id)]
    store.write_rounds(rows)
    with pytest.raises(ResultsError, match=r"masks/[0-9a-f]{16}\.parquet and .*masks/[0-9a-f]{16}\.parquet: .*disagree"):
        analysis.analyze(tmp_path)
    assert not (tmp_path / "analysis").exists()


def test_analyze_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(ResultsError, match="no rounds table"):
        analysis.analyze(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_rounds_naming_unstored_masks_still_give_super_tickets_with_a_warning(tmp_path):
    store = ResultsStore(tmp_path)
    rows = []
    for task in ("sst2", "rte"):
        rows += [row(task, "full", 0.0, 0, 0.9, round=0), row(task, "ticket", 0.5, 0, 0.91, mask_id="feedfeedfeedfeed")]
    store.write_rounds(rows)
    with pytest.warns(UserWarning, match=r"2 (matching|super) ticket mask\(s\) .* not stored in .*masks \(e\.g\. feedfeedfeedfeed\)"):
        tables = analysis.analyze(tmp_path)
    assert tables["overlap"].empty and tables["layer_sparsity"].empty
    assert task_row(tables, "rte")["super_sparsity"] == 0.5
    assert pd.read_parquet(tmp_path / "analysis" / "overlap.parquet").columns.tolist() == \
        analysis.ANALYSIS_SCHEMAS["overlap"].names


def test_layer_sparsity_prefers_a_matching_ticket_to_a_lower_seeds_super_ticket():
    keys = {"model": "m", "method": "magnitude", "task": "sst2", "setting_id": ""}
    matching = pd.DataFrame([{**keys, "seed": 1, "mask_id": "matching", "sparsity": 0.5}])
    supers = pd.DataFrame([{**keys, "seed": 0, "mask_id": "super", "sparsity": 0.25}])
    name = "encoder.layer.0.attention.self.query.weight"
    masks = {"matching": Mask({name: torch.tensor([True, False, True, False])}),
             "super": Mask({name: torch.tensor([True, True, True, False])})}
    table = analysis.layer_sparsity(matching, supers, masks.__getitem__)
    assert table[["mask_id", "ticket", "seed", "layer", "layer_sparsity"]].values.tolist() == [
        ["matching", "matching", 1, "0", 0.5]]


# ---------------------------------------------------------------- curves per setting, failed seeds, the tests


def setting(rewind_step: int, **prune) -> tuple[str, str]:
    """(setting_id, settings JSON) of a trajectory, as `runs.setting` would give them."""
    settings = {"model": "tiny", "train": {"learning_rate": 3e-5}, "prune": {"rewind_step": rewind_step, **prune}}
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16], text


def curve_rows(task, sid_json, full: list[float], levels: dict[float, list[float]], metric_name="accuracy",
               trial_of=lambda seed: None, **extra) -> list[dict]:
    sid, text = sid_json
    trial = lambda seed: trial_of(seed) or f"{task}-{sid[:4]}-seed{seed}"  # noqa: E731
    rows = [row(task, "full", 0.0, s, v, round=0, trial=trial(s), setting_id=sid, settings=text,
                metric_name=metric_name, **extra) for s, v in enumerate(full)]
    for sparsity, values in levels.items():
        rows += [row(task, "ticket", sparsity, s, v, trial=trial(s), setting_id=sid, settings=text,
                     metric_name=metric_name, **extra) for s, v in enumerate(values) if v is not None]
    return rows


def test_trajectories_with_different_settings_are_separate_curves(tmp_path):
    early, late = setting(0), setting(100)
    rows = curve_rows("sst2", early, [0.90, 0.90, 0.90], {0.5: [0.80, 0.81, 0.79]})
    rows += curve_rows("sst2", late, [0.90, 0.90, 0.90], {0.5: [0.92, 0.93, 0.91]})
    ResultsStore(tmp_path).write_rounds(rows)
    tables = analysis.analyze(tmp_path)
    assert sorted(tables["curves"]["mean"]) == pytest.approx([0.80, 0.92])  # two levels, not one averaged 0.86
    c = tables["curves"].set_index("setting_id")
    assert len(c) == 2 and (c["seeds"] == 3).all() and (c["task"] == "sst2").all()
    assert c.loc[early[0], "mean"] == pytest.approx(0.80) and c.loc[late[0], "mean"] == pytest.approx(0.92)
    labels = dict(zip(c.index, c["setting_label"]))
    assert labels[early[0]] == f"{early[0][:8]} prune.rewind_step=0"
    assert labels[late[0]] == f"{late[0][:8]} prune.rewind_step=100"
    s = tables["super_tickets"].set_index("setting_id")
    assert s.loc[early[0], "gain"] == pytest.approx(-0.10) and s.loc[late[0], "gain"] == pytest.approx(0.02)
    assert len(analysis.summary_rows(tables)) == 2


def test_older_rows_without_setting_id_are_one_curve_per_task(analysed):
    _, tables = analysed
    assert set(tables["curves"]["setting_id"]) == {""} and set(tables["curves"]["setting_label"]) == {""}


def test_a_collapsed_seed_is_scored_at_chance_and_counted(tmp_path):
    # STS-B: seed 2's ticket at 50% predicted a constant (Pearson undefined: NaN, failed and chance_metric
    # null, as older files hold it) -> scored 0; RTE: a NaN accuracy with its chance value -> 0.527;
    # CoLA: a run written by this version (failed=True, metric = chance value already).
    rows = curve_rows("stsb", setting(0), [0.85, 0.86, 0.84], {0.5: [0.86, 0.84, math.nan]}, metric_name="pearson")
    rows += curve_rows("rte", setting(0), [0.60, math.nan, 0.62], {0.5: [0.61, 0.63, 0.62]},
                       chance_metric=0.527)
    cola = curve_rows("cola", setting(0), [0.40, 0.42, 0.41], {0.5: [0.41, 0.43, 0.0]}, metric_name="matthews",
                      chance_metric=0.0)
    cola[-1]["failed"] = True
    ResultsStore(tmp_path).write_rounds(rows + cola)
    tables = analysis.analyze(tmp_path)
    st = tables["super_tickets"].set_index("task")
    assert st.loc["stsb", "mean"] == pytest.approx((0.86 + 0.84 + 0.0) / 3)
    assert st.loc["stsb", "seeds"] == 3 and st.loc["stsb", "failed_seeds"] == 1 and st.loc["stsb", "full_failed_seeds"] == 0
    assert st.loc["rte", "full_mean"] == pytest.approx((0.60 + 0.527 + 0.62) / 3) and st.loc["rte", "full_failed_seeds"] == 1
    assert st.loc["cola", "failed_seeds"] == 1 and st.loc["cola", "mean"] == pytest.approx(0.28)
    c = tables["curves"].set_index("task")
    assert c.loc["stsb", "failed_seeds"] == 1 and c.loc["rte", "failed_seeds"] == 0
    stsb = next(r for r in analysis.summary_rows(tables) if r[2] == "stsb")
    assert stsb[analysis.SUMMARY_HEADER.index("failed seeds (ticket / full)")] == "1 / 0"


def test_super_ticket_is_tested_paired_and_corrected_for_the_choice(analysed):
    _, tables = analysed
    r = task_row(tables, "sst2")
    levels = sorted(CURVE_SST2)
    # The exact sign-flip permutation test over seeds: at 20% and 40% every one of the 5 seeds beats its full
    # model, so only the observed signs sum as high: p = 2**-5. Holm by hand: the smallest of 4 p's x 4.
    raw = [stats.permutation_test((CURVE_SST2[s], FULL_SST2), lambda x, y, axis: np.sum(x - y, axis=axis),
                                  permutation_type="samples", vectorized=True, n_resamples=np.inf,
                                  alternative="greater").pvalue for s in levels]
    assert raw[:2] == pytest.approx([1 / 32, 1 / 32]) and min(raw[2:]) > 0.1 and r["levels_tested"] == 4
    assert r["p_paired"] == pytest.approx(1 / 32) and r["p_selection"] == pytest.approx(4 / 32)
    assert r["t_paired"] == pytest.approx(stats.ttest_rel(CURVE_SST2[0.4], FULL_SST2).statistic)
    # Held out: seeds 0, 1 choose 40% (0.911 vs 0.904 at 20%), seeds 2, 3, 4 test it: all 3 above, p = 2**-3.
    assert r["holdout_sparsity"] == 0.4 and r["holdout_seeds"] == 3
    assert r["p_holdout"] == pytest.approx(1 / 8)
    mrpc = task_row(tables, "mrpc")  # 3 seeds: too few to hold any out
    assert math.isnan(mrpc["p_holdout"]) and mrpc["holdout_seeds"] == 0 and mrpc["p_selection"] > 0.5


def test_a_tie_goes_to_the_sparser_level_and_best_tickets_agrees(tmp_path):
    sid = setting(0)
    rows = curve_rows("sst2", sid, [0.90, 0.91, 0.89], {0.2: [0.92, 0.93, 0.91], 0.36: [0.93, 0.91, 0.92],
                                                         0.488: [0.85, 0.86, 0.84]})
    rows += curve_rows("rte", sid, [0.60, 0.62, 0.61], {0.2: [0.64, 0.63, 0.65], 0.36: [0.60, 0.61, 0.62]})
    ResultsStore(tmp_path).write_rounds(rows)
    supers = analysis.analyze(tmp_path)["super_tickets"]
    assert task_row({"super_tickets": supers}, "sst2")["super_sparsity"] == 0.36  # 0.92 at 20% and 36%: the sparser
    best = {b["task"]: b for b in analysis.best_tickets(tmp_path)}
    assert set(best) == {"sst2", "rte"}
    for task, b in best.items():
        r = task_row({"super_tickets": supers}, task)
        assert (b["setting_id"], b["sparsity"], b["seeds"]) == (sid[0], r["super_sparsity"], r["super_seeds"])
        assert b["mean"] == r["super_mean"] and b["gain"] == r["gain"] and b["p_selection"] == r["p_selection"]
        assert b["full_mean"] == r["full_mean"] and b["metric_name"] == "accuracy"
    assert best["rte"]["sparsity"] == 0.2 and best["rte"]["gain"] == pytest.approx(0.03)
    assert analysis.best_tickets(tmp_path / "nothing") == []


def test_trajectories_count_the_trials_that_reach_each_level(tmp_path):
    # 4 trials of one setting (two seeds, two target sparsities each: their rounds coincide up to the
    # shorter one's stop); the two that stop at 36% never reach 48.8%.
    sid, text = setting(0)
    rows = []
    for seed in (0, 1):
        for stop in (0.36, 0.488):
            trial = f"sst2-seed{seed}-to{stop}"
            rows.append(row("sst2", "full", 0.0, seed, 0.90, round=0, trial=trial, setting_id=sid, settings=text))
            for r, sparsity in enumerate((0.2, 0.36, 0.488)[: 2 if stop == 0.36 else 3], start=1):
                rows.append(row("sst2", "ticket", sparsity, seed, 0.91 - sparsity / 10, round=r, trial=trial,
                                setting_id=sid, settings=text))
                rows.append(row("sst2", "random", sparsity, seed, 0.85, round=r, trial=trial, setting_id=sid,
                                settings=text))
    ResultsStore(tmp_path).write_rounds(rows)
    tables = analysis.analyze(tmp_path)
    levels = tables["super_tickets"].set_index("sparsity")
    assert levels["trajectories"].to_dict() == {0.2: 4, 0.36: 4, 0.488: 2}
    assert levels["seeds"].to_dict() == {0.2: 2, 0.36: 2, 0.488: 2}
    c = tables["curves"]
    assert c.loc[c["kind"] == "random", "trajectories"].tolist() == [4, 4, 2]
    sst2 = analysis.summary_rows(tables)[0]
    assert sst2[analysis.SUMMARY_HEADER.index("trajectories")] == "4 (levels: 2–4)"


def test_a_collapsed_layer_is_flagged_and_named(tmp_path):
    shapes = bert_shapes()
    store = ResultsStore(tmp_path)
    mask = random_mask(shapes, 0.1, seed=5)
    collapsed_name = "encoder.layer.1.output.dense.weight"
    mask = Mask({n: (torch.zeros_like(t) if n == collapsed_name else t) for n, t in mask.tensors.items()})
    assert mask.collapsed() == [collapsed_name]
    sid = setting(0)
    rows = curve_rows("sst2", sid, [0.90], {round(mask.sparsity(), 4): [0.905]}, mask_id=None)
    rows[-1]["mask_id"] = store.write_mask(mask)
    store.write_rounds(rows)
    tables = analysis.analyze(tmp_path)
    ls = tables["layer_sparsity"].set_index("layer")
    assert ls["collapsed"].to_dict() == {"0": False, "1": True, "pooler": False}
    assert ls.loc["1", "collapsed_tensors"] == collapsed_name and ls.loc["0", "collapsed_tensors"] == ""
    cell = analysis.summary_rows(tables)[0][analysis.SUMMARY_HEADER.index("layer collapse")]
    assert cell.startswith(collapsed_name) and "matching ticket" in cell


def test_overlap_pairs_shared_settings_else_every_setting_pair(tmp_path):
    store = ResultsStore(tmp_path)
    one, two, three = setting(0), setting(100), setting(0, scope="per_tensor")
    rows = []
    for k, (task, sid) in enumerate([("sst2", one), ("sst2", two), ("rte", one), ("cola", three)]):
        mask_id = store.write_mask(random_mask(bert_shapes(), 0.5, seed=k))
        rows += curve_rows(task, sid, [0.9], {0.5: [0.9]})
        rows[-1]["mask_id"] = mask_id
    store.write_rounds(rows)
    o = analysis.analyze(tmp_path)["overlap"]
    pairs = set(map(tuple, o[o["scope"] == "overall"][["task_a", "task_b", "setting_id_a", "setting_id_b"]].to_numpy()))
    assert pairs == {
        ("rte", "sst2", one[0], one[0]),  # they share setting one: only it is compared
        ("cola", "sst2", three[0], one[0]), ("cola", "sst2", three[0], two[0]),  # nothing shared: every pair
        ("cola", "rte", three[0], one[0]),
    }


def test_transfer_is_compared_with_the_target_ticket_of_its_own_setting(tmp_path):
    early, late = setting(0), setting(100)
    rows = curve_rows("mrpc", early, [0.85, 0.85], {0.4: [0.80, 0.80]})
    rows += curve_rows("mrpc", late, [0.85, 0.85], {0.4: [0.86, 0.86]})
    for sid, text in (early, late):
        rows += [row("mrpc", "transfer", 0.4, s, 0.84, source_task="sst2", trial=f"sst2-{sid[:4]}-{s}",
                     setting_id=sid, settings=text) for s in (0, 1)]
    ResultsStore(tmp_path).write_rounds(rows)
    t = analysis.analyze(tmp_path)["transfer"].set_index("setting_id")
    assert t.loc[early[0], "vs_ticket"] == pytest.approx(0.04) and t.loc[late[0], "vs_ticket"] == pytest.approx(-0.02)
    assert t["vs_full"].tolist() == pytest.approx([-0.01, -0.01]) and t["seeds"].tolist() == [2, 2]


def test_the_module_docstring_states_the_rules_and_names_no_missing_file():
    doc = analysis.__doc__
    assert "SCHEMA.md" not in doc
    for rule in ("setting_id", "rewind step", "rate", "target_sparsity", "chance_metric", "Holm", "p_holdout",
                 "sparser"):
        assert rule in doc, rule


def test_baseline_kinds_and_styles_come_from_the_registry():
    from raytickets.baselines import BASELINES
    from raytickets.analysis.report import BASELINE_STYLE

    assert analysis.BASELINE_KINDS == tuple(BASELINES) and analysis.CURVE_KINDS == ("ticket", *BASELINES)
    assert BASELINE_STYLE == {name: b.style for name, b in BASELINES.items()}


def test_a_curve_mixing_two_metrics_is_refused_and_the_convention_is_shown(tmp_path):
    sid = setting(0)
    rows = curve_rows("mrpc", sid, [0.85, 0.86], {0.5: [0.86, 0.84]}, metric_convention="paper")
    ResultsStore(tmp_path).write_rounds(rows)
    cell = analysis.summary_rows(analysis.analyze(tmp_path))[0][analysis.SUMMARY_HEADER.index("metric")]
    assert cell == "accuracy (paper)"
    ResultsStore(tmp_path).write_rounds([row("mrpc", "ticket", 0.5, 2, 0.88, metric_name="f1", trial="mrpc-f1",
                                             setting_id=sid[0], settings=sid[1])])
    with pytest.raises(ResultsError, match=r"rounds\.metric_name: curve .*'task': 'mrpc'.* holds \['accuracy', 'f1'\]"):
        analysis.analyze(tmp_path)


def test_results_with_only_full_models_give_empty_findings(tmp_path):
    ResultsStore(tmp_path).write_rounds(curve_rows("sst2", setting(0), [0.9, 0.91], {}))
    tables = analysis.analyze(tmp_path)
    assert tables["curves"].empty and tables["super_tickets"].empty and tables["layer_sparsity"].empty
    assert analysis.summary_rows(tables) == [["—"] * len(analysis.SUMMARY_HEADER)]
    assert analysis.best_tickets(tmp_path) == []


def test_an_mlm_ticket_without_a_pooler_is_compared_with_a_glue_ticket_on_the_encoder_they_share(tmp_path):
    """BertForMaskedLM has no pooler, so an MLM mask lacks the pooler tensor a GLUE mask may hold: overlap counts
    the tensors both hold (analyze on a root with mlm and sst2 tickets failed on this), and refuses masks that
    share no tensor or disagree on a shape."""
    from raytickets.analysis.overlap import _check_layout, tensor_counts

    q = "encoder.layer.0.attention.self.query.weight"
    mlm = Mask({q: torch.tensor([[1, 0], [1, 1]])})
    glue = Mask({q: torch.tensor([[1, 1], [0, 1]]), "pooler.dense.weight": torch.tensor([[0, 0], [0, 1]])})
    store = ResultsStore(tmp_path)
    _check_layout(store, mlm, glue, "a", "b")
    counts = tensor_counts(mlm, glue)
    assert list(counts["kind"]) == ["query"] and counts[["total", "intersection", "union"]].iloc[0].tolist() == [4, 2, 4]

    with pytest.raises(ResultsError, match="shapes disagree"):
        _check_layout(store, mlm, Mask({q: torch.ones(2, 3)}), "a", "b")
    with pytest.raises(ResultsError, match="shapes disagree"):
        _check_layout(store, mlm, Mask({"pooler.dense.weight": torch.ones(2, 2)}), "a", "b")


# ---------------------------------------------------------------- chance: a full model that learned nothing


def dev_setting(max_dev_examples: int | None) -> tuple[str, str]:
    """(setting_id, settings JSON) of a run scored on a dev subsample of `max_dev_examples`."""
    settings = {"model": "tiny", "data": {"max_dev_examples": max_dev_examples}, "prune": {"rewind_step": 0}}
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16], text


def at_chance_root(root) -> None:
    """The README smoke run's outcome: RTE's full model 0.48 on 200 dev examples whose majority class is 0.505,
    and a ticket 0.05 above it; SST-2 learned (0.80 against 0.51). Plus sst2 -> rte and rte -> sst2 transfers."""
    sid = dev_setting(200)
    rows = curve_rows("rte", sid, [0.48, 0.48, 0.48], {0.3: [0.53, 0.53, 0.53], 0.51: [0.50, 0.51, 0.49]},
                      chance_metric=0.505)
    rows += curve_rows("sst2", sid, [0.80, 0.81, 0.79], {0.3: [0.82, 0.83, 0.81], 0.51: [0.78, 0.77, 0.79]},
                       chance_metric=0.51)
    rows += [row("rte", "transfer", 0.3, s, 0.55, source_task="sst2", trial=f"t-rte-{s}", setting_id=sid[0],
                 settings=sid[1], chance_metric=0.505) for s in range(3)]
    rows += [row("sst2", "transfer", 0.3, s, 0.82, source_task="rte", trial=f"t-sst2-{s}", setting_id=sid[0],
                 settings=sid[1], chance_metric=0.51) for s in range(3)]
    ResultsStore(root).write_rounds(rows)


def test_a_full_model_at_chance_did_not_learn_and_names_no_ticket(tmp_path):
    at_chance_root(tmp_path)
    tables = analysis.analyze(tmp_path)
    rte, sst2 = task_row(tables, "rte"), task_row(tables, "sst2")
    margin = 2 * math.sqrt(0.505 * 0.495 / 200)  # two binomial standard errors at chance on 200 dev examples
    assert rte["chance"] == pytest.approx(0.505) and rte["dev_examples"] == 200
    assert rte["min_above_chance"] == pytest.approx(margin) and not rte["learned"]
    for column in ("super_sparsity", "gain", "matching_sparsity_paper", "matching_sparsity_strict", "p_selection"):
        assert math.isnan(rte[column]), column
    st = tables["super_tickets"]
    assert not st.loc[st["task"] == "rte", ["is_super", "matches_paper", "matches_strict"]].any().any()
    assert sst2["learned"] and sst2["super_sparsity"] == 0.3 and sst2["gain"] == pytest.approx(0.02)
    # no transfer verdict into or out of a task that did not learn
    t = tables["transfer"].set_index(["source_task", "task"])
    assert t.loc[("sst2", "rte"), "transfers"] is None and not t.loc[("sst2", "rte"), "learned"]
    assert t.loc[("rte", "sst2"), "transfers"] is None and t.loc[("rte", "sst2"), "transfers_strict"] is None
    best = {b["task"]: b for b in analysis.best_tickets(tmp_path)}
    assert not best["rte"]["learned"] and math.isnan(best["rte"]["sparsity"]) and math.isnan(best["rte"]["gain"])
    assert best["sst2"]["learned"] and best["sst2"]["sparsity"] == 0.3
    rows = {r[2]: r for r in analysis.summary_rows(tables)}
    cell = rows["rte"][analysis.SUMMARY_HEADER.index("matching sparsity (paper / strict)")]
    assert cell == f"did not learn: full 0.4800 ≤ chance 0.5050 + {margin:.4f}"
    assert rows["rte"][analysis.SUMMARY_HEADER.index("super ticket sparsity")] == "—"
    assert rows["rte"][analysis.SUMMARY_HEADER.index("chance (+ margin)")] == f"0.5050 (+ {margin:.4f})"
    assert "did not learn" in analysis.summary_markdown(tables)
    assert rows["sst2"][analysis.SUMMARY_HEADER.index("super ticket sparsity")] == "30.0%"


def test_above_chance_but_within_the_margin_did_not_learn_unless_the_margin_is_set(tmp_path):
    # 0.56 beats chance 0.505 by 0.055 < 0.0707 (two standard errors at 200 examples); with the margin set to
    # 0.05 for every curve it learned, and its 0.61 ticket is a super ticket.
    sid = dev_setting(200)
    ResultsStore(tmp_path).write_rounds(curve_rows("rte", sid, [0.56, 0.56], {0.3: [0.61, 0.61]}, chance_metric=0.505))
    assert not analysis.best_tickets(tmp_path)[0]["learned"]
    [b] = analysis.best_tickets(tmp_path, min_above_chance=0.05)
    assert b["learned"] and b["sparsity"] == 0.3 and b["min_above_chance"] == 0.05
    r = task_row(analysis.analyze(tmp_path, min_above_chance=0.05), "rte")
    assert r["learned"] and r["super_sparsity"] == 0.3 and r["min_above_chance"] == 0.05


def test_the_chance_margin_per_metric_and_dev_size():
    from raytickets.analysis.curves import chance_margin, dev_examples

    assert chance_margin("accuracy", 0.5, 100) == pytest.approx(0.1)
    assert chance_margin("f1", 0.81, 408) == pytest.approx(2 * math.sqrt(0.81 * 0.19 / 408))
    assert chance_margin("matthews", 0.0, 1043) == pytest.approx(2 / math.sqrt(1043))  # the null SE of a correlation
    assert chance_margin("accuracy", 0.0, None) == 0.0  # masked-token accuracy, chance 0: any learning shows
    assert math.isnan(chance_margin("accuracy", 0.5, None))
    assert dev_examples("rte", json.dumps({"data": {"max_dev_examples": 1000}})) == 277  # capped at the split
    assert dev_examples("sst2", json.dumps({"data": {"max_dev_examples": 200}})) == 200
    assert dev_examples("mnli", json.dumps({"data": {}})) == 9815 + 9832 and dev_examples("mlm", None) is None


def test_a_full_model_with_unknown_chance_is_not_judged(analysed):
    _, tables = analysed  # rows without chance_metric (older files): every finding stays
    r = task_row(tables, "sst2")
    assert r["learned"] and math.isnan(r["chance"]) and r["super_sparsity"] == 0.4


def test_the_chance_rule_errs_at_its_stated_rate_in_simulation():
    """A full model at chance on n dev examples is called learned about 2.3% of the time (one-sided, two
    standard errors); one 0.15 above chance nearly always, at the smoke config's 200 examples."""
    from raytickets.analysis.curves import chance_margin, learned

    rng = np.random.default_rng(0)
    n, c = 200, 0.505
    margin = chance_margin("accuracy", c, n)
    at_chance = rng.binomial(n, c, size=20000) / n
    rate = np.mean([learned(a, c, margin) for a in at_chance])
    assert 0.01 < rate < 0.04
    planted = rng.binomial(n, c + 0.15, size=2000) / n
    assert np.mean([learned(a, c, margin) for a in planted]) > 0.99


def test_raytickets_analyze_sets_the_margin_with_min_above_chance(tmp_path, capsys):
    from raytickets import cli

    sid = dev_setting(200)  # rte: 0.56 against chance 0.505, within two standard errors (0.0707) at 200 examples
    ResultsStore(tmp_path).write_rounds(curve_rows("rte", sid, [0.56, 0.56], {0.3: [0.61, 0.61]}, chance_metric=0.505))
    assert cli.main(["analyze", str(tmp_path)]) == 0
    assert "did not learn: full 0.5600 ≤ chance 0.5050 + 0.0707" in capsys.readouterr().out
    assert cli.main(["analyze", str(tmp_path), "--min-above-chance", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "did not learn" not in out and "| 30.0% |" in out and "0.5050 (+ 0.0500)" in out
    assert cli.main(["analyze", str(tmp_path), "--min-above-chance", "-0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --min-above-chance: -0.1 must be in [0, 1)") and err.count("\n") == 1


def test_a_task_whose_plain_multitask_arm_did_not_learn_gets_no_mtl_verdict():
    from raytickets.analysis.multitask import mtl_table

    rows = []
    for task, plain in (("sst2", 0.80), ("rte", 0.50)):  # rte's dense multi-task model is at its chance, 0.5
        for arm, shift in (("plain", 0.0), ("tickets_share", 0.03)):
            rows += [{"setting_id": "x", "task": task, "arm": arm, "seed": seed, "kind": "mtl", "round": 0,
                      "trial": f"t{seed}", "model": "m", "method": "structured", "metric_name": "accuracy",
                      "metric": plain + shift + 0.001 * seed, "failed": False, "chance_metric": 0.5,
                      "sparsity": 0.1 if shift else 0.0, "settings": None, "source_task": None} for seed in range(6)]
    table = mtl_table(pd.DataFrame(rows)).set_index(["task", "arm"])
    assert math.isnan(table.loc[("rte", "tickets_share"), "p_vs_plain"])  # the difference is described, not judged
    assert table.loc[("rte", "tickets_share"), "diff_vs_plain"] == pytest.approx(0.03)
    assert table.loc[("sst2", "tickets_share"), "diff_vs_plain"] == pytest.approx(0.03)
    assert table.loc[("sst2", "tickets_share"), "p_vs_plain"] < 0.05
    judged = mtl_table(pd.DataFrame(rows), min_above_chance=-1.0).set_index(["task", "arm"])  # every task judged
    assert judged.loc[("rte", "tickets_share"), "p_vs_plain"] < 0.05


def test_tickets_that_equal_oneshot_pruning_are_named_in_the_summary():
    """Issue 17 item 5: the analysis says how far each mlm ticket is from one-shot magnitude pruning of its rewind
    weights (`oneshot_diff`, mean over seeds per level) and names a level where it is one-shot pruning."""
    from raytickets.analysis.curves import level_stats
    from raytickets.analysis.tables import oneshot_markdown

    rows = pd.DataFrame({
        "model": "m", "method": "magnitude", "task": "mlm", "setting_id": "abcdef123", "kind": "ticket",
        "sparsity": [0.3, 0.3, 0.51, 0.51], "seed": [0, 1, 0, 1], "metric": [0.1, 0.12, 0.09, 0.1],
        "metric_name": "accuracy", "metric_convention": "glue", "failed": False, "oneshot_diff": [0.0, 0.0, 0.01, 0.03],
    })
    stats = level_stats(rows, ["model", "method", "task", "setting_id", "kind", "sparsity"])
    assert list(stats["oneshot_diff"]) == pytest.approx([0.0, 0.02])
    text = oneshot_markdown({"curves": stats})
    assert "mlm (magnitude, setting abcdef12): 30.0%: 0.0000 (equals one-shot pruning), 51.0%: 0.0200" in text
    glue = level_stats(rows.drop(columns="oneshot_diff").assign(task="sst2"),
                       ["model", "method", "task", "setting_id", "kind", "sparsity"])
    assert glue["oneshot_diff"].isna().all() and oneshot_markdown({"curves": glue}) == ""


def test_curves_of_one_task_are_side_by_side_per_level_in_the_summary_and_the_report(tmp_path):
    """Issue 22: IMP and gradual pruning, each method, with and without distillation, comparable at a glance: per
    task a table with a column per curve (method and what sets it apart) and a row per level."""
    import json

    from raytickets.analysis.report import write_report
    from raytickets.store import ResultsStore

    curves = {  # (method, trajectory, distilled): ticket metric per seed at 0.5 and 0.9
        ("magnitude", "imp", False): ([0.80, 0.82], [0.70, 0.72]),
        ("magnitude", "gradual", False): ([0.78, 0.80], [0.60, 0.62]),
        ("movement", "gradual", True): ([0.70, 0.74], [0.66, 0.68]),
    }
    rows = []
    for c, ((method, trajectory, distilled), (half, most)) in enumerate(curves.items()):
        settings = json.dumps({"prune": {"trajectory": trajectory}, "train": {"distill": {"alpha": 0.5} if distilled
                                                                                     else None}})
        for seed in (0, 1):
            base = dict(trial=f"t{c}-{seed}", task="sst2", model="m", method=method, seed=seed, setting_id=f"s{c}" * 4,
                        settings=settings, metric_name="accuracy", chance_metric=0.5, failed=False)
            rows += [dict(base, round=0, kind="full", sparsity=0.0, metric=0.84 + 0.01 * seed),
                     dict(base, round=1, kind="ticket", sparsity=0.5, metric=half[seed]),
                     dict(base, round=2, kind="ticket", sparsity=0.9, metric=most[seed])]
    ResultsStore(tmp_path).write_rounds(rows)
    tables = analysis.analyze(tmp_path)
    ((header, table),) = analysis.side_by_side(tables).values()
    # the settings that set the curves apart across methods: the method, the trajectory and the distillation
    imp, gradual, movement = ("magnitude prune.trajectory=imp, train.distill.alpha=unset",
                              "magnitude prune.trajectory=gradual, train.distill.alpha=unset",
                              "movement prune.trajectory=gradual, train.distill.alpha=0.5")
    assert header[0] == "sparsity" and sorted(header[1:]) == sorted([imp, gradual, movement]), header
    by_label = {h: [row[i] for row in table] for i, h in enumerate(header)}
    assert by_label["sparsity"] == ["full model", "50.0%", "90.0%"]
    assert by_label[imp][1:] == ["0.8100 ± 0.0141 (n=2)", "0.7100 ± 0.0141 (n=2)"]
    assert by_label[gradual][2] == "0.6100 ± 0.0141 (n=2)" and by_label[movement][1] == "0.7200 ± 0.0283 (n=2)"
    assert by_label[movement][0] == "0.8450 ± 0.0071 (n=2)"
    assert "## sst2 (m): curves side by side" in analysis.summary_markdown(tables)
    page = write_report(tmp_path).read_text()
    assert "curves side by side" in page and "0.7200 ± 0.0283 (n=2)" in page


def test_no_transfer_verdict_against_an_own_ticket_at_chance_and_universal_spans_target_settings(tmp_path):
    """Issue 17's MLM run: CoLA's own 75% ticket scored Matthews 0.03 (chance 0, margin 2/sqrt(300) = 0.115) and
    the MLM ticket 0.00 there, which Chen et al.'s rule called "transfers; universal", while the same ticket did
    not transfer to SST-2 — whose rows had another setting_id (CoLA's per-task settings), so universality was
    judged per target. Now: no verdict against an own ticket at chance, and universal over every target."""
    cola_sid, sst2_sid = dev_setting(300), dev_setting(299)
    rows = curve_rows("cola", cola_sid, [0.20, 0.22, 0.18], {0.75: [0.08, 0.00, 0.00]}, metric_name="matthews")
    rows += curve_rows("sst2", sst2_sid, [0.80, 0.81, 0.79], {0.75: [0.76, 0.76, 0.76]}, chance_metric=0.51)
    rows += [row("cola", "transfer", 0.75, s, 0.0, source_task="mlm", trial=f"t-cola-{s}", setting_id=cola_sid[0],
                 settings=cola_sid[1], metric_name="matthews") for s in range(3)]
    rows += [row("sst2", "transfer", 0.75, s, 0.70, source_task="mlm", trial=f"t-sst2-{s}", setting_id=sst2_sid[0],
                 settings=sst2_sid[1], chance_metric=0.51) for s in range(3)]
    ResultsStore(tmp_path).write_rounds(rows)
    tables = analysis.analyze(tmp_path)
    t = tables["transfer"].set_index(["source_task", "task"])
    cola, sst2 = t.loc[("mlm", "cola")], t.loc[("mlm", "sst2")]
    assert cola["learned"] and not cola["own_learned"] and cola["transfers"] is None
    assert sst2["own_learned"] and sst2["transfers"] is False
    assert not cola["universal"] and not sst2["universal"]
    summary = analysis.transfer_markdown(tables)
    assert "no verdict (the own ticket did not beat chance)" in summary and "universal" not in summary.split("|---")[-1]


def test_analyze_carries_the_rows_oneshot_diff_to_the_curves_and_summary(tmp_path):
    """The MLM real run logged oneshot_diff 0.0063 / 0.0029 per round, but `analyze` dropped it between the rows
    and the curves (seed_values did not carry it), so the summary had no one-shot section."""
    sid = dev_setting(100)
    rows = curve_rows("mlm", sid, [0.20], {0.5: [0.19], 0.75: [0.14]})
    for r in rows:
        r["oneshot_diff"] = {0.5: 0.0063, 0.75: 0.0029}.get(r["sparsity"])
    ResultsStore(tmp_path).write_rounds(rows)
    curves = analysis.analyze(tmp_path)["curves"]
    tickets = curves[curves["kind"] == "ticket"].sort_values("sparsity")
    assert list(tickets["oneshot_diff"]) == pytest.approx([0.0063, 0.0029])
