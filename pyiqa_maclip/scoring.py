"""Score whole image collections into a CSV: resumable, fault-tolerant, sharded with accelerate.

``pyiqa-maclip score PATH ... --output scores.csv`` (or :func:`collect_paths` then
:func:`score_paths`) writes one row per image, ``path,score,q_sim,q_mag,w_sim,w_mag``.
Images are decoded in DataLoader worker processes while the model computes; each batch
goes through :meth:`MACLIP.score_images`, so views of differently sized images share
encoder chunks. Files that cannot be read go to ``<stem>.errors.csv`` (``path,error``).

Files next to the output ``<stem>.csv`` and what they are for:

* ``<stem>.csv``, ``<stem>.errors.csv``: appended and flushed after every batch by
  process 0; other processes append to ``<stem>.part<rank>.csv`` and
  ``<stem>.part<rank>.errors.csv``. A run that completes merges every part into the
  two files, rows in input order (extra rows from earlier runs on other inputs are
  kept, after them), replaces them atomically and deletes the parts.
* ``<stem>.meta.json``: the options that change the numbers (backbone, half). A later
  run on the same output resumes only if they match; ``overwrite=True`` starts afresh.
* ``.<stem>.lock``: held by the main process while a run works on the output, so a
  second run on the same output stops at once with :class:`OutputConflictError`
  instead of interleaving rows. The operating system releases it when the process
  ends, crash included; the empty file stays.

Resuming reads every path already present (scored, or failed unless
``retry_failed``) and scores only the others. A row cut short by a kill is
ignored and truncated away, so the finished file never holds a row twice or half.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from filelock import FileLock, Timeout
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor
from tqdm import tqdm

from .arch import MACLIP, QualityComponents
from .safe_io import atomic_file, error_text
from .version import __version__
from .weights import OFFICIAL_CHECKPOINTS

__all__ = [
    'COLUMNS',
    'ERROR_COLUMNS',
    'LIST_SUFFIXES',
    'OutputConflictError',
    'OutputFiles',
    'ScoreSummary',
    'add_subcommand',
    'collect_paths',
    'default_num_workers',
    'image_extensions',
    'read_image',
    'score_paths',
]

COLUMNS = ('path', *QualityComponents._fields)  # path,score,q_sim,q_mag,w_sim,w_mag
ERROR_COLUMNS = ('path', 'error')
#: A PATH ending in one of these is a text file listing paths, one a line.
LIST_SUFFIXES = ('.txt', '.lst', '.list')
# Paths on POSIX may be any bytes: surrogateescape writes and reads them back unchanged.
_ENCODING, _ERRORS = 'utf-8', 'surrogateescape'
_log = logging.getLogger(__name__)
# Barriers wait for the slowest process to finish its shard: far longer than torch's 30 minutes.
_BARRIER_TIMEOUT = datetime.timedelta(days=7)


class OutputConflictError(FileExistsError):
    """The output exists but was not made by this command with the same options,
    or another run is writing it."""


# ---------------------------------------------------------------- inputs


def image_extensions() -> frozenset[str]:
    """Lower-case suffixes (``'.jpg'``, ...) of every format PIL can open."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _normalise_extensions(extensions: Iterable[str] | None) -> frozenset[str]:
    if extensions is None:
        return image_extensions()
    if isinstance(extensions, str):
        raise TypeError(f"extensions must be a collection of suffixes such as ['.jpg', '.png'], got {extensions!r}")
    found = frozenset('.' + e.strip().lower().lstrip('.') for e in extensions if e.strip().lstrip('.'))
    if not found:
        raise ValueError(f"extensions is empty; expected suffixes such as ['.jpg', '.png'], got {extensions!r}")
    return found


def _scan_folder(folder: str, extensions: frozenset[str]) -> list[str]:
    """Image files below ``folder`` (links followed, each folder once), sorted."""
    found, seen = [], set()

    def unreadable(error: OSError) -> None:
        _log.warning('cannot list %s: %s; skipped', error.filename, error.strerror)

    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        stat = os.stat(root)
        if (stat.st_dev, stat.st_ino) in seen:  # a link back up the tree
            dirs.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        found += [os.path.join(root, name) for name in files if os.path.splitext(name)[1].lower() in extensions]
    return sorted(found)


def _read_list(list_file: Path) -> Iterator[str]:
    """Entries of a path list: blank lines and ``#`` comments skipped, relative to its folder."""
    with open(list_file, encoding=_ENCODING, errors=_ERRORS) as lines:
        for line in lines:
            entry = line.strip()
            if entry and not entry.startswith('#'):
                yield os.path.join(list_file.parent, os.path.expanduser(entry))


def collect_paths(inputs: Iterable[str | os.PathLike], extensions: Iterable[str] | None = None) -> list[str]:
    """Absolute paths of the images named by ``inputs``, in order, each once.

    An input is a folder (every file below it whose suffix is in ``extensions``,
    default :func:`image_extensions`, in sorted order), a text file listing paths
    (suffix in :data:`LIST_SUFFIXES`; its entries may be files or folders), or an
    image file. Listed files are taken whatever their suffix and need not exist:
    a missing one is reported when it is scored.

    Raises:
        FileNotFoundError: an input does not exist.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    extensions = _normalise_extensions(extensions)
    paths: dict[str, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found: Iterable[str] = _scan_folder(str(path), extensions)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            found = (p for entry in _read_list(path)
                     for p in (_scan_folder(entry, extensions) if os.path.isdir(entry) else [entry]))
        elif path.is_file():
            found = [str(path)]
        else:
            raise FileNotFoundError(
                f'{str(item)!r} does not exist: expected an image file, a folder or a text file '
                f'listing paths ({", ".join(LIST_SUFFIXES)})'
            )
        paths.update((os.path.abspath(p), None) for p in found)
    return list(paths)


# ---------------------------------------------------------------- decoding


@contextmanager
def _strict_decoding() -> Iterator[None]:
    # Some libraries (pyiqa's AVA dataset among them) let PIL pad truncated files silently.
    previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode an image file into a (3, H, W) uint8 tensor, converted to RGB as pyiqa reads files.

    Raises on an empty, unidentifiable, truncated or unreadable file.
    """
    if os.path.getsize(path) == 0:
        raise ValueError('empty file (0 bytes)')
    with _strict_decoding(), Image.open(path) as image:
        image.load()
        return pil_to_tensor(image.convert('RGB'))


class _Decoded(NamedTuple):
    path: str
    image: torch.Tensor | None
    error: str | None


class _ImageFiles(Dataset):
    """Decodes one path per item; a failure becomes the item's error, never the run's."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Decoded:
        path = self.paths[index]
        try:
            return _Decoded(path, read_image(path), None)
        except Exception as error:  # noqa: BLE001 - whatever the file does, report it and go on
            return _Decoded(path, None, error_text(error))


# ---------------------------------------------------------------- output files


@dataclass(frozen=True)
class _Table:
    header: tuple[str, ...]
    numeric: bool  # every column after the path holds a number

    def valid(self, record: list[str]) -> bool:
        if len(record) != len(self.header) or not record[0]:
            return False
        try:
            for value in record[1:] if self.numeric else ():
                float(value)
        except ValueError:
            return False
        return True


_SCORES = _Table(COLUMNS, numeric=True)
_FAILURES = _Table(ERROR_COLUMNS, numeric=False)


def _csv_line(record: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator='\n').writerow(record)
    return buffer.getvalue()


class _Row(NamedTuple):
    path: str
    text: str  # the record exactly as written, line end included
    end: int  # byte offset just after it


def _rows(file: Path, table: _Table) -> Iterator[_Row]:
    """The leading well-formed rows of a CSV written here (none if the file is missing).

    Stops at a line without its line end (the write a kill cut short) or at a
    record that does not parse, and never reads past it.
    """
    if not file.exists():
        return
    with open(file, 'rb') as f:
        consumed, texts = 0, []

        def complete_lines() -> Iterator[str]:
            nonlocal consumed
            for line in f:
                if not line.endswith(b'\n'):
                    return
                consumed += len(line)
                texts.append(line.decode(_ENCODING, _ERRORS))
                yield texts[-1]

        try:
            # csv.reader pulls lines only as it needs them, so `texts` is exactly this record.
            records = csv.reader(complete_lines())
            if next(records, None) != list(table.header):
                return
            texts.clear()
            for record in records:
                if not table.valid(record):
                    return
                yield _Row(record[0], ''.join(texts), consumed)
                texts.clear()
        except csv.Error:  # e.g. NUL bytes left by a crash of the machine
            return


def _header_bytes(table: _Table) -> bytes:
    return _csv_line(table.header).encode(_ENCODING, _ERRORS)


def _starts_like(file: Path, table: _Table) -> bool:
    """Whether ``file`` begins with the header, or with part of it (a write cut short)."""
    header = _header_bytes(table)
    with open(file, 'rb') as f:
        return header.startswith(f.read(len(header)))


def _valid_length(file: Path, table: _Table) -> int:
    """Bytes of ``file`` up to the end of its last well-formed row (0 without a whole header)."""
    with open(file, 'rb') as f:
        end = len(_header_bytes(table)) if f.readline() == _header_bytes(table) else 0
    for row in _rows(file, table):
        end = row.end
    return end


class _Appender:
    """Appends records to a CSV file, header first if it is new; flushed after every write."""

    def __init__(self, file: Path, table: _Table) -> None:
        self.file, self.table = file, table
        self._stream = None

    def write(self, records: Sequence[Sequence[str]]) -> None:
        if not records:
            return
        if self._stream is None:
            # Held open across batches; close() ends it.
            self._stream = open(self.file, 'a', encoding=_ENCODING, errors=_ERRORS, newline='')  # noqa: SIM115
            self._writer = csv.writer(self._stream, lineterminator='\n')
            if self._stream.tell() == 0:
                self._writer.writerow(self.table.header)
        self._writer.writerows(records)
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


@dataclass(frozen=True)
class OutputFiles:
    """Where a run on ``output`` (``<stem>.csv``) keeps its scores, errors, options and parts."""

    output: Path

    def __post_init__(self) -> None:
        if self.output.is_dir():
            raise ValueError(f'output {str(self.output)!r} is a folder; expected the path of a CSV file, e.g. scores.csv')

    @property
    def stem(self) -> str:
        name = self.output.name
        return name[:-4] if name.lower().endswith('.csv') else name

    @property
    def errors(self) -> Path:
        return self.output.with_name(f'{self.stem}.errors.csv')

    @property
    def meta(self) -> Path:
        return self.output.with_name(f'{self.stem}.meta.json')

    @property
    def lock(self) -> Path:
        return self.output.with_name(f'.{self.stem}.lock')

    def for_process(self, rank: int) -> tuple[Path, Path]:
        """The (scores, errors) files process ``rank`` appends to."""
        if rank == 0:
            return self.output, self.errors
        return self.output.with_name(f'{self.stem}.part{rank}.csv'), self.output.with_name(f'{self.stem}.part{rank}.errors.csv')

    def _parts(self, errors: bool) -> list[Path]:
        pattern = re.compile(re.escape(self.stem) + r'\.part([1-9]\d*)' + (r'\.errors' if errors else '') + r'\.csv')
        if not self.output.parent.is_dir():
            return []
        found = [(int(m[1]), p) for p in self.output.parent.iterdir() if (m := pattern.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    def tables(self) -> list[tuple[Path, _Table]]:
        """Every scores and errors file that may hold rows: the two final files first, then parts."""
        return ([(self.output, _SCORES)] + [(p, _SCORES) for p in self._parts(False)]
                + [(self.errors, _FAILURES)] + [(p, _FAILURES) for p in self._parts(True)])


def _meta(backbone: str | os.PathLike, half: bool) -> dict:
    """The options that change the scores, as stored in ``<stem>.meta.json``."""
    name = os.fspath(backbone)
    if name not in OFFICIAL_CHECKPOINTS:
        name = os.path.abspath(os.path.expanduser(name))
    return {'backbone': name, 'half': half, 'columns': list(COLUMNS)}


@contextmanager
def _exclusive(files: OutputFiles, state) -> Iterator[None]:
    """Hold ``files.lock`` in the main process for the whole run; every process raises
    :class:`OutputConflictError` if another run holds it."""
    from accelerate.utils import broadcast_object_list

    lock, busy = None, None
    if state.is_main_process:
        files.output.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(files.lock, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            busy = (f'another run is writing {files.output} (it holds {files.lock}); '
                    'wait for it to end, or choose another output')
    busy = broadcast_object_list([busy])[0]
    if busy is not None:
        raise OutputConflictError(busy)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _check_resumable(files: OutputFiles, meta: dict) -> None:
    """Raise :class:`OutputConflictError` unless the existing files can be continued with ``meta``."""
    existing = [(file, table) for file, table in files.tables() if file.exists()]
    if not existing:
        return
    advice = 'pass --overwrite (overwrite=True) to start afresh, or choose another output'
    try:
        stored = json.loads(files.meta.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        raise OutputConflictError(
            f'{existing[0][0]} exists but {files.meta} is missing or unreadable, so it was not written by '
            f'`pyiqa-maclip score` (or its options are unknown); {advice}'
        ) from None
    changed = [key for key in meta if stored.get(key) != meta[key]]
    if changed:
        was = ', '.join(f'{key}={stored.get(key)!r}' for key in changed)
        now = ', '.join(f'{key}={meta[key]!r}' for key in changed)
        raise OutputConflictError(f'{files.output} was made with {was}, this run asks for {now}; {advice}')
    for file, table in existing:
        if not _starts_like(file, table):
            raise OutputConflictError(f'{file} does not start with the header {",".join(table.header)}; {advice}')


def _prepare(files: OutputFiles, meta: dict, overwrite: bool) -> None:
    """Main process: clear the files on ``overwrite``, record the options, cut torn rows."""
    files.output.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for file, _ in files.tables():
            file.unlink(missing_ok=True)
    record = {**meta, 'written_by': f'pyiqa-maclip {__version__}'}
    with atomic_file(files.meta, encoding=_ENCODING, errors=_ERRORS, newline='') as f:
        f.write(json.dumps(record, indent=2) + '\n')
    for file, table in files.tables():
        if file.exists():
            length = _valid_length(file, table)
            if length < file.stat().st_size:
                os.truncate(file, length)


def _finished(files: OutputFiles, retry_failed: bool) -> set[str]:
    return {row.path for file, table in files.tables()
            if table is _SCORES or not retry_failed for row in _rows(file, table)}


def _write_in_order(file: Path, table: _Table, texts: dict[str, str], order: dict[str, int]) -> None:
    # sorted() is stable: rows of paths outside this run's inputs keep their order, at the end.
    ranked = sorted(texts.items(), key=lambda item: order.get(item[0], len(order)))
    with atomic_file(file, encoding=_ENCODING, errors=_ERRORS, newline='') as f:
        f.writelines([_csv_line(table.header), *(text for _, text in ranked)])


def _merge(files: OutputFiles, paths: Sequence[str]) -> tuple[int, int]:
    """Gather every part into the scores and errors files, rows in input order.

    Returns how many of ``paths`` are scored and how many failed.
    """
    tables = files.tables()
    scores: dict[str, str] = {}
    failures: dict[str, str] = {}
    for file, table in tables:
        found = scores if table is _SCORES else failures
        found.update((row.path, row.text) for row in _rows(file, table))
    failures = {path: text for path, text in failures.items() if path not in scores}
    order = {path: i for i, path in enumerate(paths)}
    _write_in_order(files.output, _SCORES, scores, order)
    if failures:
        _write_in_order(files.errors, _FAILURES, failures, order)
    else:
        files.errors.unlink(missing_ok=True)
    for file, _ in tables:
        if file not in (files.output, files.errors):
            file.unlink(missing_ok=True)
    return sum(p in scores for p in paths), sum(p in failures for p in paths)


# ---------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ScoreSummary:
    """What a run of :func:`score_paths` left in its output, over its inputs."""

    output: Path
    errors: Path
    total: int  # distinct input paths
    scored: int  # of them, with a row in the output
    failed: int  # of them, with a row in the errors file
    processed: int  # of them, attempted by this run (the others were done before)

    @property
    def complete(self) -> bool:
        return self.scored == self.total

    def __str__(self) -> str:
        failed = f'{self.failed} failed' + (f' (see {self.errors})' if self.failed else '')
        return (f'scored {self.scored} images, {failed}; {self.processed} processed in this run, '
                f'{self.total - self.processed} done before')


def _score_batch(metric: MACLIP, paths: Sequence[str], images: Sequence[torch.Tensor],
                 device: torch.device) -> tuple[list[list[str]], list[list[str]]]:
    """Score rows for the decoded images, and error rows for any the model fails on."""
    if not images:
        return [], []
    try:
        parts = metric.score_images([image.to(device, non_blocking=True).float().div_(255) for image in images])
    except Exception as error:  # noqa: BLE001 - e.g. out of memory: find the image, keep the others
        if len(images) == 1:
            return [], [[paths[0], error_text(error)]]
        results = [_score_batch(metric, [p], [image], device) for p, image in zip(paths, images)]
        return [row for rows, _ in results for row in rows], [row for _, rows in results for row in rows]
    values = torch.stack(list(parts), dim=1).tolist()
    # 9 significant digits write a float32 exactly and always alike.
    return [[path, *(f'{v:.9g}' for v in row)] for path, row in zip(paths, values)], []


def _score_shard(metric: MACLIP, paths: Sequence[str], device: torch.device, targets: tuple[Path, Path],
                 batch_size: int, num_workers: int, bar: tqdm) -> None:
    loader = DataLoader(_ImageFiles(paths), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=list, pin_memory=device.type == 'cuda')
    scores, failures = _Appender(targets[0], _SCORES), _Appender(targets[1], _FAILURES)
    try:
        for batch in loader:
            decoded = [item for item in batch if item.error is None]
            rows, errors = _score_batch(metric, [d.path for d in decoded], [d.image for d in decoded], device)
            scores.write(rows)
            failures.write(errors + [[item.path, item.error] for item in batch if item.error is not None])
            bar.update(len(batch))
    finally:
        scores.close()
        failures.close()


def _distributed_state():
    """accelerate's state: one process, or this one's rank under ``accelerate launch``."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    launched = int(os.environ.get('WORLD_SIZE', '1')) > 1
    accelerator = torch.accelerator.is_available() if hasattr(torch, 'accelerator') else torch.cuda.is_available()
    # `accelerate launch --multi_gpu` on a machine without accelerators: one CPU process per rank.
    cpu = parse_flag_from_env('ACCELERATE_USE_CPU') or (launched and not accelerator)
    return PartialState(cpu=cpu, timeout=_BARRIER_TIMEOUT)


def _resolve_device(device: str | torch.device | None, state) -> torch.device:
    if device is None:
        return torch.device(state.device)
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from error
    if device.type != 'cpu' and device.index is None and state.num_processes > 1:
        device = torch.device(device.type, state.local_process_index)
    return device


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')
    return value


def default_num_workers() -> int:
    """Decoding processes per scoring process: one per CPU, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return min(4, cpus)


def score_paths(paths: Sequence[str | os.PathLike], output: str | os.PathLike, *, backbone: str | os.PathLike = 'RN50',
                device: str | torch.device | None = None, batch_size: int = 8, num_workers: int | None = None,
                chunk_size: int = 16, half: bool = False, overwrite: bool = False, retry_failed: bool = False,
                progress: bool = True) -> ScoreSummary:
    """Score image files into the CSV ``output``, resuming what an earlier run left.

    Paths are stored as given (:func:`collect_paths` gives absolute ones) and
    identify the images across runs. Under ``accelerate launch`` the main
    process's ``paths`` count, each process scores ``pending[rank::world]``, the
    main process merges the parts, and every process returns the same summary.

    Args:
        paths: image files, scored in this order.
        output: the CSV file; its companions are described in the module docstring.
        backbone, chunk_size, half: passed to :class:`MACLIP`.
        device: default: accelerate's device for this process (else the CPU).
        batch_size: images decoded and scored together (their views share encoder chunks).
        num_workers: decoding processes; default :func:`default_num_workers`; 0 decodes here.
        overwrite: delete what an earlier run on ``output`` left and start afresh.
        retry_failed: score again the files an earlier run reported as failed.
        progress: a tqdm progress bar on stderr (main process only).

    The main process logs what is left to do (logger ``pyiqa_maclip.scoring``, level INFO).

    Raises:
        OutputConflictError: another run is working on ``output`` (even with ``overwrite``),
            or ``output`` exists and ``overwrite`` is false, but it was made with other
            options or not by this function.
    """
    from accelerate.utils import broadcast_object_list

    if isinstance(paths, (str, os.PathLike)):
        raise TypeError('paths must be a list of image files; for a folder or a list file use collect_paths() first')
    _count('batch_size', batch_size, 1)
    num_workers = default_num_workers() if num_workers is None else _count('num_workers', num_workers, 0)
    paths = list(dict.fromkeys(os.fspath(p) for p in paths))
    state = _distributed_state()
    if state.num_processes > 1:  # every process shards the main process's list, whatever it was given
        paths = broadcast_object_list([paths])[0]
    if not paths:
        raise ValueError('paths is empty: expected at least one image file to score')
    files = OutputFiles(Path(output))
    with _exclusive(files, state):
        meta = _meta(backbone, half)
        if not overwrite:
            _check_resumable(files, meta)
        device = _resolve_device(device, state)
        metric = MACLIP(backbone=backbone, chunk_size=chunk_size, half=half).to(device).eval()

        state.wait_for_everyone()
        if state.is_main_process:
            _prepare(files, meta, overwrite)
        state.wait_for_everyone()
        finished = _finished(files, retry_failed)
        pending = [p for p in paths if p not in finished]
        del finished
        state.wait_for_everyone()  # every process knows what is finished before anyone appends more

        shard = pending[state.process_index::state.num_processes]
        if state.is_main_process:
            processes = f' on {state.num_processes} processes' if state.num_processes > 1 else ''
            _log.info('%s: %d of %d images to score%s, %d done before',
                      files.output, len(pending), len(paths), processes, len(paths) - len(pending))
        show = progress and state.is_main_process
        with torch.inference_mode(), tqdm(total=len(shard), unit='img', desc='scoring', disable=not show,
                                          file=sys.stderr, dynamic_ncols=True) as bar:
            _score_shard(metric, shard, device, files.for_process(state.process_index), batch_size, num_workers,
                         bar)
        state.wait_for_everyone()

        summary = None
        if state.is_main_process:
            scored, failed = _merge(files, paths)
            summary = ScoreSummary(files.output, files.errors, len(paths), scored, failed, len(pending))
        return broadcast_object_list([summary])[0]


# ---------------------------------------------------------------- command line


def _integer_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return _count('value', int(text), minimum)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected an integer >= {minimum}, got {text!r}') from None
    return parse


def _extension_list(text: str) -> frozenset[str]:
    try:
        return _normalise_extensions(text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated suffixes such as jpg,png, got {text!r}') from None


def add_subcommand(subparsers) -> None:
    """``pyiqa-maclip score PATH [PATH ...] --output scores.csv [options]``."""
    parser = subparsers.add_parser(
        'score', help='score image files, folders or path lists into a CSV (resumable, shardable)',
        description='Score images with MA-CLIP into a CSV (path,score,q_sim,q_mag,w_sim,w_mag). Files that '
                    'cannot be scored are listed in <stem>.errors.csv. Running the same command again resumes; '
                    'under `accelerate launch` the inputs are sharded across processes.',
        epilog='exit status: 0 every image scored, 1 some failed (see the errors file), '
               '2 bad arguments or the run could not start, 130 interrupted (run again to resume)',
    )
    parser.add_argument('inputs', nargs='+', metavar='PATH',
                        help=f'image file, folder (recursive) or text file listing paths ({", ".join(LIST_SUFFIXES)})')
    parser.add_argument('-o', '--output', required=True, type=Path, help='the CSV file to write, e.g. scores.csv')
    parser.add_argument('--backbone', default='RN50', help='CLIP name or checkpoint path (default: RN50)')
    parser.add_argument('--device', default=None,
                        help="torch device (default: accelerate's device for the process, else cpu)")
    parser.add_argument('--batch-size', type=_integer_at_least(1), default=8,
                        help='images decoded and scored together (default: 8)')
    parser.add_argument('--num-workers', type=_integer_at_least(0), default=None,
                        help=f'decoding processes, 0 to decode in the scoring process (default: {default_num_workers()})')
    parser.add_argument('--chunk-size', type=_integer_at_least(1), default=16,
                        help='most views sent through the image encoder at once (default: 16)')
    parser.add_argument('--half', action='store_true', help='float16 autocast for the image encoder (GPUs)')
    parser.add_argument('--extensions', type=_extension_list, default=None,
                        help='suffixes taken from folders, e.g. jpg,png (default: every format PIL opens)')
    parser.add_argument('--overwrite', action='store_true', help='discard an earlier run on --output and start afresh')
    parser.add_argument('--retry-failed', action='store_true', help='score again the files an earlier run failed on')
    parser.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    parser.set_defaults(func=_score_command)


@contextmanager
def _log_to_stderr() -> Iterator[None]:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(message)s'))
    level = _log.level
    _log.addHandler(handler)
    _log.setLevel(logging.INFO)
    try:
        yield
    finally:
        _log.removeHandler(handler)
        _log.setLevel(level)


def _score_command(args: argparse.Namespace) -> int:
    with _log_to_stderr():
        return _score(args)


def _score(args: argparse.Namespace) -> int:
    main = _distributed_state().is_main_process
    try:
        # Only the main process walks the inputs; score_paths hands its list to the others.
        paths = collect_paths(args.inputs, args.extensions) if main else []
        if main and not paths:
            raise ValueError(f'no image files found in {", ".join(args.inputs)}')
        summary = score_paths(
            paths, args.output, backbone=args.backbone, device=args.device, batch_size=args.batch_size,
            num_workers=args.num_workers, chunk_size=args.chunk_size, half=args.half, overwrite=args.overwrite,
            retry_failed=args.retry_failed, progress=args.progress,
        )
    except KeyboardInterrupt:
        print('interrupted: the rows written so far are kept; run the same command again to resume',
              file=sys.stderr)
        return 130
    except (OSError, ValueError) as error:  # nothing scored: bad input, options, weights or output
        print(f'pyiqa-maclip score: error: {error}', file=sys.stderr)
        return 2
    if main:
        print(summary)
    return 0 if summary.complete else 1
