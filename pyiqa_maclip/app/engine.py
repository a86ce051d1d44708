"""The engine: score a collection into a journal, resumably.

:func:`score_into` is the one batch loop (``score`` and ``benchmark``): images decoded in
worker processes under a pixel budget, scored in batches by any :class:`~.scorers.Scorer`,
each batch committed to a :class:`~.journal.Journal`.

:func:`score_collection` is a run on an output CSV: plan (check the outputs, open the journal
with the recipe's fingerprint, list what is left), score under the pixel budget into the
journal, export the CSVs (:mod:`.outputs`). Under ``accelerate launch`` the plan is the main
process's and each process scores a share; :mod:`.shards` splits, waits and merges.

Files of a run on ``scores.csv``: the exports ``scores.csv`` and ``scores.errors.csv``,
and the work folder ``.scores.csv.pyiqa-maclip/`` (lock, journals, temporary files).
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import UserError, error_text
from .files import WorkFiles, held_lock
from .images import DEFAULT_PIXEL_BUDGET, decoded_batches, default_num_workers
from .journal import Journal, JournalError, Result
from .outputs import check_output_kind, claim_before_scoring, export
from .scorers import Recipe, Scorer
from .sources import Sample, files_read, split_by_source
from .sources.files import samples_of
from .shards import (RANK_TIMEOUT, absorb_leftovers, broadcast, distributed_state, finish_share, gather,
                     merge_others, others_problem, refuse_running_leftovers, share_journal, together)

__all__ = ['RANK_TIMEOUT', 'ScoreSummary', 'device_problem', 'loading_options', 'score_into',
           'score_collection']

_log = logging.getLogger('pyiqa_maclip')


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


def _result(sample: Sample, values: dict | None, error: str | None) -> Result:
    return Result(sample.key, values, error, sample.source, sample.locator)


def _score_batch(scorer: Scorer, samples: Sequence[Sample], images: Sequence[torch.Tensor]) -> list[Result]:
    """Results for decoded images; if the batch fails, each image alone (to find the bad one)."""
    if not images:
        return []
    try:
        return [_result(s, values, None) for s, values in zip(samples, scorer(images))]
    except Exception as error:  # noqa: BLE001 - e.g. out of memory on one huge image: keep the others
        if len(images) == 1:
            return [_result(samples[0], None, error_text(error))]
        return [r for s, image in zip(samples, images) for r in _score_batch(scorer, [s], [image])]


def score_into(journal: Journal, samples: Sequence[Sample | str], scorer: Scorer, device: torch.device, *,
               batch_size: int = 8, num_workers: int = 0, pixel_budget: int = DEFAULT_PIXEL_BUDGET,
               resize: tuple[int, int] | None = None, resize_mode: str = 'bicubic', bar: tqdm | None = None) -> None:
    """Score ``samples`` (:class:`~.sources.Sample` or image files' paths) with ``scorer`` and commit
    each batch's results to ``journal``.

    A sample that cannot be read or scored becomes an error result; the loop goes on. An
    interrupt loses at most the batch in flight.
    """
    samples = _as_samples(samples)
    batches = decoded_batches(samples, batch_size=batch_size, num_workers=num_workers, pixel_budget=pixel_budget,
                              resize=resize, resize_mode=resize_mode)
    with torch.inference_mode():
        for batch in batches:
            decoded = [item for item in batch if item.error is None]
            images = [item.image.to(device) for item in decoded]
            results = _score_batch(scorer, [samples[item.index] for item in decoded], images)
            results += [_result(samples[item.index], None, item.error) for item in batch if item.error is not None]
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
    total: int  # distinct input samples
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


def _forget_earlier_run(files: WorkFiles) -> dict:
    """``--overwrite``: delete the journals an earlier run on this output left; what it exported
    (as its main journal recorded it) stays this run's to replace."""
    exported = {}
    for journal_file in files.journals():
        if journal_file == files.journal(0):
            with contextlib.suppress(JournalError), Journal(journal_file) as old:
                exported = {path: old.exported(path) for path in (files.output, files.errors)}
        journal_file.unlink()
    return exported


@contextmanager
def _main_journal(files: WorkFiles, recipe: Recipe, overwrite: bool):
    """Main process, under the output's lock: the main journal, holding every earlier result
    (and the files earlier runs exported), checked against the recipe's fingerprint."""
    refuse_running_leftovers(files)
    exported = _forget_earlier_run(files) if overwrite else {}
    for leftover in files.folder.glob('*.part'):  # temporary files of an interrupted export
        leftover.unlink(missing_ok=True)
    with Journal.create(files.journal(0), recipe.fingerprint, recipe.columns, metric=recipe.metric,
                        lower_better=recipe.lower_better) as journal:
        for path, recorded in exported.items():
            if recorded is not None:
                journal.own(path, recorded)
        absorb_leftovers(journal, files)
        claim_before_scoring(journal, files, overwrite)
        yield journal


def _remove_unused_work_folder(files: WorkFiles) -> None:
    """After a run refused before it recorded anything: remove the work folder it made (lock, empty journal)."""
    with contextlib.suppress(JournalError), Journal(files.journal(0)) as journal:
        if not journal.empty:
            return
    for file in (files.journal(0), files.lock, files.alive(0)):
        file.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        files.folder.rmdir()


def _plan(held: contextlib.ExitStack, files: WorkFiles, samples: Sequence[Sample], recipe: Recipe, overwrite: bool,
          retry_failed: bool, tidy: bool) -> tuple[Journal, tuple[list[Sample], list[Sample]]]:
    """Main process: hold the output, open the main journal; the inputs (each once) and those still to
    score. With ``tidy``, a work folder this call makes goes again if the run records nothing."""
    samples = list({(s.source, s.key): s for s in samples}.values())
    if not samples:
        raise UserError('paths is empty: expected at least one image to score')
    files.check(files_read(samples), overwrite)
    check_output_kind(files.output, recipe.embeddings)
    if tidy and not files.folder.exists():
        held.callback(_remove_unused_work_folder, files)  # runs after the lock and journal below are let go
    files.folder.mkdir(parents=True, exist_ok=True)
    held.enter_context(held_lock(files.lock, f'another run is writing {files.output} (it holds {files.lock}); '
                                             'wait for it to end, or choose another output'))
    journal = held.enter_context(_main_journal(files, recipe, overwrite))
    finished = journal.finished(retry_failed)
    return journal, (samples, [s for s in samples if (s.source, s.key) not in finished])


def _agree_on_plan(state, held: contextlib.ExitStack, files: WorkFiles, samples: Sequence[Sample], recipe: Recipe,
                   overwrite: bool, retry_failed: bool) -> tuple[Journal | None, list[str], list[str]]:
    """Every process: the main journal (main process only, else None), the inputs and those still to
    score, as the main process planned them; or every process stops with the same line."""
    journal, plan, problem = None, None, None
    try:  # every process: its own view of the settings (each resolves the weights it will load)
        fingerprint = recipe.fingerprint
    except (UserError, OSError) as error:
        fingerprint, problem = None, error
    views = gather(state, (state.process_index, fingerprint, None if problem is None else str(problem)))
    if state.is_main_process and problem is None:
        try:
            if problem := others_problem(views, fingerprint):
                raise problem
            journal, plan = _plan(held, files, samples, recipe, overwrite, retry_failed,
                                  tidy=state.num_processes == 1)
        except (UserError, OSError) as error:
            problem = error
    told = broadcast(state, (plan, None if problem is None else str(problem)))
    if told[1] is not None:
        raise problem if problem is not None else UserError(told[1])
    return journal, *told[0]


def _start_together(state, held: contextlib.ExitStack, files: WorkFiles) -> None:
    """Hold this process's liveness lock; every process holds its own before any waits for the others."""
    alive = files.alive(state.process_index)
    held.enter_context(held_lock(alive, f'{alive} is held by another process: is another run with the same '
                                        'output going on?'))
    if state.num_processes > 1:
        with together('start'):
            state.wait_for_everyone()


def _score_share(journal: Journal, shard: list[Sample], recipe: Recipe, device: torch.device, loading: dict,
                 progress: bool) -> None:
    """Build the scorer (only if there is something to score) and score ``shard`` into ``journal``."""
    if not shard:
        return
    scorer = recipe.build(device)
    _return_freed_memory()  # what building it freed (a whole checkpoint, for MA-CLIP)
    with tqdm(total=len(shard), unit='img', desc='scoring', disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        score_into(journal, shard, scorer, device, **loading, bar=bar)


def _as_samples(paths: Sequence) -> list[Sample]:
    if isinstance(paths, (str, os.PathLike)):
        raise UserError('paths must be a list of image files; for a folder or a list file use collect_paths() first')
    return [p if isinstance(p, Sample) else samples_of([os.fspath(p)])[0] for p in paths]


def score_collection(paths: Sequence[str | os.PathLike | Sample], output: str | os.PathLike,
                     recipe: Recipe | None = None, *,
                     device: str | torch.device | None = None, batch_size: int = 8, num_workers: int | None = None,
                     pixel_budget: int = DEFAULT_PIXEL_BUDGET, overwrite: bool = False, retry_failed: bool = False,
                     progress: bool = True, rank_timeout: float = RANK_TIMEOUT) -> ScoreSummary | None:
    """Score image files into the CSV ``output`` with ``recipe`` (default: MA-CLIP), resuming what an
    earlier run left.

    Paths are stored as given (:func:`~pyiqa_maclip.app.inputs.collect_paths` gives absolute
    ones) and identify the images across runs; samples of other sources
    (:func:`~pyiqa_maclip.app.sources.collect_samples`) are known by their source and key. Under
    ``accelerate launch`` the main process's
    ``paths`` count; each process scores its share into its own journal; the main process
    merges them, writes the CSVs and returns the summary (the others return None).

    Args:
        paths: image files or samples (:class:`~.sources.Sample`), scored in this order.
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
    samples = _as_samples(paths)
    recipe = recipe or Recipe()
    loading = loading_options(batch_size, num_workers, pixel_budget)
    ours = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    with together('meet'):
        state = distributed_state()
    main, rank = state.is_main_process, state.process_index
    files = WorkFiles(Path(output).absolute())
    with contextlib.ExitStack() as held:
        if ours and state.num_processes > 1:  # a process group made for this run ends with it, even on an error
            held.callback(torch.distributed.destroy_process_group)
        journal, samples, pending = _agree_on_plan(state, held, files, samples, recipe, overwrite, retry_failed)
        _start_together(state, held, files)
        device = _resolve_device(device, state)
        shard = split_by_source(pending, rank, state.num_processes)
        own = journal if main else held.enter_context(share_journal(files, rank, recipe))
        if main:
            processes = f' on {state.num_processes} processes' if state.num_processes > 1 else ''
            _log.info('%s: %d of %d images to score%s, %d done before', files.output, len(pending), len(samples),
                      processes, len(samples) - len(pending))
        try:
            _score_share(own, shard, recipe, device, loading, progress and main)
        except KeyboardInterrupt:
            if main and state.num_processes == 1:  # the CSVs show what is done so far
                export(journal, files, samples)
            raise
        if not main:
            finish_share(own, files, rank)
            return None
        for problem in merge_others(journal, files, state.num_processes, rank_timeout):
            _log.warning('%s', problem)
        scored, failed = export(journal, files, samples)
        return ScoreSummary(files.output, files.errors, len(samples), scored, failed, len(pending))


def _return_freed_memory() -> None:
    """Give the memory freed so far back to the operating system (glibc keeps freed heap memory for
    reuse: after loading CLIP, some 300 MB for RN50 that the decoding workers, forked from this
    process, would otherwise carry too). Nothing happens where the C library has no malloc_trim."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass
