"""Tiny-ImageNet (200 classes, 64 x 64) from the standard local folder (paper App. A.12).

Layout (the extracted ``tiny-imagenet-200.zip``)::

    tiny-imagenet-200/
        wnids.txt                       200 WordNet ids, one a line
        train/<wnid>/images/*.JPEG      500 per class
        val/images/*.JPEG               10,000 images
        val/val_annotations.txt         "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>" per image

The paper uses the val split as its test set (App. A.12). Images are decoded lazily on access.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import SparsekitError
from ._common import IMAGENET_MEAN, IMAGENET_STD, VISION_HINT, Compose, check_augment, check_root, image_transform

__all__ = ["TinyImageNetDataset", "tiny_imagenet"]

TINY_FOLDER = "tiny-imagenet-200"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_SPLITS = ("train", "val")
_IMAGE_SUFFIXES = (".jpeg", ".jpg")

_LAYOUT = (f"Expected the standard layout: {TINY_FOLDER}/wnids.txt, {TINY_FOLDER}/train/<wnid>/images/*.JPEG, "
           f"{TINY_FOLDER}/val/images/*.JPEG and {TINY_FOLDER}/val/val_annotations.txt (root may be the "
           f"{TINY_FOLDER} folder or its parent). Get it from {TINY_URL} and unzip it; sparsekit never downloads data.")


class TinyImageNetDataset(Dataset):
    """Tiny-ImageNet images as ``(float32 tensor 3 x 64 x 64, int label)``, decoded from JPEG on access.

    Attributes:
        samples: ``(path, label)`` pairs in a deterministic (sorted) order.
        targets: int64 tensor of the labels.
        classes: the WordNet ids, sorted; a label is the index of its wnid here.
        num_classes: ``len(classes)``; input_shape: ``(3, 64, 64)``.
        transform: callable applied to each uint8 ``3 x 64 x 64`` image.
        normalize: the final :class:`ToFloatNormalize` step.
    """

    def __init__(self, samples: list[tuple[Path, int]], *, classes: list[str], split: str, transform: Compose,
                 augment: bool, folder: Path) -> None:
        self.samples = samples
        self.targets = torch.tensor([label for _, label in samples], dtype=torch.int64)
        self.classes = classes
        self.num_classes = len(classes)
        self.input_shape: tuple[int, ...] = (3, 64, 64)
        self.split = split
        self.train = split == "train"
        self.transform = transform
        self.normalize = transform.transforms[-1]
        self.augment = augment
        self.folder = folder
        self.name = "tiny-imagenet"

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> torch.Tensor:
        """The uint8 ``3 x 64 x 64`` RGB image at ``index`` (grayscale files are converted to RGB)."""
        path = self.samples[index][0]
        try:
            from PIL import Image
        except ImportError as e:
            raise ImportError(f"decoding Tiny-ImageNet JPEGs needs Pillow: {VISION_HINT}") from e
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise SparsekitError(f"{path} is not a readable image: {e}") from e
        if arr.shape != (64, 64, 3):
            raise SparsekitError(f"{path} is {arr.shape[1]}x{arr.shape[0]} pixels; Tiny-ImageNet images are 64x64")
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.samples[index][1]

    def __repr__(self) -> str:
        return (f"TinyImageNetDataset(split={self.split}, n={len(self)}, classes={self.num_classes}, "
                f"augment={self.augment}, folder={str(self.folder)!r})")


def _find_folder(root: Path) -> Path:
    for folder in (root, root / TINY_FOLDER):
        if (folder / "wnids.txt").is_file():
            return folder
    raise FileNotFoundError(f"Tiny-ImageNet not found: neither {root / 'wnids.txt'} nor "
                            f"{root / TINY_FOLDER / 'wnids.txt'} exists. {_LAYOUT}")


def _read_wnids(path: Path) -> list[str]:
    wnids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not wnids:
        raise SparsekitError(f"{path} lists no classes; it should hold one WordNet id (e.g. n01443537) a line")
    if len(set(wnids)) != len(wnids):
        raise SparsekitError(f"{path} lists a class more than once")
    return sorted(wnids)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES


def _train_samples(folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    samples: list[tuple[Path, int]] = []
    missing = []
    for label, wnid in enumerate(wnids):
        images_dir = folder / "train" / wnid / "images"
        if not images_dir.is_dir():
            missing.append(str(images_dir))
            continue
        files = sorted(p for p in images_dir.iterdir() if _is_image(p))
        if not files:
            missing.append(f"{images_dir}/*.JPEG")
        samples.extend((p, label) for p in files)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise FileNotFoundError(f"Tiny-ImageNet train split incomplete: missing {shown}. {_LAYOUT}")
    return samples


def _val_samples(folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    ann = folder / "val" / "val_annotations.txt"
    images_dir = folder / "val" / "images"
    if not ann.is_file() or not images_dir.is_dir():
        raise FileNotFoundError(f"Tiny-ImageNet val split not found: need {ann} and {images_dir}/. {_LAYOUT}")
    index = {w: i for i, w in enumerate(wnids)}
    present = {p.name for p in images_dir.iterdir() if _is_image(p)}
    samples: list[tuple[Path, int]] = []
    for lineno, line in enumerate(ann.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise SparsekitError(f"{ann}:{lineno}: expected '<file>\\t<wnid>\\t...', got {line!r}")
        name, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in index:
            raise SparsekitError(f"{ann}:{lineno}: class {wnid!r} is not in wnids.txt")
        if name not in present:
            raise FileNotFoundError(f"{ann}:{lineno} names {images_dir / name}, which does not exist. {_LAYOUT}")
        samples.append((images_dir / name, index[wnid]))
    if not samples:
        raise SparsekitError(f"{ann} lists no images")
    samples.sort(key=lambda s: s[0].name)
    return samples


def tiny_imagenet(root: str | Path, *, split: str = "train", augment: bool | None = None) -> TinyImageNetDataset:
    """Tiny-ImageNet from the standard local folder (paper App. A.12).

    Args:
        root: the ``tiny-imagenet-200`` folder or its parent.
        split: ``"train"`` (100,000 images) or ``"val"`` (10,000 images labelled by
            ``val/val_annotations.txt``; the paper's test set).
        augment: ``None`` applies ``RandomCrop(64, padding=4)`` and a random horizontal flip (needs
            torchvision) to the train split only; ``True``/``False`` force it on/off. Images are then
            scaled to [0, 1] and normalised with the ImageNet :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD`.

    Returns:
        A :class:`TinyImageNetDataset`; labels index the sorted WordNet ids of ``wnids.txt``.

    Raises:
        FileNotFoundError: the layout is not the standard one (the message says what is expected).
        SparsekitError: ``wnids.txt`` or ``val_annotations.txt`` is malformed.
    """
    root_path = check_root(root)
    if not isinstance(split, str):
        raise TypeError(f"split must be 'train' or 'val', got {type(split).__name__} {split!r}")
    if split not in _SPLITS:
        hint = " (Tiny-ImageNet's test images have no labels; the paper tests on val)" if split == "test" else ""
        raise ValueError(f"split must be 'train' or 'val', got {split!r}{hint}")
    augment = check_augment(augment)
    use_aug = (split == "train") if augment is None else augment
    transform = image_transform(64, IMAGENET_MEAN, IMAGENET_STD, augment=use_aug, dataset="Tiny-ImageNet")
    folder = _find_folder(root_path)
    wnids = _read_wnids(folder / "wnids.txt")
    samples = _train_samples(folder, wnids) if split == "train" else _val_samples(folder, wnids)
    return TinyImageNetDataset(samples, classes=wnids, split=split, transform=transform, augment=use_aug,
                               folder=folder)
