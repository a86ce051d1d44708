"""The rounding-error oracle of the numeric tests: how far a correct float32 or 16-bit computation
may lie from the float64 one, whatever the CPU's kernels.

Bounds that hold for any correct kernel (any CPU, any summation order, with or without FMA),
derived from how floating point rounds rather than measured on one machine: :func:`bilinear_error`
for resizing, :func:`rounding_bound` for MA-CLIP's components, :func:`feature_bound` for the image
features. docs/testing.md says how they are derived. It reaches into :class:`~pyiqa_maclip.MACLIP`
(its encoder and precision) to run the same computation in float64, which is why it lives here and
not in the package.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple
from unittest import mock

import numpy as np
import torch
from torch import nn

from pyiqa_maclip import encoder
from pyiqa_maclip.functional import QualityComponents, bilinear_taps, num_patches, working_size
from pyiqa_maclip.precision import EncoderPrecision

__all__ = ['UNIT_ROUNDOFF', 'bilinear_error', 'view_errors', 'float64_encoder', 'float64_metric', 'Rounding',
           'float32_deviations', 'feature_bound', 'RoundingDraws', 'DRAWS', 'DRAW_MULTIPLE', 'sampled_deviations',
           'rounding_bound', 'assert_within_rounding']

#: Unit roundoff u (half the machine epsilon): the largest relative error of one rounding to nearest.
UNIT_ROUNDOFF = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11,
                 torch.bfloat16: 2.0 ** -8}


def bilinear_error(image: torch.Tensor, size: tuple[int, int], top: int = 0, left: int = 0,
                   height: int | None = None, width: int | None = None) -> torch.Tensor:
    """Per pixel, how far two correct bilinear resizes of (..., H, W) ``image`` to ``size``
    (``align_corners=False``, as ``F.interpolate``) may differ, over the ``height`` x ``width`` region
    at (``top``, ``left``) of the result (all of it by default); float32 arithmetic but for float64 images.

    An output pixel's source coordinate ``s = scale * (k + 0.5) - 0.5``, ``scale = in / out``, is
    computed in that float type: a kernel is within three roundings (scale, product, difference;
    FMA or not) of the exact value, each at most u (s + 0.5), so two kernels' coordinates, and so
    their tap weights ``s - floor(s)`` (an exact subtraction), differ by up to 6 u (s + 0.5) =
    3 eps (s + 0.5). A weight off by d moves the pixel by d times the difference of the two
    pixels it mixes along that axis (an axis that keeps its size has exact weights). Mixing four
    pixels with two levels of convex weights rounds at most 8 times along any path per kernel,
    values up to M = max |image|: 8 eps M for two kernels.
    """
    eps = torch.finfo(torch.float64 if image.dtype == torch.float64 else torch.float32).eps
    x = image.detach().double()
    in_height, in_width = x.shape[-2:]
    height, width = size[0] - top if height is None else height, size[1] - left if width is None else width
    rows, cols = torch.arange(top, top + height, dtype=torch.float64), torch.arange(left, left + width, dtype=torch.float64)
    low_r, high_r, weight_r = bilinear_taps(rows, in_height, size[0])
    low_c, high_c, weight_c = bilinear_taps(cols, in_width, size[1])
    error = torch.full(x.shape[:-2] + (height, width), 8 * eps * x.abs().max().item(), dtype=torch.float64)
    if size[0] != in_height:  # rows: their weight's error times the vertical differences
        vertical = (x[..., high_r, :] - x[..., low_r, :]).abs()
        error += 3 * eps * (low_r + weight_r + 0.5)[:, None] * torch.maximum(vertical[..., low_c], vertical[..., high_c])
    if size[1] != in_width:
        horizontal = (x[..., high_c] - x[..., low_c]).abs()
        error += 3 * eps * (low_c + weight_c + 0.5) * torch.maximum(horizontal[..., low_r, :], horizontal[..., high_r, :])
    return error


def view_errors(image: torch.Tensor, patch_size: int, stride: int) -> torch.Tensor:
    """:func:`bilinear_error` of each view of a (1, C, H, W) image as :class:`~pyiqa_maclip.MACLIP` makes
    them (patches row-major, then the global view): (views, C, patch_size, patch_size). Patches of an
    image that keeps its size are its own pixels (0); so is the global view of a patch-sized image."""
    height, width = image.shape[-2:]
    size = working_size(height, width, patch_size)
    rows, cols = num_patches(*size, patch_size, stride)
    square = (patch_size, patch_size)
    errors = [bilinear_error(image[0], size, r * stride, c * stride, patch_size, patch_size) * (size != (height, width))
              for r in range(rows) for c in range(cols)]
    errors.append(bilinear_error(image[0], square) * ((height, width) != square))
    return torch.stack(errors)


def _sums(visual: nn.Module, tokens: int, feature_dim: int) -> list[tuple[nn.Module, str, int]]:
    """(module, parameter name, K): each product weight of a CLIP image encoder and how many terms
    the float sums its products enter have along the way to the MA-CLIP score.

    K is the reduction length of the layer (input channels x kernel area, input features), plus
    what follows it inside the same operation: attention logits sum over a head's dimensions,
    attention-weighted values over the tokens, and the last projection feeds the MA-CLIP math,
    whose norms, similarities, standard deviation and means sum over the ``feature_dim`` feature
    dimensions. 4 more roundings cover bias, folded BatchNorm, residual additions and activations.
    """
    sums = []
    pool = getattr(visual, 'attnpool', None)
    for module in visual.modules():
        if isinstance(module, nn.Conv2d):
            sums.append((module, 'weight', module.in_channels // module.groups * math.prod(module.kernel_size)))
        elif isinstance(module, nn.Linear):
            extra = 0
            if pool is not None and module in (pool.q_proj, pool.k_proj):
                extra = module.in_features // pool.num_heads
            elif pool is not None and module is pool.v_proj:
                extra = 2 * tokens  # the mean token, then the attention mix
            elif pool is not None and module is pool.c_proj:
                extra = feature_dim
            sums.append((module, 'weight', module.in_features + extra))
        elif isinstance(module, nn.MultiheadAttention):
            sums.append((module, 'in_proj_weight', module.embed_dim + module.head_dim + tokens))
        elif isinstance(module, nn.LayerNorm):
            sums.append((module, 'weight', module.normalized_shape[-1]))
    if isinstance(getattr(visual, 'proj', None), nn.Parameter):  # a ViT's final projection
        sums.append((visual, 'proj', visual.proj.shape[0] + feature_dim))
    return [(module, name, k + 4) for module, name, k in sums]


def float64_encoder(visual: nn.Module) -> nn.Module:
    """A float64 copy of a CLIP image encoder, its LayerNorms too (pyiqa's compute in float32)."""
    model = copy.deepcopy(visual).double()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.__class__ = nn.LayerNorm
            module.double()
    return model


def float64_metric(metric: nn.Module) -> nn.Module:
    """A copy of a :class:`~pyiqa_maclip.MACLIP` that computes everything in float64."""
    exact = copy.deepcopy(metric).double()
    exact._encoder[0] = float64_encoder(metric.visual)
    exact._precision = EncoderPrecision('fp32')  # no autocast
    return exact


class Rounding(NamedTuple):
    """Per image: the float64 computation of a metric's components and how far from it a correct
    computation in another type may lie (:func:`rounding_bound`)."""

    exact: QualityComponents
    bound: QualityComponents


#: Operations whose operands a 16-bit mode rounds to 16 bits.
_PRODUCTS = (nn.Conv2d, nn.Linear, nn.MultiheadAttention)


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _rounding_points(visual: nn.Module, dtype: torch.dtype, patch_size: int,
                     feature_dim: int) -> tuple[list[tuple[torch.Tensor, float]], list[nn.Module]]:
    """Where a computation in ``dtype`` rounds, with the relative standard deviation of each rounding:
    the weights and biases of ``visual`` (returned), and the modules whose inputs (products) and
    outputs (all) are rounded once more to ``dtype``.

    - A sum of K products computed in floating point is the exact sum with each weight perturbed
      by a relative amount below K u, in practice of order sqrt(K) u (Higham, *Accuracy and
      Stability of Numerical Algorithms*, section 3.1; Higham & Mary, SIAM J. Sci. Comput. 41,
      2019), whatever the summation order, blocking or FMA: each weight gets sqrt(K) u32, K from
      :func:`_sums`; a bias is added once.
    - Every result is rounded to ``dtype`` (u), and a 16-bit mode rounds the weights and inputs of
      each convolution, linear layer and attention to 16 bits as well (u16).
    A standard deviation of u per rounding is more than the uniform rounding error's u / sqrt(3).
    """
    u32 = UNIT_ROUNDOFF[torch.float32]
    u16 = UNIT_ROUNDOFF[dtype] if dtype in (torch.float16, torch.bfloat16) else 0.0
    grid = patch_size // (32 if hasattr(visual, 'attnpool') else visual.conv1.kernel_size[0])
    weights = []
    for module, name, k in _sums(visual, grid ** 2 + 1, feature_dim):
        product = isinstance(module, _PRODUCTS)
        weights.append((getattr(module, name), math.sqrt(k * u32 ** 2 + (u16 ** 2 if product else 0))))
        bias = getattr(module, 'in_proj_bias' if isinstance(module, nn.MultiheadAttention) else 'bias', None)
        if product and isinstance(bias, torch.Tensor):
            weights.append((bias, math.sqrt(u32 ** 2 + u16 ** 2)))
    for owner in (visual, getattr(visual, 'attnpool', None)):
        # Resized by bicubic interpolation (pos_embedding=True) with float32 source coordinates: as
        # in bilinear_error, a coordinate is off by up to 3 eps (rows + 0.5); the cubic weights'
        # slopes (at most 1.25 each, 4 taps) turn that into 15 eps rows = 30 u rows of the table's size.
        table = getattr(owner, 'positional_embedding', None)
        if isinstance(table, torch.Tensor):
            weights.append((table, 32 * u32 * table.shape[0] + u16))
    # Results that round: all but containers handing on a child's result, folded-away BatchNorms, and
    # ReLU (exact on a representable input).
    passing = (nn.Sequential, nn.ModuleList, nn.Identity, nn.ReLU)
    return weights, [m for m in list(visual.modules())[1:] if not isinstance(m, passing) and type(m).__name__ != 'Transformer']


def float32_deviations(visual: nn.Module, patch_size: int, feature_dim: int, forward) -> torch.Tensor:
    """Four standard deviations of each scalar ``forward`` computes, under float32 rounding.

    ``forward(encoder)`` gets a float32 copy of ``visual`` whose weights require grad, and returns
    ``(scalars, inputs)``: scalar tensors, and ``(tensor, error)`` pairs of inputs it made require
    grad with the standard deviation of their own error (elementwise). The rounding model is
    :func:`_rounding_points`; rounding errors of 2^-24 are far inside the linear range, so the
    gradient of each scalar with respect to every rounding (autograd; a few correct digits are
    all a bound needs, so float32 does) gives the standard deviation of their total, of which 4
    are allowed (a Gaussian exceeds that with probability 6e-5).
    """
    model = copy.deepcopy(visual).float()
    weights, modules = _rounding_points(model, torch.float32, patch_size, feature_dim)
    activations = []
    for module in modules:
        module.register_forward_hook(lambda m, args, out: activations.append(_first(out)))
        if isinstance(module, _PRODUCTS):
            module.register_forward_pre_hook(lambda m, args: activations.append(_first(args)))
    for weight, _ in weights:
        weight.requires_grad_(True)
    # The plain layout: the hooks see ordinary tensors, not oneDNN's blocked ones.
    with mock.patch.object(encoder, 'uses_blocked_layout', lambda *args: False):
        scalars, inputs = forward(model)
    u = UNIT_ROUNDOFF[torch.float32]
    # (tensor, relative standard deviation, or None and the absolute one elementwise)
    terms = [(w, std, None) for w, std in weights] + [(a, u, None) for a in activations]
    terms = [term for term in terms + [(t, None, error) for t, error in inputs] if term[0].requires_grad]
    deviations = []
    for scalar in scalars:
        grads = torch.autograd.grad(scalar, [t for t, _, _ in terms], retain_graph=True, allow_unused=True)
        variance = sum(torch.linalg.vector_norm(g * (t * size if error is None else error)) ** 2
                       for g, (t, size, error) in zip(grads, terms) if g is not None)
        deviations.append(4 * variance.detach().double().sqrt())
    return torch.stack(deviations)


def feature_bound(visual: nn.Module, views: torch.Tensor, probes: torch.Tensor,
                  pos_embedding: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear functionals of the image features of normalised (N, 3, p, p) ``views``: for each of the
    (P, N, D) ``probes``, the sum of its products with the float64 features, and how far a correct
    float32 computation's may lie from it (:func:`float32_deviations`): two (P,) tensors.

    One functional per gradient computation: random probes test every view and feature at once
    (a wrong view or dimension moves a random functional by its own size, far above rounding).
    """
    probes = probes.double()

    def forward(model):
        features = encoder.image_features(model, views.double(), pos_embedding)
        return [(features * probe).sum() for probe in probes], []

    deviation = float32_deviations(visual, views.shape[-1], probes.shape[-1], forward)
    with torch.no_grad():
        features = encoder.image_features(float64_encoder(visual), views.double(), pos_embedding)
    return (features * probes).sum(dim=(1, 2)), deviation


class RoundingDraws:
    """Random draws of every rounding of a computation in ``dtype`` with ``visual`` (in place):
    :meth:`draw` perturbs the weights and biases anew (from their values at construction) and
    hooks perturb every module's result and every product's inputs, by uniform relative errors of
    the standard deviations of :func:`_rounding_points`. For rounding errors large enough to leave
    the linear range (16-bit), or results not linear in them (gradients through ReLUs).
    """

    def __init__(self, visual: nn.Module, dtype: torch.dtype, patch_size: int, feature_dim: int, seed: int = 0):
        self.u = UNIT_ROUNDOFF[dtype]
        self.generator = torch.Generator().manual_seed(seed)
        self.weights, modules = _rounding_points(visual, dtype, patch_size, feature_dim)
        self.originals = [weight.detach().clone() for weight, _ in self.weights]
        for module in modules:
            module.register_forward_hook(lambda m, args, out: self.jitter(out, self.u) if isinstance(out, torch.Tensor)
                                         else (self.jitter(out[0], self.u), *out[1:]))
            if isinstance(module, _PRODUCTS):
                module.register_forward_pre_hook(lambda m, args: tuple(self.jitter(a, self.u) for a in args))

    def jitter(self, tensor: torch.Tensor, size: float) -> torch.Tensor:
        """``tensor`` times independent uniform relative errors of standard deviation ``size``."""
        half_width = 3 ** 0.5 * size
        return tensor * torch.empty_like(tensor).uniform_(1 - half_width, 1 + half_width, generator=self.generator)

    def draw(self) -> None:
        with torch.no_grad():
            for (weight, std), original in zip(self.weights, self.originals):
                weight.copy_(self.jitter(original, std))


#: Draws of :class:`RoundingDraws` per sampled bound, and the multiple of their largest deviation
#: allowed: a further draw exceeds 4 times the largest of 8 with probability 1.4e-4 when
#: deviations are Gaussian (sums of many small errors); true rounding errors, at most u, are
#: smaller than the draws' (standard deviation u).
DRAWS, DRAW_MULTIPLE = 8, 4


def sampled_deviations(metric: nn.Module, images: list[torch.Tensor], errors: list[torch.Tensor], dtype: torch.dtype,
                       fields: Sequence[str], exact: QualityComponents) -> torch.Tensor:
    """``DRAW_MULTIPLE`` times the largest deviation from ``exact`` of ``metric``'s components of
    (1, C, H, W) ``images`` over ``DRAWS`` :class:`RoundingDraws` of a 16-bit ``dtype``, each view
    pixel also off by up to its ``errors`` (:func:`view_errors`): (fields, images).

    Rounding errors of 2^-9 (bfloat16) or 2^-12 (float16) reach the nonlinear range of sharp
    attention softmaxes, hence draws rather than :func:`float32_deviations`' linearisation. The
    draws compute in float32, whose own rounding is negligible next to 16 bits'.
    """
    model = copy.deepcopy(metric).float()
    model._precision = EncoderPrecision('fp32')
    draws = RoundingDraws(model.visual, dtype, metric.patch_size, metric.text_features.shape[-1])
    encode, noise, done = model.encode_views, torch.cat(errors).float(), []

    def encode_views(chunk: torch.Tensor) -> torch.Tensor:  # each pixel off by up to its error, uniformly
        start = sum(done) % len(noise)
        done.append(len(chunk))
        offsets = 2 * torch.rand(chunk.shape, generator=draws.generator, dtype=chunk.dtype) - 1
        return encode(chunk + noise[start:start + len(chunk)] * offsets)

    model.encode_views = encode_views
    deviation = torch.zeros(len(fields), len(images), dtype=torch.float64)
    # The plain layout: the hooks see ordinary tensors, not oneDNN's blocked ones.
    with torch.no_grad(), mock.patch.object(encoder, 'uses_blocked_layout', lambda *args: False):
        for _ in range(DRAWS):
            draws.draw()
            parts = model.score_images([image.float() for image in images])
            for row, field in enumerate(fields):
                change = (getattr(parts, field).double() - getattr(exact, field)).abs()
                deviation[row] = torch.maximum(deviation[row], DRAW_MULTIPLE * change)
    return deviation


def rounding_bound(metric: nn.Module, images, dtype: torch.dtype = torch.float32,
                   fields: Sequence[str] | None = None) -> Rounding:
    """How far a correct computation of ``metric``'s components of each image in ``dtype`` (float32,
    or a 16-bit ``precision`` mode or weight conversion) may lie from the float64 computation of the same.

    The encoder's roundings (:func:`_rounding_points`) and the views' pixels, made by float32
    bilinear resizing and each off by up to its :func:`bilinear_error` (:func:`view_errors`), are
    propagated by :func:`float32_deviations` (float32) or :func:`sampled_deviations` (16-bit).
    To that is added the rounding of the components themselves, a few roundings per view and the
    mean over the V views: (V + 8) u32 times their size.
    ``images``: a (B, C, H, W) tensor or a list of (C, H, W) tensors; ``fields``: the components to
    bound (all by default; the others get NaN).
    """
    fields = QualityComponents._fields if fields is None else tuple(fields)
    images = [image[None] if image.dim() == 3 else image for image in images]
    exact_metric = float64_metric(metric)
    errors = [view_errors(image, metric.patch_size, metric.stride) for image in images]  # (views, C, p, p) each
    with torch.no_grad():
        exact = exact_metric.score_images([image.double() for image in images])
    if dtype == torch.float32:
        deviation = torch.zeros(len(fields), len(images), dtype=torch.float64)
        for index, image in enumerate(images):
            def forward(model, image=image, error=errors[index]):
                metric64, views = copy.copy(exact_metric), []
                metric64._encoder = [model]
                encode = metric64.encode_views
                metric64.encode_views = lambda chunk: encode(views.append(chunk.detach().requires_grad_()) or views[-1])
                parts = metric64.score_images([image.double()])
                return [getattr(parts, field)[0] for field in fields], list(zip(views, error.split([len(v) for v in views])))

            deviation[:, index] = float32_deviations(metric.visual, metric.patch_size, metric.text_features.shape[-1],
                                                     forward)
    elif dtype in (torch.float16, torch.bfloat16):
        deviation = sampled_deviations(metric, images, errors, dtype, fields, exact)
    else:
        raise ValueError(f'dtype must be float32, float16 or bfloat16, got {dtype}')
    views = torch.tensor([metric._num_views(image) for image in images], dtype=torch.float64)
    bounds = [deviation[fields.index(field)] + (views + 8) * UNIT_ROUNDOFF[torch.float32] * getattr(exact, field).abs()
              if field in fields else torch.full((len(images),), math.nan, dtype=torch.float64)
              for field in QualityComponents._fields]
    return Rounding(exact, QualityComponents(*bounds))


def assert_within_rounding(values, rounding: Rounding, field: str = 'score') -> None:
    """Each of ``values`` (one per image, any array-like) lies within ``rounding``'s bound of its
    float64 computation, for component ``field``."""
    exact, bound = getattr(rounding.exact, field), getattr(rounding.bound, field)
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double()
    else:
        values = torch.from_numpy(np.array(values, dtype=np.float64))  # a copy: writable
    difference = (values.reshape(exact.shape) - exact).abs()
    if not (difference <= bound).all():
        raise AssertionError(f'{field}: |value - float64| {difference.tolist()} exceeds the rounding bound {bound.tolist()}')
