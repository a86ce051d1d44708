"""Size and speed of the interactive HTML report (pyiqa_maclip.app.report.html) for 1,000 and 100,000 rows.

For each size: choose_thumbnail_rows and write_html_report (240 thumbnails of pyiqa's sample photos,
degraded in proportion to a made-up score; keys like '/data/collection/shard-0012/img_001234.jpg';
MA-CLIP's four components), best of --repeat runs; the file's size and what the pictures take of it.
With Playwright and chromium: the time from opening the file until ``window.report.ready``, and per
``setThreshold`` (the median of 20 thresholds across the range), offline. The CPU model is recorded.

    python performance/html_report_size.py --output performance/results/html_report.md
    python performance/html_report_size.py --rows 1000 --screenshot docs/report_html_example.png
"""
from __future__ import annotations

import argparse
import io
import platform
import shutil
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from pyiqa_maclip.app.report.html import choose_thumbnail_rows, thumbnail_jpeg, write_html_report

_PHOTOS = Path(sysconfig.get_paths()['purelib']) / 'ResultsCalibra' / 'ref_dir'  # shipped in pyiqa's wheel


def cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def collection(rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A made-up scored collection: quality in [0, 1] drawn from a skewed distribution, the score a
    noisy function of it (9 significant digits, as in a scores CSV), and 0.5 % failed files."""
    rng = np.random.default_rng(seed)
    quality = rng.beta(4, 1.6, rows)
    q_sim, q_mag = 0.3 + 0.5 * quality + rng.normal(0, 0.04, rows), 0.9 + 1.6 * quality + rng.normal(0, 0.2, rows)
    w_sim = 1 / (1 + np.exp(-(0.4 + 2 * (q_sim - q_mag))))
    table = pd.DataFrame({'key': [f'/data/collection/shard-{i // 1000:04d}/img_{i:06d}.jpg' for i in range(rows)],
                          'score': w_sim * q_sim + (1 - w_sim) * q_mag, 'q_sim': q_sim, 'q_mag': q_mag,
                          'w_sim': w_sim, 'w_mag': 1 - w_sim})
    numbers = ['score', 'q_sim', 'q_mag', 'w_sim', 'w_mag']
    table[numbers] = table[numbers].map(lambda v: float(f'{v:.9g}'))  # the digits `score` writes in its CSV
    failed = pd.DataFrame({'key': [f'/data/collection/broken/img_{i:06d}.jpg' for i in range(rows // 200)],
                           'error': ['OSError: image file is truncated (3 bytes not processed)'] * (rows // 200)})
    return table, failed


def thumbnails(table: pd.DataFrame, rows: list[int]) -> dict[int, bytes]:
    """Sample photos blurred and noised in proportion to how low each row's score sits in the range."""
    photos = [Image.open(p).convert('RGB') for p in sorted(_PHOTOS.glob('*'))] or [Image.new('RGB', (512, 384), 'grey')]
    low, high = table['score'].min(), table['score'].max()
    rng = np.random.default_rng(1)
    pictures = {}
    for row in rows:
        badness = float((high - table['score'][row]) / (high - low))
        picture = photos[row % len(photos)].copy()
        picture.thumbnail((320, 320))
        picture = picture.filter(ImageFilter.GaussianBlur(4 * badness ** 1.5))
        noisy = np.asarray(picture, dtype=float) + rng.normal(0, 40 * badness ** 2, (*picture.size[::-1], 3))
        pictures[row] = thumbnail_jpeg(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return pictures


def measure_write(rows: int, folder: Path, repeat: int) -> dict:
    table, failed = collection(rows)
    started = time.perf_counter()
    chosen = choose_thumbnail_rows(table['score'].to_numpy(), lower_better=False)
    choose_seconds = time.perf_counter() - started
    pictures = thumbnails(table, chosen)
    output = folder / f'report_{rows}.html'
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        write_html_report(table, output, metric='maclip', lower_better=False, thumbnails=pictures, failed=failed,
                          title=f'collection of {rows:,} images (made-up scores)', scores_file='scores.csv')
        seconds.append(time.perf_counter() - started)
    picture_bytes = sum(len(p) for p in pictures.values()) * 4 / 3  # as base64
    return {'rows': rows, 'output': output, 'bytes': output.stat().st_size, 'picture_bytes': picture_bytes,
            'thumbnails': len(pictures), 'choose_s': choose_seconds, 'write_s': min(seconds)}


def measure_browser(result: dict, screenshot: Path | None) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return
    if not shutil.which('chromium'):
        return
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which('chromium'), args=['--no-sandbox'])
        page = browser.new_context(offline=True, viewport={'width': 1400, 'height': 900}).new_page()
        started = time.perf_counter()
        page.goto(result['output'].as_uri())
        page.wait_for_function('window.report && window.report.ready === true', polling=10)
        result['load_s'] = time.perf_counter() - started
        thresholds = np.linspace(*np.quantile(collection(result['rows'])[0]['score'], [0.01, 0.99]), 20)
        result['threshold_ms'] = statistics.median(page.evaluate(
            '''ts => ts.map(t => { const s = performance.now(); window.report.setThreshold(t);
                                   return performance.now() - s; })''', thresholds.tolist()))
        if screenshot:
            threshold = float(np.quantile(collection(result['rows'])[0]['score'], 0.15))
            page.evaluate('t => window.report.setThreshold(t)', float(f'{threshold:.3g}'))
            picture = Image.open(io.BytesIO(page.screenshot(full_page=False))).convert('RGB')
            picture.quantize(256, method=Image.Quantize.MEDIANCUT).save(screenshot, optimize=True)  # a third the bytes
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rows', type=int, nargs='+', default=[1000, 100_000])
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--output', type=Path, help='also write the table (Markdown) here')
    parser.add_argument('--screenshot', type=Path, help='a screenshot of the page of the first --rows here')
    args = parser.parse_args()
    lines = [f'CPU: {cpu_model()}; 240 thumbnails of about 160 px', '',
             '| rows | file | of it pictures | choose rows | write | open until ready | setThreshold |',
             '|---:|---:|---:|---:|---:|---:|---:|']
    with tempfile.TemporaryDirectory() as folder:
        for i, rows in enumerate(args.rows):
            result = measure_write(rows, Path(folder), args.repeat)
            measure_browser(result, args.screenshot if i == 0 else None)
            browser = (f"{result['load_s']:.2f} s | {result['threshold_ms']:.1f} ms" if 'load_s' in result
                       else 'no browser | no browser')
            lines.append(f"| {rows:,} | {result['bytes'] / 1e6:.2f} MB | {result['picture_bytes'] / 1e6:.2f} MB | "
                         f"{result['choose_s'] * 1e3:.1f} ms | {result['write_s']:.2f} s | {browser} |")
            print(lines[-1], flush=True)
    if args.output:
        args.output.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
