"""vimamba: Vision Mamba (Vim) in pure PyTorch, faithful to the official checkpoints, fast on CPU and GPU.

    import vimamba
    model = vimamba.create_model("vim_tiny_patch16_224", pretrained="vim_t_midclstok_76p1acc.pth")
    logits = model(images)                      # any image size
    model = vimamba.load_model("runs/exp/best.pth")   # any checkpoint: classifier, segmentor, detector, pretraining

Importing vimamba also registers the models with timm (``timm.create_model("vim_tiny_patch16_224")``).
"""
# models first: vimamba.models reads checkpoints with vimamba.checkpoints, which imports only its leaf modules
from .models import (Checkpoint, CheckpointError, VimConfig, VisionMamba, create_model, list_models,  # isort: skip
                     load_checkpoint, save_weights)
from .checkpoints import RunCheckpoint, read_checkpoint  # isort: skip
from .loader import build_model, load_model  # isort: skip

__version__ = "0.1.0"

__all__ = [
    "VisionMamba", "VimConfig", "create_model", "list_models", "load_model", "load_checkpoint",
    "read_checkpoint", "build_model", "RunCheckpoint", "save_weights", "Checkpoint", "CheckpointError", "__version__",
]
