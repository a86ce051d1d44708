"""What scores a collection: any pyiqa no-reference metric, MA-CLIP with its components.

A :class:`Recipe` names a pyiqa metric and its ``create_metric`` options. Before anything
is built it gives the run's fingerprint (everything that determines the numbers: metric,
options with their defaults, the SHA-256 of MA-CLIP's weights, versions), which a journal
checks; :meth:`Recipe.build` then makes the :class:`Scorer`. A scorer takes a list of
decoded images, (C, H, W) ``uint8`` or float in [0, 1], and returns one ``{column: value}``
per image, or raises for the batch (the engine then retries the images one by one).
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import torch

from ..errors import UserError
from ..names import COMPONENTS, EMBEDDING_COLUMN, is_maclip
from ..version import __version__
from .images import as_float

__all__ = ['Scorer', 'Recipe', 'MaclipScorer', 'PyiqaScorer']

# Options that change no number: where the weights are (their SHA-256 counts), the encoder's chunking.
_NOT_IN_FINGERPRINT = ('type', 'backbone', 'chunk_size')


class Scorer(Protocol):
    columns: tuple[str, ...]
    fingerprint: dict

    def __call__(self, images: Sequence[torch.Tensor]) -> list[dict[str, float]]: ...


def _json_ready(value):
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _maclip_values(settings: dict) -> dict:
    """MA-CLIP's options as the values it computes with, parsed as :class:`~pyiqa_maclip.arch.MACLIP`
    parses them (``'1e-1'`` and ``0.1`` are one value; ``half=True`` is ``precision='fp16'``); the
    options that change no number left out."""
    from ..precision import parse_precision
    from ..validation import count_option, flag_option, prompt_pairs, real_option

    parsers = {'box_lam': real_option, 'base_cos': real_option, 'base_norm': real_option, 'alpha': real_option,
               'patch_size': count_option, 'stride': count_option, 'pos_embedding': flag_option,
               'prompts': lambda _, value: prompt_pairs(value)}
    values = {name: parsers[name](name, value) if name in parsers else value for name, value in settings.items()
              if name not in _NOT_IN_FINGERPRINT}
    values['precision'] = parse_precision(values['precision'], flag_option('half', values.pop('half')))
    return values


@dataclass
class Recipe:
    """``pyiqa.create_metric(metric, **options)``, as a collection scorer."""

    metric: str = 'maclip'
    options: dict = field(default_factory=dict)
    embeddings: bool = False  # MA-CLIP only: also each image's CLIP embedding (EMBEDDING_COLUMN)
    images: dict = field(default_factory=dict)  # what chose the images of samples (sources.image_choice)

    def __post_init__(self) -> None:
        from pyiqa.default_model_configs import DEFAULT_CONFIGS

        import pyiqa_maclip  # noqa: F401  registers MA-CLIP and its variants with pyiqa

        if self.metric not in DEFAULT_CONFIGS:
            close = difflib.get_close_matches(self.metric, DEFAULT_CONFIGS, n=1, cutoff=0.6)
            hint = f' (did you mean {close[0]}?)' if close else ''
            raise UserError(f'{self.metric!r} is not a pyiqa metric{hint}: see pyiqa.list_models(), e.g. maclip, '
                            'clipiqa, musiq, piqe')
        self.config = DEFAULT_CONFIGS[self.metric]
        if self.config.get('metric_mode') != 'NR':
            raise UserError(f'{self.metric!r} is a full-reference metric: it needs a reference image for each image; '
                            'scoring a collection takes a no-reference metric, e.g. maclip, clipiqa, musiq, piqe')
        if self.embeddings and not self.is_maclip:
            raise UserError(f'--embeddings: {self.metric} computes no CLIP image embedding; MA-CLIP metrics do')

    @property
    def is_maclip(self) -> bool:
        return is_maclip(self.config['metric_opts'])

    @property
    def columns(self) -> tuple[str, ...]:
        if not self.is_maclip:
            return ('score',)
        return (*COMPONENTS, EMBEDDING_COLUMN) if self.embeddings else COMPONENTS

    @property
    def lower_better(self) -> bool:
        return bool(self.config.get('lower_better', False))

    @cached_property
    def checkpoint(self):
        """MA-CLIP's weights, resolved (found or downloaded, and hashed) once."""
        from ..weights import resolve

        backbone = self.options.get('backbone', self.config['metric_opts'].get('backbone', 'RN50'))
        return resolve(backbone)

    @cached_property
    def fingerprint(self) -> dict:
        """What determines the numbers: for MA-CLIP every option (defaults filled in) and the weights'
        SHA-256; for another metric its name, options and pyiqa's version; and what chose samples' images."""
        import pyiqa

        images = {'images': self.images} if self.images else {}  # a run on image files: its fingerprint unchanged
        if not self.is_maclip:
            return {'metric': self.metric, 'options': _json_ready(self.options), 'pyiqa': pyiqa.__version__,
                    'pyiqa_maclip': __version__, **images}
        from ..arch import MACLIP

        defaults = {name: p.default for name, p in inspect.signature(MACLIP).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        settings = _maclip_values({**defaults, **self.config['metric_opts'], **self.options})
        embeddings = {'embeddings': True} if self.embeddings else {}  # a run's fingerprint without them is unchanged
        return {'metric': 'maclip', 'checkpoint_sha256': self.checkpoint.sha256, 'options': _json_ready(settings),
                'pyiqa_maclip': __version__, **embeddings, **images}

    def build(self, device: torch.device | str) -> Scorer:
        """The scorer, on ``device``."""
        import pyiqa

        if self.is_maclip:
            model = pyiqa.create_metric(self.metric, device=device, **{**self.options, 'backbone': self.checkpoint})
            return MaclipScorer(model.net.eval(), self.fingerprint, self.embeddings)
        try:
            model = pyiqa.create_metric(self.metric, device=device, **self.options)
        except (TypeError, AssertionError) as error:  # pyiqa's way of saying an option is wrong
            raise UserError(f'cannot build {self.metric} with options {self.options}: {error}') from error
        return PyiqaScorer(model, self.fingerprint)


class MaclipScorer:
    """This package's MA-CLIP: the views of all images share encoder chunks; five columns, and with
    ``embeddings`` the global view's L2-normalised CLIP embedding as float32 bytes. 8-bit images
    stay 8-bit until their views are cut."""

    def __init__(self, metric, fingerprint: dict, embeddings: bool = False) -> None:
        self.metric, self.fingerprint, self.embeddings = metric, fingerprint, embeddings
        self.columns = (*COMPONENTS, EMBEDDING_COLUMN) if embeddings else COMPONENTS

    def __call__(self, images: Sequence[torch.Tensor]) -> list[dict[str, float]]:
        if not self.embeddings:
            parts = self.metric.score_images(list(images))
            return [dict(zip(COMPONENTS, row)) for row in torch.stack(list(parts), dim=1).tolist()]
        parts, embeddings = self.metric.score_and_embed(list(images))
        rows = [dict(zip(COMPONENTS, row)) for row in torch.stack(list(parts), dim=1).tolist()]
        for row, embedding in zip(rows, embeddings.float().cpu().numpy()):
            row[EMBEDDING_COLUMN] = embedding.tobytes()
        return rows


class PyiqaScorer:
    """Any ``pyiqa.create_metric`` model: images of one size are scored as one batch, as floats in [0, 1]."""

    columns = ('score',)

    def __init__(self, model: torch.nn.Module, fingerprint: dict) -> None:
        self.model, self.fingerprint = model, fingerprint

    def __call__(self, images: Sequence[torch.Tensor]) -> list[dict[str, float]]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(tuple(image.shape[-2:]), []).append(index)
        values: list[float] = [0.0] * len(images)
        for indices in groups.values():
            # Grayscale is replicated to RGB, as pyiqa's own reader gives it.
            batch = torch.stack([as_float(images[i]).expand(3, -1, -1) for i in indices])
            out = torch.as_tensor(self.model(batch)).detach().float().flatten().cpu()
            if out.numel() != len(indices):  # a metric that cannot batch: the engine retries one by one
                raise ValueError(f'the metric returned {out.numel()} values for {len(indices)} images')
            for i, value in zip(indices, out.tolist()):
                values[i] = value
        return [{'score': value} for value in values]
