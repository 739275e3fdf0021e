"""Named datasets and image folders, behind one interface: :func:`resolve_dataset` + :func:`open_split`.

=================  ==========================================================================================
``fashion-mnist``  28x28 grayscale, 10 classes; found or fetched by :mod:`vimamba.data.fashion_mnist`
``cifar10``        32x32 RGB, 10 classes; torchvision's downloader (needs network the first time)
``imagenet``       an ImageNet-1k folder (``DIR/train/n01440764/*.JPEG``, ``DIR/val/...``); class names from timm
a directory        any ImageFolder layout ``DIR/train/<class>/*``, ``DIR/val/<class>/*``
=================  ==========================================================================================

Each comes with its native :class:`~vimamba.data.transforms.Preprocessing` (size, channels, mean/std, crop).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from torch.utils.data import Dataset

from ..errors import InputError
from .fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, default_cache_dir, ensure_fashion_mnist
from .images import IMG_EXTENSIONS, DataError, ImageFolderDataset, is_image_folder
from .transforms import Preprocessing

__all__ = ["DATASET_NAMES", "DatasetSpec", "resolve_dataset", "open_split", "imagenet_class_names",
           "find_split_dir"]

PathLike = Union[str, os.PathLike]
DATASET_NAMES = ("fashion-mnist", "cifar10", "imagenet")

_VAL_DIR_NAMES = ("val", "validation", "test")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


@dataclass
class DatasetSpec:
    """A dataset, resolved: where it is, its classes, and its native preprocessing."""

    name: str  # "fashion-mnist", "cifar10", "imagenet" or "folder"
    root: Optional[Path]
    class_names: List[str]
    preprocessing: Preprocessing
    class_to_idx: Dict[str, int] = field(default_factory=dict)  # folder name -> label (folders only)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        where = f" at {self.root}" if self.root else ""
        return f"{self.name}{where} ({self.num_classes} classes)"


def imagenet_class_names(synsets: Optional[List[str]] = None) -> List[str]:
    """Readable ImageNet-1k class names (timm's ImageNetInfo), in label order or for the given synsets."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    if synsets is None:
        return [info.index_to_description(i) for i in range(info.num_classes())]
    return [info.label_name_to_description(s) for s in synsets]


def find_split_dir(root: PathLike, split: str) -> Optional[Path]:
    """``root/train`` for "train"; ``root/val`` (or ``validation``, ``test``) for "val"; None if absent."""
    root = Path(root)
    names = ("train",) if split == "train" else _VAL_DIR_NAMES
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _has_image(folder: Path) -> bool:
    """True as soon as one image file is found under ``folder`` (recursively, as ImageFolder reads it)."""
    for _, _, files in os.walk(folder, followlinks=True):
        if any(os.path.splitext(name)[1].lower() in IMG_EXTENSIONS for name in files):
            return True
    return False


def _folder_classes(split_dir: Path) -> Dict[str, int]:
    """The class index a split's folder defines: one class per sub-folder, sorted; an empty one is an error."""
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise DataError(f"no class folders in '{split_dir}'; expected {split_dir}/<class name>/<images>")
    empty = [name for name in classes if not _has_image(split_dir / name)]
    if empty:
        shown = ", ".join(f"'{split_dir / name}'" for name in empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise DataError(f"{len(empty)} class folder(s) of '{split_dir}' hold no images ({shown}); every class "
                        f"folder must hold at least one image ({', '.join(IMG_EXTENSIONS)}): add images or remove "
                        "the folder")
    return {name: i for i, name in enumerate(classes)}


def resolve_dataset(dataset: Optional[str] = None, data_dir: Optional[PathLike] = None, *,
                    download: bool = True, need_train: bool = True) -> DatasetSpec:
    """Find a dataset by name (``dataset``) or as an image-folder tree (``data_dir``), fetching it if allowed.

    ``data_dir`` with a named dataset is where that dataset lives (IDX files, torchvision root, ImageNet folder).
    For training (``need_train``) the classes of a folder are the sub-folders of ``train/`` (at least 2, none
    empty). ``need_train=False`` (evaluation) takes them from the split evaluated (``val/``, or a bare
    ``<class>/<image>`` folder), so a training split with other classes does not matter.
    """
    name = (dataset or "").lower().replace("_", "-")
    if name in ("fashion-mnist", "fashionmnist", "fmnist"):
        root = ensure_fashion_mnist(data_dir, download=download)
        pre = Preprocessing(img_size=(28, 28), in_chans=1, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
                            interpolation="bilinear", crop_pct=1.0)
        return DatasetSpec("fashion-mnist", root, list(FASHION_MNIST_CLASSES), pre)
    if name in ("cifar10", "cifar-10"):
        from torchvision.datasets import CIFAR10

        root = Path(data_dir) if data_dir else default_cache_dir() / "cifar10"
        pre = Preprocessing(img_size=(32, 32), in_chans=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                            interpolation="bicubic", crop_pct=1.0)
        classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        if download:
            _open_cifar10(CIFAR10, root, train=False, transform=None)  # fetch now, with a clear error offline
        return DatasetSpec("cifar10", root, classes, pre)
    if name not in ("", "imagenet", "folder"):
        raise InputError(f"unknown dataset {dataset!r}; choose one of {DATASET_NAMES} or pass --data DIR")

    # image folders (ImageNet is one)
    if data_dir is None:
        if name == "imagenet":
            raise DataError("ImageNet cannot be downloaded automatically (its licence requires a login); get it from "
                            "https://image-net.org, arrange it as DIR/train/<synset>/*.JPEG and DIR/val/<synset>/*.JPEG"
                            " and pass --data DIR")
        raise InputError("pass --data DIR (an image folder) or --dataset NAME")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data directory not found: '{root}'")
    train_dir, val_dir = find_split_dir(root, "train"), find_split_dir(root, "val")
    if train_dir is None and need_train:
        raise DataError(f"'{root}' has no train/ folder; expected {root}/train/<class>/<images> and "
                        f"{root}/val/<class>/<images>")
    if train_dir is not None and val_dir is None:
        raise DataError(f"'{root}' has no val/ folder to evaluate on; move some images of each class to "
                        f"{root}/val/<class>/")
    if need_train:  # training: the training split defines the classes (a validation split may lack some)
        class_to_idx = _folder_classes(train_dir)
        if len(class_to_idx) < 2:
            raise DataError(f"'{train_dir}' has {len(class_to_idx)} class folder ({', '.join(class_to_idx)}); "
                            "a classifier needs at least 2 classes (one folder per class)")
    else:  # evaluation: the split evaluated defines its classes (the validation folder, or a bare one)
        val_dir = val_dir or root
        if not is_image_folder(val_dir):
            raise DataError(f"'{val_dir}' is not an image folder; expected {val_dir}/<class>/<images>")
        class_to_idx = _folder_classes(val_dir)
    folder_names = sorted(class_to_idx, key=class_to_idx.get)
    is_imagenet = name == "imagenet" or (len(folder_names) == 1000 and all(n.startswith("n") for n in folder_names))
    if is_imagenet:
        try:
            class_names = imagenet_class_names(folder_names)
        except (KeyError, ValueError, IndexError):
            class_names = folder_names
    else:
        class_names = folder_names
    return DatasetSpec("imagenet" if is_imagenet else "folder", root, class_names, Preprocessing(),
                       class_to_idx=class_to_idx)


def _open_cifar10(cls, root: Path, train: bool, transform):
    try:
        return cls(str(root), train=train, transform=transform, download=not _cifar_present(root))
    except Exception as e:  # offline: URLError and friends
        raise DataError(f"could not get CIFAR-10 into '{root}' ({type(e).__name__}: {e}); it needs network the first "
                        "time (or put the extracted cifar-10-batches-py folder there)") from e


class _ConvertThen:
    """Convert a PIL image to ``mode``, then apply ``transform`` (a picklable class, for DataLoader workers)."""

    def __init__(self, mode: str, transform: Optional[Callable]):
        self.mode, self.transform = mode, transform

    def __call__(self, img):
        img = img.convert(self.mode)
        return self.transform(img) if self.transform is not None else img


def _cifar_present(root: Path) -> bool:
    return (root / "cifar-10-batches-py" / "data_batch_1").is_file()


def open_split(spec: DatasetSpec, split: str, transform: Optional[Callable] = None, *, in_chans: Optional[int] = None,
               strict: bool = False) -> Dataset:
    """The ``split`` ("train" or "val") of a resolved dataset, images converted for ``in_chans`` channels."""
    if split not in ("train", "val"):
        raise InputError(f"split must be 'train' or 'val', got {split!r}")
    in_chans = in_chans or spec.preprocessing.in_chans
    mode = "L" if in_chans == 1 else "RGB"
    if spec.name == "fashion-mnist":
        return FashionMNIST(spec.root, split="train" if split == "train" else "test", transform=transform, mode=mode)
    if spec.name == "cifar10":
        from torchvision.datasets import CIFAR10

        return _open_cifar10(CIFAR10, spec.root, train=split == "train", transform=_ConvertThen(mode, transform))
    directory = find_split_dir(spec.root, split) if spec.root else None
    if directory is None:
        directory = spec.root  # a bare <class>/<image> folder used for evaluation
    return ImageFolderDataset(directory, transform, mode=mode, strict=strict, class_to_idx=spec.class_to_idx or None)
