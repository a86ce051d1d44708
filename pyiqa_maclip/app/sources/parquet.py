"""Parquet files of images: a column of image bytes (binary, or a struct ``{bytes, path}`` as Hugging
Face writes it) or of image paths, read row group by row group.

A sample's source is the file's absolute path; its key is the key column's value as text, else the
row number within the file (0-based) as text (:func:`sample_key`). pyarrow is imported only here,
when a Parquet input is read (``pip install 'pyiqa-maclip[parquet]'``).
"""
from __future__ import annotations

import mmap
import os
from collections.abc import Iterable

from ...errors import UserError
from ..files import shown
from . import Sample

__all__ = ['check_columns', 'DEFAULT_IMAGE_COLUMN', 'DEFAULT_KEY_COLUMN', 'sample_key', 'key_values', 'file_name', 'import_pyarrow',
           'mapped', 'image_column_problem', 'cell_image', 'file_samples', 'collect', 'read']

DEFAULT_IMAGE_COLUMN = 'image'
DEFAULT_KEY_COLUMN = 'key'
_cache: dict = {}  # this process's last row group read: (file, group, column) -> cells


def sample_key(value, row: int) -> str:
    """A row's key: the key column's ``value`` as text (bytes as UTF-8), else (``value`` None) the row
    number within the file."""
    if value is None:
        return str(row)
    return value.decode('utf-8', 'surrogateescape') if isinstance(value, bytes) else str(value)


def key_values(column, where: str, key_column: str, first_row: int) -> list:
    """The values of a key column (an arrow array), or a :class:`UserError` naming the first row without one:
    such a row keyed by its number could take the key another row holds, and a key would mean two things."""
    values = column.to_pylist()
    if column.null_count:
        raise UserError(f'{where}: the key column {key_column!r} has no value in row {first_row + values.index(None)}; '
                        'every row needs a key: name a column with a value in every row with --key-column')
    return values


def file_name(path: str | os.PathLike) -> str:
    """A Parquet file's source: its path as given, made absolute."""
    return os.path.abspath(os.fsdecode(path))


def import_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        # also when writing scores.parquet, or reading a datasets folder of Arrow files
        raise UserError("Parquet and Arrow files need pyarrow: pip install 'pyiqa-maclip[parquet]'") from None
    return pyarrow


def mapped(path: str):
    """The file at ``path`` memory-mapped, as a pyarrow reader: opened by Python, so that any name the file
    system allows works (pyarrow opens only names that are valid UTF-8)."""
    pa = import_pyarrow()
    with open(path, 'rb') as file:
        if os.fstat(file.fileno()).st_size == 0:  # mmap refuses empty files; pyarrow names the problem
            return pa.BufferReader(b'')
        return pa.BufferReader(pa.py_buffer(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)))


def _is_of(field_type, *kinds: str) -> bool:
    """Whether ``field_type`` is of one of pyarrow's ``kinds`` ('binary': ``pa.types.is_binary``; the view
    types only where this pyarrow has them)."""
    types = import_pyarrow().types
    return any(getattr(types, f'is_{kind}', lambda _: False)(field_type) for kind in kinds)


def _is_binary(field_type) -> bool:
    return _is_of(field_type, 'binary', 'large_binary', 'binary_view', 'fixed_size_binary')


def _is_text(field_type) -> bool:
    return _is_of(field_type, 'string', 'large_string', 'string_view')


def image_column_problem(field_type) -> str | None:
    """Why a column of arrow type ``field_type`` cannot hold images, or None: it must hold bytes, paths, or
    structs of bytes (binary) and, if any, a path (text); dictionary-encoded too."""
    pa = import_pyarrow()
    value_type = field_type.value_type if pa.types.is_dictionary(field_type) else field_type
    if _is_binary(value_type) or _is_text(value_type):
        return None
    if pa.types.is_struct(value_type) and value_type.get_field_index('bytes') >= 0:
        fields = {field.name: field.type for field in value_type}  # a field of nulls only is of type null
        if (_is_binary(fields['bytes']) or pa.types.is_null(fields['bytes'])) \
                and (_is_text(fields.get('path', pa.null())) or pa.types.is_null(fields.get('path', pa.null()))):
            return None
    return (f'it is {field_type}; expected image bytes (binary), paths (text), or structs of bytes (binary) and path '
            '(text) as datasets writes them')


def cell_image(cell, folder: str) -> bytes:
    """The image bytes of one cell: bytes as they are; a struct's bytes (or, without, its path); a path read
    from the file (relative ones from ``folder``)."""
    if isinstance(cell, dict):
        cell = cell.get('bytes') if cell.get('bytes') is not None else cell.get('path')
    if cell is None:
        raise ValueError('no image in this row (the cell is empty)')
    if isinstance(cell, str):
        with open(os.path.join(folder, os.path.expanduser(cell)), 'rb') as file:
            return file.read()
    return bytes(cell)


def check_columns(path: str, image_column: str, key_column: str | None) -> list[str]:
    """The file's column names; a :class:`UserError` unless it has ``image_column`` (of images) and ``key_column``."""
    pa = import_pyarrow()
    try:
        schema = pa.parquet.read_schema(mapped(path))
    except (OSError, pa.ArrowException) as error:  # not Parquet, or cut short
        raise UserError(f'{shown(path)} cannot be read as Parquet ({error}); expected a Parquet file') from None
    if image_column not in schema.names:
        raise UserError(f'{shown(path)} has no column {image_column!r} (it has {", ".join(schema.names)}); name the '
                        'image column with --image-column')
    if problem := image_column_problem(schema.field(image_column).type):
        raise UserError(f'the column {image_column!r} of {shown(path)} cannot hold images: {problem}')
    if key_column is not None and key_column not in schema.names:
        raise UserError(f'{shown(path)} has no column {key_column!r} (it has {", ".join(schema.names)}); name the key '
                        'column with --key-column, or leave it out to key rows by their number')
    return schema.names


def file_samples(path: str, image_column: str, key_column: str | None, default_key: str | None = None,
                 first_row: int = 0) -> list[Sample]:
    """The samples of one Parquet file, listed row group by row group: keyed by ``key_column`` (else
    ``default_key`` if the file has it), else by row number counted from ``first_row``."""
    pa = import_pyarrow()
    names = check_columns(path, image_column, key_column)
    if key_column is None and default_key in names:
        key_column = default_key
    source, samples, row = file_name(path), [], first_row
    parquet = pa.parquet.ParquetFile(mapped(path))
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        keys = key_values(parquet.read_row_group(group, columns=[key_column]).column(0), shown(path), key_column, row) \
            if key_column else [None] * rows
        samples += [Sample(source, sample_key(value, row + i), ('parquet', source, group, i, image_column))
                    for i, value in enumerate(keys)]
        row += rows
    return samples


def collect(inputs: Iterable[str], image_column: str | None = None, key_column: str | None = None) -> list[Sample]:
    samples = []
    for path in inputs:
        if not os.path.isfile(path):
            raise UserError(f'{shown(path)} does not exist: expected a Parquet file')
        samples += file_samples(path, image_column or DEFAULT_IMAGE_COLUMN, key_column, DEFAULT_KEY_COLUMN)
    return samples


def read(locator: tuple) -> bytes:
    """The image bytes of ``('parquet', file, row group, row in the group, column)``; the row group's
    column is kept for the next sample (samples come in file order)."""
    _, path, group, row, column = locator
    if (path, group, column) not in _cache:
        pa = import_pyarrow()
        _cache.clear()
        cells = pa.parquet.ParquetFile(mapped(path)).read_row_group(group, columns=[column])
        _cache[path, group, column] = cells.column(0)
    return cell_image(_cache[path, group, column][row].as_py(), os.path.dirname(path))
