"""Uncertainty of the benchmark's correlations: bootstrap intervals and paired comparisons.

``scipy.stats.bootstrap`` does the bootstrap: images are resampled with replacement,
:data:`RESAMPLES` times from ``numpy.random.default_rng(SEED)``, each resample keeping
every image's prediction with its MOS (scipy's ``paired=True`` resamples the images'
indices, and so does this module), so a rerun gives the same numbers and two metrics
evaluated on the same images see the same resamples (a paired bootstrap); the intervals
are its ``'percentile'`` intervals. What scipy lacks is a fast correlation over many
resamples: ranking each resample again (``rankdata(axis=-1)``), ``kendalltau`` (which
loops over resamples) and ``pearsonr(axis=-1)`` take about 6 s of CPU for 1000 resamples
of 10,000 images. So the statistic given to scipy computes SRCC, KRCC and PLCC from how
often each resample holds each image: ranks need no sorting per resample, and Kendall's
tau is counted exactly, by merge levels, in ``O(n log n)`` vectorised operations per
resample (about a second for all three; docs/benchmark.md has the figures). The tests
check every resample's numbers against scipy's ``spearmanr``, ``kendalltau``, ``pearsonr``.

The p-value of a difference between two metrics is the paired-bootstrap p-value that
inverts the percentile interval: twice the smaller share of resampled differences on
either side of zero (each share counted as ``(1 + k) / (1 + RESAMPLES)``, so the smallest
is about 0.002). It is below 0.05 exactly when 0 is outside the 95% interval, up to
one resample; scipy has no such p-value for a bootstrap. All functions are pure: arrays
in, numbers out.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np
from scipy import stats

from .evaluation import MIN_IMAGES

__all__ = [
    'RESAMPLES', 'SEED', 'LEVEL', 'STATISTICS', 'bootstrap_replicates', 'bootstrap_p_value', 'Intervals',
    'correlation_intervals', 'Difference', 'Comparison', 'compare',
]

RESAMPLES = 1000
SEED = 20260122
LEVEL = 0.95
STATISTICS = ('srcc', 'krcc', 'plcc')
_CHUNK_ELEMENTS = 1 << 18  # resampled images handled at once: cache-sized arrays, memory bounded for any n


def _checked(*arrays: np.ndarray) -> list[np.ndarray]:
    values = [np.asarray(a, dtype=float) for a in arrays]
    if any(v.ndim != 1 or v.shape != values[0].shape for v in values):
        raise ValueError(f'expected 1-D arrays of one length, got shapes {[v.shape for v in values]}')
    if not all(np.isfinite(v).all() for v in values):
        raise ValueError('predictions and MOS must be finite (leave out the images that failed)')
    return values


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each image is in each resample: (resamples, n)."""
    rows = len(indices)
    counts = np.bincount((indices + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n)
    # Sums of products of counts stay below n**2: int32 holds them up to n = 46340, and is faster.
    return counts.astype(np.int32) if n * n < np.iinfo(np.int32).max else counts


class _Ties:
    """The tie groups of a variable: its images in ascending order, where each group starts."""

    def __init__(self, values: np.ndarray) -> None:
        self.order = np.argsort(values, kind='stable')
        ordered = values[self.order]
        self.starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self.group = np.empty(len(values), dtype=np.intp)
        self.group[self.order] = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1

    def counts(self, weights: np.ndarray) -> np.ndarray:
        """Resampled images per tie group: (resamples, groups)."""
        return _group_sums(weights[:, self.order], self.starts)


def _group_sums(ordered: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of consecutive groups of columns starting at ``starts`` (no work when no group has two)."""
    return ordered if len(starts) == ordered.shape[1] else np.add.reduceat(ordered, starts, axis=1, dtype=ordered.dtype)


def _pairs(counts: np.ndarray) -> np.ndarray:
    counts = counts.astype(np.int64)
    return (counts * (counts - 1) // 2).sum(axis=1)


class _Kendall:
    """S = concordant - discordant pairs of a weighted sample, by merge levels fixed in advance.

    Images are sequenced by (x, y); ``u`` ranks them by (y, place in the sequence), without ties.
    At each level, runs of ``span`` images are paired into blocks; every pair of images in the
    two halves of a block is counted there, once: a right-half image is above as many left-half
    images as the cumulative weight of the left halves, sorted by (block, u), up to its place
    among them, a place that does not depend on the weights.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        n = len(x)
        self.sequence = np.lexsort((y, x))
        u = np.empty(n, dtype=np.intp)
        u[np.lexsort((np.arange(n), y[self.sequence]))] = np.arange(n)
        xs, ys = x[self.sequence], y[self.sequence]
        self.xy_starts = np.flatnonzero(np.r_[True, (xs[1:] != xs[:-1]) | (ys[1:] != ys[:-1])])
        self.levels = []
        place, span = np.arange(n), 1
        while span < n:
            key = (place // (2 * span)) * n + u  # unique: blocks apart, u within a block
            left = (place // span) % 2 == 0
            left_order = place[left][np.argsort(key[left])]
            right = place[~left]
            self.levels.append((left_order, right, np.searchsorted(key[left_order], key[right])))
            span *= 2

    def statistic(self, weights: np.ndarray, x_counts: np.ndarray, y_counts: np.ndarray) -> np.ndarray:
        sequenced = weights[:, self.sequence]
        s_u = np.zeros(len(weights), dtype=np.int64)
        runs = sequenced
        for left_order, right, place in self.levels:
            left_runs, right_runs = runs[:, 0::2], runs[:, 1::2]
            paired = left_runs[:, :right_runs.shape[1]]
            before = np.cumsum(paired, axis=1, dtype=runs.dtype) - paired  # left halves of earlier blocks
            below = np.zeros((len(weights), len(left_order) + 1), dtype=runs.dtype)
            np.cumsum(sequenced[:, left_order], axis=1, out=below[:, 1:])
            counted = _dot(sequenced[:, right], below[:, place]) - _dot(right_runs, before)
            s_u += 2 * counted - _dot(right_runs, paired)
            runs = paired + right_runs
            if left_runs.shape[1] > right_runs.shape[1]:
                runs = np.concatenate([runs, left_runs[:, -1:]], axis=1)
        # u breaks ties of y by sequence: pairs tied in y counted +1; pairs tied in x are in s_u too.
        tied_y = (_dot(y_counts, y_counts) - _dot(weights, weights)) // 2
        xy_counts = _group_sums(sequenced, self.xy_starts)
        within_x = (_dot(x_counts, x_counts) - _dot(xy_counts, xy_counts)) // 2
        return s_u - tied_y - within_x


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of counts, summed in the counts' type (which holds n**2), as int64."""
    return np.einsum('ij,ij->i', a, b).astype(np.int64)


def _midranks(counts: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Midrank of each tie group in each resample, less the mean rank (n+1)/2."""
    return np.cumsum(counts, axis=1) - counts / 2 - total[:, None] / 2


def _scaled(values: np.ndarray) -> np.ndarray:
    """Divided by the largest magnitude: values near the float64 limit (1e308) then do not overflow."""
    return values / (np.max(np.abs(values)) or 1.0)


def _check_names(statistics: Sequence[str]) -> None:
    unknown = set(statistics) - set(STATISTICS)
    if unknown:
        raise ValueError(f'unknown statistics {sorted(unknown)}; expected some of {", ".join(STATISTICS)}')


class _Resampled:
    """SRCC, KRCC and PLCC of (prediction, MOS) on resamples, vectorised: called by scipy's bootstrap
    with the resampled image indices, (resamples, n); returns (statistics, resamples), NaN where a
    resample's prediction or MOS is constant, or where float64 cannot hold the statistic (counted in
    ``not_finite``: values so far apart in magnitude that a resample's deviations underflow)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, statistics: Sequence[str]) -> None:
        _check_names(statistics)
        self.statistics, self.n = tuple(statistics), len(x)
        self.x_ties, self.y_ties = _Ties(x), _Ties(y)
        self.kendall = _Kendall(x, y) if 'krcc' in statistics else None
        self.x_scaled, self.y_scaled = _scaled(x), _scaled(y)
        self.not_finite = dict.fromkeys(self.statistics, 0)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        weights = _counts(images, self.n)
        total = weights.sum(axis=1).astype(float)
        x_counts, y_counts = self.x_ties.counts(weights), self.y_ties.counts(weights)
        constant = (x_counts.max(axis=1) == total) | (y_counts.max(axis=1) == total)
        rows = []
        with np.errstate(invalid='ignore', divide='ignore'):
            for name in self.statistics:
                if name == 'srcc':
                    rx, ry = _midranks(x_counts, total), _midranks(y_counts, total)
                    cov = np.einsum('ij,ij,ij->i', weights, rx[:, self.x_ties.group], ry[:, self.y_ties.group])
                    var_x = np.einsum('ij,ij,ij->i', x_counts, rx, rx)
                    var_y = np.einsum('ij,ij,ij->i', y_counts, ry, ry)
                    value = cov / np.sqrt(var_x * var_y)
                elif name == 'krcc':
                    s = self.kendall.statistic(weights, x_counts, y_counts)
                    all_pairs = total * (total - 1) / 2
                    value = s / np.sqrt((all_pairs - _pairs(x_counts)) * (all_pairs - _pairs(y_counts)))
                else:
                    value = self._pearson(weights, total)
                failed = ~constant & ~np.isfinite(value)
                self.not_finite[name] += int(np.count_nonzero(failed))
                rows.append(np.where(constant | failed, np.nan, value))
        return np.stack(rows)

    def _pearson(self, weights: np.ndarray, total: np.ndarray) -> np.ndarray:
        """PLCC of each resample, centred on the resample's own means (two passes: nothing lost to
        cancellation). einsum, not BLAS: OpenBLAS threads left spinning slow every later step on a busy CPU."""
        dx = self.x_scaled - (np.einsum('ij,j->i', weights, self.x_scaled) / total)[:, None]
        dy = self.y_scaled - (np.einsum('ij,j->i', weights, self.y_scaled) / total)[:, None]
        sxy, sxx, syy = (np.einsum('ij,ij,ij->i', weights, a, b) for a, b in ((dx, dy), (dx, dx), (dy, dy)))
        r = sxy / np.sqrt(sxx * syy)
        return np.where(np.isfinite(r), np.clip(r, -1.0, 1.0), r)


def _bootstrap(n: int, statistic: Callable[[np.ndarray], np.ndarray], *, resamples: int, seed: int, level: float,
               drawn: np.ndarray | None = None):
    """``scipy.stats.bootstrap`` of ``statistic`` of n images' indices, percentile intervals at
    ``level``; with ``drawn`` (its bootstrap distribution, same resamples and seed) the interval of
    that distribution, without resampling again."""
    if not 0 < level < 1:
        raise ValueError(f'level must be between 0 and 1, got {level}')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', stats.DegenerateDataWarning)  # NaN replicates: see _unusable
        return stats.bootstrap(
            (np.arange(n),), lambda images, axis: statistic(images), vectorized=True, method='percentile',
            confidence_level=level, n_resamples=resamples if drawn is None else 0,
            bootstrap_result=None if drawn is None else SimpleNamespace(bootstrap_distribution=drawn),
            batch=max(1, _CHUNK_ELEMENTS // n), rng=np.random.default_rng(seed))


def bootstrap_replicates(prediction: np.ndarray, mos: np.ndarray, statistics: Sequence[str] = STATISTICS, *,
                         resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, np.ndarray]:
    """Each statistic (``srcc``, ``krcc``, ``plcc``) on each resample of scipy's bootstrap; NaN where
    a resample's prediction or MOS is constant (or the statistic past float64). Equal to ``scipy.stats``
    on ``prediction[i], mos[i]`` for each row ``i`` of ``default_rng(seed).integers(0, n, (resamples, n))``."""
    x, y = _checked(prediction, mos)
    _check_names(statistics)
    if len(x) < 2:  # scipy resamples two images or more
        return {name: np.full(resamples, np.nan) for name in statistics}
    result = _bootstrap(len(x), _Resampled(x, y, statistics), resamples=resamples, seed=seed, level=LEVEL)
    return dict(zip(statistics, result.bootstrap_distribution))


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from resampled differences: twice the smaller share on
    either side of 0 (zeros on both), ``(1 + k) / (1 + B)``, at most 1; NaN if any is NaN."""
    differences = np.asarray(differences, dtype=float)
    if not len(differences) or np.isnan(differences).any():
        return math.nan
    below, above = np.count_nonzero(differences <= 0), np.count_nonzero(differences >= 0)
    return float(min(1.0, 2 * (1 + min(below, above)) / (1 + len(differences))))


def _unusable(replicates: dict[str, np.ndarray], not_finite: dict[str, int] | None) -> str:
    """Why a statistic got no interval, if one did not: constant resamples, or numbers float64 cannot
    hold (``not_finite``: resamples per statistic; None if not known)."""
    total = len(next(iter(replicates.values())))
    if not_finite is None:
        worst = max(int(np.isnan(r).sum()) for r in replicates.values())
        return (f'{worst} of {total} bootstrap resamples had no value (a constant prediction or MOS, or numbers '
                'float64 cannot hold; see the notes of the two metrics)') if worst else ''
    constant = max(int(np.isnan(r).sum()) - not_finite.get(name, 0) for name, r in replicates.items())
    notes = [f'{constant} of {total} bootstrap resamples had a constant prediction or MOS: '
             'no interval (too few distinct values)'] if constant else []
    notes += [f'{name} not finite on {count} of {total} bootstrap resamples (float64 underflows or overflows at '
              f'these magnitudes): no interval for it; rescale the predictions or the MOS'
              for name, count in not_finite.items() if count]
    return '; '.join(notes)


@dataclass(frozen=True)
class Intervals:
    """95% (``LEVEL``) percentile bootstrap intervals of SRCC, KRCC and PLCC (raw); NaN with a note."""

    srcc_low: float
    srcc_high: float
    krcc_low: float
    krcc_high: float
    plcc_low: float
    plcc_high: float
    note: str = ''

    def as_row(self) -> dict:
        return asdict(self)


def correlation_intervals(prediction: np.ndarray, mos: np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED,
                          level: float = LEVEL) -> tuple[Intervals, dict[str, np.ndarray]]:
    """The intervals and the replicates they come from (reusable for :func:`compare`)."""
    x, y = _checked(prediction, mos)
    if len(x) < MIN_IMAGES:
        nan = math.nan
        return Intervals(nan, nan, nan, nan, nan, nan, f'intervals need at least {MIN_IMAGES} images'), {}
    statistic = _Resampled(x, y, STATISTICS)
    result = _bootstrap(len(x), statistic, resamples=resamples, seed=seed, level=level)
    interval = result.confidence_interval
    bounds = [float(bound) for k in range(len(STATISTICS)) for bound in (interval.low[k], interval.high[k])]
    replicates = dict(zip(STATISTICS, result.bootstrap_distribution))
    return Intervals(*bounds, note=_unusable(replicates, statistic.not_finite)), replicates


@dataclass(frozen=True)
class Difference:
    """statistic(a) - statistic(b), its paired-bootstrap interval and two-sided p-value."""

    a: float
    b: float
    diff: float
    low: float
    high: float
    p: float


@dataclass(frozen=True)
class Comparison:
    """Two metrics on the same ``n`` images: their SRCC and PLCC (raw) differences."""

    n: int
    srcc: Difference
    plcc: Difference
    note: str = ''

    def as_row(self) -> dict:
        row = {'n': self.n}
        for name in ('srcc', 'plcc'):
            d = getattr(self, name)
            row.update({f'{name}_a': d.a, f'{name}_b': d.b, f'{name}_diff': d.diff, f'{name}_diff_low': d.low,
                        f'{name}_diff_high': d.high, f'{name}_p': d.p})
        return {**row, 'note': self.note}


def _point(function, x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < MIN_IMAGES or np.min(x) == np.max(x) or np.min(y) == np.max(y):
        return math.nan
    return float(function(x, y)[0])


def compare(prediction_a: np.ndarray, prediction_b: np.ndarray, mos: np.ndarray, *, resamples: int = RESAMPLES,
            seed: int = SEED, level: float = LEVEL, replicates_a: dict | None = None,
            replicates_b: dict | None = None) -> Comparison:
    """SRCC and PLCC of metric a minus those of metric b on the same images (predictions already
    signed), with paired-bootstrap intervals and p-values. Replicates from
    :func:`bootstrap_replicates` of these very arrays (same resamples and seed) may be passed in:
    their differences are then the bootstrap distribution, and no image is resampled again."""
    xa, xb, y = _checked(prediction_a, prediction_b, mos)
    n = len(y)
    points = {name: (_point(function, xa, y), _point(function, xb, y))
              for name, function in (('srcc', stats.spearmanr), ('plcc', stats.pearsonr))}
    constant = [what for what, values in (('prediction of a', xa), ('prediction of b', xb), ('MOS', y))
                if n and np.min(values) == np.max(values)]
    if n < MIN_IMAGES or constant:
        nan = math.nan
        note = (f'a comparison needs at least {MIN_IMAGES} images scored by both metrics, got {n}' if n < MIN_IMAGES
                else f'constant {" and ".join(constant)} on these {n} images: no correlation to compare')
        return Comparison(n, *(Difference(*points[name], nan, nan, nan, nan) for name in ('srcc', 'plcc')), note)
    names = ('srcc', 'plcc')
    of_a, of_b = _Resampled(xa, y, names), _Resampled(xb, y, names)

    def difference(images: np.ndarray) -> np.ndarray:
        return of_a(images) - of_b(images)

    drawn = None
    if replicates_a and replicates_b:
        drawn = np.stack([replicates_a[name] for name in names]) - np.stack([replicates_b[name] for name in names])
    result = _bootstrap(n, difference, resamples=resamples, seed=seed, level=level, drawn=drawn)
    differences = dict(zip(names, result.bootstrap_distribution))
    interval = result.confidence_interval
    found = {name: Difference(*points[name], points[name][0] - points[name][1], float(interval.low[k]),
                              float(interval.high[k]), bootstrap_p_value(differences[name]))
             for k, name in enumerate(names)}
    known = None if drawn is not None else {name: of_a.not_finite[name] + of_b.not_finite[name] for name in names}
    note = _unusable(differences, known)
    return Comparison(n, found['srcc'], found['plcc'], note)
