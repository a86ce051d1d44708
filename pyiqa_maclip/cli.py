"""The ``pyiqa-maclip`` command (also ``python -m pyiqa_maclip``).

Each subcommand lives with its concern: a module in ``SUBCOMMAND_MODULES`` exposes
``add_subcommand(subparsers)``, which adds its parser and sets ``func(args) -> int``
(the exit status) as the parser default.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .version import __version__

SUBCOMMAND_MODULES = (
    'pyiqa_maclip.weights',
    'pyiqa_maclip.scoring',
    'pyiqa_maclip.benchmark',
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='pyiqa-maclip',
        description='MA-CLIP no-reference image quality (Liao et al., AAAI 2026) for pyiqa.',
    )
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_subcommand(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
