"""The equations in pyiqa_maclip.functional against independent NumPy/SciPy computations."""
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch
from torch import nn

from rounding import bilinear_error

from pyiqa_maclip import functional as MF

EPS64 = np.finfo(np.float64).eps


@pytest.mark.parametrize('height, width', [(224, 224), (351, 224), (300, 517), (480, 640)])
def test_patches_of_large_images_match_nn_unfold(height, width):
    """Same windows in the same order as the official nn.Unfold(224, stride=128), as views of the image."""
    x = torch.rand(2, 3, height, width)
    expected = nn.Unfold(kernel_size=224, stride=128)(x).view(2, 3, 224, 224, -1).permute(0, 4, 1, 2, 3)
    size = MF.working_size(height, width, 224)
    rows, cols = MF.num_patches(*size, 224, 128)
    patches = [MF.image_patch(x, size, r * 128, c * 128, 224) for r in range(rows) for c in range(cols)]
    assert size == (height, width) and len(patches) == expected.shape[1]
    assert torch.equal(torch.stack(patches, dim=1), expected)
    assert all(p.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for p in patches)  # no copy


@pytest.mark.parametrize('size, expected', [
    ((1, 1), (224, 224)),
    ((100, 300), (224, 672)),
    ((300, 100), (672, 224)),
    ((223, 1000), (224, 1004)),
    ((5, 2), (560, 224)),
    ((224, 50), (1004, 224)),
    ((100, 3200), (224, 7168)),   # exactly 32:1 is kept
    ((1, 40), (224, 7168)),       # 40:1 is stretched to 32:1
    ((6000, 1), (7168, 224)),
    ((224, 100000), (224, 100000)),  # both sides >= 224: untouched, however elongated
])
def test_working_size(size, expected):
    """Shorter side to 224, longer side min(round(L * 224 / s), 32 * 224) (values worked out by hand)."""
    assert MF.working_size(*size, 224) == expected


@pytest.mark.kernels
@pytest.mark.parametrize('in_size, out_size', [(1, 224), (3, 7), (100, 224), (300, 672), (6000, 7168), (9000, 224)])
def test_bilinear_taps_reproduce_interpolate_along_one_axis(in_size, out_size):
    """A 1 x in_size row resized by F.interpolate equals the taps' weighted sum, each pixel within
    bilinear_error: both compute the source coordinates in float32, with or without FMA."""
    row = torch.rand(1, 1, 1, in_size, generator=torch.Generator().manual_seed(in_size))
    expected = torch.nn.functional.interpolate(row, size=(1, out_size), mode='bilinear', align_corners=False)[0, 0, 0]
    low, high, weight = MF.bilinear_taps(torch.arange(out_size, dtype=torch.float32), in_size, out_size)
    assert low.min() >= 0 and high.max() <= in_size - 1 and ((weight >= 0) & (weight <= 1)).all()
    got = (1 - weight) * row[0, 0, 0, low] + weight * row[0, 0, 0, high]
    assert ((got - expected).abs() <= bilinear_error(row, (1, out_size))[0, 0]).all()


@pytest.mark.parametrize('height, width', [
    *(pytest.param(*size, marks=pytest.mark.kernels) for size in [(100, 300), (1, 1), (2, 3), (223, 1000)]),
    *(pytest.param(*size, marks=pytest.mark.slow) for size in [(1, 40), (40, 1), (17, 500)]),  # 50-55 patches: ~1 s
])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_image_patch_equals_resizing_then_cutting(height, width, dtype):
    """Every patch computed from the source pixels equals the patch of the materialised resize, each
    pixel within bilinear_error (two correct bilinear resizes, in float32 or float64)."""
    x = torch.rand(2, 3, height, width, dtype=dtype, generator=torch.Generator().manual_seed(height * width))
    size = MF.working_size(height, width, 224)
    resized = torch.nn.functional.interpolate(x, size=size, mode='bilinear', align_corners=False)
    error = bilinear_error(x, size)
    rows, cols = MF.num_patches(*size, 224, 128)
    for r in range(rows):
        for c in range(cols):
            window = (..., slice(r * 128, r * 128 + 224), slice(c * 128, c * 128 + 224))
            patch = MF.image_patch(x, size, r * 128, c * 128, 224)
            assert ((patch - resized[window]).abs() <= error[window]).all(), (r, c)


def test_bilinear_error_is_far_below_what_a_wrong_tap_moves():
    """The bound is rounding-sized: an output read half a pixel off differs by far more."""
    x = torch.rand(1, 3, 100, 300, generator=torch.Generator().manual_seed(0))
    size = MF.working_size(100, 300, 224)
    patch = MF.image_patch(x, size, 0, 128, 224)
    shifted = torch.nn.functional.interpolate(x, size=size, mode='bilinear', align_corners=True)[..., :, 128:352]
    error = bilinear_error(x, size, 0, 128, 224, 224)
    assert error.max() < 1e-3 * (patch - shifted).abs().max()


def test_image_patch_passes_gradients_like_interpolate():
    x = torch.rand(1, 3, 50, 80, dtype=torch.float64, requires_grad=True)
    size = MF.working_size(50, 80, 224)
    weights = torch.rand(1, 3, 224, 224, dtype=torch.float64)
    (MF.image_patch(x, size, 0, 128, 224) * weights).sum().backward()
    got, x.grad = x.grad, None
    resized = torch.nn.functional.interpolate(x, size=size, mode='bilinear', align_corners=False)
    (resized[..., :, 128:352] * weights).sum().backward()
    # Each pixel's gradient sums the weights of the outputs it feeds: at most (2 * 224 / 50 + 2)^2 = 121
    # terms below 1 in float64, summed in another order: within 2 * 121 * eps * 121 (Higham's bound).
    torch.testing.assert_close(got, x.grad, rtol=0, atol=2 * 121 * 121 * EPS64)


@pytest.mark.parametrize('lam', [0.0, 0.5, 1.0, -0.5, 0.3, 1e-9, 10.0, -10.0])
def test_box_cox_matches_scipy(lam):
    """((x + 1)^lam - 1) / lam, log1p at 0: scipy.special.boxcox1p."""
    x = torch.rand(4, 1024, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 30
    # Both are a few correctly rounded float64 functions (log1p, expm1 or pow) of z = lam * log1p(x);
    # ((1 + x)^lam - 1) / lam has relative condition at most 1 + |z| <= 1 + 10 log(31) = 35 in z: a few
    # ulps times that, within 200 eps relative; values near 0 (x near 0) within 200 eps absolute.
    np.testing.assert_allclose(MF.box_cox(x, lam).numpy(), scipy.special.boxcox1p(x.numpy(), lam),
                               rtol=200 * EPS64, atol=200 * EPS64)


@pytest.mark.parametrize('lam', [1e-300, 1e-45, 1e-30])
def test_box_cox_with_lambda_below_float32_resolution_is_the_log_limit(lam):
    """lam * log1p(x) underflows in float32; the result is then log1p(x) (scipy's limit), not 0 / 0."""
    x = torch.rand(3, 512, generator=torch.Generator().manual_seed(1)) * 30
    expected = scipy.special.boxcox1p(x.double().numpy(), lam)
    # float32 log1p of values up to 31: a couple of ulps of values up to log(31) = 3.4.
    np.testing.assert_allclose(MF.box_cox(x, lam).numpy(), expected, rtol=0, atol=4 * 2 ** -24 * np.log(31))


def test_box_cox_gradient_is_finite_at_zero():
    x = torch.tensor([0.0, 0.5, 3.0], requires_grad=True)
    MF.box_cox(x, 1e-300).sum().backward()
    torch.testing.assert_close(x.grad, 1 / (1 + x.detach()))  # d/dx log1p(x)


def test_magnitude_quality_scales_by_the_standard_deviation():
    """Q_mag = mean(boxcox1p(|f| / (std(|f|, ddof=1) + 1e-6), lam)), computed with NumPy/SciPy."""
    features = torch.randn(4, 1024, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    magnitude = features.abs().numpy()
    scaled = magnitude / (magnitude.std(axis=1, ddof=1, keepdims=True) + 1e-6)
    for lam in (0.0, 0.5):
        # The standard deviation and the mean sum 1024 terms in float64 (1024 eps relative each, in
        # whatever order); Box-Cox (a square root or a log here) keeps relative errors: 4 * 1024 eps.
        np.testing.assert_allclose(MF.magnitude_quality(features, lam).numpy(),
                                   scipy.special.boxcox1p(scaled, lam).mean(axis=1), rtol=4 * 1024 * EPS64)


def test_magnitude_quality_is_scale_invariant_and_non_negative():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(5, 512, dtype=torch.float64, generator=generator)
    q = MF.magnitude_quality(features)
    assert (q >= 0).all()
    # Scaled by 37: |f| / (std(|f|) + 1e-6) changes by at most 1e-6 / std relative (the 1e-6 does not
    # scale), which moves Box-Cox (slope (1 + x)^(lam - 1) <= 1 for lam = 0.5) by at most x 1e-6 / std;
    # plus the rounding of the std's 512-term sum and two divisions (4 * 512 eps relative).
    magnitude = features.abs()
    std = magnitude.std(dim=-1)
    moved = 1e-6 / std * (magnitude / std[:, None]).amax(dim=-1)
    assert ((MF.magnitude_quality(features * 37.0) - q).abs() <= moved + 4 * 512 * EPS64 * q).all()
    # Gaussian features: |f| is half-normal with standard deviation sqrt(1 - 2 / pi), so Q_mag's
    # expectation is E[2 (sqrt(1 + |Z| / sqrt(1 - 2 / pi)) - 1)] for Z standard normal, integrated here.
    # The 100 rows are independent draws: their mean lies within 5 standard errors of it (p < 1e-6).
    sigma = np.sqrt(1 - 2 / np.pi)
    expected = scipy.integrate.quad(lambda z: 2 * (np.sqrt(1 + z / sigma) - 1) * 2 * scipy.stats.norm.pdf(z),
                                    0, np.inf)[0]
    rows = MF.magnitude_quality(torch.randn(100, 4096, dtype=torch.float64, generator=generator)).numpy()
    assert abs(rows.mean() - expected) < 5 * rows.std(ddof=1) / np.sqrt(len(rows))


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
    # Logits are scale times a 64-term dot product of unit vectors: within scale * 64 eps of the loop's
    # in float64; a pair's probability moves by at most a quarter of a logit difference, the mean no more.
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=scale * 64 * EPS64)


def test_fuse_matches_formula():
    q_sim = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    q_mag = torch.tensor([1.3, 0.5, 0.1], dtype=torch.float64)
    score, w_sim, w_mag = MF.fuse(q_sim, q_mag, base_cos=1.0, base_norm=0.6, alpha=1.0)
    d = q_sim.numpy() - q_mag.numpy()
    e_sim, e_mag = np.exp(1.0 + d), np.exp(0.6 - d)
    # A two-way softmax and a weighted sum of two in float64: a handful of roundings (8 eps relative).
    np.testing.assert_allclose(w_sim.numpy(), e_sim / (e_sim + e_mag), rtol=8 * EPS64)
    np.testing.assert_allclose(w_mag.numpy(), e_mag / (e_sim + e_mag), rtol=8 * EPS64)
    np.testing.assert_allclose(score.numpy(), (e_sim * q_sim.numpy() + e_mag * q_mag.numpy()) / (e_sim + e_mag),
                               rtol=8 * EPS64)


def test_similarity_quality_of_a_zero_feature_is_one_half():
    text = torch.nn.functional.normalize(torch.randn(10, 64), dim=-1)
    assert MF.similarity_quality(torch.zeros(3, 64), text, 100.0).tolist() == [0.5] * 3


def test_image_components_are_means_over_views_of_the_parts():
    """One image's components from its (views, D) features, against the formulas written out in NumPy."""
    torch.manual_seed(1)
    features = torch.randn(7, 64, dtype=torch.float64)
    text = torch.nn.functional.normalize(torch.randn(10, 64, dtype=torch.float64), dim=-1)
    got = MF.image_components(features, text, 50.0, box_lam=0.3, base_cos=0.9, base_norm=0.4, alpha=1.5)
    f = features.numpy()
    logits = 50.0 * (f / np.linalg.norm(f, axis=1, keepdims=True)) @ text.numpy().T
    q_sim = scipy.special.softmax(logits.reshape(7, 5, 2), axis=-1)[..., 0].mean(axis=1)
    a = np.abs(f)
    q_mag = scipy.special.boxcox1p(a / (a.std(axis=1, ddof=1, keepdims=True) + 1e-6), 0.3).mean(axis=1)
    w = scipy.special.softmax(np.stack([0.9 + 1.5 * (q_sim - q_mag), 0.4 - 1.5 * (q_sim - q_mag)], -1), axis=-1)
    expected = ((w[:, 0] * q_sim + w[:, 1] * q_mag).mean(), q_sim.mean(), q_mag.mean(), w[:, 0].mean(), w[:, 1].mean())
    assert isinstance(got, MF.QualityComponents)
    for field, value in zip(got._fields, expected):
        assert got_value_close(getattr(got, field), value), field
    # Batched over images: the same as one image at a time.
    batched = MF.image_components(torch.stack([features, features.flip(0) * 2]), text, 50.0, box_lam=0.3)
    single = MF.image_components(features, text, 50.0, box_lam=0.3)
    for field in got._fields:
        torch.testing.assert_close(getattr(batched, field)[0], getattr(single, field), rtol=0, atol=COMPONENTS_64)


# image_components against NumPy in float64: the logits (scale 50 times 64-term dot products of unit
# vectors) agree to 50 * 64 eps = 7e-13; probabilities, Q_mag (64-term sums), the fusion weights
# (alpha 1.5 times differences of those) and the means over 7 views move by less plus a few eps.
COMPONENTS_64 = 1e-12


def got_value_close(tensor, value):
    return tensor.shape == () and abs(tensor.item() - value) < COMPONENTS_64
