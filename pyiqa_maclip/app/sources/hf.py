"""Hugging Face ``datasets`` on disk, read with pyarrow (Arrow memory-mapped, Parquet row group by row group):

* a folder saved with ``save_to_disk``: ``state.json``, ``dataset_info.json`` and Arrow files; a
  ``DatasetDict``'s: ``dataset_dict.json`` and one such folder per split (the ``datasets`` package
  is not needed to read them);
* a folder of Parquet or Arrow data files as the Hub keeps them (``data/train-00000-of-00002.parquet``,
  ``train/*.parquet``, the ``configs`` of ``README.md``): the split's files are those ``datasets``
  itself finds (the package is needed; it only resolves file names here, nothing is downloaded or cached).

``--split`` picks a split: default ``train`` if there is one, else the only one. The image column is
the one ``--image-column`` names, else the first feature of type ``Image`` (from ``dataset_info.json``,
the files' ``huggingface`` schema metadata, or the README's ``dataset_info``). A sample's key is the
``--key-column`` value as text, else the row's index in the split (0-based, across its files, as
``datasets`` numbers rows). Its source is the saved dataset's folder (the split's folder of a
``DatasetDict``), or the data file holding the row.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable

from ...errors import UserError
from ..files import shown
from . import Sample
from .parquet import cell_image, file_samples, image_column_problem, import_pyarrow, key_values, mapped, sample_key

__all__ = ['image_column_of', 'collect', 'read']

_cache: dict = {}  # this process's last Arrow file read: path -> table
_DATA_MODULES = {'parquet': '.parquet', 'arrow': '.arrow'}  # datasets' builders this module reads, and their files


def _table(path: str):
    """An Arrow file's table, memory-mapped: the stream format (``save_to_disk``, cache files) or the file format."""
    if path not in _cache:
        pa = import_pyarrow()
        _cache.clear()
        try:
            try:
                _cache[path] = pa.ipc.open_stream(mapped(path)).read_all()
            except pa.ArrowInvalid:
                _cache[path] = pa.ipc.open_file(mapped(path)).read_all()
        except (OSError, pa.ArrowException) as error:
            raise UserError(f'{shown(path)} cannot be read as an Arrow file ({error}); expected Arrow data as '
                            'datasets writes it') from None
    return _cache[path]


def _json(folder: str, name: str) -> dict:
    """A ``save_to_disk`` folder's JSON file; a :class:`UserError` if it is missing or damaged."""
    try:
        with open(os.path.join(folder, name), encoding='utf-8') as file:
            found = json.load(file)
    except (OSError, ValueError) as error:
        raise UserError(f'{shown(os.path.join(folder, name))} cannot be read ({error}); expected the file '
                        'save_to_disk writes') from None
    if not isinstance(found, dict):
        raise UserError(f'{shown(os.path.join(folder, name))} holds no object; expected the file save_to_disk writes')
    return found


def _image_column(features: dict, where: str, image_column: str | None) -> str:
    """The image column of a dataset with ``features`` (a dict as ``Features.to_dict`` gives; empty if
    unknown): the one named, else the first ``Image`` feature."""
    if image_column is not None:
        if features and image_column not in features:
            raise UserError(f'{where} has no column {image_column!r} (it has {", ".join(features)})')
        return image_column
    found = [name for name, feature in features.items()
             if isinstance(feature, dict) and feature.get('_type') == 'Image']
    if not found:
        raise UserError(f'{where} has no Image feature (columns: {", ".join(features) or "unknown"}); name the '
                        'column holding the images with --image-column')
    return found[0]


def image_column_of(folder: str, image_column: str | None) -> str:
    """A ``save_to_disk`` dataset's image column: the one named, else its first ``Image`` feature."""
    features = _json(folder, 'dataset_info.json').get('features') or {}
    return _image_column(features, f'the dataset {shown(folder)}', image_column)


def _arrow_samples(arrow: str, source: str, column: str, key_column: str | None, first_row: int) -> list[Sample]:
    table = _table(arrow)
    if column not in table.schema.names:
        raise UserError(f'{shown(arrow)} has no column {column!r} (it has {", ".join(table.schema.names)}); name the '
                        'image column with --image-column')
    if problem := image_column_problem(table.schema.field(column).type):
        raise UserError(f'the column {column!r} of {shown(arrow)} cannot hold images: {problem}')
    if key_column is not None and key_column not in table.schema.names:
        raise UserError(f'{shown(arrow)} has no column {key_column!r} (it has {", ".join(table.schema.names)}); '
                        'name the key column with --key-column, or leave it out to key rows by their index')
    keys = key_values(table.column(key_column), shown(arrow), key_column, first_row) if key_column else \
        [None] * table.num_rows
    return [Sample(source, sample_key(value, first_row + row), ('hf', arrow, row, column))
            for row, value in enumerate(keys)]


def _saved_samples(folder: str, image_column: str | None, key_column: str | None) -> list[Sample]:
    source, column = os.path.abspath(folder), image_column_of(folder, image_column)
    try:
        arrows = [os.path.join(source, entry['filename']) for entry in _json(folder, 'state.json')['_data_files']]
    except (KeyError, TypeError):
        raise UserError(f'{shown(os.path.join(folder, "state.json"))} lists no data files (_data_files); expected the '
                        'file save_to_disk writes') from None
    samples = []
    for arrow in arrows:
        samples += _arrow_samples(arrow, source, column, key_column, len(samples))
    return samples


def _chosen_split(folder: str, splits: list[str], split: str | None) -> str:
    named = ', '.join(shown(name) for name in splits)
    if split is not None:
        if split not in splits:
            raise UserError(f'--split {shown(split)}: the dataset {shown(folder)} has no such split (its splits: '
                            f'{named})')
        return split
    if 'train' in splits or len(splits) == 1:
        return 'train' if 'train' in splits else splits[0]
    raise UserError(f'the dataset {shown(folder)} has several splits ({named}): choose one with --split NAME')


def _resolved_data_files(folder: str) -> tuple[str, dict[str, list[str]], dict]:
    """datasets' reading of a folder of data files: its builder ('parquet', 'arrow', ...), the default
    config's files per split, and the features its README states (else ``{}``)."""
    try:
        from datasets.data_files import DataFilesPatternsDict
        from datasets.load import LocalDatasetModuleFactory
    except ImportError:
        raise UserError(f'{shown(folder)} is a folder of dataset files: finding its splits needs the datasets '
                        "package: pip install 'pyiqa-maclip[hf]'") from None
    try:
        module = LocalDatasetModuleFactory(folder).get_module()
        parameters = module.builder_configs_parameters
        configs = {config.name: config for config in parameters.builder_configs}
        name = parameters.default_config_name or (next(iter(configs)) if len(configs) == 1 else None)
        if name is None:
            raise UserError(f'the dataset {shown(folder)} has several configs in its README.md '
                            f'({", ".join(map(shown, configs))}) and no default: pass the folder of one config\'s '
                            'files')
        config = configs[name]
        files = config.data_files
        if isinstance(files, DataFilesPatternsDict):  # a README config's patterns, resolved as its builder would
            files = files.resolve(os.path.join(folder, config.data_dir or ''))
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - datasets' reasons (no data files, mixed formats, a bad README header)
        raise UserError(f'{shown(folder)} cannot be read as a dataset folder: {error}') from None
    info = module.dataset_infos.get(name)
    features = info.features.to_dict() if info is not None and info.features is not None else {}
    resolved, given = os.path.realpath(folder) + os.sep, os.path.abspath(folder) + os.sep
    named = {str(split): [given + path[len(resolved):] if path.startswith(resolved) else path for path in paths]
             for split, paths in files.items()}  # a folder given through a link keeps its name in the sources
    return module.module_path.rsplit('.', 1)[-1], named, features


def _file_features(path: str) -> dict:
    """The features ``datasets`` keeps in a data file's schema metadata (``{}`` if none)."""
    pa = import_pyarrow()
    try:
        schema = pa.parquet.read_schema(mapped(path)) if path.endswith('.parquet') else _table(path).schema
    except (OSError, pa.ArrowException) as error:
        raise UserError(f'{shown(path)} cannot be read ({error}); expected a Parquet or Arrow data file') from None
    try:
        return json.loads((schema.metadata or {}).get(b'huggingface', b'{}'))['info']['features']
    except (ValueError, KeyError, TypeError):
        return {}


def _data_file_samples(folder: str, image_column: str | None, key_column: str | None,
                       split: str | None) -> list[Sample]:
    builder, splits, features = _resolved_data_files(folder)
    if builder not in _DATA_MODULES:
        raise UserError(f'the dataset {shown(folder)} holds {builder} data files (datasets\' {builder} builder); '
                        'expected Parquet or Arrow files')
    chosen = _chosen_split(folder, list(splits), split)
    paths = [path for path in splits[chosen] if path.endswith(_DATA_MODULES[builder])]
    if not paths:
        odd = any(not c.isprintable() for c in os.path.abspath(folder))
        raise UserError(f'datasets finds no {builder} file of the split {shown(chosen)} in {shown(folder)}'
                        + ('; a line break or other control character in its name defeats its file patterns: '
                           'rename the folder' if odd else ''))
    column = _image_column(_file_features(paths[0]) or features, f'the dataset {shown(folder)}', image_column)
    samples: list[Sample] = []
    for path in paths:
        if builder == 'parquet':
            samples += file_samples(path, column, key_column, first_row=len(samples))
        else:
            samples += _arrow_samples(path, os.path.abspath(path), column, key_column, len(samples))
    return samples


def _dataset_samples(folder: str, image_column: str | None, key_column: str | None,
                     split: str | None) -> list[Sample]:
    if os.path.isfile(os.path.join(folder, 'dataset_dict.json')):  # a DatasetDict saved with save_to_disk
        splits = _json(folder, 'dataset_dict.json').get('splits')
        if not isinstance(splits, list) or not all(isinstance(name, str) for name in splits):
            raise UserError(f'{shown(os.path.join(folder, "dataset_dict.json"))} lists no splits; expected the file '
                            'save_to_disk writes')
        return _saved_samples(os.path.join(folder, _chosen_split(folder, splits, split)), image_column, key_column)
    if os.path.isfile(os.path.join(folder, 'state.json')):
        if split is not None:
            raise UserError(f'--split {shown(split)}: {shown(folder)} is one dataset saved by save_to_disk, without '
                            'splits; leave --split out')
        return _saved_samples(folder, image_column, key_column)
    return _data_file_samples(folder, image_column, key_column, split)


def collect(inputs: Iterable[str], image_column: str | None = None, key_column: str | None = None,
            split: str | None = None) -> list[Sample]:
    return [sample for folder in inputs for sample in _dataset_samples(folder, image_column, key_column, split)]


def read(locator: tuple) -> bytes:
    """The image bytes of ``('hf', arrow file, row, column)``."""
    _, arrow, row, column = locator
    return cell_image(_table(arrow).column(column)[row].as_py(), os.path.dirname(arrow))
