"""Speed and memory of pyiqa-maclip against the reference and against the image encoder's own cost.

Everything runs in one process on one machine with the same random RN50-shaped weights
(real weights cannot be downloaded here, and timing does not depend on their values):

  a. time per image at 512x384 and 1024x768 (width x height) for this metric, for the reference
     (pyiqa 0.1.16's maclip_arch, its hard-coded CUDA device redirected to the CPU) and for the
     floor: the CLIP image encoder alone, float32, default memory format, on the same views;
  b. peak resident memory scoring a 3000x4000 image, this metric vs the reference (each in a
     fresh child process, whole-process peak);
  c. throughput for batches of 1, 8 and 32 images;
  d. folder scoring (decoding JPEGs in worker processes) vs the model alone on decoded tensors;
  e. the opt-in float16 mode against float32: max |score difference|, rank correlation, time.

Timings are interleaved (one call of each contender per round) and the median is kept, so the
ratios compare like with like on a shared, noisy machine.

    python benchmarks/performance.py --output-dir benchmarks/results
"""
from __future__ import annotations

import argparse
import csv
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pyiqa_maclip import MACLIP
from pyiqa_maclip.testing import make_clip, random_images, save_torchscript

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from reference_cpu import reference_on_cpu  # noqa: E402  (the test suite's CPU-redirected reference)


def encoder_floor(visual: torch.nn.Module, image: torch.Tensor, metric: MACLIP) -> torch.Tensor:
    """The plain image encoder (float32, NCHW, BatchNorm unfolded) on the metric's views of
    ``image``, in the metric's chunks: the work the metric cannot avoid, done naively."""
    views = (torch.stack(list(metric._views(image))) - metric.mean) / metric.std
    return torch.cat([visual(chunk.contiguous(), pos_embedding=False) for chunk in views.split(metric.chunk_size)])


def median_times(contenders: dict, rounds: int) -> dict[str, float]:
    """Median wall time of each zero-argument callable, interleaved round by round."""
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, call in contenders.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def time_per_image(checkpoint: Path, rounds: int) -> list[dict]:
    from pyiqa.archs.clip_model import load

    ours = MACLIP(backbone=str(checkpoint)).eval()
    floor_visual = load(str(checkpoint), 'cpu').visual.eval()
    rows = []
    with reference_on_cpu() as Reference:
        reference = Reference(backbone=str(checkpoint)).eval()
        for width, height in [(512, 384), (1024, 768)]:
            image = random_images(1, height, width, seed=1)
            with torch.no_grad():
                diff = abs(ours(image).item() - reference(image).item())
                times = median_times({
                    'ours': lambda: ours(image),
                    'reference': lambda: reference(image),
                    'encoder_fp32_nchw': lambda: encoder_floor(floor_visual, image, ours),
                }, rounds)
            rows.append({
                'size': f'{width}x{height}',
                'views': sum(1 for _ in ours._views(image)),
                'ours_s': times['ours'],
                'reference_s': times['reference'],
                'encoder_floor_s': times['encoder_fp32_nchw'],
                'ours_vs_reference': times['ours'] / times['reference'],
                'ours_vs_encoder_floor': times['ours'] / times['encoder_fp32_nchw'],
                'max_abs_score_diff_vs_reference': diff,
            })
    return rows


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, as ru_maxrss survives exec on Linux and
    would report the parent's peak for a child started from a large process."""
    try:
        with open('/proc/self/status') as status:
            return next(int(line.split()[1]) for line in status if line.startswith('VmHWM')) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(which: str, checkpoint: str) -> None:
    """Run in a fresh process: score one 3000x4000 image, print the whole-process peak RSS (MB)."""
    image = torch.rand(1, 3, 3000, 4000, generator=torch.Generator().manual_seed(0))
    if which == 'ours':
        metric = MACLIP(backbone=checkpoint).eval()
    else:
        with reference_on_cpu() as Reference:
            metric = Reference(backbone=checkpoint).eval()
    loaded = peak_rss_mb()
    with reference_on_cpu(), torch.no_grad():
        start = time.perf_counter()
        score = float(metric(image).reshape(-1)[0])
        seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    print(f'{peak:.0f} {loaded:.0f} {seconds:.1f} {score:.7f}')


def peak_memory(checkpoint: Path) -> list[dict]:
    rows = []
    for which in ('ours', 'reference'):
        out = subprocess.run(
            [sys.executable, __file__, '--memory-child', which, '--checkpoint', str(checkpoint)],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        peak, loaded, seconds, score = float(out[0]), float(out[1]), float(out[2]), float(out[3])
        rows.append({'contender': which, 'peak_rss_mb': peak, 'rss_after_load_mb': loaded,
                     'seconds': seconds, 'score': score})
    return rows


def batch_throughput(checkpoint: Path, rounds: int) -> list[dict]:
    metric = MACLIP(backbone=str(checkpoint)).eval()
    rows = []
    for batch in (1, 8, 32):
        images = random_images(batch, 384, 512, seed=2)
        with torch.no_grad():
            seconds = median_times({'ours': lambda: metric(images)}, max(1, rounds if batch < 32 else 1))['ours']
        rows.append({'batch': batch, 'images_per_s': batch / seconds, 'seconds': seconds})
    return rows


def folder_throughput(checkpoint: Path, count: int, workers: int) -> list[dict]:
    """Scoring JPEG files (decoded in workers) vs the model alone on the decoded tensors."""
    try:
        from pyiqa_maclip import scoring
    except ImportError:
        return []
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / 'images'
        folder.mkdir()
        for i in range(count):
            array = (random_images(1, 384, 512, seed=i)[0].permute(1, 2, 0) * 255).byte().numpy()
            Image.fromarray(array).save(folder / f'{i:04d}.jpg', quality=90)
        paths = scoring.collect_paths([folder])
        decoded = [to_tensor(Image.open(p).convert('RGB')) for p in paths]
        # Both sides build the metric once and score in batches of 8; only the decoding differs.
        start = time.perf_counter()
        metric = MACLIP(backbone=str(checkpoint)).eval()
        with torch.no_grad():
            for i in range(0, count, 8):
                metric.score_images(decoded[i:i + 8])
        model_alone = time.perf_counter() - start
        start = time.perf_counter()
        scoring.score_paths(paths, Path(tmp) / 'scores.csv', backbone=checkpoint, device='cpu', batch_size=8,
                            num_workers=workers, progress=False)
        folder_seconds = time.perf_counter() - start
    return [{'images': count, 'model_alone_images_per_s': count / model_alone,
             'folder_images_per_s': count / folder_seconds, 'folder_vs_model': model_alone / folder_seconds}]


def half_precision_effect(checkpoint: Path, device: str, count: int) -> list[dict]:
    """float16 autocast vs float32 on the same images: max |diff| and rank correlation of scores."""
    from scipy.stats import spearmanr

    images = [random_images(1, 384, 512, seed=100 + i)[0] for i in range(count)]
    scores = {}
    for half in (False, True):
        metric = MACLIP(backbone=str(checkpoint), half=half).to(device).eval()
        with torch.no_grad():
            start = time.perf_counter()
            scores[half] = metric.score_images(images).score.cpu()
            scores[f'{half}_s'] = time.perf_counter() - start
    diff = (scores[True] - scores[False]).abs()
    return [{'device': device, 'images': count, 'max_abs_diff': diff.max().item(), 'mean_abs_diff': diff.mean().item(),
             'spearman_vs_fp32': spearmanr(scores[True], scores[False]).statistic,
             'fp32_s': scores['False_s'], 'fp16_s': scores['True_s']}]


def markdown(title: str, rows: list[dict]) -> str:
    if not rows:
        return f'### {title}\n\n(not run)\n'
    header = list(rows[0])
    lines = [f'### {title}', '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        lines.append('| ' + ' | '.join(f'{v:.4g}' if isinstance(v, float) else str(v) for v in row.values()) + ' |')
    return '\n'.join(lines) + '\n'


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name'))
        cpu = model
    except (OSError, StopIteration):
        pass
    return (f'{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, '
            f'Python {platform.python_version()}, {platform.system()}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--output-dir', type=Path, default=Path('benchmarks/results'))
    parser.add_argument('--rounds', type=int, default=5, help='interleaved timing rounds (median kept)')
    parser.add_argument('--folder-images', type=int, default=48)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--half-images', type=int, default=16)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='device for the half-precision comparison (e; CPU float16 is emulated and slow)')
    parser.add_argument('--skip', nargs='*', default=[], choices=['time', 'memory', 'batch', 'folder', 'half'])
    parser.add_argument('--memory-child', choices=['ours', 'reference'], help=argparse.SUPPRESS)
    parser.add_argument('--checkpoint', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.checkpoint)
        return

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_torchscript(make_clip('RN50'), Path(tmp) / 'RN50-random.pt')
        sections = [
            ('a. time per image (s), CPU float32', None if 'time' in args.skip else time_per_image(checkpoint, args.rounds)),
            ('b. peak resident memory, 3000x4000 image', None if 'memory' in args.skip else peak_memory(checkpoint)),
            ('c. throughput by batch size, 512x384', None if 'batch' in args.skip else batch_throughput(checkpoint, args.rounds)),
            ('d. folder scoring vs model alone, 512x384 JPEG', None if 'folder' in args.skip
             else folder_throughput(checkpoint, args.folder_images, args.workers)),
            ('e. float16 autocast vs float32 scores', None if 'half' in args.skip
             else half_precision_effect(checkpoint, args.device, args.half_images)),
        ]
    report = f'Machine: {machine()}\n\n' + '\n'.join(markdown(t, rows or []) for t, rows in sections)
    print(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / 'performance.md').write_text(report)
    for title, rows in sections:
        if rows:
            with open(args.output_dir / f'performance_{title[0]}.csv', 'w', newline='') as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)


if __name__ == '__main__':
    main()
