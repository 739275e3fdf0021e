"""Vision Mamba models: the architecture, the registry of variants, checkpoints and position embeddings."""
from .checkpoint import (Checkpoint, CheckpointError, LoadReport, load_checkpoint, read_checkpoint,
                         save_weights)
from .pos_embed import resize_pos_embed
from .registry import create_model, data_config, list_models, load_model, model_config
from .vim import BiMambaMixer, PatchEmbed, RMSNorm, VimBlock, VimConfig, VisionMamba

__all__ = [
    "VisionMamba", "VimConfig", "VimBlock", "BiMambaMixer", "RMSNorm", "PatchEmbed",
    "create_model", "list_models", "load_model", "model_config", "data_config",
    "load_checkpoint", "read_checkpoint", "save_weights", "Checkpoint", "CheckpointError", "LoadReport",
    "resize_pos_embed",
]
