"""``pyiqa-maclip download [BACKBONE ...] [--verify] [--dir DIR]``: official weights for offline use;
``pyiqa-maclip download [ARCHITECTURE] --stand-in FILE``: random weights to try the tools without them.

One status line per backbone. Exit status: 0 every file is there (and intact), 1 some
could not be had, 2 a usage mistake (unknown name, unusable ``--dir`` or environment
variable). With ``$PYIQA_MACLIP_OFFLINE`` set it downloads nothing: it says so on stderr and
checks the cached files as ``--verify`` does. Needs neither torch nor pyiqa, but for ``--stand-in``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ...errors import UserError, one_line
from ...names import OFFICIAL_CHECKPOINTS, OFFLINE_ENV, WEIGHTS_DIR_ENV

__all__ = ['add_parser', 'run']


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        'download', help='fetch official CLIP weights for offline use, or verify the cached ones',
        description='Download official OpenAI CLIP checkpoints into the cache (verified by SHA-256), '
                    f'or with --verify (or {OFFLINE_ENV}=1) check what is cached without downloading. '
                    'With --stand-in, write random weights instead, to try the tools without the official file.',
        epilog='exit status: 0 every file is there and intact, 1 some could not be had, 2 a usage mistake')
    parser.add_argument('backbones', nargs='*', metavar='BACKBONE', default=['RN50'],
                        help=f'CLIP names (default: RN50); "all" for every one of: {", ".join(OFFICIAL_CHECKPOINTS)}')
    parser.add_argument('--verify', action='store_true', help='only check the cached files, download nothing')
    parser.add_argument('--dir', type=Path, default=None,
                        help=f'download into DIR (default: ${WEIGHTS_DIR_ENV} if set, else <torch hub dir>/clip)')
    parser.add_argument('--stand-in', type=Path, default=None, metavar='FILE',
                        help='write random weights of the one architecture named (RN50, ViT-B/32, or the small '
                             'tiny-RN, tiny-ViT) into FILE: scores computed with them are MEANINGLESS; for trying '
                             'the tools without the official file')
    return parser


def run(args: argparse.Namespace) -> int:
    from ... import weights

    if args.stand_in is not None:
        return _write_stand_in(args.backbones, args.stand_in, args.verify or args.dir is not None)
    names = list(OFFICIAL_CHECKPOINTS) if args.backbones == ['all'] else list(dict.fromkeys(args.backbones))
    for name in names:
        if name not in OFFICIAL_CHECKPOINTS:
            local = '; a local checkpoint file needs no download' if Path(name).expanduser().exists() else ''
            raise UserError(f'{name!r} is not an official CLIP backbone{weights.did_you_mean(name)}: expected '
                            f'{", ".join(OFFICIAL_CHECKPOINTS)} or all{local}')
    weights.check_environment()
    offline = weights.env_flag(OFFLINE_ENV)
    if offline and not args.verify:
        print(f'pyiqa-maclip download: {OFFLINE_ENV} is set: offline mode forbids downloading, so the cached files '
              'are only checked', file=sys.stderr)
    verify = args.verify or offline
    directory = None if args.dir is None else _usable_dir(args.dir, verify)
    failures = 0
    for name in names:
        line, ok = _status(weights, name, directory, verify, offline)
        print(f'{name}: {line}')
        failures += not ok
    return 1 if failures else 0


def _write_stand_in(names: list[str], path: Path, other_options: bool) -> int:
    """Write random weights of the one architecture in ``names`` into ``path``, saying they are meaningless."""
    from ...testing import ARCHITECTURES

    if other_options:
        raise UserError('--stand-in writes one file of random weights: it takes neither --verify nor --dir')
    if len(names) != 1 or names[0] not in ARCHITECTURES:
        raise UserError(f'--stand-in {path}: expected one architecture to imitate, one of {", ".join(ARCHITECTURES)}; '
                        f'got {" ".join(names)}')
    path = path.expanduser()
    if path.exists() or path.is_symlink():
        raise UserError(f'--stand-in {path}: it exists; delete it or choose another file name')
    if not path.parent.is_dir():
        raise UserError(f'--stand-in {path}: the folder {path.parent} does not exist')
    from ...testing import save_stand_in

    save_stand_in(path, names[0])
    print(f'{names[0]}: stand-in written to {path}: RANDOM weights with the shapes of {names[0]}, to try the tools '
          'without the official file; every score computed with them is MEANINGLESS')
    return 0


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


def _status(weights, name: str, directory: Path | None, verify: bool, offline: bool) -> tuple[str, bool]:
    """The status line of one backbone (after ``NAME: ``), and whether its file is there and intact."""
    found, corrupted = weights.find_cached(name, None if directory is None else [directory])
    if found is not None:
        ignored = f' (ignoring a corrupted copy at {", ".join(map(str, corrupted))})' if corrupted else ''
        return f'ok {found}{ignored}', True
    if verify and corrupted:
        remedy = f'{OFFLINE_ENV} forbids replacing it' if offline else 'run without --verify to replace it'
        return f'CORRUPTED {", ".join(map(str, corrupted))} (SHA-256 mismatch; {remedy})', False
    expected = (directory or weights.search_dirs()[0]) / OFFICIAL_CHECKPOINTS[name].filename
    if verify:
        return f'MISSING (expected {expected})', False
    try:
        path = weights.download(name, directory)
    except OSError as error:
        return f'FAILED {one_line(error)}', False
    return f'downloaded {path}' + (' (replacing a corrupted copy)' if expected in corrupted else ''), True
