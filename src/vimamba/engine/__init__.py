"""The one training engine: a step-counted loop that trains any :class:`~vimamba.engine.task.Task`.

* :mod:`.task`     the contract a task implements (:class:`Task`, :class:`StepOutput`)
* :mod:`.config`   :class:`EngineConfig` and the one generator of command-line flags from config dataclasses
* :mod:`.loop`     :func:`run`: distributed setup, precision, optimiser and schedule, EMA, checkpoints, resume,
  signals, progress, ``metrics.jsonl``, curves and the summary

Building blocks the loop uses (also usable on their own): :mod:`.distributed`, :mod:`.precision`, :mod:`.optim`,
:mod:`.sampling`, :mod:`.checkpointing`, :mod:`.reporting`.
"""
from .config import EngineConfig
from .loop import RunResult, run
from .task import StepOutput, Task

__all__ = ["StepOutput", "Task", "EngineConfig", "run", "RunResult"]
