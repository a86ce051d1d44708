"""Behaviour of the MACLIP arch on small CLIP checkpoints made by the tests."""
import functools
import math
import re

import numpy as np
import pyiqa
import pytest
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F
from pyiqa.archs import clip_model
from torch import nn

from pyiqa_maclip.testing import random_images

from pyiqa_maclip import MACLIP, QualityComponents
from pyiqa_maclip.functional import DEFAULT_PROMPTS, image_components, working_size

EXACT = 1e-6  # what batching, chunking and memory format may change in float32


def _different_images(batch=4, height=260, width=390):
    images = torch.cat([random_images(1, height, width, seed=s) for s in range(batch)])
    images[-1] = torch.linspace(0, 1, width).expand(3, height, width)  # a gradient, unlike the others
    return images


def test_batch_scores_equal_single_scores(tiny_rn):
    metric = MACLIP(backbone=str(tiny_rn), chunk_size=3)  # chunks straddle images
    images = _different_images()
    batch = metric(images)
    single = torch.cat([metric(image[None]) for image in images])
    assert batch.shape == (4,)
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-5)
    assert batch.max() - batch.min() > 1e-3  # the check would see images being mixed


def test_images_of_different_sizes_share_chunks(tiny_rn):
    metric = MACLIP(backbone=str(tiny_rn), chunk_size=4)
    images = [random_images(1, *size, seed=i)[0] for i, size in enumerate([(224, 224), (300, 500), (50, 80), (1, 1)])]
    together = metric.score_images(images)
    alone = torch.cat([metric(image[None]) for image in images])
    assert together.score.shape == (4,)
    torch.testing.assert_close(together.score, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize('bad, error, words', [
    (torch.rand(2, 3, 224, 224), TypeError, 'list of (C, H, W)'),
    ([], ValueError, 'empty list'),
    ([torch.rand(2, 3, 224, 224)], ValueError, 'single images'),
    ([torch.rand(3, 224, 224), 'photo.jpg'], TypeError, 'torch.Tensor'),
])
def test_score_images_rejects_bad_input(tiny_metric, bad, error, words):
    with pytest.raises(error, match=re.escape(words)):
        tiny_metric.score_images(bad)


@pytest.mark.parametrize('chunk_size', [1, 7, 1000])
def test_chunk_size_does_not_change_scores(tiny_metric, tiny_rn, chunk_size):
    images = _different_images(batch=2)
    expected = tiny_metric(images)
    got = MACLIP(backbone=str(tiny_rn), chunk_size=chunk_size)(images)
    torch.testing.assert_close(got, expected, rtol=0, atol=EXACT)


@functools.lru_cache(maxsize=None)
def _pyiqa_clip(path: str):
    return clip_model.load(path, 'cpu').eval()


def _independent_components(path, image: torch.Tensor, lam=0.5, base_cos=1.0, base_norm=0.6, alpha=1.0):
    """The official pipeline written out with pyiqa's own CLIP loader, nn.Unfold, contiguous
    tensors, autograd on, and SciPy's Box-Cox, for one image with both sides >= 224."""
    clip = _pyiqa_clip(str(path))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    x = (image - mean) / std
    patches = nn.Unfold(224, stride=128)(x).view(1, 3, 224, 224, -1)[0].permute(3, 0, 1, 2)
    views = torch.cat([patches, F.interpolate(x, size=(224, 224), mode='bilinear', align_corners=False)])
    f = clip.encode_image(views.contiguous(), pos_embedding=False).detach().double().numpy()
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


def test_components_match_independent_computation(tiny_metric, tiny_rn):
    image = random_images(1, 352, 480, seed=3)
    with torch.no_grad():
        got = tiny_metric(image, return_components=True)
    assert isinstance(got, QualityComponents)
    expected = _independent_components(tiny_rn, image)
    for field, value in zip(got._fields, expected):
        assert abs(getattr(got, field).item() - value) < EXACT, (field, getattr(got, field).item(), value)


@pytest.mark.parametrize('option, value', [('box_lam', 0.0), ('box_lam', 0.3), ('base_norm', 0.2), ('alpha', 2.5)])
def test_fusion_options_reach_the_math(tiny_rn, option, value):
    metric = MACLIP(backbone=str(tiny_rn), **{option: value})
    image = random_images(1, 224, 352, seed=1)
    kwargs = {'lam' if option == 'box_lam' else option: value}
    with torch.no_grad():
        got = metric(image).item()
    assert abs(got - _independent_components(tiny_rn, image, **kwargs)[0]) < EXACT


def test_components_are_consistent(tiny_metric):
    parts = tiny_metric(_different_images(), return_components=True)
    for tensor in parts:
        assert tensor.shape == (4,)
        assert torch.isfinite(tensor).all()
    torch.testing.assert_close(parts.w_sim + parts.w_mag, torch.ones(4))
    assert ((parts.q_sim > 0) & (parts.q_sim < 1)).all() and (parts.q_mag >= 0).all()
    torch.testing.assert_close(tiny_metric(_different_images()), parts.score)


def test_custom_prompts_and_patch_geometry(tiny_rn):
    image = random_images(1, 300, 300, seed=2)
    default = MACLIP(backbone=str(tiny_rn))(image)
    flipped = MACLIP(backbone=str(tiny_rn), prompts=[(b, a) for a, b in DEFAULT_PROMPTS])
    flat = MACLIP(backbone=str(tiny_rn), prompts=[p for pair in DEFAULT_PROMPTS for p in pair])
    torch.testing.assert_close(flat(image), default, rtol=0, atol=EXACT)
    q_default = MACLIP(backbone=str(tiny_rn))(image, return_components=True).q_sim
    # Swapping each pair turns every positive probability p into 1 - p.
    torch.testing.assert_close(flipped(image, return_components=True).q_sim, 1 - q_default, rtol=0, atol=1e-5)
    # One 300x300 patch: the patch is the image, so the two views differ only by the global resize.
    assert torch.isfinite(MACLIP(backbone=str(tiny_rn), patch_size=96, stride=64)(image)).all()


def test_small_images_are_upscaled_like_a_single_patch(tiny_metric):
    """A 112x112 image is upscaled to 224x224: its one patch and its global view are both that image."""
    small = random_images(1, 112, 112, seed=4)
    upscaled = F.interpolate(small, size=(224, 224), mode='bilinear', align_corners=False)
    torch.testing.assert_close(tiny_metric(small), tiny_metric(upscaled), rtol=0, atol=EXACT)


@pytest.mark.parametrize('size', [(1, 1), (2, 3), (17, 500), (223, 223), (100, 224), (224, 50)])
def test_any_size_gives_a_finite_score(tiny_metric, size):
    score = tiny_metric(random_images(2, *size, seed=5))
    assert score.shape == (2,) and torch.isfinite(score).all()


def _materialised_components(metric, image):
    """The small-image rule computed the plain way: resize the whole image to its working size
    with F.interpolate, cut it with nn.Unfold, add the global view of the original image."""
    size = working_size(*image.shape[-2:], 224)
    resized = F.interpolate(image, size=size, mode='bilinear', align_corners=False)
    patches = nn.Unfold(224, stride=128)(resized).view(1, 3, 224, 224, -1)[0].permute(3, 0, 1, 2)
    views = torch.cat([patches, F.interpolate(image, size=(224, 224), mode='bilinear', align_corners=False)])
    features = torch.cat([metric.encode_views(chunk) for chunk in views.split(16)])
    return image_components(features, metric.text_features, metric.logit_scale), len(views)


@pytest.mark.parametrize('height, width', [(100, 300), (1, 40), (1, 6000), (6000, 1)])
def test_small_and_elongated_images_score_as_if_resized_whole(tiny_metric, height, width):
    """Patches computed from the source pixels give the scores of the materialised resize (1e-6)."""
    image = random_images(1, height, width, seed=8)
    with torch.no_grad():
        got = tiny_metric(image, return_components=True)
        expected, views = _materialised_components(tiny_metric, image)
    assert torch.isfinite(got.score).all()
    for field in got._fields:
        assert abs(getattr(got, field).item() - getattr(expected, field).item()) < EXACT, field
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
    gray = random_images(2, 230, 260, channels=1, seed=6)
    torch.testing.assert_close(tiny_metric(gray), tiny_metric(gray.expand(-1, 3, -1, -1)), rtol=0, atol=EXACT)


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
    torch.testing.assert_close(metric(image), metric.net(image))
    assert metric.lower_better is False


def test_as_loss_gives_finite_nonzero_gradient(tiny_rn):
    loss_fn = pyiqa.create_metric('maclip', as_loss=True, backbone=str(tiny_rn), device='cpu')
    image = random_images(2, 230, 300).requires_grad_()
    loss = loss_fn(image)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


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
    torch.testing.assert_close(together.score, alone[:2], rtol=0, atol=1e-5)  # as the neighbouring chunk tests
    torch.testing.assert_close(alone[1], alone[2], rtol=0, atol=1e-5)


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
def test_every_accepted_option_value_gives_finite_scores(tiny_rn, options):
    """The ends of the accepted ranges, on photos-like, constant and extreme images."""
    metric = MACLIP(backbone=str(tiny_rn), **options)
    images = torch.cat([random_images(2, 224, 300, seed=3), torch.zeros(1, 3, 224, 300), torch.ones(1, 3, 224, 300)])
    parts = metric(images, return_components=True)
    for field in parts._fields:
        assert torch.isfinite(getattr(parts, field)).all(), (options, field)


def test_numpy_option_values_are_accepted(tiny_rn):
    metric = MACLIP(backbone=str(tiny_rn), box_lam=np.float32(0.25), alpha=np.int64(2))
    assert (metric.box_lam, metric.alpha) == (0.25, 2.0)


def test_tiny_box_lam_is_the_log_limit(tiny_rn):
    """box_lam = 1e-300 (0 in float32) scores as box_lam = 0, the Box-Cox limit, within 1e-6."""
    image = random_images(1, 230, 260, seed=1)
    tiny = MACLIP(backbone=str(tiny_rn), box_lam=1e-300)(image, return_components=True).q_mag
    log = MACLIP(backbone=str(tiny_rn), box_lam=0.0)(image, return_components=True).q_mag
    torch.testing.assert_close(tiny, log, rtol=0, atol=EXACT)


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
    assert torch.isfinite(tiny_metric(image)).all()


def test_loss_input_may_leave_the_unit_range(tiny_rn):
    """Input that requires grad (a loss's) is taken as it is, as pyiqa does for as_loss, with finite gradients."""
    metric = MACLIP(backbone=str(tiny_rn))
    drifted = (random_images(2, 224, 260) * 1.2 - 0.1).requires_grad_()
    noise = torch.randn(2, 3, 224, 260, generator=torch.Generator().manual_seed(0)).requires_grad_()
    for image in (drifted, noise):
        metric(image).sum().backward()
        assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_clip_weights_are_not_in_the_state_dict_but_follow_to(tiny_rn):
    metric = MACLIP(backbone=str(tiny_rn))
    assert metric.state_dict() == {} and list(metric.parameters()) == []
    metric.load_state_dict({}, strict=True)
    metric.to(torch.float64)
    assert metric.visual.conv1.weight.dtype == torch.float64
    assert metric.text_features.dtype == torch.float64


def test_vit_patch_size_must_fit_its_grid(checkpoints):
    path = str(checkpoints('tiny-ViT'))
    with pytest.raises(ValueError, match='multiple of the ViT patch size 32'):
        MACLIP(backbone=path, patch_size=100)
    assert torch.isfinite(MACLIP(backbone=path, patch_size=160, stride=96)(random_images(1, 200, 300))).all()


def test_pos_embedding_option_reaches_the_encoder(tiny_rn):
    image = random_images(1, 256, 256)
    plain = MACLIP(backbone=str(tiny_rn))(image)
    with_pos = MACLIP(backbone=str(tiny_rn), pos_embedding=True)(image)
    assert torch.isfinite(with_pos).all() and (with_pos - plain).abs().item() > 1e-6


@pytest.mark.filterwarnings('ignore:precision=.*emulated:RuntimeWarning')  # tested in test_precision
def test_half_precision_stays_close_and_keeps_the_ranking(tiny_rn):
    """float16 encoder (on the CPU here): scores within 1e-2 of float32, same order."""
    images = torch.cat([random_images(1, 224, 300, seed=s) for s in range(8)])
    full = MACLIP(backbone=str(tiny_rn))(images)
    half_metric = MACLIP(backbone=str(tiny_rn), half=True)
    features = {}
    # The last convolutional stage: what the encoder computes in (its pooled output is an attention product).
    half_metric.visual.layer4.register_forward_hook(lambda module, args, out: features.update(dtype=out.dtype))
    half = half_metric(images)
    assert features['dtype'] == torch.float16
    assert half.dtype == torch.float32
    assert (half - full).abs().max() < 1e-2
    assert scipy.stats.spearmanr(half.numpy(), full.numpy()).statistic > 0.9


@pytest.mark.parametrize('architecture', ['tiny-RN', 'tiny-ViT'])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float64])
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
    if dtype == torch.float64:
        assert scores.dtype == torch.float64 and converted.text_features.dtype == torch.float64
        torch.testing.assert_close(scores, expected.double(), rtol=0, atol=1e-5)
    else:
        assert scores.dtype == torch.float32
        torch.testing.assert_close(converted.text_features, full.text_features, rtol=0, atol=0)
        # Measured here: at most 1.4e-3 (float16) and 4.7e-3 (bfloat16), rankings unchanged.
        assert (scores - expected).abs().max() < 1e-2
        assert scipy.stats.spearmanr(scores.numpy(), expected.numpy()).statistic >= 0.8


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_half_module_stays_close(tiny_rn):
    images = _different_images()
    full = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cuda')(images)
    half = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cuda').half()(images.cuda())
    assert half.dtype == torch.float32 and (half - full).abs().max() < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_half_precision_stays_close(tiny_rn):
    images = _different_images()
    full = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cuda')(images)
    half = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cuda', half=True)(images)
    assert (half - full).abs().max() < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu(tiny_rn):
    images = _different_images()
    cpu = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cpu')(images)
    cuda_metric = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cuda')
    cuda = cuda_metric(images)
    assert cuda.device.type == 'cuda'
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-4)


@pytest.mark.skipif(not torch.backends.mps.is_available(), reason='needs Apple MPS')
def test_mps_matches_cpu(tiny_rn):
    images = _different_images()
    cpu = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='cpu')(images)
    mps = pyiqa.create_metric('maclip', backbone=str(tiny_rn), device='mps')(images)
    torch.testing.assert_close(mps.cpu(), cpu, rtol=0, atol=1e-4)
