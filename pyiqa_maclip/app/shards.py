"""Several processes on one collection (``accelerate launch``): agree, split, wait with liveness, merge.

Only the main process plans (it holds the output's lock and the main journal); every process
gets its plan, or stops with the same line. Each other process scores every N-th pending image
into its own journal, written as ``rank<N>.open.sqlite3`` and renamed ``rank<N>.sqlite3`` once
complete, so no process ever reads a journal still being made. Each holds ``rank<N>.lock``
while it runs: the operating system frees it when the process ends, kill included, which is
how the main process tells a stopped process from a slow one.
"""
from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import UserError
from .files import WorkFiles, lock_is_free
from .journal import Journal, JournalError, differences

__all__ = ['RANK_TIMEOUT', 'distributed_state', 'together', 'broadcast', 'gather', 'others_problem',
           'START_TIMEOUT', 'refuse_running_leftovers', 'absorb_leftovers', 'share_journal', 'finish_share', 'merge_others']

#: Seconds the main process waits for the others once its own share is done (``--rank-timeout``).
RANK_TIMEOUT = 3600.0
_REPORT_EVERY = 60.0  # seconds between "waiting for" lines
# The collectives at the start only wait for the processes to start (listing folders, hashing weights).
START_TIMEOUT = datetime.timedelta(minutes=10)


def distributed_state():
    """accelerate's state: one process, or this one's rank under ``accelerate launch``."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    launched = int(os.environ.get('WORLD_SIZE', '1')) > 1
    accelerator = torch.accelerator.is_available() if hasattr(torch, 'accelerator') else torch.cuda.is_available()
    # `accelerate launch --multi_gpu` on a machine without accelerators: one CPU process per rank.
    cpu = parse_flag_from_env('ACCELERATE_USE_CPU') or (launched and not accelerator)
    return PartialState(cpu=cpu, timeout=START_TIMEOUT)


@contextmanager
def together(what: str) -> Iterator[None]:
    """A collective of the processes at the start of a run: one that stopped before it (its own message
    says why) leaves the others waiting until the start timeout, then one line, not gloo's traceback."""
    try:
        yield
    except RuntimeError as error:
        raise UserError(f'the processes of this run could not {what} within {START_TIMEOUT.total_seconds():g} s: '
                        'one of them stopped (see its own message above) or cannot reach the others') from error


def broadcast(state, value):
    """``value`` of the main process, in every process (as is, with one process)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    with together('agree on the plan'):
        return broadcast_object_list([value])[0]


def gather(state, value) -> list:
    """``value`` of every process, in rank order (``[value]`` with one process)."""
    if state.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    with together('compare their settings'):
        return gather_object([value])


def others_problem(views: list, fingerprint: dict) -> UserError | None:
    """A problem another process met before scoring, or settings of its that differ from the main
    process's (other weights, another version): the run must not mix their results."""
    for rank, theirs, problem in views:
        if problem is not None:
            return UserError(f'process {rank}: {problem}')
        if theirs != fingerprint:
            return UserError(f'process {rank} has other settings than the main process, and their results must not '
                             'mix: ' + '; '.join(differences(fingerprint, theirs)))
    return None


def _other_journals(files: WorkFiles) -> list:
    return [file for file in files.journals() if files.rank_of(file) > 0]


def refuse_running_leftovers(files: WorkFiles) -> None:
    """A :class:`JournalError` if a process of an earlier run still writes one of the journals it left."""
    for other in _other_journals(files):
        if not lock_is_free(files.alive(files.rank_of(other))):
            raise JournalError(f'process {files.rank_of(other)} of an earlier run is still scoring into {other}; '
                               'wait for it to end, then run again')


def _absorb(journal: Journal, file) -> None:
    """Merge ``file`` into ``journal`` and remove it (an empty file: a process killed as it created it)."""
    if file.stat().st_size:
        journal.absorb(file)
    file.unlink()


def absorb_leftovers(journal: Journal, files: WorkFiles) -> None:
    """Merge what processes of earlier runs left in their journals, complete or not."""
    for other in _other_journals(files):
        _absorb(journal, other)


def share_journal(files: WorkFiles, rank: int, recipe) -> Journal:
    """The journal process ``rank`` > 0 scores its share into, under its temporary name."""
    return Journal.create(files.open_journal(rank), recipe.fingerprint, recipe.columns, metric=recipe.metric,
                          lower_better=recipe.lower_better)


def finish_share(journal: Journal, files: WorkFiles, rank: int) -> None:
    """Close a process's journal and give it its final name: from now on the main process may read it."""
    journal.close()
    os.replace(files.open_journal(rank), files.journal(rank))


def merge_others(journal: Journal, files: WorkFiles, processes: int, timeout: float) -> list[str]:
    """Main process: wait for the other processes to finish their shares, saying so every minute,
    and merge their journals (same fingerprint only). A process that stopped without finishing, or
    is still running after ``timeout`` seconds, is not waited for: what it finished is merged (or
    stays in its journal, for the next run). Returns what went wrong, a line each."""
    waiting, problems = set(range(1, processes)), []
    start = last_report = time.monotonic()
    while waiting:
        for rank in sorted(waiting):
            complete = files.journal(rank).exists()
            if not (complete or lock_is_free(files.alive(rank))):
                continue
            complete = files.journal(rank).exists()  # it may have finished just before it ended
            for file in (files.journal(rank), files.open_journal(rank)):
                if file.exists():
                    _absorb(journal, file)
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
