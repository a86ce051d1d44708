"""A checked configuration's names resolved against pyiqa: the specs the runner scores.

Datasets get the paper's preprocessing for their name, then their own keys; a pyiqa
dataset must be one of pyiqa's (its ``lower_better`` read from there). Metrics follow
``base:`` through the configuration to a pyiqa metric, their options are checked
against what its arch accepts, and only MA-CLIP metrics may predict a component.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from ...names import is_maclip
from ..metric_options import accepted_options
from .schema import (
    RESERVED_METRIC_KEYS, ConfigFile, CustomDatasetEntry, MetricEntry, PyiqaDatasetEntry, read_config, validated,
)
from .specs import BenchmarkConfig, BenchmarkConfigError, DatasetSpec, MetricSpec, file_stem

__all__ = ['PAPER_PREPROCESSING', 'parse_config', 'load_config']

#: The official MA-CLIP preprocessing, applied to datasets of these names unless the
#: configuration sets the key itself: SPAQ and AGIQA-1k resized (aspect ignored),
#: KonIQ-10k read from its 1024x768 release (pyiqa's ``koniq10k-1024`` entry).
PAPER_PREPROCESSING: dict[str, dict] = {
    'spaq': {'resize': [448, 448], 'resize_mode': 'bicubic'},
    'agiqa1k': {'resize': [224, 224], 'resize_mode': 'bicubic'},
    'koniq10k': {'pyiqa': 'koniq10k-1024'},
}


def _pyiqa_datasets() -> dict:
    from pyiqa.api_helpers import get_dataset_info

    return get_dataset_info()


def _dataset(name: str, entry, data_root: str) -> DatasetSpec:
    """The spec of one dataset entry: the paper's defaults for its name, then its own keys, checked."""
    custom = isinstance(entry, Mapping) and ('images' in entry or 'mos' in entry)
    schema = CustomDatasetEntry if custom else PyiqaDatasetEntry
    if isinstance(entry, Mapping) or entry is None:
        defaults = {k: v for k, v in PAPER_PREPROCESSING.get(name, {}).items() if k in schema.model_fields}
        entry = {**defaults, **(entry or {})}
    checked = validated(schema, entry, ('datasets', name))
    if custom:
        if checked.image_column == checked.mos_column:
            raise BenchmarkConfigError(
                f'datasets.{name}: image_column and mos_column are both {checked.image_column!r}; '
                'they name two different columns of the table')
        return DatasetSpec(name, 'custom', **checked.model_dump())
    known = _pyiqa_datasets()
    pyiqa_name = checked.pyiqa or name
    if pyiqa_name not in known:
        raise BenchmarkConfigError(
            f'datasets.{name}: {pyiqa_name!r} is not a pyiqa dataset (one of {", ".join(known)}); '
            'a custom dataset needs images: (the image folder) and mos: (a CSV with columns image,mos)'
        )
    lower_better = checked.mos_lower_better
    if lower_better is None:
        lower_better = bool(known[pyiqa_name].get('lower_better', False))
    return DatasetSpec(name, 'pyiqa', mos_lower_better=lower_better, resize=checked.resize,
                       resize_mode=checked.resize_mode, pyiqa=pyiqa_name, root=checked.root or data_root)


def _resolve_base(name: str, table: Mapping[str, MetricEntry],
                  chain: tuple[str, ...] = ()) -> tuple[str, dict, str | None]:
    """(pyiqa metric name, merged options, component) of ``name``, following ``base:`` through the table."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    if name in chain:
        raise BenchmarkConfigError(f'metrics.{chain[0]}.base: the base: chain loops: {" -> ".join((*chain, name))}')
    own = table[name]
    base = own.base
    if base is None:
        if name not in DEFAULT_CONFIGS:
            raise BenchmarkConfigError(
                f'metrics.{name}: {name!r} is not a pyiqa metric (see pyiqa.list_models()); '
                f'name a pyiqa metric, or make a variant with base: <pyiqa metric or another metric here>'
            )
        return name, own.options, own.component
    if base in table and base != name:
        pyiqa_name, inherited, component = _resolve_base(base, table, (*chain, name))
        return pyiqa_name, {**inherited, **own.options}, own.component or component
    if base in DEFAULT_CONFIGS:
        return base, own.options, own.component
    raise BenchmarkConfigError(
        f'metrics.{name}.base: {base!r} is neither a metric of this configuration nor a pyiqa metric'
    )


def _metric(name: str, table: Mapping[str, MetricEntry]) -> MetricSpec:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    where = f'metrics.{name}'
    pyiqa_name, options, component = _resolve_base(name, table)
    component = component or 'score'
    if component != 'score' and not is_maclip(DEFAULT_CONFIGS[pyiqa_name]['metric_opts']):
        raise BenchmarkConfigError(
            f'{where}.component: only MA-CLIP metrics have components (q_sim, q_mag); {pyiqa_name!r} is not one'
        )
    accepted = accepted_options(pyiqa_name)
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise BenchmarkConfigError(
                f'{where}: {pyiqa_name!r} has no option {unknown[0]!r}; its options: '
                f'{", ".join(sorted(accepted))}; benchmark keys: {", ".join(RESERVED_METRIC_KEYS)}'
            )
    lower_better = bool(DEFAULT_CONFIGS[pyiqa_name].get('lower_better', False)) and component == 'score'
    return MetricSpec(name, pyiqa_name, options, component, lower_better)


def _check_unique_stems(names, where: str) -> None:
    """Names become file names: two that differ only where file_stem or a case-blind file system
    cannot tell them apart would overwrite each other's results."""
    seen: dict[str, str] = {}
    for name in names:
        stem = file_stem(name)
        if stem.casefold() in seen:
            raise BenchmarkConfigError(
                f'{where}: {seen[stem.casefold()]!r} and {name!r} map to the same file name {stem!r}; rename one'
            )
        seen[stem.casefold()] = name


def parse_config(raw, data_root: str | os.PathLike | None = None) -> BenchmarkConfig:
    """Validate a configuration (the parsed YAML); ``data_root`` overrides its ``data_root:``."""
    import pyiqa_maclip  # noqa: F401  registers 'maclip' in pyiqa's DEFAULT_CONFIGS

    if isinstance(raw, Mapping) and data_root is not None:
        raw = {**raw, 'data_root': data_root}
    checked = validated(ConfigFile, raw)
    for section in ('datasets', 'metrics'):
        _check_unique_stems(getattr(checked, section), section)
    table = {name: validated(MetricEntry, entry, ('metrics', name)) for name, entry in checked.metrics.items()}
    return BenchmarkConfig(
        datasets=tuple(_dataset(name, entry, checked.data_root) for name, entry in checked.datasets.items()),
        metrics=tuple(_metric(name, table) for name in table),
        data_root=checked.data_root,
    )


def load_config(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> BenchmarkConfig:
    """Read and validate a YAML configuration file."""
    return parse_config(read_config(path), data_root)
