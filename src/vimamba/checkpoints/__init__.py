"""Checkpoints: the one format every run writes (:mod:`.format`) and the one loader for every file a user has."""
from .format import (FORMAT, FORMAT_VERSION, TASKS, CheckpointFormatError, is_current_format, load_checkpoint_file,
                     make_checkpoint)

__all__ = ["FORMAT", "FORMAT_VERSION", "TASKS", "CheckpointFormatError", "is_current_format", "load_checkpoint_file",
           "make_checkpoint"]
