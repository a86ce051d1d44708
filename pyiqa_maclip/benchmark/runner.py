"""Run every (metric, dataset) pair of a configuration, resumably, and write the report.

Output directory layout::

    summary.csv, summary.md            one row per metric and dataset (complete pairs)
    scores/<metric>__<dataset>.csv     per image: image, mos, prediction, error (+ MA-CLIP components)
    scores/<metric>__<dataset>.json    done marker: the pair's fingerprint, timing, counts
    plots/scatter_<metric>__<dataset>.png, plots/qsim_qmag_<metric>__<dataset>.png, plots/srcc_bars.png

A pair is complete when its marker holds the fingerprint of the metric's options,
the dataset's options and its (image, MOS) list; both files are written atomically,
the CSV first, so an interrupted run loses at most the pair in flight. Metrics that
build the same model (variants differing only in ``component:``) share one scoring
pass. Summary and plots are rebuilt at the end of every run from the complete pairs.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from ..arch import MACLIP, QualityComponents
from ..safe_io import atomic_file, error_text
from ..version import __version__
from .config import BenchmarkConfig, DatasetSpec, MetricSpec, file_stem
from .datasets import Item, items_digest, load_items, read_image
from .evaluation import Agreement, evaluate
from .plots import plot_qsim_qmag, plot_scatter, plot_srcc_bars

__all__ = ['SUMMARY_COLUMNS', 'Pair', 'run_benchmark', 'read_scores', 'summarise', 'markdown_summary']

SUMMARY_COLUMNS = (
    'metric', 'dataset', 'n', 'srcc', 'krcc', 'plcc', 'plcc_logistic', 'rmse_logistic', 'n_failed', 'seconds',
    'flipped', 'metric_lower_better', 'mos_lower_better', 'note',
)
COMPONENT_COLUMNS = QualityComponents._fields  # score, q_sim, q_mag, w_sim, w_mag
FLIP_MARK = '†'


@dataclass(frozen=True)
class Pair:
    """One metric on one dataset, with the fingerprint that marks its results as current."""

    metric: MetricSpec
    dataset: DatasetSpec
    key: str

    @property
    def stem(self) -> str:
        return f'{file_stem(self.metric.name)}__{file_stem(self.dataset.name)}'

    @property
    def sign(self) -> int:
        """-1 when the prediction is negated so that agreement with the MOS is positive."""
        return -1 if self.metric.lower_better != self.dataset.mos_lower_better else 1


def pair_key(metric: MetricSpec, dataset: DatasetSpec, digest: str) -> str:
    """The fingerprint of a pair: metric options, dataset options and the (image, MOS) list's digest."""
    record = {'metric': metric.fingerprint(), 'dataset': dataset.fingerprint(), 'items': digest}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, encoding='utf-8', newline='') as file:
        file.write(text)


class Layout:
    """Where a run puts its files."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.scores = self.root / 'scores'
        self.plots = self.root / 'plots'

    def scores_csv(self, pair: Pair) -> Path:
        return self.scores / f'{pair.stem}.csv'

    def marker(self, pair: Pair) -> Path:
        return self.scores / f'{pair.stem}.json'

    def is_complete(self, pair: Pair) -> bool:
        try:
            marker = json.loads(self.marker(pair).read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return False
        return isinstance(marker, dict) and marker.get('key') == pair.key and self.scores_csv(pair).is_file()


def _scalar(value, name: str) -> float:
    """One image's value from a metric's output (a 1-element tensor or a number)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f'the metric returned {value.numel()} values of {name} for one image')
        return float(value.detach().reshape(()).cpu())
    return float(value)


def _score_one(model: torch.nn.Module, image: torch.Tensor, components: bool) -> dict[str, float]:
    with torch.no_grad():
        if components:
            out = model(image, return_components=True)
            return {field: _scalar(getattr(out, field), field) for field in COMPONENT_COLUMNS}
        return {'score': _scalar(model(image), 'score')}


def score_items(model: torch.nn.Module, items: Sequence[Item], dataset: DatasetSpec, *, components: bool,
                description: str) -> pd.DataFrame:
    """Score every image; a failure is recorded in the ``error`` column, never raised."""
    rows = []
    for item in tqdm(items, desc=description, unit='img', dynamic_ncols=True):
        row = {'image': item.image, 'mos': item.mos, 'error': ''}
        try:
            image = read_image(item.image, dataset.resize, dataset.resize_mode)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            rows.append({**row, 'error': f'cannot read the image: {error_text(error)}'})
            continue
        try:
            rows.append({**row, **_score_one(model, image, components)})
        # A third-party metric may raise anything on one odd image: record it and go on.
        except Exception as error:  # noqa: BLE001
            rows.append({**row, 'error': f'scoring failed: {error_text(error)}'})
    columns = ['image', 'mos', 'error', *(COMPONENT_COLUMNS if components else ('score',))]
    return pd.DataFrame(rows, columns=columns)


def pair_scores(scored: pd.DataFrame, metric: MetricSpec) -> pd.DataFrame:
    """The per-image table of one metric: its prediction (chosen component), errors for non-finite ones."""
    frame = scored.copy()
    frame.insert(2, 'prediction', frame[metric.component].astype(float))
    bad = (frame['error'] == '') & ~np.isfinite(frame['prediction'])
    frame.loc[bad, 'error'] = [f'non-finite prediction: {value}' for value in frame.loc[bad, 'prediction']]
    if 'q_sim' not in frame.columns:  # a plain metric: its score is the prediction
        frame = frame.drop(columns='score')
    return frame


def _write_pair(layout: Layout, pair: Pair, frame: pd.DataFrame, seconds: float) -> None:
    _write_text(layout.scores_csv(pair), frame.to_csv(index=False))
    failed = int((frame['error'] != '').sum())
    marker = {
        'metric': pair.metric.name, 'dataset': pair.dataset.name, 'key': pair.key,
        'fingerprint': {'metric': pair.metric.fingerprint(), 'dataset': pair.dataset.fingerprint()},
        'images': len(frame), 'failed': failed, 'seconds': seconds,
        'finished': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'pyiqa_maclip': __version__,
    }
    _write_text(layout.marker(pair), json.dumps(marker, indent=2, default=str))


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """A per-image table as written: ``error`` is '' where the image was scored."""
    # Only the numeric columns read '' (how NaN is written) as missing: an image may be named 'NA'.
    numeric = {column: [''] for column in ('mos', 'prediction', *COMPONENT_COLUMNS)}
    return pd.read_csv(path, dtype={'image': str, 'error': str}, keep_default_na=False, na_values=numeric)


@dataclass(frozen=True)
class PairResult:
    """A complete pair read back: its per-image table and its agreement with the MOS."""

    pair: Pair
    frame: pd.DataFrame  # per-image table
    agreement: Agreement
    seconds: float

    @property
    def scored(self) -> pd.DataFrame:
        return self.frame[self.frame['error'] == '']

    def row(self) -> dict:
        n_failed = len(self.frame) - len(self.scored)
        return {
            **self.agreement.as_row(), 'metric': self.pair.metric.name, 'dataset': self.pair.dataset.name,
            'n_failed': n_failed, 'seconds': self.seconds, 'flipped': self.pair.sign < 0,
            'metric_lower_better': self.pair.metric.lower_better,
            'mos_lower_better': self.pair.dataset.mos_lower_better,
        }


def load_result(layout: Layout, pair: Pair) -> PairResult:
    """Evaluate a complete pair from its files (successful images only, prediction times the pair's sign)."""
    frame = read_scores(layout.scores_csv(pair))
    marker = json.loads(layout.marker(pair).read_text(encoding='utf-8'))
    scored = frame[frame['error'] == '']
    agreement = evaluate(pair.sign * scored['prediction'].to_numpy(float), scored['mos'].to_numpy(float))
    return PairResult(pair, frame, agreement, float(marker.get('seconds', math.nan)))


def summarise(results: Sequence[PairResult]) -> pd.DataFrame:
    return pd.DataFrame([r.row() for r in results], columns=list(SUMMARY_COLUMNS))


def _cell(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return 'yes' if value else 'no'
    if isinstance(value, (float, np.floating)):
        return 'n/a' if math.isnan(value) else f'{value:.4f}'
    return str(value).replace('|', '\\|')


def _markdown_table(frame: pd.DataFrame) -> str:
    lines = ['| ' + ' | '.join(map(str, frame.columns)) + ' |', '|' + '---|' * len(frame.columns)]
    lines += ['| ' + ' | '.join(_cell(v) for v in row) + ' |' for row in frame.itertuples(index=False)]
    return '\n'.join(lines)


def _pivot(summary: pd.DataFrame, value: str) -> pd.DataFrame:
    marked = summary.assign(cell=[f'{_cell(v)}{" " + FLIP_MARK if f else ""}'
                                  for v, f in zip(summary[value], summary['flipped'])])
    table = marked.pivot(index='metric', columns='dataset', values='cell')
    table = table.reindex(index=pd.unique(summary['metric']), columns=pd.unique(summary['dataset'])).fillna('')
    return table.reset_index()


def markdown_summary(summary: pd.DataFrame) -> str:
    full = summary.assign(seconds=summary['seconds'].round(1).astype(str))
    return '\n\n'.join([
        '# Benchmark summary',
        f'{FLIP_MARK} the prediction was negated before correlating, because exactly one of metric '
        'and MOS is lower-is-better (columns `metric_lower_better`, `mos_lower_better`); no absolute '
        'values are taken anywhere. `n` counts the images scored; `n_failed` those that could not be '
        'read or scored or gave a non-finite prediction (see the `error` column of scores/*.csv).',
        '## SRCC', _markdown_table(_pivot(summary, 'srcc')),
        '## PLCC after the 5-parameter logistic fit', _markdown_table(_pivot(summary, 'plcc_logistic')),
        '## All numbers', _markdown_table(full),
    ]) + '\n'


def _labels(pair: Pair) -> tuple[str, str]:
    """Axis labels of the prediction and the MOS, saying what was negated."""
    what = pair.metric.name if pair.metric.component == 'score' else f'{pair.metric.name} ({pair.metric.component})'
    prediction = f'−{what} (negated)' if pair.sign < 0 else what
    return prediction, 'MOS (lower is better)' if pair.dataset.mos_lower_better else 'MOS'


def write_plots(layout: Layout, results: Sequence[PairResult], summary: pd.DataFrame) -> list[Path]:
    made = []
    for result in results:
        pair, scored = result.pair, result.scored
        x_label, mos_label = _labels(pair)
        title = f'{pair.metric.name} on {pair.dataset.name}'
        made.append(plot_scatter(pair.sign * scored['prediction'].to_numpy(float), scored['mos'].to_numpy(float),
                                 result.agreement, layout.plots / f'scatter_{pair.stem}.png',
                                 title=title, x_label=x_label, mos_label=mos_label))
        if {'q_sim', 'q_mag'} <= set(scored.columns):
            made.append(plot_qsim_qmag(scored['q_sim'].to_numpy(float), scored['q_mag'].to_numpy(float),
                                       scored['mos'].to_numpy(float), layout.plots / f'qsim_qmag_{pair.stem}.png',
                                       title=f'Q_sim vs Q_mag: {title}', mos_label=mos_label))
    if len(summary):
        made.append(plot_srcc_bars(summary, layout.plots / 'srcc_bars.png'))
    return made


def _groups(metrics: Sequence[MetricSpec]) -> list[list[MetricSpec]]:
    """Metrics that build the same model, in configuration order."""
    groups: dict[str, list[MetricSpec]] = {}
    for metric in metrics:
        groups.setdefault(metric.build_key(), []).append(metric)
    return list(groups.values())


def _build(metric: MetricSpec, device: str | None) -> torch.nn.Module:
    import pyiqa  # looked up at call time, so tests can count builds

    return pyiqa.create_metric(metric.pyiqa_name, device=device, **metric.options)


def run_benchmark(config: BenchmarkConfig, output_dir: str | os.PathLike, *, device: str | None = None,
                  force: bool = False, log: Callable[[str], object] = print) -> int:
    """Score, evaluate and report every pair; returns 0, or 1 if a metric could not be built or run.

    Every dataset's (image, MOS) list is read before any scoring, so a wrong path
    fails at once (:class:`~pyiqa_maclip.benchmark.config.BenchmarkConfigError`).
    """
    layout = Layout(Path(output_dir))
    items = {spec.name: load_items(spec) for spec in config.datasets}
    digests = {name: items_digest(value) for name, value in items.items()}
    pairs = {(m.name, d.name): Pair(m, d, pair_key(m, d, digests[d.name]))
             for m in config.metrics for d in config.datasets}
    status = 0
    for group in _groups(config.metrics):
        names = ', '.join(m.name for m in group)
        todo = {d.name: [m for m in group if force or not layout.is_complete(pairs[m.name, d.name])]
                for d in config.datasets}
        for dataset, metrics in todo.items():
            for metric in group:
                if metric not in metrics:
                    log(f'{metric.name} on {dataset}: complete, skipped')
        if not any(todo.values()):
            continue
        try:
            model = _build(group[0], device)
        # create_metric fails in many ways (assert, download, bad option): report it, run the rest.
        except Exception as error:  # noqa: BLE001
            log(f'error: cannot build metric {names}: {error_text(error)}')
            status = 1
            continue
        components = isinstance(getattr(model, 'net', model), MACLIP)
        if not components and any(m.component != 'score' for m in group):
            log(f'error: {names}: component: needs the MA-CLIP arch of this package, got {type(model.net).__name__}')
            status = 1
            continue
        for spec in config.datasets:
            if not todo[spec.name]:
                continue
            start = time.perf_counter()
            scored = score_items(model, items[spec.name], spec, components=components,
                                 description=f'{names[:40]} | {spec.name}')
            seconds = time.perf_counter() - start
            for metric in todo[spec.name]:
                frame = pair_scores(scored, metric)
                _write_pair(layout, pairs[metric.name, spec.name], frame, seconds)
                failed = int((frame['error'] != '').sum())
                first = '' if not failed else f'; first failure: {frame.loc[frame["error"] != "", "error"].iloc[0]}'
                log(f'{metric.name} on {spec.name}: {len(frame) - failed} scored, {failed} failed{first}')
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    results = [load_result(layout, pair) for pair in pairs.values() if layout.is_complete(pair)]
    summary = summarise(results)
    _write_text(layout.root / 'summary.csv', summary.to_csv(index=False))
    _write_text(layout.root / 'summary.md', markdown_summary(summary))
    write_plots(layout, results, summary)
    log(f'summary of {len(results)} of {len(pairs)} pairs: {layout.root / "summary.csv"}')
    return status
