r"""MA-CLIP as a pyiqa arch: batched, any device, any image size, bounded memory.

Liao et al., "Beyond Cosine Similarity: Magnitude-Aware CLIP for No-Reference
Image Quality Assessment", AAAI 2026, arXiv 2511.09948.
Official code: https://github.com/zhix000/MA-CLIP.

The method lives in :mod:`pyiqa_maclip.functional`. This module loads CLIP and
embeds the prompts once, validates options and images, makes each image's views,
feeds them through the image encoder a bounded chunk at a time and hands each
image's features to :func:`~pyiqa_maclip.functional.image_components`
(:meth:`MACLIP._score` reads that path top to bottom).
"""
from __future__ import annotations

import itertools
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import nn

from pyiqa.archs.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from . import encoder
from . import functional as MF
from .functional import QualityComponents
from .weights import load_clip

__all__ = ['MACLIP', 'QualityComponents', 'QualityMap', 'check_images', 'OPTION_RANGES', 'RANGE_TOLERANCE']

#: Accepted ranges of the real-valued options. Within them every score of a finite image is
#: finite in float32: Box-Cox of |f| / std(|f|) (at most about sqrt(D)) stays below 1e30 for
#: |box_lam| <= 10, and the fusion logits stay far from float32's 3.4e38.
OPTION_RANGES = {
    'box_lam': (-10.0, 10.0),
    'base_cos': (-1e6, 1e6),
    'base_norm': (-1e6, 1e6),
    'alpha': (-1e6, 1e6),
}

#: How far image values may lie outside [0, 1] (rounding of earlier processing) and still
#: be scored as they are. Farther out is another convention (0..255, [-1, 1], CLIP-normalised).
RANGE_TOLERANCE = 1e-3


def _real(name: str, value) -> float:
    low, high = OPTION_RANGES[name]
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or not low <= value <= high):
        raise ValueError(f'{name} must be a real number in [{low:g}, {high:g}], got {value!r}')
    return float(value)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')
    return value


def _prompt_pairs(prompts) -> tuple[tuple[str, str], ...]:
    """Accept ``[(good, bad), ...]`` or the official flat ``[good, bad, good, bad, ...]``."""
    expected = "prompts must be a non-empty sequence of (positive, negative) string pairs, e.g. [('Good image', 'bad image')]"
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f'{expected}; got {prompts!r}')
    if all(isinstance(p, str) for p in prompts):
        if len(prompts) % 2:
            raise ValueError(f'{expected}; a flat list needs an even number of prompts, got {len(prompts)}')
        prompts = list(zip(prompts[0::2], prompts[1::2]))
    pairs = []
    for pair in prompts:
        if (isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2
                or not all(isinstance(p, str) and p.strip() for p in pair)):
            raise ValueError(f'{expected}; got the item {pair!r}')
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def check_images(x) -> None:
    """Raise TypeError/ValueError unless ``x`` is a real (B, 1|3, H, W) tensor of finite values in [0, 1].

    Values may exceed [0, 1] by :data:`RANGE_TOLERANCE`. A tensor that requires grad (the
    input of a loss, which optimisation may push out of range) is only checked for
    finiteness: pyiqa turns its own range check off for losses too.
    """
    expected = 'expected a float tensor of shape (B, C, H, W) with C = 1 or 3 and values in [0, 1]'
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'images must be a torch.Tensor, got {type(x).__name__}; {expected}')
    if x.dtype == torch.bool or x.is_complex() or not x.is_floating_point():
        raise TypeError(
            f'images have dtype {x.dtype}; {expected} (convert 8-bit images with x.float() / 255)'
        )
    if x.dim() != 4:
        hint = ' (add the batch dimension with x.unsqueeze(0))' if x.dim() == 3 else ''
        raise ValueError(f'images have shape {tuple(x.shape)}, {x.dim()}-D; {expected}{hint}')
    if x.shape[1] not in (1, 3):
        raise ValueError(f'images have {x.shape[1]} channels (shape {tuple(x.shape)}); {expected}')
    if x.numel() == 0:
        raise ValueError(f'images tensor is empty (shape {tuple(x.shape)}); {expected} and B, H, W >= 1')
    low, high = (float(v) for v in torch.aminmax(x.detach()))  # NaN propagates; no full-size mask
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f'images contain NaN or Inf values; {expected}')
    if not x.requires_grad and (low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE):
        tolerance = RANGE_TOLERANCE
        if low >= -tolerance and 1.5 < high <= 255 + tolerance:
            fix = 'for 0..255 images use x / 255'
        elif -1 - tolerance <= low < -0.5 and high <= 1 + tolerance:
            fix = 'for [-1, 1] images use (x + 1) / 2'
        elif low >= -0.5 and high <= 1.5:
            fix = 'clamp values that drifted out with x.clamp(0, 1)'
        else:
            fix = 'rescale them to [0, 1]'
        raise ValueError(f'image values lie in [{low:.4g}, {high:.4g}]; {expected} ({fix})')


#: ``precision`` values and the type the image encoder computes in under each.
PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def cpu_has_native(dtype: torch.dtype) -> bool | None:
    """Whether this CPU computes ``dtype`` (bfloat16 or float16) natively in oneDNN; None if torch cannot tell.

    Asks torch's private oneDNN checks (avx512_bf16 / AMX for bfloat16, avx512_fp16 / AMX-FP16
    for float16), guarded because a private API may vanish from a torch release.
    """
    check = {torch.bfloat16: '_is_mkldnn_bf16_supported', torch.float16: '_is_mkldnn_fp16_supported'}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return None


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _precision(precision, half: bool) -> str:
    """The ``precision`` option, with ``half=True`` as the alias of ``'fp16'``."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if half and precision not in ('fp32', 'fp16'):
        raise ValueError(f"half=True means precision='fp16' and contradicts precision={precision!r}; "
                         f"pass precision={precision!r} alone")
    return 'fp16' if half else precision


class QualityMap(NamedTuple):
    """Per-patch MA-CLIP of one image (:meth:`MACLIP.quality_maps`).

    ``patches``: :class:`QualityComponents` of (rows, cols) tensors, patches in ``nn.Unfold``
    order; ``global_view``: the whole-image view's components (0-d tensors); ``boxes``:
    (rows, cols, 4) of (top, left, bottom, right) in the original image's pixels;
    ``score``: the image's score, the mean over all its views.
    """

    patches: QualityComponents
    global_view: QualityComponents
    boxes: torch.Tensor
    score: torch.Tensor


class MACLIP(nn.Module):
    """Magnitude-Aware CLIP no-reference image quality (higher is better).

    Each image is cut into ``patch_size`` patches at ``stride`` (plus the whole
    image resized to ``patch_size``); every view is scored by fusing Q_sim and
    Q_mag, and the image's score is the mean over its views.

    Args:
        backbone: an OpenAI CLIP name (``RN50``, ``ViT-B/32``, ...) or the path of a
            checkpoint file (TorchScript archive or state dict).
        prompts: (positive, negative) prompt pairs for Q_sim.
        box_lam: Box-Cox lambda for Q_mag (0 means log), in [-10, 10].
        base_cos, base_norm: base logits of the two cues in the fusion softmax, in [-1e6, 1e6].
        alpha: how strongly the cue discrepancy shifts the fusion weights, in [-1e6, 1e6].
        patch_size: side of the square patches and of the global view.
        stride: step between patches.
        pos_embedding: add CLIP's (resized) positional embedding in the image
            encoder; off in the paper, which lets any patch size through.
        chunk_size: most views sent through the image encoder at once; bounds
            peak memory independently of image size and batch size.
        precision: what the image encoder computes in: ``'fp32'`` (exact), ``'bf16'`` or
            ``'fp16'`` (autocast: convolutions and matrix products in that type, norms in
            float32). Weights, preprocessing, prompt embeddings, the MA-CLIP math and the
            scores stay float32. The 16-bit modes change scores slightly (see README's
            Performance); ``'bf16'`` is for CPUs with bfloat16 instructions (avx512_bf16,
            AMX) and recent GPUs, ``'fp16'`` for GPUs. A 16-bit mode this CPU has no
            instructions for warns at the first CPU encoding, naming the faster choice.
        half: ``True`` is the released spelling of ``precision='fp16'``.
        model_type: accepted for compatibility with pyiqa's own ``maclip`` entry
            in ``DEFAULT_CONFIGS``; only ``'maclip'`` is valid.

    Images are float tensors in [0, 1] (see :func:`check_images`; input that requires
    grad, as a loss's, is taken whatever its range). An image whose shorter side is below
    ``patch_size`` is cut as if resized by :func:`~pyiqa_maclip.functional.working_size`,
    without materialising the resized image; its global view is taken from the original.

    The CLIP image encoder (:attr:`visual`) is frozen and held outside the module tree,
    as pyiqa's clipiqa holds CLIP: its weights are not in ``state_dict()`` (they come
    from ``backbone``), ``parameters()`` or ``apply()``, so a model using this metric as
    a loss saves small checkpoints. ``.to()`` and dtype conversions still reach it:
    ``.half()`` / ``.bfloat16()`` put its weights in that type, while LayerNorms (as in
    CLIP), the prompt embeddings and the MA-CLIP math stay float32 and scores are
    float32; ``.double()`` makes everything float64 but LayerNorm, which pyiqa's CLIP
    computes in float32.
    """

    def __init__(
        self,
        backbone: str | os.PathLike = 'RN50',
        prompts: Sequence = MF.DEFAULT_PROMPTS,
        box_lam: float = 0.5,
        base_cos: float = 1.0,
        base_norm: float = 0.6,
        alpha: float = 1.0,
        patch_size: int = 224,
        stride: int = 128,
        pos_embedding: bool = False,
        chunk_size: int = 16,
        half: bool = False,
        precision: str = 'fp32',
        model_type: str = 'maclip',
    ) -> None:
        super().__init__()
        if model_type != 'maclip':
            raise ValueError(f"model_type must be 'maclip' (the only MA-CLIP variant), got {model_type!r}")
        for name, flag in (('pos_embedding', pos_embedding), ('half', half)):
            if not isinstance(flag, bool):
                raise ValueError(f'{name} must be True or False, got {flag!r}')
        self.prompts = _prompt_pairs(prompts)
        self.box_lam = _real('box_lam', box_lam)
        self.base_cos = _real('base_cos', base_cos)
        self.base_norm = _real('base_norm', base_norm)
        self.alpha = _real('alpha', alpha)
        self.patch_size = _positive_int('patch_size', patch_size)
        self.stride = _positive_int('stride', stride)
        self.chunk_size = _positive_int('chunk_size', chunk_size)
        self.pos_embedding = pos_embedding
        self.precision = _precision(precision, half)
        self._warned_slow_precision = False
        self.backbone = backbone

        clip = load_clip(backbone)
        # A list hides the encoder from the module tree (see the class docstring and _apply).
        self._encoder = [clip.visual]
        self._check_patch_size_fits_encoder()
        encoder.prepare(self.visual)  # frozen; same function, less work (see encoder.py)
        self.register_buffer('text_features', self._embed_prompts(clip), persistent=False)
        self.register_buffer('logit_scale', clip.logit_scale.detach().exp(), persistent=False)
        self.register_buffer('mean', torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def visual(self) -> nn.Module:
        """The frozen CLIP image encoder (the text tower is dropped once the prompts are embedded)."""
        return self._encoder[0]

    def _embed_prompts(self, clip: nn.Module) -> torch.Tensor:
        """L2-normalised prompt embeddings (2K, D), pairs interleaved positive, negative.

        Computed once, in float32, when the metric is built; as a buffer they follow
        the module to any device and dtype, so no call ever runs the text encoder.
        """
        from pyiqa.archs.clip_imports import clip as openai_clip

        tokens = openai_clip.tokenize([p for pair in self.prompts for p in pair], context_length=clip.context_length)
        with torch.inference_mode(False), torch.no_grad():
            features = clip.encode_text(tokens)
        return features / features.norm(dim=-1, keepdim=True)

    def _check_patch_size_fits_encoder(self) -> None:
        visual = self.visual
        if hasattr(visual, 'attnpool'):  # ModifiedResNet: 32x total downsampling
            if self.patch_size < 32:
                raise ValueError(f'patch_size must be at least 32 for a ResNet CLIP, got {self.patch_size}')
        else:
            step = visual.conv1.kernel_size[0]
            if self.patch_size % step:
                raise ValueError(
                    f'patch_size must be a multiple of the ViT patch size {step} for backbone '
                    f'{self.backbone!r}, got {self.patch_size}'
                )

    def _warn_if_emulated(self, dtype: torch.dtype) -> None:
        """Warn once per metric when this CPU has no instructions for ``dtype`` (it then runs slower than float32)."""
        if self._warned_slow_precision or cpu_has_native(dtype) is not False:
            return
        self._warned_slow_precision = True
        better = "precision='bf16' (this CPU has bfloat16 instructions)" if (
            dtype == torch.float16 and cpu_has_native(torch.bfloat16)) else "precision='fp32'"
        type_name = str(dtype).removeprefix('torch.')
        warnings.warn(f'precision={self.precision!r} on this CPU is emulated (no native {type_name} instructions) '
                      f'and slower than float32; use {better}', RuntimeWarning, stacklevel=3)

    def _apply(self, fn, recurse=True):
        """``.to()``, ``.half()``, ``.double()``, ...: reach the hidden encoder, then restore float32 where needed.

        pyiqa's CLIP LayerNorm casts its input to float32, so its weights must be float32;
        the prompt embeddings and constants of the MA-CLIP math are kept out of 16-bit floats.
        Restored tensors are converted from their values before the call, never rounded.
        """
        layer_norms = [m for m in self.visual.modules() if isinstance(m, nn.LayerNorm) and m.elementwise_affine]
        exactly_float32 = [(m, name) for m in layer_norms for name in ('weight', 'bias') if getattr(m, name) is not None]
        float32_at_least = [(self, name) for name in ('text_features', 'logit_scale', 'mean', 'std')]
        before = {(owner, name): getattr(owner, name) for owner, name in exactly_float32 + float32_at_least}
        super()._apply(fn, recurse)
        if recurse:
            self.visual._apply(fn)
        for (owner, name), old in before.items():
            new = getattr(owner, name)
            exact = (owner, name) in exactly_float32
            if (new.dtype != torch.float32) if exact else (new.dtype in (torch.float16, torch.bfloat16)):
                new.data = old.data.to(device=new.device, dtype=torch.float32)
        return self

    def _patch_grid(self, image: torch.Tensor) -> tuple[tuple[int, int], int, int]:
        """Working size, patch rows and patch columns of a (1, C, H, W) image."""
        size = MF.working_size(*image.shape[-2:], self.patch_size)
        return (size, *MF.num_patches(*size, self.patch_size, self.stride))

    def _num_views(self, image: torch.Tensor) -> int:
        _, rows, cols = self._patch_grid(image)
        return rows * cols + 1

    def _views(self, image: torch.Tensor) -> Iterator[torch.Tensor]:
        """The (C, p, p) views of one (1, C, H, W) image, lazily: its patches row by row, then the global view."""
        size, rows, cols = self._patch_grid(image)
        for row in range(rows):
            for col in range(cols):
                yield MF.image_patch(image, size, row * self.stride, col * self.stride, self.patch_size)[0]
        yield MF.global_view(image, self.patch_size)[0]

    def encode_views(self, views: torch.Tensor) -> torch.Tensor:
        """Raw CLIP image features of a chunk of (N, C, p, p) views in [0, 1]: (N, D)."""
        encoder_dtype = self.visual.conv1.weight.dtype
        # Normalised per chunk rather than on the whole image: no full-size copy of a large photo.
        views = (views.expand(-1, 3, -1, -1) - self.mean) / self.std  # image_features casts to the encoder's type
        compute_dtype = PRECISIONS[self.precision]
        if compute_dtype == torch.float32:
            autocast = nullcontext()
        else:
            if encoder_dtype not in (torch.float32, compute_dtype):  # autocast cannot mix two 16-bit types
                raise TypeError(
                    f'precision={self.precision!r} autocasts a float32 image encoder, but its weights were '
                    f'converted to {str(encoder_dtype).removeprefix("torch.")}; convert the metric back with '
                    f'.float(), or build it with the precision matching that type'
                )
            if views.device.type == 'cpu':
                self._warn_if_emulated(compute_dtype)
            autocast = torch.autocast(views.device.type, dtype=compute_dtype)
        with autocast:
            features = encoder.image_features(self.visual, views, self.pos_embedding)
        return features.to(self.text_features.dtype)

    def _view_features(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw features (views, D) of each validated (1, C, H, W) image: image -> views -> features.

        Views of consecutive images share chunks, so the encoder always sees full chunks
        of ``chunk_size`` and no more than that is ever materialised.
        """
        device, dtype = self.logit_scale.device, self.text_features.dtype
        images = [image.to(device=device, dtype=dtype) for image in images]
        views = itertools.chain.from_iterable(self._views(image) for image in images)
        features = torch.cat([self.encode_views(torch.stack(chunk)) for chunk in _chunks(views, self.chunk_size)])
        return list(features.split([self._num_views(image) for image in images]))

    def _components(self, features: torch.Tensor, per_view: bool = False) -> QualityComponents:
        """The image's components from its views' features, or each view's (features -> components)."""
        compute = MF.view_components if per_view else MF.image_components
        return compute(features, self.text_features, self.logit_scale, self.box_lam, self.base_cos,
                       self.base_norm, self.alpha)

    def _score(self, images: list[torch.Tensor]) -> QualityComponents:
        """Score validated (1, C, H, W) images."""
        grad = torch.is_grad_enabled()
        with torch.inference_mode(not grad):
            parts = [self._components(features) for features in self._view_features(images)]
            out = QualityComponents(*(torch.stack(field) for field in zip(*parts)))
        if not grad:  # hand back ordinary tensors that callers may modify in place
            out = QualityComponents(*(t.clone() for t in out))
        return out

    @staticmethod
    def _single_images(images: Sequence[torch.Tensor], caller: str) -> list[torch.Tensor]:
        """Validate a list of (C, H, W) or (1, C, H, W) images; return them as (1, C, H, W)."""
        if isinstance(images, torch.Tensor) or not isinstance(images, Sequence):
            raise TypeError(
                f'{caller} takes a list of (C, H, W) image tensors, got {type(images).__name__}; '
                'for one (B, C, H, W) tensor call the metric itself'
            )
        if len(images) == 0:
            raise ValueError(f'{caller} got an empty list: expected at least one (C, H, W) image tensor')
        batched = [image[None] if isinstance(image, torch.Tensor) and image.dim() == 3 else image
                   for image in images]
        for image in batched:
            check_images(image)
            if image.shape[0] != 1:
                raise ValueError(f'{caller} takes single images, (C, H, W) or (1, C, H, W); got shape '
                                 f'{tuple(image.shape)}')
        return batched

    def score_images(self, images: Sequence[torch.Tensor]) -> QualityComponents:
        """Score images of different sizes together: each (C, H, W) or (1, C, H, W) in [0, 1].

        Their patches share encoder chunks, which keeps the encoder busy with small
        images. Returns :class:`QualityComponents` of (N,) tensors, in input order.
        """
        return self._score(self._single_images(images, 'score_images'))

    def quality_maps(self, images: Sequence[torch.Tensor]) -> list[QualityMap]:
        """Per-patch MA-CLIP of each image of a list of (C, H, W) tensors in [0, 1]: a :class:`QualityMap` each.

        The same chunked encoding as scoring (no encoder pass beyond it, bounded memory);
        each map's ``score`` is the image's score (the mean over its views).
        """
        batched = self._single_images(images, 'quality_maps')
        grad = torch.is_grad_enabled()
        maps = []
        with torch.inference_mode(not grad):
            for image, features in zip(batched, self._view_features(batched)):
                views = self._components(features, per_view=True)
                boxes = MF.patch_boxes(*image.shape[-2:], self.patch_size, self.stride)
                rows, cols = boxes.shape[:2]
                patches = QualityComponents(*(part[:-1].reshape(rows, cols) for part in views))
                whole = QualityComponents(*(part[-1] for part in views))
                maps.append(QualityMap(patches, whole, boxes, views.score.mean()))
        if not grad:  # ordinary tensors, as from scoring
            maps = [QualityMap(QualityComponents(*(t.clone() for t in m.patches)),
                               QualityComponents(*(t.clone() for t in m.global_view)), m.boxes, m.score.clone())
                    for m in maps]
        return maps

    def forward(self, x: torch.Tensor, return_components: bool = False):
        """Score (B, C, H, W) images in [0, 1] (C = 1 or 3, any H, W >= 1).

        Returns:
            (B,) scores, or :class:`QualityComponents` if ``return_components``.
        """
        check_images(x)
        out = self._score(list(x.split(1)))
        return out if return_components else out.score
