"""stats: the super ticket's tests, alone and by simulation (no effect, a planted effect) over many sweeps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from raytickets.analysis import stats

LEVELS = np.round(1 - 0.8 ** np.arange(1, 11), 4)  # 10 IMP levels, 20% of the remaining per round
SWEEPS = 2000


def test_paired_greater_is_scipys_paired_t_test_and_drops_missing_pairs():
    rng = np.random.default_rng(1)
    ticket, full = rng.normal(0.9, 0.01, (4, 6)), rng.normal(0.9, 0.01, (4, 6))
    t, p = stats.paired_greater(ticket, full)
    want = sps.ttest_rel(ticket, full, axis=-1, alternative="greater")
    assert t == pytest.approx(want.statistic) and p == pytest.approx(want.pvalue)
    ticket[0, 2], full[1, 4] = np.nan, np.nan  # a seed that stopped early; a seed without a full model
    t, p = stats.paired_greater(ticket, full)
    for row, drop in ((0, 2), (1, 4)):
        keep = np.arange(6) != drop
        assert p[row] == pytest.approx(sps.ttest_rel(ticket[row, keep], full[row, keep], alternative="greater").pvalue)
    one_pair = stats.paired_greater(np.array([0.9, np.nan]), np.array([0.8, 0.8]))
    assert np.isnan(one_pair).all()  # one pair: no variance, no test


def test_holm_by_hand_and_untested_levels_do_not_count():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert stats.holm(np.array([0.01, 0.04, 0.03, 0.005])) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = stats.holm(np.array([0.01, np.nan, 0.4]))  # m = 2: the NaN level had no test
    assert adjusted[0] == pytest.approx(0.02) and np.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.4)
    assert stats.holm(np.array([[0.6, 0.9]])).tolist() == [[1.0, 1.0]]  # 2 x 0.6 capped at 1; the max carries


def test_best_level_ties_go_to_the_sparser_level():
    sparsity = np.array([0.2, 0.36, 0.488])
    assert stats.best_level(np.array([0.91, 0.90, 0.91]), sparsity) == 2
    assert stats.best_level(np.array([0.91, 0.91 + 1e-15, 0.80]), sparsity) == 1  # equal up to rounding: a tie
    assert stats.best_level(np.array([0.92, 0.91, 0.91]), sparsity) == 0
    assert stats.best_level(np.array([np.nan, 0.5, np.nan]), sparsity) == 1
    assert stats.best_level(np.array([np.nan, np.nan, np.nan]), sparsity) == -1


def simulate(rng, seeds: int, seed_sd: float, effect: float = 0.0, levels: int = 10):
    """Sweeps of `levels` x `seeds` with ticket_{s,k} = mu + a_s + e_{s,k} and full_s = mu + a_s + e_s,
    a_s ~ N(0, seed_sd) shared by a seed's ticket and full model, e ~ N(0, 1); `effect` added to level 3."""
    a = rng.normal(0.0, seed_sd, (SWEEPS, 1, seeds))
    ticket = 0.8 + a + rng.normal(0.0, 1.0, (SWEEPS, levels, seeds))
    full = 0.8 + a[:, 0, :] + rng.normal(0.0, 1.0, (SWEEPS, seeds))
    ticket[:, 3, :] += effect
    return ticket, full


def welch_of_the_best(ticket, full, level):
    best = np.take_along_axis(ticket, level[:, None, None], axis=1)[:, 0, :]
    return stats.welch_greater(best, full)[1]


@pytest.mark.parametrize("seed_sd", [0.0, 0.5, 2.0])
def test_no_effect_p_selection_fires_at_most_6_percent_while_welch_of_the_best_does_not(seed_sd):
    rng = np.random.default_rng(20240601 + int(10 * seed_sd))
    ticket, full = simulate(rng, seeds=3, seed_sd=seed_sd)
    r = stats.selection_test(ticket, full, LEVELS)
    assert (r["levels_tested"] == 10).all() and (r["level"] >= 0).all()
    assert np.mean(r["p_selection"] < 0.05) <= 0.06
    # The raw p of the chosen level, paired or not, ignores the choice and fires far more than 5%. Welch's
    # rate falls as the shared seed effect grows (it counts that effect as noise), so its bound needs a small one.
    assert np.mean(r["p_paired"] < 0.05) > 0.10
    if seed_sd <= 0.5:
        assert np.mean(welch_of_the_best(ticket, full, r["level"]) < 0.05) > 0.10


@pytest.mark.parametrize("seeds, effect", [(3, 10.0), (6, 3.0)])
def test_a_planted_effect_is_detected_most_of_the_time(seeds, effect):
    ticket, full = simulate(np.random.default_rng(7 + seeds), seeds=seeds, seed_sd=1.0, effect=effect)
    r = stats.selection_test(ticket, full, LEVELS)
    assert np.mean(r["level"] == 3) > 0.95
    assert np.mean(r["p_selection"] < 0.05) > 0.6


def test_held_out_seeds_confirm_without_false_positives():
    ticket, full = simulate(np.random.default_rng(11), seeds=6, seed_sd=1.0)
    r = stats.selection_test(ticket, full, LEVELS)
    assert (r["holdout_seeds"] == 3).all()
    assert np.mean(r["p_holdout"] < 0.05) <= 0.06
    planted = stats.selection_test(*simulate(np.random.default_rng(12), seeds=6, seed_sd=1.0, effect=4.0), LEVELS)
    assert np.mean(planted["p_holdout"] < 0.05) > 0.6


def test_holdout_chooses_on_the_first_seeds_and_tests_on_the_others():
    # Seeds 0, 1 prefer level 0; all four seeds together prefer level 1. The held-out test is level 0 on seeds 2, 3.
    ticket = np.array([[0.95, 0.95, 0.90, 0.92], [0.90, 0.90, 0.99, 0.99]])
    full = np.array([0.90, 0.90, 0.89, 0.90])
    r = stats.selection_test(ticket, full, np.array([0.2, 0.4]))
    assert r["level"] == 1 and r["holdout_level"] == 0 and r["holdout_seeds"] == 2
    assert r["p_holdout"] == pytest.approx(sps.ttest_rel([0.90, 0.92], [0.89, 0.90], alternative="greater").pvalue)
    three = stats.selection_test(ticket[:, :3], full[:3], np.array([0.2, 0.4]))
    assert np.isnan(three["p_holdout"]) and three["holdout_seeds"] == 0  # fewer than 4 paired seeds
