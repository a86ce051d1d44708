"""The tables of a benchmark run, as data and text: comparisons between metrics, summary.md,
and CSV cells that a spreadsheet shows as text instead of running them.

Pure functions of what was evaluated (names, signed predictions, MOS, bootstrap replicates);
writing the files is the runner's.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .statistics import LEVEL, RESAMPLES, SEED, compare

__all__ = [
    'SUMMARY_COLUMNS', 'COMPARISON_COLUMNS', 'FLIP_MARK', 'FIT_MARK', 'Evaluated', 'compare_metrics',
    'summary_sections', 'markdown_summary', 'spreadsheet_text', 'from_spreadsheet_text', 'spreadsheet_csv',
]

SUMMARY_COLUMNS = (
    'metric', 'dataset', 'n', 'srcc', 'srcc_low', 'srcc_high', 'krcc', 'krcc_low', 'krcc_high',
    'plcc', 'plcc_low', 'plcc_high', 'plcc_logistic', 'rmse_logistic', 'fit_problem', 'n_failed', 'seconds',
    'flipped', 'metric_lower_better', 'mos_lower_better', 'note',
)
COMPARISON_COLUMNS = (
    'dataset', 'metric_a', 'metric_b', 'n', 'n_excluded',
    'srcc_a', 'srcc_b', 'srcc_diff', 'srcc_diff_low', 'srcc_diff_high', 'srcc_p',
    'plcc_a', 'plcc_b', 'plcc_diff', 'plcc_diff_low', 'plcc_diff_high', 'plcc_p',
    'flipped_a', 'flipped_b', 'note',
)
FLIP_MARK = '†'
FIT_MARK = '‡'
ALPHA = 0.05
#: What a spreadsheet runs as a formula when a cell starts with it (OWASP, "CSV Injection"),
#: and the quote that marks a cell as escaped, so that escaping can be undone.
_FORMULA_STARTS = ('=', '+', '-', '@', '\t', '\r', "'")


# ---------------------------------------------------------------- spreadsheet-safe CSV text


def spreadsheet_text(value):
    """Text that starts like a formula (``= + - @``, tab, CR) or with ``'``, with a ``'`` in front;
    anything else (numbers included) as it is."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_STARTS) else value


def from_spreadsheet_text(value):
    """The inverse of :func:`spreadsheet_text`."""
    return value[1:] if isinstance(value, str) and value.startswith("'") else value


def spreadsheet_csv(frame: pd.DataFrame, text_columns: Sequence[str], **options) -> str:
    """``frame.to_csv(index=False)`` with the text columns escaped by :func:`spreadsheet_text`."""
    escaped = frame.assign(**{c: frame[c].map(spreadsheet_text) for c in text_columns if c in frame})
    return escaped.to_csv(index=False, **options)


# ---------------------------------------------------------------- comparisons between metrics


@dataclass(frozen=True)
class Evaluated:
    """One metric on one dataset: the images it scored (in the dataset's order), its predictions
    (already signed: negated where ``flipped``), their MOS, and bootstrap replicates over exactly
    these images if they were computed (by ``statistics.correlation_intervals`` with its default
    resamples and seed, which :func:`compare_metrics` uses too)."""

    metric: str
    dataset: str
    images: Sequence[str]
    prediction: np.ndarray
    mos: np.ndarray
    flipped: bool = False
    replicates: Mapping[str, np.ndarray] = field(default_factory=dict)


def _reusable(entry: Evaluated, positions: np.ndarray) -> Mapping | None:
    """The entry's replicates if the compared images are all its images, in its order."""
    whole = len(positions) == len(entry.images) and np.array_equal(positions, np.arange(len(positions)))
    return entry.replicates if whole and {'srcc', 'plcc'} <= set(entry.replicates) else None


def compare_metrics(entries: Sequence[Evaluated]) -> pd.DataFrame:
    """Every pair of metrics on each dataset (a before b in the entries' order): SRCC and PLCC of
    a minus b on the images both scored, paired-bootstrap intervals and p-values (``RESAMPLES``
    resamples, ``SEED``)."""
    rows = []
    datasets = list(dict.fromkeys(e.dataset for e in entries))
    for dataset in datasets:
        group = [e for e in entries if e.dataset == dataset]
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                where_b = {image: k for k, image in enumerate(b.images)}
                in_a = np.array([k for k, image in enumerate(a.images) if image in where_b], dtype=np.intp)
                in_b = np.array([where_b[a.images[k]] for k in in_a], dtype=np.intp)
                excluded = len(a.images) + len(b.images) - 2 * len(in_a)
                result = compare(np.asarray(a.prediction)[in_a], np.asarray(b.prediction)[in_b],
                                 np.asarray(a.mos)[in_a], replicates_a=_reusable(a, in_a),
                                 replicates_b=_reusable(b, in_b))
                notes = [result.note] if result.note else []
                if excluded:
                    notes.insert(0, f'{excluded} image{"s" * (excluded != 1)} scored by only one of the two '
                                    'metrics left out')
                rows.append({**result.as_row(), 'dataset': dataset, 'metric_a': a.metric, 'metric_b': b.metric,
                             'n_excluded': excluded, 'flipped_a': a.flipped, 'flipped_b': b.flipped,
                             'note': '; '.join(notes)})
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


# ---------------------------------------------------------------- summary.md


def cell_text(value) -> str:
    """A table cell as text: yes/no, 4 decimals, n/a for NaN."""
    if isinstance(value, (bool, np.bool_)):
        return 'yes' if value else 'no'
    if isinstance(value, (float, np.floating)):
        return 'n/a' if math.isnan(value) else f'{value:.4f}'
    return str(value)


def _markdown_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        return cell_text(value).replace('|', '\\|')

    lines = ['| ' + ' | '.join(map(cell, frame.columns)) + ' |', '|' + '---|' * len(frame.columns)]
    lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in frame.itertuples(index=False)]
    return '\n'.join(lines)


def _interval(low: float, high: float) -> str:
    return '' if math.isnan(low) else f' [{low:.4f}, {high:.4f}]'


def _pivot(summary: pd.DataFrame, cells: Sequence[str]) -> pd.DataFrame:
    table = summary.assign(cell=list(cells)).pivot(index='metric', columns='dataset', values='cell')
    table = table.reindex(index=pd.unique(summary['metric']), columns=pd.unique(summary['dataset'])).fillna('')
    return table.reset_index()


def _marks(row, fit: bool) -> str:
    """The dagger where the prediction was negated; with ``fit`` (the logistic-PLCC table), the
    double dagger where the fit is flagged."""
    flagged = fit and isinstance(row.fit_problem, str) and bool(row.fit_problem)
    return (f' {FLIP_MARK}' if row.flipped else '') + (f' {FIT_MARK}' if flagged else '')


def _level() -> str:
    return f'{LEVEL:.0%}'


def _p(value: float) -> str:
    return 'n/a' if math.isnan(value) else f'{value:.3f}'


def _name(metric: str, flipped: bool) -> str:
    return f'{metric}{" " + FLIP_MARK if flipped else ""}'


def _comparison_words(comparisons: pd.DataFrame) -> str:
    significant, other, untested = [], [], []
    for row in comparisons.itertuples(index=False):
        for statistic, label in (('srcc', 'SRCC'), ('plcc', 'PLCC')):
            diff, p = getattr(row, f'{statistic}_diff'), getattr(row, f'{statistic}_p')
            pair = f'{label} of {row.metric_a} and {row.metric_b} on {row.dataset}'
            if math.isnan(p):
                untested.append(pair)
            elif p < ALPHA:
                higher, lower = (row.metric_a, row.metric_b) if diff > 0 else (row.metric_b, row.metric_a)
                significant.append(
                    f'- on {row.dataset}, the {label} of {higher} is higher than that of {lower} by {abs(diff):.4f} '
                    f'({_level()} interval of {row.metric_a} − {row.metric_b}: '
                    f'[{getattr(row, f"{statistic}_diff_low"):.4f}, {getattr(row, f"{statistic}_diff_high"):.4f}], '
                    f'p = {_p(p)}, {row.n} images)')
            else:
                other.append(f'{pair} (p = {_p(p)})')
    tests = len(comparisons) * 2 - len(untested)
    parts = [(f'Significant at {ALPHA} (two-sided; {tests} tests in this table, none adjusted for the others: '
              f'at {ALPHA}, about {ALPHA * tests:.1f} of them would come out significant by chance if no metric '
              'differed):')]
    parts.append('\n'.join(significant) if significant else '- none')
    if other:
        parts.append(f'Not significant at {ALPHA}: ' + '; '.join(other) + '.')
    if untested:
        parts.append('Not tested (too few images, or constant predictions or MOS in resamples; see `note`): '
                     + '; '.join(untested) + '.')
    return '\n\n'.join(parts)


def _comparison_table(comparisons: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in comparisons.itertuples(index=False):
        cells = {'dataset': row.dataset, 'a': _name(row.metric_a, row.flipped_a),
                 'b': _name(row.metric_b, row.flipped_b), 'n': row.n}
        for statistic, label in (('srcc', 'SRCC'), ('plcc', 'PLCC')):
            low, high = getattr(row, f'{statistic}_diff_low'), getattr(row, f'{statistic}_diff_high')
            cells[f'{label} a − b [{_level()}]'] = f'{cell_text(getattr(row, f"{statistic}_diff"))}{_interval(low, high)}'
            cells[f'{label} p'] = _p(getattr(row, f'{statistic}_p'))
        cells['note'] = row.note
        rows.append(cells)
    return pd.DataFrame(rows)


def summary_sections(summary: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> list[tuple[str, list]]:
    """The summary as (heading, blocks) sections, each block a paragraph of text (markdown: `code`,
    ``- `` items) or a frame: SRCC (with intervals) and logistic-PLCC tables, the comparisons between
    metrics in numbers and words, then every number. summary.md and summary.html render the same sections."""
    full = summary.assign(seconds=summary['seconds'].round(1).astype(str))
    srcc = [f'{cell_text(r.srcc)}{_interval(r.srcc_low, r.srcc_high)}{_marks(r, fit=False)}' for r in summary.itertuples()]
    plcc = [f'{cell_text(r.plcc_logistic)}{_marks(r, fit=True)}' for r in summary.itertuples()]
    sections = [
        ('Benchmark summary', [
            (f'{FLIP_MARK} the prediction was negated before correlating, because exactly one of metric '
             'and MOS is lower-is-better (columns `metric_lower_better`, `mos_lower_better`); no absolute '
             f'values are taken anywhere. {FIT_MARK} (PLCC table) the logistic fit is a step or not monotone '
             '(see `note`): its PLCC and RMSE are those of the official protocol, and may flatter the metric. '
             '`n` counts the images scored; `n_failed` those that could not be read or scored or gave a '
             'non-finite prediction (see the `error` column of scores/*.csv).'),
            (f'Intervals in brackets are {_level()} percentile bootstrap intervals: the images are resampled '
             f'with replacement {RESAMPLES} times (seed {SEED}, so a rerun gives the same numbers); `srcc_low`, '
             '`srcc_high`, `krcc_low`, ... in the table of all numbers. `plcc` is the raw Pearson correlation; '
             '`plcc_logistic` (the paper\'s PLCC) has no interval, as the fit would have to be redone per '
             'resample.')]),
        (f'SRCC [{_level()} interval]', [_pivot(summary, srcc)]),
        ('PLCC after the 5-parameter logistic fit', [_pivot(summary, plcc)]),
    ]
    if comparisons is not None and len(comparisons):
        sections.append(('Differences between metrics', [
            (f'SRCC and PLCC (raw) of metric a minus metric b, on the images both scored (`n`), with their '
             f'{_level()} paired-bootstrap interval (the same resampled images for both metrics) and a '
             'two-sided p-value: twice the share of resampled differences on the other side of 0 from the '
             'observed one (below 0.05 exactly when 0 is outside the interval, up to one resample). '
             'Predictions are signed as in the tables above.'),
            _comparison_table(comparisons),
            *_comparison_words(comparisons).split('\n\n'),
        ]))
    sections.append(('All numbers', [full]))
    return sections


def markdown_summary(summary: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> str:
    """summary.md: :func:`summary_sections` in markdown."""
    parts = []
    for level, (heading, blocks) in enumerate(summary_sections(summary, comparisons)):
        parts.append(f'{"#" if level == 0 else "##"} {heading}')
        parts += [_markdown_table(block) if isinstance(block, pd.DataFrame) else block for block in blocks]
    return '\n\n'.join(parts) + '\n'
