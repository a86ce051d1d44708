"""The equations in pyiqa_maclip.functional against independent NumPy/SciPy computations."""
import numpy as np
import pytest
import scipy.special
import torch
from torch import nn

from pyiqa_maclip import functional as MF


@pytest.mark.parametrize('height, width', [(224, 224), (351, 224), (300, 517), (480, 640)])
def test_sliding_patches_match_nn_unfold(height, width):
    """Same windows in the same order as the official nn.Unfold(224, stride=128)."""
    x = torch.rand(2, 3, height, width)
    expected = nn.Unfold(kernel_size=224, stride=128)(x).view(2, 3, 224, 224, -1).permute(0, 4, 1, 2, 3)
    patches = MF.sliding_patches(x, 224, 128)
    rows, cols = MF.num_patches(height, width, 224, 128)
    assert patches.shape == (2, rows, cols, 3, 224, 224)
    assert torch.equal(patches.reshape(2, rows * cols, 3, 224, 224), expected)
    assert patches.data_ptr() == x.data_ptr()  # a view: no copy of the image


@pytest.mark.parametrize('lam', [0.0, 0.5, 1.0, -0.5, 0.3])
def test_box_cox_matches_scipy(lam):
    """((x/s + 1)^lam - 1) / lam, log1p at 0: scipy.special.boxcox1p of the std-scaled values."""
    x = torch.rand(4, 1024, dtype=torch.float64) * 3
    scaled = x.numpy() / (x.numpy().std(axis=1, ddof=1, keepdims=True) + 1e-6)
    expected = scipy.special.boxcox1p(scaled, lam)
    np.testing.assert_allclose(MF.box_cox(x, lam).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_magnitude_quality_is_scale_invariant_and_non_negative():
    features = torch.randn(5, 512, dtype=torch.float64)
    q = MF.magnitude_quality(features)
    assert (q >= 0).all()
    torch.testing.assert_close(MF.magnitude_quality(features * 37.0), q, rtol=1e-6, atol=1e-6)
    # Gaussian features: mean |f| / std |f| is about 1.32, so Q_mag is about 2 (sqrt(2.32) - 1) ~= 1.
    assert 0.8 < MF.magnitude_quality(torch.randn(100, 4096, dtype=torch.float64)).mean() < 1.1


def test_similarity_quality_matches_loop():
    torch.manual_seed(0)
    features = torch.randn(3, 7, 64, dtype=torch.float64)
    text = torch.nn.functional.normalize(torch.randn(10, 64, dtype=torch.float64), dim=-1)
    scale = 100.0
    got = MF.similarity_quality(features, text, scale)
    f = features.numpy()
    t = text.numpy()
    expected = np.zeros((3, 7))
    for b in range(3):
        for v in range(7):
            cos = t @ (f[b, v] / np.linalg.norm(f[b, v]))
            positives = [
                np.exp(scale * cos[2 * k]) / (np.exp(scale * cos[2 * k]) + np.exp(scale * cos[2 * k + 1]))
                for k in range(5)
            ]
            expected[b, v] = np.mean(positives)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_fuse_matches_formula():
    q_sim = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    q_mag = torch.tensor([1.3, 0.5, 0.1], dtype=torch.float64)
    score, w_sim, w_mag = MF.fuse(q_sim, q_mag, base_cos=1.0, base_norm=0.6, alpha=1.0)
    d = q_sim.numpy() - q_mag.numpy()
    e_sim, e_mag = np.exp(1.0 + d), np.exp(0.6 - d)
    np.testing.assert_allclose(w_sim.numpy(), e_sim / (e_sim + e_mag), rtol=1e-12)
    np.testing.assert_allclose(w_mag.numpy(), e_mag / (e_sim + e_mag), rtol=1e-12)
    np.testing.assert_allclose(score.numpy(), (e_sim * q_sim.numpy() + e_mag * q_mag.numpy()) / (e_sim + e_mag))


@pytest.mark.parametrize('size, expected', [
    ((1, 1), (224, 224)),
    ((100, 300), (224, 672)),
    ((300, 100), (672, 224)),
    ((223, 1000), (224, 1004)),
    ((5, 2), (560, 224)),
])
def test_upscale_short_side(size, expected):
    x = torch.rand(1, 3, *size)
    assert MF.upscale_short_side(x, 224).shape[-2:] == expected


def test_upscale_short_side_keeps_large_images_untouched():
    x = torch.rand(1, 3, 224, 300)
    assert MF.upscale_short_side(x, 224) is x
