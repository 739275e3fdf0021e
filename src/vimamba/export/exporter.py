"""``vimamba export``: a checkpoint -> an ONNX model, a ``torch.export`` program or safetensors weights.

=================  ==========================================================================================
``onnx``           standard ONNX operators (the scan as a blocked recurrence), metadata in ``metadata_props``;
                   runs in onnxruntime on any CPU (``vimamba predict --onnx``)
``torch-export``   a ``torch.export`` ExportedProgram (``.pt2``) holding one ``vimamba_export::bidirectional_scan``
                   operator per mixer (``import vimamba.export`` before ``torch.export.load``); metadata in its
                   extra file ``vimamba.json``
``safetensors``    the classifier's weights with config, class names and preprocessing (as ``vimamba convert``)
=================  ==========================================================================================

The ONNX model / program take any batch size; with ``dynamic`` also any image size (the position embedding is
resized inside the graph), otherwise the size they were traced at (``img_size``, default the checkpoint's).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch

from ..errors import InputError, MissingFileError
from ..io import atomic_write
from ..models.checkpoint import CheckpointError
from .loading import Exportable, load_exportable
from .metadata import ExportMetadata

__all__ = ["export_checkpoint", "FORMATS", "load_program", "PROGRAM_METADATA_FILE"]

FORMATS = ("onnx", "torch-export", "safetensors")
PROGRAM_METADATA_FILE = "vimamba.json"


def _size(img_size: Optional[Sequence[int]], default: Tuple[int, int]) -> Tuple[int, int]:
    if not img_size:
        return default
    if len(img_size) == 1:
        return (int(img_size[0]), int(img_size[0]))
    if len(img_size) == 2:
        return (int(img_size[0]), int(img_size[1]))
    raise InputError(f"--img-size takes one size or height and width, got {list(img_size)}")


def metadata_for(item: Exportable, size: Tuple[int, int], dynamic: bool) -> ExportMetadata:
    preprocessing = dict(item.preprocessing)
    if item.task == "classification":
        preprocessing["img_size"] = list(size)
    return ExportMetadata(task=item.task, preprocessing=preprocessing, class_names=list(item.class_names),
                          input_size=size, dynamic=dynamic, min_size=item.min_size,
                          size_multiple=item.size_multiple if dynamic else 1, model=item.description)


def export_checkpoint(checkpoint: Union[str, os.PathLike], output: Union[str, os.PathLike], fmt: str = "onnx", *,
                      dynamic: bool = False, img_size: Optional[Sequence[int]] = None, opset: Optional[int] = None,
                      weights: str = "auto", trust_pickle: bool = False) -> Tuple[Path, ExportMetadata]:
    """Export ``checkpoint`` to ``output`` in format ``fmt``; returns the path written and its metadata."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    item = load_exportable(checkpoint, weights=weights, trust_pickle=trust_pickle)
    size = _size(img_size, item.native_size)
    if dynamic and (min(size) < item.min_size or size[0] % item.size_multiple or size[1] % item.size_multiple):
        if img_size:
            raise InputError(f"--dynamic traces at a size of at least {item.min_size} per side, a multiple of "
                             f"{item.size_multiple}; --img-size {size[0]}x{size[1]} is not")
        size = tuple(max(-(-s // item.size_multiple) * item.size_multiple, item.min_size) for s in size)
    if min(size) < item.min_size:
        raise InputError(f"--img-size {size[0]}x{size[1]} is smaller than {item.min_size}x{item.min_size}")
    metadata = metadata_for(item, size, dynamic)
    output = Path(output)
    if fmt == "safetensors":
        if item.task != "classification":
            raise CheckpointError("--format safetensors writes classifier weights; a segmentation checkpoint "
                                  "exports to onnx or torch-export")
        if output.suffix != ".safetensors":
            raise InputError(f"--format safetensors writes a .safetensors file, not '{output.name}'")
        from ..models.checkpoint import save_weights

        return save_weights(item.model, output, class_names=item.class_names,
                            preprocessing=metadata.preprocessing), metadata

    from .tracing import export_program

    program = export_program(item.model, item.in_chans, size, dynamic, item.min_size, item.size_multiple)
    if fmt == "torch-export":
        with atomic_write(output) as tmp:
            torch.export.save(program, tmp, extra_files={PROGRAM_METADATA_FILE: metadata.to_json()})
        return output, metadata
    from .onnx_export import DEFAULT_OPSET, program_to_onnx

    return program_to_onnx(program, output, metadata, opset or DEFAULT_OPSET), metadata


def load_program(path: Union[str, os.PathLike]) -> Tuple[torch.export.ExportedProgram, ExportMetadata]:
    """(program, metadata) of a ``vimamba export --format torch-export`` file; ``program.module()`` runs it."""
    from . import scan_op  # noqa: F401  registers the scan operator the program calls

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"program not found: '{path}'", path)
    extra = {PROGRAM_METADATA_FILE: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as e:
        raise InputError(f"cannot load '{path}' as a torch.export program ({type(e).__name__}: {e})") from e
    return program, ExportMetadata.from_json(extra[PROGRAM_METADATA_FILE], f"'{path}'")
