"""The engine: score a collection into a journal, resumably, in one process or several.

:func:`score_into` is the one batch loop (``score`` and ``benchmark``): images decoded in
worker processes under a pixel budget, scored in batches by any :class:`~.scorers.Scorer`,
each batch committed to a :class:`~.journal.Journal`.

:func:`score_collection` is a run on an output CSV, in four steps:

1. plan (main process, holding the output's lock): check the outputs, open the journal
   (same fingerprint, or refused), merge what earlier processes left, list what is left;
2. shard: under ``accelerate launch`` each process takes every N-th pending image; one
   that found a problem tells the others, and every process stops with the same line;
3. execute: each process scores its share into its own journal (``rank<N>.sqlite3``);
4. finalize: the main process waits for the others (saying so every minute, giving up
   after ``rank_timeout`` seconds or as soon as one has stopped), merges their journals
   (same fingerprint only) and exports the CSVs.

Files of a run on ``scores.csv``: the exports ``scores.csv`` and ``scores.errors.csv``,
and the work folder ``.scores.csv.pyiqa-maclip/`` (lock, journals, temporary files).
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from tqdm import tqdm

from ..errors import UserError, error_text
from .files import WorkFiles, refuse_special
from .images import DEFAULT_PIXEL_BUDGET, decoded_batches, default_num_workers
from .journal import Journal, JournalError, Result, differences, display_path, write_csv
from .scorers import Recipe, Scorer

__all__ = ['RANK_TIMEOUT', 'ScoreSummary', 'device_problem', 'loading_options', 'score_into',
           'score_collection']

_log = logging.getLogger('pyiqa_maclip')
#: Seconds the main process waits for the others once its own share is done (``--rank-timeout``).
RANK_TIMEOUT = 3600.0
_REPORT_EVERY = 60.0  # seconds between "waiting for" lines
# The collectives at the start only wait for the processes to start (listing folders, hashing weights).
_START_TIMEOUT = datetime.timedelta(minutes=10)


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


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f'{name} must be an integer >= {minimum}, got {value!r}')
    return value


def loading_options(batch_size: int = 8, num_workers: int | None = None,
                    pixel_budget: int = DEFAULT_PIXEL_BUDGET) -> dict:
    """Checked options of :func:`score_into` (``num_workers=None``: one per CPU, at most 4)."""
    return {'batch_size': _count('batch_size', batch_size, 1),
            'num_workers': default_num_workers() if num_workers is None else _count('num_workers', num_workers, 0),
            'pixel_budget': _count('pixel_budget', pixel_budget, 1)}


def _score_batch(scorer: Scorer, paths: Sequence[str], images: Sequence[torch.Tensor]) -> list[Result]:
    """Results for decoded images; if the batch fails, each image alone (to find the bad one)."""
    if not images:
        return []
    try:
        return [Result(p, values, None) for p, values in zip(paths, scorer(images))]
    except Exception as error:  # noqa: BLE001 - e.g. out of memory on one huge image: keep the others
        if len(images) == 1:
            return [Result(paths[0], None, error_text(error))]
        return [r for p, image in zip(paths, images) for r in _score_batch(scorer, [p], [image])]


def score_into(journal: Journal, paths: Sequence[str], scorer: Scorer, device: torch.device, *,
               batch_size: int = 8, num_workers: int = 0, pixel_budget: int = DEFAULT_PIXEL_BUDGET,
               resize: tuple[int, int] | None = None, resize_mode: str = 'bicubic', bar: tqdm | None = None) -> None:
    """Score ``paths`` with ``scorer`` and commit each batch's results to ``journal``.

    A file that cannot be read or scored becomes an error result; the loop goes on. An
    interrupt loses at most the batch in flight.
    """
    batches = decoded_batches(paths, batch_size=batch_size, num_workers=num_workers, pixel_budget=pixel_budget,
                              resize=resize, resize_mode=resize_mode)
    with torch.inference_mode():
        for batch in batches:
            decoded = [item for item in batch if item.error is None]
            images = [item.image.to(device) for item in decoded]
            results = _score_batch(scorer, [paths[item.index] for item in decoded], images)
            results += [Result(paths[item.index], None, item.error) for item in batch if item.error is not None]
            journal.record(results)
            if bar is not None:
                bar.update(len(batch))
            del batch, decoded, images  # before the next batch is decoded: the budget counts them as gone


# ---------------------------------------------------------------- a collection run on an output CSV


@dataclass(frozen=True)
class ScoreSummary:
    """What a run of :func:`score_collection` left in its output, over its inputs."""

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
    return PartialState(cpu=cpu, timeout=_START_TIMEOUT)


def _resolve_device(device: str | torch.device | None, state) -> torch.device:
    if device is None:
        return torch.device(state.device)
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise UserError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from error
    if problem := device_problem(device):
        raise UserError(f'device {str(device)!r}: {problem}')
    if device.type != 'cpu' and device.index is None and state.num_processes > 1:
        device = torch.device(device.type, state.local_process_index)
    return device


def _claim(journal: Journal, path: Path, what: str, hint: str, claim: bool = False) -> None:
    """Make sure this run may write ``path``: nothing there, or a regular file it wrote (or, with
    ``claim``, any regular file: the output the user named with ``--overwrite``); else a
    :class:`JournalError` naming the file in the way."""
    refuse_special(path, what)
    if not path.exists() or journal.owns(path):
        return
    if not claim:
        raise JournalError(f'{what} {path} is in the way: it was not written by this run; {hint}')
    journal.own(path)


def _plan(files: WorkFiles, paths: Sequence[str], recipe: Recipe, overwrite: bool) -> Journal:
    """Main process, under the output's lock: the main journal, holding every earlier result
    (and a list of the files earlier runs exported), checked against the recipe's fingerprint."""
    for other in files.journals()[1:]:  # shards an earlier run under accelerate left: merged (or discarded) below
        if not _is_free(files.alive(files.rank_of(other))):
            raise JournalError(f'process {files.rank_of(other)} of an earlier run is still scoring into {other}; '
                               'wait for it to end, then run again')
    exported = {}
    if overwrite:
        for journal_file in files.journals():
            if journal_file == files.journal(0):
                try:  # the exports of an earlier run stay this run's to replace
                    with Journal(journal_file) as old:
                        exported = {path: old.exported(path) for path in (files.output, files.errors)}
                except JournalError:
                    pass
            journal_file.unlink()
    for leftover in files.folder.glob('*.part'):  # temporary files of an interrupted export
        leftover.unlink(missing_ok=True)
    journal = Journal.create(files.journal(0), recipe.fingerprint, recipe.columns)
    try:
        for path, identity in exported.items():
            if identity is not None:
                journal.own(path, identity)
        for other in files.journals()[1:]:
            journal.absorb(other)
            other.unlink()
        _claim(journal, files.output, 'the output', 'pass --overwrite to replace it, or choose another --output',
               claim=overwrite)
        _claim(journal, files.errors, 'the errors file', 'move it away, or choose another --output')
    except BaseException:
        journal.close()
        raise
    return journal


def _export(journal: Journal, files: WorkFiles, paths: Sequence[str]) -> tuple[int, int]:
    """Write the CSVs from the journal, only over files this run wrote; how many of ``paths`` are
    scored and failed."""
    hint = ('it appeared during the run; move it away and run the same command again to export the results, '
            'which are kept in the journal')
    _claim(journal, files.output, 'the output', hint)
    _claim(journal, files.errors, 'the errors file', hint)
    columns = journal.columns
    scored, failed = journal.tally(paths)
    write_csv(([display_path(os.fsencode(r.path)), *(f'{r.values[c]:.9g}' for c in columns)]
               for r in journal.results(paths) if r.error is None), ['path', *columns], files.output, files.folder)
    journal.own(files.output)
    if failed:
        write_csv(([display_path(os.fsencode(r.path)), r.error] for r in journal.results(paths) if r.error is not None),
                  ['path', 'error'], files.errors, files.folder)
        journal.own(files.errors)
    elif files.errors.exists():  # no errors, no errors file (this run's: _claim checked it)
        files.errors.unlink()
        journal.own(files.errors, None)
    return scored, failed


@contextmanager
def _held(lock_file: Path, busy: str) -> Iterator[FileLock]:
    """Hold an OS lock (freed when the process ends, even on kill -9); :class:`UserError` ``busy`` if taken."""
    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(busy) from None
    try:
        yield lock
    finally:
        lock.release()


@contextmanager
def _together(what: str) -> Iterator[None]:
    """A collective of the processes at the start of a run: one that stopped before it (its own message
    says why) leaves the others waiting until the start timeout, then one line, not gloo's traceback."""
    try:
        yield
    except RuntimeError as error:
        raise UserError(f'the processes of this run could not {what} within {_START_TIMEOUT.total_seconds():g} s: '
                        'one of them stopped (see its own message above) or cannot reach the others') from error


def _broadcast(state, value):
    """``value`` of the main process, in every process (as is, with one process)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    with _together('agree on the plan'):
        return broadcast_object_list([value])[0]


def score_collection(paths: Sequence[str | os.PathLike], output: str | os.PathLike, recipe: Recipe | None = None, *,
                     device: str | torch.device | None = None, batch_size: int = 8, num_workers: int | None = None,
                     pixel_budget: int = DEFAULT_PIXEL_BUDGET, overwrite: bool = False, retry_failed: bool = False,
                     progress: bool = True, rank_timeout: float = RANK_TIMEOUT) -> ScoreSummary | None:
    """Score image files into the CSV ``output`` with ``recipe`` (default: MA-CLIP), resuming what an
    earlier run left.

    Paths are stored as given (:func:`~pyiqa_maclip.app.inputs.collect_paths` gives absolute
    ones) and identify the images across runs. Under ``accelerate launch`` the main process's
    ``paths`` count; each process scores its share into its own journal; the main process
    merges them, writes the CSVs and returns the summary (the others return None).

    Args:
        paths: image files, scored in this order.
        output: the CSV file; see the module docstring for its companions.
        recipe: the metric and its options (:class:`~.scorers.Recipe`).
        device: default: accelerate's device for this process (else the CPU).
        batch_size, num_workers, pixel_budget: how images are decoded and batched (:func:`score_into`).
        overwrite: discard what an earlier run on ``output`` left and start afresh (and replace
            ``output`` even if another program wrote it; never a link, device, FIFO or folder).
        retry_failed: score again the files an earlier run reported as failed.
        progress: a tqdm progress bar on stderr (main process only).
        rank_timeout: seconds the main process waits for the others after its own share.

    Raises:
        UserError (a :class:`~.journal.JournalError` for the journal): the output cannot be used,
            another run is writing it, it was made with other settings, or the weights are not there.
    """
    if isinstance(paths, (str, os.PathLike)):
        raise UserError('paths must be a list of image files; for a folder or a list file use collect_paths() first')
    recipe = recipe or Recipe()
    loading = loading_options(batch_size, num_workers, pixel_budget)
    ours = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    with _together('meet'):
        state = _distributed_state()
    main = state.is_main_process
    files = WorkFiles(Path(output).absolute())
    with contextlib.ExitStack() as held:
        if ours and state.num_processes > 1:  # a process group made for this run ends with it, even on an error
            held.callback(torch.distributed.destroy_process_group)
        journal, plan, problem = None, None, None
        try:  # every process: its own view of the settings (each resolves the weights it will load)
            fingerprint = recipe.fingerprint
        except (UserError, OSError) as error:
            fingerprint, problem = None, error
        views = _gather(state, (state.process_index, fingerprint, None if problem is None else str(problem)))
        if main and problem is None:
            try:
                problem = _others_problem(views, fingerprint)
                paths = list(dict.fromkeys(os.fspath(p) for p in paths))
                if not paths:
                    raise UserError('paths is empty: expected at least one image file to score')
                files.check(paths, overwrite)
                files.folder.mkdir(parents=True, exist_ok=True)
                held.enter_context(_held(files.lock, f'another run is writing {files.output} (it holds '
                                                     f'{files.lock}); wait for it to end, or choose another output'))
                journal = held.enter_context(_plan(files, paths, recipe, overwrite))
                finished = journal.finished(retry_failed)
                plan = (paths, [p for p in paths if p not in finished])
            except (UserError, OSError) as error:
                problem = error
        # Every process gets the main process's plan, or stops with the same line.
        told = _broadcast(state, (plan, None if problem is None else str(problem)))
        if told[1] is not None:
            raise problem if problem is not None else UserError(told[1])
        paths, pending = told[0]
        held.enter_context(_held(files.alive(state.process_index), f'{files.alive(state.process_index)} is held by '
                                 'another process: is another run with the same output going on?'))
        if state.num_processes > 1:
            with _together('start'):
                state.wait_for_everyone()  # every process holds its lock before any waits for the others
        device = _resolve_device(device, state)
        shard = pending[state.process_index::state.num_processes]
        own = journal if main else held.enter_context(Journal.create(files.journal(state.process_index),
                                                                     recipe.fingerprint, recipe.columns))
        if main:
            processes = f' on {state.num_processes} processes' if state.num_processes > 1 else ''
            _log.info('%s: %d of %d images to score%s, %d done before', files.output, len(pending), len(paths),
                      processes, len(paths) - len(pending))
        try:
            if shard:
                scorer = recipe.build(device)
                _return_freed_memory()  # what building it freed (a whole checkpoint, for MA-CLIP)
                with tqdm(total=len(shard), unit='img', desc='scoring', disable=not (progress and main),
                          file=sys.stderr, dynamic_ncols=True) as bar:
                    score_into(own, shard, scorer, device, **loading, bar=bar)
                del scorer
            if not main:
                own.mark_complete()
        except KeyboardInterrupt:
            if main and state.num_processes == 1:  # the CSVs show what is done so far
                _export(journal, files, paths)
            raise
        if not main:
            return None
        for problem in _merge_others(journal, files, state.num_processes, rank_timeout):
            _log.warning('%s', problem)
        scored, failed = _export(journal, files, paths)
        return ScoreSummary(files.output, files.errors, len(paths), scored, failed, len(pending))


def _return_freed_memory() -> None:
    """Give the memory freed so far back to the operating system (glibc keeps freed heap memory for
    reuse: after loading CLIP, some 300 MB for RN50 that the decoding workers, forked from this
    process, would otherwise carry too). Nothing happens where the C library has no malloc_trim."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def _gather(state, value) -> list:
    """``value`` of every process, in rank order (``[value]`` with one process)."""
    if state.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    with _together('compare their settings'):
        return gather_object([value])


def _others_problem(views: list, fingerprint: dict) -> UserError | None:
    """A problem another process met before scoring, or settings of its that differ from the main
    process's (other weights, another version): the run must not mix their results."""
    for rank, theirs, problem in views:
        if problem is not None:
            return UserError(f'process {rank}: {problem}')
        if theirs != fingerprint:
            return UserError(f'process {rank} has other settings than the main process, and their results must not '
                             'mix: ' + '; '.join(differences(fingerprint, theirs)))
    return None


def _complete(file: Path) -> bool:
    with Journal(file) as journal:
        return journal.complete


def _merge_others(journal: Journal, files: WorkFiles, processes: int, timeout: float) -> list[str]:
    """Main process: wait for the other processes to finish their shares, saying so every minute,
    and merge their journals (same fingerprint only). A process that stopped without finishing, or
    is still running after ``timeout`` seconds, is not waited for: what it finished is merged (or
    stays in its journal, for the next run). Returns what went wrong, a line each."""
    waiting, problems = set(range(1, processes)), []
    start = last_report = time.monotonic()
    while waiting:
        for rank in sorted(waiting):
            file, stopped = files.journal(rank), _is_free(files.alive(rank))  # the lock is freed when it ends
            complete = file.exists() and _complete(file)
            if not (complete or stopped):
                continue
            if file.exists():
                journal.absorb(file)
                file.unlink()
            waiting.discard(rank)
            if not complete:
                problems.append(f'process {rank} stopped before finishing its share (what it finished is kept); '
                                'run the same command again to score the rest')
        now = time.monotonic()
        if waiting and now - start > timeout:
            problems.append(f'gave up waiting for process(es) {", ".join(map(str, sorted(waiting)))} after '
                            f'{timeout:g} s; what they finish stays in their journals: run the same command again '
                            'once they have ended')
            break
        if waiting and now - last_report >= _REPORT_EVERY:
            print(f'waiting for {len(waiting)} of {processes - 1} other processes to finish their shares '
                  f'({processes - 1 - len(waiting)} finished, {now - start:.0f} s so far)', file=sys.stderr)
            last_report = now
        if waiting:
            time.sleep(0.5)
    return problems


def _is_free(lock_file: Path) -> bool:
    """Whether no process holds the OS lock ``lock_file``."""
    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    lock.release()
    return True
