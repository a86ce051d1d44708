"""The benchmark harness: evaluation math against scipy, configuration checks, and end-to-end
runs of ``pyiqa-maclip benchmark`` on synthetic datasets made here (no network).

The synthetic dataset is one smooth image under growing blur and noise, its MOS falling
with the distortion level, plus one file that is not an image.
"""
from __future__ import annotations

import contextlib
import csv
import html
import io
import re
import warnings

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image, ImageFilter
from scipy import optimize
from torchvision.transforms.functional import to_tensor

import pyiqa

from browser import browser, open_report  # noqa: F401  (fixtures)
from rounding import assert_within_rounding, rounding_bound

from pyiqa_maclip.app import cli
from pyiqa_maclip.app.benchmark.resolve import parse_config
from pyiqa_maclip.app.benchmark.datasets import Item
from pyiqa_maclip.app.benchmark.evaluation import evaluate, fit_logistic, fit_problems, logistic_5
from pyiqa_maclip.app.benchmark.runner import SUMMARY_COLUMNS, pair_table, read_scores
from pyiqa_maclip.app.engine import score_into
from pyiqa_maclip.app.images import as_float, read_image
from pyiqa_maclip.app.journal import SCHEMA_VERSION, Journal
from pyiqa_maclip.app.scorers import PyiqaScorer
from pyiqa_maclip.testing import random_images

LEVELS = 12
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


# ---------------------------------------------------------------- evaluation math


# Six predictions and opinion scores, no ties, small enough to work out by hand:
#   prediction 1 2 3 4 5 6, MOS 2 1 4 3 6 5 (pairs swapped).
# Ranks = values, so SRCC = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 6 / 210 = 29/35 (each d = +-1).
# Of the 15 pairs, the 3 swapped pairs are discordant: KRCC = (12 - 3) / 15 = 3/5.
# PLCC: both have mean 3.5 and sum of squared deviations 17.5; sum of cross products
# (-2.5)(-1.5) + (-1.5)(-2.5) + (-0.5)(0.5) + (0.5)(-0.5) + (1.5)(2.5) + (2.5)(1.5) = 14.5, so 29/35.
HAND_PREDICTION = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
HAND_MOS = np.array([2.0, 1.0, 4.0, 3.0, 6.0, 5.0])
# Each is a handful of float64 operations on small integers (ranks, Pearson of ranks): correct to a few ulps.
FEW_ULPS = 8 * np.finfo(float).eps


def _vqeg_logistic(x, b1, b2, b3, b4, b5):
    """The 5-parameter logistic of VQEG / plcc_srcc_cal.py, written out here (not the module's)."""
    with np.errstate(over='ignore'):  # exp overflows to inf for steep fits: the sigmoid's limit
        return b1 * (0.5 - 1.0 / (1.0 + np.exp(b2 * (x - b3)))) + b4 * x + b5


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation written out in NumPy (not scipy's, which the module calls)."""
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / np.sqrt((a @ a) * (b @ b)))


def test_correlations_equal_hand_computed_values():
    result = evaluate(HAND_PREDICTION, HAND_MOS)
    assert result.n == 6
    assert result.srcc == pytest.approx(29 / 35, abs=FEW_ULPS)
    assert result.krcc == pytest.approx(3 / 5, abs=FEW_ULPS)
    assert result.plcc == pytest.approx(29 / 35, abs=FEW_ULPS)


def test_logistic_plcc_and_rmse_are_the_official_scripts():
    """PLCC and RMSE after the fit equal MA-CLIP's plcc_srcc_cal.py written out here: its own
    curve_fit of the VQEG logistic with its initial guess, then Pearson's formula and the RMSE in NumPy."""
    rng = np.random.default_rng(1)
    prediction = rng.normal(size=40)
    mos = 3 * prediction + rng.normal(size=40)
    params, _ = optimize.curve_fit(_vqeg_logistic, prediction, mos, maxfev=10000,
                                   p0=[np.max(mos), np.min(mos), np.mean(prediction), 0.1, 0.1])
    fitted = _vqeg_logistic(prediction, *params)
    result = evaluate(prediction, mos)
    # The same deterministic fit; the statistics are 40-term float64 sums of values below ~10,
    # whose rounding is far below 100 eps relative.
    assert result.plcc_logistic == pytest.approx(_pearson(fitted, mos), rel=100 * np.finfo(float).eps)
    assert result.rmse_logistic == pytest.approx(np.sqrt(np.mean((fitted - mos) ** 2)), rel=100 * np.finfo(float).eps)


def test_signs_are_kept():
    """Reversed ranks: SRCC and KRCC are -1 (exact: integer ranks), PLCC the hand value negated."""
    result = evaluate(-HAND_PREDICTION, HAND_MOS)
    assert result.srcc == pytest.approx(-29 / 35, abs=FEW_ULPS)
    assert result.krcc == pytest.approx(-3 / 5, abs=FEW_ULPS)
    assert result.plcc == pytest.approx(-29 / 35, abs=FEW_ULPS)
    x = np.linspace(0, 1, 20)
    monotone = evaluate(-x, x ** 2)
    assert monotone.srcc == pytest.approx(-1.0, abs=FEW_ULPS) and monotone.krcc == pytest.approx(-1.0, abs=FEW_ULPS)


def test_logistic_fit_recovers_a_monotone_relation():
    """An S-shaped MOS made by the formula itself from known parameters: the fit finds them, the
    mapped predictions equal the MOS (PLCC 1, RMSE 0 to the fit's tolerance); raw PLCC sees the S shape."""
    x = np.linspace(0.0, 1.0, 60)
    truth = (60.0, 8.0, 0.5, 5.0, 40.0)
    mos = _vqeg_logistic(x, *truth)
    fit = fit_logistic(x, mos)
    assert fit.params is not None and fit.problems == () and fit.note == ''
    np.testing.assert_allclose(logistic_5(x, *truth), mos, rtol=FEW_ULPS)  # the module's formula is VQEG's
    # leastsq stops once the parameters change by less than xtol = 1.5e-8 relative; 60 exact points
    # determine these 5 well, so they are within 100 xtol.
    np.testing.assert_allclose(fit.params, truth, rtol=1e-6)
    result = evaluate(x, mos)
    assert result.srcc == pytest.approx(1.0, abs=FEW_ULPS) and result.krcc == pytest.approx(1.0, abs=FEW_ULPS)
    assert result.plcc < 0.99
    # Parameters off by 1e-6 relative move the curve by at most 1e-6 sum |b_i df/db_i| <= 1e-6
    # (60 * 0.5 + 8 * 60 / 4 * 0.5 + 0.5 * 60 * 8 / 4 + 5 + 40) = 1.95e-4 (|x - b3| <= 0.5).
    assert result.rmse_logistic <= 1.95e-4
    # Fitted = MOS + r: 1 - PLCC is at most about var(r) / (2 var(MOS)) <= RMSE^2 / var(MOS).
    assert result.plcc_logistic >= 1 - result.rmse_logistic ** 2 / np.var(mos)


def test_logistic_fit_uses_the_official_initial_guess(monkeypatch):
    seen = {}

    def spy(function, x, y, p0, maxfev):
        seen.update(p0=p0, maxfev=maxfev)
        return optimize.curve_fit(function, x, y, p0=p0, maxfev=maxfev)

    monkeypatch.setattr(optimize, 'curve_fit', spy)
    x, y = np.arange(10.0), np.arange(10.0) ** 1.5
    fit_logistic(x, y)
    assert seen['p0'] == [y.max(), y.min(), x.mean(), 0.1, 0.1]  # the same expressions of the same values
    assert seen['maxfev'] == 10000


def test_failed_fit_gives_nan_and_a_note(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError('Optimal parameters not found')

    monkeypatch.setattr(optimize, 'curve_fit', fail)
    result = evaluate(np.arange(10.0), np.arange(10.0) ** 2)
    assert np.isnan(result.plcc_logistic) and np.isnan(result.rmse_logistic)
    assert 'logistic fit failed' in result.note
    assert result.srcc == pytest.approx(1.0, abs=FEW_ULPS)


@pytest.mark.parametrize('prediction, mos, note', [
    ([1.0, 2.0], [1.0, 2.0], 'at least 3'),
    ([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0], 'at least 5'),
    ([2.0] * 6, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 'constant prediction'),
])
def test_degenerate_inputs_give_nan_not_errors(prediction, mos, note):
    result = evaluate(np.array(prediction), np.array(mos))
    assert np.isnan(result.plcc_logistic)
    assert note in result.note


# The 12-image case of issue 22: the signed predictions of the tiny-RN MA-CLIP (make_clip('tiny-RN', 0))
# and of PIQE (negated: lower is better) on the 12 graded images of the `synthetic` fixture below,
# read from scores/*/synth.csv of a run on an AMD EPYC host; MOS 100 - 7 * level.
MOS_12 = np.array([100.0, 93.0, 86.0, 79.0, 72.0, 65.0, 58.0, 51.0, 44.0, 37.0, 30.0, 23.0])
MACLIP_12 = np.array([0.8936816453933716, 0.8643110394477844, 0.8568512201309204, 0.9341542720794678,
                      0.8607172966003418, 0.8357611894607544, 0.8846774697303772, 0.8271732330322266,
                      0.8808499574661255, 0.8867584466934204, 0.8520935773849487, 0.9140258431434631])
PIQE_12 = -np.array([14.304232597351074, 9.155946731567383, 16.745941162109375, 42.31037139892578,
                     56.517417907714844, 62.89071273803711, 66.39457702636719, 69.11363220214844,
                     70.5098648071289, 72.15711212158203, 73.17819213867188, 73.38644409179688])
# What curve_fit returned for MACLIP_12 on that host (the fit is ill-conditioned: another CPU may
# converge elsewhere or not at all, so the check of the curve is tested on these parameters).
MACLIP_12_FIT = (131845.05583819462, -4.749139893988139, 0.881043607130542, 155921.7702252572, -137313.8081041763)


def _official_fit(x: np.ndarray, mos: np.ndarray) -> tuple:
    """The official plcc_srcc_cal.py fit, written out here."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', optimize.OptimizeWarning)
        params, _ = optimize.curve_fit(logistic_5, x, mos, p0=[mos.max(), mos.min(), x.mean(), 0.1, 0.1],
                                       maxfev=10000)
    return tuple(params)


def _reversal(params: tuple, lo: float, hi: float) -> float:
    """How far the curve moves against its overall direction over [lo, hi], on a dense grid."""
    values = logistic_5(np.linspace(lo, hi, 200_001), *params)
    return (np.abs(np.diff(values)).sum() - abs(values[-1] - values[0])) / 2


def test_the_twelve_image_piqe_fit_is_flagged_as_a_step_and_its_numbers_kept():
    result = evaluate(PIQE_12, MOS_12)
    assert set(result.fit.problems) == {'step', 'not monotone'}
    assert 'logistic fit is a step' in result.note and 'not monotone' in result.note
    # The numbers are the official protocol's, computed here independently: the same deterministic
    # fit of the same values, and Pearson's formula on 12 float64 values (within 100 eps).
    params = _official_fit(PIQE_12, MOS_12)
    assert result.fit.params == params
    assert result.plcc_logistic == pytest.approx(_pearson(_vqeg_logistic(PIQE_12, *params), MOS_12),
                                                 abs=100 * np.finfo(float).eps)
    # A step: no image lies where the fitted curve rises from 10% to 90% of its sigmoid.
    b1, b2, b3 = params[:3]
    transition = b3 + np.array([-1, 1]) * np.log(9) / abs(b2)
    assert not ((PIQE_12 > transition[0]) & (PIQE_12 < transition[1])).any()
    assert abs(b1) > 0.1 * np.ptp(MOS_12)


def test_the_twelve_image_maclip_fit_is_flagged_not_monotone():
    """Raw PLCC about 0 became a logistic PLCC of 0.34 through a curve that rises, falls and rises."""
    problems = fit_problems(MACLIP_12_FIT, MACLIP_12, MOS_12)
    assert set(problems) == {'not monotone'}
    against = float(re.search(r'moves ([\d.]+) MOS', problems['not monotone']).group(1))
    # The message prints 4 significant digits (relative 5e-4); the dense grid misses the turns by a
    # second-order amount in its step (1e-5 of the range), far below that.
    assert against == pytest.approx(_reversal(MACLIP_12_FIT, MACLIP_12.min(), MACLIP_12.max()), rel=1e-3)
    result = evaluate(MACLIP_12, MOS_12)
    assert abs(result.plcc) < 0.05
    # Whatever this CPU's fit converges to, a logistic PLCC far above the raw one comes with a word.
    if result.fit.params is None:
        assert 'logistic fit failed' in result.note
    elif result.plcc_logistic > abs(result.plcc) + 0.1:
        assert result.fit.problems and result.fit.note in result.note


@pytest.mark.parametrize('params, problems', [
    ((10.0, 1000.0, 0.5, 0.0, 0.0), {'step'}),  # 10-90% in 0.0044, the gap around 0.5 is 0.2
    ((10.0, 10.0, 0.5, 0.0, 0.0), set()),  # 10-90% in 0.44: images on the transition
    ((10.0, 1000.0, 1.5, 0.0, 0.0), set()),  # the step lies beyond the last prediction
    ((10.0, 20.0, 0.5, -5.0, 0.0), {'not monotone'}),  # slope -5 away from 0.5, +45 at 0.5; 10-90% in 0.22
    ((10.0, 20.0, 0.5, -1e-6, 0.0), set()),  # turns, by 1e-7 MOS: negligible
    ((-10.0, 1000.0, 0.5, 30.0, 0.0), {'step', 'not monotone'}),  # a rising line with a drop (PIQE's case)
])
def test_fit_problems_on_curves_made_by_hand(params, problems):
    x = np.r_[np.linspace(0.0, 0.4, 5), np.linspace(0.6, 1.0, 5)]
    mos = np.linspace(0.0, 10.0, 10)  # only its range (10) matters
    found = fit_problems(params, x, mos)
    assert set(found) == problems
    if 'not monotone' in found:
        against = float(re.search(r'moves ([\d.]+) MOS', found['not monotone']).group(1))
        assert against == pytest.approx(_reversal(params, 0.0, 1.0), rel=1e-3)


@pytest.mark.parametrize('prediction, mos, note', [
    (np.arange(12.0), np.full(12, 3.0), 'constant MOS'),
    (np.full(12, 3.0), np.arange(12.0), 'constant prediction'),
    (np.full(12, 3.0), np.full(12, 3.0), 'constant prediction and MOS'),
])
def test_constant_input_gives_no_numbers_and_no_fit(prediction, mos, note):
    result = evaluate(prediction, mos)
    assert note in result.note and 'no logistic fit' in result.note
    assert result.fit.params is None
    assert all(np.isnan(v) for v in (result.srcc, result.krcc, result.plcc, result.plcc_logistic, result.rmse_logistic))


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_input_is_a_value_error(bad):
    with pytest.raises(ValueError, match='finite'):
        evaluate(np.array([bad, 1.0, 2.0, 3.0]), np.arange(4.0))


# ---------------------------------------------------------------- synthetic data


def _save_rgb(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)


def _distorted_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """One smooth image under blur and noise growing with the index."""
    base = (random_images(1, 96, 128, seed=seed)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    images = []
    for level in range(count):
        blurred = np.asarray(Image.fromarray(base).filter(ImageFilter.GaussianBlur(0.4 * level)), dtype=float)
        images.append(blurred + rng.normal(0, 4 * level, base.shape))
    return images


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory) -> Path:
    """images/ (12 graded distortions + one broken file) and mos.csv (image,mos)."""
    root = tmp_path_factory.mktemp('synthetic')
    rows = []
    for level, image in enumerate(_distorted_images(LEVELS)):
        _save_rgb(image, root / 'images' / f'level{level:02d}.png')
        rows.append((f'level{level:02d}.png', 100.0 - 7 * level))
    (root / 'images' / 'broken.png').write_bytes(b'this is not a PNG')
    rows.append(('broken.png', 50.0))
    pd.DataFrame(rows, columns=['image', 'mos']).to_csv(root / 'mos.csv', index=False)
    return root


def _write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding='utf-8')
    return path


def _synthetic_config(synthetic: Path, tiny_rn: Path, **maclip_options) -> dict:
    return {
        'datasets': {'synth': {'images': str(synthetic / 'images'), 'mos': str(synthetic / 'mos.csv')}},
        'metrics': {
            'maclip': {'backbone': str(tiny_rn), **maclip_options},
            'maclip_qsim': {'base': 'maclip', 'component': 'q_sim'},
            'piqe': {},
        },
    }


def _run(config_path: Path, output: Path, *extra: str) -> int:
    return cli.main(['benchmark', '--config', str(config_path), '--output-dir', str(output), '--device', 'cpu', *extra])


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, synthetic, tiny_rn) -> Path:
    """One run of the CLI on the synthetic dataset with MA-CLIP (tiny CLIP), a Q_sim variant and PIQE."""
    work = tmp_path_factory.mktemp('run')
    config = _write_config(work / 'config.yml', _synthetic_config(synthetic, tiny_rn))
    assert _run(config, work / 'out') == 0
    return work / 'out'


# ---------------------------------------------------------------- end to end


def test_summary_has_every_pair_with_counts_and_signs(run_dir):
    summary = pd.read_csv(run_dir / 'summary.csv')
    assert tuple(summary.columns) == SUMMARY_COLUMNS
    assert list(summary['metric']) == ['maclip', 'maclip_qsim', 'piqe']
    assert set(summary['dataset']) == {'synth'}
    assert (summary['n'] == LEVELS).all() and (summary['n_failed'] == 1).all()
    flipped = dict(zip(summary['metric'], summary['flipped']))
    assert flipped == {'maclip': False, 'maclip_qsim': False, 'piqe': True}  # PIQE: lower is better
    piqe = summary.set_index('metric').loc['piqe']
    assert piqe['srcc'] > 0.9  # negated PIQE follows the falling MOS
    assert (summary['seconds'] > 0).all()
    markdown = (run_dir / 'summary.md').read_text(encoding='utf-8')
    assert '| piqe |' in markdown and '†' in markdown


def test_summary_carries_bootstrap_intervals_and_flags_the_piqe_step(run_dir):
    summary = pd.read_csv(run_dir / 'summary.csv', keep_default_na=False, na_values=[''])
    for name in ('srcc', 'krcc', 'plcc'):
        assert (summary[f'{name}_low'] <= summary[f'{name}_high']).all()
        assert (summary[f'{name}_low'] >= -1).all() and (summary[f'{name}_high'] <= 1).all()
    piqe = summary.set_index('metric').loc['piqe']
    assert 'step' in piqe['fit_problem'] and 'logistic fit is a step' in piqe['note']
    markdown = (run_dir / 'summary.md').read_text(encoding='utf-8')
    srcc_cell = f'{piqe["srcc"]:.4f} [{piqe["srcc_low"]:.4f}, {piqe["srcc_high"]:.4f}] †'
    assert f'| piqe | {srcc_cell} |' in markdown
    assert f'| piqe | {piqe["plcc_logistic"]:.4f} † ‡ |' in markdown  # the flagged fit's PLCC
    assert 'resampled with replacement 1000 times' in markdown


def test_comparisons_of_every_two_metrics_on_signed_predictions(run_dir):
    summary = pd.read_csv(run_dir / 'summary.csv').set_index('metric')
    comparisons = pd.read_csv(run_dir / 'comparisons.csv', keep_default_na=False, na_values=[''])
    assert list(zip(comparisons['metric_a'], comparisons['metric_b'])) == [
        ('maclip', 'maclip_qsim'), ('maclip', 'piqe'), ('maclip_qsim', 'piqe')]
    assert (comparisons['n'] == LEVELS).all() and (comparisons['n_excluded'] == 0).all()
    for row in comparisons.itertuples():
        # PIQE enters negated, as in summary.csv: its SRCC here is the summary's positive one.
        # The same correlations of the same 12 values, computed again: sums of 12 terms in any order,
        # within 4 * 12 eps (Higham's bound, correlations at most 1); a difference adds one rounding.
        same = 4 * LEVELS * np.finfo(float).eps
        assert row.srcc_a == pytest.approx(summary.loc[row.metric_a, 'srcc'], abs=same)
        assert row.srcc_b == pytest.approx(summary.loc[row.metric_b, 'srcc'], abs=same)
        assert row.plcc_diff == pytest.approx(summary.loc[row.metric_a, 'plcc'] - summary.loc[row.metric_b, 'plcc'],
                                              abs=2 * same)
        assert row.srcc_diff_low <= row.srcc_diff_high and 0 < row.srcc_p <= 1
    assert comparisons['flipped_b'].tolist() == [False, True, True]
    markdown = (run_dir / 'summary.md').read_text(encoding='utf-8')
    assert '## Differences between metrics' in markdown and 'Significant at 0.05' in markdown
    assert '| synth | maclip_qsim | piqe † | 12 |' in markdown


def test_the_output_is_the_same_when_run_again(run_dir, synthetic, tiny_rn, tmp_path):
    """Resampling has a fixed seed: a second evaluation of the same scores gives the same numbers."""
    output = tmp_path / 'out'
    shutil.copytree(run_dir, output)
    (output / 'summary.csv').unlink()
    (output / 'comparisons.csv').unlink()
    assert _run(_write_config(tmp_path / 'c.yml', _synthetic_config(synthetic, tiny_rn)), output) == 0
    for name in ('summary.csv', 'comparisons.csv'):
        again, first = pd.read_csv(output / name), pd.read_csv(run_dir / name)
        pd.testing.assert_frame_equal(again.drop(columns='seconds', errors='ignore'),
                                      first.drop(columns='seconds', errors='ignore'))


def test_per_image_scores_match_direct_scoring(run_dir, synthetic, tiny_rn):
    maclip = read_scores(run_dir / 'scores' / 'maclip' / 'synth.csv')
    assert list(maclip.columns) == ['image', 'mos', 'prediction', 'error', 'score', 'q_sim', 'q_mag', 'w_sim', 'w_mag']
    broken = maclip[maclip['image'].str.endswith('broken.png')]
    assert len(broken) == 1 and broken['error'].iloc[0].startswith('UnidentifiedImageError')
    scored = maclip[maclip['error'] == '']
    metric = pyiqa.create_metric('maclip', device='cpu', backbone=str(tiny_rn))
    images = [to_tensor(Image.open(path).convert('RGB')) for path in scored['image'].head(4)]
    rounding = rounding_bound(metric.net, images, fields=['score', 'q_mag'])
    with torch.no_grad():
        direct = metric.net.score_images(images)
    # The run's (batched) and the direct (one image) scores: both within float32 rounding of the
    # float64 computation; 9 significant digits in the CSV hold a float32 exactly.
    for field in ('score', 'q_mag'):
        assert_within_rounding(scored[field].head(4), rounding, field)
        assert_within_rounding(getattr(direct, field), rounding, field)
    assert (scored['prediction'] == scored['score']).all()  # the same value, written twice
    qsim = read_scores(run_dir / 'scores' / 'maclip_qsim' / 'synth.csv')
    assert (qsim.loc[qsim['error'] == '', 'prediction'] == scored['q_sim']).all()  # one shared pass
    piqe = read_scores(run_dir / 'scores' / 'piqe' / 'synth.csv')
    assert list(piqe.columns) == ['image', 'mos', 'prediction', 'error']
    direct_piqe = pyiqa.create_metric('piqe', device='cpu')
    first = piqe.iloc[0]
    # pyiqa's PIQE on the same decoded image, one image at a time in both: the same computation.
    assert first['prediction'] == direct_piqe(as_float(read_image(first['image']))[None]).item()


def test_plots_are_png_files(run_dir):
    names = {str(p.relative_to(run_dir / 'plots')) for p in (run_dir / 'plots').rglob('*.png')}
    expected = {'srcc_bars.png', 'maclip/scatter_synth.png', 'maclip_qsim/scatter_synth.png',
                'piqe/scatter_synth.png', 'maclip/qsim_qmag_synth.png', 'maclip_qsim/qsim_qmag_synth.png'}
    assert expected == names
    for name in expected:
        path = run_dir / 'plots' / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            assert min(image.size) > 200


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures the plot functions save, kept for inspection (and nothing written)."""
    from pyiqa_maclip.app.benchmark import plots

    figures = []
    monkeypatch.setattr(plots, '_save', lambda figure: figures.append(figure) or b'')
    return figures


def test_the_scatter_plot_says_on_the_curve_when_the_fit_is_a_step(drawn):
    from pyiqa_maclip.app.benchmark.plots import plot_scatter

    plot_scatter(PIQE_12, MOS_12, evaluate(PIQE_12, MOS_12), title='piqe', x_label='-piqe')
    axes = drawn[0].axes[0]
    curve = [line for line in axes.get_lines() if 'logistic' in line.get_label()]
    assert len(curve) == 1 and 'STEP' in curve[0].get_label() and curve[0].get_linestyle() == '--'
    notes = [t.get_text() for t in axes.texts if 'step' in t.get_text()]
    assert len(notes) == 1 and 'not to be trusted' in notes[0]
    b3 = evaluate(PIQE_12, MOS_12).fit.params[2]
    assert next(t for t in axes.texts if 'step' in t.get_text()).xy[0] == b3  # points at the step: the same float

    drawn.clear()
    x = np.linspace(0.0, 1.0, 30)
    plot_scatter(x, 10 * x, evaluate(x, 10 * x), title='fine', x_label='x')
    assert not drawn[0].axes[0].texts[1:]  # only the box of numbers


def test_srcc_bars_mark_negated_metrics_and_draw_the_intervals(drawn):
    from pyiqa_maclip.app.benchmark.plots import plot_srcc_bars

    summary = pd.DataFrame({'metric': ['a', 'b', 'a', 'b'], 'dataset': ['d', 'd', 'e', 'e'],
                            'srcc': [0.5, 0.7, 0.6, np.nan], 'srcc_low': [0.4, 0.75, 0.5, np.nan],
                            'srcc_high': [0.6, 0.9, 0.7, np.nan], 'flipped': [False, True, False, True]})
    plot_srcc_bars(summary)
    axes = drawn[0].axes[0]
    bars = [p for p in axes.patches if p.get_height() or p.get_width()]
    assert [bool(p.get_hatch()) for p in bars] == [False, False, True, True]  # a on d, e; then b on d, e
    assert [t.get_text() for t in axes.texts] == ['†', '†']
    segments = [s for c in axes.collections for s in c.get_segments() if s[0][0] == s[1][0]]  # vertical lines
    spans = sorted((s[0][1], s[1][1]) for s in segments)
    assert spans == [(0.4, 0.6), (0.5, 0.7), (0.75, 0.9)]  # b on d: an interval above its estimate is kept


@pytest.mark.slow  # four end-to-end benchmark runs
def test_rerun_skips_complete_pairs_and_recomputes_changed_ones(run_dir, synthetic, tiny_rn, tmp_path, monkeypatch):
    output = tmp_path / 'out'
    shutil.copytree(run_dir, output)
    builds = []
    create_metric = pyiqa.create_metric

    def counting(name, **kwargs):
        builds.append((name, kwargs.get('box_lam')))
        return create_metric(name, **kwargs)

    monkeypatch.setattr(pyiqa, 'create_metric', counting)
    piqe_csv = output / 'scores' / 'piqe' / 'synth.csv'
    stamp = piqe_csv.stat().st_mtime_ns
    same = _write_config(tmp_path / 'same.yml', _synthetic_config(synthetic, tiny_rn))
    assert _run(same, output) == 0
    assert builds == []

    changed = _write_config(tmp_path / 'changed.yml', _synthetic_config(synthetic, tiny_rn, box_lam=0.0))
    assert _run(changed, output) == 0
    assert builds == [('maclip', 0.0)]  # both MA-CLIP pairs from one model; PIQE untouched
    assert piqe_csv.stat().st_mtime_ns == stamp
    before = pd.read_csv(run_dir / 'scores' / 'maclip' / 'synth.csv')
    after = pd.read_csv(output / 'scores' / 'maclip' / 'synth.csv')
    assert (before['q_mag'].dropna() != after['q_mag'].dropna()).all()
    assert (before['q_sim'].dropna() == after['q_sim'].dropna()).all()  # lambda only moves Q_mag: the same computation

    assert _run(changed, output, '--force') == 0
    assert len(builds) == 3


FORMULA_NAMES = ['=1+1.png', '+a.png', '-b.png', '@c.png', "'d.png", "'=e.png", '\tf.png', '\rg.png']


def test_names_a_spreadsheet_would_run_are_written_as_text_and_read_back(tmp_path, monkeypatch, capsys):
    """Names from the MOS table that start like a formula get a ' in front in scores/*.csv
    (OWASP's advice); read_scores gives back the names of the table."""
    folder = tmp_path / 'images'
    for level, (name, image) in enumerate(zip(FORMULA_NAMES, _distorted_images(len(FORMULA_NAMES)))):
        _save_rgb(image, folder / name)
    pd.DataFrame({'image': FORMULA_NAMES, 'mos': np.arange(len(FORMULA_NAMES), dtype=float)}).to_csv(
        tmp_path / 'mos.csv', index=False, quoting=csv.QUOTE_NONNUMERIC)  # a bare CR would end the line
    monkeypatch.chdir(folder)  # images: . makes the names the table's, first character included
    config = _write_config(tmp_path / 'c.yml', {'datasets': {'f': {'images': '.', 'mos': str(tmp_path / 'mos.csv')}},
                                                'metrics': {'piqe': {}}})
    assert _run(config, tmp_path / 'out', '--num-workers', '0') == 0
    assert f'f: {len(FORMULA_NAMES)} images with their MOS read from {tmp_path / "mos.csv"}' in capsys.readouterr().out
    path = tmp_path / 'out' / 'scores' / 'piqe' / 'f.csv'
    with open(path, encoding='utf-8', newline='') as file:
        cells = [row[0] for row in csv.reader(file)][1:]
    assert cells == ["'" + name for name in FORMULA_NAMES]  # every one starts with = + - @ tab CR or '
    scores = read_scores(path)
    assert list(scores['image']) == FORMULA_NAMES and (scores['error'] == '').all()


def _fake_pyiqa_root(root: Path) -> Path:
    """koniq10k (NR, 1024x768 folder) and csiq (FR, DMOS) laid out as pyiqa's configs expect."""
    images = _distorted_images(6, seed=2)
    meta = root / 'meta_info'
    names = [f'{i}.png' for i in range(6)]
    for name, image in zip(names, images):
        _save_rgb(image, root / 'koniq10k' / '1024x768' / name)
        _save_rgb(image, root / 'CSIQ' / 'dst_imgs' / name)
    meta.mkdir(parents=True)
    pd.DataFrame({'image_name': names, 'MOS': [90, 80, 70, 60, 50, 40], 'official_split': ['test'] * 6}).to_csv(
        meta / 'meta_info_KonIQ10kDataset.csv', index=False)
    pd.DataFrame({'ref_name': ['ref.png'] * 6, 'dist_name': names, 'dmos': [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]}).to_csv(
        meta / 'meta_info_CSIQDataset.csv', index=False)
    return root


def test_pyiqa_datasets_from_a_data_root(tmp_path):
    root = _fake_pyiqa_root(tmp_path / 'data')
    config = _write_config(tmp_path / 'config.yml', {
        'data_root': str(tmp_path / 'elsewhere'),  # overridden by --data-root
        'datasets': {'koniq10k': {}, 'csiq': {}},
        'metrics': {'piqe': {}},
    })
    assert _run(config, tmp_path / 'out', '--data-root', str(root)) == 0
    summary = pd.read_csv(tmp_path / 'out' / 'summary.csv').set_index('dataset')
    assert list(summary['n']) == [6, 6] and list(summary['n_failed']) == [0, 0]
    assert not summary.loc['koniq10k', 'mos_lower_better'] and summary.loc['koniq10k', 'flipped']
    # CSIQ reports DMOS: PIQE and DMOS are both lower-is-better, so nothing is negated.
    assert summary.loc['csiq', 'mos_lower_better'] and not summary.loc['csiq', 'flipped']
    # The same predictions against the same opinion scores, one pair negated: the same ranks reversed,
    # a handful of float64 operations apart.
    assert summary.loc['csiq', 'srcc'] == pytest.approx(summary.loc['koniq10k', 'srcc'], abs=FEW_ULPS)
    scores = pd.read_csv(tmp_path / 'out' / 'scores' / 'piqe' / 'koniq10k.csv')
    assert all('1024x768' in path for path in scores['image'])  # the paper's KonIQ release


# ---------------------------------------------------------------- validation


_DATA = {'synth': {'images': 'img', 'mos': 'mos.csv'}}


def test_cli_reports_config_errors_with_status_2(tmp_path, capsys, synthetic):
    bad_metric = _write_config(tmp_path / 'bad.yml', {'datasets': _DATA, 'metrics': {'nometric': {}}})
    assert _run(bad_metric, tmp_path / 'out') == 2
    err = capsys.readouterr().err
    assert "'nometric' is not a pyiqa metric" in err and 'Traceback' not in err

    missing = _write_config(tmp_path / 'missing.yml', {
        'datasets': {'synth': {'images': str(tmp_path / 'nowhere'), 'mos': str(synthetic / 'mos.csv')}},
        'metrics': {'piqe': {}}})
    assert _run(missing, tmp_path / 'out') == 2
    assert 'the image folder' in capsys.readouterr().err

    column = _write_config(tmp_path / 'column.yml', {
        'datasets': {'synth': {'images': str(synthetic / 'images'), 'mos': str(synthetic / 'mos.csv'),
                               'mos_column': 'MOS'}},
        'metrics': {'piqe': {}}})
    assert _run(column, tmp_path / 'out') == 2
    assert "no column 'MOS' (its columns: image, mos)" in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()  # nothing written before the data is known good


def test_a_metric_that_cannot_be_built_fails_alone(tmp_path, synthetic, capsys):
    config = _write_config(tmp_path / 'config.yml', {
        'datasets': {'synth': {'images': str(synthetic / 'images'), 'mos': str(synthetic / 'mos.csv')}},
        'metrics': {'maclip': {'backbone': str(tmp_path / 'missing.pt')}, 'piqe': {}},
    })
    assert _run(config, tmp_path / 'out') == 1
    assert 'cannot build metric maclip' in capsys.readouterr().out
    summary = pd.read_csv(tmp_path / 'out' / 'summary.csv')
    assert list(summary['metric']) == ['piqe']


def test_unreadable_failing_and_non_finite_images_are_recorded(tmp_path):
    good, other = tmp_path / 'good.png', tmp_path / 'other.png'
    _save_rgb(_distorted_images(1)[0], good)
    _save_rgb(_distorted_images(1)[0], other)
    items = [Item(str(good), 1.0), Item(str(other), 2.0), Item(str(tmp_path / 'absent.png'), 3.0)]
    outputs = iter([RuntimeError('a batch'), torch.tensor([float('nan')]), RuntimeError('out of memory')])

    def model(images):
        out = next(outputs)
        if isinstance(out, Exception):
            raise out
        return out

    spec = parse_config({'datasets': {'d': {'images': 'i', 'mos': 'm'}}, 'metrics': {'piqe': {}}})
    with Journal.create(tmp_path / 'j.sqlite3', {'metric': 'piqe'}, PyiqaScorer.columns) as journal:
        score_into(journal, [item.image for item in items], PyiqaScorer(model, {'metric': 'piqe'}), torch.device('cpu'))
        results = {r.key: r for r in journal.results()}
    frame = pair_table(items, results, spec.metrics[0], PyiqaScorer.columns)
    errors = list(frame['error'])
    assert errors[0].startswith('ValueError: non-finite value')  # the batch failed, then each image alone
    assert errors[1] == 'RuntimeError: out of memory'
    assert errors[2].startswith('FileNotFoundError')
    assert list(frame['mos']) == [1.0, 2.0, 3.0] and frame['prediction'].isna().all()


@pytest.mark.slow  # end-to-end benchmark runs
def test_names_that_shared_files_now_give_four_results(tmp_path, synthetic):
    """Metrics a, a__b and datasets b__c, c: four pairs, four files; a rerun computes nothing."""
    data = {'images': str(synthetic / 'images'), 'mos': str(synthetic / 'mos.csv')}
    config = _write_config(tmp_path / 'config.yml', {
        'datasets': {'b__c': data, 'c': data},
        'metrics': {'a': {'base': 'piqe'}, 'a__b': {'base': 'piqe'}},
    })
    assert _run(config, tmp_path / 'out') == 0
    files = sorted(str(p.relative_to(tmp_path / 'out' / 'scores')) for p in (tmp_path / 'out' / 'scores').rglob('*.csv'))
    assert files == ['a/b__c.csv', 'a/c.csv', 'a__b/b__c.csv', 'a__b/c.csv']
    summary = pd.read_csv(tmp_path / 'out' / 'summary.csv')
    assert len(summary) == 4 and (summary['n'] == LEVELS).all()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _run(config, tmp_path / 'out') == 0
    assert out.getvalue().count('complete, skipped') == 4


def test_ctrl_c_is_one_line_and_resumes_image_by_image(tmp_path, synthetic, monkeypatch, capsys):
    from pyiqa_maclip.app import scorers

    config = _write_config(tmp_path / 'config.yml', {
        'datasets': {'synth': {'images': str(synthetic / 'images'), 'mos': str(synthetic / 'mos.csv')}},
        'metrics': {'piqe': {}},
    })
    calls = []
    original = scorers.PyiqaScorer.__call__

    def interrupted_second_batch(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, images)

    monkeypatch.setattr(scorers.PyiqaScorer, '__call__', interrupted_second_batch)
    assert _run(config, tmp_path / 'out') == 130
    err = capsys.readouterr().err
    assert 'interrupted' in err and 'run the same command again' in err and 'Traceback' not in err
    monkeypatch.setattr(scorers.PyiqaScorer, '__call__', original)
    seen = []
    monkeypatch.setattr(scorers.PyiqaScorer, '__call__', lambda self, images: seen.append(len(images)) or original(self, images))
    assert _run(config, tmp_path / 'out') == 0
    assert sum(seen) == LEVELS - calls[0]  # the first batch was kept; the broken file is known to fail


def test_an_output_folder_that_cannot_be_written_stops_before_scoring(tmp_path, synthetic, capsys):
    config = _write_config(tmp_path / 'config.yml', {
        'datasets': {'synth': {'images': str(synthetic / 'images'), 'mos': str(synthetic / 'mos.csv')}},
        'metrics': {'piqe': {}},
    })
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    assert _run(config, blocker / 'out') == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '--output-dir' in err and 'cannot create the folder' in err and 'is not a folder' in err


def test_precision_option_reaches_maclip_metrics_that_set_none():
    from pyiqa_maclip.app.benchmark.runner import with_precision

    config = parse_config({'datasets': {'d': {'images': 'i', 'mos': 'm'}},
                           'metrics': {'maclip': {}, 'mine': {'base': 'maclip', 'precision': 'fp32'},
                                       'old': {'base': 'maclip', 'half': True}, 'piqe': {}}})
    options = {m.name: m.options for m in with_precision(config, 'bf16').metrics}
    assert options == {'maclip': {'precision': 'bf16'}, 'mine': {'precision': 'fp32'}, 'old': {'half': True},
                       'piqe': {}}
    assert with_precision(config, None) is config


def test_batch_size_and_workers_are_options_that_change_no_score(run_dir, synthetic, tiny_rn, tmp_path, monkeypatch):
    """Scores of --batch-size 3 --num-workers 0 equal the default run's (batch 8, worker processes);
    score_into gets exactly what was asked for."""
    import pyiqa_maclip.app.benchmark.runner as runner

    asked = []
    real = runner.score_into
    monkeypatch.setattr(runner, 'score_into', lambda *a, **k: asked.append((k['batch_size'], k['num_workers'])) or real(*a, **k))
    config = _write_config(tmp_path / 'config.yml', {
        'datasets': {'synth': {'images': str(synthetic / 'images'), 'mos': str(synthetic / 'mos.csv')}},
        'metrics': {'maclip': {'backbone': str(tiny_rn)}}})
    assert _run(config, tmp_path / 'out', '--batch-size', '3', '--num-workers', '0') == 0
    assert asked == [(3, 0)]
    default = read_scores(run_dir / 'scores' / 'maclip' / 'synth.csv').set_index('image')
    small = read_scores(tmp_path / 'out' / 'scores' / 'maclip' / 'synth.csv').set_index('image')
    names = default.index[default['error'] == '']
    metric = pyiqa.create_metric('maclip', device='cpu', backbone=str(tiny_rn)).net
    rounding = rounding_bound(metric, [to_tensor(Image.open(name).convert('RGB')) for name in names], fields=['score'])
    assert_within_rounding(small.loc[names, 'score'], rounding)  # other batches round otherwise
    assert_within_rounding(default.loc[names, 'score'], rounding)


@pytest.mark.parametrize('option, value', [('--batch-size', '0'), ('--num-workers', '-1'), ('--batch-size', 'many')])
def test_bad_batch_size_or_workers_exit_2_before_any_work(tmp_path, synthetic, option, value):
    config = _write_config(tmp_path / 'config.yml', {'datasets': _DATA, 'metrics': {'piqe': {}}})
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(stderr):
        _run(config, tmp_path / 'out', option, value)
    assert exit_info.value.code == 2 and 'expected an integer >=' in stderr.getvalue()
    assert not (tmp_path / 'out').exists()


def test_resume_lives_in_the_journals_alone(run_dir):
    """No second mechanism beside the engine's journal: no marker files, one journal per model and
    preprocessing (the two MA-CLIP pairs share one), each with its schema version (issue 21, point 1)."""
    import sqlite3

    assert not list(run_dir.rglob('*.json'))
    journals = sorted(set((run_dir / 'journal').iterdir()) - {run_dir / 'journal' / 'outputs.sqlite3'})
    assert len(journals) == 2  # maclip (with maclip_qsim) and piqe
    for file in journals:
        with contextlib.closing(sqlite3.connect(file)) as db:
            assert db.execute('PRAGMA user_version').fetchone()[0] == SCHEMA_VERSION
            assert db.execute('SELECT COUNT(*) FROM results').fetchone()[0] == LEVELS + 1


def test_a_folder_of_other_files_is_not_taken_for_results(tmp_path, synthetic, capsys):
    config = _write_config(tmp_path / 'config.yml', {
        'datasets': {'synth': {'images': str(synthetic / 'images'), 'mos': str(synthetic / 'mos.csv')}},
        'metrics': {'piqe': {}}})
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'summary.csv').write_text('my own numbers\n')
    assert _run(config, mine) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is not empty and holds no results of pyiqa-maclip' in err
    assert (mine / 'summary.csv').read_text() == 'my own numbers\n' and listing(mine) == ['summary.csv']


def test_a_damaged_journal_is_one_line(tmp_path, synthetic, capsys):
    config = _write_config(tmp_path / 'config.yml', {
        'datasets': {'synth': {'images': str(synthetic / 'images'), 'mos': str(synthetic / 'mos.csv')}},
        'metrics': {'piqe': {}}})
    assert _run(config, tmp_path / 'out', '--num-workers', '0') == 0
    journal = next(p for p in (tmp_path / 'out' / 'journal').iterdir() if p.name != 'outputs.sqlite3')
    journal.write_bytes(journal.read_bytes()[:100] + b'\0' * 4000)  # the header survives, the pages do not
    capsys.readouterr()
    assert _run(config, tmp_path / 'out', '--num-workers', '0') == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and str(journal) in err and '--force' in err and 'Traceback' not in err
    assert _run(config, tmp_path / 'out', '--num-workers', '0', '--force') == 0


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_summary_html_holds_the_tables_words_and_figures_offline(run_dir):
    """Issue 31 point 7: summary.html beside summary.md, one offline file: the same tables and words, every
    figure of plots/ embedded, nothing fetched."""
    page = (run_dir / 'summary.html').read_text(encoding='utf-8')
    markdown = (run_dir / 'summary.md').read_text(encoding='utf-8')
    for heading in re.findall(r'^## (.+)$', markdown, re.MULTILINE):
        assert f'<h2>{html.escape(heading)}</h2>' in page
    assert 'Significant at 0.05' in page and '<td>piqe †</td>' in page
    figures = sorted(run_dir.glob('plots/**/*.png'))
    assert len(figures) > 0 and page.count('src="data:image/png;base64,') == len(figures)
    assert not re.search(r'(src|href)="(?!data:)', page)  # no file beside it, no network
    assert "default-src 'none'" in page


def test_summary_html_opens_offline_in_a_browser(run_dir, open_report):
    page = open_report(run_dir / 'summary.html', ready=None)  # no console error, nothing fetched (the fixture)
    assert page.title() == 'Benchmark summary: out'
    sizes = page.eval_on_selector_all('img', 'images => images.map(i => i.complete && i.naturalWidth)')
    assert len(sizes) == len(list(run_dir.glob('plots/**/*.png'))) and all(width > 0 for width in sizes)
    assert page.locator('h2', has_text='Differences between metrics').count() == 1


def test_summary_html_shows_names_as_text():
    from pyiqa_maclip.app.benchmark.html import html_summary

    frame = pd.DataFrame({'metric': ['<img src=x onerror=alert(1)>'], 'srcc': [0.5]})
    page = html_summary([('t', ['a `code` & <b>b</b>', frame, '- one\n- <two>'])], {'<caption>': b'\x89PNG'}, '<t>')
    assert '<img src=x' not in page and '&lt;img src=x onerror=alert(1)&gt;' in page
    assert '<p>a <code>code</code> &amp; &lt;b&gt;b&lt;/b&gt;</p>' in page and '<li>&lt;two&gt;</li>' in page
    assert '<td>0.5000</td>' in page and '<title>&lt;t&gt;</title>' in page
