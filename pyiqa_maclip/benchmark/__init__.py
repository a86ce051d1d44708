"""Benchmark harness: MA-CLIP and any pyiqa metric against human opinion scores.

``pyiqa-maclip benchmark --config FILE.yml --output-dir DIR [--device DEV]`` scores
every dataset of the configuration with every metric, following the official MA-CLIP
evaluation (Liao et al., AAAI 2026; https://github.com/zhix000/MA-CLIP): whole
datasets, the paper's per-dataset preprocessing, SRCC/KRCC on raw predictions,
PLCC/RMSE after the 5-parameter logistic fit (checked for steps and reversals). It
writes ``summary.csv`` and ``summary.md`` with bootstrap intervals, ``comparisons.csv``
(every two metrics, paired differences and p-values), per-image scores and plots, and
resumes where a run stopped.

* :mod:`.config`: the YAML format and its validation.
* :mod:`.datasets`: (image, MOS) lists from custom tables or pyiqa's dataset configs.
* :mod:`.evaluation`: correlations and the logistic fit (pure functions).
* :mod:`.statistics`: bootstrap intervals and paired comparisons (pure functions).
* :mod:`.tables`: comparisons between metrics, summary.md, spreadsheet-safe CSV text.
* :mod:`.runner`: scoring (through :mod:`pyiqa_maclip.scoring`'s engine), resuming, writing
  the tables; :mod:`.plots`: the figures.
"""
from __future__ import annotations

import argparse
import sys

from ..safe_io import command_error
from .config import BenchmarkConfig, BenchmarkConfigError, load_config, parse_config
from .evaluation import Agreement, evaluate, fit_logistic, logistic_5
from .runner import SUMMARY_COLUMNS, run_benchmark, with_precision
from .statistics import compare, correlation_intervals
from .tables import COMPARISON_COLUMNS

__all__ = [
    'Agreement',
    'BenchmarkConfig',
    'BenchmarkConfigError',
    'COMPARISON_COLUMNS',
    'SUMMARY_COLUMNS',
    'benchmark_command',
    'compare',
    'correlation_intervals',
    'evaluate',
    'fit_logistic',
    'load_config',
    'logistic_5',
    'parse_config',
    'run_benchmark',
]


def benchmark_command(args: argparse.Namespace) -> int:
    """Run ``pyiqa-maclip benchmark`` with parsed arguments; returns the exit status."""
    def fail(message: object) -> int:
        return command_error('benchmark', message)

    from ..scoring.command import device_mistake
    from ..weights import EnvironmentValueError, check_environment

    try:
        check_environment()
    except EnvironmentValueError as error:
        return fail(error)
    try:
        if mistake := device_mistake(args.device):
            return fail(mistake)
        config = with_precision(load_config(args.config, data_root=args.data_root), args.precision)
        return run_benchmark(config, args.output_dir, device=args.device, force=args.force,
                             batch_size=args.batch_size, num_workers=args.num_workers)
    except BenchmarkConfigError as error:
        return fail(str(error))
    except KeyboardInterrupt:
        print(f'interrupted: every finished image is kept in {args.output_dir}; run the same command again to resume',
              file=sys.stderr)
        return 130

