"""Evaluation of a checkpoint on a labelled dataset, and top-k prediction on image files.

Both load any classifier checkpoint vimamba knows (:func:`~.models.load_classifier`) and prepare images the way
the checkpoint says (its stored :class:`~vimamba.data.Preprocessing`; for official Vim weights the official
resize-256-bicubic / centre-crop-224 / ImageNet mean-std).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from ..cli_args import check_image_size
from ..data.datasets import DatasetSpec, find_split_dir, imagenet_class_names, open_split, resolve_dataset
from ..data.images import DataError, collate_skipping_unreadable, load_image
from ..data.transforms import Preprocessing, build_eval_transform
from ..data.workers import worker_init
from ..engine.distributed import DistInfo
from .classification import evaluate
from .models import LoadedClassifier
from ..engine.precision import MixedPrecision
from ..engine.sampling import ShardedEvalSampler

__all__ = ["evaluate_classifier", "Prediction", "predict_images", "class_names_for"]


def class_names_for(loaded: LoadedClassifier) -> List[str]:
    """The checkpoint's class names; ImageNet's for 1000-class models without names; else "class i"."""
    num_classes = getattr(loaded.model, "num_classes", 0)
    if loaded.class_names and len(loaded.class_names) == num_classes:
        return list(loaded.class_names)
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class {i}" for i in range(num_classes)]


def _map_folder_classes(spec: DatasetSpec, model_classes: Optional[List[str]], num_classes: int,
                        where: str = "the evaluation folder") -> None:
    """Make folder labels mean the model's classes: by name when the folders are named after them, else by sorted
    order when the counts agree (ImageNet synset folders); refuse otherwise."""
    folders = sorted(spec.class_to_idx, key=spec.class_to_idx.get)
    if model_classes and set(folders) <= set(model_classes):
        spec.class_to_idx = {name: model_classes.index(name) for name in folders}
    elif len(folders) != num_classes:
        if model_classes:
            unknown = [name for name in folders if name not in model_classes]
            names = (f"{len(unknown)} of its folder names are not among the checkpoint's class names: "
                     f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''} (the checkpoint's: {model_classes[:5]}"
                     f"{' ...' if len(model_classes) > 5 else ''})")
        else:
            names = "the checkpoint stores no class names to match the folders by"
        raise DataError(f"cannot evaluate on {where}: it has {len(folders)} class folder(s) and the model predicts "
                        f"{num_classes} classes, and {names}")


def _check_input_size(model: torch.nn.Module, preprocessing: Preprocessing) -> None:
    """Refuse an input size smaller than the model's patch (``--img-size 8`` for 16x16 patches) before any work."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        return
    patch_hw = tuple(patch) if isinstance(patch, (tuple, list)) else (int(patch), int(patch))
    for size, p in zip(preprocessing.img_size, patch_hw):
        check_image_size(int(size), int(p))


def evaluate_classifier(loaded: LoadedClassifier, *, dataset: Optional[str], data: Optional[str],
                        preprocessing: Preprocessing, batch_size: int, workers: int, dist_info: DistInfo,
                        amp: str = "off", strict: bool = False) -> Dict[str, float]:
    """Top-1 / top-5 / loss of a loaded classifier on a dataset's validation split (or a bare image folder)."""
    _check_input_size(loaded.model, preprocessing)
    spec = resolve_dataset(dataset, data, need_train=False)
    num_classes = getattr(loaded.model, "num_classes", 0)
    if spec.class_to_idx:
        split_dir = (find_split_dir(spec.root, "val") or spec.root) if spec.root else None
        _map_folder_classes(spec, loaded.class_names, num_classes, where=f"'{split_dir}'")
    elif spec.num_classes != num_classes:
        raise DataError(f"{spec.describe()} does not match the model's {num_classes} classes")
    val_set = open_split(spec, "val", build_eval_transform(preprocessing), in_chans=preprocessing.in_chans,
                         strict=strict)
    loader = DataLoader(val_set, batch_size=batch_size, num_workers=workers,
                        sampler=ShardedEvalSampler(val_set, dist_info.rank, dist_info.world_size),
                        collate_fn=collate_skipping_unreadable, pin_memory=dist_info.device.type == "cuda",
                        worker_init_fn=worker_init if workers > 0 else None)
    model = loaded.model.to(dist_info.device)
    metrics = evaluate(model, loader, device=dist_info.device, precision=MixedPrecision(amp, dist_info.device))
    metrics["dataset"] = spec.describe()
    return metrics


@dataclass
class Prediction:
    path: str
    top: List[tuple]  # [(class name, probability), ...] best first
    error: Optional[str] = None


@torch.no_grad()
def predict_images(loaded: LoadedClassifier, paths: Sequence[str], *, preprocessing: Preprocessing, top_k: int = 5,
                   device: torch.device = torch.device("cpu"), batch_size: int = 32) -> List[Prediction]:
    """Top-k classes with softmax probabilities for each image file; unreadable files get an ``error`` instead."""
    _check_input_size(loaded.model, preprocessing)
    names = class_names_for(loaded)
    transform = build_eval_transform(preprocessing)
    model = loaded.model.to(device).eval()
    results: List[Prediction] = []
    pending: List[tuple] = []

    def flush() -> None:
        if not pending:
            return
        batch = torch.stack([tensor for _, tensor in pending]).to(device)
        probs = model(batch).float().softmax(dim=-1)
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        for (path, _), v, i in zip(pending, values.tolist(), indices.tolist()):
            results.append(Prediction(path, [(names[c], p) for c, p in zip(i, v)]))
        pending.clear()

    for path in paths:
        try:
            if not Path(path).is_file():
                raise FileNotFoundError("no such file")
            img = load_image(path, preprocessing.image_mode, exif_transpose=True)
        except Exception as e:  # any unreadable file: report it and go on with the others
            flush()
            results.append(Prediction(str(path), [], error=f"{type(e).__name__}: {e}"))
            continue
        pending.append((str(path), transform(img)))
        if len(pending) == batch_size:
            flush()
    flush()
    return results
