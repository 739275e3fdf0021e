"""Checkpoints: the one format every run writes (:mod:`.format`) and reading any file a user has into one description
(:mod:`.reading`; :mod:`.state_dicts` reads the weights inside official files and bare state_dicts).

This package builds no model and imports no task package (only the leaf modules of :mod:`vimamba.models`: the
network's config and the variant table), so every task can read checkpoints with it. Rebuilding the model of a
checkpoint, whatever its task, is :mod:`vimamba.loader`'s job.
"""
from .format import (FORMAT, FORMAT_VERSION, TASKS, CheckpointFormatError, is_current_format, load_checkpoint_file,
                     make_checkpoint)
from .reading import SOURCE_FORMATS, RunCheckpoint, check_task, read_checkpoint, vim_arch

__all__ = ["FORMAT", "FORMAT_VERSION", "TASKS", "CheckpointFormatError", "is_current_format", "load_checkpoint_file",
           "make_checkpoint", "SOURCE_FORMATS", "RunCheckpoint", "read_checkpoint", "check_task", "vim_arch"]
