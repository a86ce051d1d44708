r"""MA-CLIP as a pyiqa arch: batched, any device, any image size, bounded memory.

Liao et al., "Beyond Cosine Similarity: Magnitude-Aware CLIP for No-Reference
Image Quality Assessment", AAAI 2026, arXiv 2511.09948.
Official code: https://github.com/zhix000/MA-CLIP.

The method lives in :mod:`pyiqa_maclip.functional`. :class:`MACLIP` loads CLIP and embeds
the prompts once, then for each image goes image -> views -> features -> components,
top to bottom in this file: :meth:`MACLIP.forward` checks the images,
:meth:`MACLIP._view_features` cuts the views and feeds them through the encoder a bounded
chunk at a time, and :func:`~pyiqa_maclip.functional.image_components` fuses Q_sim and
Q_mag. What it accepts is checked in :mod:`.validation`; what the encoder computes in,
in :mod:`.precision`.
"""
from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import nn

from pyiqa.archs.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from . import encoder
from . import functional as MF
from .errors import UserError, UserTypeError
from .functional import QualityComponents
from .precision import EncoderPrecision
from .option_spec import (OPTION_DEFAULTS, count_option, flag_option, model_type_option, parse_precision,
                          prompt_pairs, real_option)
from .validation import check_images
from .weights import Checkpoint, load_clip

__all__ = ['MACLIP', 'QualityComponents', 'QualityMap']


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


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _tokenize(prompts: list[str], context_length: int) -> torch.Tensor:
    """CLIP's tokens of ``prompts``, from OpenAI's ``clip`` package (PyPI ``openai-clip``): the
    tokenizer pyiqa's own CLIP metrics use, imported here directly rather than through pyiqa's
    private re-export (``pyiqa.archs.clip_imports``)."""
    with warnings.catch_warnings():  # openai-clip imports pkg_resources, which warns on import
        warnings.simplefilter('ignore', UserWarning)
        import clip
    return clip.tokenize(prompts, context_length=context_length)


class MACLIP(nn.Module):
    """Magnitude-Aware CLIP no-reference image quality (higher is better).

    Each image is cut into ``patch_size`` patches at ``stride`` (plus the whole image
    resized to ``patch_size``); every view is scored by fusing Q_sim and Q_mag, and the
    image's score is the mean over its views. ``metric(x)`` gives (B, 1) scores for
    (B, C, H, W) images, as pyiqa's no-reference metrics do.

    Args:
        backbone: an OpenAI CLIP name (``RN50``, ``ViT-B/32``, ...), the path of a
            checkpoint file (a state dict, or one of OpenAI's files), or a resolved
            :class:`~pyiqa_maclip.weights.Checkpoint`.
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
            ``'fp16'`` (see :mod:`.precision`).
        half: ``True`` is the released spelling of ``precision='fp16'``.
        model_type: accepted for compatibility with pyiqa's own ``maclip`` entry
            in ``DEFAULT_CONFIGS``; only ``'maclip'`` is valid.

    Numbers, counts and flags may also be given as text (``'0.3'``, ``'256'``, ``'True'``),
    as pyiqa's scripts pass them.

    Images are float tensors in [0, 1] (see :func:`~pyiqa_maclip.validation.check_images`;
    input that requires grad, as a loss's, is taken whatever its range). An image whose
    shorter side is below ``patch_size`` is cut as if resized by
    :func:`~pyiqa_maclip.functional.working_size`, without materialising the resized image;
    its global view is taken from the original.

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
        backbone: str | os.PathLike | Checkpoint = OPTION_DEFAULTS['backbone'],
        prompts: Sequence = OPTION_DEFAULTS['prompts'],
        box_lam: float = OPTION_DEFAULTS['box_lam'],
        base_cos: float = OPTION_DEFAULTS['base_cos'],
        base_norm: float = OPTION_DEFAULTS['base_norm'],
        alpha: float = OPTION_DEFAULTS['alpha'],
        patch_size: int = OPTION_DEFAULTS['patch_size'],
        stride: int = OPTION_DEFAULTS['stride'],
        pos_embedding: bool = OPTION_DEFAULTS['pos_embedding'],
        chunk_size: int = OPTION_DEFAULTS['chunk_size'],
        half: bool = OPTION_DEFAULTS['half'],
        precision: str = OPTION_DEFAULTS['precision'],
        model_type: str = OPTION_DEFAULTS['model_type'],
    ) -> None:
        super().__init__()
        model_type_option(model_type)
        self.prompts = prompt_pairs(prompts)
        self.box_lam = real_option('box_lam', box_lam)
        self.base_cos = real_option('base_cos', base_cos)
        self.base_norm = real_option('base_norm', base_norm)
        self.alpha = real_option('alpha', alpha)
        self.patch_size = count_option('patch_size', patch_size)
        self.stride = count_option('stride', stride)
        self.chunk_size = count_option('chunk_size', chunk_size)
        self.pos_embedding = flag_option('pos_embedding', pos_embedding)
        self._precision = EncoderPrecision(parse_precision(precision, flag_option('half', half)))
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

    @property
    def precision(self) -> str:
        """What the image encoder computes in: ``'fp32'``, ``'bf16'`` or ``'fp16'``."""
        return self._precision.name

    def _embed_prompts(self, clip: nn.Module) -> torch.Tensor:
        """L2-normalised prompt embeddings (2K, D), pairs interleaved positive, negative.

        Computed once, in float32, when the metric is built; as a buffer they follow
        the module to any device and dtype, so no call ever runs the text encoder.
        """
        tokens = _tokenize([p for pair in self.prompts for p in pair], clip.context_length)
        with torch.inference_mode(False), torch.no_grad():
            features = clip.encode_text(tokens)
        return features / features.norm(dim=-1, keepdim=True)

    def _check_patch_size_fits_encoder(self) -> None:
        visual = self.visual
        if hasattr(visual, 'attnpool'):  # ModifiedResNet: 32x total downsampling
            if self.patch_size < 32:
                raise UserError(f'patch_size must be at least 32 for a ResNet CLIP, got {self.patch_size}')
        elif self.patch_size % visual.conv1.kernel_size[0]:
            raise UserError(f'patch_size must be a multiple of the ViT patch size {visual.conv1.kernel_size[0]} for '
                            f'backbone {str(self.backbone)!r}, got {self.patch_size}')

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

    # ---------------------------------------------------------------- scoring: image -> views -> features -> score

    def forward(self, x: torch.Tensor, return_components: bool = False):
        """Score (B, C, H, W) images in [0, 1] (C = 1 or 3, any H, W >= 1).

        Returns:
            (B, 1) scores, or :class:`QualityComponents` of (B, 1) tensors if ``return_components``.
        """
        check_images(x)
        out = QualityComponents(*(part[:, None] for part in self._score(list(x.split(1)))[0]))
        return out if return_components else out.score

    def score_images(self, images: Sequence[torch.Tensor]) -> QualityComponents:
        """Score images of different sizes together: each (C, H, W) or (1, C, H, W), float in [0, 1]
        or 8-bit (``uint8``, 0..255).

        Their patches share encoder chunks, which keeps the encoder busy with small images.
        An 8-bit image stays 8-bit until its views are cut: a large photo is never held as
        floats whole. Returns :class:`QualityComponents` of (N,) tensors, in input order.
        """
        return self._score(self._single_images(images, 'score_images'))[0]

    def score_and_embed(self, images: Sequence[torch.Tensor]) -> tuple[QualityComponents, torch.Tensor]:
        """:meth:`score_images`, and each image's L2-normalised CLIP image embedding of its global view
        (N, D): the feature scoring computed for that view anyway, so no extra encoder pass."""
        return self._score(self._single_images(images, 'score_and_embed'))

    def quality_maps(self, images: Sequence[torch.Tensor]) -> list[QualityMap]:
        """Per-patch MA-CLIP of each image of a list of (C, H, W) tensors (as :meth:`score_images` takes):
        a :class:`QualityMap` each.

        The same chunked encoding as scoring (no encoder pass beyond it, bounded memory);
        each map's ``score`` is the image's score (the mean over its views).
        """
        batched = self._single_images(images, 'quality_maps')
        maps = []
        with torch.inference_mode(not torch.is_grad_enabled()):
            for image, features in zip(batched, self._view_features(batched)):
                views = self._components(features, per_view=True)
                boxes = MF.patch_boxes(*image.shape[-2:], self.patch_size, self.stride)
                rows, cols = boxes.shape[:2]
                patches = QualityComponents(*(part[:-1].reshape(rows, cols) for part in views))
                whole = QualityComponents(*(part[-1] for part in views))
                maps.append(QualityMap(patches, whole, boxes, views.score.mean()))
        if torch.is_grad_enabled():
            return maps
        return [QualityMap(QualityComponents(*(t.clone() for t in m.patches)),  # ordinary tensors, as from scoring
                           QualityComponents(*(t.clone() for t in m.global_view)), m.boxes, m.score.clone())
                for m in maps]

    @staticmethod
    def _single_images(images: Sequence[torch.Tensor], caller: str) -> list[torch.Tensor]:
        """Validate a list of (C, H, W) or (1, C, H, W) images; return them as (1, C, H, W)."""
        if isinstance(images, torch.Tensor) or not isinstance(images, Sequence):
            raise UserTypeError(f'{caller} takes a list of (C, H, W) image tensors, got {type(images).__name__}; '
                                'for one (B, C, H, W) tensor call the metric itself')
        if len(images) == 0:
            raise UserError(f'{caller} got an empty list: expected at least one (C, H, W) image tensor')
        batched = [image[None] if isinstance(image, torch.Tensor) and image.dim() == 3 else image for image in images]
        for image in batched:
            check_images(image, allow_uint8=True)
            if image.shape[0] != 1:
                raise UserError(f'{caller} takes single images, (C, H, W) or (1, C, H, W); got shape '
                                f'{tuple(image.shape)}')
        return batched

    def _score(self, images: list[torch.Tensor]) -> tuple[QualityComponents, torch.Tensor]:
        """Score validated (1, C, H, W) images: (N,) components, and the (N, D) L2-normalised features of
        their global views (the last view of each)."""
        grad = torch.is_grad_enabled()
        with torch.inference_mode(not grad):
            features = self._view_features(images)
            out = QualityComponents(*(torch.stack(field) for field in zip(*map(self._components, features))))
            embeddings = torch.stack([views[-1] for views in features])
            embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        if grad:
            return out, embeddings
        return QualityComponents(*(t.clone() for t in out)), embeddings.clone()  # tensors callers may modify

    def _view_features(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Raw features (views, D) of each validated (1, C, H, W) image: image -> views -> features.

        Views of consecutive images share chunks, so the encoder always sees full chunks
        of ``chunk_size`` and no more than that is ever materialised.
        """
        device, dtype = self.logit_scale.device, self.text_features.dtype
        images = [image.to(device) if image.dtype == torch.uint8 else image.to(device, dtype) for image in images]
        views = itertools.chain.from_iterable(self._views(image) for image in images)
        features = torch.cat([self.encode_views(torch.stack(chunk)) for chunk in _chunks(views, self.chunk_size)])
        return list(features.split([self._num_views(image) for image in images]))

    def _patch_grid(self, image: torch.Tensor) -> tuple[tuple[int, int], int, int]:
        """Working size, patch rows and patch columns of a (1, C, H, W) image."""
        size = MF.working_size(*image.shape[-2:], self.patch_size)
        return (size, *MF.num_patches(*size, self.patch_size, self.stride))

    def _num_views(self, image: torch.Tensor) -> int:
        _, rows, cols = self._patch_grid(image)
        return rows * cols + 1

    def _views(self, image: torch.Tensor) -> Iterator[torch.Tensor]:
        """The (3, p, p) views of one (1, C, H, W) image, lazily: its patches row by row, then the global view.

        A gray image's views are replicated to RGB here, so that they share encoder chunks with views
        of RGB images (``score_images`` of both kinds together).
        """
        size, rows, cols = self._patch_grid(image)
        dtype = self.text_features.dtype  # an 8-bit image's views are float32
        for row in range(rows):
            for col in range(cols):
                patch = MF.image_patch(image, size, row * self.stride, col * self.stride, self.patch_size)[0]
                yield patch.to(dtype).expand(3, -1, -1)
        yield MF.global_view(image, self.patch_size)[0].to(dtype).expand(3, -1, -1)

    def encode_views(self, views: torch.Tensor) -> torch.Tensor:
        """Raw CLIP image features of a chunk of (N, C, p, p) views in [0, 1]: (N, D)."""
        # Normalised per chunk rather than on the whole image: no full-size copy of a large photo.
        views = (views.expand(-1, 3, -1, -1) - self.mean) / self.std  # image_features casts to the encoder's type
        with self._precision.autocast(views.device, self.visual.conv1.weight.dtype):
            features = encoder.image_features(self.visual, views, self.pos_embedding)
        return features.to(self.text_features.dtype)

    def _components(self, features: torch.Tensor, per_view: bool = False) -> QualityComponents:
        """The image's components from its views' features, or each view's (features -> components)."""
        compute = MF.view_components if per_view else MF.image_components
        return compute(features, self.text_features, self.logit_scale, self.box_lam, self.base_cos,
                       self.base_norm, self.alpha)
