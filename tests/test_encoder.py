"""The prepared image encoder computes what pyiqa's own CLIP ``visual`` computes.

The reference is pyiqa's unmodified module (BatchNorm unfolded, NCHW, full attention pool)
on the same weights, computed in float64. A float32 computation, pyiqa's or the prepared one, may
lie from it as far as float32 rounding can move it: rounding.feature_bound, a
first-order model of rounding (backward error of every sum, every result rounded once) that
holds for any summation order, so on any CPU. Features are compared through random linear
functionals (probes), each a scalar whose rounding the model bounds.
"""
from __future__ import annotations

import copy

import pytest
import torch

from rounding import DRAW_MULTIPLE, DRAWS, RoundingDraws, feature_bound, float32_deviations, float64_encoder

from pyiqa_maclip import MACLIP, encoder
from pyiqa_maclip.testing import make_clip, random_images

pytestmark = pytest.mark.kernels


def _normalised_views(count: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    return (random_images(count, size, size, seed=seed) - 0.45) / 0.27


def _probes(count: int, views: int, dim: int) -> torch.Tensor:
    """Random unit (views, dim) matrices: the features are compared through their products with these."""
    probes = torch.randn(count, views, dim, generator=torch.Generator().manual_seed(dim), dtype=torch.float64)
    return probes / probes.flatten(1).norm(dim=1)[:, None, None]


def _assert_within_rounding(features: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor, probes) -> None:
    got = (features.double() * probes).sum(dim=(1, 2))
    assert ((got - exact).abs() <= bound).all(), ((got - exact).abs() / bound).max()


@pytest.fixture(scope='module')
def tiny_visuals():
    plain = make_clip('tiny-RN').visual.eval()
    return plain, encoder.prepare(copy.deepcopy(plain))


@pytest.mark.parametrize('pos_embedding', [False, True])
@pytest.mark.parametrize('height, width', [(7, 7), (5, 9)])
def test_pooled_token_is_pyiqas_attention_pool_output(tiny_visuals, pos_embedding, height, width):
    """pyiqa's attention pool and pooled_token, both in float32, within rounding of the pool in float64."""
    plain, _ = tiny_visuals
    generator = torch.Generator().manual_seed(height * width)
    feature_maps = torch.randn(3, plain.attnpool.embed_dim, height, width, generator=generator)
    probes = _probes(2, 3, plain.output_dim)

    def forward(model):
        pooled = model.attnpool(feature_maps, pos_embedding=pos_embedding)
        return [(pooled * probe).sum() for probe in probes], []

    bound = float32_deviations(plain, 32 * max(height, width), plain.output_dim, forward)
    with torch.no_grad():
        exact = (float64_encoder(plain).attnpool(feature_maps.double(), pos_embedding=pos_embedding) * probes).sum(dim=(1, 2))
        expected = plain.attnpool(feature_maps, pos_embedding=pos_embedding)
        got = encoder.pooled_token(plain.attnpool, feature_maps, pos_embedding)
    _assert_within_rounding(expected, exact, bound, probes)
    _assert_within_rounding(got, exact, bound, probes)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_pooled_token_under_autocast_does_not_overflow(tiny_visuals, dtype):
    """RN50's random-weight feature maps reach ~5000 under float16 autocast: attention logits
    that large overflow float16 (inf, then NaN scores, as an earlier version gave). Under autocast
    the pool computes in float32: within float32 rounding of the float64 pool of the same 16-bit input."""
    plain, _ = tiny_visuals
    generator = torch.Generator().manual_seed(1)
    feature_maps = (5000 * torch.rand(2, plain.attnpool.embed_dim, 7, 7, generator=generator)).to(dtype)
    probes = _probes(2, 2, plain.output_dim)

    def forward(model):
        pooled = model.attnpool(feature_maps.float())
        return [(pooled * probe).sum() for probe in probes], []

    bound = float32_deviations(plain, 224, plain.output_dim, forward)
    with torch.no_grad():
        exact = (float64_encoder(plain).attnpool(feature_maps.double()) * probes).sum(dim=(1, 2))
        with torch.autocast('cpu', dtype=dtype):
            got = encoder.pooled_token(plain.attnpool, feature_maps)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    _assert_within_rounding(got, exact, bound, probes)


@pytest.mark.filterwarnings('ignore:TF32 acceleration:UserWarning')  # torch.backends.mkldnn.flags' notice
@pytest.mark.parametrize('pos_embedding', [False, True])
@pytest.mark.parametrize('oneDNN', [True, False])
def test_prepared_resnet_features_equal_pyiqas_encoder(tiny_visuals, pos_embedding, oneDNN):
    """pyiqa's float32 encoder and the prepared one (BatchNorm folded, blocked or channels_last
    layout, pooled token only) both lie within float32 rounding of pyiqa's encoder in float64."""
    plain, prepared = tiny_visuals
    views = _normalised_views(5)
    probes = _probes(2, 5, plain.output_dim)
    exact, bound = feature_bound(plain, views, probes, pos_embedding)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=oneDNN):
        assert encoder.uses_blocked_layout(prepared, views) is oneDNN
        expected = plain(views, pos_embedding=pos_embedding)
        got = encoder.image_features(prepared, views, pos_embedding)
    _assert_within_rounding(expected, exact, bound, probes)
    _assert_within_rounding(got, exact, bound, probes)


@pytest.mark.slow  # float64 RN50 with gradients: ~10 s
def test_full_size_resnet_features_equal_pyiqas_encoder():
    """RN50 shape, the blocked layout's real case: views as a 512x384 photo gives, within float32
    rounding of pyiqa's encoder in float64, as pyiqa's float32 one is."""
    plain = make_clip('RN50').visual.eval()
    prepared = encoder.prepare(copy.deepcopy(plain))
    views = _normalised_views(3, seed=3)
    probes = _probes(1, 3, plain.output_dim)
    exact, bound = feature_bound(plain, views, probes)
    with torch.no_grad():
        expected = plain(views)
        got = encoder.image_features(prepared, views)
    _assert_within_rounding(expected, exact, bound, probes)
    _assert_within_rounding(got, exact, bound, probes)


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
    """The input gradient of the prepared encoder, and pyiqa's, within float32 rounding of pyiqa's in float64.

    A gradient is not linear in the roundings (a ReLU input within rounding of 0 switches its
    gradient), so the bound comes from draws of them (RoundingDraws) in float64: DRAW_MULTIPLE
    times the largest deviation of DRAWS draws, in norm."""
    plain, prepared = tiny_visuals
    views = _normalised_views(2)

    def input_gradient(visual, dtype=torch.float32):
        x = views.to(dtype).clone().requires_grad_()
        encoder.image_features(visual, x).sum().backward()
        return x.grad.double()

    exact_model = float64_encoder(plain)
    exact = input_gradient(exact_model, torch.float64)
    draws = RoundingDraws(exact_model, torch.float32, 224, plain.output_dim)
    deviation = 0.0
    for _ in range(DRAWS):
        draws.draw()
        deviation = max(deviation, (input_gradient(exact_model, torch.float64) - exact).norm().item())
    for gradient in (input_gradient(plain), input_gradient(prepared)):
        assert (gradient - exact).norm() <= DRAW_MULTIPLE * deviation, ((gradient - exact).norm(), deviation)


@pytest.mark.filterwarnings('ignore:precision=.*emulated:RuntimeWarning')  # bf16 on a CPU without it: tested in test_precision
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
