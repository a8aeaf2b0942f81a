"""The statistics behind the super ticket: level choice, paired (sign-flip) and Welch tests, Holm, held-out confirmation.

Every function works on the last axis (seeds) or the last two (levels x seeds) and broadcasts over any
leading axes, so the analysis (one curve) and the simulations in tests/analysis/test_stats.py (thousands of
simulated sweeps in one call) run exactly the same code. A NaN is a seed missing at a level (it stopped
early, or has no full-model value) and is left out of that level only.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from scipy import stats

# Level means closer than this are a tie (the same values summed in another order differ in the last bits).
TIE = 1e-12
# Sign-flip sums closer than this times the metric values' size are a tie (float rounding, never an effect:
# no dev set has 10**9 rows). Up to EXACT_SEEDS seeds every sign pattern is enumerated (2**16 = 65,536);
# beyond, RESAMPLES random ones from a fixed seed, so a table is the same on every run.
FLIP_TIE = 1e-9
EXACT_SEEDS = 16
RESAMPLES = 9999
RESAMPLE_SEED = 20240601


def best_level(means: np.ndarray, sparsities: np.ndarray) -> np.ndarray:
    """Index of the best mean along the last axis, ties (within TIE) going to the sparser level; -1 where
    every mean is NaN. The super-ticket rule, as `rows.ticket_row` picks a trajectory's best round."""
    means = np.asarray(means, dtype=float)
    with warnings.catch_warnings():  # an all-NaN curve: nanmax warns and gives NaN, handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        best = np.nanmax(means, axis=-1, keepdims=True) if means.shape[-1] else np.full((*means.shape[:-1], 1), np.nan)
    tied = means >= best - TIE  # NaN compares False: never a candidate
    index = np.argmax(np.where(tied, np.asarray(sparsities, dtype=float), -np.inf), axis=-1)
    return np.where(np.isnan(best[..., 0]), -1, index)


def paired_greater(ticket: np.ndarray, full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-sided paired test over seeds that the ticket beats the full model: (t, p) along the last axis.

    p is the exact sign-flip permutation test of the summed differences (`sign_flip_greater`): under no
    effect a seed's ticket and full model are exchangeable, so each difference is as likely negated. It has
    no variance to divide by, so equal or tied differences give an honest p (at least 2**-n for n pairs)
    where the t-test gave 0. t is the paired t statistic of the mean difference, kept as a description
    only: +-inf when the differences are equal and nonzero, NaN when they are all zero. Seeds missing on
    either side (NaN) drop out pair by pair; NaN where fewer than two pairs remain.
    """
    ticket, full = np.asarray(ticket, dtype=float), np.asarray(full, dtype=float)
    d = ticket - full
    n = np.sum(~np.isnan(d), axis=-1)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # empty slices and ddof >= n: NaN, masked below
        t = np.nanmean(d, axis=-1) / (np.nanstd(d, axis=-1, ddof=1) / np.sqrt(n))
    scale = np.nansum(np.where(np.isnan(d), np.nan, np.maximum(np.abs(ticket), np.abs(full))), axis=-1)
    p = sign_flip_greater(d, scale)
    few = n < 2
    return np.where(few, np.nan, t), np.where(few, np.nan, p)


def sign_flip_greater(d: np.ndarray, scale: np.ndarray | float | None = None) -> np.ndarray:
    """Exact one-sided sign-flip permutation p that the paired differences `d` (last axis, NaN = no pair) sum
    above 0: the share of the 2**S sign patterns whose sum is at least the observed one (the observed
    pattern included, so p >= 2**-n for n nonzero pairs). A missing pair counts as a zero difference, which
    no flip changes: the p is the one over the present pairs. Beyond EXACT_SEEDS columns, RESAMPLES random
    patterns from a fixed seed, p = (1 + count) / (1 + RESAMPLES). NaN where no pair is present.

    Sums within FLIP_TIE x `scale` (default: the sum of |d|; `paired_greater` passes the metric values'
    size, the size of their rounding) are ties: accuracies k/rows summed in another order differ in the
    last bits. scipy.stats.permutation_test computes the same p, but its tie tolerance is relative to the
    observed sum and misses those near 0 (tests/analysis/test_stats.py shows a case), and it keeps every pattern's
    sum in memory; hence these lines.
    """
    d = np.asarray(d, dtype=float)
    present = ~np.isnan(d)
    if d.shape[-1] == 0:
        return np.full(d.shape[:-1], np.nan)
    flat = np.where(present, d, 0.0).reshape(-1, d.shape[-1])
    if scale is None:
        scale = np.nansum(np.abs(d), axis=-1)
    tol = FLIP_TIE * np.broadcast_to(np.asarray(scale, dtype=float), d.shape[:-1]).reshape(-1)
    signs, exact = _sign_patterns(d.shape[-1])
    observed = flat.sum(axis=-1) - np.where(np.isnan(tol), 0.0, tol)
    count = np.zeros(len(flat), dtype=np.int64)
    block = max(1, (1 << 22) // max(1, len(flat)))  # ~4M sums in memory at a time
    for start in range(0, len(signs), block):
        count += np.sum(flat @ signs[start:start + block].T >= observed[:, None], axis=-1)
    p = count / len(signs) if exact else (count + 1) / (len(signs) + 1)
    return np.where(present.any(axis=-1), p.reshape(d.shape[:-1]), np.nan)


@functools.lru_cache(maxsize=None)
def _sign_patterns(seeds: int) -> tuple[np.ndarray, bool]:
    """(patterns x seeds) of +-1 and whether they are all 2**seeds of them; row 0 is the observed (all +1)."""
    if seeds <= EXACT_SEEDS:
        codes = (np.arange(1 << seeds)[:, None] >> np.arange(seeds)) & 1
        return (1 - 2 * codes).astype(float), True
    return np.random.default_rng(RESAMPLE_SEED).choice([-1.0, 1.0], size=(RESAMPLES, seeds)), False


def welch_greater(ticket: np.ndarray, full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Welch's t-test that the ticket's seeds score higher than the full model's, unpaired: (t, one-sided p).

    Kept for comparison (`p_welch`): it ignores that a ticket and the full model of one seed share their
    head initialisation and data order. NaN where either side has fewer than two values.
    """
    ticket, full = np.asarray(ticket, dtype=float), np.asarray(full, dtype=float)
    if ticket.shape[-1] < 2 or full.shape[-1] < 2:
        nan = np.full(np.broadcast_shapes(ticket.shape[:-1], full.shape[:-1]), np.nan)
        return nan, nan
    with warnings.catch_warnings():  # identical values on both sides: scipy warns and returns NaN, which we keep
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(ticket, full, axis=-1, equal_var=False, alternative="greater")
    return np.asarray(result.statistic, dtype=float), np.asarray(result.pvalue, dtype=float)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values along the last axis; NaN entries are not tests and do not count in m.

    scipy has no Holm (only `false_discovery_control`, which is Benjamini-Hochberg), hence these lines:
    sort ascending, multiply the i-th smallest (0-based) by m - i, keep the running maximum, cap at 1.
    """
    p = np.asarray(p, dtype=float)
    m = np.sum(~np.isnan(p), axis=-1, keepdims=True)
    order = np.argsort(np.where(np.isnan(p), np.inf, p), axis=-1)  # NaNs last: their products stay NaN
    ranked = np.take_along_axis(p, order, axis=-1)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(p.shape[-1])) * ranked, axis=-1))
    out = np.empty_like(p)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out


def selection_test(ticket: np.ndarray, full: np.ndarray, sparsities: np.ndarray,
                   means: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The super ticket's test, aware that its level was chosen as the best of K.

    `ticket`: (..., K, S) values of K pruned levels x S seeds (NaN = missing); `full`: (..., S) the full
    model of the same seeds; `means`: (..., K) the level means that choose the level (default: the mean
    over the seeds present). Returns, per leading index:

    * `level`: the chosen level (`best_level`), -1 if none; `t_paired`, `p_paired`: its paired test, raw;
    * `p_selection`: its Holm-adjusted p over the `levels_tested` levels that have a paired test;
    * `p_holdout`, `holdout_seeds`: with at least 4 paired seeds, the level chosen on the first half of
      them (in seed order) and tested, alone, on the other half; NaN and 0 otherwise. The held-out seeds
      played no part in the choice, so this p needs no correction.
    """
    ticket, full = np.asarray(ticket, dtype=float), np.asarray(full, dtype=float)[..., None, :]
    full = np.broadcast_to(full, ticket.shape)
    if means is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(ticket, axis=-1)
    t_levels, p_levels = paired_greater(ticket, full)
    level = best_level(means, sparsities)
    out = {
        "level": level, "levels_tested": np.sum(~np.isnan(p_levels), axis=-1),
        "t_paired": _at(t_levels, level), "p_paired": _at(p_levels, level), "p_selection": _at(holm(p_levels), level),
    }
    return {**out, **_holdout(ticket, full, sparsities)}


def _holdout(ticket: np.ndarray, full: np.ndarray, sparsities: np.ndarray) -> dict[str, np.ndarray]:
    present = ~np.isnan(ticket) & ~np.isnan(full)
    paired = present.any(axis=-2)  # (..., S): the seed has the full model and a ticket somewhere
    n = paired.sum(axis=-1, keepdims=True)
    rank = np.cumsum(paired, axis=-1)  # 1-based position among the paired seeds, in seed order
    choose, test = paired & (rank <= n // 2), paired & (rank > n // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        level = best_level(np.nanmean(np.where(choose[..., None, :], ticket, np.nan), axis=-1), sparsities)
    rows = np.maximum(level, 0)[..., None, None]
    held_ticket = np.where(test, np.take_along_axis(ticket, rows, axis=-2)[..., 0, :], np.nan)
    _, p = paired_greater(held_ticket, np.where(test, full[..., 0, :], np.nan))
    enough = (n[..., 0] >= 4) & (level >= 0)
    seeds = np.sum(test & ~np.isnan(held_ticket), axis=-1)
    return {"p_holdout": np.where(enough, p, np.nan), "holdout_seeds": np.where(enough, seeds, 0),
            "holdout_level": np.where(enough, level, -1)}


def _at(values: np.ndarray, level: np.ndarray) -> np.ndarray:
    """values[..., level] per leading index; NaN where level is -1."""
    picked = np.take_along_axis(values, np.maximum(level, 0)[..., None], axis=-1)[..., 0]
    return np.where(level >= 0, picked, np.nan)
