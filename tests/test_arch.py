"""Behaviour of the MACLIP arch on small CLIP checkpoints made by the tests.

Scores are compared with the same metric computed in float64: a correct float32 computation lies
within rounding_bound of it (tests/rounding.py: a model of float32 rounding that holds for any
kernel, so on any CPU). Two computations that run the same operations on the same values are
compared bitwise: the CPU kernels are deterministic for a given input.
"""
import functools
import math
import re

import numpy as np
import pyiqa
import pytest
import scipy.special
import torch
import torch.nn.functional as F
from pyiqa.archs import clip_model
from torch import nn

from rounding import UNIT_ROUNDOFF, assert_within_rounding, rounding_bound

from pyiqa_maclip import MACLIP, QualityComponents
from pyiqa_maclip.functional import DEFAULT_PROMPTS, image_components, working_size
from pyiqa_maclip.testing import random_images


def _different_images(batch=4, height=260, width=390):
    images = torch.cat([random_images(1, height, width, seed=s) for s in range(batch)])
    images[-1] = torch.linspace(0, 1, width).expand(3, height, width)  # a gradient, unlike the others
    return images


@pytest.fixture(scope='module')
def different(tiny_metric):
    """_different_images() and the rounding bound of the default metric's scores of them."""
    images = _different_images()
    return images, rounding_bound(tiny_metric, images, fields=['score'])


@pytest.mark.kernels
def test_batch_scores_equal_single_scores(tiny_rn, different):
    metric = MACLIP(backbone=str(tiny_rn), chunk_size=3)  # chunks straddle images
    images, rounding = different
    batch = metric(images)
    single = torch.cat([metric(image[None]) for image in images])
    assert batch.shape == (4, 1)
    assert_within_rounding(batch, rounding)
    assert_within_rounding(single, rounding)
    assert batch.max() - batch.min() > 100 * rounding.bound.score.max()  # the check would see images being mixed


def test_images_of_different_sizes_share_chunks(tiny_rn):
    metric = MACLIP(backbone=str(tiny_rn), chunk_size=4)
    images = [random_images(1, *size, seed=i)[0] for i, size in enumerate([(224, 224), (300, 500), (50, 80), (1, 1)])]
    rounding = rounding_bound(metric, images, fields=['score'])
    together = metric.score_images(images)
    alone = torch.cat([metric(image[None]) for image in images])
    assert together.score.shape == (4,)
    assert_within_rounding(together.score, rounding)
    assert_within_rounding(alone, rounding)


@pytest.mark.parametrize('bad, error, words', [
    (torch.rand(2, 3, 224, 224), TypeError, 'list of (C, H, W)'),
    ([], ValueError, 'empty list'),
    ([torch.rand(2, 3, 224, 224)], ValueError, 'single images'),
    ([torch.rand(3, 224, 224), 'photo.jpg'], TypeError, 'torch.Tensor'),
])
def test_score_images_rejects_bad_input(tiny_metric, bad, error, words):
    with pytest.raises(error, match=re.escape(words)):
        tiny_metric.score_images(bad)


@pytest.mark.kernels
@pytest.mark.parametrize('chunk_size', [1, 7, 1000])
def test_chunk_size_does_not_change_scores(tiny_rn, different, chunk_size):
    images, rounding = different
    assert_within_rounding(MACLIP(backbone=str(tiny_rn), chunk_size=chunk_size)(images), rounding)


@functools.lru_cache(maxsize=None)
def _pyiqa_clip(path: str):
    return clip_model.load(path, 'cpu').eval()


def _independent_components(path, image: torch.Tensor, lam=0.5, base_cos=1.0, base_norm=0.6, alpha=1.0,
                            pos_embedding=False):
    """The official pipeline written out with pyiqa's own CLIP loader (a TorchScript archive, all it
    reads), nn.Unfold, contiguous tensors, autograd on, and SciPy's Box-Cox, for one image with both
    sides >= 224."""
    clip = _pyiqa_clip(str(path))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    x = (image - mean) / std
    patches = nn.Unfold(224, stride=128)(x).view(1, 3, 224, 224, -1)[0].permute(3, 0, 1, 2)
    views = torch.cat([patches, F.interpolate(x, size=(224, 224), mode='bilinear', align_corners=False)])
    f = clip.encode_image(views.contiguous(), pos_embedding=pos_embedding).detach().double().numpy()
    from pyiqa.archs.clip_imports import clip as openai_clip
    t = clip.encode_text(openai_clip.tokenize([p for pair in DEFAULT_PROMPTS for p in pair])).detach().double().numpy()
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    logits = clip.logit_scale.exp().item() * (f / np.linalg.norm(f, axis=1, keepdims=True)) @ t.T
    pairs = scipy.special.softmax(logits.reshape(len(f), -1, 2), axis=-1)
    q_sim = pairs[..., 0].mean(axis=1)
    a = np.abs(f)
    q_mag = scipy.special.boxcox1p(a / (a.std(axis=1, ddof=1, keepdims=True) + 1e-6), lam).mean(axis=1)
    d = q_sim - q_mag
    w = scipy.special.softmax(np.stack([base_cos + alpha * d, base_norm - alpha * d], axis=-1), axis=-1)
    fused = w[:, 0] * q_sim + w[:, 1] * q_mag
    return fused.mean(), q_sim.mean(), q_mag.mean(), w[:, 0].mean(), w[:, 1].mean()


@pytest.fixture(scope='module')
def tiny_archive(checkpoints):
    """The tiny ResNet CLIP's weights (those of tiny_rn) as the TorchScript archive pyiqa's loader reads."""
    return checkpoints('tiny-RN', 'torchscript')


@pytest.mark.kernels
def test_components_match_independent_computation(tiny_metric, tiny_archive):
    """Ours and the independent float32 pipeline: both within float32 rounding of the float64 computation."""
    image = random_images(1, 352, 480, seed=3)
    rounding = rounding_bound(tiny_metric, image)
    with torch.no_grad():
        got = tiny_metric(image, return_components=True)
    assert isinstance(got, QualityComponents)
    expected = _independent_components(tiny_archive, image)
    for field, value in zip(got._fields, expected):
        assert_within_rounding(getattr(got, field), rounding, field)
        assert_within_rounding([value], rounding, field)


@pytest.mark.parametrize('option, value', [('box_lam', 0.0), ('box_lam', 0.3), ('base_norm', 0.2), ('alpha', 2.5)])
def test_fusion_options_reach_the_math(tiny_rn, tiny_archive, option, value):
    metric = MACLIP(backbone=str(tiny_rn), **{option: value})
    image = random_images(1, 224, 352, seed=1)
    rounding = rounding_bound(metric, image, fields=['score'])
    kwargs = {'lam' if option == 'box_lam' else option: value}
    with torch.no_grad():
        got = metric(image)
    assert_within_rounding(got, rounding)
    assert_within_rounding([_independent_components(tiny_archive, image, **kwargs)[0]], rounding)
    default = rounding_bound(MACLIP(backbone=str(tiny_rn)), image, fields=['score'])
    assert (rounding.exact.score - default.exact.score).abs() > rounding.bound.score + default.bound.score


def test_components_are_consistent(tiny_metric):
    images = _different_images()
    parts = tiny_metric(images, return_components=True)
    for tensor in parts:
        assert tensor.shape == (4, 1)
        assert torch.isfinite(tensor).all()
    # Per view a two-way softmax: w_sim + w_mag = (e1 + e2) / (e1 + e2) up to its sum and two divisions (3 u);
    # each mean over the V views adds at most V roundings of values below 1.
    views = tiny_metric._num_views(images[:1])
    assert ((parts.w_sim + parts.w_mag - 1).abs() <= (3 + 2 * views) * UNIT_ROUNDOFF[torch.float32]).all()
    assert ((parts.q_sim > 0) & (parts.q_sim < 1)).all() and (parts.q_mag >= 0).all()
    assert torch.equal(tiny_metric(images), parts.score)  # the same computation


def test_custom_prompts(tiny_rn):
    image = random_images(1, 300, 300, seed=2)
    default = MACLIP(backbone=str(tiny_rn))
    flipped = MACLIP(backbone=str(tiny_rn), prompts=[(b, a) for a, b in DEFAULT_PROMPTS])
    flat = MACLIP(backbone=str(tiny_rn), prompts=[p for pair in DEFAULT_PROMPTS for p in pair])
    assert torch.equal(flat(image), default(image))  # the same prompts, the same computation
    q_default = default(image, return_components=True).q_sim
    # Swapping each pair turns every positive probability p into 1 - p. The same features and the same
    # pairs of vectors in every logit, but a matrix product may sum a column in another order: each
    # logit is scale * (a dot product of two unit vectors of D terms), within scale * D u of the other
    # computation (Higham's bound), which moves a pair's probability by at most a quarter of that;
    # the softmax and the mean round a few more times.
    u = UNIT_ROUNDOFF[torch.float32]
    tolerance = default.logit_scale.item() * default.text_features.shape[-1] * u / 4 + 8 * u
    assert ((flipped(image, return_components=True).q_sim - (1 - q_default)).abs() <= tolerance).all()


def test_patch_geometry_reaches_the_views(tiny_rn):
    """patch_size=96, stride=64: 16 patches of the 300x300 image and a 96x96 global view, as
    nn.Unfold and F.interpolate make them, within float32 rounding of the float64 computation."""
    metric = MACLIP(backbone=str(tiny_rn), patch_size=96, stride=64)
    image = random_images(1, 300, 300, seed=2)
    rounding = rounding_bound(metric, image)
    with torch.no_grad():
        got = metric(image, return_components=True)
        materialised, views = _materialised_components(metric, image)
    assert views == metric._num_views(image) == 17
    for field in got._fields:
        assert_within_rounding(getattr(got, field), rounding, field)
        assert_within_rounding(getattr(materialised, field)[None], rounding, field)


@pytest.mark.kernels
def test_small_images_are_upscaled_like_a_single_patch(tiny_metric):
    """A 112x112 image is upscaled to 224x224: its one patch and its global view are both that image
    (within the float32 rounding of the float64 computation, resizing included)."""
    small = random_images(1, 112, 112, seed=4)
    upscaled = F.interpolate(small, size=(224, 224), mode='bilinear', align_corners=False)
    rounding = rounding_bound(tiny_metric, small, fields=['score'])
    assert_within_rounding(tiny_metric(small), rounding)
    assert_within_rounding(tiny_metric(upscaled), rounding)


def _materialised_components(metric, image):
    """The small-image rule computed the plain way: resize the whole image to its working size
    with F.interpolate, cut it with nn.Unfold, add the global view of the original image."""
    p, channels = metric.patch_size, image.shape[1]
    size = working_size(*image.shape[-2:], p)
    resized = F.interpolate(image, size=size, mode='bilinear', align_corners=False)
    patches = nn.Unfold(p, stride=metric.stride)(resized).view(1, channels, p, p, -1)[0].permute(3, 0, 1, 2)
    views = torch.cat([patches, F.interpolate(image, size=(p, p), mode='bilinear', align_corners=False)])
    features = torch.cat([metric.encode_views(chunk) for chunk in views.split(16)])
    return image_components(features, metric.text_features, metric.logit_scale), len(views)


@pytest.mark.parametrize('height, width', [*(pytest.param(*size, marks=pytest.mark.kernels) for size in [(1, 1), (2, 3), (100, 300)]),
                                           (223, 223), (100, 224), (224, 50),
                                           pytest.param(1, 40, marks=pytest.mark.slow),  # 56 views: ~10 s
                                           pytest.param(6000, 1, marks=pytest.mark.slow)])
def test_any_size_scores_as_if_resized_whole(tiny_metric, height, width):
    """Any size, however small or elongated: patches computed from the source pixels and the
    materialised resize (F.interpolate, nn.Unfold) both give the float64 computation's components,
    within float32 rounding (resizing included)."""
    image = random_images(1, height, width, seed=8)
    rounding = rounding_bound(tiny_metric, image)
    with torch.no_grad():
        got = tiny_metric(image, return_components=True)
        materialised, views = _materialised_components(tiny_metric, image)
    for field in got._fields:
        assert_within_rounding(getattr(got, field), rounding, field)
        assert_within_rounding(getattr(materialised, field)[None], rounding, field)
    assert tiny_metric._num_views(image) == views


def test_a_1x6000_strip_has_a_bounded_number_of_views_and_is_never_resized_whole(tiny_metric, monkeypatch):
    """32:1 at most: a 224 x 7168 working size, 55 patches and the global view; no tensor
    the size of the 224 x 1,344,000 upscale (or of the 224 x 7168 one) is ever made."""
    image = random_images(1, 1, 6000, seed=9)
    largest = []
    encode = tiny_metric.encode_views
    monkeypatch.setattr(tiny_metric, 'encode_views', lambda views: largest.append(views.numel()) or encode(views))
    resize = F.interpolate
    monkeypatch.setattr(F, 'interpolate', lambda x, size=None, **kw: largest.append(math.prod(size)) or resize(x, size, **kw))
    with torch.no_grad():
        score = tiny_metric(image)
    assert tiny_metric._num_views(image) == 56
    assert torch.isfinite(score).all()
    assert max(largest) <= 16 * 3 * 224 * 224  # one encoder chunk


def test_gradient_reaches_every_pixel_of_a_small_image(tiny_rn):
    metric = MACLIP(backbone=str(tiny_rn))
    image = random_images(1, 30, 200, seed=2).requires_grad_()
    metric(image).sum().backward()
    assert torch.isfinite(image.grad).all() and (image.grad != 0).float().mean() > 0.9


def test_grayscale_equals_replicated_rgb(tiny_metric):
    """Both within float32 rounding of the float64 computation (one channel or three take other
    resizing kernels: not bitwise equal)."""
    gray = random_images(2, 230, 260, channels=1, seed=6)
    rounding = rounding_bound(tiny_metric, gray, fields=['score'])
    assert_within_rounding(tiny_metric(gray), rounding)
    assert_within_rounding(tiny_metric(gray.expand(-1, 3, -1, -1)), rounding)


def test_prompts_embedded_once_when_built(tiny_rn, monkeypatch):
    calls = []
    original = clip_model.CLIP.encode_text
    monkeypatch.setattr(clip_model.CLIP, 'encode_text', lambda self, tokens: calls.append(len(tokens)) or original(self, tokens))
    metric = MACLIP(backbone=str(tiny_rn))
    for _ in range(3):
        metric(random_images(1, 224, 224))
    assert calls == [10]  # the ten prompts, once


def test_prompt_cache_made_in_inference_mode_serves_autograd(tiny_rn):
    metric = MACLIP(backbone=str(tiny_rn))
    with torch.inference_mode():
        metric(random_images(1, 224, 224))
    image = random_images(1, 224, 224).requires_grad_()
    metric(image).sum().backward()
    assert image.grad.abs().sum() > 0


def test_output_is_an_ordinary_tensor(tiny_metric):
    """Scores computed under inference mode can still be edited and used by the caller."""
    with torch.no_grad():
        score = tiny_metric(random_images(1, 224, 224))
    score += 1  # would raise for an inference tensor
    assert not score.is_inference()


def test_create_metric_builds_this_package(tiny_rn):
    metric = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cpu')
    assert isinstance(metric.net, MACLIP)
    image = random_images(2, 240, 250)
    assert torch.equal(metric(image), metric.net(image))
    assert metric.lower_better is False


@pytest.mark.parametrize('bad, error, words', [
    ([[0.5]], TypeError, 'torch.Tensor'),
    (np.zeros((1, 3, 8, 8), dtype=np.float32), TypeError, 'torch.Tensor'),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError, 'dtype torch.uint8'),
    (torch.zeros(1, 3, 8, 8, dtype=torch.int64), TypeError, 'dtype torch.int64'),
    (torch.zeros(1, 3, 8, 8, dtype=torch.bool), TypeError, 'dtype torch.bool'),
    (torch.zeros(1, 3, 8, 8, dtype=torch.complex64), TypeError, 'dtype torch.complex64'),
    (torch.zeros(3, 8, 8), ValueError, 'unsqueeze(0)'),
    (torch.zeros(8, 8), ValueError, '2-D'),
    (torch.zeros(1, 1, 3, 8, 8), ValueError, '5-D'),
    (torch.zeros(1, 2, 8, 8), ValueError, '2 channels'),
    (torch.zeros(1, 4, 8, 8), ValueError, '4 channels'),
    (torch.zeros(0, 3, 8, 8), ValueError, 'empty'),
    (torch.zeros(1, 3, 0, 8), ValueError, 'empty'),
    (torch.zeros(1, 3, 8, 0), ValueError, 'empty'),
    (torch.full((1, 3, 8, 8), math.nan), ValueError, 'NaN'),
    (torch.full((1, 3, 8, 8), math.inf), ValueError, 'Inf'),
])
def test_bad_input_is_rejected_before_any_work(tiny_rn, monkeypatch, bad, error, words):
    metric = MACLIP(backbone=str(tiny_rn))
    monkeypatch.setattr(metric.visual.conv1, 'forward', lambda *a, **k: pytest.fail('encoder ran on bad input'))
    with pytest.raises(error) as raised:
        metric(bad)
    assert words in str(raised.value)
    assert '(B, C, H, W)' in str(raised.value)


def test_gray_and_rgb_images_share_chunks(tiny_rn):
    """score_images takes (C, H, W) images with C = 1 or 3 together (a 16-bit gray PNG decodes as
    (1, H, W) among RGB photos in a collection): a gray image is scored as RGB, as alone."""
    metric = MACLIP(backbone=str(tiny_rn), chunk_size=4)  # both images' views in one chunk
    rgb, gray = random_images(1, 230, 300, seed=1)[0], random_images(1, 240, 250, channels=1, seed=2)[0]
    together = metric.score_images([rgb, gray])
    alone = torch.cat([metric(rgb[None]), metric(gray[None]), metric(gray.expand(3, -1, -1)[None])]).flatten()
    rounding = rounding_bound(metric, [rgb, gray.expand(3, -1, -1)], fields=['score'])
    assert_within_rounding(together.score, rounding)
    assert_within_rounding(alone[:2], rounding)
    assert_within_rounding(alone[[0, 2]], rounding)  # gray as replicated RGB


@pytest.mark.parametrize('option, value, words', [
    ('box_lam', math.nan, 'box_lam'),
    ('alpha', 'high', 'alpha'),
    ('base_cos', None, 'base_cos'),
    ('patch_size', 0, 'patch_size'),
    ('patch_size', 16, 'at least 32'),
    ('stride', 2.5, 'stride'),
    ('chunk_size', -1, 'chunk_size'),
    ('pos_embedding', 'yes', 'pos_embedding'),
    ('half', 1, 'half'),
    ('prompts', [], 'prompts'),
    ('prompts', ['Good image'], 'even number'),
    ('prompts', [('Good image', '')], 'pairs'),
    ('model_type', 'clipiqa', 'model_type'),
    ('box_lam', 1e6, re.escape('box_lam must be a real number in [-10, 10], got 1000000.0')),
    ('box_lam', -10.5, re.escape('[-10, 10]')),
    ('base_cos', 1e300, re.escape('base_cos must be a real number in [-1e+06, 1e+06]')),
    ('base_norm', -2e6, 'base_norm'),
    ('alpha', 1e7, 'alpha'),
])
def test_bad_options_are_rejected(tiny_rn, option, value, words):
    with pytest.raises(ValueError, match=words):
        MACLIP(backbone=str(tiny_rn), **{option: value})


@pytest.mark.parametrize('options', [
    {'box_lam': 10.0}, {'box_lam': -10.0}, {'box_lam': 1e-300}, {'box_lam': -1e-300},
    {'base_cos': 1e6, 'base_norm': -1e6}, {'base_cos': -1e6}, {'alpha': 1e6}, {'alpha': -1e6},
    {'box_lam': 10.0, 'alpha': 1e6, 'base_norm': 1e6},
])
def test_every_accepted_option_value_gives_the_float64_scores(tiny_rn, options):
    """The ends of the accepted ranges, on photos-like, constant and extreme images: finite, and the
    float64 computation's components within float32 rounding."""
    metric = MACLIP(backbone=str(tiny_rn), **options)
    images = torch.cat([random_images(2, 224, 300, seed=3), torch.zeros(1, 3, 224, 300), torch.ones(1, 3, 224, 300)])
    rounding = rounding_bound(metric, images)
    parts = metric(images, return_components=True)
    for field in parts._fields:
        assert torch.isfinite(getattr(parts, field)).all(), (options, field)
        assert_within_rounding(getattr(parts, field), rounding, field)


def test_numpy_option_values_are_accepted(tiny_rn):
    metric = MACLIP(backbone=str(tiny_rn), box_lam=np.float32(0.25), alpha=np.int64(2))
    assert (metric.box_lam, metric.alpha) == (0.25, 2.0)


def test_tiny_box_lam_is_the_log_limit(tiny_rn):
    """box_lam = 1e-300 (0 in float32) scores as box_lam = 0, the Box-Cox limit: lam * log1p(x)
    underflows to 0, so box_cox takes its log branch, the very operations of box_lam = 0."""
    image = random_images(1, 230, 260, seed=1)
    tiny = MACLIP(backbone=str(tiny_rn), box_lam=1e-300)(image, return_components=True).q_mag
    log = MACLIP(backbone=str(tiny_rn), box_lam=0.0)(image, return_components=True).q_mag
    assert torch.equal(tiny, log)


@pytest.mark.parametrize('convert, words', [
    (lambda x: x * 255, 'for 0..255 images use x / 255'),
    (lambda x: x * 2 - 1, 'for [-1, 1] images use (x + 1) / 2'),
    (lambda x: x * 1.01, 'clamp values that drifted out with x.clamp(0, 1)'),
    (lambda x: x * 1e30, 'rescale them to [0, 1]'),
])
def test_images_outside_the_unit_range_are_rejected(tiny_rn, monkeypatch, convert, words):
    metric = MACLIP(backbone=str(tiny_rn))
    monkeypatch.setattr(metric.visual.conv1, 'forward', lambda *a, **k: pytest.fail('encoder ran on bad input'))
    image = convert(random_images(1, 224, 224))
    with pytest.raises(ValueError) as raised:
        metric(image)
    assert words in str(raised.value) and 'values in [0, 1]' in str(raised.value)
    with pytest.raises(ValueError, match=re.escape(words)):
        metric.score_images([image[0]])


def test_rounding_outside_the_unit_range_is_tolerated(tiny_metric):
    """Values up to RANGE_TOLERANCE (1e-3) outside [0, 1] are scored as they are."""
    image = random_images(1, 224, 224)
    image[..., 0, 0] = -0.0009
    image[..., 0, 1] = 1.0009
    assert_within_rounding(tiny_metric(image), rounding_bound(tiny_metric, image, fields=['score']))  # not clamped


def test_loss_input_may_leave_the_unit_range(tiny_rn):
    """Input that requires grad (a loss's) is taken as it is, as pyiqa does for as_loss, with finite gradients."""
    metric = MACLIP(backbone=str(tiny_rn))
    drifted = (random_images(2, 224, 260) * 1.2 - 0.1).requires_grad_()
    noise = torch.randn(2, 3, 224, 260, generator=torch.Generator().manual_seed(0)).requires_grad_()
    for image in (drifted, noise):
        metric(image).sum().backward()
        assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_clip_weights_load_from_an_empty_state_dict_and_follow_to(tiny_rn):
    """Not in the state dict (see test_pyiqa_conventions' model with the loss), yet moved by .to()."""
    metric = MACLIP(backbone=str(tiny_rn))
    metric.load_state_dict({}, strict=True)
    metric.to(torch.float64)
    assert metric.visual.conv1.weight.dtype == torch.float64
    assert metric.text_features.dtype == torch.float64


def test_vit_patch_size_must_fit_its_grid(checkpoints):
    path = str(checkpoints('tiny-ViT'))
    with pytest.raises(ValueError, match='multiple of the ViT patch size 32'):
        MACLIP(backbone=path, patch_size=100)
    assert torch.isfinite(MACLIP(backbone=path, patch_size=160, stride=96)(random_images(1, 200, 300))).all()


def test_pos_embedding_option_reaches_the_encoder(tiny_rn, tiny_archive):
    """pos_embedding=True gives the official pipeline's score with pyiqa's positional embedding, a
    score other than without it (both within float32 rounding of the float64 computation)."""
    image = random_images(1, 256, 256)
    metric = MACLIP(backbone=str(tiny_rn), pos_embedding=True)
    rounding = rounding_bound(metric, image, fields=['score'])
    with torch.no_grad():
        assert_within_rounding(metric(image), rounding)
    assert_within_rounding([_independent_components(tiny_archive, image, pos_embedding=True)[0]], rounding)
    plain = rounding_bound(MACLIP(backbone=str(tiny_rn)), image, fields=['score'])
    assert (rounding.exact.score - plain.exact.score).abs() > rounding.bound.score + plain.bound.score


@pytest.mark.parametrize('architecture', ['tiny-RN', 'tiny-ViT'])
@pytest.mark.parametrize('dtype', [*(pytest.param(dtype, marks=pytest.mark.slow)  # sampled 16-bit bounds: ~1.5 s
                                     for dtype in (torch.float16, torch.bfloat16)), torch.float64])
def test_module_dtype_conversions(checkpoints, architecture, dtype):
    """metric.to(dtype) as for any module: the encoder runs in that type; LayerNorm (which
    pyiqa's CLIP computes in float32) and the prompt embeddings keep their float32 values."""
    images = _different_images()
    full = MACLIP(backbone=str(checkpoints(architecture)))
    expected = full(images)
    converted = MACLIP(backbone=str(checkpoints(architecture))).to(dtype)
    assert converted.visual.conv1.weight.dtype == dtype
    norms = [m for m in converted.visual.modules() if isinstance(m, nn.LayerNorm)]
    assert all(m.weight.dtype == m.bias.dtype == torch.float32 for m in norms)
    assert bool(norms) == (architecture == 'tiny-ViT')
    scores = converted(images)
    # float64 keeps LayerNorm in float32 (pyiqa's CLIP): within float32 rounding of the float64 computation,
    # as the float32 scores are; 16-bit weights and activations: within 16-bit rounding of it.
    rounding = rounding_bound(full, images, dtype=torch.float32 if dtype == torch.float64 else dtype, fields=['score'])
    assert_within_rounding(expected, rounding)
    assert_within_rounding(scores, rounding)
    if dtype == torch.float64:
        assert scores.dtype == torch.float64 and converted.text_features.dtype == torch.float64
    else:
        assert scores.dtype == torch.float32
        torch.testing.assert_close(converted.text_features, full.text_features, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_half_module_stays_close(tiny_metric, tiny_rn):
    images = _different_images()
    rounding = rounding_bound(tiny_metric, images, dtype=torch.float16, fields=['score'])
    half = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cuda').half()(images.cuda())
    assert half.dtype == torch.float32
    assert_within_rounding(half.cpu(), rounding)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_half_precision_stays_close(tiny_metric, tiny_rn):
    images = _different_images()
    rounding = rounding_bound(tiny_metric, images, dtype=torch.float16, fields=['score'])
    assert_within_rounding(pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cuda', half=True)(images).cpu(), rounding)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu(tiny_rn, different):
    """CUDA float32 (TF32 off, pyiqa's default) within float32 rounding of the float64 computation, as the CPU's."""
    images, rounding = different
    cuda = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cuda')(images)
    assert cuda.device.type == 'cuda'
    assert_within_rounding(cuda.cpu(), rounding)


@pytest.mark.skipif(not torch.backends.mps.is_available(), reason='needs Apple MPS')
def test_mps_matches_cpu(tiny_rn, different):
    images, rounding = different
    assert_within_rounding(pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='mps')(images).cpu(), rounding)
