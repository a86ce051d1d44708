"""PNG figures of a benchmark run (as bytes), drawn with matplotlib's object API (no pyplot, no GUI backend).

* :func:`plot_scatter`: MOS against the prediction with the fitted logistic (the paper's Fig. 5).
* :func:`plot_qsim_qmag`: Q_sim against Q_mag, coloured by MOS (the paper's Fig. 1b).
* :func:`plot_srcc_bars`: SRCC of every metric on every dataset, with its bootstrap interval;
  hatched bars (and †) where the prediction was negated.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .evaluation import Agreement

__all__ = ['plot_scatter', 'plot_qsim_qmag', 'plot_srcc_bars']

_DPI = 120


def _save(figure: Figure) -> bytes:
    """The figure as PNG bytes (the runner writes and records them), then cleared: its artists refer
    to one another, so cleared, their data is freed now rather than at the next full collection."""
    png = io.BytesIO()
    figure.savefig(png, format='png', dpi=_DPI, bbox_inches='tight')
    figure.clear()
    return png.getvalue()


def _number(value: float) -> str:
    return 'n/a' if value is None or math.isnan(value) else f'{value:.4f}'


def plot_scatter(prediction: np.ndarray, mos: np.ndarray, agreement: Agreement, *,
                 title: str, x_label: str, mos_label: str = 'MOS') -> bytes:
    """MOS against the (sign-adjusted) prediction, with the fitted logistic curve if there is one."""
    figure = Figure(figsize=(5.5, 4.5))
    axes = figure.add_subplot()
    axes.scatter(prediction, mos, s=12, alpha=0.6, edgecolors='none', label='images')
    if agreement.fit.params is not None and len(prediction):
        x = np.linspace(np.min(prediction), np.max(prediction), 1000)
        problems = agreement.fit.problems
        label = '5-parameter logistic fit' + (f': {" and ".join(problems).upper()}' if problems else '')
        axes.plot(x, agreement.fit(x), color='tab:orange' if problems else 'tab:red', linewidth=2,
                  linestyle='--' if problems else '-', label=label)
        if problems:
            # Said on the curve itself, at the sigmoid's centre: the step, or between the turns.
            centre = float(np.clip(agreement.fit.params[2], x[0], x[-1]))
            axes.annotate(f'fit is {" and ".join(problems)}:\nPLCC (logistic) not to be trusted, see note',
                          xy=(centre, float(agreement.fit(centre))), xytext=(0.98, 0.04), textcoords='axes fraction',
                          ha='right', va='bottom', fontsize=8, color='tab:orange',
                          arrowprops={'arrowstyle': '->', 'color': 'tab:orange'},
                          bbox={'boxstyle': 'round', 'facecolor': 'white', 'edgecolor': 'tab:orange'})
        axes.legend(loc='best', fontsize=8)
    axes.set_xlabel(x_label)
    axes.set_ylabel(mos_label)
    axes.set_title(title, fontsize=10)
    stats = (f'n = {agreement.n}\nSRCC = {_number(agreement.srcc)}\nPLCC = {_number(agreement.plcc)}\n'
             f'PLCC (logistic) = {_number(agreement.plcc_logistic)}')
    axes.text(0.02, 0.98, stats, transform=axes.transAxes, va='top', fontsize=8,
              bbox={'boxstyle': 'round', 'facecolor': 'white', 'alpha': 0.8})
    axes.grid(alpha=0.3)
    return _save(figure)


def plot_qsim_qmag(q_sim: np.ndarray, q_mag: np.ndarray, mos: np.ndarray, *,
                   title: str, mos_label: str = 'MOS') -> bytes:
    """Q_sim against Q_mag of each image, coloured by its MOS."""
    figure = Figure(figsize=(5.5, 4.5))
    axes = figure.add_subplot()
    points = axes.scatter(q_sim, q_mag, c=mos, cmap='viridis', s=14, alpha=0.8, edgecolors='none')
    figure.colorbar(points, ax=axes, label=mos_label)
    axes.set_xlabel('Q_sim (prompt similarity)')
    axes.set_ylabel('Q_mag (feature magnitude)')
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    return _save(figure)


def plot_srcc_bars(summary: pd.DataFrame) -> bytes:
    """Grouped bars: one group per dataset, one bar per metric, signed SRCC with its bootstrap
    interval (``srcc_low``, ``srcc_high``); bars of negated predictions hatched and marked †."""
    def table(value: str) -> pd.DataFrame:
        pivot = summary.pivot(index='dataset', columns='metric', values=value)
        return pivot.reindex(index=pd.unique(summary['dataset']), columns=pd.unique(summary['metric']))

    srcc, low, high = table('srcc'), table('srcc_low'), table('srcc_high')
    flipped = table('flipped').fillna(False).astype(bool)
    datasets, metrics = list(srcc.index), list(srcc.columns)
    width = 0.8 / max(1, len(metrics))
    figure = Figure(figsize=(max(6.0, 1.5 + len(datasets) * (0.35 * len(metrics) + 0.6)), 4.5))
    axes = figure.add_subplot()
    positions = np.arange(len(datasets))
    for i, metric in enumerate(metrics):
        values = srcc[metric].to_numpy(dtype=float)
        where = positions + (i - (len(metrics) - 1) / 2) * width
        bars = axes.bar(where, np.nan_to_num(values), width, label=metric)
        # The interval as drawn from its ends: a percentile interval need not contain the estimate.
        lows, highs = low[metric].to_numpy(dtype=float), high[metric].to_numpy(dtype=float)
        known = ~np.isnan(lows)
        axes.vlines(where[known], lows[known], highs[known], color='black', linewidth=0.8)
        for end in (lows, highs):
            axes.hlines(end[known], where[known] - width / 5, where[known] + width / 5, color='black', linewidth=0.8)
        for bar, value, negated in zip(bars, values, flipped[metric]):
            if negated:
                bar.set_hatch('//')
                axes.annotate('†', (bar.get_x() + bar.get_width() / 2, np.nan_to_num(value)), ha='center',
                              va='bottom' if np.nan_to_num(value) >= 0 else 'top', fontsize=9,
                              xytext=(0, 2), textcoords='offset points')
    axes.axhline(0, color='black', linewidth=0.8)
    axes.set_xticks(positions, datasets)
    axes.set_ylabel('SRCC')
    axes.set_title('SRCC per metric and dataset, with 95% bootstrap intervals\n'
                   '(signed; hatched, †: prediction negated, as exactly one of metric and MOS is lower-is-better)',
                   fontsize=10)
    axes.grid(axis='y', alpha=0.3)
    axes.legend(fontsize=8, ncol=max(1, math.ceil(len(metrics) / 12)), loc='upper left', bbox_to_anchor=(1.01, 1))
    return _save(figure)
