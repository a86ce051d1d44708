"""(image path, MOS) lists of benchmark datasets, and images read as the paper reads them.

pyiqa datasets are built with pyiqa's own classes from its
``default_dataset_configs.yml``, with ``./datasets`` replaced by the data root and
without splits or augmentation: the paper scores every image of a dataset (pyiqa's
LIVE Challenge class, like the literature, leaves out the 7 training images).
Custom datasets are an image folder plus a table (CSV, TSV, or Excel)
naming each image and its MOS.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from .config import BenchmarkConfigError, DatasetSpec

__all__ = ['Item', 'load_items', 'items_digest', 'read_image', 'pyiqa_dataset_options']

_RESAMPLE = {
    'bicubic': Image.Resampling.BICUBIC,
    'bilinear': Image.Resampling.BILINEAR,
    'lanczos': Image.Resampling.LANCZOS,
    'nearest': Image.Resampling.NEAREST,
    'box': Image.Resampling.BOX,
    'hamming': Image.Resampling.HAMMING,
}
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
    return [Item(str(row[-2]), float(row[-1])) for row in dataset.paths_mos]


def _read_table(path: Path, where: str) -> pd.DataFrame:
    try:
        if path.suffix.lower() in ('.xlsx', '.xls'):
            return pd.read_excel(path)
        return pd.read_csv(path, sep='\t' if path.suffix.lower() == '.tsv' else ',')
    except ImportError as error:
        raise BenchmarkConfigError(f'{where}: reading {path} needs {error.name}; install it or save the '
                                   'table as CSV') from error
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise BenchmarkConfigError(f'{where}: cannot read the MOS table {path}: {error}') from error


def _custom_items(spec: DatasetSpec) -> list[Item]:
    where = f'datasets.{spec.name}'
    images, table_path = Path(spec.images), Path(spec.mos)
    if not images.is_dir():
        raise BenchmarkConfigError(f'{where}.images: the image folder {images} does not exist')
    if not table_path.is_file():
        raise BenchmarkConfigError(f'{where}.mos: the MOS table {table_path} does not exist')
    table = _read_table(table_path, f'{where}.mos')
    for key, column in (('image_column', spec.image_column), ('mos_column', spec.mos_column)):
        if column not in table.columns:
            raise BenchmarkConfigError(
                f'{where}.mos: {table_path} has no column {column!r} (its columns: '
                f'{", ".join(map(str, table.columns))}); name the right one with {key}:'
            )
    mos = pd.to_numeric(table[spec.mos_column], errors='coerce')
    bad = table.index[~np.isfinite(mos)]
    if len(bad):
        rows = ', '.join(str(i + 2) for i in bad[:5])  # +2: header line, 1-based
        raise BenchmarkConfigError(
            f'{where}.mos: {table_path} has {len(bad)} missing or non-numeric MOS values (lines {rows})'
        )
    names = table[spec.image_column].astype(str)
    return [Item(str(images / name), float(value)) for name, value in zip(names, mos)]


def load_items(spec: DatasetSpec) -> list[Item]:
    """Every (image path, MOS) of the dataset, in the table's order."""
    items = _custom_items(spec) if spec.kind == 'custom' else _pyiqa_items(spec)
    if not items:
        raise BenchmarkConfigError(f'datasets.{spec.name}: the MOS table lists no images')
    return items


def items_digest(items: list[Item]) -> str:
    """A hash of the image list and its MOS: a changed table invalidates finished results."""
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def read_image(path: str, resize: tuple[int, int] | None = None, mode: str = 'bicubic') -> torch.Tensor:
    """The image as a (1, 3, H, W) float tensor in [0, 1], resized to (H, W) first if asked (PIL)."""
    with Image.open(path) as image:
        image = image.convert('RGB')
    if resize is not None:
        image = image.resize((resize[1], resize[0]), _RESAMPLE[mode])
    return to_tensor(image).unsqueeze(0)
