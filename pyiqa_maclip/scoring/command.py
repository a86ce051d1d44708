"""``pyiqa-maclip score``: the command's handler, with every user mistake as one line and exit 2."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .inputs import collect_paths, parse_extensions
from .journal import OutputConflictError
from .run import BackboneError, _distributed_state, device_problem, score_paths

__all__ = ['score_command', 'one_line']

_log = logging.getLogger('pyiqa_maclip.scoring')


def one_line(error: BaseException | str) -> str:
    """A message on one line: runs of whitespace, newlines included, become one space."""
    return ' '.join(str(error).split())


@contextmanager
def _log_to_stderr() -> Iterator[None]:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(message)s'))
    level = _log.level
    _log.addHandler(handler)
    _log.setLevel(logging.INFO)
    try:
        yield
    finally:
        _log.removeHandler(handler)
        _log.setLevel(level)


def _device_mistake(device: str | None) -> str | None:
    import torch

    if device is None:
        return None
    try:
        problem = device_problem(torch.device(device))
    except RuntimeError:
        problem = 'expected a torch device such as cpu, cuda, cuda:1 or mps'
    return None if problem is None else f'--device {device}: {problem}'


def score_command(args: argparse.Namespace) -> int:
    """Run ``pyiqa-maclip score`` with parsed arguments; returns the exit status."""
    def fail(message: str) -> int:
        print(f'pyiqa-maclip score: error: {one_line(message)}', file=sys.stderr)
        return 2

    if mistake := _device_mistake(args.device):
        return fail(mistake)
    with _log_to_stderr():
        main = _distributed_state().is_main_process
        try:
            extensions = args.extensions
            if isinstance(extensions, str):
                extensions = parse_extensions(extensions.split(','))
            # Only the main process walks the inputs; score_paths hands its list to the others.
            paths = collect_paths(args.inputs, extensions) if main else []
            if main and not paths:
                return fail(f'no image files found in {", ".join(args.inputs)}')
            summary = score_paths(
                paths, args.output, backbone=args.backbone, device=args.device, batch_size=args.batch_size,
                num_workers=args.num_workers, chunk_size=args.chunk_size, half=args.half,
                overwrite=args.overwrite, retry_failed=args.retry_failed, progress=args.progress,
            )
        except KeyboardInterrupt:
            print('interrupted: every finished batch is kept; run the same command again to resume', file=sys.stderr)
            return 130
        except OutputConflictError as error:
            advice = '; pass --overwrite to start afresh, or choose another --output' if error.fixable else ''
            return fail(error.problem + advice)
        except BackboneError as error:
            return fail(f'--backbone {args.backbone}: {error}')
        except (OSError, ValueError, TypeError) as error:  # nothing scored: bad input, options or output
            return fail(str(error))
    if main:
        print(summary)
    return 0 if summary.complete else 1


# ---- TEMPORARY until the light command-line module lands: today's parser, unchanged.
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from .inputs import LIST_SUFFIXES  # noqa: E402
from .run import _count, default_num_workers  # noqa: E402

_normalise_extensions = parse_extensions
_score_command = score_command
def _integer_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return _count('value', int(text), minimum)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected an integer >= {minimum}, got {text!r}') from None
    return parse


def _extension_list(text: str) -> frozenset[str]:
    try:
        return _normalise_extensions(text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated suffixes such as jpg,png, got {text!r}') from None


def add_subcommand(subparsers) -> None:
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
    parser.add_argument('--batch-size', type=_integer_at_least(1), default=8,
                        help='images decoded and scored together (default: 8)')
    parser.add_argument('--num-workers', type=_integer_at_least(0), default=None,
                        help=f'decoding processes, 0 to decode in the scoring process (default: {default_num_workers()})')
    parser.add_argument('--chunk-size', type=_integer_at_least(1), default=16,
                        help='most views sent through the image encoder at once (default: 16)')
    parser.add_argument('--half', action='store_true', help='float16 autocast for the image encoder (GPUs)')
    parser.add_argument('--extensions', type=_extension_list, default=None,
                        help='suffixes taken from folders, e.g. jpg,png (default: every format PIL opens)')
    parser.add_argument('--overwrite', action='store_true', help='discard an earlier run on --output and start afresh')
    parser.add_argument('--retry-failed', action='store_true', help='score again the files an earlier run failed on')
    parser.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    parser.set_defaults(func=_score_command)
