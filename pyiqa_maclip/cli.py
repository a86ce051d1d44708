"""``pyiqa_maclip.cli.main`` for code that calls the command from Python.

The command line itself lives in the top-level module :mod:`pyiqa_maclip_cli`, which
imports only the standard library so that ``pyiqa-maclip --help`` answers at once
(importing this package imports torch and pyiqa).
"""
from pyiqa_maclip_cli import build_parser, main

__all__ = ['build_parser', 'main']
