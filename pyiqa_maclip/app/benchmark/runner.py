"""Run every (metric, dataset) pair of a configuration, resumably, and write the report.

Output directory layout::

    summary.csv, summary.md            one row per metric and dataset (complete pairs), intervals
    comparisons.csv                    every two metrics on each dataset: differences, p-values
    scores/<metric>/<dataset>.csv      per image: image, mos, prediction, error (+ MA-CLIP components)
    scores/<metric>/<dataset>.json     done marker: the pair's fingerprint, timing, counts
    plots/<metric>/scatter_<dataset>.png, plots/<metric>/qsim_qmag_<dataset>.png, plots/srcc_bars.png
    journal/<fingerprint>.sqlite3      finished images of one model on one dataset's preprocessing

Images are scored by the collection scorer's engine
(:func:`pyiqa_maclip.app.engine.score_into`): decoding workers, batches, strict
decoding, and a journal committed per batch, so an interrupted run resumes image
by image. A pair is complete when its marker holds the fingerprint of the
metric's options and weights, the dataset's options and its (image, MOS) list.
Metrics that build the same model (variants differing only in ``component:``)
share one scoring pass. Summary and plots are rebuilt at the end of every run.
"""
from __future__ import annotations

import dataclasses
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
from tqdm import tqdm

from ...errors import one_line
from ...names import COMPONENTS
from ...safe_io import atomic_file
from ...version import __version__
from ..engine import loading_options, score_into
from ..images import DEFAULT_PIXEL_BUDGET
from ..journal import Journal
from ..scorers import Recipe
from .config import BenchmarkConfig, DatasetSpec, MetricSpec, file_stem
from .datasets import Item, items_digest, load_items
from .evaluation import Agreement, evaluate
from .plots import plot_qsim_qmag, plot_scatter, plot_srcc_bars
from .statistics import RESAMPLES, Intervals, correlation_intervals
from .tables import (
    SUMMARY_COLUMNS, Evaluated, compare_metrics, from_spreadsheet_text, markdown_summary, spreadsheet_csv,
)

__all__ = ['SUMMARY_COLUMNS', 'Pair', 'run_benchmark', 'with_precision', 'read_scores', 'pair_table', 'summarise',
           'markdown_summary']

COMPONENT_COLUMNS = COMPONENTS  # score, q_sim, q_mag, w_sim, w_mag
_TEXT_COLUMNS = ('image', 'error', 'metric', 'dataset', 'metric_a', 'metric_b', 'note')
_MACLIP_ARCH = 'MACLIP'


@dataclass(frozen=True)
class Pair:
    """One metric on one dataset, with the fingerprint that marks its results as current."""

    metric: MetricSpec
    dataset: DatasetSpec
    key: str

    @property
    def folder(self) -> str:
        """The metric's folder name under scores/ and plots/."""
        return file_stem(self.metric.name)

    @property
    def stem(self) -> str:
        """The dataset's file name stem inside the metric's folder."""
        return file_stem(self.dataset.name)

    @property
    def sign(self) -> int:
        """-1 when the prediction is negated so that agreement with the MOS is positive."""
        return -1 if self.metric.lower_better != self.dataset.mos_lower_better else 1


def _digest(record) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def pair_key(metric: MetricSpec, dataset: DatasetSpec, digest: str, scorer: dict) -> str:
    """The fingerprint of a pair: metric options, the scorer's (weights, versions), dataset options
    and the (image, MOS) list's digest."""
    return _digest({'metric': metric.fingerprint(), 'scorer': scorer, 'dataset': dataset.fingerprint(),
                    'items': digest})


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
        self.journals = self.root / 'journal'

    def scores_csv(self, pair: Pair) -> Path:
        return self.scores / pair.folder / f'{pair.stem}.csv'

    def marker(self, pair: Pair) -> Path:
        return self.scores / pair.folder / f'{pair.stem}.json'

    def journal(self, fingerprint: dict) -> Path:
        return self.journals / f'{_digest(fingerprint)[:32]}.sqlite3'

    def is_complete(self, pair: Pair) -> bool:
        try:
            marker = json.loads(self.marker(pair).read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return False
        return isinstance(marker, dict) and marker.get('key') == pair.key and self.scores_csv(pair).is_file()


def pair_table(items: Sequence[Item], results: dict, metric: MetricSpec, columns: Sequence[str]) -> pd.DataFrame:
    """The per-image table of one metric: image, mos, prediction (its component), error, and the
    scorer's columns when it has several (MA-CLIP's components)."""
    rows = []
    for item in items:
        result = results.get(item.image)
        values = {} if result is None or result.error is not None else result.values
        error = 'not scored' if result is None else (result.error or '')
        rows.append({'image': item.image, 'mos': item.mos, 'prediction': values.get(metric.component, math.nan),
                     'error': error, **({c: values.get(c, math.nan) for c in columns} if len(columns) > 1 else {})})
    extra = list(columns) if len(columns) > 1 else []
    return pd.DataFrame(rows, columns=['image', 'mos', 'prediction', 'error', *extra])


def _write_pair(layout: Layout, pair: Pair, frame: pd.DataFrame, seconds: float) -> None:
    # CRLF rows: a CR inside an image name is then quoted too (RFC 4180).
    _write_text(layout.scores_csv(pair), spreadsheet_csv(frame, _TEXT_COLUMNS, lineterminator='\r\n'))
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
    """A per-image table as written: ``error`` is '' where the image was scored; image names
    as in the MOS table (the ``'`` that keeps a spreadsheet from running them removed)."""
    # Only the numeric columns read '' (how NaN is written) as missing: an image may be named 'NA'.
    numeric = {column: [''] for column in ('mos', 'prediction', *COMPONENT_COLUMNS)}
    frame = pd.read_csv(path, dtype={'image': str, 'error': str}, keep_default_na=False, na_values=numeric)
    return frame.assign(**{c: frame[c].map(from_spreadsheet_text) for c in ('image', 'error')})


@dataclass(frozen=True)
class PairResult:
    """A complete pair read back: its per-image table, its agreement with the MOS, and the
    bootstrap intervals (with the replicates they come from, for the comparisons)."""

    pair: Pair
    frame: pd.DataFrame  # per-image table
    agreement: Agreement
    seconds: float
    intervals: Intervals
    replicates: dict

    @property
    def scored(self) -> pd.DataFrame:
        return self.frame[self.frame['error'] == '']

    @property
    def signed(self) -> np.ndarray:
        return _signed(self.pair, self.scored)

    def evaluated(self) -> Evaluated:
        scored = self.scored
        return Evaluated(self.pair.metric.name, self.pair.dataset.name, list(scored['image']), self.signed,
                         scored['mos'].to_numpy(float), self.pair.sign < 0, self.replicates)

    def row(self) -> dict:
        n_failed = len(self.frame) - len(self.scored)
        notes = [note for note in (self.agreement.note, self.intervals.note) if note]
        return {
            **self.agreement.as_row(), **self.intervals.as_row(), 'note': '; '.join(notes),
            'fit_problem': ', '.join(self.agreement.fit.problems),
            'metric': self.pair.metric.name, 'dataset': self.pair.dataset.name,
            'n_failed': n_failed, 'seconds': self.seconds, 'flipped': self.pair.sign < 0,
            'metric_lower_better': self.pair.metric.lower_better,
            'mos_lower_better': self.pair.dataset.mos_lower_better,
        }


def _signed(pair: Pair, scored: pd.DataFrame) -> np.ndarray:
    """The scored images' predictions times the pair's sign, as correlated with the MOS."""
    return pair.sign * scored['prediction'].to_numpy(float)


def load_result(layout: Layout, pair: Pair) -> PairResult:
    """Evaluate a complete pair from its files (successful images only, prediction times the pair's sign)."""
    frame = read_scores(layout.scores_csv(pair))
    marker = json.loads(layout.marker(pair).read_text(encoding='utf-8'))
    scored = frame[frame['error'] == '']
    signed, mos = _signed(pair, scored), scored['mos'].to_numpy(float)
    intervals, replicates = correlation_intervals(signed, mos)
    return PairResult(pair, frame, evaluate(signed, mos), float(marker.get('seconds', math.nan)), intervals,
                      replicates)


def summarise(results: Sequence[PairResult]) -> pd.DataFrame:
    return pd.DataFrame([r.row() for r in results], columns=list(SUMMARY_COLUMNS))


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
        made.append(plot_scatter(result.signed, scored['mos'].to_numpy(float),
                                 result.agreement, layout.plots / pair.folder / f'scatter_{pair.stem}.png',
                                 title=title, x_label=x_label, mos_label=mos_label))
        if {'q_sim', 'q_mag'} <= set(scored.columns):
            made.append(plot_qsim_qmag(scored['q_sim'].to_numpy(float), scored['q_mag'].to_numpy(float),
                                       scored['mos'].to_numpy(float), layout.plots / pair.folder / f'qsim_qmag_{pair.stem}.png',
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


def _is_maclip(metric: MetricSpec) -> bool:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return DEFAULT_CONFIGS[metric.pyiqa_name]['metric_opts'].get('type') == _MACLIP_ARCH


def with_precision(config: BenchmarkConfig, precision: str | None) -> BenchmarkConfig:
    """``config`` with ``precision`` given to every MA-CLIP metric whose options set none (``--precision``)."""
    if precision is None:
        return config
    metrics = tuple(dataclasses.replace(m, options={**m.options, 'precision': precision})
                    if _is_maclip(m) and not {'precision', 'half'} & set(m.options) else m for m in config.metrics)
    return dataclasses.replace(config, metrics=metrics)


def _build(recipe: Recipe, metric: MetricSpec, device: str | None):
    """The metric's scorer (MA-CLIP's arch with its components, or any pyiqa metric)."""
    if metric.component != 'score' and not recipe.is_maclip:
        raise ValueError(f'component: needs the MA-CLIP arch of this package, got {metric.pyiqa_name}')
    return recipe.build(device)


def _score_dataset(layout: Layout, scorer, fingerprint: dict, spec: DatasetSpec, items: Sequence[Item],
                   device: torch.device, force: bool, description: str, loading: dict) -> dict:
    """Score the dataset's images not yet in the journal of (scorer, preprocessing); all their results."""
    fingerprint = {**fingerprint, 'resize': spec.resize, 'resize_mode': spec.resize_mode}
    file = layout.journal(fingerprint)
    file.parent.mkdir(parents=True, exist_ok=True)
    if force:
        file.unlink(missing_ok=True)
    paths = [item.image for item in items]
    with Journal.create(file, fingerprint, scorer.columns) as journal:
        finished = journal.finished()
        pending = [p for p in paths if p not in finished]
        with tqdm(total=len(paths), initial=len(paths) - len(pending), desc=description, unit='img',
                  dynamic_ncols=True) as bar:
            score_into(journal, pending, scorer, device, **loading, resize=spec.resize, resize_mode=spec.resize_mode,
                       bar=bar)
        return {result.path: result for result in journal.results(paths)}


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with atomic_file(root / '.write-test'):
            pass
        (root / '.write-test').unlink()
    except OSError as error:
        from .config import BenchmarkConfigError

        raise BenchmarkConfigError(f'--output-dir {root}: cannot write there: {error.strerror or error}') from error


def run_benchmark(config: BenchmarkConfig, output_dir: str | os.PathLike, *, device: str | None = None,
                  force: bool = False, batch_size: int = 8, num_workers: int | None = None,
                  pixel_budget: int = DEFAULT_PIXEL_BUDGET, log: Callable[[str], object] = print) -> int:
    """Score, evaluate and report every pair; returns 0, or 1 if a metric could not be built or run.

    ``batch_size`` images are decoded (in ``num_workers`` processes, default one per CPU, at most
    4) and scored together, as by ``pyiqa-maclip score``; neither changes a score.

    Every dataset's (image, MOS) list is read, and the output folder checked, before any
    scoring, so a wrong path fails at once
    (:class:`~pyiqa_maclip.app.benchmark.config.BenchmarkConfigError`).
    """
    loading = loading_options(batch_size, num_workers, pixel_budget)
    layout = Layout(Path(output_dir))
    items = {spec.name: load_items(spec) for spec in config.datasets}
    for spec in config.datasets:
        source = spec.mos if spec.kind == 'custom' else f"pyiqa's list of {spec.pyiqa}"
        count = len(items[spec.name])
        log(f'{spec.name}: {count} image{"s" * (count != 1)} with their MOS read from {source}')
    _check_writable(layout.root)
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    digests = {name: items_digest(value) for name, value in items.items()}
    pairs: dict[tuple[str, str], Pair] = {}
    status = 0
    for group in _groups(config.metrics):
        names = ', '.join(m.name for m in group)
        try:
            recipe = Recipe(group[0].pyiqa_name, group[0].options)
            fingerprint = recipe.fingerprint
        # The weights cannot be resolved (missing file, no download): the metric cannot be built.
        except (OSError, ValueError) as error:
            log(f'error: cannot build metric {names}: {one_line(error)}')
            status = 1
            continue
        pairs.update({(m.name, d.name): Pair(m, d, pair_key(m, d, digests[d.name], fingerprint))
                      for m in group for d in config.datasets})
        todo = {d.name: [m for m in group if force or not layout.is_complete(pairs[m.name, d.name])]
                for d in config.datasets}
        for dataset, metrics in todo.items():
            for metric in group:
                if metric not in metrics:
                    log(f'{metric.name} on {dataset}: complete, skipped')
        if not any(todo.values()):
            continue
        try:
            scorer = _build(recipe, group[0], str(device))
        # create_metric fails in many ways (assert, download, bad option): report it, run the rest.
        except Exception as error:  # noqa: BLE001
            log(f'error: cannot build metric {names}: {one_line(error)}')
            status = 1
            continue
        for spec in config.datasets:
            if not todo[spec.name]:
                continue
            start = time.perf_counter()
            results = _score_dataset(layout, scorer, fingerprint, spec, items[spec.name], device, force,
                                     f'{names[:40]} | {spec.name}', loading)
            seconds = time.perf_counter() - start
            for metric in todo[spec.name]:
                frame = pair_table(items[spec.name], results, metric, scorer.columns)
                _write_pair(layout, pairs[metric.name, spec.name], frame, seconds)
                failed = int((frame['error'] != '').sum())
                first = '' if not failed else f'; first failure: {frame.loc[frame["error"] != "", "error"].iloc[0]}'
                log(f'{metric.name} on {spec.name}: {len(frame) - failed} scored, {failed} failed{first}')
        del scorer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    complete = [pair for pair in pairs.values() if layout.is_complete(pair)]
    log(f'evaluating {len(complete)} pairs: correlations, {RESAMPLES} bootstrap resamples, comparisons')
    results = [load_result(layout, pair) for pair in complete]
    summary = summarise(results)
    comparisons = compare_metrics([result.evaluated() for result in results])
    _write_text(layout.root / 'summary.csv', spreadsheet_csv(summary, _TEXT_COLUMNS))
    _write_text(layout.root / 'comparisons.csv', spreadsheet_csv(comparisons, _TEXT_COLUMNS))
    _write_text(layout.root / 'summary.md', markdown_summary(summary, comparisons))
    write_plots(layout, results, summary)
    log(f'summary of {len(results)} of {len(config.metrics) * len(config.datasets)} pairs: '
        f'{layout.root / "summary.csv"}')
    return status
