"""Datasets and preprocessing: image folders (robust to odd and broken files), Fashion-MNIST, CIFAR-10, and the
timm transforms of the DeiT/Vim recipe."""
from .datasets import DATASET_NAMES, DatasetSpec, imagenet_class_names, open_split, resolve_dataset
from .fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, ensure_fashion_mnist, find_fashion_mnist
from .images import DataError, ImageFolderDataset, collate_skipping_unreadable, load_image
from .transforms import Augmentation, Preprocessing, build_eval_transform, build_train_transform

__all__ = [
    "DATASET_NAMES", "DatasetSpec", "resolve_dataset", "open_split", "imagenet_class_names", "FASHION_MNIST_CLASSES",
    "FashionMNIST", "ensure_fashion_mnist", "find_fashion_mnist", "DataError", "ImageFolderDataset",
    "collate_skipping_unreadable", "load_image", "Preprocessing", "Augmentation", "build_train_transform",
    "build_eval_transform",
]
