"""``pyiqa-maclip report SCORES.csv|SCORES.parquet -o REPORT.png|REPORT.html``: a scored collection shown to
choose a threshold (see :mod:`pyiqa_maclip.app.report`)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ...errors import UserError
from ..files import check_replaceable, shown
from ..options import integer_at_least

__all__ = ['add_parser', 'run', 'report_file']

#: The report's name when ``-o`` names a folder, by format.
DEFAULT_NAMES = {'png': 'report.png', 'html': 'report.html'}
#: Thumbnails unless ``--thumbnails`` says otherwise, by format (the page holds at most 240).
DEFAULT_THUMBNAILS = {'png': 24, 'html': 240}
_HTML_SUFFIXES = ('.html', '.htm')


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'report', help='score histogram and thumbnails of a scored collection, as a PNG or an interactive HTML page',
        description='Show the scores of a run of `pyiqa-maclip score` to choose a filtering threshold by looking at '
                    'images. A PNG: the histogram with quantile marks and thumbnails at evenly spaced quantiles from '
                    'worst to best by the metric\'s direction. An HTML page (one offline file): every score, a '
                    'threshold to move with the counts kept and dropped, galleries, components, failures, downloads '
                    'of each side and the select command that applies the threshold. Scores, paths, failures and '
                    'the metric come from the run\'s journal when it is beside the scores, else from the scores file '
                    '(CSV or Parquet) and the errors file beside it; the images of a run on shards are found again by '
                    'listing their shard.',
        epilog='exit status: 0 the report was written, 2 a mistake (no such CSV, no score column, no direction, '
               'an output in the way)')
    parser.add_argument('scores', metavar='SCORES', type=Path,
                        help='the scores written by pyiqa-maclip score: scores.csv or scores.parquet')
    parser.add_argument('-o', '--output', required=True,
                        help='the report to write: report.html is the HTML page, any other name a PNG; a folder '
                             '(existing, or ending in /) gets report.png, or report.html with --format html')
    parser.add_argument('--format', choices=sorted(DEFAULT_NAMES), help='png or html (default: from -o\'s suffix)')
    parser.add_argument('--thumbnails', type=integer_at_least(1),
                        help='how many images are shown as pictures (default: 24 in a PNG, 240 in a page, at most '
                             '240 there)')
    parser.add_argument('--explained', type=Path, metavar='DIR',
                        help='HTML only: the folder pyiqa-maclip explain wrote into; the page shows the quality map '
                             'of each image that has one there')
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument('--higher-is-better', dest='lower_better', action='store_false', default=None,
                           help='for a CSV that does not name its metric (no metric, lower_better columns)')
    direction.add_argument('--lower-is-better', dest='lower_better', action='store_true', default=None,
                           help='the same, for a metric whose lower scores are better')
    parser.add_argument('--overwrite', action='store_true', help='replace the report if it exists')
    return parser


def report_format(output: str, chosen: str | None) -> str:
    """``png`` or ``html``: ``--format`` if given, else from ``-o``'s suffix (``.html``/``.htm`` is a page);
    a :class:`UserError` if the two disagree."""
    suffix = Path(output).suffix.lower()
    by_suffix = 'html' if suffix in _HTML_SUFFIXES else 'png' if suffix == '.png' else None
    if chosen is not None and by_suffix not in (None, chosen):
        raise UserError(f'-o {output} names a {by_suffix.upper()} but --format is {chosen}: make them agree')
    return chosen or by_suffix or 'png'


def report_file(output: str, file_format: str = 'png') -> Path:
    """``-o``'s file: ``output`` itself, or ``output/report.<format>`` for a folder (existing, or written with a
    trailing slash)."""
    if output.endswith((os.sep, '/')) or os.path.isdir(output):
        return Path(output) / DEFAULT_NAMES[file_format]
    return Path(output)


def _check(args: argparse.Namespace, file_format: str, output: Path) -> None:
    """The mistakes seen before anything is read."""
    if not args.scores.is_file():
        raise UserError(f'{shown(args.scores)} does not exist or is not a file: expected the scores written by '
                        'pyiqa-maclip score (CSV or Parquet)')
    if args.explained is not None and file_format != 'html':
        raise UserError('--explained is for the HTML page: write -o report.html')
    if args.explained is not None and not args.explained.is_dir():
        raise UserError(f'--explained {shown(args.explained)} is not a folder: expected the folder pyiqa-maclip '
                        'explain wrote into')
    if file_format == 'html' and args.thumbnails is not None and args.thumbnails > DEFAULT_THUMBNAILS['html']:
        raise UserError(f'--thumbnails {args.thumbnails}: a page holds at most {DEFAULT_THUMBNAILS["html"]}')
    check_replaceable(output, args.overwrite)


def _write_png(args: argparse.Namespace, output: Path, count: int) -> str:
    from ..report import axis_label, draw_report, read_collection

    collection = read_collection(args.scores, count, args.lower_better)
    output.parent.mkdir(parents=True, exist_ok=True)
    unreadable = draw_report(collection, shown(args.scores.name), output)
    notes = [f'{collection.unscored} unscored rows' if collection.unscored else '', _unreadable(unreadable)]
    return (f'{len(collection.scores)} scores, {len(collection.paths)} thumbnails from worst to best by '
            f'{axis_label(collection.metric, collection.lower_better)}, {collection.failed} failed files'
            + ''.join(f', {note}' for note in notes if note))


def _unreadable(count: int) -> str:
    return f'{count} images unreadable (shown without a picture)' if count else ''


def _write_html(args: argparse.Namespace, output: Path, count: int) -> str:
    import numpy as np

    from ..report import axis_label, read_table
    from ..report.html import write_table_report

    table = read_table(args.scores, args.lower_better)
    output.parent.mkdir(parents=True, exist_ok=True)
    pictures = write_table_report(table, output, title=shown(args.scores.name), scores_file=str(args.scores),
                                  thumbnails=count, explained=args.explained)
    scored = int(np.isfinite(table.rows['score'].to_numpy(dtype=float)).sum())
    unscored = len(table.rows) - scored
    notes = [f'{unscored} unscored rows' if unscored else '',
             _unreadable(pictures.unreadable),
             f'{pictures.quality_maps} quality maps' if args.explained is not None else '',
             f'{pictures.maps_left_out} more quality maps left out (a page holds 240)' if pictures.maps_left_out else '']
    return (f'{scored} scores, {pictures.thumbnails} thumbnails across the range by '
            f'{axis_label(table.metric, table.lower_better)}, {len(table.failed)} failed files'
            + ''.join(f', {note}' for note in notes if note))


def run(args: argparse.Namespace) -> int:
    from ..files import check_writable_folder

    file_format = report_format(args.output, args.format)
    output = report_file(args.output, file_format)
    _check(args, file_format, output)
    check_writable_folder(output.parent, f'the report {shown(output)}')
    count = args.thumbnails or DEFAULT_THUMBNAILS[file_format]
    summary = (_write_html if file_format == 'html' else _write_png)(args, output, count)
    print(f'{shown(output)}: {summary}')
    return 0
