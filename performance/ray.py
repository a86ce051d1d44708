"""Throughput of ``score --engine ray`` against the local engine on the same images, on this machine.

Both run as the command line runs them (a fresh process each, startup included), on the same
JPEGs with the same random RN50-shaped weights (real weights cannot be downloaded here; time does
not depend on their values): the local engine on a folder, Ray on the same bytes in WebDataset
shards (a local Ray instance started by the run; defaults: one actor of 1 CPU on a 2-CPU machine).
Each engine runs ``--rounds`` times, interleaved; the median is kept. Wall time includes starting
Python, torch and (for Ray) the Ray instance and its actor, so it is also given per image net of a
run on one image.

    python performance/ray.py --images 48 --rounds 2
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """Smooth random JPEGs (width x height ``size``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        noise = np.random.default_rng(index).random((size[1] // 16, size[0] // 16, 3))
        image = Image.fromarray((noise * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
        paths.append(folder / f'{index:05d}.jpg')
        image.save(paths[-1], quality=90)
    return paths


def make_shards(paths: list[Path], folder: Path, per_shard: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, len(paths), per_shard):
        shards.append(folder / f'shard-{start // per_shard:05d}.tar')
        with tarfile.open(shards[-1], 'w') as tar:
            for path in paths[start:start + per_shard]:
                tar.add(path, arcname=path.name)
    return shards


def timed(command: list[str]) -> float:
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'RAY_AUTH_MODE': 'disabled', 'RAY_USAGE_STATS_ENABLED': '0'}
    start = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f'{" ".join(command)} failed:\n{run.stderr[-3000:]}')
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=int, default=48)
    parser.add_argument('--per-shard', type=int, default=12)
    parser.add_argument('--size', default='512x384', help='width x height')
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=8)
    args = parser.parse_args()
    from pyiqa_maclip.testing import make_clip, save_state_dict

    size = tuple(int(v) for v in args.size.split('x'))
    work = Path(tempfile.mkdtemp(prefix='ray-performance-'))
    try:
        backbone = save_state_dict(make_clip('RN50'), work / 'rn50-random.pth')
        paths = make_images(work / 'images', args.images, size)
        shards = make_shards(paths, work / 'shards', args.per_shard)
        one = make_shards(paths[:1], work / 'one', 1)
        score = [sys.executable, '-m', 'pyiqa_maclip', 'score', '--backbone', str(backbone), '--no-progress',
                 '--batch-size', str(args.batch_size)]
        runs = {'local': lambda name, inputs: score + [*map(str, inputs), '-o', str(work / f'{name}.csv')],
                'ray': lambda name, inputs: score + ['--engine', 'ray', *map(str, inputs), '-o', str(work / name)]}
        inputs = {'local': ([work / 'images'], [paths[0]]), 'ray': (shards, one)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        startup: dict[str, list[float]] = {k: [] for k in runs}
        for round_ in range(args.rounds):
            for engine, command in runs.items():
                times[engine].append(timed(command(f'{engine}-{round_}', inputs[engine][0])))
                startup[engine].append(timed(command(f'{engine}-one-{round_}', inputs[engine][1])))
                print(f'round {round_} {engine}: {times[engine][-1]:.1f} s, one image {startup[engine][-1]:.1f} s',
                      flush=True)
        print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
              f'load average {os.getloadavg()[0]:.2f}; {args.images} JPEGs of {args.size}, RN50-shaped weights, '
              f'batch {args.batch_size}, {len(shards)} shards of {args.per_shard}, median of {args.rounds}')
        for engine in runs:
            total, first = statistics.median(times[engine]), statistics.median(startup[engine])
            net = (total - first) / (args.images - 1)
            print(f'{engine:6s} wall {total:7.1f} s ({args.images / total:5.2f} images/s); one image {first:6.1f} s; '
                  f'net of it {net:5.2f} s per image ({1 / net:5.2f} images/s)')
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
