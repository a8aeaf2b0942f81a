"""stats: the super ticket's tests, alone and by simulation (no effect, a planted effect) over many sweeps.

The simulations cover continuous metrics and the ones a small dev set gives: accuracies k / rows with rows
<= 300, where a ticket often scores its full model's value exactly or one row apart (near-ties), which is
where a t-test divides by a zero variance and reports p = 0.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from raytickets.analysis import stats

LEVELS = np.round(1 - 0.8 ** np.arange(1, 11), 4)  # 10 IMP levels, 20% of the remaining per round
LEVELS_16 = np.round(1 - 0.8 ** np.arange(1, 17), 4)  # 16 levels: to 97% sparsity
SWEEPS = 2000
# The promised false-positive rate is 5%; with 2,000 sweeps a rate's standard error is about 0.5 point.
ALPHA, BOUND = 0.05, 0.06


def summed(x, y, axis):
    return np.sum(x - y, axis=axis)


def test_paired_greater_is_scipys_sign_flip_permutation_test_and_drops_missing_pairs():
    rng = np.random.default_rng(1)
    ticket, full = rng.normal(0.9, 0.01, (4, 6)), rng.normal(0.9, 0.01, (4, 6))
    t, p = stats.paired_greater(ticket, full)
    want = sps.permutation_test((ticket, full), summed, permutation_type="samples", vectorized=True,
                                n_resamples=np.inf, alternative="greater", axis=-1)
    assert p == pytest.approx(want.pvalue)
    assert t == pytest.approx(sps.ttest_rel(ticket, full, axis=-1).statistic)  # t: a description, no p from it
    ticket[0, 2], full[1, 4] = np.nan, np.nan  # a seed that stopped early; a seed without a full model
    t, p = stats.paired_greater(ticket, full)
    for row, drop in ((0, 2), (1, 4)):
        keep = np.arange(6) != drop
        alone = sps.permutation_test((ticket[row, keep], full[row, keep]), summed, permutation_type="samples",
                                     vectorized=True, n_resamples=np.inf, alternative="greater")
        assert p[row] == pytest.approx(alone.pvalue)
    one_pair = stats.paired_greater(np.array([0.9, np.nan]), np.array([0.8, 0.8]))
    assert np.isnan(one_pair).all()  # one pair: no test


def test_one_extra_correct_row_on_each_of_three_seeds_is_not_significant():
    """The issue's case: a 200-row dev set, the ticket of one of 16 levels right on one more row than the full
    model in each of 3 seeds. The t-test's differences have no variance (t = inf) and it said p = 0; three
    seeds can give at best p = 2**-3 = 1/8, and after Holm over 16 levels p_selection = 1."""
    full = np.array([172, 168, 175]) / 200
    ticket = np.tile(full, (16, 1))
    ticket[4] += 1 / 200
    r = stats.selection_test(ticket, full, LEVELS_16)
    assert r["level"] == 4 and r["levels_tested"] == 16
    assert r["p_paired"] == pytest.approx(1 / 8) and r["p_selection"] == 1.0
    assert r["t_paired"] == np.inf  # the mean difference's t stays as it is: equal differences, no spread
    unchanged = stats.paired_greater(ticket[0], full)  # every difference 0: each flip gives the observed sum
    assert unchanged[1] == 1.0 and np.isnan(unchanged[0])


def test_sign_flip_counts_near_ties_in_accuracies_as_ties():
    """Accuracies k/200 summed with flipped signs differ from the observed sum in the last bits; those sums are
    ties and count towards p. Checked against the same test on the integer row counts, where sums are exact.
    (scipy.stats.permutation_test's tolerance is relative to the observed sum and misses ties near 0: for rows
    164, 190, 161 and differences -2, +1, +1 it gives 0.5, the exact p being 5/8.)"""
    assert stats.paired_greater(np.array([162, 191, 162]) / 200, np.array([164, 190, 161]) / 200)[1] == 5 / 8
    rng = np.random.default_rng(5)
    rows = rng.integers(150, 195, (SWEEPS, 4))
    change = rng.integers(-3, 4, (SWEEPS, 4))
    signs = np.array(list(itertools.product([1, -1], repeat=4)))
    exact = np.mean(change @ signs.T >= change.sum(axis=1, keepdims=True), axis=1)
    _, p = stats.paired_greater((rows + change) / 200, rows / 200)
    assert np.array_equal(p, exact)


def test_beyond_sixteen_seeds_the_flips_are_sampled_from_a_fixed_seed():
    rng = np.random.default_rng(3)
    d = rng.normal(0.2, 1.0, (5, 20))
    sampled = stats.sign_flip_greater(d)
    assert np.array_equal(sampled, stats.sign_flip_greater(d))  # the same table on every run
    assert (sampled >= 1 / (stats.RESAMPLES + 1)).all()
    d[:, 12:] = np.nan  # 12 present pairs in 20 columns: the sampled p estimates the exact one over those 12
    assert stats.sign_flip_greater(d) == pytest.approx(stats.sign_flip_greater(d[:, :12]), abs=0.015)


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


# ------------------------------------------------------------------------------- simulated sweeps


def simulate(rng, seeds: int, seed_sd: float, effect: float = 0.0, levels: int = 10):
    """Sweeps of `levels` x `seeds` with ticket_{s,k} = mu + a_s + e_{s,k} and full_s = mu + a_s + e_s,
    a_s ~ N(0, seed_sd) shared by a seed's ticket and full model, e ~ N(0, 1); `effect` added to level 3."""
    a = rng.normal(0.0, seed_sd, (SWEEPS, 1, seeds))
    ticket = 0.8 + a + rng.normal(0.0, 1.0, (SWEEPS, levels, seeds))
    full = 0.8 + a[:, 0, :] + rng.normal(0.0, 1.0, (SWEEPS, seeds))
    ticket[:, 3, :] += effect
    return ticket, full


def simulate_accuracy(rng, rows: int, seeds: int, effect: float = 0.0, levels: int = 16):
    """Accuracies on a `rows`-row dev set: seed s has accuracy p_s ~ N(0.85, 0.02) (its head initialisation
    and data order), its full model and each level's ticket score Binomial(rows, p_s) / rows; `effect` is
    added to level 3's p."""
    p = np.clip(rng.normal(0.85, 0.02, (SWEEPS, 1, seeds)), 0.0, 1.0)
    full = rng.binomial(rows, p[:, 0, :]) / rows
    p = np.repeat(p, levels, axis=1)
    p[:, 3, :] = np.clip(p[:, 3, :] + effect, 0.0, 1.0)
    return rng.binomial(rows, p) / rows, full


def simulate_near_ties(rng, rows: int, seeds: int, flips: float, effect_rows: int = 0, levels: int = 16):
    """Tickets that predict as their full model on all but a few of `rows` rows: each level's ticket gains
    Poisson(flips) rows and loses Poisson(flips) rows against the full model of its seed, so most differences
    are 0 or +-1 row (equal differences: the t-test's zero variance); level 3 gains `effect_rows` more."""
    full = rng.binomial(rows, np.clip(rng.normal(0.85, 0.02, (SWEEPS, seeds)), 0.0, 1.0)) / rows
    change = rng.poisson(flips, (SWEEPS, levels, seeds)) - rng.poisson(flips, (SWEEPS, levels, seeds))
    change[:, 3, :] += effect_rows
    return full[:, None, :] + change / rows, full


def welch_of_the_best(ticket, full, level):
    best = np.take_along_axis(ticket, level[:, None, None], axis=1)[:, 0, :]
    return stats.welch_greater(best, full)[1]


def false_positives(r) -> float:
    return float(np.mean(r["p_selection"] < ALPHA))


@pytest.mark.parametrize("seeds", [3, 10])
@pytest.mark.parametrize("seed_sd", [0.0, 0.5, 2.0])
def test_no_effect_p_selection_fires_at_most_its_level_while_the_raw_p_of_the_best_does_not(seed_sd, seeds):
    rng = np.random.default_rng(20240601 + int(10 * seed_sd) + seeds)
    ticket, full = simulate(rng, seeds=seeds, seed_sd=seed_sd)
    r = stats.selection_test(ticket, full, LEVELS)
    assert (r["levels_tested"] == 10).all() and (r["level"] >= 0).all()
    assert false_positives(r) <= BOUND
    if seeds == 3:  # 3 seeds: p >= 1/8 at any level, so no choice of the best of 10 can be significant
        assert (r["p_paired"] >= 1 / 8).all() and (r["p_selection"] == 1.0).all()
        return
    # The raw p of the chosen level, paired or not, ignores the choice and fires far more than 5%. Welch's
    # rate falls as the shared seed effect grows (it counts that effect as noise), so its bound needs a small one.
    assert np.mean(r["p_paired"] < ALPHA) > 0.10
    if seed_sd <= 0.5:
        assert np.mean(welch_of_the_best(ticket, full, r["level"]) < ALPHA) > 0.10


@pytest.mark.parametrize("seeds", [3, 10])
@pytest.mark.parametrize("rows", [100, 200, 300])
def test_no_effect_on_a_small_dev_set_p_selection_and_p_holdout_fire_at_most_their_level(rows, seeds):
    r = stats.selection_test(*simulate_accuracy(np.random.default_rng(rows + seeds), rows, seeds), LEVELS_16)
    assert false_positives(r) <= BOUND
    assert (r["levels_tested"] == 16).all()
    if seeds >= 4:
        assert (r["holdout_seeds"] == seeds // 2 + seeds % 2).all()
        assert np.mean(r["p_holdout"] < ALPHA) <= BOUND
        assert np.mean(r["p_paired"] < ALPHA) > 0.10  # the raw p of the best level: the choice's bias is there


@pytest.mark.parametrize("seeds", [3, 10])
@pytest.mark.parametrize("flips", [0.25, 0.5, 1.0])
def test_no_effect_with_near_ties_p_selection_fires_at_most_its_level(flips, seeds):
    """With 3 seeds and about one row in two changed (flips = 0.5), the t-test gave p = 0 in 7.6% of sweeps:
    three equal differences of +1 row at one level, or levels of all-zero differences left out of Holm."""
    rng = np.random.default_rng(int(100 * flips) + seeds)
    r = stats.selection_test(*simulate_near_ties(rng, 200, seeds, flips), LEVELS_16)
    assert false_positives(r) <= BOUND
    assert (r["levels_tested"] == 16).all()  # a level equal to the full model in every seed is a test (p = 1)
    if seeds >= 4:
        assert np.mean(r["p_holdout"] < ALPHA) <= BOUND


@pytest.mark.parametrize("seeds, effect", [(8, 4.0), (10, 3.0)])
def test_a_planted_effect_is_detected_most_of_the_time(seeds, effect):
    """p_selection < 0.05 needs a raw p <= 0.005 over 10 levels: at least 8 seeds (2**-8 = 0.0039)."""
    ticket, full = simulate(np.random.default_rng(7 + seeds), seeds=seeds, seed_sd=1.0, effect=effect)
    r = stats.selection_test(ticket, full, LEVELS)
    assert np.mean(r["level"] == 3) > 0.95
    assert np.mean(r["p_selection"] < ALPHA) > 0.9


def test_a_planted_gain_on_a_small_dev_set_is_detected_with_enough_seeds():
    """Ten seeds on a 200-row dev set, one level of 16 six points better (or 3 rows in the near-tie sweeps):
    p_selection needs a raw p <= 0.05/16, at most 3 of the 1,024 sign patterns summing as high as observed."""
    r = stats.selection_test(*simulate_accuracy(np.random.default_rng(21), 200, 10, effect=0.06), LEVELS_16)
    assert np.mean(r["level"] == 3) > 0.95
    assert np.mean(r["p_selection"] < ALPHA) > 0.85 and np.mean(r["p_holdout"] < ALPHA) > 0.7
    near = stats.selection_test(*simulate_near_ties(np.random.default_rng(22), 200, 10, 0.5, effect_rows=3), LEVELS_16)
    assert np.mean(near["p_selection"] < ALPHA) > 0.9 and np.mean(near["p_holdout"] < ALPHA) > 0.85


def test_held_out_seeds_confirm_without_false_positives():
    """p_holdout < 0.05 needs 5 held-out seeds (2**-5 = 0.031), so 10 in all."""
    ticket, full = simulate(np.random.default_rng(11), seeds=10, seed_sd=1.0)
    r = stats.selection_test(ticket, full, LEVELS)
    assert (r["holdout_seeds"] == 5).all()
    assert np.mean(r["p_holdout"] < ALPHA) <= BOUND
    planted = stats.selection_test(*simulate(np.random.default_rng(12), seeds=10, seed_sd=1.0, effect=4.0), LEVELS)
    assert np.mean(planted["p_holdout"] < ALPHA) > 0.8


def test_holm_over_tasks_and_arms_holds_the_rate_of_the_whole_mtl_table():
    """mtl's table (analysis.multitask.mtl_table): 3 tasks on 200-row dev sets and their average, 3 arms each
    against plain, 8 seeds, no effect. Holm over the 12 rows keeps 'some row below 0.05' near 5%; unadjusted,
    some row is in about a third of the tables."""
    rng = np.random.default_rng(31)
    p = np.clip(rng.normal(0.85, 0.02, (SWEEPS, 3, 1, 8)), 0.0, 1.0)  # task x seed: shared by the arms
    plain, arms = rng.binomial(200, p) / 200, rng.binomial(200, np.repeat(p, 3, axis=2)) / 200
    plain = np.concatenate([plain, plain.mean(axis=1, keepdims=True)], axis=1)  # the task-average row
    arms = np.concatenate([arms, arms.mean(axis=1, keepdims=True)], axis=1)
    _, raw = stats.paired_greater(arms, plain)  # (sweeps, 4 rows, 3 arms)
    adjusted = stats.holm(raw.reshape(SWEEPS, -1))
    assert np.mean((adjusted < ALPHA).any(axis=1)) <= BOUND
    assert np.mean((raw < ALPHA).any(axis=(1, 2))) > 0.2


def test_holdout_chooses_on_the_first_seeds_and_tests_on_the_others():
    # Seeds 0, 1 prefer level 0; all four seeds together prefer level 1. The held-out test is level 0 on seeds 2, 3.
    ticket = np.array([[0.95, 0.95, 0.90, 0.92], [0.90, 0.90, 0.99, 0.99]])
    full = np.array([0.90, 0.90, 0.89, 0.90])
    r = stats.selection_test(ticket, full, np.array([0.2, 0.4]))
    assert r["level"] == 1 and r["holdout_level"] == 0 and r["holdout_seeds"] == 2
    assert r["p_holdout"] == pytest.approx(1 / 4)  # differences +0.01, +0.02: only the observed signs sum as high
    three = stats.selection_test(ticket[:, :3], full[:3], np.array([0.2, 0.4]))
    assert np.isnan(three["p_holdout"]) and three["holdout_seeds"] == 0  # fewer than 4 paired seeds
