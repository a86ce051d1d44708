"""Run every (metric, dataset) pair of a configuration, resumably, and write the report.

Output directory layout::

    summary.csv, summary.md            one row per metric and dataset (complete pairs), intervals
    comparisons.csv                    every two metrics on each dataset: differences, p-values
    scores/<metric>/<dataset>.csv      per image: image, mos, prediction, error (+ MA-CLIP components)
    plots/<metric>/scatter_<dataset>.png, plots/<metric>/qsim_qmag_<dataset>.png, plots/srcc_bars.png
    journal/<fingerprint>.sqlite3      finished images of one model on one dataset's preprocessing
    journal/outputs.sqlite3            every file above as written (size, time, SHA-256): what a rerun may replace

Images are scored by the collection engine (:func:`pyiqa_maclip.app.engine.score_into`):
decoding workers under a pixel budget, batches, strict decoding, and a journal committed
per batch. The journals are the only record of scores: a pair is complete when the journal of its
model (the metric's fingerprint: options, weights, versions) and preprocessing holds a
result for every image of the dataset, so an interrupted run resumes image by image and
a changed option scores again. Metrics that build the same model (variants differing only
in ``component:``) share one journal. Everything else is an export of the journals and
the MOS tables, rebuilt at the end of every run.
"""
from __future__ import annotations

import dataclasses
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
from ...names import COMPONENTS, is_maclip
from ..engine import loading_options, score_into
from ..images import DEFAULT_PIXEL_BUDGET
from ..journal import Journal, JournalError
from ..sources.files import samples_of
from ..scorers import Recipe
from .specs import BenchmarkConfig, DatasetSpec, MetricSpec
from .datasets import Item, load_items
from .evaluation import Agreement, evaluate
from .html import html_summary
from .outputs import Layout, OutputInTheWay, OutputRecord
from .plots import plot_qsim_qmag, plot_scatter, plot_srcc_bars
from .statistics import RESAMPLES, Intervals, correlation_intervals
from .tables import (
    SUMMARY_COLUMNS, Evaluated, compare_metrics, from_spreadsheet_text, markdown_summary, spreadsheet_csv,
    summary_sections,
)

__all__ = ['SUMMARY_COLUMNS', 'Pair', 'run_benchmark', 'with_precision', 'read_scores', 'pair_table', 'summarise',
           'report', 'draw_plots']

_TEXT_COLUMNS = ('image', 'error', 'metric', 'dataset', 'metric_a', 'metric_b', 'note')


@dataclass(frozen=True)
class Pair:
    """One metric on one dataset."""

    metric: MetricSpec
    dataset: DatasetSpec

    @property
    def sign(self) -> int:
        """-1 when the prediction is negated so that agreement with the MOS is positive."""
        return -1 if self.metric.lower_better != self.dataset.mos_lower_better else 1


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


def _pair_csv(frame: pd.DataFrame) -> bytes:
    # CRLF rows: a CR inside an image name is then quoted too (RFC 4180).
    return spreadsheet_csv(frame, _TEXT_COLUMNS, lineterminator='\r\n').encode('utf-8')


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """A per-image table as written: ``error`` is '' where the image was scored; image names
    as in the MOS table (the ``'`` that keeps a spreadsheet from running them removed)."""
    # Only the numeric columns read '' (how NaN is written) as missing: an image may be named 'NA'.
    numeric = {column: [''] for column in ('mos', 'prediction', *COMPONENTS)}
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


def evaluate_pair(pair: Pair, frame: pd.DataFrame, seconds: float) -> PairResult:
    """Evaluate a pair's per-image table (successful images only, prediction times the pair's sign)."""
    scored = frame[frame['error'] == '']
    signed, mos = _signed(pair, scored), scored['mos'].to_numpy(float)
    intervals, replicates = correlation_intervals(signed, mos)
    return PairResult(pair, frame, evaluate(signed, mos), seconds, intervals, replicates)


def summarise(results: Sequence[PairResult]) -> pd.DataFrame:
    return pd.DataFrame([r.row() for r in results], columns=list(SUMMARY_COLUMNS))


def _labels(pair: Pair) -> tuple[str, str]:
    """Axis labels of the prediction and the MOS, saying what was negated."""
    what = pair.metric.name if pair.metric.component == 'score' else f'{pair.metric.name} ({pair.metric.component})'
    prediction = f'−{what} (negated)' if pair.sign < 0 else what
    return prediction, 'MOS (lower is better)' if pair.dataset.mos_lower_better else 'MOS'


def draw_plots(layout: Layout, results: Sequence[PairResult],
               summary: pd.DataFrame) -> tuple[dict[Path, bytes], dict[Path, str]]:
    """Every figure of the run as PNG bytes by the path it goes to, and the figures that could not be
    drawn (numbers matplotlib cannot place on an axis, such as a range past 1e308), with the reason."""
    drawn, failed = {}, {}

    def draw(path: Path, plot, *args, **options) -> None:
        try:
            with np.errstate(over='ignore', invalid='ignore'):  # matplotlib's ticks of such numbers
                drawn[path] = plot(*args, **options)
        except (OverflowError, ValueError) as error:  # ... and the error they end in
            failed[path] = one_line(error)

    for result in results:
        pair, scored = result.pair, result.scored
        metric, dataset = pair.metric.name, pair.dataset.name
        x_label, mos_label = _labels(pair)
        title = f'{metric} on {dataset}'
        draw(layout.scatter(metric, dataset), plot_scatter, result.signed, scored['mos'].to_numpy(float),
             result.agreement, title=title, x_label=x_label, mos_label=mos_label)
        if {'q_sim', 'q_mag'} <= set(scored.columns):
            draw(layout.qsim_qmag(metric, dataset), plot_qsim_qmag, scored['q_sim'].to_numpy(float),
                 scored['q_mag'].to_numpy(float), scored['mos'].to_numpy(float), title=f'Q_sim vs Q_mag: {title}',
                 mos_label=mos_label)
    if len(summary):
        draw(layout.bars, plot_srcc_bars, summary)
    return drawn, failed


def report(results: Sequence[PairResult]) -> dict[str, object]:
    """The run's tables, by name: ``summary`` and ``comparisons`` (frames: one row per pair, one per two
    metrics on a dataset) and ``summary.md`` (their text)."""
    summary = summarise(results)
    comparisons = compare_metrics([result.evaluated() for result in results])
    return {'summary': summary, 'comparisons': comparisons, 'summary.md': markdown_summary(summary, comparisons)}


def _report_files(layout: Layout, tables: dict, drawn: dict[Path, bytes]) -> dict[Path, bytes]:
    """The table files, and summary.html: the same sections with the figures drawn."""
    summary_csv, comparisons_csv, summary_md, summary_html = layout.tables
    figures = {str(path.relative_to(layout.root)): png for path, png in drawn.items()}
    page = html_summary(summary_sections(tables['summary'], tables['comparisons']), figures,
                        f'Benchmark summary: {layout.root.name}')
    return {summary_csv: spreadsheet_csv(tables['summary'], _TEXT_COLUMNS).encode('utf-8'),
            comparisons_csv: spreadsheet_csv(tables['comparisons'], _TEXT_COLUMNS).encode('utf-8'),
            summary_md: tables['summary.md'].encode('utf-8'), summary_html: page.encode('utf-8')}


def _groups(metrics: Sequence[MetricSpec]) -> list[list[MetricSpec]]:
    """Metrics that build the same model, in configuration order."""
    groups: dict[str, list[MetricSpec]] = {}
    for metric in metrics:
        groups.setdefault(metric.build_key(), []).append(metric)
    return list(groups.values())


def _is_maclip(metric: MetricSpec) -> bool:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return is_maclip(DEFAULT_CONFIGS[metric.pyiqa_name]['metric_opts'])


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


def _score_dataset(layout: Layout, recipe: Recipe, build: Callable[[], object], spec: DatasetSpec,
                   items: Sequence[Item], device: torch.device, description: str, loading: dict,
                   discard: set[Path]) -> tuple[dict, float, bool]:
    """Score the dataset's images that the journal of (model, preprocessing) lacks. Returns every
    image's result, the seconds spent scoring them over all runs, and whether anything was left
    to score. A journal in ``discard`` (``--force``) is emptied first, once."""
    fingerprint = {**recipe.fingerprint, 'resize': spec.resize, 'resize_mode': spec.resize_mode}
    file = layout.journal(fingerprint)
    file.parent.mkdir(parents=True, exist_ok=True)
    if file in discard:
        discard.discard(file)
        file.unlink(missing_ok=True)
    samples = samples_of([item.image for item in items])
    with Journal.create(file, fingerprint, recipe.columns, advice='recompute it with --force') as journal:
        finished = journal.finished()
        pending = [s for s in samples if (s.source, s.key) not in finished]
        if pending:
            scorer = build()
            start = time.perf_counter()
            with tqdm(total=len(samples), initial=len(samples) - len(pending), desc=description, unit='img',
                      dynamic_ncols=True) as bar:
                try:
                    score_into(journal, pending, scorer, device, **loading, resize=spec.resize,
                               resize_mode=spec.resize_mode, bar=bar)
                finally:
                    journal.add_seconds(time.perf_counter() - start)
        return {result.key: result for result in journal.results(samples)}, journal.seconds, bool(pending)


def run_benchmark(config: BenchmarkConfig, output_dir: str | os.PathLike, *, device: str | None = None,
                  force: bool = False, batch_size: int = 8, num_workers: int | None = None,
                  pixel_budget: int = DEFAULT_PIXEL_BUDGET, log: Callable[[str], object] = print) -> int:
    """Score, evaluate and report every pair; returns 0, or 1 if a metric could not be built or run.

    ``batch_size`` images are decoded (in ``num_workers`` processes, default one per CPU, at most
    4, the images in flight under ``pixel_budget`` pixels) and scored together, as by
    ``pyiqa-maclip score``; none of these changes a score. ``force`` scores every image again.

    Every dataset's (image, MOS) list is read, and the output folder checked, before any
    scoring, so a wrong path fails at once
    (:class:`~pyiqa_maclip.app.benchmark.specs.BenchmarkConfigError`).
    """
    loading = loading_options(batch_size, num_workers, pixel_budget)
    layout = Layout(output_dir)
    layout.check([m.name for m in config.metrics], [d.name for d in config.datasets])
    record = OutputRecord(layout.journals)
    items = {spec.name: load_items(spec) for spec in config.datasets}
    for spec in config.datasets:
        source = spec.mos if spec.kind == 'custom' else f"pyiqa's list of {spec.pyiqa}"
        count = len(items[spec.name])
        log(f'{spec.name}: {count} image{"s" * (count != 1)} with their MOS read from {source}')
    layout.root.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    results: list[PairResult] = []
    status = 0
    for group in _groups(config.metrics):
        names = ', '.join(m.name for m in group)
        scorer = None

        def build():
            nonlocal scorer
            if scorer is None:
                scorer = _build(recipe, group[0], str(device))
            return scorer

        try:
            recipe = Recipe(group[0].pyiqa_name, group[0].options)
            discard = {layout.journal({**recipe.fingerprint, 'resize': d.resize, 'resize_mode': d.resize_mode})
                       for d in config.datasets} if force else set()
            for spec in config.datasets:
                found, seconds, scored = _score_dataset(layout, recipe, build, spec, items[spec.name], device,
                                                        f'{names[:40]} | {spec.name}', loading, discard)
                for metric in group:
                    pair = Pair(metric, spec)
                    frame = pair_table(items[spec.name], found, metric, recipe.columns)
                    record.write({layout.scores_csv(metric.name, spec.name): _pair_csv(frame)})
                    results.append(evaluate_pair(pair, frame, seconds))
                    failed = int((frame['error'] != '').sum())
                    first = '' if not failed else f'; first failure: {frame.loc[frame["error"] != "", "error"].iloc[0]}'
                    done = '' if scored else 'complete, skipped: '
                    log(f'{metric.name} on {spec.name}: {done}{len(frame) - failed} scored, {failed} failed{first}')
        except (JournalError, OutputInTheWay):  # the results folder itself: nothing else can go on
            raise
        # The metric cannot be built, or its weights had (a missing file, no download, a bad option): report
        # it, run the rest. create_metric fails in many ways (assert, download, bad option).
        except Exception as error:  # noqa: BLE001
            log(f'error: cannot build metric {names}: {one_line(error)}')
            status = 1
        del scorer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    log(f'evaluating {len(results)} pairs: correlations, {RESAMPLES} bootstrap resamples, comparisons')
    tables = report(results)
    drawn, failed = draw_plots(layout, results, tables['summary'])
    record.write({**_report_files(layout, tables, drawn), **drawn})
    record.remove(failed)  # an earlier run's figure of other numbers
    for path, reason in failed.items():
        log(f'{path}: not drawn ({reason}); the numbers are in summary.csv')
    log(f'summary of {len(results)} of {len(config.metrics) * len(config.datasets)} pairs: '
        f'{layout.root / "summary.csv"}')
    return status
