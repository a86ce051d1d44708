"""``pyiqa-maclip download [BACKBONE ...] [--verify] [--dir DIR]``: official weights for offline use.

One status line per backbone. Exit status: 0 every file is there (and intact), 1 some
could not be had, 2 a usage mistake (unknown name, unusable ``--dir`` or environment
variable). Needs neither torch nor pyiqa.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ...errors import UserError, one_line
from ...names import OFFICIAL_CHECKPOINTS, WEIGHTS_DIR_ENV

__all__ = ['add_parser', 'run']


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'download', help='fetch official CLIP weights for offline use, or verify the cached ones',
        description='Download official OpenAI CLIP checkpoints into the cache (verified by SHA-256), '
                    'or with --verify check what is cached without downloading.',
        epilog='exit status: 0 every file is there and intact, 1 some could not be had, 2 a usage mistake')
    parser.add_argument('backbones', nargs='*', metavar='BACKBONE', default=['RN50'],
                        help=f'CLIP names (default: RN50); "all" for every one of: {", ".join(OFFICIAL_CHECKPOINTS)}')
    parser.add_argument('--verify', action='store_true', help='only check the cached files, download nothing')
    parser.add_argument('--dir', type=Path, default=None,
                        help=f'download into DIR (default: ${WEIGHTS_DIR_ENV} if set, else <torch hub dir>/clip)')
    return parser


def run(args: argparse.Namespace) -> int:
    from ... import weights

    names = list(OFFICIAL_CHECKPOINTS) if args.backbones == ['all'] else list(dict.fromkeys(args.backbones))
    for name in names:
        if name not in OFFICIAL_CHECKPOINTS:
            local = '; a local checkpoint file needs no download' if Path(name).expanduser().exists() else ''
            raise UserError(f'{name!r} is not an official CLIP backbone{weights.did_you_mean(name)}: expected '
                            f'{", ".join(OFFICIAL_CHECKPOINTS)} or all{local}')
    weights.check_environment()
    directory = None if args.dir is None else _usable_dir(args.dir, args.verify)
    failures = 0
    for name in names:
        line, ok = _status(weights, name, directory, args.verify)
        print(f'{name}: {line}')
        failures += not ok
    return 1 if failures else 0


def _usable_dir(given: Path, verify: bool) -> Path:
    directory = Path(given).expanduser()
    if directory.exists() and not directory.is_dir():
        raise UserError(f'--dir {given}: not a folder')
    if not verify:  # a download needs the folder; --verify creates nothing
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f'--dir {given}: cannot create it: {error.strerror or error}') from None
        if not os.access(directory, os.W_OK | os.X_OK):
            raise UserError(f'--dir {given}: not writable')
    return directory


def _status(weights, name: str, directory: Path | None, verify: bool) -> tuple[str, bool]:
    """The status line of one backbone (after ``NAME: ``), and whether its file is there and intact."""
    found, corrupted = weights.find_cached(name, None if directory is None else [directory])
    if found is not None:
        ignored = f' (ignoring a corrupted copy at {", ".join(map(str, corrupted))})' if corrupted else ''
        return f'ok {found}{ignored}', True
    if verify and corrupted:
        return f'CORRUPTED {", ".join(map(str, corrupted))} (SHA-256 mismatch; run without --verify to replace it)', False
    expected = (directory or weights.search_dirs()[0]) / OFFICIAL_CHECKPOINTS[name].filename
    if verify:
        return f'MISSING (expected {expected})', False
    try:
        path = weights.download(name, directory)
    except OSError as error:
        return f'FAILED {one_line(error)}', False
    return f'downloaded {path}' + (' (replacing a corrupted copy)' if expected in corrupted else ''), True
