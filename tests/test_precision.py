"""The ``precision`` option: what the image encoder computes in, and what stays float32.

A 16-bit mode promises scores within 16-bit rounding of the float32 ones: within rounding_bound
(tests/rounding.py) of the float64 computation, a model of rounding every operand and result
to 16 bits that holds for native and emulated 16-bit arithmetic alike. Ranks are not promised.
"""
from __future__ import annotations

import warnings

import pyiqa
import pytest
import torch

from rounding import assert_within_rounding, rounding_bound

from pyiqa_maclip import MACLIP
from pyiqa_maclip import precision as arch
from pyiqa_maclip.app.scorers import Recipe
from pyiqa_maclip.testing import graded_photos, random_images

quiet_cpu = pytest.mark.filterwarnings('ignore:precision=.*emulated:RuntimeWarning')


def _images() -> torch.Tensor:
    return torch.cat([random_images(1, 224, 300, seed=s) for s in range(8)])


def _encoder_output_dtype(metric: MACLIP, images: torch.Tensor) -> tuple[torch.dtype, torch.Tensor]:
    seen = {}
    # The ResNet's last convolutional stage (the encoder's pooled output is an attention product).
    handle = metric.visual.layer4.register_forward_hook(lambda module, args, out: seen.update(dtype=out.dtype))
    scores = metric(images)
    handle.remove()
    return seen['dtype'], scores


def test_fp32_is_the_default_and_uses_no_autocast(tiny_rn):
    metric = MACLIP(backbone=str(tiny_rn))
    assert metric.precision == 'fp32'
    dtype, _ = _encoder_output_dtype(metric, _images())
    assert dtype == torch.float32


@pytest.fixture(scope='module')
def photos() -> list[torch.Tensor]:
    """Two of pyiqa's sample photos at 320x240, each clean, blurred twice and noised twice."""
    return [image for _, image in graded_photos(2, (320, 240))]


@quiet_cpu
@pytest.mark.parametrize('precision, dtype', [pytest.param('bf16', torch.bfloat16, marks=pytest.mark.kernels),
                                              pytest.param('fp16', torch.float16, marks=pytest.mark.slow)])  # ~2 s
def test_16_bit_encoder_keeps_scores_within_16_bit_rounding_on_graded_photos(tiny_metric, tiny_rn, photos,
                                                                           precision, dtype):
    """The encoder computes in the 16-bit type; prompts and scores stay float32; every score lies
    within 16-bit rounding of the float64 computation."""
    metric = MACLIP(backbone=str(tiny_rn), precision=precision)
    encoder_dtype, scores = _encoder_output_dtype(metric, torch.stack(photos))
    assert encoder_dtype == dtype
    assert scores.dtype == metric.text_features.dtype == torch.float32
    assert metric.visual.conv1.weight.dtype == torch.float32  # autocast, not converted weights
    rounding = rounding_bound(tiny_metric, photos, dtype=dtype, fields=['score'])
    assert_within_rounding(scores, rounding)
    assert not torch.equal(scores, tiny_metric(torch.stack(photos)))


@quiet_cpu
def test_half_true_is_precision_fp16(tiny_rn):
    images = _images()
    alias = MACLIP(backbone=str(tiny_rn), half=True)
    assert alias.precision == 'fp16'
    torch.testing.assert_close(alias(images), MACLIP(backbone=str(tiny_rn), precision='fp16')(images), rtol=0, atol=0)
    assert MACLIP(backbone=str(tiny_rn), half=True, precision='fp16').precision == 'fp16'


@pytest.mark.parametrize('options, words', [
    ({'precision': 'bfloat16'}, "precision must be one of 'fp32', 'bf16', 'fp16', got 'bfloat16'"),
    ({'precision': 'FP32'}, "got 'FP32'"),
    ({'precision': None}, 'got None'),
    ({'precision': 16}, 'got 16'),
    ({'precision': ['bf16']}, "got \\['bf16'\\]"),
    ({'half': True, 'precision': 'bf16'}, "half=True means precision='fp16' and contradicts precision='bf16'"),
])
def test_bad_precision_is_rejected_with_the_accepted_values(tiny_rn, options, words):
    with pytest.raises(ValueError, match=words):
        MACLIP(backbone=str(tiny_rn), **options)


def test_create_metric_takes_precision(tiny_rn):
    image = random_images(1, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        metric = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cpu', precision='bf16')
        score = metric(image)
        direct = MACLIP(backbone=str(tiny_rn), precision='bf16')(image)
    assert metric.net.precision == 'bf16' and score.dtype == torch.float32
    assert torch.equal(score, direct)  # the same computation


def _native(bf16: bool | None, fp16: bool | None):
    return lambda dtype: {torch.bfloat16: bf16, torch.float16: fp16}[dtype]


@pytest.mark.parametrize('precision, native, better', [
    ('fp16', _native(True, False), "use precision='bf16' (this CPU has bfloat16 instructions)"),
    ('fp16', _native(False, False), "use precision='fp32'"),
    ('bf16', _native(False, False), "use precision='fp32'"),
])
def test_emulated_16_bit_mode_on_a_cpu_warns_once_naming_the_better_choice(tiny_rn, monkeypatch, precision,
                                                                        native, better):
    monkeypatch.setattr(arch, 'cpu_has_native', native)
    metric = MACLIP(backbone=str(tiny_rn), precision=precision)
    image = random_images(1, 224, 224)
    with pytest.warns(RuntimeWarning, match='emulated') as caught:
        metric(image)
    message = str(caught[0].message)
    assert better in message and f'precision={precision!r}' in message
    assert ('no native bfloat16' if precision == 'bf16' else 'no native float16') in message
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter('always')
        metric(image)
    assert not [w for w in again if 'precision=' in str(w.message)]  # once per metric


@pytest.mark.parametrize('precision, native', [
    ('bf16', _native(True, False)),     # native bfloat16 (this project's AMD host)
    ('fp16', _native(True, True)),      # native float16 (AMX-FP16)
    ('bf16', _native(None, None)),      # torch cannot tell: stay silent rather than guess
    ('fp32', _native(False, False)),    # float32 never warns
])
def test_no_warning_where_the_mode_is_native_or_unknown(tiny_rn, monkeypatch, precision, native):
    monkeypatch.setattr(arch, 'cpu_has_native', native)
    metric = MACLIP(backbone=str(tiny_rn), precision=precision)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        metric(random_images(1, 224, 224))
    assert not [w for w in caught if 'precision=' in str(w.message)]


def test_cpu_has_native_is_a_bool_or_none_when_torch_lacks_the_check(monkeypatch):
    assert arch.cpu_has_native(torch.bfloat16) in (True, False, None)

    class NoChecks:
        def __getattr__(self, name):
            raise AttributeError(name)

    monkeypatch.setattr(torch.ops, 'mkldnn', NoChecks())
    assert arch.cpu_has_native(torch.bfloat16) is None and arch.cpu_has_native(torch.float16) is None


def test_resume_fingerprint_names_the_precision(tiny_rn):
    """A journal written in one precision is never resumed in another; half=True is fp16's fingerprint."""
    fp32, bf16, half, fp16 = (Recipe('maclip', {'backbone': str(tiny_rn), **options}).fingerprint for options in (
        {}, {'precision': 'bf16'}, {'half': True}, {'precision': 'fp16'}))
    assert fp32['options']['precision'] == 'fp32' and bf16['options']['precision'] == 'bf16'
    assert fp32 != bf16 and half == fp16


@pytest.mark.kernels
@quiet_cpu
@pytest.mark.parametrize('precision, convert', [('bf16', torch.float16), ('fp16', torch.bfloat16), ('bf16', torch.float64)])
def test_precision_with_weights_converted_to_another_type_says_what_to_do(tiny_metric, tiny_rn, precision, convert):
    metric = MACLIP(backbone=str(tiny_rn), precision=precision).to(convert)
    image = random_images(1, 224, 224)
    with pytest.raises(TypeError, match=r'converted to (float16|bfloat16|float64); convert the metric back with \.float\(\)'):
        metric(image)
    metric.float()
    # Weights rounded to 16 bits (or float64, exactly back), then a 16-bit mode: within bfloat16
    # rounding, the coarser of the two types, of the float64 computation.
    rounding = rounding_bound(tiny_metric, image, dtype=torch.bfloat16, fields=['score'])
    assert_within_rounding(metric(image), rounding)


@pytest.mark.kernels
@quiet_cpu
def test_precision_matching_converted_weights_still_runs(tiny_metric, tiny_rn):
    """half=True with .half() ran before precision existed; it still does, within float16 rounding
    of the float64 computation."""
    metric = MACLIP(backbone=str(tiny_rn), half=True).half()
    image = random_images(1, 224, 224)
    rounding = rounding_bound(tiny_metric, image, dtype=torch.float16, fields=['score'])
    assert_within_rounding(metric(image), rounding)
