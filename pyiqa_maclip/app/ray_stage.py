"""Any pyiqa no-reference metric as a Ray Data stage: :class:`Scorer`, a callable class for
``Dataset.map_batches(..., batch_format='pandas')``.

Each actor builds the metric once, through :class:`.scorers.Recipe` (the path of ``score``: the same
options give the same numbers and fingerprint). A batch comes back with the metric's columns
added (``score`` for most metrics; MA-CLIP's five components) and an ``error`` column: None, or why
that sample could not be decoded or scored (its values are then NaN). One bad image never fails
the task. Decoded pixels held at once stay under ``pixel_budget`` (one larger image is taken alone).
Nothing here imports Ray: the class is plain Python, which Ray instantiates in its actors.
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import UserError, error_text
from .decode_bytes import bytes_pixel_count, decode_bytes
from .engine import _score_batch
from .images import DEFAULT_PIXEL_BUDGET, read_image
from .sources import Sample
from .journal import differences

__all__ = ['Scorer', 'ERROR_COLUMN', 'image_tensor']

ERROR_COLUMN = 'error'


def _array_image(values: np.ndarray) -> torch.Tensor:
    """A decoded (H, W) or (H, W, C) array as the decoder gives it: ``uint8`` (3, H, W), or
    ``float32`` (1 or 3, H, W) in [0, 1] (16-bit values divided by 65535; floats must lie in [0, 1])."""
    if values.ndim == 2:
        values = values[:, :, None]
    if values.ndim != 3 or values.shape[2] not in (1, 3):
        raise ValueError(f'decoded image of shape {values.shape}; expected (H, W), (H, W, 1) or (H, W, 3)')
    if values.dtype == np.uint8:
        return torch.from_numpy(np.repeat(values, 3 // values.shape[2], axis=2)).permute(2, 0, 1)  # a writable copy
    if values.dtype == np.uint16:
        values = values.astype(np.float32) / 65535
    elif values.dtype.kind == 'f':
        values = values.astype(np.float32)  # a writable copy, as for 16-bit
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError('float image with values outside [0, 1]; expected values in [0, 1]')
    else:
        raise ValueError(f'decoded image of type {values.dtype}; expected uint8, uint16 or float in [0, 1]')
    return torch.from_numpy(values).permute(2, 0, 1)


def image_tensor(value, resize: tuple[int, int] | None = None) -> torch.Tensor:
    """One cell of an image column as a tensor: encoded bytes, a Hugging Face image struct
    ``{'bytes': ..., 'path': ...}`` (the file at ``path`` when ``bytes`` is empty), or a decoded array."""
    if isinstance(value, dict):
        if value.get('bytes'):
            return decode_bytes(value['bytes'], resize)
        if value.get('path'):
            return read_image(value['path'], resize)
        raise ValueError('image struct with neither bytes nor path')
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(value), resize)
    if isinstance(value, np.ndarray) and value.dtype != object:
        return _array_image(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise ValueError('no image in this sample')
    raise ValueError(f'an image cell of type {type(value).__name__}; expected bytes, {{bytes, path}} or an array')


def _pixels(value) -> int:
    if isinstance(value, dict) and value.get('bytes'):
        return bytes_pixel_count(value['bytes'])
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes_pixel_count(bytes(value))
    if isinstance(value, np.ndarray):
        return int(np.prod(value.shape[:2]))
    return 0


class Scorer:
    """``ds.map_batches(Scorer, fn_constructor_kwargs={'metric': 'maclip', 'backbone': path},
    batch_format='pandas', batch_size=16, compute=ray.data.ActorPoolStrategy(size=2), num_gpus=1)``.

    ``image_column``: encoded bytes, Hugging Face image structs or decoded arrays; ``device``: a
    torch device (default: ``cuda`` when the actor sees a GPU, else ``cpu``); ``pixel_budget``: most
    decoded pixels held at once; ``resize``: (H, W) before scoring, as ``score``'s preprocessing;
    ``fingerprint``: the settings the caller expects (a worker with other weights refuses);
    every other keyword is an option of ``pyiqa.create_metric(metric, ...)``.
    """

    def __init__(self, metric: str = 'maclip', *, image_column: str = 'image', device: str | None = None,
                 pixel_budget: int = DEFAULT_PIXEL_BUDGET, resize: tuple[int, int] | None = None,
                 fingerprint: dict | None = None, **options) -> None:
        from .scorers import Recipe

        if isinstance(pixel_budget, bool) or not isinstance(pixel_budget, int) or pixel_budget < 1:
            raise UserError(f'pixel_budget must be an integer >= 1, got {pixel_budget!r}')
        self.image_column, self.pixel_budget, self.resize = image_column, pixel_budget, resize
        self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        recipe = Recipe(metric, options)
        self.scorer = recipe.build(self.device)
        self.columns, self.fingerprint = self.scorer.columns, recipe.fingerprint
        if fingerprint is not None and json.dumps(fingerprint, sort_keys=True) != json.dumps(self.fingerprint,
                                                                                              sort_keys=True):
            raise UserError('this Ray worker would score with other settings than the driver (e.g. other weights at '
                            'the backbone path): ' + '; '.join(differences(fingerprint, self.fingerprint)))

    def _groups(self, cells) -> Iterator[list[int]]:
        """Row positions in groups whose pixels fit the budget together (a larger image alone)."""
        group, held = [], 0
        for index, cell in enumerate(cells):
            pixels = _pixels(cell)
            if group and held + pixels > self.pixel_budget:
                yield group
                group, held = [], 0
            group.append(index)
            held += pixels
        if group:
            yield group

    def _score(self, cells) -> tuple[list[dict | None], list[str | None]]:
        values: list[dict | None] = [None] * len(cells)
        errors: list[str | None] = [None] * len(cells)
        with torch.inference_mode():
            for group in self._groups(cells):
                decoded = []
                for index in group:
                    try:
                        decoded.append((index, image_tensor(cells[index], self.resize).to(self.device)))
                    except Exception as error:  # noqa: BLE001 - one bad sample is a row's error, not the task's
                        errors[index] = error_text(error)
                # Each decoded image stands for itself by its row in the batch.
                rows = [Sample('', index) for index, _ in decoded]
                for result in _score_batch(self.scorer, rows, [image for _, image in decoded]):
                    values[result.key], errors[result.key] = result.values, result.error
                del decoded
        return values, errors

    def __call__(self, batch):
        """A pandas DataFrame with the metric's columns and ``error`` added."""
        if self.image_column not in batch.columns:
            raise UserError(f'no column {self.image_column!r} in the data (columns: {", ".join(map(str, batch.columns))}); '
                            'pass image_column=')
        taken = [name for name in (*self.columns, ERROR_COLUMN) if name in batch.columns]
        if taken:
            raise UserError(f'the data already has column(s) {", ".join(taken)}, which the scorer adds; rename them first')
        values, errors = self._score(list(batch[self.image_column]))
        batch = batch.copy()
        for column in self.columns:
            batch[column] = [np.nan if row is None else row[column] for row in values]
        batch[ERROR_COLUMN] = errors
        return batch
