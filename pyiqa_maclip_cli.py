"""The ``pyiqa-maclip`` command line (also ``python -m pyiqa_maclip``).

This module imports only the standard library, so ``--help``, ``--version`` and
argument mistakes answer at once: importing :mod:`pyiqa_maclip` brings in torch and
pyiqa (seconds). Each subcommand is a parser built here and a handler
``(argparse.Namespace) -> int`` (the exit status), imported only once the arguments
parse. To add a subcommand: write ``_add_<name>(subparsers)`` and list it in
:data:`SUBCOMMANDS` with its handler.

:func:`main` is the safety net of every subcommand: a user mistake that a handler
lets through (``ValueError``, ``TypeError``, ``OSError``) becomes one line on
stderr and exit status 2, Ctrl-C one line and exit status 130; never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

__all__ = ['SUBCOMMANDS', 'build_parser', 'main', 'version']

# Kept equal to the package's tables by tests/test_cli.py (importing them here would import torch).
BACKBONE_NAMES = ('RN50', 'RN101', 'RN50x4', 'RN50x16', 'RN50x64', 'ViT-B/32', 'ViT-B/16', 'ViT-L/14',
                  'ViT-L/14@336px')
WEIGHTS_DIR_ENV = 'PYIQA_MACLIP_WEIGHTS_DIR'
LIST_SUFFIXES = ('.txt', '.lst', '.list')


def version() -> str:
    """The package's version, read from ``pyiqa_maclip/version.py`` without importing the package."""
    spec = importlib.util.find_spec('pyiqa_maclip')
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            text = (Path(folder) / 'version.py').read_text(encoding='utf-8')
        except OSError:
            continue
        if found := re.search(r"""__version__\s*=\s*['"]([^'"]+)['"]""", text):
            return found.group(1)
    return 'unknown'


def _integer_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f'expected an integer >= {minimum}, got {text!r}')
        return value
    return parse


PRECISIONS = ('fp32', 'bf16', 'fp16')


def _add_precision(parser: argparse.ArgumentParser, which: str = '') -> None:
    parser.add_argument('--precision', choices=PRECISIONS, default=None,
                        help=f'what the image encoder computes in{which}: fp32 (default, exact), bf16 (CPUs with '
                             'bfloat16 instructions, recent GPUs) or fp16 (GPUs); scores stay float32')


def _add_loading(parser: argparse.ArgumentParser) -> None:
    """How images reach the model: shared by score and benchmark."""
    parser.add_argument('--batch-size', type=_integer_at_least(1), default=8,
                        help='images decoded and scored together (default: 8)')
    parser.add_argument('--num-workers', type=_integer_at_least(0), default=None,
                        help='decoding processes, 0 to decode in the scoring process (default: one per CPU, at most 4)')


def _add_download(subparsers) -> argparse.ArgumentParser:
    """``pyiqa-maclip download [BACKBONE ...] [--verify] [--dir DIR]``."""
    parser = subparsers.add_parser(
        'download', help='fetch official CLIP weights for offline use, or verify the cached ones',
        description='Download official OpenAI CLIP checkpoints into the cache (verified by SHA-256), '
                    'or with --verify check what is cached without downloading.',
    )
    parser.add_argument('backbones', nargs='*', metavar='BACKBONE', default=['RN50'],
                        help=f'CLIP names (default: RN50); "all" for every one of: {", ".join(BACKBONE_NAMES)}')
    parser.add_argument('--verify', action='store_true', help='only check the cached files, download nothing')
    parser.add_argument('--dir', type=Path, default=None,
                        help=f'download into DIR (default: ${WEIGHTS_DIR_ENV} if set, else <torch hub dir>/clip)')
    return parser


def _add_score(subparsers) -> argparse.ArgumentParser:
    """``pyiqa-maclip score PATH [PATH ...] --output scores.csv [options]``."""
    parser = subparsers.add_parser(
        'score', help='score image files, folders or path lists into a CSV (resumable, shardable)',
        description='Score images with MA-CLIP into a CSV (path,score,q_sim,q_mag,w_sim,w_mag). Files that '
                    'cannot be scored are listed in <stem>.errors.csv. Running the same command again resumes; '
                    'under `accelerate launch` the inputs are sharded across processes.',
        epilog='exit status: 0 every image scored, 1 some failed (see the errors file), '
               '2 bad arguments or the run could not start, 130 interrupted (run again to resume)',
    )
    parser.add_argument('inputs', nargs='+', metavar='PATH',
                        help=f'image file, folder (recursive) or text file listing paths ({", ".join(LIST_SUFFIXES)})')
    parser.add_argument('-o', '--output', required=True, type=Path, help='the CSV file to write, e.g. scores.csv')
    parser.add_argument('--backbone', default='RN50', help='CLIP name or checkpoint path (default: RN50)')
    parser.add_argument('--device', default=None,
                        help="torch device (default: accelerate's device for the process, else cpu)")
    _add_loading(parser)
    parser.add_argument('--chunk-size', type=_integer_at_least(1), default=16,
                        help='most views sent through the image encoder at once (default: 16)')
    _add_precision(parser)
    parser.add_argument('--half', action='store_true', help='the same as --precision fp16 (kept for earlier scripts)')
    # A comma-separated string: the handler checks it (the rules live with the folder scan).
    parser.add_argument('--extensions', default=None,
                        help='suffixes taken from folders, e.g. jpg,png (default: every format PIL opens)')
    parser.add_argument('--overwrite', action='store_true', help='discard an earlier run on --output and start afresh')
    parser.add_argument('--retry-failed', action='store_true', help='score again the files an earlier run failed on')
    parser.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    return parser


def _add_benchmark(subparsers) -> argparse.ArgumentParser:
    """``pyiqa-maclip benchmark --config FILE --output-dir DIR [--device DEV] [--data-root DIR] [--force] ...``."""
    parser = subparsers.add_parser(
        'benchmark', help='score datasets with MA-CLIP and other pyiqa metrics; correlations, tables, plots',
        description='Score every dataset of a YAML configuration with every metric, compare with the MOS '
                    '(SRCC, KRCC, PLCC raw and after the 5-parameter logistic fit, RMSE) and write '
                    'summary.csv, summary.md, per-image scores and plots. Pairs already complete in '
                    'the output directory are skipped.',
    )
    parser.add_argument('--config', required=True, help='the YAML configuration (datasets:, metrics:)')
    parser.add_argument('--output-dir', required=True, help='where results go; reused to resume a run')
    parser.add_argument('--device', default=None, help='torch device, e.g. cpu or cuda:0 (default: cuda if available)')
    parser.add_argument('--data-root', default=None,
                        help="folder replacing './datasets' in pyiqa's dataset configs (overrides data_root:)")
    parser.add_argument('--force', action='store_true', help='recompute every pair, even complete ones')
    _add_loading(parser)
    _add_precision(parser, ' of MA-CLIP metrics whose options set none')
    return parser


def _add_explain(subparsers) -> argparse.ArgumentParser:
    """``pyiqa-maclip explain IMAGE [IMAGE ...] -o FOLDER [--backbone B] [--device D]``."""
    parser = subparsers.add_parser(
        'explain', help='per-patch quality maps of images, as pictures',
        description='Draw, per image, the photo, the fused MA-CLIP score per pixel (patches averaged), the '
                    'Q_sim and Q_mag maps and the weight of Q_mag, on fixed colour scales, into '
                    'FOLDER/<image stem>_explain.png.',
    )
    parser.add_argument('images', nargs='+', metavar='IMAGE', help='image files')
    parser.add_argument('-o', '--output', required=True, help='the folder to write the pictures into')
    parser.add_argument('--backbone', default='RN50', help='CLIP name or checkpoint path (default: RN50)')
    parser.add_argument('--device', default=None, help='torch device (default: cpu)')
    _add_precision(parser)
    return parser


def _add_report(subparsers) -> argparse.ArgumentParser:
    """``pyiqa-maclip report SCORES.csv -o REPORT.png [--thumbnails N]``."""
    parser = subparsers.add_parser(
        'report', help='score histogram and thumbnails at score quantiles of a scored collection',
        description='Draw the histogram of the scores of a CSV written by `pyiqa-maclip score`, with '
                    'quantile marks, and thumbnails at evenly spaced score quantiles from worst to best, '
                    'to choose a filtering threshold by looking at images.',
    )
    parser.add_argument('scores', metavar='SCORES.csv', help='the CSV written by pyiqa-maclip score')
    parser.add_argument('-o', '--output', required=True, help='the PNG to write, e.g. report.png')
    parser.add_argument('--thumbnails', type=_integer_at_least(1), default=24,
                        help='thumbnails at score quantiles (default: 24)')
    return parser


#: name -> (function adding its parser, its handler as 'module:function'), in the order of ``--help``.
SUBCOMMANDS: dict[str, tuple[Callable, str]] = {
    'download': (_add_download, 'pyiqa_maclip.weights:download_command'),
    'score': (_add_score, 'pyiqa_maclip.scoring:score_command'),
    'benchmark': (_add_benchmark, 'pyiqa_maclip.benchmark:benchmark_command'),
    'explain': (_add_explain, 'pyiqa_maclip.explain:explain_command'),
    'report': (_add_report, 'pyiqa_maclip.report:report_command'),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='pyiqa-maclip',
        description='MA-CLIP no-reference image quality (Liao et al., AAAI 2026) for pyiqa.',
    )
    parser.add_argument('--version', action='version', version=f'%(prog)s {version()}')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name, (add_parser, handler) in SUBCOMMANDS.items():
        add_parser(subparsers).set_defaults(handler=handler)
    return parser


def _one_line(error: BaseException) -> str:
    return ' '.join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits with 2 on bad arguments)."""
    args = build_parser().parse_args(argv)

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f'pyiqa-maclip {args.command}: warning: {_one_line(message)}', file=sys.stderr)

    showwarning, warnings.showwarning = warnings.showwarning, one_line_warning
    try:
        module, function = args.handler.split(':')
        return getattr(importlib.import_module(module), function)(args)
    except KeyboardInterrupt:
        print(f'interrupted: pyiqa-maclip {args.command} stopped', file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as error:  # a user mistake the handler did not word itself
        print(f'pyiqa-maclip {args.command}: error: {_one_line(error)}', file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = showwarning


if __name__ == '__main__':
    sys.exit(main())
