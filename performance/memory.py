"""Peak memory of the whole process tree (scoring process and decoding workers) for large images.

Each scenario runs the command line in a child process; its process tree's proportional set
size (PSS: shared pages split between the processes sharing them, so forked workers are not
counted twice) and resident size (RSS, shared pages counted in every process) are sampled every
50 ms, and the peaks reported with the CPU and the settings:

  a. ``score`` on one 13000 x 13000 PNG (169 MP; 160 KB compressed, 507 MB decoded);
  b. ``score`` on three 12000 x 9000 PNGs (108 MP each), default batch size and workers;
  c. ``explain`` on one 12 MP photo, on 2 and on 24 of them: streaming, 24 should need what 2 need (the
     first photo also makes the caches every later one reuses: matplotlib's, the encoder's).

Real CLIP weights cannot be downloaded here: ``score`` runs random weights of RN50's shape (the
same memory as the real RN50), ``explain`` the tiny test model (its memory is the images').
``--seconds`` stops (kills) each run after that long (the peak comes while an image is decoded, in the
first seconds; scoring the views afterwards holds one chunk of views at a time).

    python performance/memory.py --output performance/results/memory.md [--seconds 120] [--only explain]
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pyiqa_maclip.safe_io import atomic_file
from pyiqa_maclip.testing import make_clip, save_state_dict


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    parent = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack += children.get(pid, [])
    return found


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in kB, 0 if it has gone."""
    values = {'Rss': 0, 'Pss': 0}
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            for line in f:
                key = line.split(':')[0]
                if key in values:
                    values[key] = int(line.split()[1])
    except OSError:
        pass
    return values['Rss'], values['Pss']


def peak_memory(command: list[str], seconds: float) -> dict:
    """Run ``command``; the peaks (MB) of its process tree's RSS and PSS, its exit status and duration."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    peak_rss = peak_pss = 0
    stopped = False
    while process.poll() is None:
        if time.monotonic() - start > seconds:
            os.killpg(process.pid, signal.SIGKILL)  # the peak is known: no need for a clean end
            stopped = True
            process.wait()
            break
        sizes = [_memory(pid) for pid in _tree(process.pid)]
        peak_rss = max(peak_rss, sum(rss for rss, _ in sizes))
        peak_pss = max(peak_pss, sum(pss for _, pss in sizes))
        time.sleep(0.05)
    return {'rss_mb': peak_rss / 1024, 'pss_mb': peak_pss / 1024, 'status': process.returncode,
            'seconds': time.monotonic() - start, 'stopped': stopped}


def _png(path: Path, height: int, width: int, seed: int) -> None:
    """A large, highly compressible picture (squares), as the hostile trial's PNGs were."""
    rows, cols = np.ogrid[:height, :width]
    square = 300 + 50 * seed
    value = (((rows // square) + (cols // square)) % 2 * 180 + 30).astype(np.uint8)
    Image.fromarray(np.broadcast_to(value[..., None], (height, width, 3)).copy()).save(path, optimize=True)


def _photo(path: Path, seed: int) -> None:
    """A 4000 x 3000 JPEG with fine detail (12 MP)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((4000, 3000), Image.Resampling.BICUBIC).save(path, quality=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--output', type=Path, default=None, help='a Markdown file for the results')
    parser.add_argument('--seconds', type=float, default=float('inf'), help='stop each run after this long')
    parser.add_argument('--only', default='', help='run only the scenarios whose name contains this text')
    args = parser.parse_args()
    Image.MAX_IMAGE_PIXELS = None
    command = [sys.executable, '-m', 'pyiqa_maclip']
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rn50, tiny = tmp / 'rn50.pth', tmp / 'tiny.pth'
        save_state_dict(make_clip('RN50'), rn50)
        save_state_dict(make_clip('tiny-RN'), tiny)
        for folder in ('one', 'three', 'photo', 'two', 'photos'):
            (tmp / folder).mkdir()
        _png(tmp / 'one' / 'huge.png', 13000, 13000, 0)
        for i in range(3):
            _png(tmp / 'three' / f'{i}.png', 9000, 12000, i + 1)
        for i in range(24):
            _photo(tmp / 'photos' / f'{i:02d}.jpg', i)
        os.link(tmp / 'photos' / '00.jpg', tmp / 'photo' / '00.jpg')
        for i in range(2):
            os.link(tmp / 'photos' / f'{i:02d}.jpg', tmp / 'two' / f'{i:02d}.jpg')
        scenarios = [
            ('score one 13000x13000 PNG', [*command, 'score', str(tmp / 'one'), '-o', str(tmp / 'a.csv'),
                                           '--backbone', str(rn50), '--no-progress'], 'RN50-shaped'),
            ('score three 12000x9000 PNGs', [*command, 'score', str(tmp / 'three'), '-o', str(tmp / 'b.csv'),
                                             '--backbone', str(rn50), '--no-progress'], 'RN50-shaped'),
            ('explain one 12 MP photo', [*command, 'explain', str(tmp / 'photo'), '-o', str(tmp / 'c1'),
                                         '--backbone', str(tiny)], 'tiny'),
            ('explain 2 photos of 12 MP', [*command, 'explain', str(tmp / 'two'), '-o', str(tmp / 'c2'),
                                           '--backbone', str(tiny)], 'tiny'),
            ('explain 24 photos of 12 MP', [*command, 'explain', str(tmp / 'photos'), '-o', str(tmp / 'c24'),
                                            '--backbone', str(tiny)], 'tiny'),
        ]
        scenarios = [scenario for scenario in scenarios if args.only in scenario[0]]
        for name, run, weights in scenarios:
            result = peak_memory(run, args.seconds)
            rows.append({'scenario': name, 'weights': weights, **result})
            print(f"{name}: peak PSS {result['pss_mb']:.0f} MB, RSS {result['rss_mb']:.0f} MB, "
                  f"{result['seconds']:.0f} s{' (stopped)' if result['stopped'] else ''}", flush=True)
    cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')),
               platform.processor())
    lines = [f'# Peak memory of the process tree ({cpu}, {os.cpu_count()} CPUs, {time.strftime("%Y-%m-%d")})', '',
             'Defaults: batch size 8, one decoding worker per CPU (at most 4), pixel budget 128 MP.', '',
             '| scenario | weights | peak PSS (MB) | peak RSS (MB) | seconds |', '|---|---|---|---|---|']
    lines += [f"| {r['scenario']} | {r['weights']} | {r['pss_mb']:.0f} | {r['rss_mb']:.0f} | "
              f"{r['seconds']:.0f}{' (stopped)' if r['stopped'] else ''} |" for r in rows]
    if args.output:
        with atomic_file(args.output) as file:
            file.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
