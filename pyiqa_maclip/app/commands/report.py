"""``pyiqa-maclip report SCORES.csv -o REPORT.png``: histogram and thumbnails of a scored collection (see
:mod:`pyiqa_maclip.app.report`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import UserError
from ..files import refuse_special, shown
from ..options import integer_at_least

__all__ = ['add_parser', 'run']


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'report', help='score histogram and thumbnails at score quantiles of a scored collection',
        description='Draw the histogram of the scores of a CSV written by `pyiqa-maclip score`, with '
                    'quantile marks, and thumbnails at evenly spaced score quantiles from worst to best, '
                    'to choose a filtering threshold by looking at images.',
        epilog='exit status: 0 the picture was written, 2 a mistake (no such CSV, no score column, an output in the way)')
    parser.add_argument('scores', metavar='SCORES.csv', type=Path, help='the CSV written by pyiqa-maclip score')
    parser.add_argument('-o', '--output', required=True, type=Path, help='the PNG to write, e.g. report.png')
    parser.add_argument('--thumbnails', type=integer_at_least(1), default=24,
                        help='thumbnails at score quantiles (default: 24)')
    parser.add_argument('--overwrite', action='store_true', help='replace the PNG if it exists')
    return parser


def run(args: argparse.Namespace) -> int:
    from ..files import WorkFiles, check_writable_folder
    from ..report import count_rows, draw_report, read_selection

    csv_file = args.scores
    if not csv_file.is_file():
        raise UserError(f'{shown(csv_file)} does not exist or is not a file: expected the CSV written by '
                        'pyiqa-maclip score')
    refuse_special(args.output, 'the output')
    if args.output.exists() and not args.overwrite:
        raise UserError(f'{shown(args.output)} exists: pass --overwrite to replace it, or choose another -o')
    check_writable_folder(args.output.parent, f'the report {shown(args.output)}')
    scores, selection, paths, unscored = read_selection(csv_file, args.thumbnails)
    failed = count_rows(WorkFiles(csv_file.absolute()).errors)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    draw_report(scores, selection, paths, failed, unscored, shown(csv_file.name), args.output)
    print(f'{shown(args.output)}: {len(scores)} scores, {len(paths)} thumbnails from worst to best, {failed} failed '
          f'files' + (f', {unscored} unscored rows' if unscored else ''))
    return 0
