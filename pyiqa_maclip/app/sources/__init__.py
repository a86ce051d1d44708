"""Where a run's images live: one module per kind of collection, registered here.

A :class:`Sample` is one image of a collection: the ``source`` it comes from (``''`` for image
files, else the absolute path of the shard or file holding it), its ``key`` within the source
(the file's path for image files) and a ``locator``, a small picklable tuple saying how any
process reads its bytes (None for image files: the key is the path). The journal knows a sample
by ``(source, key)``; the engine and report read it through :func:`sample_input`.

Kinds (:data:`KINDS`), chosen per input by :func:`kind_of_input`: ``webdataset`` (shards named
by :data:`SHARD_SUFFIXES`, brace patterns ``data-{000..099}.tar``), ``parquet`` (``.parquet`` files), ``hf``
(a folder saved by ``datasets``' ``save_to_disk``, or of a dataset's Parquet/Arrow files as the Hub
keeps them: :func:`is_dataset_folder`), and ``files`` (image files, folders, path lists). Nothing
here imports torch; pyarrow only when a Parquet or ``datasets`` input is read.
"""
from __future__ import annotations

import contextlib
import gc
import glob
import io
import os
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ...errors import UserError
from ..files import kind_of, shown

__all__ = ['Sample', 'KINDS', 'KIND_NAMES', 'SHARD_SUFFIXES', 'SourceOptions', 'expand_pattern', 'kind_of_input',
           'is_dataset_folder', 'collect_samples', 'sample_input', 'split_by_source', 'input_files', 'files_read',
           'reading_order', 'check_options', 'image_choice', 'check_file']


class Sample(NamedTuple):
    """One image of a collection; ``(source, key)`` is its identity."""

    source: str
    key: str
    locator: tuple | None = None


class SourceOptions(NamedTuple):
    """How images are found in the inputs (each option belongs to some kinds only)."""

    extensions: Iterable[str] | None = None  # files: suffixes taken from folders
    image_member: str | None = None  # webdataset: the member extension holding the image
    image_column: str | None = None  # parquet, hf: the column holding the image
    key_column: str | None = None  # parquet, hf: the column keying the rows
    split: str | None = None  # hf: the split of a dataset with several


#: Kinds of collection, and the options each takes.
KINDS = {'files': ('extensions',), 'webdataset': ('image_member',), 'parquet': ('image_column', 'key_column'),
         'hf': ('image_column', 'key_column', 'split')}
#: Each kind as a person names it, in messages.
KIND_NAMES = {'files': 'image files and folders', 'webdataset': 'WebDataset shards', 'parquet': 'Parquet files',
              'hf': 'datasets folders'}
#: The names of WebDataset shards: plain tar, or tar compressed with gzip (read as a stream).
SHARD_SUFFIXES = ('.tar', '.tar.gz', '.tgz')
_DATA_SUFFIXES = ('.parquet', '.arrow')
_RANGE = re.compile(r'\{(\d+)\.\.(\d+)\}')
_LIST = re.compile(r'\{([^{}]*,[^{}]*)\}')


def expand_pattern(pattern: str) -> list[str]:
    """``data-{000..002}.tar`` -> ``data-000.tar``, ``data-001.tar``, ``data-002.tar`` (zero padding kept);
    ``{a,b}`` lists too; then shell wildcards (``*.tar``). A name a file has is that file, whatever it holds."""
    if os.path.lexists(pattern):
        return [pattern]
    found = [m for m in (_RANGE.search(pattern), _LIST.search(pattern)) if m]
    if found:
        match = min(found, key=lambda m: m.start())  # the leftmost brace first, as the shell does
        head, tail = pattern[:match.start()], pattern[match.end():]
        if match.re is _LIST:
            items = match[1].split(',')
        else:
            first, last, width = int(match[1]), int(match[2]), len(match[1])
            items = [f'{n:0{width}d}' for n in range(first, last + 1)]
        return [name for item in items for name in expand_pattern(head + item + tail)]
    if glob.has_magic(pattern):
        return sorted(glob.glob(pattern)) or [pattern]
    return [pattern]


def kind_of_input(path: str) -> str:
    """The kind of collection ``path`` names (see the module docstring)."""
    lower = path.lower()
    if lower.endswith(SHARD_SUFFIXES):
        return 'webdataset'
    if lower.endswith('.parquet'):
        return 'parquet'
    return 'hf' if is_dataset_folder(path) else 'files'


def _readme_lists_data(folder: str) -> bool:
    """Whether the folder's README.md starts with a YAML header holding ``configs`` or ``dataset_info``."""
    try:
        with open(os.path.join(folder, 'README.md'), encoding='utf-8', errors='replace') as file:
            lines = file.read(1 << 16).splitlines()
    except OSError:
        return False
    if not lines or lines[0].strip() != '---':
        return False
    header = next((lines[1:i] for i in range(1, len(lines)) if lines[i].strip() == '---'), [])
    return any(line.startswith(('configs:', 'dataset_info:')) for line in header)


def _holds_data_files(folder: str, depth: int = 2) -> bool:
    """Whether ``folder`` or its folders ``depth`` levels down (hidden ones skipped, as datasets skips
    them) hold Parquet or Arrow files and no image file."""
    from ..inputs import image_extensions

    images, found, level = image_extensions(), False, [folder]
    for _ in range(depth + 1):
        below = []
        for current in level:
            try:
                entries = list(os.scandir(current))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(('.', '__')):
                    continue
                suffix = os.path.splitext(entry.name)[1].lower()
                if entry.is_dir():
                    below.append(entry.path)
                elif suffix in images:
                    return False
                found = found or suffix in _DATA_SUFFIXES
        level = below
    return found


def is_dataset_folder(path: str) -> bool:
    """Whether ``path`` is a folder of a ``datasets`` dataset: saved by ``save_to_disk`` (``state.json`` and
    ``dataset_info.json``, or a ``DatasetDict``'s ``dataset_dict.json``), or its data files as the Hub keeps
    them: a README.md whose YAML header lists ``configs`` or ``dataset_info``, or Parquet/Arrow files up to
    two folders down (``data/``, ``train/``) and no image file (a folder of images stays one)."""
    if not os.path.isdir(path):
        return False
    if os.path.isfile(os.path.join(path, 'state.json')) and os.path.isfile(os.path.join(path, 'dataset_info.json')):
        return True
    return os.path.isfile(os.path.join(path, 'dataset_dict.json')) or _readme_lists_data(path) \
        or _holds_data_files(path)


def check_file(path: str, expected: str) -> None:
    """A :class:`UserError` unless ``path`` is a file (or a link to one): it does not exist, or is a folder, ..."""
    if not os.path.isfile(path):
        problem = f'is {kind_of(os.path.realpath(path))}' if os.path.exists(path) else 'does not exist'
        raise UserError(f'{shown(path)} {problem}: expected {expected}')


def _module(kind: str):
    from . import files, hf, parquet, webdataset

    return {'files': files, 'webdataset': webdataset, 'parquet': parquet, 'hf': hf}[kind]


def input_files(inputs: Iterable[str | os.PathLike]) -> tuple[str, list[str]]:
    """The kind and the expanded inputs of a run; a :class:`UserError` for inputs of several kinds."""
    expanded = [name for item in inputs for name in expand_pattern(os.fsdecode(item))]
    kinds = {kind_of_input(name) for name in expanded}
    if len(kinds) > 1:
        named = ', '.join(KIND_NAMES[k] for k in KINDS if k in kinds)
        raise UserError(f'the inputs are of several kinds ({named}): give one kind of collection per run')
    return (kinds.pop() if kinds else 'files'), expanded


def check_options(kind: str, options: SourceOptions) -> None:
    """A :class:`UserError` for an option the inputs' kind does not take."""
    for name, value in options._asdict().items():
        if value is not None and name not in KINDS[kind]:
            takers = ' or '.join(KIND_NAMES[k] for k, taken in KINDS.items() if name in taken)
            raise UserError(f'--{name.replace("_", "-")} applies to {takers}, and these inputs are '
                            f'{KIND_NAMES[kind]}')


def collect_samples(inputs: Iterable[str | os.PathLike], options: SourceOptions = SourceOptions()) -> list[Sample]:
    """Every sample of ``inputs`` (all of one kind), in order, each once. No torch is imported."""
    kind, expanded = input_files(inputs)
    check_options(kind, options)
    taken = {name: value for name, value in options._asdict().items() if name in KINDS[kind]}
    with _no_cycle_collection():
        return _each_once(_module(kind).collect(expanded, **taken))


def _each_once(samples: Iterable[Sample]) -> list[Sample]:
    """``samples`` without repeats (an input given twice); a :class:`UserError` if one key of a source names
    two different images (a key column holding a value twice), which the journal could not tell apart."""
    unique: dict[tuple[str, str], Sample] = {}
    for sample in samples:
        seen = unique.setdefault((sample.source, sample.key), sample)
        if seen.locator != sample.locator:
            raise repeated_key(sample.source, sample.key)
    return list(unique.values())


def repeated_key(source: str, key: str) -> UserError:
    """The mistake of a key naming two rows of one source (both engines refuse it)."""
    return UserError(f'{shown(source)}: the key {shown(key)} names two rows; keys must be unique in a file: name a '
                     'column of unique values with --key-column, or leave it out to key rows by their number')


@contextlib.contextmanager
def _no_cycle_collection():
    """The cycle collector paused: listing makes millions of small tuples and no cycles, and the
    collector's passes over them took a third of the time of listing a million samples."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def sample_input(sample: Sample) -> str | io.BytesIO:
    """What PIL opens for ``sample``: the file's path, or its bytes."""
    if sample.locator is None:
        return sample.key
    return io.BytesIO(_module(sample.locator[0]).read(sample.locator))


def reading_order(samples: Sequence[Sample | str]) -> list[int]:
    """The positions of ``samples`` (or paths) in the order their sources hold them: by source, then by
    place in it (a shard member's offset, a Parquet row group and row), image files as given."""
    def place(index: int) -> tuple:
        sample = samples[index]
        if isinstance(sample, str) or sample.locator is None:
            return '', index
        return sample.source, *(x if isinstance(x, int) else -1 for x in sample.locator[2:-1] or (index,))

    return sorted(range(len(samples)), key=place)


def files_read(samples: Sequence[Sample]) -> list[str]:
    """The files a run reads: the image files, or the shards, Parquet files and datasets of the samples."""
    return list(dict.fromkeys(s.source or s.key for s in samples))


def image_choice(samples: Sequence[Sample], options: SourceOptions) -> dict:
    """What chose the samples' images, for a run's fingerprint (the same key would name another image if it
    changed): the image columns read (Parquet files, datasets), ``--image-member`` as read (``.PNG`` is ``png``);
    ``{}`` for files."""
    columns = sorted({s.locator[-1] for s in samples if s.locator and s.locator[0] in ('parquet', 'hf')})
    choice = {'image_column': columns[0] if len(columns) == 1 else columns} if columns else {}
    member = options.image_member
    return choice | ({'image_member': member.lower().lstrip('.')} if member is not None else {})


def split_by_source(pending: Sequence[Sample], rank: int, processes: int) -> list[Sample]:
    """Process ``rank``'s share of ``pending``: every N-th image file, or every N-th source (shard) whole."""
    if processes == 1:
        return list(pending)
    if all(not s.source for s in pending):
        return list(pending[rank::processes])
    order = {source: i for i, source in enumerate(dict.fromkeys(s.source for s in pending))}
    return [s for s in pending if order[s.source] % processes == rank]
