"""The MA-CLIP method as small pure functions on tensors.

Liao et al., "Beyond Cosine Similarity: Magnitude-Aware CLIP for No-Reference
Image Quality Assessment", AAAI 2026 (arXiv 2511.09948); official code
https://github.com/zhix000/MA-CLIP.

An image goes through the method top to bottom in this file:

    size     = working_size(H, W, p)                        # small images are enlarged
    views    = [image_patch(x, size, top, left, p)           # p x p patches at the stride,
                for each of num_patches(*size, p, stride)]   #   row-major, as nn.Unfold
               + [global_view(x, p)]                         # and the whole image at p x p
    f        = CLIP image encoder(views)                     # raw features (views, D): the arch
    image_components(f, text_features, logit_scale, ...):
        Q_sim = similarity_quality(f, text_features, s)      # CLIP-IQA prompt cue
        Q_mag = magnitude_quality(f, lam)                    # |f| / std -> box_cox -> mean
        Q, w  = fuse(Q_sim, Q_mag, base_cos, base_norm, a)   # confidence-guided softmax
        score = mean of Q over the views
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .names import COMPONENTS
from .option_spec import DEFAULT_PROMPTS

__all__ = [
    'DEFAULT_PROMPTS',
    'MAX_ASPECT_RATIO',
    'QualityComponents',
    'FusedQuality',
    'working_size',
    'num_patches',
    'bilinear_taps',
    'unit_values',
    'image_patch',
    'global_view',
    'similarity_quality',
    'box_cox',
    'magnitude_quality',
    'fuse',
    'view_components',
    'image_components',
    'patch_boxes',
]

#: Most elongated shape (long side / short side) an enlarged image keeps: more elongated
#: images are stretched across to this ratio, which bounds their number of patches.
MAX_ASPECT_RATIO = 32


class QualityComponents(NamedTuple('QualityComponents', [(name, torch.Tensor) for name in COMPONENTS])):
    """MA-CLIP's output for an image (0-d tensors) or a batch ((B,) tensors): ``score``, ``q_sim``,
    ``q_mag``, ``w_sim``, ``w_mag`` (:data:`~pyiqa_maclip.names.COMPONENTS`).

    ``score`` is the MA-CLIP quality; the other fields are the means over the
    image's views (patches and global view) of Q_sim, Q_mag and the two fusion
    weights. The score is the mean of the per-view fused values, so in general
    it differs from ``w_sim * q_sim + w_mag * q_mag`` of these means.
    """

    __slots__ = ()


class FusedQuality(NamedTuple):
    """Result of :func:`fuse`: the fused quality and the weight given to each cue."""

    score: torch.Tensor
    w_sim: torch.Tensor
    w_mag: torch.Tensor


def working_size(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """The size (height, width) at which an image is cut into ``patch_size`` patches.

    An image with both sides >= ``patch_size`` keeps its size (the reference's case).
    Otherwise its shorter side s becomes ``patch_size`` p and its longer side L becomes
    ``min(round(L * p / s), MAX_ASPECT_RATIO * p)``: the aspect ratio is kept up to
    32:1, and more elongated images (a 1x6000 strip) are stretched across to 32:1.
    """
    short, long = min(height, width), max(height, width)
    if short >= patch_size:
        return height, width
    long = min(round(long * patch_size / short), MAX_ASPECT_RATIO * patch_size)
    return (patch_size, long) if height <= width else (long, patch_size)


def num_patches(height: int, width: int, patch_size: int, stride: int) -> tuple[int, int]:
    """Rows and columns of ``patch_size`` windows at ``stride`` (as ``nn.Unfold``).

    Like the official ``nn.Unfold(kernel_size=patch_size, stride=stride)``, the right and
    bottom margins that do not fill a whole stride are not covered.
    """
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


def bilinear_taps(
    out_index: torch.Tensor, in_size: int, out_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the output pixels ``out_index`` of a 1-D bilinear resize read their input.

    Resizing ``in_size`` samples to ``out_size`` as ``F.interpolate(mode='bilinear',
    align_corners=False)`` does (its source index, clamping and weights, computed in
    the dtype of ``out_index``), output ``k`` is
    ``(1 - weight[k]) * input[low[k]] + weight[k] * input[high[k]]``.

    Returns:
        ``(low, high, weight)``: two long tensors and one of ``out_index``'s dtype.
    """
    scale = torch.tensor(in_size, dtype=out_index.dtype) / out_size
    source = (scale * (out_index + 0.5) - 0.5).clamp(min=0)
    low = source.floor().clamp(max=in_size - 1)
    weight = (source - low).clamp(0, 1)
    low = low.long()
    return low, (low + 1).clamp(max=in_size - 1), weight


def unit_values(x: torch.Tensor) -> torch.Tensor:
    """Pixels as floats in [0, 1]: 8-bit (``uint8``) values divided by 255, float values as they are."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def image_patch(x: torch.Tensor, size: tuple[int, int], top: int, left: int, patch_size: int) -> torch.Tensor:
    """The ``patch_size`` square at (``top``, ``left``) of (B, C, H, W) images resized to ``size``.

    The patch is computed from the source pixels it needs only: the resized image is
    never materialised, so a patch costs the same memory whatever the image's shape.
    Bilinear resizing is separable, so each output pixel mixes the four source pixels at
    the :func:`bilinear_taps` of its row and column; the result equals
    ``F.interpolate(x, size, mode='bilinear', align_corners=False)`` then cropping, to
    float rounding. When ``size`` is the image's own size, the patch is a view of ``x``
    (no copy, no arithmetic: the reference's own pixels). 8-bit images give float32 patches
    in [0, 1] (:func:`unit_values`), converting only the pixels the patch needs.
    """
    height, width = x.shape[-2:]
    if (height, width) == tuple(size):
        return unit_values(x[..., top:top + patch_size, left:left + patch_size])
    # F.interpolate's index arithmetic runs in float32 but for float64 images.
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    offsets = torch.arange(patch_size, dtype=dtype)
    row_low, row_high, row_weight = bilinear_taps(offsets + top, height, size[0])
    col_low, col_high, col_weight = bilinear_taps(offsets + left, width, size[1])
    row_low, row_high, col_low, col_high = (i.to(x.device) for i in (row_low, row_high, col_low, col_high))
    row_weight = row_weight.to(device=x.device, dtype=dtype if x.dtype == torch.uint8 else x.dtype)[:, None]
    col_weight = col_weight.to(device=x.device, dtype=row_weight.dtype)

    def pixels(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return unit_values(x[..., rows[:, None], cols[None, :]])

    upper = pixels(row_low, col_low) * (1 - col_weight) + pixels(row_low, col_high) * col_weight
    lower = pixels(row_high, col_low) * (1 - col_weight) + pixels(row_high, col_high) * col_weight
    return upper * (1 - row_weight) + lower * row_weight


def global_view(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """The whole image resized to ``size`` x ``size`` (bilinear, ``align_corners=False``).

    An 8-bit image is resized from the source pixels the view needs (:func:`image_patch`),
    never converted whole to floats.
    """
    if x.dtype == torch.uint8:
        return image_patch(x, (size, size), 0, 0, size)
    return F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)


def similarity_quality(
    features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Q_sim, the CLIP-IQA cue: mean probability of the positive prompt of each pair.

    Args:
        features: raw image features, (..., D).
        text_features: L2-normalised prompt features, (2K, D), pairs interleaved
            positive, negative.
        logit_scale: CLIP's temperature, already exponentiated.

    Returns:
        (...) tensor in (0, 1); 0.5 for an all-zero feature vector (which has no direction).
    """
    image = F.normalize(features, dim=-1)
    logits = logit_scale * image @ text_features.t()
    probs = logits.unflatten(-1, (-1, 2)).softmax(dim=-1)
    return probs[..., 0].mean(dim=-1)


def box_cox(x: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """The Box-Cox transform of ``1 + x`` (``scipy.special.boxcox1p``), for ``x > -1``.

    ``((x + 1) ** lam - 1) / lam``, or ``log(x + 1)`` when ``lam == 0``. Computed as
    ``log1p(x) * expm1(z) / z`` with ``z = lam * log1p(x)``, which equals it and stays
    accurate however small ``lam`` is: where ``|z|`` is below the dtype's resolution,
    ``expm1(z) / z = 1 + z / 2 + ...`` rounds to 1 and the result is ``log(x + 1)``
    (rather than 0 / 0 once ``lam`` underflows).
    """
    log = torch.log1p(x)
    if lam == 0:
        return log
    z = lam * log
    tiny = z.abs() < torch.finfo(z.dtype).eps
    safe_z = torch.where(tiny, torch.ones_like(z), z)  # keeps 0 / 0 out of the gradient too
    return torch.where(tiny, log, log * torch.expm1(safe_z) / safe_z)


def magnitude_quality(features: torch.Tensor, lam: float = 0.5, eps: float = 1e-6) -> torch.Tensor:
    """Q_mag: the mean Box-Cox-normalised magnitude of raw features (..., D) -> (...).

    The magnitudes ``|f|`` are divided by their standard deviation over the feature
    dimensions (unbiased, plus ``eps``), which removes the semantic scale of the
    features, then Box-Cox transformed (:func:`box_cox`) and averaged over dimensions.
    """
    magnitude = features.abs()
    scaled = magnitude / (magnitude.std(dim=-1, keepdim=True) + eps)
    return box_cox(scaled, lam).mean(dim=-1)


def fuse(
    q_sim: torch.Tensor,
    q_mag: torch.Tensor,
    base_cos: float = 1.0,
    base_norm: float = 0.6,
    alpha: float = 1.0,
) -> FusedQuality:
    """Confidence-guided fusion (paper Eqs. for Delta, gamma and Q).

    ``Delta = Q_sim - Q_mag``; ``gamma_sim = base_cos + alpha * Delta``,
    ``gamma_mag = base_norm - alpha * Delta``; ``(w_sim, w_mag) = softmax(gamma)``;
    ``Q = w_sim * Q_sim + w_mag * Q_mag``.
    """
    delta = q_sim - q_mag
    gamma = torch.stack([base_cos + alpha * delta, base_norm - alpha * delta], dim=-1)
    w_sim, w_mag = gamma.softmax(dim=-1).unbind(dim=-1)
    return FusedQuality(w_sim * q_sim + w_mag * q_mag, w_sim, w_mag)


def view_components(
    features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    box_lam: float = 0.5,
    base_cos: float = 1.0,
    base_norm: float = 0.6,
    alpha: float = 1.0,
) -> QualityComponents:
    """MA-CLIP's components of every view from its raw CLIP features (..., D) -> (...) each.

    Each view gets Q_sim (:func:`similarity_quality`), Q_mag (:func:`magnitude_quality`)
    and their fusion (:func:`fuse`): ``score`` is the view's fused quality Q.
    """
    q_sim = similarity_quality(features, text_features, logit_scale)
    q_mag = magnitude_quality(features, box_lam)
    fused = fuse(q_sim, q_mag, base_cos, base_norm, alpha)
    return QualityComponents(fused.score, q_sim, q_mag, fused.w_sim, fused.w_mag)


def image_components(
    features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    box_lam: float = 0.5,
    base_cos: float = 1.0,
    base_norm: float = 0.6,
    alpha: float = 1.0,
) -> QualityComponents:
    """MA-CLIP's components of an image from the raw CLIP features of its views.

    Every view gets its components (:func:`view_components`); the image's score and
    parts are their means over the views.

    Args:
        features: raw image features (..., views, D) of one image's views (patches and
            global view).
        text_features, logit_scale: as in :func:`similarity_quality`.
        box_lam: Box-Cox lambda of Q_mag.
        base_cos, base_norm, alpha: the fusion constants of :func:`fuse`.

    Returns:
        :class:`QualityComponents` of (...) tensors (0-d for one image).
    """
    views = view_components(features, text_features, logit_scale, box_lam, base_cos, base_norm, alpha)
    return QualityComponents(*(part.mean(-1) for part in views))


def patch_boxes(height: int, width: int, patch_size: int, stride: int) -> torch.Tensor:
    """Where each patch lies in the original ``height`` x ``width`` image: (rows, cols, 4) of
    (top, left, bottom, right) pixel coordinates, in :func:`num_patches` order.

    Patches are cut at :func:`working_size`; for an enlarged image their windows are
    scaled back to the original pixels (fractional then), and never leave the image.
    """
    size = working_size(height, width, patch_size)
    rows, cols = num_patches(*size, patch_size, stride)
    top = torch.arange(rows, dtype=torch.float64) * stride * (height / size[0])
    left = torch.arange(cols, dtype=torch.float64) * stride * (width / size[1])
    bottom = torch.clamp(top + patch_size * (height / size[0]), max=height)
    right = torch.clamp(left + patch_size * (width / size[1]), max=width)
    grid = torch.broadcast_tensors(top[:, None], left[None, :], bottom[:, None], right[None, :])
    return torch.stack(grid, dim=-1)
