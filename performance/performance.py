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
  e. the opt-in 16-bit precisions (bf16, fp16) against float32 on graded real photos (pyiqa's
     sample photos at blur and noise levels): max and mean |score difference|, Spearman, time;
  f. what each step of the float32 encoder's preparation (pyiqa_maclip.encoder) gives against
     the floor of a, and how far it moves the features.

Section a times precision='bf16' and 'fp16' in the same interleaved rounds as float32, so their
time ratios come from the same run. Timings are interleaved (one call of each contender per
round) and the median is kept, so the ratios compare like with like on a shared, noisy machine;
the load average before and after is recorded with the CPU model and its 16-bit instructions.

Subnormal floats are slow on some CPUs, so the report counts the subnormal values in the
encoder's activations; --flush-denormals flushes them for the whole benchmark process (the
metric itself never changes that process-wide setting: torch cannot read it back to restore it).

    python performance/performance.py --output-dir performance/results
"""
from __future__ import annotations

import argparse
import csv
import os
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
from pyiqa_maclip.precision import cpu_has_native
from pyiqa_maclip.safe_io import atomic_file
from pyiqa_maclip.testing import graded_photos, make_clip, random_images, save_torchscript

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


def time_per_image(checkpoint: Path, weights: Path, rounds: int) -> list[dict]:
    from pyiqa.archs.clip_model import load

    ours = MACLIP(backbone=str(weights)).eval()
    reduced = {p: MACLIP(backbone=str(weights), precision=p).eval() for p in ('bf16', 'fp16')}
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
                    **{p: (lambda m=m: m(image)) for p, m in reduced.items()},
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
                'bf16_s': times['bf16'],
                'fp16_s': times['fp16'],
                'bf16_vs_fp32': times['bf16'] / times['ours'],
                'fp16_vs_fp32': times['fp16'] / times['ours'],
            })
    return rows


def encoder_steps(checkpoint: Path, weights: Path, rounds: int) -> list[dict]:
    """What each step of the float32 encoder's preparation gives, on the 7 views of a 512x384
    image, timed interleaved against the plain encoder (the floor of section a)."""
    from pyiqa.archs.clip_model import load

    from pyiqa_maclip import encoder

    metric = MACLIP(backbone=str(weights)).eval()
    plain = load(str(checkpoint), 'cpu').visual.eval()
    prepared = metric.visual
    views = (torch.stack(list(metric._views(random_images(1, 384, 512, seed=1)))) - metric.mean) / metric.std
    views_cl = views.contiguous(memory_format=torch.channels_last)

    def channels_last_trunk():  # what image_features runs where the blocked layout does not apply
        return encoder.pooled_token(prepared.attnpool, encoder._resnet_trunk(prepared, views_cl))

    steps = {
        'plain encoder (floor)': lambda: plain(views),
        '+ BatchNorm folded, channels_last (pyiqa forward)': lambda: prepared(views_cl),
        '+ attention pool: the pooled token only, no per-token projection': channels_last_trunk,
        '+ oneDNN blocked layout (the metric, fp32)': lambda: encoder.image_features(prepared, views),
    }
    with torch.no_grad():
        expected = plain(views)
        differences = {name: ((step() - expected).norm() / expected.norm()).item() for name, step in steps.items()}
        times = median_times(steps, rounds)
    floor = times['plain encoder (floor)']
    return [{'step': name, 'seconds': times[name], 'vs_floor': times[name] / floor,
             'feature_rel_diff': differences[name]} for name in steps]


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


def peak_memory(checkpoint: Path, weights: Path) -> list[dict]:
    rows = []
    for which, file in (('ours', weights), ('reference', checkpoint)):
        out = subprocess.run(
            [sys.executable, __file__, '--memory-child', which, '--checkpoint', str(file)],
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
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    from pyiqa_maclip.app.engine import score_collection
    from pyiqa_maclip.app.inputs import collect_paths
    from pyiqa_maclip.app.scorers import Recipe

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / 'images'
        folder.mkdir()
        for i in range(count):
            array = (random_images(1, 384, 512, seed=i)[0].permute(1, 2, 0) * 255).byte().numpy()
            Image.fromarray(array).save(folder / f'{i:04d}.jpg', quality=90)
        paths = collect_paths([folder])
        decoded = [to_tensor(Image.open(p).convert('RGB')) for p in paths]
        # Both sides build the metric once and score in batches of 8; only the decoding differs.
        start = time.perf_counter()
        metric = MACLIP(backbone=str(checkpoint)).eval()
        with torch.no_grad():
            for i in range(0, count, 8):
                metric.score_images(decoded[i:i + 8])
        model_alone = time.perf_counter() - start
        start = time.perf_counter()
        score_collection(paths, Path(tmp) / 'scores.csv', Recipe('maclip', {'backbone': str(checkpoint)}),
                         device='cpu', batch_size=8, num_workers=workers, progress=False)
        folder_seconds = time.perf_counter() - start
    return [{'images': count, 'model_alone_images_per_s': count / model_alone,
             'folder_images_per_s': count / folder_seconds, 'folder_vs_model': model_alone / folder_seconds}]


def precision_effect(checkpoint: Path, device: str) -> list[dict]:
    """bf16 and fp16 against float32 on the same graded photos: score differences, rank correlation, time."""
    from scipy.stats import spearmanr

    images = [image for _, image in graded_photos()]
    scores, seconds = {}, {}
    for precision in ('fp32', 'bf16', 'fp16'):
        metric = MACLIP(backbone=str(checkpoint), precision=precision).to(device).eval()
        with torch.no_grad():
            start = time.perf_counter()
            scores[precision] = torch.cat([metric.score_images(images[i:i + 8]).score.cpu()
                                           for i in range(0, len(images), 8)])
            seconds[precision] = time.perf_counter() - start
    rows = []
    for precision in ('bf16', 'fp16'):
        diff = (scores[precision] - scores['fp32']).abs()
        rows.append({'precision': precision, 'device': device, 'images': len(images),
                     'max_abs_diff': diff.max().item(), 'mean_abs_diff': diff.mean().item(),
                     'spearman_vs_fp32': float(spearmanr(scores[precision], scores['fp32']).statistic),
                     'fp32_s': seconds['fp32'], 's': seconds[precision],
                     'time_vs_fp32': seconds[precision] / seconds['fp32']})
    return rows


def subnormal_activations(checkpoint: Path) -> tuple[int, int]:
    """Subnormal values among all encoder activations (module outputs) for one 512x384 image: (count, total)."""
    metric = MACLIP(backbone=str(checkpoint)).eval()
    smallest_normal = torch.finfo(torch.float32).tiny
    counts = [0, 0]

    def count(module, args, out):
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            out = out.to_dense() if out.is_mkldnn else out  # the trunk's oneDNN blocked layout
            counts[0] += int(((out != 0) & (out.abs() < smallest_normal)).sum())
            counts[1] += out.numel()

    hooks = [m.register_forward_hook(count) for m in metric.visual.modules()]
    with torch.no_grad():
        metric(random_images(1, 384, 512, seed=1))
    for hook in hooks:
        hook.remove()
    return counts[0], counts[1]


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
    try:
        flags = next(set(line.split(':', 1)[1].split()) for line in open('/proc/cpuinfo') if line.startswith('flags'))
    except (OSError, StopIteration):
        flags = set()
    sixteen_bit = [f for f in ('avx512_bf16', 'amx_bf16', 'avx512_fp16', 'amx_fp16') if f in flags] or ['none']
    native = {name: cpu_has_native(dtype) for name, dtype in (('bf16', torch.bfloat16), ('fp16', torch.float16))}
    return (f'{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, '
            f'Python {platform.python_version()}, {platform.system()}; 16-bit CPU flags: {" ".join(sixteen_bit)}; '
            f'oneDNN native bf16: {native["bf16"]}, fp16: {native["fp16"]}')


def load_average() -> str:
    try:
        return ' '.join(f'{v:.2f}' for v in os.getloadavg())
    except OSError:
        return 'unknown'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--output-dir', type=Path, default=Path('performance/results'))
    parser.add_argument('--rounds', type=int, default=5, help='interleaved timing rounds (median kept)')
    parser.add_argument('--folder-images', type=int, default=48)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='device for the precision comparison (e)')
    parser.add_argument('--flush-denormals', action='store_true',
                        help='flush subnormal floats to zero in this process (torch.set_flush_denormal)')
    parser.add_argument('--skip', nargs='*', default=[], choices=['time', 'memory', 'batch', 'folder', 'precision'])
    parser.add_argument('--memory-child', choices=['ours', 'reference'], help=argparse.SUPPRESS)
    parser.add_argument('--checkpoint', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.checkpoint)
        return

    if args.flush_denormals and not torch.set_flush_denormal(True):
        print('--flush-denormals: this CPU does not support flushing subnormal floats', file=sys.stderr)
        sys.exit(2)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        from pyiqa_maclip.testing import save_state_dict

        # The same weights twice: pyiqa's reference and its plain encoder read TorchScript archives only,
        # while this package refuses a TorchScript archive that is not OpenAI's and reads the state dict.
        model = make_clip('RN50')
        checkpoint = save_torchscript(model, Path(tmp) / 'RN50-random.pt')
        weights = save_state_dict(model, Path(tmp) / 'RN50-random.pth')
        del model
        subnormal, activations = subnormal_activations(weights)
        sections = [
            ('a. time per image (s), CPU float32', None if 'time' in args.skip
             else time_per_image(checkpoint, weights, args.rounds)),
            ('b. peak resident memory, 3000x4000 image', None if 'memory' in args.skip
             else peak_memory(checkpoint, weights)),
            ('c. throughput by batch size, 512x384', None if 'batch' in args.skip else batch_throughput(weights, args.rounds)),
            ('d. folder scoring vs model alone, 512x384 JPEG', None if 'folder' in args.skip
             else folder_throughput(weights, args.folder_images, args.workers)),
            ('e. bf16 and fp16 vs float32 scores, graded photos 512x384', None if 'precision' in args.skip
             else precision_effect(weights, args.device)),
            ('f. float32 encoder, step by step, 512x384 (7 views)', None if 'time' in args.skip
             else encoder_steps(checkpoint, weights, args.rounds)),
        ]
    report = (f'Machine: {machine()}\n\n'
              f'Load average (1, 5, 15 min): {load_before} before, {load_average()} after. '
              f'Subnormal floats: {"flushed to zero (--flush-denormals)" if args.flush_denormals else "not flushed"}; '
              f'{subnormal} of {activations} encoder activation values are subnormal (one 512x384 image).\n\n'
              + '\n'.join(markdown(t, rows or []) for t, rows in sections))
    print(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.output_dir / 'performance.md') as f:
        f.write(report)
    for title, rows in sections:
        if rows:
            with atomic_file(args.output_dir / f'performance_{title[0]}.csv', newline='') as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)


if __name__ == '__main__':
    main()
