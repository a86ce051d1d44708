"""Bootstrap intervals and paired comparisons of the benchmark, against scipy and hand computation.

Reference values come from ``scipy.stats.bootstrap`` given the same generator (it draws
``rng.integers(0, n, (B, n))``, as the benchmark does), or from scipy's correlations on
resamples drawn here, by index, with a generator of the same seed. Data are small fixed
pseudo-random samples with ties (resampling makes more: every resample repeats images).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pyiqa_maclip.app.benchmark.evaluation import evaluate
from pyiqa_maclip.app.benchmark.statistics import (
    RESAMPLES, SEED, bootstrap_p_value, bootstrap_replicates, compare, correlation_intervals,
)
from pyiqa_maclip.app.benchmark.tables import Evaluated, compare_metrics, markdown_summary

EPS = np.finfo(float).eps


def tight(n: int) -> float:
    """How far two computations of a correlation (or a quantile of correlations) of the same n values
    may differ: sums of n terms in another order round by at most n eps of their size (Higham), and a
    correlation normalises its sums to at most 1; 4 for the two sums of a ratio and the centring."""
    return 4 * n * EPS
SCIPY = {'srcc': stats.spearmanr, 'krcc': stats.kendalltau, 'plcc': stats.pearsonr}


def _sample(n: int, seed: int = 0, x_values: int = 0, y_values: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated (prediction, mos); with ``x_values``/``y_values`` distinct values only (ties)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = x + rng.normal(size=n)
    if x_values:
        x = np.floor((x - x.min()) / np.ptp(x) * (x_values - 1e-9))
    if y_values:
        y = np.floor((y - y.min()) / np.ptp(y) * (y_values - 1e-9))
    return x, y


def _by_hand(statistic, indices: np.ndarray, *arrays: np.ndarray) -> np.ndarray:
    return np.array([statistic(*(a[i] for a in arrays)) for i in indices])


@pytest.mark.parametrize('n, x_values, y_values', [(12, 0, 0), (23, 4, 0), (40, 0, 5), (64, 6, 3), (301, 30, 25)])
def test_replicates_are_scipy_correlations_of_the_resampled_images(n, x_values, y_values):
    x, y = _sample(n, seed=n, x_values=x_values, y_values=y_values)
    replicates = bootstrap_replicates(x, y, resamples=40, seed=3)
    indices = np.random.default_rng(3).integers(0, n, (40, n))
    for name, function in SCIPY.items():
        expected = _by_hand(lambda a, b, f=function: f(a, b)[0], indices, x, y)
        assert np.allclose(replicates[name], expected, rtol=0, atol=tight(n)), name


@pytest.mark.parametrize('n', [3000, 50_000])  # many merge levels; counts past what int32 products hold
def test_kendall_is_exact_on_large_samples(n):
    x, y = _sample(n, seed=1)
    x, y = np.round(x, 2), np.round(y, 1)
    replicates = bootstrap_replicates(x, y, ('krcc', 'srcc'), resamples=2, seed=5)
    indices = np.random.default_rng(5).integers(0, n, (2, n))
    for name in ('krcc', 'srcc'):
        expected = _by_hand(lambda a, b, f=SCIPY[name]: f(a, b)[0], indices, x, y)
        assert np.allclose(replicates[name], expected, rtol=0, atol=tight(n))


def test_resamples_are_scipys_draws_in_batches_and_reproducible():
    n, resamples = 5000, 130  # scipy draws several batches of rows: together one draw of (resamples, n)
    x, y = _sample(n, seed=11, x_values=40)
    replicates = bootstrap_replicates(x, y, resamples=resamples, seed=11)
    indices = np.random.default_rng(11).integers(0, n, (resamples, n))
    for name, function in SCIPY.items():
        expected = _by_hand(lambda a, b, f=function: f(a, b)[0], indices, x, y)
        assert np.allclose(replicates[name], expected, rtol=0, atol=tight(n)), name
    x, y = _sample(200)
    first, again = bootstrap_replicates(x, y), bootstrap_replicates(x, y)
    assert all(np.array_equal(first[k], again[k]) for k in first) and len(first['srcc']) == RESAMPLES


def test_intervals_equal_scipy_bootstrap_percentile_intervals():
    x, y = _sample(30, seed=4, y_values=9)
    intervals, _ = correlation_intervals(x, y, resamples=500, seed=SEED)
    for name, function in SCIPY.items():
        reference = stats.bootstrap((x, y), lambda a, b, f=function: f(a, b)[0], paired=True, vectorized=False,
                                    n_resamples=500, method='percentile', confidence_level=0.95,
                                    rng=np.random.default_rng(SEED)).confidence_interval
        assert getattr(intervals, f'{name}_low') == pytest.approx(reference.low, abs=tight(30))
        assert getattr(intervals, f'{name}_high') == pytest.approx(reference.high, abs=tight(30))
    assert intervals.note == ''


def test_paired_differences_equal_scipy_and_the_p_value_counts_by_hand():
    x, y = _sample(25, seed=7)
    other = y + np.random.default_rng(8).normal(scale=1.5, size=25)  # a worse metric
    result = compare(x, other, y, resamples=400, seed=2)

    def difference(statistic):
        return lambda a, b, mos: statistic(a, mos)[0] - statistic(b, mos)[0]

    indices = np.random.default_rng(2).integers(0, 25, (400, 25))
    for name, function in (('srcc', stats.spearmanr), ('plcc', stats.pearsonr)):
        got = getattr(result, name)
        assert got.a == pytest.approx(function(x, y)[0], abs=tight(25))
        assert got.b == pytest.approx(function(other, y)[0], abs=tight(25))
        assert got.diff == pytest.approx(got.a - got.b, abs=2 * EPS)  # one subtraction of values at most 1
        reference = stats.bootstrap((x, other, y), difference(function), paired=True, vectorized=False,
                                    n_resamples=400, method='percentile', rng=np.random.default_rng(2))
        assert (got.low, got.high) == pytest.approx(tuple(reference.confidence_interval), abs=2 * tight(25))
        drawn = _by_hand(difference(function), indices, x, other, y)
        assert np.allclose(np.sort(drawn), np.sort(reference.bootstrap_distribution), rtol=0, atol=2 * tight(25))
        beyond = min(np.count_nonzero(drawn <= 0), np.count_nonzero(drawn >= 0))
        assert got.p == pytest.approx(min(1.0, 2 * (1 + beyond) / 401), rel=4 * EPS)  # a count over 401
    assert result.n == 25 and result.note == ''


@pytest.mark.parametrize('differences, p', [
    ([1.0, 2.0, 3.0], 2 * 1 / 4),  # none at or below 0: the smallest p 3 resamples can give
    ([0.0, 0.0, 0.0], 1.0),  # identical metrics
    ([-1.0, 2.0, 3.0, 4.0], 2 * 2 / 5),
    ([-1.0, -2.0, 0.0, 4.0, 5.0], 1.0),  # 3 on each side (0 counts on both): capped at 1
    (np.arange(1.0, 1000.0), 2 / 1000),
    ([1.0, np.nan], np.nan),
])
def test_bootstrap_p_value_by_hand(differences, p):
    assert bootstrap_p_value(np.array(differences)) == pytest.approx(p, rel=4 * EPS, nan_ok=True)  # a ratio of counts


def test_a_level_outside_0_to_1_is_a_value_error():
    x, y = _sample(12)
    for call in (lambda: correlation_intervals(x, y, level=95), lambda: compare(x, y + 1, y, level=0)):
        with pytest.raises(ValueError, match='level'):
            call()


def test_too_few_images_or_values_give_nan_with_a_note():
    intervals, replicates = correlation_intervals([1.0, 2.0], [2.0, 1.0])
    assert np.isnan(intervals.srcc_low) and 'at least 3 images' in intervals.note and replicates == {}
    # 11 images share one prediction: about a third of the resamples leave out the twelfth.
    intervals, _ = correlation_intervals(np.r_[np.zeros(11), 1.0], np.arange(12.0))
    assert np.isnan(intervals.srcc_high) and 'constant prediction or MOS: no interval' in intervals.note
    assert 'got 2' in compare([1.0, 2.0], [2.0, 1.0], [1.0, 2.0]).note
    assert 'constant MOS' in compare(np.arange(5.0), np.arange(5.0) ** 2, np.ones(5)).note


@pytest.mark.parametrize('call', [
    lambda: bootstrap_replicates([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]),
    lambda: bootstrap_replicates([1.0, 2.0, 3.0], [1.0, 2.0]),
    lambda: bootstrap_replicates([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], ('auc',)),
    lambda: compare([1.0, 2.0, np.inf], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),
])
def test_bad_input_is_a_value_error(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- comparisons table


def _entry(metric, images, prediction, mos, flipped=False, with_replicates=True):
    prediction, mos = np.asarray(prediction, dtype=float), np.asarray(mos, dtype=float)
    replicates = correlation_intervals(prediction, mos)[1] if with_replicates else {}
    return Evaluated(metric, 'd', list(images), prediction, mos, flipped, replicates)


def test_comparisons_use_only_images_both_metrics_scored_and_reuse_replicates():
    x, y = _sample(40, seed=9)
    worse = y + np.random.default_rng(1).normal(scale=2.0, size=40)
    names = [f'{i}.png' for i in range(40)]
    half = [k for k in range(40) if k % 2 == 0]  # b failed on every odd image
    a = _entry('a', names, x, y)
    b = _entry('b', [names[k] for k in half], worse[half], y[half])
    table = compare_metrics([a, b])
    row = table.iloc[0]
    assert (row['metric_a'], row['metric_b'], row['n'], row['n_excluded']) == ('a', 'b', 20, 20)
    assert '20 images scored by only one of the two metrics left out' in row['note']
    direct = compare(x[half], worse[half], y[half])
    assert row['srcc_diff'] == pytest.approx(direct.srcc.diff, abs=2 * tight(20))
    assert (row['srcc_diff_low'], row['plcc_p']) == pytest.approx((direct.srcc.low, direct.plcc.p), abs=2 * tight(20))
    # With every image common, the replicates of the intervals serve: the same numbers as recomputing.
    full_b = _entry('b', names, worse, y)
    reused = compare_metrics([a, full_b]).iloc[0]
    recomputed = compare_metrics([_entry('a', names, x, y, with_replicates=False),
                                  _entry('b', names, worse, y, with_replicates=False)]).iloc[0]
    assert reused[['srcc_diff_low', 'srcc_diff_high', 'srcc_p', 'plcc_p']].tolist() == \
        recomputed[['srcc_diff_low', 'srcc_diff_high', 'srcc_p', 'plcc_p']].tolist()


def test_summary_md_says_which_differences_are_significant():
    x, y = _sample(200, seed=3)
    noisy = y + np.random.default_rng(4).normal(scale=3.0, size=200)
    twin = x + 1e-9 * np.random.default_rng(5).normal(size=200)
    entries = [_entry('good', range(200), x, y), _entry('noisy', range(200), noisy, y),
               _entry('twin', range(200), twin, y)]
    comparisons = compare_metrics(entries)
    summary = pd.DataFrame({'metric': ['good', 'noisy', 'twin'], 'dataset': 'd', 'n': 200, 'seconds': 1.0,
                            'srcc': 0.7, 'srcc_low': 0.6, 'srcc_high': 0.8, 'plcc_logistic': 0.7, 'flipped': False,
                            'fit_problem': '', 'note': ''})
    text = markdown_summary(summary, comparisons)
    good_noisy = comparisons.iloc[0]
    assert good_noisy['srcc_p'] < 0.05 and comparisons.iloc[1]['srcc_p'] > 0.05
    assert f'on d, the SRCC of good is higher than that of noisy by {good_noisy["srcc_diff"]:.4f}' in text
    assert 'Not significant at 0.05: ' in text and 'SRCC of good and twin on d' in text
    assert '| d | good | noisy | 200 |' in text


# ---------------------------------------------------------------- numbers float64 cannot hold

BASE_X = np.arange(1.0, 9.0)
BASE_Y = np.array([10.0, 20.0, 35.0, 30.0, 55.0, 50.0, 70.0, 65.0])


PIQE_6 = -np.array([70.0, 72.0, 75.0, 71.0, 80.0, 90.0])  # the -PIQE of six images


@pytest.mark.parametrize('x, y', [
    (np.r_[-1e308, BASE_X[1:-1], 1e308], BASE_Y),  # a range past float64's largest number
    (BASE_X, np.r_[BASE_Y[:-1], 1e200]),
    (np.r_[BASE_X[:-1], 1e308], BASE_Y),
])
def test_huge_finite_values_lose_no_statistic_and_warn_nothing(x, y):
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # what float64 cannot hold is told by the note, not by numpy's warnings
        agreement = evaluate(x, y)
    # SRCC and KRCC are of ranks, PLCC scipy's (which scales first): exact whatever the magnitudes.
    for name, function in SCIPY.items():
        assert getattr(agreement, name) == pytest.approx(function(x, y)[0], abs=tight(8)), name
    assert np.isfinite(agreement.rmse_logistic) and 'not finite' not in agreement.note


def test_a_flat_logistic_fit_says_plcc_logistic_is_undefined():
    mos = np.array([10.0, 20.0, 35.0, 30.0, 55.0, 1e150])  # the fit gives every image one value
    agreement = evaluate(PIQE_6, mos)
    assert np.isnan(agreement.plcc_logistic) and np.isfinite(agreement.rmse_logistic)
    assert 'the logistic fit is flat over the predictions' in agreement.note
    assert 'plcc_logistic is not defined' in agreement.note and 'overflow' not in agreement.note


def test_a_statistic_that_comes_out_not_finite_is_nan_and_named(monkeypatch):
    from pyiqa_maclip.app.benchmark import evaluation

    monkeypatch.setattr(evaluation, '_rms', lambda differences: np.inf)  # as an RMSE past 1.8e308 would be
    agreement = evaluate(BASE_X, BASE_Y)
    assert np.isnan(agreement.rmse_logistic) and np.isfinite(agreement.plcc_logistic)
    assert agreement.note.startswith('rmse_logistic not finite: float64 overflows at these magnitudes '
                                     '(|prediction| up to 8, |MOS| up to 70)')


@pytest.mark.parametrize('x, y', [
    (BASE_X, np.r_[BASE_Y[:-1], 1e308]),  # the MOS of issue 27
    (np.r_[BASE_X[:-1], 1e308], BASE_Y),  # and a prediction as large
])
def test_resamples_float64_cannot_hold_are_counted_as_such_not_as_constant(x, y):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        intervals, replicates = correlation_intervals(x, y, resamples=400, seed=4)
    # The resamples without the huge image: their deviations, scaled by 1e308, underflow.
    indices = np.random.default_rng(4).integers(0, 8, (400, 8))
    without = int(np.count_nonzero((indices != 7).all(axis=1)))
    assert 0 < without < 400
    assert int(np.isnan(replicates['plcc']).sum()) == without
    assert intervals.note == (f'plcc not finite on {without} of 400 bootstrap resamples (float64 underflows or '
                              'overflows at these magnitudes): no interval for it; rescale the predictions or the MOS')
    assert np.isnan(intervals.plcc_low) and np.isfinite([intervals.srcc_low, intervals.krcc_high]).all()
    # Where scipy's PLCC of a resample is finite it is this one (scipy sums several 1e308 into inf).
    with warnings.catch_warnings(), np.errstate(over='ignore', invalid='ignore'):
        warnings.simplefilter('ignore')
        expected = _by_hand(lambda a, b: stats.pearsonr(a, b)[0], indices, x, y)
    both = np.isfinite(expected) & ~np.isnan(replicates['plcc'])
    assert both.sum() > 50 and np.allclose(replicates['plcc'][both], expected[both], rtol=0, atol=tight(8))
