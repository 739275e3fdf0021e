"""DataLoader worker processes that neither lose a run nor outlive it.

Three rules, shared by every loader vimamba builds (training, evaluation, dense prediction):

* **A job-wide signal is the main process's to handle.** Ctrl-C, ``timeout``, ``kill -- -PGID`` and Slurm's
  ``scancel`` signal every process of the job, data workers included. A worker that died of it would take the
  run down before the main process had saved its checkpoint, so workers ignore SIGINT, and ignore a SIGTERM
  that comes from anyone but their own main process.
* **A SIGTERM from the main process ends the worker.** That is how the main process shuts its workers down
  (``DataLoader`` shutdown, ``multiprocessing``'s exit handler). Workers that ignored it too made a run that
  failed (a worker exception, a killed worker) wait for them forever at exit. :func:`worker_init` tells the two
  apart by the sender's pid (``sigwaitinfo``), on a thread of the worker that owns SIGTERM; where the platform
  lacks ``sigwaitinfo`` a second SIGTERM ends the worker (the main process sends one in ``DataLoader`` shutdown
  and one more at exit).
* **A failure surfaces where the training state is consistent.** :class:`DataLoadingError` carries the position
  of the last finished optimizer step, so the trainer saves a checkpoint to resume from before it exits;
  :func:`worker_deaths_deferred` holds back torch's "worker killed" signal (SIGCHLD) while an optimizer step is
  applied, so a dying worker never interrupts an update half way.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator, Optional

from .images import DataError

__all__ = ["worker_init", "DataLoadingError", "is_worker_failure", "worker_deaths_deferred", "describe_failure"]


def worker_init(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: SIGINT ignored; SIGTERM ends the worker only when its main process sends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    if hasattr(signal, "sigwaitinfo") and hasattr(signal, "pthread_sigmask"):
        # Block SIGTERM in this (the worker's main) thread before any other thread exists, so every thread
        # inherits the mask and the signal stays pending until the watcher thread takes it with its sender's pid.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_watch_sigterm, args=(parent,), name="vimamba-sigterm", daemon=True).start()
    else:  # pragma: no cover - platforms without sigwaitinfo (macOS)
        signal.signal(signal.SIGTERM, _SecondSigterm())


def _watch_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent or os.getppid() != parent:
            # the main process is shutting its workers down (or is gone): a clean exit, which torch's worker-death
            # check in the main process does not report
            os._exit(0)
        # else: a job-wide SIGTERM; the main process saves, then ends us


class _SecondSigterm:
    def __init__(self):
        self.seen = False

    def __call__(self, signum, frame):  # pragma: no cover - see worker_init
        if self.seen:
            os._exit(128 + signal.SIGTERM)
        self.seen = True


class DataLoadingError(DataError):
    """Loading a training batch failed (a worker raised, or died).

    ``batches_done`` / ``global_step``: where the last finished optimizer step left the epoch (the state a
    checkpoint written now holds); ``None`` when the failure was outside training (evaluation).
    """

    def __init__(self, message: str, *, batches_done: Optional[int] = None, global_step: Optional[int] = None):
        super().__init__(message)
        self.batches_done, self.global_step = batches_done, global_step


_DEATH_MARKERS = ("DataLoader worker (pid", "exited unexpectedly", "is killed by signal")


def is_worker_failure(error: BaseException) -> bool:
    """True for the errors torch raises in the main process when a worker process dies."""
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in _DEATH_MARKERS)



def worker_failure_in(error: BaseException) -> Optional[BaseException]:
    """torch's report of a dead worker in ``error`` or its causes: it is raised from a SIGCHLD handler wherever the
    main process is, so it can surface wrapped (e.g. as the cause of an ImportError inside a C extension's import)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if is_worker_failure(error):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None

def describe_failure(error: BaseException) -> str:
    """One line for a data-loading failure: a worker's exception without torch's re-raised traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:  # torch's ExceptionWrapper: "Caught X in DataLoader worker process N. ..."
        lines = [line for line in text.splitlines() if line.strip()]
        return f"a data worker raised {lines[-1].strip()}"
    if is_worker_failure(error):  # "DataLoader worker (pid 123) is killed by signal: Killed." and the like
        return f"a data worker died ({text.split('. ')[0].rstrip('.')})"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextlib.contextmanager
def worker_deaths_deferred() -> Iterator[None]:
    """Hold SIGCHLD (torch's worker-death check) back for the duration of the block; it fires right after."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
