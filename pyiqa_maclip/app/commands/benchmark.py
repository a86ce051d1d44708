"""``pyiqa-maclip benchmark --config FILE --output-dir DIR``: metrics against human opinion scores.

The configuration is read and its structure checked, and the output folder made writable,
before torch and pyiqa load.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..options import add_device, add_loading, add_precision, check_device

__all__ = ['add_parser', 'run']


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'benchmark', help='score datasets with MA-CLIP and other pyiqa metrics; correlations, tables, plots',
        description='Score every dataset of a YAML configuration with every metric, compare with the MOS '
                    '(SRCC, KRCC, PLCC raw and after the 5-parameter logistic fit, RMSE) and write '
                    'summary.csv, summary.md, per-image scores and plots. Pairs already complete in '
                    'the output directory are skipped.',
        epilog='exit status: 0 every pair evaluated, 1 a metric could not be built, 2 a mistake in the arguments, '
               'configuration or data, 130 interrupted (run again to resume)')
    parser.add_argument('--config', required=True, type=Path, help='the YAML configuration (datasets:, metrics:)')
    parser.add_argument('--output-dir', required=True, type=Path, help='where results go; reused to resume a run')
    add_device(parser, 'cuda if available, else cpu')
    parser.add_argument('--data-root', default=None,
                        help="folder replacing './datasets' in pyiqa's dataset configs (overrides data_root:)")
    parser.add_argument('--force', action='store_true', help='recompute every pair, even complete ones')
    add_loading(parser)
    add_precision(parser, ' of MA-CLIP metrics whose options set none')
    return parser


def run(args: argparse.Namespace) -> int:
    from ... import weights
    from ..benchmark.outputs import Layout
    from ..benchmark.schema import read_config
    from ..files import check_writable_folder

    weights.check_environment()
    check_device(args.device)
    raw = read_config(args.config)
    check_writable_folder(args.output_dir, f'the results (--output-dir {args.output_dir})')
    Layout(args.output_dir).check(raw['metrics'], raw['datasets'])

    from ..benchmark.resolve import parse_config
    from ..benchmark.runner import run_benchmark, with_precision

    config = with_precision(parse_config(raw, data_root=args.data_root), args.precision)
    try:
        return run_benchmark(config, args.output_dir, device=args.device, force=args.force,
                             batch_size=args.batch_size, num_workers=args.num_workers,
                             pixel_budget=args.pixel_budget * 1_000_000)
    except KeyboardInterrupt:
        print(f'interrupted: every finished image is kept in {args.output_dir}; run the same command again to resume',
              file=sys.stderr)
        return 130
