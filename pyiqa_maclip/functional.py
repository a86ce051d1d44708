"""The MA-CLIP equations as small pure functions on tensors.

Liao et al., "Beyond Cosine Similarity: Magnitude-Aware CLIP for No-Reference
Image Quality Assessment", AAAI 2026 (arXiv 2511.09948); official code
https://github.com/zhix000/MA-CLIP.

Every function here is stateless and works on a leading batch dimension, so the
paper's pipeline reads top to bottom:

    views    = sliding_patches(x) + [global_view(x)]       # Sec. "Implementation"
    f        = CLIP image encoder(views)                   # raw features
    Q_sim    = similarity_quality(f, text_features, s)     # CLIP-IQA prompt cue
    Q_mag    = magnitude_quality(f, lam)                   # |f| -> Box-Cox -> mean
    Q, w     = fuse(Q_sim, Q_mag, base_cos, base_norm, a)  # confidence-guided softmax
    score    = mean of Q over the views of each image
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    'DEFAULT_PROMPTS',
    'FusedQuality',
    'upscale_short_side',
    'sliding_patches',
    'num_patches',
    'global_view',
    'similarity_quality',
    'box_cox',
    'magnitude_quality',
    'fuse',
]

#: The five antonym prompt pairs of the official code, positive first.
DEFAULT_PROMPTS: tuple[tuple[str, str], ...] = (
    ('Good image', 'bad image'),
    ('Sharp image', 'blurry image'),
    ('sharp edges', 'blurry edges'),
    ('High resolution image', 'low resolution image'),
    ('Noise-free image', 'noisy image'),
)


def upscale_short_side(x: torch.Tensor, min_side: int) -> torch.Tensor:
    """Resize (B, C, H, W) images whose shorter side is below ``min_side``.

    The aspect ratio is kept (bilinear, ``align_corners=False``) and the shorter
    side becomes exactly ``min_side``, so at least one ``min_side`` patch fits.
    Images already large enough are returned unchanged (the same tensor), which
    keeps the reference's numbers for every image with both sides >= ``min_side``.
    """
    h, w = x.shape[-2:]
    if min(h, w) >= min_side:
        return x
    scale = min_side / min(h, w)
    size = (max(min_side, round(h * scale)), max(min_side, round(w * scale)))
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


def num_patches(height: int, width: int, patch_size: int, stride: int) -> tuple[int, int]:
    """Rows and columns of ``patch_size`` windows at ``stride`` (as ``nn.Unfold``)."""
    return (height - patch_size) // stride + 1, (width - patch_size) // stride + 1


def sliding_patches(x: torch.Tensor, patch_size: int = 224, stride: int = 128) -> torch.Tensor:
    """Overlapping square patches of (B, C, H, W) images, as a view: (B, rows, cols, C, p, p).

    Same windows, in the same row-major order, as the official
    ``nn.Unfold(kernel_size=patch_size, stride=stride)``; like it, the right and
    bottom margins that do not fill a whole stride are not covered. No memory is
    copied: callers gather the patches they need a chunk at a time.
    """
    return x.unfold(2, patch_size, stride).unfold(3, patch_size, stride).permute(0, 2, 3, 1, 4, 5)


def global_view(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """The whole image resized to ``size`` x ``size`` (bilinear, ``align_corners=False``)."""
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
        (...) tensor in (0, 1).
    """
    image = features / features.norm(dim=-1, keepdim=True)
    logits = logit_scale * image @ text_features.t()
    probs = logits.unflatten(-1, (-1, 2)).softmax(dim=-1)
    return probs[..., 0].mean(dim=-1)


def box_cox(x: torch.Tensor, lam: float = 0.5, eps: float = 1e-6) -> torch.Tensor:
    """Box-Cox transform of features scaled by their standard deviation (paper Eq. "Q_mag").

    ``x`` is first divided by its standard deviation over the last dimension
    (unbiased, plus ``eps``) to remove the semantic scale of the features; then
    ``((x + 1) ** lam - 1) / lam``, or ``log(x + 1)`` when ``lam == 0``.
    """
    x = x / (x.std(dim=-1, keepdim=True) + eps)
    if lam == 0:
        return torch.log1p(x)
    return ((x + 1) ** lam - 1) / lam


def magnitude_quality(features: torch.Tensor, lam: float = 0.5, eps: float = 1e-6) -> torch.Tensor:
    """Q_mag: the mean Box-Cox-normalised magnitude ``|f|`` of raw features (..., D) -> (...)."""
    return box_cox(features.abs(), lam=lam, eps=eps).mean(dim=-1)


class FusedQuality(NamedTuple):
    """Result of :func:`fuse`: the fused quality and the weight given to each cue."""

    score: torch.Tensor
    w_sim: torch.Tensor
    w_mag: torch.Tensor


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

