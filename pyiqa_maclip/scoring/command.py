"""``pyiqa-maclip score``: the command's handler, with every user mistake as one line and exit 2."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ..safe_io import command_error
from .inputs import collect_paths, parse_extensions
from .journal import OutputConflictError
from .run import BackboneError, _distributed_state, device_problem, score_paths

__all__ = ['score_command', 'device_mistake']

_log = logging.getLogger('pyiqa_maclip.scoring')


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


def device_mistake(device: str | None) -> str | None:
    """``--device VALUE: why`` if this machine cannot use the device, else None."""
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
    def fail(message: object) -> int:
        return command_error('score', message)

    from ..weights import EnvironmentValueError, check_environment

    if mistake := device_mistake(args.device):
        return fail(mistake)
    precision = args.precision or ('fp16' if args.half else 'fp32')
    if args.half and precision != 'fp16':
        return fail(f'--half means --precision fp16 and contradicts --precision {args.precision}; pass one of them')
    try:
        check_environment()
    except EnvironmentValueError as error:
        return fail(error)
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
                num_workers=args.num_workers, chunk_size=args.chunk_size, precision=precision,
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

