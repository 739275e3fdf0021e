"""ONNX export: the ExportedProgram of :mod:`vimamba.export.tracing` translated to standard ONNX operators.

The scan operator becomes the blocked scan of :mod:`vimamba.export.onnx_scan`; everything else is translated by
``torch.onnx`` (the dynamo exporter, with ONNX Script). The graph is written unoptimised: onnxruntime optimises it
when it loads it (constant folding, fusions), and the exporter's own optimiser takes minutes on a 24-block model.
The :class:`~vimamba.export.metadata.ExportMetadata` is stored in the model's ``metadata_props``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from ..errors import InputError
from ..io import atomic_write
from .metadata import METADATA_KEY, ExportMetadata

__all__ = ["program_to_onnx", "DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME"]

DEFAULT_OPSET = 18
MIN_OPSET = 18  # Split(num_outputs=), the scan's building block
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def program_to_onnx(program: torch.export.ExportedProgram, path: Union[str, Path], metadata: ExportMetadata,
                    opset: int = DEFAULT_OPSET) -> Path:
    """Write ``program`` as an ONNX model at ``path`` (atomically), with ``metadata`` in its metadata_props."""
    if opset < MIN_OPSET:
        raise InputError(f"--opset {opset}: the exported scan needs opset {MIN_OPSET} or newer")
    from .onnx_scan import bidirectional_scan_onnx

    try:
        onnx_program = torch.onnx.export(
            program, dynamo=True, opset_version=opset, optimize=False, verbose=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            custom_translation_table={torch.ops.vimamba_export.bidirectional_scan.default: bidirectional_scan_onnx},
        )
    except Exception as e:  # the exporter's messages span many lines: keep the first and the cause, chain the rest
        cause = e.__cause__ or e
        reason = next((line for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
        raise RuntimeError(f"the ONNX translation failed: {type(cause).__name__}: {reason.strip()} "
                           "(VIMAMBA_DEBUG=1 shows the details)") from e
    onnx_program.model.metadata_props[METADATA_KEY] = metadata.to_json()
    path = Path(path)
    with atomic_write(path) as tmp:
        onnx_program.save(str(tmp))
    return path
