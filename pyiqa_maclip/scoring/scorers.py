"""What scores a batch of decoded images: MA-CLIP (with its components) or any pyiqa metric.

A scorer takes a list of float (C, H, W) images in [0, 1] on its device and
returns one ``{column: value}`` per image, or raises for the batch (the engine
then retries the images one by one). Its ``fingerprint`` is everything that
determines the numbers; a journal refuses results made with another.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence

import torch

from ..arch import MACLIP, QualityComponents
from ..version import __version__
from ..weights import OFFICIAL_CHECKPOINTS, resolve_checkpoint, sha256sum

__all__ = ['checkpoint_sha256', 'maclip_fingerprint', 'pyiqa_fingerprint', 'MaclipScorer', 'PyiqaScorer']

# Options that change no number: where the weights are (their SHA-256 counts) and the encoder's chunking.
_NOT_IN_FINGERPRINT = ('backbone', 'chunk_size')


def checkpoint_sha256(backbone: str | os.PathLike) -> str:
    """SHA-256 of the checkpoint ``backbone`` resolves to (downloading an official file if needed)."""
    path = resolve_checkpoint(backbone)
    name = os.fspath(backbone)
    return OFFICIAL_CHECKPOINTS[name].sha256 if name in OFFICIAL_CHECKPOINTS else sha256sum(path)


def _json_ready(value):
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def maclip_fingerprint(options: Mapping, sha256: str) -> dict:
    """What determines MA-CLIP's numbers: the weights' SHA-256, every option (defaults filled in), the version."""
    defaults = {name: p.default for name, p in inspect.signature(MACLIP).parameters.items()
                if p.default is not inspect.Parameter.empty}
    settings = {k: v for k, v in {**defaults, **options}.items() if k not in _NOT_IN_FINGERPRINT}
    if settings.pop('half', False):  # the released spelling of precision='fp16': the same numbers
        settings['precision'] = 'fp16'
    return {'metric': 'maclip', 'checkpoint_sha256': sha256, 'options': _json_ready(settings),
            'pyiqa_maclip': __version__}


def pyiqa_fingerprint(name: str, options: Mapping) -> dict:
    """What determines another pyiqa metric's numbers, as far as can be told: name, options, versions."""
    import pyiqa

    return {'metric': name, 'options': _json_ready(dict(options)), 'pyiqa': pyiqa.__version__,
            'pyiqa_maclip': __version__}


class MaclipScorer:
    """This package's MA-CLIP: its views of all images share encoder chunks; five columns."""

    columns = QualityComponents._fields

    def __init__(self, metric: MACLIP, options: Mapping, sha256: str) -> None:
        self.metric = metric
        self.fingerprint = maclip_fingerprint(options, sha256)

    def __call__(self, images: Sequence[torch.Tensor]) -> list[dict[str, float]]:
        parts = self.metric.score_images(list(images))
        return [dict(zip(self.columns, row)) for row in torch.stack(list(parts), dim=1).tolist()]


class PyiqaScorer:
    """Any ``pyiqa.create_metric`` model: images of one size are scored as one batch."""

    columns = ('score',)

    def __init__(self, model: torch.nn.Module, name: str, options: Mapping) -> None:
        self.model = model
        self.fingerprint = pyiqa_fingerprint(name, options)

    def __call__(self, images: Sequence[torch.Tensor]) -> list[dict[str, float]]:
        images = [image.expand(3, -1, -1) for image in images]  # grayscale: pyiqa metrics take RGB
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(index)
        values: list[float] = [0.0] * len(images)
        for indices in groups.values():
            out = self.model(torch.stack([images[i] for i in indices]))
            out = torch.as_tensor(out).detach().float().flatten().cpu()
            if out.numel() != len(indices):  # a metric that cannot batch: the engine retries one by one
                raise ValueError(f'the metric returned {out.numel()} values for {len(indices)} images')
            for i, value in zip(indices, out.tolist()):
                values[i] = value
        return [{'score': value} for value in values]
