"""``pyiqa-maclip download``: the handler (its parser is in :mod:`pyiqa_maclip_cli`)."""
from __future__ import annotations

import os
from pathlib import Path

from ..safe_io import command_error, one_line
from .downloading import download
from .environment import EnvironmentValueError, check_environment
from .official import OFFICIAL_CHECKPOINTS, did_you_mean, find_cached, search_dirs

__all__ = ['download_command']


def download_command(args) -> int:
    """``pyiqa-maclip download [BACKBONE ...] [--verify] [--dir DIR]``: one status line per backbone.

    Exit status: 0 every file is there (and intact), 1 some could not be had, 2 a usage
    mistake (unknown name, unusable ``--dir`` or environment variable), said on stderr.
    """
    names = list(OFFICIAL_CHECKPOINTS) if args.backbones == ['all'] else list(dict.fromkeys(args.backbones))
    directory = None if args.dir is None else Path(args.dir).expanduser()
    if mistake := _usage_mistake(names, args.dir, directory, args.verify):
        return command_error('download', mistake)
    failures = 0
    for name in names:
        line, ok = _status(name, directory, args.verify)
        print(f'{name}: {line}')
        failures += not ok
    return 1 if failures else 0


def _usage_mistake(names: list[str], given_dir, directory: Path | None, verify: bool) -> str | None:
    for name in names:
        if name not in OFFICIAL_CHECKPOINTS:
            local = '; a local checkpoint file needs no download' if Path(name).expanduser().exists() else ''
            return (f'{name!r} is not an official CLIP backbone{did_you_mean(name)}: expected '
                    f'{", ".join(OFFICIAL_CHECKPOINTS)} or all{local}')
    try:
        check_environment()
    except EnvironmentValueError as error:
        return str(error)
    if directory is None:
        return None
    if directory.exists() and not directory.is_dir():
        return f'--dir {given_dir}: not a folder'
    if not verify:  # a download needs the folder; --verify creates nothing
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            return f'--dir {given_dir}: cannot create it: {error.strerror or error}'
        if not os.access(directory, os.W_OK | os.X_OK):
            return f'--dir {given_dir}: not writable'
    return None


def _status(name: str, directory: Path | None, verify: bool) -> tuple[str, bool]:
    """The status line of one backbone (after ``NAME: ``), and whether its file is there and intact."""
    found, corrupted = find_cached(name, None if directory is None else [directory])
    if found is not None:
        ignored = f' (ignoring a corrupted copy at {", ".join(map(str, corrupted))})' if corrupted else ''
        return f'ok {found}{ignored}', True
    if verify and corrupted:
        return f'CORRUPTED {", ".join(map(str, corrupted))} (SHA-256 mismatch; run without --verify to replace it)', False
    expected = (directory or search_dirs()[0]) / OFFICIAL_CHECKPOINTS[name].filename
    if verify:
        return f'MISSING (expected {expected})', False
    try:
        path = download(name, directory)
    except OSError as error:
        return f'FAILED {one_line(error)}', False
    return f'downloaded {path}' + (' (replacing a corrupted copy)' if expected in corrupted else ''), True
