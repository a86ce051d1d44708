"""Scoring from WebDataset shards against scoring the same images from a folder, and listing shards.

    python performance/sources.py [--images 16] [--decode-images 400] [--rounds 3] [--shards 1000]
                                  [--samples 1000] [--skip throughput listing cold compressed]

a. Throughput of the engine (decoding workers under the pixel budget, batches, journal commits)
   on the same JPEG images (512x384) as files in a folder and as samples of two shards, with one
   scorer built once (MA-CLIP on random RN50-shaped weights: real ones cannot be downloaded here,
   and timing does not depend on the values); and with a scorer that only averages pixels, so that
   what differs between the two (reading and decoding) is all there is to time. Each round runs
   folder and shards back to back, in turn first; the ratio is the median of the rounds' ratios
   (with their range), so a shared machine's changing speed meets both alike.
b. --embeddings: the scorer with and without the embedding column on the same decoded images
   (alternating rounds, medians): the embedding is the global view's feature scoring computes anyway.
c. Listing the keys of ``--shards`` shards of ``--samples`` samples (a ``.jpg`` and a ``.json``
   member of 512 bytes each; by default 1,000 x 1,000, 2 GB of shards in the temporary folder, copies
   of one shard), as ``score`` lists them before it starts, with the shards in the page cache.
d. Listing 10 shards of 1,000 samples of 100 kB from storage (evicted from the page cache first):
   seconds and megabytes read.
e. The same shard as ``.tar`` and ``.tar.gz`` (``--decode-images`` JPEGs 512x384 and a ``.json`` each):
   listing, and reading and decoding with the pixel-mean scorer of a; alternating rounds, medians.

Prints a Markdown table with the machine (CPU model, cores) and load average.
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from pyiqa_maclip.app.engine import score_into
from pyiqa_maclip.app.journal import Journal
from pyiqa_maclip.app.scorers import Recipe
from pyiqa_maclip.app.sources import collect_samples
from pyiqa_maclip.testing import make_clip, random_images, save_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from test_sources import write_shard  # noqa: E402  the tests' way of making a shard


def jpeg(seed: int, height: int = 384, width: int = 512) -> bytes:
    image = random_images(1, height, width, 3, seed=seed)[0]
    buffer = io.BytesIO()
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype('uint8')).save(buffer, 'JPEG', quality=90)
    return buffer.getvalue()


def machine() -> str:
    model = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                  if line.startswith('model name')), platform.processor())
    return f'{model}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}'


class _PixelMean:
    """A scorer that only averages pixels: what is left of a run's time is reading, decoding and the journal."""

    columns = ('score',)
    fingerprint = {'metric': 'pixel mean'}

    def __call__(self, images):
        return [{'score': float(image.float().mean())} for image in images]


def _collection(root: Path, count: int) -> dict[str, list[Path]]:
    """The same ``count`` JPEGs as files of a folder and as samples of two shards (with a .json member each)."""
    root.mkdir(exist_ok=True)
    images = {f'{k:04d}': jpeg(k) for k in range(count)}
    (root / 'folder').mkdir()
    for key, data in images.items():
        (root / 'folder' / f'{key}.jpg').write_bytes(data)
    half = count // 2
    for number, keys in enumerate((list(images)[:half], list(images)[half:])):
        write_shard(root / f'data-{number:03d}.tar', {f'{k}.jpg': images[k] for k in keys} |
                    {f'{k}.json': b'{}' for k in keys})
    return {'folder': [root / 'folder'], 'shards': [root / 'data-{000..001}.tar']}


def throughput(root: Path, inputs: dict[str, list[Path]], count: int, rounds: int, scorer, fingerprint: dict,
               columns: tuple[str, ...]) -> tuple[dict[str, float], list[float]]:
    """Images per second of the engine on folder and shards (medians), and the ratio shards / folder of
    each round. Rounds run the two back to back, in turn first (ABBA), so that a change of the machine's
    speed meets both alike."""
    device = torch.device('cpu')
    times: dict[str, list[float]] = {name: [] for name in inputs}
    for round_ in range(rounds):
        for name in (list(inputs) if round_ % 2 == 0 else list(inputs)[::-1]):
            samples = collect_samples(inputs[name])
            journal_file = root / f'{name}-{len(times[name])}-{id(scorer)}.sqlite3'
            with Journal.create(journal_file, fingerprint, columns) as journal:
                start = time.perf_counter()
                score_into(journal, samples, scorer, device, batch_size=8, num_workers=2)
                times[name].append(time.perf_counter() - start)
    ratios = [folder / shards for folder, shards in zip(times['folder'], times['shards'])]
    return {name: count / statistics.median(values) for name, values in times.items()}, ratios


def _ratio(ratios: list[float]) -> str:
    return f'{statistics.median(ratios):.3f} (rounds {min(ratios):.2f}-{max(ratios):.2f})'


def compressed(root: Path, count: int, rounds: int) -> dict[str, tuple[float, float]]:
    """(listing seconds, img/s with the pixel-mean scorer) of one shard as .tar and as .tar.gz, medians of
    alternating rounds: the reading and decoding that differ, without a model's time to hide them."""
    images = {f'{k:04d}': jpeg(k) for k in range(count)}
    plain = write_shard(root / 'one.tar', {f'{k}.{ext}': data if ext == 'jpg' else b'{}'
                                           for k, data in images.items() for ext in ('jpg', 'json')})
    (root / 'one.tar.gz').write_bytes(gzip.compress(plain.read_bytes()))
    scorer, device = _PixelMean(), torch.device('cpu')
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in ('tar', 'tar.gz')}
    for round_ in range(rounds):
        for name, (listed, scored) in times.items():
            start = time.perf_counter()
            samples = collect_samples([root / f'one.{name}'])
            listed.append(time.perf_counter() - start)
            with Journal.create(root / f'gz-{name}{round_}.sqlite3', scorer.fingerprint, scorer.columns) as journal:
                start = time.perf_counter()
                score_into(journal, samples, scorer, device, batch_size=8, num_workers=2)
                scored.append(time.perf_counter() - start)
    return {name: (statistics.median(listed), count / statistics.median(scored))
            for name, (listed, scored) in times.items()}


def embedding_cost(root: Path, count: int, rounds: int) -> float:
    """Median time of the MA-CLIP scorer with embeddings over the median without, on the same images."""
    from pyiqa_maclip.app.images import read_image

    images = [read_image(path) for path in sorted((root / 'folder').iterdir())[:count]]
    recipe = {flag: Recipe(options={'backbone': str(root / 'rn50.pth')}, embeddings=flag) for flag in (False, True)}
    scorers = {flag: r.build('cpu') for flag, r in recipe.items()}
    times: dict[bool, list[float]] = {False: [], True: []}
    with torch.inference_mode():
        for _ in range(rounds):
            for flag, scorer in scorers.items():
                start = time.perf_counter()
                scorer(images)
                times[flag].append(time.perf_counter() - start)
    return statistics.median(times[True]) / statistics.median(times[False])


def listing(root: Path, shards: int, samples: int) -> tuple[float, float]:
    """Wall and CPU seconds of listing ``shards`` shards (copies of one shard, each a file of its own)."""
    first = root / 'list-0000.tar'
    write_shard(first, {f'{k:06d}.{ext}': b'x' * 512 for k in range(samples) for ext in ('jpg', 'json')})
    for number in range(1, shards):
        shutil.copyfile(first, root / f'list-{number:04d}.tar')
    wall, cpu = time.perf_counter(), time.process_time()
    found = collect_samples([root / f'list-{{0000..{shards - 1:04d}}}.tar'])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if len(found) != shards * samples:
        raise SystemExit(f'listed {len(found)} samples, expected {shards * samples}')
    return wall, cpu


def cold_listing(root: Path, shards: int, samples: int) -> tuple[float, float, float]:
    """(seconds, MB read from disk, MB of shards) of listing ``shards`` shards of ``samples`` samples of 100 kB
    each, evicted from the page cache first (``posix_fadvise``: no privilege needed). Read-ahead would read the
    members' data around each header; the listing asks for none."""
    blob = os.urandom(100_000)
    first = write_shard(root / 'cold-000.tar', {f'{k:06d}.{ext}': blob if ext == 'jpg' else b'{}'
                                                for k in range(samples) for ext in ('jpg', 'json')})
    names = [first] + [root / f'cold-{n:03d}.tar' for n in range(1, shards)]
    for name in names[1:]:
        shutil.copyfile(first, name)
    os.sync()
    for name in names:
        descriptor = os.open(name, os.O_RDONLY)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(descriptor)
    before, start = _bytes_read(), time.perf_counter()
    collect_samples(names)
    return time.perf_counter() - start, (_bytes_read() - before) / 1e6, shards * first.stat().st_size / 1e6


def _bytes_read() -> int:
    """Bytes this process has had read from storage (Linux's /proc/self/io)."""
    for line in Path('/proc/self/io').read_text().splitlines():
        if line.startswith('read_bytes:'):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=16)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--decode-images', type=int, default=400, help='images of the pixel-mean rows')
    parser.add_argument('--shards', type=int, default=1000)
    parser.add_argument('--samples', type=int, default=1000)
    parser.add_argument('--skip', nargs='*', default=[], choices=('throughput', 'listing', 'cold', 'compressed'),
                        help='sections not to run (throughput covers a and b)')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        load = os.getloadavg()[0]
        print(f'machine: {machine()}; load average {load:.1f} before\n')
        print('| what | figure |\n|---|---|')
        if 'throughput' not in args.skip:
            plain, plain_ratios = throughput(root, _collection(root / 'plain', args.decode_images), args.decode_images,
                                             args.rounds, _PixelMean(), _PixelMean.fingerprint, _PixelMean.columns)
            inputs = _collection(root, args.images)
            checkpoint = save_state_dict(make_clip('RN50'), root / 'rn50.pth')
            recipe = Recipe(options={'backbone': str(checkpoint)})
            rates, ratios = throughput(root, inputs, args.images, args.rounds, recipe.build('cpu'), recipe.fingerprint,
                                       recipe.columns)
            embedding = embedding_cost(root, 8, args.rounds)
            print(f'| folder, {args.images} JPEGs 512x384, RN50-shaped MA-CLIP, 2 workers | '
                  f'{rates["folder"]:.2f} img/s |')
            print(f'| the same images from 2 shards | {rates["shards"]:.2f} img/s |')
            print(f'| shards / folder, median of the rounds\' ratios | {_ratio(ratios)} |')
            print(f'| reading, decoding and journal alone ({args.decode_images} JPEGs, a pixel-mean scorer): folder | '
                  f'{plain["folder"]:.1f} img/s |')
            print(f'| the same from 2 shards | {plain["shards"]:.1f} img/s |')
            print(f'| shards / folder, reading and decoding alone | {_ratio(plain_ratios)} |')
            print(f'| scoring 8 decoded images with --embeddings / without | {embedding:.3f} |')
        if 'listing' not in args.skip:
            wall, cpu = listing(root, args.shards, args.samples)
            print(f'| listing {args.shards:,} shards of {args.samples:,} samples (2 members each) | {wall:.2f} s '
                  f'({cpu:.2f} s CPU) |')
        if 'cold' not in args.skip:
            seconds, read, size = cold_listing(root, 10, 1000)
            print(f'| listing 10 shards of 1,000 samples of 100 kB ({size:,.0f} MB) out of the page cache | '
                  f'{seconds:.2f} s, {read:,.0f} MB read from disk |')
        if 'compressed' not in args.skip:
            figures = compressed(root, args.decode_images, args.rounds)
            megabytes = (root / 'one.tar').stat().st_size / 1e6, (root / 'one.tar.gz').stat().st_size / 1e6
            for name, size in zip(figures, megabytes):
                listed, rate = figures[name]
                print(f'| one .{name} of {args.decode_images} JPEGs ({size:.1f} MB): listing; reading and decoding '
                      f'(pixel-mean scorer) | {listed * 1000:.1f} ms ({size / listed:.0f} MB/s); {rate:.1f} img/s |')
        print(f'\nload average {os.getloadavg()[0]:.1f} after')


if __name__ == '__main__':
    main()
