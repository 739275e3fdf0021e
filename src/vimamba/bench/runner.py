"""Run each configuration in its own child process, so that one configuration's memory, allocator caches or crash
cannot affect the next, and an out-of-memory kill takes down only that configuration. A child ends when its
parent does, however the parent ends.

Children come from a multiprocessing *forkserver* that has imported torch, timm and vimamba once: a child starts in
milliseconds instead of re-importing them (seconds), and it is forked from a process that has never run a
PyTorch kernel (no OpenMP or CUDA state to inherit). A child killed by the operating system (SIGKILL, which is
what Linux's out-of-memory killer sends) is reported as OOM; one that outlives ``timeout_s`` as "timeout".
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import traceback
from typing import Optional

from .measure import Configuration, Measurement, run_configuration

__all__ = ["run_isolated"]

_PRELOAD = ["torch", "timm", "vimamba", "vimamba.bench.measure"]


def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _exit_with_parent(parent_alive) -> None:
    """End this process as soon as the parent is gone (its end of ``parent_alive`` closes), even mid-computation:
    a parent killed by a signal must not leave a configuration running on the machine."""
    def watch() -> None:
        try:
            parent_alive.recv()
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="vimamba-bench-watchdog", daemon=True).start()


def _child(connection, parent_alive, config: Configuration) -> None:
    _exit_with_parent(parent_alive)
    try:
        connection.send(("result", run_configuration(config)))
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent as text
        connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_isolated(config: Configuration, timeout_s: Optional[float] = None) -> Measurement:
    """Measure ``config`` in a fresh child process; failures become a Measurement with a non-"ok" status.

    As with any multiprocessing code, a script calling this must do so under ``if __name__ == "__main__":``.
    """
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    alive_receiver, alive_sender = context.Pipe(duplex=False)  # nothing is ever sent: only its closing matters
    process = context.Process(target=_child, args=(sender, alive_receiver, config),
                              name=f"vimamba-bench {config.label}", daemon=True)
    process.start()
    sender.close()
    alive_receiver.close()
    reply = None
    try:
        if receiver.poll(timeout_s):
            try:
                reply = receiver.recv()
            except EOFError:  # the child died without a word
                pass
        else:
            process.kill()
            process.join()
            return Measurement.for_configuration(
                config, status="timeout", message=f"no result within --timeout {timeout_s:g} s; the process was killed")
        process.join()
    except BaseException:  # KeyboardInterrupt included: never leave the child running
        process.kill()
        process.join()
        raise
    finally:
        receiver.close()
        alive_sender.close()

    if reply is not None and reply[0] == "result":
        return reply[1]
    if reply is not None:  # an exception other than an allocation failure
        trace = reply[1].rstrip()
        if os.environ.get("VIMAMBA_DEBUG"):
            print(trace, file=sys.stderr)
        return Measurement.for_configuration(config, status="error", message=trace.splitlines()[-1])
    code = process.exitcode
    if code == -signal.SIGKILL:
        return Measurement.for_configuration(
            config, status="oom", message="killed by SIGKILL, most likely by the operating system's out-of-memory "
                                          "killer (use --max-memory-gb to fail cleanly before that)")
    if code is not None and code < 0:
        return Measurement.for_configuration(config, status="error", message=f"crashed ({_signal_name(-code)})")
    return Measurement.for_configuration(config, status="error", message=f"the process exited with code {code}")
