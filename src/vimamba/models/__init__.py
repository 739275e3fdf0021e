"""Vision Mamba models: the architecture, the registered variants (timm models), checkpoints and position embeddings.

Layers, each importing only those above it: ``vim`` (the network) -> ``variants`` (the table of registered
variants) -> (:mod:`vimamba.checkpoints` reads every checkpoint file) -> ``checkpoint`` (weights into a Vim, with
clear refusals; writing weight files) -> ``weights`` (pretrained weights into a model: timm's checkpoint filter and
the local-file loader) -> ``registry`` (timm entrypoints and pretrained cfgs, ``create_model``). Rebuilding the model
of any checkpoint, whatever its task, is :func:`vimamba.load_model` (:mod:`vimamba.loader`).
"""
from ..checkpoints.reading import read_checkpoint
from .checkpoint import Checkpoint, CheckpointError, LoadReport, load_checkpoint, save_weights
from .pos_embed import resize_pos_embed
from .registry import create_model, list_models, model_config
from .vim import BiMambaMixer, PatchEmbed, RMSNorm, VimBlock, VimConfig, VisionMamba
from .weights import checkpoint_filter_fn

__all__ = [
    "VisionMamba", "VimConfig", "VimBlock", "BiMambaMixer", "RMSNorm", "PatchEmbed",
    "create_model", "list_models", "model_config",
    "load_checkpoint", "read_checkpoint", "save_weights", "Checkpoint", "CheckpointError", "LoadReport",
    "checkpoint_filter_fn", "resize_pos_embed",
]
