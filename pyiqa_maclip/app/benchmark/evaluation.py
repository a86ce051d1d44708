"""Agreement of predictions with human opinion scores, as in MA-CLIP's official evaluation.

SRCC and KRCC are rank correlations of the raw predictions; PLCC is reported twice,
raw and after the 5-parameter logistic mapping of VQEG (the official
``plcc_srcc_cal.py``), which also gives the RMSE. All functions are pure: they take
the finite predictions and MOS of the images that were scored and return numbers.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

__all__ = ['MIN_IMAGES', 'MIN_IMAGES_FIT', 'Agreement', 'LogisticFit', 'logistic_5', 'fit_logistic', 'evaluate']

MIN_IMAGES = 3  # below this no correlation means anything
MIN_IMAGES_FIT = 5  # the logistic has 5 parameters
MAXFEV = 10000  # as the official evaluation


def logistic_5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """The VQEG mapping ``b1 * (0.5 - 1 / (1 + exp(b2 (x - b3)))) + b4 x + b5``."""
    with np.errstate(over='ignore'):
        return b1 * (0.5 - 1.0 / (1.0 + np.exp(b2 * (x - b3)))) + b4 * x + b5


@dataclass(frozen=True)
class LogisticFit:
    """Fitted parameters (b1..b5), or ``None`` with the reason the fit failed."""

    params: tuple[float, ...] | None
    note: str = ''

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.params is None:
            return np.full(np.shape(x), np.nan)
        return logistic_5(np.asarray(x, dtype=float), *self.params)


def fit_logistic(prediction: np.ndarray, mos: np.ndarray) -> LogisticFit:
    """Fit :func:`logistic_5` from predictions to MOS with the official initial guess.

    The guess is ``[max(mos), min(mos), mean(prediction), 0.1, 0.1]`` and
    ``curve_fit`` may evaluate the function 10000 times. Never raises: a failed or
    non-finite fit comes back with ``params=None`` and a note.
    """
    x, y = np.asarray(prediction, dtype=float), np.asarray(mos, dtype=float)
    if len(x) < MIN_IMAGES_FIT:
        return LogisticFit(None, f'logistic fit needs at least {MIN_IMAGES_FIT} images, got {len(x)}')
    guess = [np.max(y), np.min(y), np.mean(x), 0.1, 0.1]
    with warnings.catch_warnings():
        # No covariance estimate is no failure: only the parameters are used.
        warnings.simplefilter('ignore', optimize.OptimizeWarning)
        try:
            params, _ = optimize.curve_fit(logistic_5, x, y, p0=guess, maxfev=MAXFEV)
        except (RuntimeError, ValueError, TypeError, FloatingPointError) as error:
            return LogisticFit(None, f'logistic fit failed: {error}')
    fit = LogisticFit(tuple(float(p) for p in params))
    if not np.all(np.isfinite(fit(x))):
        return LogisticFit(None, 'logistic fit failed: non-finite fitted values')
    return fit


@dataclass(frozen=True)
class Agreement:
    """Agreement of n predictions with MOS; NaN where undefined, with the reason in ``note``."""

    n: int
    srcc: float
    krcc: float
    plcc: float
    plcc_logistic: float
    rmse_logistic: float
    fit: LogisticFit
    note: str = ''

    def as_row(self) -> dict:
        """The numbers (and note) as a flat dict, without the fit."""
        row = asdict(self)
        del row['fit']
        return row


def _statistic(function, x: np.ndarray, y: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # constant input: the statistic is NaN, reported by the caller
        return float(function(x, y)[0])


def evaluate(prediction: np.ndarray, mos: np.ndarray) -> Agreement:
    """SRCC, KRCC, raw PLCC, and PLCC/RMSE after the logistic fit, of finite predictions vs MOS.

    Predictions are taken as given (higher = better quality expected): a caller
    negates lower-is-better metrics first, so the signs of the numbers are kept.
    """
    x, y = np.asarray(prediction, dtype=float), np.asarray(mos, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f'prediction and mos must be 1-D of the same length, got {x.shape} and {y.shape}')
    nan = float('nan')
    if len(x) < MIN_IMAGES:
        note = f'correlations need at least {MIN_IMAGES} images, got {len(x)}'
        return Agreement(len(x), nan, nan, nan, nan, nan, LogisticFit(None, note), note)
    notes = []
    if np.ptp(x) == 0:
        notes.append('constant prediction')
    srcc = _statistic(stats.spearmanr, x, y)
    krcc = _statistic(stats.kendalltau, x, y)
    plcc = _statistic(stats.pearsonr, x, y)
    fit = fit_logistic(x, y) if not notes else LogisticFit(None, 'no logistic fit of a constant prediction')
    plcc_logistic = rmse_logistic = nan
    if fit.params is not None:
        fitted = fit(x)
        plcc_logistic = _statistic(stats.pearsonr, fitted, y)
        rmse_logistic = float(np.sqrt(np.mean((fitted - y) ** 2)))
    elif not notes:
        notes.append(fit.note)
    return Agreement(len(x), srcc, krcc, plcc, plcc_logistic, rmse_logistic, fit, '; '.join(notes))
