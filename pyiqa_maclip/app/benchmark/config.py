"""The benchmark's YAML configuration: datasets, metrics and their validation.

A configuration names datasets (a folder plus a MOS table, or a pyiqa dataset read
with pyiqa's own configuration under a data root) and metrics (any pyiqa metric
with ``create_metric`` options, or a named variant of another via ``base:``).
:func:`load_config` checks its structure and every name without touching the data
or building a metric. The structure is declared as pydantic models (unknown keys
rejected, no silent coercion: ``resize: "448"`` and ``mos_lower_better: "yes"`` are
errors); names are then checked against pyiqa. Every problem is one
:class:`BenchmarkConfigError` line that names the YAML key, what it holds and the
form expected.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Optional

import yaml

from ...errors import UserError, one_line
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, ValidationError, WrapValidator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    'BenchmarkConfigError',
    'COMPONENTS',
    'RESIZE_MODES',
    'PAPER_PREPROCESSING',
    'DEFAULT_DATA_ROOT',
    'DatasetSpec',
    'MetricSpec',
    'BenchmarkConfig',
    'parse_config',
    'read_config',
    'load_config',
    'file_stem',
]

DEFAULT_DATA_ROOT = './datasets'  # pyiqa's own default
#: What a MA-CLIP metric can hand to the benchmark as its prediction.
COMPONENTS = ('score', 'q_sim', 'q_mag')
RESIZE_MODES = ('bicubic', 'bilinear', 'lanczos', 'nearest', 'box', 'hamming')
RESERVED_METRIC_KEYS = ('base', 'component')
MAX_NAME_LENGTH = 100  # names become file names, two of them in a plot's name
MAX_SIDE = 8192  # pixels of a resized side: 8192 x 8192 is already 0.8 GB as a float tensor
MAX_CONFIG_BYTES = 1 << 20
_MACLIP_ARCH = 'MACLIP'

#: The official MA-CLIP preprocessing, applied to datasets of these names unless the
#: configuration sets the key itself: SPAQ and AGIQA-1k resized (aspect ignored),
#: KonIQ-10k read from its 1024x768 release (pyiqa's ``koniq10k-1024`` entry).
PAPER_PREPROCESSING: dict[str, dict] = {
    'spaq': {'resize': [448, 448], 'resize_mode': 'bicubic'},
    'agiqa1k': {'resize': [224, 224], 'resize_mode': 'bicubic'},
    'koniq10k': {'pyiqa': 'koniq10k-1024'},
}


class BenchmarkConfigError(UserError):
    """The benchmark configuration (or the data it points to) is not usable."""


# ---------------------------------------------------------------- what the runner gets


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: either ``custom`` (images folder + MOS table) or a ``pyiqa`` dataset."""

    name: str
    kind: str  # 'custom' or 'pyiqa'
    mos_lower_better: bool = False
    resize: tuple[int, int] | None = None  # (H, W)
    resize_mode: str = 'bicubic'
    images: str | None = None
    mos: str | None = None
    image_column: str = 'image'
    mos_column: str = 'mos'
    pyiqa: str | None = None  # the entry of pyiqa's default_dataset_configs.yml
    root: str | None = None  # replaces './datasets' in that entry's paths

    def fingerprint(self) -> dict:
        """Everything that can change the pair's numbers, JSON-ready."""
        return {k: v for k, v in self.__dict__.items() if k != 'name'}


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``create_metric(pyiqa_name, **options)``, predicting ``component``."""

    name: str
    pyiqa_name: str
    options: dict = field(default_factory=dict)
    component: str = 'score'
    lower_better: bool = False

    def build_key(self) -> str:
        """Metrics with equal keys build the same model: one scoring pass serves them all."""
        return json.dumps([self.pyiqa_name, self.options], sort_keys=True, default=str)

    def fingerprint(self) -> dict:
        return {'pyiqa_name': self.pyiqa_name, 'options': self.options, 'component': self.component}

    def __hash__(self) -> int:  # options is a dict: hash what equality compares, in JSON form
        return hash((self.name, self.build_key(), self.component, self.lower_better))


@dataclass(frozen=True)
class BenchmarkConfig:
    datasets: tuple[DatasetSpec, ...]
    metrics: tuple[MetricSpec, ...]
    data_root: str = DEFAULT_DATA_ROOT


def file_stem(name: str) -> str:
    """A file-name-safe form of a metric or dataset name (never ``.`` or ``..``)."""
    stem = re.sub(r'[^A-Za-z0-9._+-]', '_', name)
    return stem if stem.strip('.') else stem.replace('.', '_')


# ---------------------------------------------------------------- what a configuration may say


def _expecting(expected: str) -> WrapValidator:
    """Any failure of the annotated type becomes one error saying what is expected."""
    def validate(value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError('expected', '{expected}', {'expected': expected}) from None

    return WrapValidator(validate)


def _fspath(value):
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _none_as_empty(value):
    return {} if value is None else value


def _sides(value):
    """``N`` for N x N, ``[H, W]``, or ``null``/``native`` for no resizing."""
    if value == 'native':
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    return tuple(value) if isinstance(value, list) else value


def _finite_throughout(value):
    """The option value, if no number in it is NaN or infinite (pydantic's JsonValue lets them through)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError('not finite')
    for inner in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
        _finite_throughout(inner)
    return value


def _printable(name: str) -> str:
    """Names appear in logs and tables: no line breaks or control characters."""
    if not name.isprintable():
        raise ValueError('not printable')
    return name


_Side = Annotated[int, Field(gt=0, le=MAX_SIDE)]
Text = Annotated[str, BeforeValidator(_fspath), Field(pattern=r'\S'), _expecting('non-empty text (a name or a path)')]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(_printable),
                 _expecting(f'printable text of 1 to {MAX_NAME_LENGTH} characters (quote names that YAML reads '
                            "otherwise, such as '1' or 'no')")]
Flag = Annotated[bool, _expecting('true or false')]
Resize = Annotated[Optional[tuple[_Side, _Side]], BeforeValidator(_sides),
                   _expecting(f'[height, width] in pixels (integers from 1 to {MAX_SIDE}), one side N for N x N, '
                              'or null for the native size')]
ResizeMode = Annotated[Literal[RESIZE_MODES], _expecting(f'one of {", ".join(RESIZE_MODES)}')]
Component = Annotated[Literal[COMPONENTS], _expecting(f'one of {", ".join(COMPONENTS)}')]
OptionValue = Annotated[JsonValue, AfterValidator(_finite_throughout),
                        _expecting('a create_metric option: text, a finite number, true/false, null, '
                                   'or a list or mapping of these')]
Section = Annotated[dict[Name, Any], BeforeValidator(_none_as_empty), Field(min_length=1, validate_default=True)]


class _Schema(BaseModel):
    """A YAML mapping with exactly these keys; no type coercion."""

    model_config = ConfigDict(extra='forbid', strict=True, frozen=True)
    #: The mapping's expected form, shown when something else is given.
    form: ClassVar[str]
    #: Appended to messages about unknown or missing keys.
    hint: ClassVar[str] = ''


class ConfigFile(_Schema):
    form = 'with keys datasets: and metrics:'

    data_root: Text = Field(DEFAULT_DATA_ROOT, description="the folder of pyiqa's datasets")
    datasets: Section = Field(default_factory=dict,
                              description='name: {images: DIR, mos: FILE.csv} or name: {} for a pyiqa dataset')
    metrics: Section = Field(default_factory=dict,
                             description='name: {create_metric options}, e.g. maclip: {backbone: RN50}')


class _DatasetEntry(_Schema):
    form = 'e.g. {images: DIR, mos: FILE.csv} or {} for a pyiqa dataset'

    resize: Resize = None
    resize_mode: ResizeMode = 'bicubic'


class CustomDatasetEntry(_DatasetEntry):
    hint = ('a custom dataset needs both images: (the image folder) and mos: '
            '(a table, .csv, .tsv or .xlsx, with columns image,mos)')

    images: Text
    mos: Text
    image_column: Text = 'image'
    mos_column: Text = 'mos'
    mos_lower_better: Flag = False


class PyiqaDatasetEntry(_DatasetEntry):
    hint = 'a custom dataset needs both images: and mos:'

    # None when not given: the dataset's name, data_root, pyiqa's lower_better then apply
    # (defaults are not validated, so an explicit null is still an error).
    pyiqa: Text = None
    root: Text = None
    mos_lower_better: Flag = None


class MetricEntry(_Schema):
    """``base:`` and ``component:``; every other key is a ``create_metric`` option."""

    model_config = ConfigDict(extra='allow')
    form = 'create_metric options, base: or component:'

    base: Name = None
    component: Component = None
    __pydantic_extra__: dict[str, OptionValue]

    @property
    def options(self) -> dict:
        return dict(self.model_extra)


# ---------------------------------------------------------------- pydantic errors in YAML terms


def _yaml_path(parts) -> str:
    return '.'.join(p if isinstance(p, str) and p.isprintable() and p else repr(p) for p in parts)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + '...'


def _problem(error: dict, schema: type[_Schema], where: tuple) -> str:
    """One pydantic error as: the YAML path, what it holds, what is expected."""
    loc = [part for part in error['loc'] if part != '[key]']
    path = _yaml_path((*where, *loc)) or 'the configuration'
    parent = _yaml_path((*where, *loc[:-1])) or 'the configuration'
    key = loc[-1] if loc else None
    described = schema.model_fields.get(key).description if key in schema.model_fields else None
    kind = error['type']
    if kind == 'expected' and '[key]' in error['loc']:
        return f'{parent}: the name {_shown(error["input"])} must be {error["ctx"]["expected"]}'
    if kind == 'expected':
        return f'{path} must be {error["ctx"]["expected"]}, got {_shown(error["input"])}'
    if kind == 'extra_forbidden':
        keys = ', '.join(schema.model_fields)
        return f'{parent}: unknown key {key!r}; expected keys: {keys}' + (f'; {schema.hint}' if schema.hint else '')
    if kind == 'missing':
        return f'{parent}: {key}: is missing; ' + (schema.hint or described or '')
    if kind == 'too_short':
        return f'{path}: needs at least one entry ({described})'
    if kind in ('model_type', 'dict_type'):
        return f'{path} must be a mapping ({described or schema.form}), got {_shown(error["input"])}'
    if kind == 'invalid_key':
        return f'{parent}: keys must be text, got {_shown(key)}'
    return f'{path}: {error["msg"]}, got {_shown(error["input"])}'


def _validated(schema: type[_Schema], value, where: tuple = ()) -> _Schema:
    """``value`` as ``schema``, or a BenchmarkConfigError listing every problem on one line."""
    try:
        return schema.model_validate(_none_as_empty(value))
    except ValidationError as error:
        raise BenchmarkConfigError('; '.join(_problem(e, schema, where) for e in error.errors())) from None


# ---------------------------------------------------------------- names checked against pyiqa


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
    checked = _validated(schema, entry, ('datasets', name))
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


def _accepted_options(pyiqa_name: str) -> set[str] | None:
    """Keyword options ``create_metric`` accepts for this metric; None if it cannot tell."""
    import torch
    import pyiqa.archs
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.models.inference_model import InferenceModel
    from pyiqa.utils.registry import ARCH_REGISTRY

    arch = DEFAULT_CONFIGS[pyiqa_name]['metric_opts']['type']
    lazy_import = getattr(pyiqa.archs, '_lazy_import_arch', None)  # private in pyiqa 0.1.16
    if arch not in ARCH_REGISTRY and lazy_import is not None:
        lazy_import(arch)
    if arch not in ARCH_REGISTRY:
        return None
    cls = ARCH_REGISTRY.get(arch)
    wrapper = set(inspect.signature(InferenceModel).parameters) - {'metric_name', 'device', 'kwargs'}
    if cls.__init__ is torch.nn.Module.__init__:
        return wrapper
    parameters = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return wrapper | {p.name for p in parameters if p.kind is not p.VAR_POSITIONAL}


def _metric(name: str, table: Mapping[str, MetricEntry]) -> MetricSpec:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    where = f'metrics.{name}'
    pyiqa_name, options, component = _resolve_base(name, table)
    component = component or 'score'
    is_maclip = DEFAULT_CONFIGS[pyiqa_name]['metric_opts'].get('type') == _MACLIP_ARCH
    if component != 'score' and not is_maclip:
        raise BenchmarkConfigError(
            f'{where}.component: only MA-CLIP metrics have components (q_sim, q_mag); {pyiqa_name!r} is not one'
        )
    accepted = _accepted_options(pyiqa_name)
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
    checked = _validated(ConfigFile, raw)
    for section in ('datasets', 'metrics'):
        _check_unique_stems(getattr(checked, section), section)
    table = {name: _validated(MetricEntry, entry, ('metrics', name)) for name, entry in checked.metrics.items()}
    return BenchmarkConfig(
        datasets=tuple(_dataset(name, entry, checked.data_root) for name, entry in checked.datasets.items()),
        metrics=tuple(_metric(name, table) for name in table),
        data_root=checked.data_root,
    )


# ---------------------------------------------------------------- the YAML file


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping giving a key twice is an error, not the last value."""

    def construct_mapping(self, node, deep=False):
        first_line: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == 'tag:yaml.org,2002:merge':  # `<<: *defaults` may be overridden by design
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first_line.get(key)
            except TypeError:  # an unhashable key: the safe loader reports it
                continue
            if seen is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f'key {_shown(key)} is given twice (first on line {seen})', key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A PyYAML error on one line, its position as a text editor shows it."""
    mark = getattr(error, 'problem_mark', None)
    problem = getattr(error, 'problem', None)
    if mark is None or problem is None:
        return one_line(error)
    context = getattr(error, 'context', None)
    where = f'line {mark.line + 1}, column {mark.column + 1}'
    text = f'{where}: {problem}' + (f' ({context})' if context else '')
    return one_line(text)


def read_config(path: str | os.PathLike) -> object:
    """The YAML of a configuration file, parsed (no torch, no pyiqa): a :class:`BenchmarkConfigError`
    if it cannot be read, is too large, not UTF-8, not YAML, gives a key twice, or lacks the
    configuration's structure."""
    try:
        with open(path, 'rb') as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise BenchmarkConfigError(f'cannot read the configuration {str(path)!r}: {error.strerror or error}') from error
    if len(data) > MAX_CONFIG_BYTES:
        raise BenchmarkConfigError(f'{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; expected a YAML configuration')
    try:
        raw = yaml.load(data.decode('utf-8'), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as error:
        raise BenchmarkConfigError(
            f'{path} is not UTF-8 text (byte {error.start}); expected a YAML configuration') from None
    except yaml.YAMLError as error:
        raise BenchmarkConfigError(f'{path} is not valid YAML: {_yaml_problem(error)}') from None
    except RecursionError:
        raise BenchmarkConfigError(f'{path}: YAML nested too deeply to be a configuration') from None
    _validated(ConfigFile, raw)
    return raw


def load_config(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> BenchmarkConfig:
    """Read and validate a YAML configuration file."""
    return parse_config(read_config(path), data_root)
