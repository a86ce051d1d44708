"""The engine: decode in worker processes, score in batches, commit each batch to a journal.

:func:`score_into` is the one loop every caller uses (``score`` and ``benchmark``).
:func:`score_paths` is a collection run on an output CSV: one run at a time per
output, a fingerprint that must match to resume, sharding under ``accelerate
launch`` (each process its own journal), and the CSV exports at the end.

Files of a run on ``scores.csv``: ``scores.csv`` and ``scores.errors.csv`` (the
exports) and the work folder ``.scores.csv.pyiqa-maclip/`` holding ``lock`` and
the journals ``rank<N>.sqlite3``.
"""
from __future__ import annotations

import datetime
import logging
import os
import re
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..arch import MACLIP
from ..safe_io import error_text
from .decoding import ImageFiles, as_float
from .journal import Journal, OutputConflictError, Result, export_csv
from .scorers import MaclipScorer, checkpoint_sha256, maclip_fingerprint

__all__ = ['WorkFiles', 'ScoreSummary', 'BackboneError', 'default_num_workers', 'loading_options', 'device_problem',
           'score_into', 'score_paths']

_log = logging.getLogger('pyiqa_maclip.scoring')
# Barriers wait for the slowest process to finish its shard: far longer than torch's 30 minutes.
_BARRIER_TIMEOUT = datetime.timedelta(days=7)
_JOURNAL = re.compile(r'rank(0|[1-9]\d*)\.sqlite3')


class BackboneError(ValueError):
    """The checkpoint named by ``backbone`` cannot be found, downloaded or loaded."""


def default_num_workers() -> int:
    """Decoding processes per scoring process: one per CPU, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return min(4, cpus)


def device_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot be used on this machine, or None."""
    kind = device.type
    if kind == 'cuda' and not torch.cuda.is_available():
        return 'not available on this machine: torch sees no CUDA GPU'
    if kind == 'cuda' and device.index is not None and device.index >= torch.cuda.device_count():
        return f'not available on this machine: torch sees {torch.cuda.device_count()} CUDA GPU(s)'
    if kind == 'mps' and not torch.backends.mps.is_available():
        return 'not available on this machine: torch sees no Apple GPU (MPS)'
    if kind not in ('cpu', 'cuda', 'mps') and not getattr(torch, kind, None):
        return 'not a device this torch build supports'
    return None


def _score_batch(scorer, paths: Sequence[str], images: Sequence[torch.Tensor]) -> list[Result]:
    """Results for decoded images; if the batch fails, each image alone (to find the bad one)."""
    if not images:
        return []
    try:
        return [Result(p, values, None) for p, values in zip(paths, scorer(images))]
    except Exception as error:  # noqa: BLE001 - e.g. out of memory on one huge image: keep the others
        if len(images) == 1:
            return [Result(paths[0], None, error_text(error))]
        return [r for p, image in zip(paths, images) for r in _score_batch(scorer, [p], [image])]


def score_into(journal: Journal, paths: Sequence[str], scorer, device: torch.device, *, batch_size: int = 8,
               num_workers: int = 0, resize: tuple[int, int] | None = None, resize_mode: str = 'bicubic',
               bar: tqdm | None = None) -> None:
    """Score ``paths`` with ``scorer`` and commit each batch's results to ``journal``.

    Images are decoded (strictly, see :mod:`.decoding`) in ``num_workers`` processes
    while the model computes. A file that cannot be read or scored becomes an error
    result; the loop goes on. An interrupt loses at most the batch in flight.
    """
    loader = DataLoader(ImageFiles(paths, resize, resize_mode), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=list, pin_memory=device.type == 'cuda')
    with torch.inference_mode():
        for batch in loader:
            decoded = [item for item in batch if item.error is None]
            images = [as_float(item.image.to(device, non_blocking=True)) for item in decoded]
            results = _score_batch(scorer, [paths[item.index] for item in decoded], images)
            results += [Result(paths[item.index], None, item.error) for item in batch if item.error is not None]
            journal.record(results)
            if bar is not None:
                bar.update(len(batch))


# ---------------------------------------------------------------- a collection run on an output CSV


@dataclass(frozen=True)
class WorkFiles:
    """Where a run on ``output`` keeps its exports, lock and journals."""

    output: Path

    @property
    def errors(self) -> Path:
        name = self.output.name
        return self.output.with_name(f'{name[:-4] if name.lower().endswith(".csv") else name}.errors.csv')

    @property
    def folder(self) -> Path:
        return self.output.with_name(f'.{self.output.name}.pyiqa-maclip')

    @property
    def lock(self) -> Path:
        return self.folder / 'lock'

    def journal(self, rank: int) -> Path:
        return self.folder / f'rank{rank}.sqlite3'

    def journals(self) -> list[Path]:
        """Existing journal files, rank 0 first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m[1]), p) for p in self.folder.iterdir() if (m := _JOURNAL.fullmatch(p.name))]
        return [p for _, p in sorted(found)]


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
    if problem := device_problem(device):
        raise ValueError(f'device {str(device)!r}: {problem}')
    if device.type != 'cpu' and device.index is None and state.num_processes > 1:
        device = torch.device(device.type, state.local_process_index)
    return device


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')
    return value


def loading_options(batch_size: int = 8, num_workers: int | None = None) -> dict:
    """Checked ``batch_size`` and ``num_workers`` (None: :func:`default_num_workers`) for :func:`score_into`."""
    return {'batch_size': _count('batch_size', batch_size, 1),
            'num_workers': default_num_workers() if num_workers is None else _count('num_workers', num_workers, 0)}


def _check_output(files: WorkFiles, paths: Sequence[str]) -> None:
    """Refuse an output that is an input or a folder; make sure its folder can be written."""
    if files.output.is_dir():
        raise ValueError(f'the output {files.output} is a folder; expected the path of a CSV file, e.g. scores.csv')
    inputs = set(paths)
    for path in (files.output, files.errors):
        if {os.path.abspath(path), os.path.realpath(path)} & inputs:
            raise OutputConflictError(f'the output file {path} is one of the images to score; choose another output',
                                      fixable=False)
    try:
        files.folder.mkdir(parents=True, exist_ok=True)
        files.lock.touch()
    except OSError as error:
        raise OSError(f'cannot write the output {files.output}: {error.strerror or error}') from error


@contextmanager
def _exclusive(files: WorkFiles, state):
    """Hold the output's lock in the main process for the whole run; every process raises
    :class:`OutputConflictError` if another run holds it."""
    from accelerate.utils import broadcast_object_list

    lock, busy = None, None
    if state.is_main_process:
        lock = FileLock(files.lock, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            busy = f'another run is writing {files.output} (it holds {files.lock}); wait for it to end, or choose another output'
    if state.num_processes > 1:
        busy = broadcast_object_list([busy])[0]
    if busy is not None:
        raise OutputConflictError(busy, fixable=False)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _differences(stored: dict, wanted: dict, prefix: str = '') -> list[str]:
    changes = []
    for key in sorted(set(stored) | set(wanted)):
        old, new = stored.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _differences(old, new, f'{prefix}{key}.')
        elif old != new:
            changes.append(f'{prefix}{key} was {old!r}, now {new!r}')
    return changes


def _open_main_journal(files: WorkFiles, fingerprint: dict, overwrite: bool) -> Journal:
    """Main process, under the lock: the rank-0 journal, holding every earlier result, checked
    against ``fingerprint`` (which the caller records once the metric is built)."""
    if overwrite:
        for path in (*files.journals(), files.output, files.errors):
            path.unlink(missing_ok=True)
    elif not files.journals():
        for path in (files.output, files.errors):
            if path.exists():
                raise OutputConflictError(f'{path} exists but has no journal in {files.folder}, so it was not '
                                          'written by this version of pyiqa-maclip score')
    journal = Journal(files.journal(0))
    try:
        for other in files.journals()[1:]:  # shards of an earlier run under accelerate
            journal.absorb(other)
            other.unlink()
        stored = journal.fingerprint
        if stored is not None and stored != fingerprint:
            raise OutputConflictError(f'{files.output} was made with other settings: '
                                      + '; '.join(_differences(stored, fingerprint)))
    except BaseException:
        journal.close()
        raise
    return journal


def _export(journal: Journal, files: WorkFiles, paths: Sequence[str], columns) -> tuple[int, int]:
    """Write the CSVs from the journal; return how many of ``paths`` are scored and failed."""
    export_csv(journal.results(paths), files.output, files.errors, columns)
    return journal.tally(paths)


def score_paths(paths: Sequence[str | os.PathLike], output: str | os.PathLike, *, backbone: str | os.PathLike = 'RN50',
                device: str | torch.device | None = None, batch_size: int = 8, num_workers: int | None = None,
                chunk_size: int = 16, half: bool = False, overwrite: bool = False, retry_failed: bool = False,
                progress: bool = True, **metric_options) -> ScoreSummary:
    """Score image files into the CSV ``output``, resuming what an earlier run left.

    Paths are stored as given (:func:`~pyiqa_maclip.scoring.collect_paths` gives
    absolute ones) and identify the images across runs. Under ``accelerate launch``
    the main process's ``paths`` count, each process scores its share into its own
    journal, the main process merges them and writes the CSVs, and every process
    returns the same summary.

    Args:
        paths: image files, scored in this order.
        output: the CSV file; its companions are described in the module docstring.
        backbone, chunk_size, half, metric_options: passed to :class:`~pyiqa_maclip.MACLIP`.
        device: default: accelerate's device for this process (else the CPU).
        batch_size: images decoded and scored together (their views share encoder chunks).
        num_workers: decoding processes; default :func:`default_num_workers`; 0 decodes here.
        overwrite: discard what an earlier run on ``output`` left and start afresh.
        retry_failed: score again the files an earlier run reported as failed.
        progress: a tqdm progress bar on stderr (main process only).

    Raises:
        OutputConflictError: another run is working on ``output`` (even with ``overwrite``);
            ``output`` is an input; or, without ``overwrite``, it was made with other
            settings (checkpoint, options, package version) or not by this function.
        BackboneError: the checkpoint cannot be found, downloaded or loaded.
    """
    from accelerate.utils import broadcast_object_list

    if isinstance(paths, (str, os.PathLike)):
        raise TypeError('paths must be a list of image files; for a folder or a list file use collect_paths() first')
    batch_size, num_workers = loading_options(batch_size, num_workers).values()
    paths = list(dict.fromkeys(os.fspath(p) for p in paths))
    state = _distributed_state()
    several = state.num_processes > 1
    if several:  # every process shards the main process's list, whatever it was given
        paths = broadcast_object_list([paths])[0]
    if not paths:
        raise ValueError('paths is empty: expected at least one image file to score')
    files = WorkFiles(Path(output).absolute())
    device = _resolve_device(device, state)
    if state.is_main_process:
        _check_output(files, paths)
    options = {'half': half, **metric_options}
    try:
        sha256 = checkpoint_sha256(backbone)
    except (OSError, ValueError) as error:
        raise BackboneError(str(error)) from error
    with _exclusive(files, state):
        journal, pending = None, None
        if state.is_main_process:
            journal = _open_main_journal(files, maclip_fingerprint(options, sha256), overwrite)
            finished = journal.finished(retry_failed)
            pending = [p for p in paths if p not in finished]
            del finished
        if several:
            pending = broadcast_object_list([pending])[0]
        shard = pending[state.process_index::state.num_processes]
        try:
            # Built before anything is recorded: weights that fail to load leave no trace.
            scorer = _scorer(backbone, chunk_size, half, metric_options, options, sha256, device) if shard else None
            if journal is not None:
                journal.fingerprint = maclip_fingerprint(options, sha256)
                processes = f' on {state.num_processes} processes' if several else ''
                _log.info('%s: %d of %d images to score%s, %d done before',
                          files.output, len(pending), len(paths), processes, len(paths) - len(pending))
            if shard:
                _score_shard(files, journal, shard, state, scorer, device, batch_size, num_workers,
                             progress and state.is_main_process)
            if several:  # not on an error: the others would wait for a process that has gone
                state.wait_for_everyone()
            summary = None
            if journal is not None:
                for other in files.journals()[1:]:
                    journal.absorb(other)
                    other.unlink()
                scored, failed = _export(journal, files, paths, MaclipScorer.columns)
                summary = ScoreSummary(files.output, files.errors, len(paths), scored, failed, len(pending))
        except KeyboardInterrupt:
            if journal is not None and not several:  # the CSVs show what is done so far
                _export(journal, files, paths, MaclipScorer.columns)
            raise
        finally:
            if journal is not None:
                journal.close()
        return broadcast_object_list([summary])[0] if several else summary


def _scorer(backbone, chunk_size: int, half: bool, metric_options: dict, options: dict, sha256: str,
            device: torch.device) -> MaclipScorer:
    try:
        metric = MACLIP(backbone=backbone, chunk_size=chunk_size, half=half, **metric_options)
    except (OSError, ValueError) as error:
        raise BackboneError(str(error)) from error
    return MaclipScorer(metric.to(device).eval(), options, sha256)


def _score_shard(files: WorkFiles, journal: Journal | None, shard: Sequence[str], state, scorer: MaclipScorer,
                 device: torch.device, batch_size: int, num_workers: int, progress: bool) -> None:
    """Score this process's share into its journal (the main one for rank 0)."""
    own = journal if journal is not None else Journal(files.journal(state.process_index))
    try:
        own.fingerprint = scorer.fingerprint
        with tqdm(total=len(shard), unit='img', desc='scoring', disable=not progress, file=sys.stderr,
                  dynamic_ncols=True) as bar:
            score_into(own, shard, scorer, device, batch_size=batch_size, num_workers=num_workers, bar=bar)
    finally:
        if own is not journal:
            own.close()
