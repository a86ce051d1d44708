"""(image path, MOS) lists of benchmark datasets, checked before anything is scored.

pyiqa datasets are built with pyiqa's own classes from its
``default_dataset_configs.yml``, with ``./datasets`` replaced by the data root and
without splits or augmentation: the paper scores every image of a dataset (pyiqa's
LIVE Challenge class, like the literature, leaves out the 7 training images).
Custom datasets are an image folder plus a table (CSV, TSV, or .xlsx) naming each
image and its MOS. The table is checked before anything is scored: image names are
text as written (``0001`` stays ``0001``, a file may be called ``NA``), each names a
file inside the image folder once, every MOS is a finite number; a problem is
reported with the line (CSV, TSV) or row (.xlsx) a user finds it on.
"""
from __future__ import annotations

import csv
import math
import ntpath
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NamedTuple

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from ...errors import error_text
from .specs import BenchmarkConfigError, DatasetSpec

__all__ = ['Item', 'load_items', 'pyiqa_dataset_options']

_PATH_KEYS = ('dataroot_target', 'dataroot_ref', 'meta_info_file')
_DROPPED_KEYS = ('split_index', 'split_file', 'augment', 'override_phase', 'mos_normalize')


class Item(NamedTuple):
    image: str
    mos: float


def _rebase(path: str, root: str) -> str:
    """pyiqa's './datasets/a/b' under ``root``: 'root/a/b' (as ``pyiqa.load_dataset`` does)."""
    return str(Path(root, *Path(path).parts[1:]))


def pyiqa_dataset_options(spec: DatasetSpec) -> dict:
    """pyiqa's options for ``spec.pyiqa``: paths under ``spec.root``, the whole dataset, no augmentation."""
    from pyiqa.api_helpers import get_dataset_info

    options = {k: v for k, v in get_dataset_info(spec.pyiqa).items() if k not in _DROPPED_KEYS}
    for key in _PATH_KEYS:
        if key in options:
            options[key] = _rebase(options[key], spec.root)
    options['phase'] = 'test'
    return options


def _pyiqa_items(spec: DatasetSpec) -> list[Item]:
    from pyiqa.data import build_dataset
    from pyiqa.data.general_fr_dataset import GeneralFRDataset
    from pyiqa.data.general_nr_dataset import GeneralNRDataset

    options = pyiqa_dataset_options(spec)
    where = f'datasets.{spec.name} (pyiqa dataset {spec.pyiqa!r} under root {spec.root!r})'
    meta = Path(options['meta_info_file'])
    if not meta.is_file():
        raise BenchmarkConfigError(
            f'{where}: the meta-info file {meta} does not exist. pyiqa keeps them in '
            f'<root>/meta_info/ (pyiqa.load_dataset({spec.pyiqa!r}, data_root=...) downloads them '
            'from the Hugging Face dataset chaofengc/IQA-PyTorch-Datasets-metainfo); set data_root: '
            'or this dataset\'s root: to the folder that holds meta_info/'
        )
    if not Path(options['dataroot_target']).is_dir():
        raise BenchmarkConfigError(f'{where}: the image folder {options["dataroot_target"]} does not exist')
    dataset = build_dataset(options)
    if not isinstance(dataset, (GeneralNRDataset, GeneralFRDataset)):
        raise BenchmarkConfigError(
            f'{where}: pyiqa dataset type {options["type"]} has no per-image MOS the benchmark can read '
            '(supported: GeneralNRDataset, GeneralFRDataset and their subclasses)'
        )
    # NR rows are [image, mos], FR rows [reference, image, mos].
    items = [Item(str(row[-2]), float(row[-1])) for row in dataset.paths_mos]
    first_seen: dict[str, int] = {}
    for number, item in enumerate(items, start=1):
        listed = f"entry {number} of the list pyiqa reads from {meta}"
        if not math.isfinite(item.mos):
            raise BenchmarkConfigError(f'{where}: {listed} ({item.image}) has MOS {item.mos}; expected a finite number')
        key = os.path.normpath(item.image)
        if key in first_seen:
            raise BenchmarkConfigError(
                f'{where}: {listed}: image {item.image!r} is listed twice (first as entry {first_seen[key]})')
        first_seen[key] = number
    return items


def _csv_records(path: Path, delimiter: str, where: str) -> Iterator[tuple[str, list]]:
    """Non-blank records of a CSV/TSV file, each with its first line number (the header is line 1)."""
    with open(path, encoding='utf-8-sig', newline='') as file:
        records, line, width = csv.reader(file, delimiter=delimiter, strict=True), 1, None
        try:
            for record in records:
                if record:
                    width = width or len(record)
                    if any(record[width:]):
                        raise BenchmarkConfigError(
                            f'{where}: {path} line {line} has {len(record)} cells, its header {width}; '
                            f'a name holding {delimiter!r} must be quoted'
                        )
                    yield f'line {line}', record
                line = records.line_num + 1
        except csv.Error as error:
            raise BenchmarkConfigError(f'{where}: {path} line {line}: {error}') from None


def _excel_records(path: Path) -> Iterator[tuple[str, list]]:
    """Non-blank rows of the first sheet, each with its row number as Excel shows it.

    Read streaming (memory bounded whatever the file's size) and to its last row: openpyxl's
    read-only mode otherwise stops at the sheet's stored dimension, which writers other than
    Excel can leave stale (a sheet declaring A1:B3 while holding 8 rows would read as 2).
    """
    from openpyxl import load_workbook

    book = load_workbook(path, read_only=True, data_only=True)
    try:
        sheet = book.worksheets[0]
        sheet.reset_dimensions()
        for number, values in enumerate(sheet.iter_rows(min_row=1, values_only=True), start=1):
            if any(value is not None and str(value).strip() for value in values):
                yield f'row {number}', list(values)
    finally:
        book.close()


def _table_records(path: Path, where: str) -> list[tuple[str, list]]:
    """Every non-blank record of a MOS table (CSV, TSV or .xlsx), header first, cells as stored."""
    from openpyxl.utils.exceptions import InvalidFileException

    suffix = path.suffix.lower()
    if suffix == '.xls':
        raise BenchmarkConfigError(f'{where}: {path} is an old-style .xls workbook; save it as .xlsx or CSV')
    try:
        if suffix in ('.xlsx', '.xlsm'):
            return list(_excel_records(path))
        return list(_csv_records(path, '\t' if suffix == '.tsv' else ',', where))
    except BenchmarkConfigError:
        raise
    except UnicodeDecodeError as error:
        raise BenchmarkConfigError(f'{where}: {path} is not UTF-8 text (byte {error.start}); save the table '
                                   'as UTF-8 CSV or .xlsx') from None
    # openpyxl reports a file that is no workbook as any of these.
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, InvalidFileException) as error:
        raise BenchmarkConfigError(f'{where}: cannot read the MOS table {path}: {error_text(error)}') from error


def _cell_text(value):
    """A cell as text, as written: no NA conversion, numbers (from Excel) as they print."""
    return '' if value is None else value if isinstance(value, str) else str(value)


def _image_inside_folder(name: str) -> str:
    if not name.strip():
        raise PydanticCustomError('empty', 'empty')
    # Either separator: a table written on Windows may use backslashes and drive letters.
    parts = re.split(r'[\\/]', name)
    if name.startswith(('/', '\\')) or ntpath.splitdrive(name)[0] or '..' in parts \
            or all(part in ('', '.') for part in parts):
        raise PydanticCustomError('outside', 'outside')
    return name


def _number_cell(value):
    if value is None or isinstance(value, str) and not value.strip():
        raise PydanticCustomError('empty', 'empty')
    if isinstance(value, bool):  # an Excel TRUE is no score
        raise PydanticCustomError('not_a_number', 'not a number')
    return value


class MosRow(BaseModel):
    """One row of a MOS table: an image inside the image folder and its finite MOS."""

    model_config = ConfigDict(frozen=True)

    image: Annotated[str, BeforeValidator(_cell_text), AfterValidator(_image_inside_folder)]
    mos: Annotated[float, BeforeValidator(_number_cell), Field(allow_inf_nan=False)]


def _row_problem(error: dict, spec: DatasetSpec) -> str:
    field = error['loc'][0]
    column = spec.image_column if field == 'image' else spec.mos_column
    if error['type'] == 'empty':
        return f'the {column!r} cell is empty'
    if field == 'image':
        return (f"image {error['input']!r} is outside the image folder; expected a path relative to it "
                "(not absolute, no '..')")
    return f"MOS {error['input']!r} (column {column!r}) is not a finite number"


def _column(header: list[str], name: str, key: str, path: Path, where: str) -> int:
    if header.count(name) != 1:
        problem = 'has two columns' if header.count(name) else 'has no column'
        raise BenchmarkConfigError(
            f'{where}: {path} {problem} {name!r} (its columns: {", ".join(header)}); '
            f'name the right one with {key}:'
        )
    return header.index(name)


def _custom_items(spec: DatasetSpec) -> list[Item]:
    where = f'datasets.{spec.name}'
    images, table_path = Path(spec.images), Path(spec.mos)
    if not images.is_dir():
        problem = 'is not a folder' if images.exists() else 'does not exist'
        raise BenchmarkConfigError(f'{where}.images: the image folder {images} {problem}')
    if not table_path.is_file():
        problem = 'is not a file' if table_path.exists() else 'does not exist'
        raise BenchmarkConfigError(f'{where}.mos: the MOS table {table_path} {problem}')
    records = _table_records(table_path, f'{where}.mos')
    if not records:
        raise BenchmarkConfigError(f'{where}.mos: {table_path} is empty; expected a header line '
                                   f'({spec.image_column},{spec.mos_column}) and one row per image')
    header = [_cell_text(cell) for cell in records[0][1]]
    image_at = _column(header, spec.image_column, 'image_column', table_path, f'{where}.mos')
    mos_at = _column(header, spec.mos_column, 'mos_column', table_path, f'{where}.mos')
    items, problems, first_seen = [], [], {}
    for row, cells in records[1:]:
        image, mos = (cells[at] if at < len(cells) else None for at in (image_at, mos_at))
        try:
            checked = MosRow(image=image, mos=mos)
            items.append(Item(str(images / checked.image), checked.mos))
        except ValidationError as error:
            problems += [f'{row}: {_row_problem(e, spec)}' for e in error.errors()]
        name = _cell_text(image)
        key = os.path.normpath(name) if name.strip() else None  # 'a.jpg' and './a.jpg' are one file
        if key in first_seen:
            problems.append(f'{row}: image {name!r} is listed twice (first on {first_seen[key]})')
        elif key:
            first_seen[key] = row
    if problems:
        others = len(problems) - 1
        more = f' ({others} more problem{"s" * (others > 1)} in this table)' if others else ''
        raise BenchmarkConfigError(f'{where}.mos: {table_path} {problems[0]}{more}')
    return items


def load_items(spec: DatasetSpec) -> list[Item]:
    """Every (image path, MOS) of the dataset, in the table's order: each image once, every MOS finite."""
    items = _custom_items(spec) if spec.kind == 'custom' else _pyiqa_items(spec)
    if not items:
        raise BenchmarkConfigError(f'datasets.{spec.name}: the MOS table lists no images')
    return items
