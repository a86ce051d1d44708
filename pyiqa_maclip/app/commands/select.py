"""``pyiqa-maclip select SCORES.csv --min-score T -o kept.csv``: the rows of a scores file that a threshold
keeps, in the same form (the command the HTML report shows for its threshold). A ``scores.parquet``
gives ``kept.parquet``, every column kept (the embeddings too)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ...errors import UserError
from ..files import check_replaceable, shown

__all__ = ['add_parser', 'run']


def _score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'expected a finite number, got {text!r}')
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'select', help='the rows of a scores CSV (or Parquet file) a threshold keeps',
        description='Write the rows of a CSV (or Parquet file) written by `pyiqa-maclip score` whose score passes '
                    'the threshold, in the same form: '
                    '--min-score T keeps score >= T (a higher-is-better metric such as MA-CLIP), --max-score T '
                    'keeps score <= T (a lower-is-better one); both keep the band between. A score equal to the '
                    'threshold is kept; rows without a finite score never are. Rows keep their order and text.',
        epilog='exit status: 0 the rows were written, 2 a mistake (no such CSV, no score column, no threshold, '
               'an output in the way)')
    parser.add_argument('scores', metavar='SCORES.csv', type=Path,
                        help='the CSV (or .parquet) written by pyiqa-maclip score')
    parser.add_argument('--min-score', type=_score, metavar='T', help='keep the rows with score >= T')
    parser.add_argument('--max-score', type=_score, metavar='T', help='keep the rows with score <= T')
    parser.add_argument('-o', '--output', required=True, type=Path,
                        help='the file to write, of the scores file\'s kind: kept.csv, or kept.parquet')
    parser.add_argument('--overwrite', action='store_true', help='replace the output if it exists')
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.min_score is None and args.max_score is None:
        raise UserError('no threshold: pass --min-score T (keeps score >= T), --max-score T (keeps score <= T) '
                        'or both')
    if args.min_score is not None and args.max_score is not None and args.min_score > args.max_score:
        raise UserError(f'--min-score {args.min_score} is above --max-score {args.max_score}: no score passes both')
    if not args.scores.is_file():
        raise UserError(f'{shown(args.scores)} does not exist or is not a file: expected the CSV written by '
                        'pyiqa-maclip score')
    if args.output.exists() and args.output.samefile(args.scores):
        raise UserError(f'-o {shown(args.output)} is the scores file itself: choose another output')
    from ..report.exports import is_parquet  # not at the top: the report package imports numpy, --help does not

    if is_parquet(args.output) != is_parquet(args.scores):
        wanted = 'kept.parquet' if is_parquet(args.scores) else 'kept.csv'
        raise UserError(f'-o {shown(args.output)}: the rows are written in the form of {shown(args.scores.name)}; '
                        f'expected an output such as {wanted}')
    check_replaceable(args.output, args.overwrite)


def _read(scores_file: Path):
    """The scores file as text (every cell as written; the whole pyarrow table of a Parquet file, whose
    rows are written back as they are) and its scores as floats (NaN where not a number)."""
    from ..report import exports

    columns = exports.header(scores_file)
    if 'score' not in columns:
        raise UserError(f'{shown(scores_file)} has no score column (columns: {", ".join(columns)}): expected '
                        'the scores written by pyiqa-maclip score')
    table = exports.read(scores_file)
    whole = exports.read_arrow(scores_file) if exports.is_parquet(scores_file) else table
    return table, whole, table['score'].map(_number).to_numpy(dtype=float)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _warn_direction(table, args: argparse.Namespace) -> None:
    """A warning when the only bound given keeps the worst rows of the metric the CSV names."""
    if 'lower_better' not in table.columns or (args.min_score is not None and args.max_score is not None):
        return
    directions = set(table['lower_better'].astype(str).str.lower())
    if directions == {'true'} and args.min_score is not None:
        print('pyiqa-maclip select: warning: the CSV\'s metric is lower-is-better, so --min-score keeps its worst '
              'rows; --max-score keeps the best', file=sys.stderr)
    elif directions == {'false'} and args.max_score is not None:
        print('pyiqa-maclip select: warning: the CSV\'s metric is higher-is-better, so --max-score keeps its worst '
              'rows; --min-score keeps the best', file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..files import check_writable_folder
    from ..journal import write_csv
    from ..report import exports

    _check(args)
    check_writable_folder(args.output.parent, f'the output {shown(args.output)}')
    table, whole, scores = _read(args.scores)
    _warn_direction(table, args)
    kept = np.isfinite(scores)
    unscored = int(len(scores) - kept.sum())
    if args.min_score is not None:
        kept &= scores >= args.min_score
    if args.max_score is not None:
        kept &= scores <= args.max_score
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if exports.is_parquet(args.scores):
        from ..files import write_file

        with write_file(args.output, 'wb') as file:
            exports.pyarrow_parquet().write_table(whole.filter(kept), file)
    else:
        write_csv(table[kept].itertuples(index=False, name=None), list(table.columns), args.output)
    print(f'{shown(args.output)}: {int(kept.sum())} of {len(scores)} rows kept'
          + (f' ({unscored} without a finite score, never kept)' if unscored else ''))
    return 0
