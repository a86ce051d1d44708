"""Command-line options several subcommands share (argparse only: no torch)."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from ..names import PRECISIONS

__all__ = ['integer_at_least', 'add_backbone', 'add_device', 'add_precision', 'add_loading']


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f'expected an integer >= {minimum}, got {text!r}')
        return value
    return parse


def add_backbone(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--backbone', default='RN50', help='CLIP name or checkpoint path (default: RN50)')


def add_device(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument('--device', default=None, help=f'torch device, e.g. cpu, cuda or cuda:1 (default: {default})')


def add_precision(parser: argparse.ArgumentParser, which: str = '') -> None:
    parser.add_argument('--precision', choices=PRECISIONS, default=None,
                        help=f'what the image encoder computes in{which}: fp32 (default, exact), bf16 (CPUs with '
                             'bfloat16 instructions, recent GPUs) or fp16 (GPUs); scores stay float32')


def add_loading(parser: argparse.ArgumentParser) -> None:
    """How images reach the model: shared by score and benchmark."""
    parser.add_argument('--batch-size', type=integer_at_least(1), default=8,
                        help='images decoded and scored together (default: 8)')
    parser.add_argument('--num-workers', type=integer_at_least(0), default=None,
                        help='decoding processes, 0 to decode in the scoring process (default: one per CPU, at most 4)')
    parser.add_argument('--pixel-budget', type=integer_at_least(1), default=128, metavar='MEGAPIXELS',
                        help='most pixels of the images in flight (decoding, waiting, scoring), whatever the batch '
                             'size and workers; a larger image is taken alone (default: 128, about 384 MB of 8-bit RGB)')
