"""Export of Vim classifiers and segmentors: ONNX (onnxruntime), ``torch.export`` programs, safetensors.

Modules: :mod:`.scan` (the selective scan as a blocked recurrence with a fixed number of steps for any length),
:mod:`.scan_op` (that scan as one operator for tracing), :mod:`.onnx_scan` (its ONNX operators),
:mod:`.traceable` (the model's traceable form), :mod:`.tracing` (``torch.export``), :mod:`.onnx_export`,
:mod:`.metadata` (preprocessing and classes stored beside the graph), :mod:`.loading` (which checkpoints export),
:mod:`.exporter` (``vimamba export``), :mod:`.runtime` (onnxruntime sessions, ``vimamba predict --onnx``).
Importing this package registers the ``vimamba_export::bidirectional_scan`` operator that programs saved with
``--format torch-export`` call.
"""
from __future__ import annotations

from . import scan_op  # noqa: F401  (registers torch.ops.vimamba_export.bidirectional_scan)
from .exporter import FORMATS, export_checkpoint, load_program
from .metadata import ExportMetadata

__all__ = ["export_checkpoint", "load_program", "ExportMetadata", "FORMATS"]
