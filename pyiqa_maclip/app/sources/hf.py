"""Hugging Face ``datasets`` saved with ``save_to_disk``: a folder with ``state.json``,
``dataset_info.json`` and Arrow files, read memory-mapped with pyarrow (the ``datasets`` package
itself is not needed to read one).

The image column is the one ``--image-column`` names, else the first feature of type ``Image``.
A sample's source is the dataset folder's absolute path; its key is the ``--key-column`` value as
text, else the row's index in the dataset (0-based).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable

from ...errors import UserError
from . import Sample
from .parquet import cell_image, image_column_problem, import_pyarrow, sample_key

__all__ = ['image_column_of', 'collect', 'read']

_cache: dict = {}  # this process's last Arrow file read: path -> table


def _table(path: str):
    if path not in _cache:
        pa = import_pyarrow()
        _cache.clear()
        _cache[path] = pa.ipc.open_stream(pa.memory_map(path)).read_all()
    return _cache[path]


def image_column_of(folder: str, image_column: str | None) -> str:
    """The dataset's image column: the one named, else its first ``Image`` feature."""
    with open(os.path.join(folder, 'dataset_info.json'), encoding='utf-8') as file:
        features = json.load(file).get('features') or {}
    if image_column is not None:
        if image_column not in features:
            raise UserError(f'the dataset {folder} has no column {image_column!r} (it has {", ".join(features)})')
        return image_column
    found = [name for name, feature in features.items()
             if isinstance(feature, dict) and feature.get('_type') == 'Image']
    if not found:
        raise UserError(f'the dataset {folder} has no Image feature (columns: {", ".join(features)}); name the '
                        'column holding the images with --image-column')
    return found[0]


def _arrow_files(folder: str) -> list[str]:
    with open(os.path.join(folder, 'state.json'), encoding='utf-8') as file:
        return [os.path.join(folder, entry['filename']) for entry in json.load(file)['_data_files']]


def _dataset_samples(folder: str, image_column: str | None, key_column: str | None) -> list[Sample]:
    source, column = os.path.abspath(folder), image_column_of(folder, image_column)
    samples, index = [], 0
    for arrow in _arrow_files(source):
        table = _table(arrow)
        if problem := image_column_problem(table.schema.field(column).type):
            raise UserError(f'the column {column!r} of the dataset {folder} cannot hold images: {problem}')
        if key_column is not None and key_column not in table.schema.names:
            raise UserError(f'the dataset {folder} has no column {key_column!r} '
                            f'(it has {", ".join(table.schema.names)})')
        keys = table.column(key_column).to_pylist() if key_column else [None] * table.num_rows
        samples += [Sample(source, sample_key(value, index + row), ('hf', arrow, row, column))
                    for row, value in enumerate(keys)]
        index += table.num_rows
    return samples


def collect(inputs: Iterable[str], image_column: str | None = None, key_column: str | None = None) -> list[Sample]:
    return [sample for folder in inputs for sample in _dataset_samples(folder, image_column, key_column)]


def read(locator: tuple) -> bytes:
    """The image bytes of ``('hf', arrow file, row, column)``."""
    _, arrow, row, column = locator
    return cell_image(_table(arrow).column(column)[row].as_py(), os.path.dirname(arrow))
