"""What an exported model needs beside its graph: task, input preparation, class names, accepted input sizes.

Stored as one JSON document under the key ``"vimamba"``: in an ONNX file's ``metadata_props`` (readable from any
runtime, e.g. ``onnxruntime.InferenceSession(...).get_modelmeta().custom_metadata_map["vimamba"]``), in a
``torch.export`` program's extra file ``vimamba.json``, and in a safetensors file's metadata (as ``vimamba
convert`` writes it). Fields:

==================  ===========================================================================================
``task``            ``"classification"``: input ``images`` (B, C, H, W) float32 -> output ``logits`` (B, classes);
                    ``"segmentation"``: ``images`` -> ``logits`` (B, classes, H, W), one score per pixel and class
``preprocessing``   classification: the :class:`~vimamba.data.Preprocessing` dict (img_size, in_chans, mean, std,
                    interpolation, crop_pct: resize the shorter side to img_size / crop_pct, centre-crop, scale to
                    [0, 1], normalise); segmentation: mean, std and the checkpoint's data settings (rescale
                    ``scale``, ``crop_size``, ``eval_mode``, ``eval_stride``)
``class_names``     the output classes, in order
``input_size``      the (height, width) the graph was traced at (its only size unless ``dynamic``)
``dynamic``         true: any batch size and any image size of at least ``min_size`` pixels per side
``min_size``        the smallest side a dynamic model takes
``size_multiple``   a dynamic model takes sides that are multiples of this (1: any)
``model``           what was exported (for messages)
==================  ===========================================================================================
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple
from ..errors import InputError

__all__ = ["ExportMetadata", "METADATA_KEY", "TASKS"]

METADATA_KEY = "vimamba"
TASKS = ("classification", "segmentation")
FORMAT_VERSION = 1


@dataclass
class ExportMetadata:
    task: str
    preprocessing: Dict[str, Any]
    class_names: List[str]
    input_size: Tuple[int, int]
    dynamic: bool
    min_size: int
    size_multiple: int = 1
    model: str = ""
    version: int = FORMAT_VERSION
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(f"task must be one of {TASKS}, got {self.task!r}")
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))

    def to_json(self) -> str:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: Optional[str], source: str = "the model") -> "ExportMetadata":
        if not text:
            raise InputError(f"{source} carries no vimamba metadata (key '{METADATA_KEY}'): export it with "
                             "`vimamba export`")
        try:
            d = json.loads(text)
            if d.get("version", 0) > FORMAT_VERSION:
                raise InputError(f"metadata version {d['version']} is newer than this vimamba understands")
            d["input_size"] = tuple(d["input_size"])
            return cls(**d)
        except (TypeError, KeyError, json.JSONDecodeError) as e:
            raise InputError(f"the vimamba metadata of {source} is unreadable ({type(e).__name__}: {e})") from e

    def check_size(self, height: int, width: int) -> None:
        """Raise a ValueError unless the graph takes (height, width) images."""
        if self.dynamic:
            if min(height, width) < self.min_size:
                raise InputError(f"images must be at least {self.min_size}x{self.min_size}, got {height}x{width}")
            if height % self.size_multiple or width % self.size_multiple:
                raise InputError(f"image sides must be multiples of {self.size_multiple}, got {height}x{width}")
        elif (height, width) != tuple(self.input_size):
            raise InputError(f"this model was exported for {self.input_size[0]}x{self.input_size[1]} images only "
                             f"(export with --dynamic for any size), got {height}x{width}")
