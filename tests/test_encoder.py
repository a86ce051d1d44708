"""The prepared image encoder computes what pyiqa's own CLIP ``visual`` computes.

The reference is pyiqa's unmodified module (BatchNorm unfolded, NCHW, full attention pool)
on the same weights; tolerances are float32 rounding of a reordered computation.
"""
from __future__ import annotations

import copy

import pytest
import torch

from pyiqa_maclip import MACLIP, encoder
from pyiqa_maclip.testing import make_clip, random_images

# Relative norm of the difference: folding BatchNorm and another summation order move float32
# features by ~1e-6 of their norm (RN50-shaped weights: 1.2e-6 measured; tiny ones 2.4e-6).
RTOL = 1e-5


def _normalised_views(count: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    return (random_images(count, size, size, seed=seed) - 0.45) / 0.27


@pytest.fixture(scope='module')
def tiny_visuals():
    plain = make_clip('tiny-RN').visual.eval()
    return plain, encoder.prepare(copy.deepcopy(plain))


@pytest.mark.parametrize('pos_embedding', [False, True])
@pytest.mark.parametrize('height, width', [(7, 7), (5, 9)])
def test_pooled_token_is_pyiqas_attention_pool_output(tiny_visuals, pos_embedding, height, width):
    plain, _ = tiny_visuals
    generator = torch.Generator().manual_seed(height * width)
    feature_maps = torch.randn(3, plain.attnpool.embed_dim, height, width, generator=generator)
    with torch.no_grad():
        expected = plain.attnpool(feature_maps, pos_embedding=pos_embedding)
        got = encoder.pooled_token(plain.attnpool, feature_maps, pos_embedding)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_pooled_token_under_autocast_does_not_overflow(tiny_visuals, dtype):
    """RN50's random-weight feature maps reach ~5000 under float16 autocast: attention logits
    that large overflow float16 (inf, then NaN scores, as an earlier version gave)."""
    plain, _ = tiny_visuals
    generator = torch.Generator().manual_seed(1)
    feature_maps = 5000 * torch.rand(2, plain.attnpool.embed_dim, 7, 7, generator=generator)
    with torch.no_grad():
        expected = plain.attnpool(feature_maps)
        with torch.autocast('cpu', dtype=dtype):
            got = encoder.pooled_token(plain.attnpool, feature_maps.to(dtype))
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - expected).norm() / expected.norm() < 1e-2  # the input's 16-bit rounding only


@pytest.mark.filterwarnings('ignore:TF32 acceleration:UserWarning')  # torch.backends.mkldnn.flags' notice
@pytest.mark.parametrize('pos_embedding', [False, True])
@pytest.mark.parametrize('oneDNN', [True, False])
def test_prepared_resnet_features_equal_pyiqas_encoder(tiny_visuals, pos_embedding, oneDNN):
    """Within float32 rounding of pyiqa's result, and no farther from the float64 computation than
    pyiqa's own float32 result is (random tiny weights give large, sharply attended features, so
    single elements may move by ~1e-5 of the largest one in either computation)."""
    plain, prepared = tiny_visuals
    views = _normalised_views(5)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=oneDNN):
        assert encoder.uses_blocked_layout(prepared, views) is oneDNN
        expected = plain(views, pos_embedding=pos_embedding)
        got = encoder.image_features(prepared, views, pos_embedding)
        exact = copy.deepcopy(plain).double()(views.double(), pos_embedding=pos_embedding)
    assert (got - expected).norm() / expected.norm() < RTOL
    pyiqa_error = (expected.double() - exact).abs().max()
    assert (got.double() - exact).abs().max() <= 2 * pyiqa_error


def test_full_size_resnet_features_equal_pyiqas_encoder():
    """RN50 shape, the blocked layout's real case: 7 views as one 512x384 photo gives."""
    plain = make_clip('RN50').visual.eval()
    prepared = encoder.prepare(copy.deepcopy(plain))
    views = _normalised_views(7, seed=3)
    with torch.no_grad():
        expected = plain(views)
        got = encoder.image_features(prepared, views)
    assert (got - expected).norm() / expected.norm() < 1e-5


def test_vision_transformer_runs_as_pyiqa_defines_it():
    plain = make_clip('tiny-ViT').visual.eval()
    views = _normalised_views(2)
    with torch.no_grad():
        torch.testing.assert_close(encoder.image_features(plain, views), plain(views), rtol=0, atol=0)


def test_blocked_layout_only_for_float32_cpu_inference(tiny_visuals):
    _, prepared = tiny_visuals
    views = _normalised_views(1)
    with torch.no_grad():
        assert encoder.uses_blocked_layout(prepared, views)
        assert not encoder.uses_blocked_layout(prepared, views.double())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert not encoder.uses_blocked_layout(prepared, views)
    assert encoder.uses_blocked_layout(prepared, views)  # grad enabled, but none wanted for these views
    assert not encoder.uses_blocked_layout(prepared, views.clone().requires_grad_())


def test_gradients_reach_the_input_through_the_prepared_encoder(tiny_visuals):
    plain, prepared = tiny_visuals
    views = _normalised_views(2)
    expected_input = views.clone().requires_grad_()
    plain(expected_input).sum().backward()
    got_input = views.clone().requires_grad_()
    encoder.image_features(prepared, got_input).sum().backward()
    # Not elementwise: a ReLU input within rounding of 0 may switch its gradient on or off. Measured
    # here: 1.9e-4 of the gradient's norm, where pyiqa's float32 encoder is itself 1.2e-4 from float64.
    difference = (got_input.grad - expected_input.grad).norm() / expected_input.grad.norm()
    assert difference < 1e-3, difference


def test_metric_takes_the_blocked_layout_in_float32_only(tiny_rn, monkeypatch):
    decisions = []
    decide = encoder.uses_blocked_layout
    monkeypatch.setattr(encoder, 'uses_blocked_layout', lambda *args: decisions.append(decide(*args)) or decisions[-1])
    image = random_images(1, 256, 300)
    with torch.no_grad():
        MACLIP(backbone=str(tiny_rn))(image)
        assert decisions and all(decisions)
        decisions.clear()
        MACLIP(backbone=str(tiny_rn), precision='bf16')(image)
        assert decisions and not any(decisions)
