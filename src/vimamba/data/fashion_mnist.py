"""Fashion-MNIST (Zalando, MIT licence): 60,000 training and 10,000 test images, 28x28 grayscale, 10 classes.

The four gzipped IDX files are looked for, in order, in: the directory given, ``$VIMAMBA_DATA_DIR/fashion-mnist``,
the user cache (``~/.cache/vimamba/fashion-mnist``) and ``/usr/share/datasets/fashion-mnist`` (where the Debian
package ``dataset-fashion-mnist`` installs them). :func:`ensure_fashion_mnist` fetches them when they are nowhere:
``apt-get install dataset-fashion-mnist`` where apt and root are available, else the official download (checked
against the MD5 sums the dataset's README publishes) into the cache; offline it says how to get them.
"""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import InputError
from .images import DataError

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES", "FashionMNIST", "find_fashion_mnist",
           "ensure_fashion_mnist", "read_idx", "default_cache_dir"]

PathLike = Union[str, os.PathLike]

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
# file name -> MD5 of the official download (dataset README); the Debian package recompresses the same data, so its
# .gz files have other sums and are checked by their contents (IDX header and sizes) instead.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
OFFICIAL_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
_SPLITS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
           "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000)}


def default_cache_dir() -> Path:
    """``$VIMAMBA_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/vimamba`` (``~/.cache/vimamba``)."""
    if os.environ.get("VIMAMBA_DATA_DIR"):
        return Path(os.environ["VIMAMBA_DATA_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "vimamba"


def _candidate_dirs(root: Optional[PathLike]) -> List[Path]:
    dirs = [Path(root).expanduser()] if root else []
    dirs += [default_cache_dir() / "fashion-mnist", DEBIAN_DIR]
    return dirs


def find_fashion_mnist(root: Optional[PathLike] = None) -> Optional[Path]:
    """The first candidate directory holding all four files (None if none does)."""
    for directory in _candidate_dirs(root):
        if all((directory / name).is_file() for name in FASHION_MNIST_FILES):
            return directory
    return None


def read_idx(path: PathLike) -> np.ndarray:
    """Read a (gzipped) IDX file: big-endian magic ``0 0 type ndim``, ``ndim`` int32 sizes, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read '{path}': {e}. The file is damaged; delete it and run "
                        "`vimamba data fashion-mnist` to fetch it again.") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"'{path}' is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}i", data[4:header])
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise DataError(f"'{path}' is truncated or damaged: header says {shape} = {expected} bytes, found "
                        f"{len(data) - header}. Delete it and run `vimamba data fashion-mnist` again.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


class FashionMNIST(Dataset):
    """Fashion-MNIST held in memory; items are ``(transform(PIL "L" image), label)``.

    Args:
        root: directory with the four IDX files (None: the default search, see the module docs).
        split: "train" or "test" (also accepted: "val").
        transform: applied to the 28x28 PIL image.
        mode: "L" (1 channel) or "RGB" (the gray value repeated, for 3-channel models).
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(self, root: Optional[PathLike] = None, split: str = "train", transform: Optional[Callable] = None,
                 mode: str = "L"):
        split = {"val": "test"}.get(split, split)
        if split not in _SPLITS:
            raise InputError(f"split must be 'train' or 'test', got {split!r}")
        directory = find_fashion_mnist(root)
        if directory is None:
            raise DataError(_not_found_message(root))
        images_name, labels_name, count = _SPLITS[split]
        images = read_idx(directory / images_name)
        labels = read_idx(directory / labels_name)
        if images.shape != (count, 28, 28) or labels.shape != (count,) or labels.max() >= 10:
            raise DataError(f"'{directory}' does not hold Fashion-MNIST {split} data: images {images.shape}, "
                            f"labels {labels.shape}")
        self.root, self.split, self.transform, self.mode = directory, split, transform, mode
        self.images = torch.from_numpy(images.copy())
        self.targets = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[object, int]:
        img = Image.fromarray(self.images[index].numpy(), mode="L")
        if self.mode != "L":
            img = img.convert(self.mode)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])


# ---------------------------------------------------------------------------------------------------- fetching
def _not_found_message(root: Optional[PathLike]) -> str:
    searched = ", ".join(f"'{d}'" for d in _candidate_dirs(root))
    return (
        f"Fashion-MNIST not found (looked in {searched}). Get it with `vimamba data fashion-mnist` (needs apt as root, "
        f"or network), or on Debian/Ubuntu `sudo apt-get install {DEBIAN_PACKAGE}`, or download the four files "
        f"{', '.join(FASHION_MNIST_FILES)} from {OFFICIAL_MIRROR} into {default_cache_dir() / 'fashion-mnist'} "
        "(or any directory you then pass with --data)."
    )


def _try_apt(log: Callable[[str], None]) -> bool:
    """``apt-get install dataset-fashion-mnist`` when apt-get exists and we are root; True if it worked."""
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    command = ["apt-get", "install", "-y", "--no-install-recommends", DEBIAN_PACKAGE]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing the Debian package {DEBIAN_PACKAGE}: {' '.join(command)}")
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        log("apt-get install failed; refreshing the package lists (apt-get update) and trying again")
        subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        log(f"apt-get could not install {DEBIAN_PACKAGE}: {result.stderr.strip().splitlines()[-1:]}")
        return False
    return all((DEBIAN_DIR / name).is_file() for name in FASHION_MNIST_FILES)


def _download(directory: Path, log: Callable[[str], None]) -> None:
    """The official download, each file checked against its published MD5 (torchvision's downloader)."""
    from torchvision.datasets.utils import check_integrity, download_url

    directory.mkdir(parents=True, exist_ok=True)
    for name, md5 in FASHION_MNIST_FILES.items():
        if check_integrity(str(directory / name), md5):
            continue
        log(f"downloading {OFFICIAL_MIRROR}{name} -> {directory}")
        download_url(OFFICIAL_MIRROR + name, str(directory), filename=name, md5=md5)
        if not check_integrity(str(directory / name), md5):
            (directory / name).unlink(missing_ok=True)
            raise DataError(f"the download of {name} does not match its published MD5 {md5}; try again")


def ensure_fashion_mnist(root: Optional[PathLike] = None, *, download: bool = True,
                         log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)
                         ) -> Path:
    """The directory holding Fashion-MNIST, fetching it first if needed (apt as root, else the official download).

    Raises :class:`DataError` with instructions when it cannot be found or fetched.
    """
    found = find_fashion_mnist(root)
    if found is not None:
        return found
    if not download:
        raise DataError(_not_found_message(root))
    log("Fashion-MNIST is not on this machine; fetching it")
    if _try_apt(log):
        log(f"Fashion-MNIST installed in {DEBIAN_DIR}")
        return DEBIAN_DIR
    target = Path(root).expanduser() if root else default_cache_dir() / "fashion-mnist"
    try:
        _download(target, log)
    except DataError:
        raise
    except Exception as e:  # network errors come in many types (URLError, socket.timeout, HTTP errors, ...)
        raise DataError(f"could not download Fashion-MNIST ({type(e).__name__}: {e}). {_not_found_message(root)}") from e
    log(f"Fashion-MNIST downloaded to {target}")
    return target
