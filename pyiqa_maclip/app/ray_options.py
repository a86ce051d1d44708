"""``score``'s options of ``--engine ray``, and their checks before torch and Ray load."""
from __future__ import annotations

import argparse
import importlib.util

from ..errors import UserError

__all__ = ['add_ray_options', 'check_ray_args']

INSTALL = "pip install 'pyiqa-maclip[ray]'"


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f'expected a number >= 0, got {text!r}')
    return value


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--engine', choices=('local', 'ray'), default='local',
                        help='local (default): this machine, into a CSV; ray: WebDataset tars, Parquet files or '
                             'folders through Ray Data into -o FOLDER, one Parquet file per input shard (see docs/ray.md)')
    ray = parser.add_argument_group('--engine ray')
    ray.add_argument('--ray-address', default=None, metavar='ADDR',
                     help='a running Ray cluster, e.g. 10.0.0.1:6379, or auto for the one started on this machine '
                          '(default: start a private local one)')
    ray.add_argument('--num-gpus-per-worker', type=_non_negative, default=None, metavar='N',
                     help='GPUs per scoring actor, e.g. 0.5 for two on one GPU (default: 1 if the cluster has GPUs, '
                          'else 0)')
    ray.add_argument('--cpus-per-worker', type=_non_negative, default=1.0, metavar='N',
                     help='CPUs per scoring actor (default: 1)')
    ray.add_argument('--workers', type=int, default=None, metavar='N',
                     help='scoring actors (default: one per GPU share, or as many as leave one CPU to reading)')


def check_ray_args(args: argparse.Namespace) -> None:
    """A :class:`UserError` for options that mean nothing with the chosen engine, or Ray missing."""
    if args.engine != 'ray':
        given = [f'--{name.replace("_", "-")}' for name in ('ray_address', 'num_gpus_per_worker', 'workers') if getattr(args, name) is not None]
        if given:
            raise UserError(f'{", ".join(given)}: options of --engine ray')
        return
    if importlib.util.find_spec('ray') is None:
        raise UserError(f'--engine ray needs Ray, which is not installed: {INSTALL}')
    unused = [flag for flag, name in (('--device', 'device'), ('--num-workers', 'num_workers'),
                                      ('--retry-failed', 'retry_failed'), ('--image-member', 'image_member'),
                                      ('--embeddings', 'embeddings'), ('--split', 'split'))
              if getattr(args, name) not in (None, False)]
    if unused:
        raise UserError(f'{", ".join(unused)}: not options of --engine ray (devices follow --num-gpus-per-worker; '
                        'a shard with failed samples is finished)')
    if args.workers is not None and args.workers < 1:
        raise UserError(f'--workers {args.workers}: expected an integer >= 1')
