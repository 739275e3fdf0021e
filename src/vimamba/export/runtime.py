"""Running an exported ONNX model with onnxruntime, with the preprocessing stored in it.

:func:`load_onnx_classifier` wraps the session as a :class:`~vimamba.train.models.LoadedClassifier`, so
``vimamba predict --onnx model.onnx IMAGES`` prepares images and prints results exactly as with a checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn

from ..errors import InputError, MissingFileError
from .metadata import METADATA_KEY, ExportMetadata

__all__ = ["OnnxModel", "open_session", "read_onnx_metadata", "load_onnx_classifier"]


def open_session(path: Union[str, os.PathLike], threads: Optional[int] = None):
    """An onnxruntime CPU session (all graph optimisations on); ``threads`` intra-op threads (None: onnxruntime's)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"ONNX model not found: '{path}'", path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable / invalid models
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"onnxruntime cannot load '{path}': {reason}") from e


def read_onnx_metadata(session, source: str = "the model") -> ExportMetadata:
    return ExportMetadata.from_json(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), source)


class OnnxModel(nn.Module):
    """An onnxruntime session behaving like the exported module: float tensor (B, C, H, W) in, logits out (CPU)."""

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None):
        super().__init__()
        self.path = str(path)
        self.session = open_session(path, threads)
        self.metadata = read_onnx_metadata(self.session, f"'{path}'")
        self.input_name = self.session.get_inputs()[0].name
        self.num_classes = len(self.metadata.class_names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.metadata.check_size(images.shape[-2], images.shape[-1])
        array = np.ascontiguousarray(images.detach().cpu().float().numpy())
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)


def load_onnx_classifier(path: Union[str, os.PathLike], threads: Optional[int] = None):
    """A :class:`~vimamba.train.models.LoadedClassifier` running the ONNX classifier at ``path`` in onnxruntime."""
    from ..data.transforms import Preprocessing
    from ..train.models import LoadedClassifier

    model = OnnxModel(path, threads)
    meta = model.metadata
    if meta.task != "classification":
        raise InputError(f"'{path}' is a {meta.task} model; `vimamba predict --onnx` takes classifiers")
    return LoadedClassifier(model=model, preprocessing=Preprocessing.from_dict(meta.preprocessing),
                            class_names=list(meta.class_names), description=f"'{path}' (ONNX, {meta.model})")
