"""The ``pyiqa-maclip`` command line (also ``python -m pyiqa_maclip``).

Each subcommand is a module of :mod:`pyiqa_maclip.app.commands` with
``add_parser(subparsers)`` and ``run(args) -> int`` (the exit status). Building the
parser imports no torch, so ``--help``, ``--version`` and argument mistakes answer at
once; each ``run`` checks what it can (paths, names, files, environment variables)
before it loads torch and pyiqa (seconds).

:func:`main` turns a :class:`~pyiqa_maclip.errors.UserError` or an ``OSError`` into one
line on stderr and exit status 2, Ctrl-C into one line and 130, and warnings into
one line each. Any other exception is a bug: it keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ..errors import UserError, one_line
from ..names import OFFLINE_ENV
from ..weights import env_flag
from .offline import forbid_network
from ..version import __version__

__all__ = ['COMMANDS', 'build_parser', 'main']

#: The subcommands, in the order of ``--help``: modules of :mod:`pyiqa_maclip.app.commands`.
COMMANDS = ('download', 'score', 'benchmark', 'explain', 'report', 'select')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='pyiqa-maclip',
                                     description='MA-CLIP no-reference image quality (Liao et al., AAAI 2026) for pyiqa.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name in COMMANDS:
        command = importlib.import_module(f'{__package__}.commands.{name}')
        command.add_parser(subparsers).set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits with 2 on bad arguments)."""
    args = build_parser().parse_args(argv)
    prefix = f'pyiqa-maclip {args.command}'

    def say(line: str) -> None:  # one write: lines of several processes never interleave mid-line
        sys.stderr.write(line + '\n')
        sys.stderr.flush()

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        say(f'{prefix}: warning: {one_line(message)}')

    showwarning, warnings.showwarning = warnings.showwarning, one_line_warning
    try:
        if env_flag(OFFLINE_ENV):
            forbid_network()
        return args.run(args)
    except KeyboardInterrupt:
        say(f'interrupted: {prefix} stopped')
        return 130
    except (UserError, OSError) as error:
        say(f'{prefix}: error: {one_line(error) or type(error).__name__}')
        return 2
    except Exception:
        say(f'{prefix}: this is a bug in pyiqa-maclip {__version__}, not a mistake of yours: please report it '
            'with the traceback below')
        raise
    finally:
        warnings.showwarning = showwarning
