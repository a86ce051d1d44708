"""``pyiqa-maclip report SCORES.csv -o REPORT.png``: histogram and thumbnails of a scored collection (see
:mod:`pyiqa_maclip.app.report`)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ...errors import UserError
from ..files import refuse_special, shown
from ..options import integer_at_least

__all__ = ['add_parser', 'run', 'report_file']

#: The picture's name when ``-o`` names a folder.
DEFAULT_NAME = 'report.png'


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'report', help='score histogram and thumbnails at score quantiles of a scored collection',
        description='Draw the histogram of the scores of a run of `pyiqa-maclip score`, with quantile marks, and '
                    'thumbnails at evenly spaced quantiles from worst to best by the metric\'s direction, to choose '
                    'a filtering threshold by looking at images. Scores, paths, failures and the metric come from '
                    'the run\'s journal when it is beside the CSV, else from the CSV.',
        epilog='exit status: 0 the picture was written, 2 a mistake (no such CSV, no score column, no direction, '
               'an output in the way)')
    parser.add_argument('scores', metavar='SCORES.csv', type=Path, help='the CSV written by pyiqa-maclip score')
    parser.add_argument('-o', '--output', required=True,
                        help=f'the PNG to write, e.g. report.png; a folder (existing, or ending in /) gets '
                             f'{DEFAULT_NAME}')
    parser.add_argument('--thumbnails', type=integer_at_least(1), default=24,
                        help='thumbnails at score quantiles (default: 24)')
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument('--higher-is-better', dest='lower_better', action='store_false', default=None,
                           help='for a CSV that does not name its metric (no metric, lower_better columns)')
    direction.add_argument('--lower-is-better', dest='lower_better', action='store_true', default=None,
                           help='the same, for a metric whose lower scores are better')
    parser.add_argument('--overwrite', action='store_true', help='replace the PNG if it exists')
    return parser


def report_file(output: str) -> Path:
    """``-o``'s file: ``output`` itself, or ``output/report.png`` for a folder (existing, or written with a
    trailing slash)."""
    if output.endswith((os.sep, '/')) or os.path.isdir(output):
        return Path(output) / DEFAULT_NAME
    return Path(output)


def run(args: argparse.Namespace) -> int:
    from ..files import check_writable_folder
    from ..report import axis_label, draw_report, read_collection

    csv_file, output = args.scores, report_file(args.output)
    if not csv_file.is_file():
        raise UserError(f'{shown(csv_file)} does not exist or is not a file: expected the CSV written by '
                        'pyiqa-maclip score')
    refuse_special(output, 'the output')
    if output.exists() and not args.overwrite:
        raise UserError(f'{shown(output)} exists: pass --overwrite to replace it, or choose another -o')
    check_writable_folder(output.parent, f'the report {shown(output)}')
    collection = read_collection(csv_file, args.thumbnails, args.lower_better)
    output.parent.mkdir(parents=True, exist_ok=True)
    draw_report(collection, shown(csv_file.name), output)
    unscored = f', {collection.unscored} unscored rows' if collection.unscored else ''
    print(f'{shown(output)}: {len(collection.scores)} scores, {len(collection.paths)} thumbnails from worst to best '
          f'by {axis_label(collection.metric, collection.lower_better)}, {collection.failed} failed files{unscored}')
    return 0
