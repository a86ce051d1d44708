"""Worker processes that cannot hang a run: each takes one task at a time and is watched.

``multiprocessing.Pool`` replaces a worker that dies but loses its task, and whoever waits for
that task waits for ever (the out-of-memory killer striking a decoder did exactly that). Here
the main process waits on each busy worker's pipe and on every worker's process sentinel at
once: a worker that dies is noticed at once, its task is reported as died (with the signal or
exit status), and a fresh worker takes its place.
"""
from __future__ import annotations

import gc
import multiprocessing
from collections import deque
from collections.abc import Callable, Hashable
from multiprocessing.connection import wait

__all__ = ['WorkerDied', 'WorkerPool']


class WorkerDied(RuntimeError):
    """The process working on a task ended before it answered."""


def _serve(connection, function: Callable, initializer: Callable | None, mains: list) -> None:
    # A forked worker holds copies of the main process's ends of its own pipe and of the workers' forked
    # before it: closed, the end of the main process (even by kill -9) ends the pipe, and this worker.
    for end in mains:
        end.close()
    if initializer is not None:
        initializer()
    while True:
        try:
            task = connection.recv()
        except EOFError:  # the main process closed its end: the run is over
            return
        connection.send(function(*task))


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f'signal {-exitcode}'
    return f'exit status {exitcode}'


class _Worker:
    def __init__(self, context, function: Callable, initializer: Callable | None, others: list) -> None:
        self.connection, theirs = context.Pipe()
        mains = [self.connection, *(w.connection for w in others)] if context.get_start_method() == 'fork' else []
        self.process = context.Process(target=_serve, args=(theirs, function, initializer, mains), daemon=True)
        # Forked workers share this process's memory until either side writes to it; frozen objects are
        # never visited by the garbage collector, which would otherwise copy every page holding one
        # (some hundred MB after importing torch and pyiqa).
        gc.freeze()
        try:
            self.process.start()
        finally:
            gc.unfreeze()
        theirs.close()
        self.task: tuple | None = None  # (key, arguments) being worked on

    def close(self) -> None:
        self.connection.close()
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()


class WorkerPool:
    """``count`` processes computing ``function(*arguments)`` for tasks submitted under a key;
    :meth:`result` gives a key's value, or raises :class:`WorkerDied` if its worker died on it."""

    def __init__(self, count: int, function: Callable, initializer: Callable | None = None, *,
                 what: str = 'the worker process') -> None:
        self._context = multiprocessing.get_context()
        self._start = lambda: _Worker(self._context, function, initializer, self._workers)
        self._what = what
        self._workers: list[_Worker] = []
        self._queue: deque = deque()
        self._done: dict = {}
        try:
            for _ in range(count):
                self._workers.append(self._start())
        except BaseException:
            self.close()
            raise

    def submit(self, key: Hashable, *arguments) -> None:
        self._queue.append((key, arguments))

    def result(self, key: Hashable):
        while key not in self._done:
            self._dispatch()
            self._collect()
        outcome = self._done.pop(key)
        if isinstance(outcome, WorkerDied):
            raise outcome
        return outcome

    def _dispatch(self) -> None:
        for worker in self._workers:
            if not self._queue:
                return
            if worker.task is None and worker.process.is_alive():
                task = self._queue.popleft()
                try:
                    worker.connection.send(task[1])
                except OSError:  # it died since: the task goes to another (or its replacement)
                    self._queue.appendleft(task)
                    continue
                worker.task = task

    def _collect(self) -> None:
        """Wait until a busy worker answers or any worker ends; take answers, replace the dead."""
        busy = [w.connection for w in self._workers if w.task is not None]
        ready = set(wait(busy + [w.process.sentinel for w in self._workers]))
        for index, worker in enumerate(self._workers):
            if worker.task is not None and worker.connection in ready:
                try:
                    self._done[worker.task[0]] = worker.connection.recv()
                    worker.task = None
                except Exception:  # noqa: BLE001 - an answer cut short: it is dying, or must go
                    worker.process.join(timeout=5)
                    ready.add(worker.process.sentinel)
            if worker.process.sentinel in ready:
                self._replace(index)

    def _replace(self, index: int) -> None:
        """A fresh worker for one that ended (or answered nonsense); its task, if any, is reported died."""
        worker = self._workers[index]
        worker.close()
        if worker.task is not None:
            self._done[worker.task[0]] = WorkerDied(f'{self._what} died ({_death(worker.process.exitcode)})')
        self._workers[index] = self._start()

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []

