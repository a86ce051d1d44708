"""Command-line options several subcommands share, and their checks before torch and pyiqa load."""
from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import re
import sys
from collections.abc import Callable

from ..errors import UserError
from ..names import PRECISIONS

__all__ = ['integer_at_least', 'add_backbone', 'add_device', 'add_precision', 'add_loading', 'add_source_options',
           'source_options', 'parse_options', 'parse_value', 'device_syntax_problem', 'check_device']

#: Device types torch knows (``torch.device('gpu')`` is refused by torch too).
DEVICE_TYPES = ('cpu', 'cuda', 'mps', 'xpu', 'hpu', 'mtia', 'meta', 'xla', 'privateuseone')
_DEVICE = re.compile(r'(?P<kind>[a-z_]+)(?::(?P<index>\d+))?')


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


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """How images are found in the inputs (:class:`~.sources.SourceOptions`): shared by score and explain."""
    parser.add_argument('--extensions', default=None,
                        help='suffixes taken from folders, e.g. jpg,png (default: every format PIL opens)')
    parser.add_argument('--image-member', default=None, metavar='EXT',
                        help='WebDataset: the member holding the image, e.g. png (default: the first of jpg, jpeg, '
                             'png, webp)')
    parser.add_argument('--image-column', default=None, metavar='NAME',
                        help='Parquet, datasets: the column of image bytes, {bytes, path} structs or paths (default: '
                             'image for Parquet, the Image feature for datasets)')
    parser.add_argument('--key-column', default=None, metavar='NAME',
                        help='Parquet, datasets: the column keying the rows (default: for Parquet key if there is one, '
                             'else the row number; for datasets the row index in the split)')
    parser.add_argument('--split', default=None, metavar='NAME',
                        help='datasets: the split to score, e.g. test (default: train if there is one, else the only '
                             'split)')


def source_options(args: argparse.Namespace):
    """The :class:`~.sources.SourceOptions` of the options :func:`add_source_options` added."""
    from .inputs import parse_extensions
    from .sources import SourceOptions

    extensions = None
    if args.extensions is not None:
        try:
            extensions = parse_extensions(args.extensions.split(','))
        except UserError:
            raise UserError(f'--extensions {args.extensions!r}: expected suffixes separated by commas, such as '
                            'jpg,png') from None
    member = args.image_member
    if member is not None and (not member.lstrip('.') or '/' in member):  # '' would mean the default members
        raise UserError(f'--image-member {member!r}: expected the extension of the member holding the image, such '
                        'as png or jpg')
    return SourceOptions(extensions, member, args.image_column, args.key_column, args.split)


def parse_value(text: str) -> str | int | float | bool:
    """An ``--option`` value: an integer or a real number by Python's ``int()``/``float()`` rules (``1e-1`` is
    0.1), ``true``/``false`` (any case) a flag, anything else the text itself."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return {'true': True, 'false': False}.get(text.strip().lower(), text)


def parse_options(pairs: list[str]) -> dict:
    """``['box_lam=0.3', 'backbone=RN101']`` -> ``{'box_lam': 0.3, 'backbone': 'RN101'}`` (see :func:`parse_value`)."""
    options = {}
    for pair in pairs:
        key, equals, text = pair.partition('=')
        if not equals or not key.strip().isidentifier():
            raise UserError(f'--option {pair}: expected KEY=VALUE, e.g. --option box_lam=0.3')
        options[key.strip()] = parse_value(text)
    return options


def device_syntax_problem(device: str) -> str | None:
    """Why ``device`` is not a torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...), or None."""
    match = _DEVICE.fullmatch(device)
    if match is None or match['kind'] not in DEVICE_TYPES:
        return f'expected a torch device such as cpu, cuda, cuda:1 or mps ({", ".join(DEVICE_TYPES)})'
    if match['index'] is not None and match['kind'] == 'cpu':
        return 'expected cpu without an index'
    return None


def _torch_build(field: str) -> str | None:
    """A field of the installed torch's ``version.py`` (``cuda``, ``hip``) as written there, read
    without importing torch; None if it cannot be read."""
    spec = importlib.util.find_spec('torch')
    if spec is None or spec.origin is None:
        return None
    try:
        with open(os.path.join(os.path.dirname(spec.origin), 'version.py'), encoding='utf-8') as file:
            text = file.read()
    except OSError:
        return None
    found = re.search(rf'^{field}\s*(?::[^=\n]*)?=\s*(.+?)\s*$', text, re.MULTILINE)
    return found[1] if found else None


def _cuda_lacking_without_torch() -> str | None:
    """Why CUDA surely cannot be used here, found without torch (seconds saved); None if torch must tell."""
    if _torch_build('cuda') == 'None' and _torch_build('hip') == 'None':
        return 'not available on this machine: the installed torch is a CPU-only build (no CUDA)'
    if os.environ.get('CUDA_VISIBLE_DEVICES', None) in ('', '-1'):
        return 'not available on this machine: CUDA_VISIBLE_DEVICES hides every GPU'
    if sys.platform.startswith('linux') and _torch_build('hip') == 'None':
        try:
            ctypes.CDLL('libcuda.so.1')
        except OSError:
            return 'not available on this machine: no NVIDIA driver (libcuda) is installed'
    return None


def check_device(device: str | None) -> None:
    """A :class:`UserError` naming ``--device`` if it is no torch device, or one this machine lacks.

    The spelling and the plain absence of CUDA or MPS are told without torch; whether a GPU index
    exists loads torch (seconds), never pyiqa.
    """
    if device is None:
        return
    problem = device_syntax_problem(device)
    kind = device.partition(':')[0]
    if problem is None and kind == 'cuda':
        problem = _cuda_lacking_without_torch()
    if problem is None and kind == 'mps' and sys.platform != 'darwin':
        problem = "not available on this machine: MPS is Apple's GPU (macOS only)"
    if problem is None and kind != 'cpu':
        import torch

        from .engine import device_problem

        problem = device_problem(torch.device(device))
    if problem:
        raise UserError(f'--device {device}: {problem}')
