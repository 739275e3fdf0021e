"""Checkpoints: the one format every run writes (:mod:`.format`) and the one loader for every file a user has
(:mod:`.loading`; :mod:`.state_dicts` reads the weights inside official files and bare state_dicts).

This package imports only the leaf modules of :mod:`vimamba.models` (the network, the variant table, position
embeddings); the model builders are imported when a model is built, so ``vimamba.models`` can use the loader.
"""
from .format import (FORMAT, FORMAT_VERSION, TASKS, CheckpointFormatError, is_current_format, load_checkpoint_file,
                     make_checkpoint)
from .loading import (SOURCE_FORMATS, RunCheckpoint, build_model, dense_config, load_model, pretraining_checkpoint,
                      read_checkpoint, vim_arch)

__all__ = ["FORMAT", "FORMAT_VERSION", "TASKS", "CheckpointFormatError", "is_current_format", "load_checkpoint_file",
           "make_checkpoint", "SOURCE_FORMATS", "RunCheckpoint", "read_checkpoint", "build_model", "load_model",
           "dense_config", "pretraining_checkpoint", "vim_arch"]
