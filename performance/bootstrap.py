"""Time of the benchmark's bootstrap at 10,000 images: this package's statistic against scipy's own.

For one (metric, dataset) pair the benchmark computes bootstrap intervals of SRCC, KRCC and PLCC
(1000 resamples) and, against a second metric on the same images, the paired differences. Both go
through ``scipy.stats.bootstrap``; the statistic over the resamples is either this package's
(``pyiqa_maclip.app.benchmark.statistics``: counts of images per resample) or scipy's correlations
vectorised over the resamples (``rankdata(axis=-1)`` + ``pearsonr(axis=-1)``, ``kendalltau(axis=-1)``,
``pearsonr(axis=-1)``). Prints the best of ``--rounds`` rounds, CPU and wall seconds, as a markdown table::

    python performance/bootstrap.py --rounds 5
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import stats

from pyiqa_maclip.app.benchmark.statistics import RESAMPLES, SEED, compare, correlation_intervals


def _scipy_statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    ranks_x, ranks_y = stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis)
    return np.stack([stats.pearsonr(ranks_x, ranks_y, axis=axis).statistic,
                     stats.kendalltau(x, y, axis=axis).statistic, stats.pearsonr(x, y, axis=axis).statistic])


def _scipy_intervals(x: np.ndarray, y: np.ndarray) -> None:
    stats.bootstrap((x, y), _scipy_statistic, paired=True, vectorized=True, n_resamples=RESAMPLES, batch=40,
                    method='percentile', rng=np.random.default_rng(SEED))


def _pair(a: np.ndarray, b: np.ndarray, mos: np.ndarray) -> None:
    _, replicates_a = correlation_intervals(a, mos)
    _, replicates_b = correlation_intervals(b, mos)
    compare(a, b, mos, replicates_a=replicates_a, replicates_b=replicates_b)


def _best(task, rounds: int) -> tuple[float, float]:
    cpu, wall = [], []
    for _ in range(rounds):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        task()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return min(cpu), min(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=10_000)
    parser.add_argument('--rounds', type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    mos = np.round(rng.normal(50, 15, args.images), 2)  # MOS tables hold ties
    a, b = mos + rng.normal(0, 10, args.images), mos + rng.normal(0, 20, args.images)
    cases = {
        'intervals of one metric (this package)': lambda: correlation_intervals(a, mos),
        'intervals of two metrics + their comparison (this package)': lambda: _pair(a, b, mos),
        'intervals of one metric (scipy\'s statistics)': lambda: _scipy_intervals(a, mos),
    }
    print(f'{args.images} images, {RESAMPLES} resamples; {platform.processor() or platform.machine()}, '
          f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; best of {args.rounds}\n')
    print('| task | CPU s | wall s |\n|---|---|---|')
    for name, task in cases.items():
        cpu, wall = _best(task, args.rounds)
        print(f'| {name} | {cpu:.2f} | {wall:.2f} |')


if __name__ == '__main__':
    main()
