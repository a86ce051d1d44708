"""The form of a benchmark configuration: the YAML file read, its structure checked.

The structure is declared as pydantic models (unknown keys rejected, no silent
coercion: ``resize: "448"`` and ``mos_lower_better: "yes"`` are errors) and pydantic's
errors are translated into one :class:`~.specs.BenchmarkConfigError` line that names the
YAML key, what it holds and the form expected. Nothing here knows pyiqa's names (that
is :mod:`.resolve`), so the command line checks a configuration before torch loads.
"""
from __future__ import annotations

import math
import os
from typing import Annotated, Any, ClassVar, Literal, Optional

import yaml
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, ValidationError, WrapValidator,
)
from pydantic_core import PydanticCustomError

from ...errors import one_line
from ...names import RESIZE_MODES
from .specs import BENCHMARKED_COMPONENTS, DEFAULT_DATA_ROOT, BenchmarkConfigError

__all__ = ['RESERVED_METRIC_KEYS', 'MAX_CONFIG_BYTES', 'ConfigFile', 'CustomDatasetEntry', 'PyiqaDatasetEntry',
           'MetricEntry', 'validated', 'read_config']

RESERVED_METRIC_KEYS = ('base', 'component')
MAX_NAME_LENGTH = 100  # names become file names, two of them in a plot's name
MAX_SIDE = 8192  # pixels of a resized side: 8192 x 8192 is already 0.8 GB as a float tensor
MAX_CONFIG_BYTES = 1 << 20


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
Component = Annotated[Literal[BENCHMARKED_COMPONENTS], _expecting(f'one of {", ".join(BENCHMARKED_COMPONENTS)}')]
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


def validated(schema: type[_Schema], value, where: tuple = ()) -> _Schema:
    """``value`` as ``schema``, or a BenchmarkConfigError listing every problem on one line."""
    try:
        return schema.model_validate(_none_as_empty(value))
    except ValidationError as error:
        raise BenchmarkConfigError('; '.join(_problem(e, schema, where) for e in error.errors())) from None


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
    validated(ConfigFile, raw)
    return raw


