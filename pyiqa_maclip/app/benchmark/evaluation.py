"""Agreement of predictions with human opinion scores, as in MA-CLIP's official evaluation.

SRCC and KRCC are rank correlations of the raw predictions; PLCC is reported twice,
raw and after the 5-parameter logistic mapping of VQEG (the official
``plcc_srcc_cal.py``), which also gives the RMSE. The fit follows the official code
exactly, so its numbers stay comparable; what it returns is then checked, because with
few images or clustered predictions it can degenerate: a mapping that is not monotone
over the predictions' range reorders images, and a transition narrower than the gap
between the two neighbouring predictions it falls between is a step that sorts the
images into two groups. Either is kept, and described in ``note``. Finite inputs can
still give a statistic that is not (values near the float64 limit, ``1e308``, overflow
when squared): it is reported as NaN, and ``note`` names it and says why. All functions
are pure: they take the finite predictions and MOS of the images that were scored and
return numbers.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

__all__ = ['MIN_IMAGES', 'MIN_IMAGES_FIT', 'Agreement', 'LogisticFit', 'logistic_5', 'fit_logistic', 'fit_problems',
           'evaluate']

MIN_IMAGES = 3  # below this no correlation means anything
MIN_IMAGES_FIT = 5  # the logistic has 5 parameters
MAXFEV = 10000  # as the official evaluation
#: A reversal or step smaller than this share of the MOS range changes no number worth reporting.
NEGLIGIBLE = 1e-3
_TRANSITION = 2 * np.log(9.0)  # 10% to 90% of the sigmoid's rise takes this / |b2| in prediction units


def logistic_5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """The VQEG mapping ``b1 * (0.5 - 1 / (1 + exp(b2 (x - b3)))) + b4 x + b5``."""
    with np.errstate(over='ignore'):
        return b1 * (0.5 - 1.0 / (1.0 + np.exp(b2 * (x - b3)))) + b4 * x + b5


@dataclass(frozen=True)
class LogisticFit:
    """Fitted parameters (b1..b5), or ``None`` with the reason the fit failed; ``problems``
    names what is wrong with a fit that was made (``'step'``, ``'not monotone'``), ``note``
    says it in full."""

    params: tuple[float, ...] | None
    note: str = ''
    problems: tuple[str, ...] = ()

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
    # No covariance estimate is no failure: only the parameters are used (nor is its cost overflowing
    # float64 for a MOS near 1e308: the numbers it gives are checked below and in evaluate).
    with warnings.catch_warnings(), np.errstate(over='ignore'):
        warnings.simplefilter('ignore', optimize.OptimizeWarning)
        try:
            params, _ = optimize.curve_fit(logistic_5, x, y, p0=guess, maxfev=MAXFEV)
        except (RuntimeError, ValueError, TypeError, FloatingPointError) as error:
            return LogisticFit(None, f'logistic fit failed: {error}')
    params = tuple(float(p) for p in params)
    if not np.all(np.isfinite(logistic_5(x, *params))):
        return LogisticFit(None, 'logistic fit failed: non-finite fitted values')
    problems = fit_problems(params, x, y)
    note = '; '.join(problems.values())
    if problems:
        note += ('; plcc_logistic and rmse_logistic are those of this curve, as the official protocol gives '
                 'them: read them with srcc, plcc and the scatter plot')
    return LogisticFit(params, note, tuple(problems))


def _number(value: float) -> str:
    return f'{value:.4g}'


def fit_problems(params: tuple[float, ...], prediction: np.ndarray, mos: np.ndarray) -> dict[str, str]:
    """What is wrong with fitted ``params`` over these predictions: ``{'step': text,
    'not monotone': text}``, each only if it moves the mapping by more than ``NEGLIGIBLE``
    of the MOS range."""
    b1, b2, b3, b4, _ = params
    x, y = np.asarray(prediction, dtype=float), np.asarray(mos, dtype=float)
    lo, hi, span = np.min(x), np.max(x), np.ptp(y)
    problems = {}
    # The slope b4 + b1 b2 s(1 - s) (s the sigmoid) is zero where s(1 - s) = q: at most two points.
    turns = []
    if b1 * b2 != 0:
        q = -b4 / (b1 * b2)
        if 0 < q < 0.25:
            with np.errstate(divide='ignore'):  # q below float64's resolution: no turn within reach (inf)
                offset = 2 * np.arctanh(np.sqrt(1 - 4 * q)) / abs(b2)
            turns = [t for t in (b3 - offset, b3 + offset) if lo < t < hi]
    values = logistic_5(np.array([lo, *turns, hi]), *params)
    against = (np.sum(np.abs(np.diff(values))) - abs(values[-1] - values[0])) / 2
    if turns and against > NEGLIGIBLE * span:
        where = ' and '.join(_number(t) for t in turns)
        problems['not monotone'] = (
            f'logistic fit is not monotone over the predictions\' range: it turns at prediction {where} and moves '
            f'{_number(against)} MOS ({against / span:.0%} of the MOS range) against its overall direction, '
            'so it reorders images')
    distinct = np.unique(x)
    at = np.searchsorted(distinct, b3, side='right')
    if b2 != 0 and 0 < at < len(distinct) and abs(b1) > NEGLIGIBLE * span:
        gap = distinct[at] - distinct[at - 1]
        width = _TRANSITION / abs(b2)
        if width < gap:
            problems['step'] = (
                f'logistic fit is a step: its transition ({_number(width)} prediction units from 10% to 90%) '
                f'is narrower than the gap between the neighbouring predictions {_number(distinct[at - 1])} and '
                f'{_number(distinct[at])} it lies between: the curve jumps by {_number(np.sign(b2) * b1)} MOS '
                f'({abs(b1) / span:.0%} of the MOS range) where no image is, splitting the images into two groups')
    return problems


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


def _rms(differences: np.ndarray) -> float:
    """Root mean square, scaled first where the squares would overflow (the RMSE itself may not)."""
    plain = float(np.sqrt(np.mean(differences ** 2)))
    peak = float(np.max(np.abs(differences)))
    if math.isfinite(plain) or not math.isfinite(peak):
        return plain
    return peak * float(np.sqrt(np.mean((differences / peak) ** 2)))


def _after_fit(fit: LogisticFit, x: np.ndarray, y: np.ndarray) -> tuple[float, float, str]:
    """PLCC and RMSE of the fitted curve against the MOS (NaN without a fit: its note says why), and
    a note if the curve is flat over the predictions (PLCC then undefined)."""
    if fit.params is None:
        return math.nan, math.nan, ''
    fitted = fit(x)
    rmse = _rms(fitted - y)
    if np.min(fitted) == np.max(fitted):
        return math.nan, rmse, (f'the logistic fit is flat over the predictions (one fitted value, {fitted[0]:.4g}, '
                                f'for all {len(x)} images): plcc_logistic is not defined')
    return _statistic(stats.pearsonr, fitted, y), rmse, ''


def _overflow_note(names: list[str], x: np.ndarray, y: np.ndarray) -> str:
    return (f'{" and ".join(names)} not finite: float64 overflows at these magnitudes (|prediction| up to '
            f'{np.max(np.abs(x)):.3g}, |MOS| up to {np.max(np.abs(y)):.3g}); reported as n/a: rescale the '
            'predictions or the MOS')


def evaluate(prediction: np.ndarray, mos: np.ndarray) -> Agreement:
    """SRCC, KRCC, raw PLCC, and PLCC/RMSE after the logistic fit, of finite predictions vs MOS.

    Predictions are taken as given (higher = better quality expected): a caller
    negates lower-is-better metrics first, so the signs of the numbers are kept.
    """
    x, y = np.asarray(prediction, dtype=float), np.asarray(mos, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f'prediction and mos must be 1-D of the same length, got {x.shape} and {y.shape}')
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError('prediction and mos must be finite (leave out the images that failed)')
    nan = float('nan')
    if len(x) < MIN_IMAGES:
        note = f'correlations need at least {MIN_IMAGES} images, got {len(x)}'
        return Agreement(len(x), nan, nan, nan, nan, nan, LogisticFit(None, note), note)
    constant = [what for what, values in (('prediction', x), ('MOS', y)) if np.min(values) == np.max(values)]
    if constant:
        note = (f'constant {" and ".join(constant)}: no correlation is defined and no logistic fit is made '
                f'(all {len(x)} images have one value)')
        return Agreement(len(x), nan, nan, nan, nan, nan, LogisticFit(None, note), note)
    # Numbers float64 cannot hold are caught below, by what they give: not by numpy's warnings on the way.
    with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
        numbers = {name: _statistic(function, x, y) for name, function in
                   (('srcc', stats.spearmanr), ('krcc', stats.kendalltau), ('plcc', stats.pearsonr))}
        fit = fit_logistic(x, y)
        numbers['plcc_logistic'], numbers['rmse_logistic'], flat = _after_fit(fit, x, y)
    undefined = {'plcc_logistic', 'rmse_logistic'} if fit.params is None else {'plcc_logistic'} if flat else set()
    overflowed = [name for name, value in numbers.items() if name not in undefined and not math.isfinite(value)]
    numbers.update(dict.fromkeys(overflowed, nan))
    notes = [_overflow_note(overflowed, x, y) if overflowed else '', fit.note, flat]
    return Agreement(len(x), **numbers, fit=fit, note='; '.join(note for note in notes if note))
