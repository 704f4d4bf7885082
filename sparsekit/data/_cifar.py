"""CIFAR-10 / CIFAR-100 from the official local files (paper §3, App. A.7); nothing is downloaded.

Two on-disk versions are understood:

* the **binary version** (``cifar-10-batches-bin/``, ``cifar-100-binary/``): fixed-size records read
  with numpy, no unpickling. Preferred when both are present.
* the **python version** (``cifar-10-batches-py/``, ``cifar-100-python/``): pickles. They are loaded
  only if every file's md5 equals the official checksum (torchvision's ``CIFAR10``/``CIFAR100``
  ``train_list``/``test_list``) or the caller passes ``trust_pickle=True``; even then they go
  through an unpickler that can only rebuild numpy arrays and builtin containers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import SparsekitError, UnsafeFileError
from ._common import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    VISION_HINT,
    Compose,
    check_augment,
    check_bool,
    check_root,
    image_transform,
)
from ._safe_pickle import safe_load

__all__ = ["CIFARDataset", "cifar10", "cifar100", "CIFAR10_CLASSES", "CIFAR100_CLASSES"]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_IMAGE_BYTES = 3 * 32 * 32

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Fine label names in label order (the official meta file lists them alphabetically).
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


@dataclass(frozen=True)
class _Variant:
    name: str  # "cifar10"
    title: str  # "CIFAR-10"
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bin_folder: str
    bin_train: tuple[str, ...]
    bin_test: tuple[str, ...]
    label_bytes: int  # per binary record, before the image; the last one is the label we use
    py_folder: str
    py_train: tuple[str, ...]
    py_test: tuple[str, ...]
    py_label_key: str
    tv_class: str  # torchvision.datasets class holding the official md5s


_CIFAR10 = _Variant(
    "cifar10", "CIFAR-10", CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD,
    "cifar-10-batches-bin", tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), 1,
    "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels",
    "CIFAR10",
)
_CIFAR100 = _Variant(
    "cifar100", "CIFAR-100", CIFAR100_CLASSES, CIFAR100_MEAN, CIFAR100_STD,
    "cifar-100-binary", ("train.bin",), ("test.bin",), 2,
    "cifar-100-python", ("train",), ("test",), "fine_labels",
    "CIFAR100",
)


class CIFARDataset(Dataset):
    """CIFAR images held in memory as a uint8 tensor ``N x 3 x 32 x 32`` with int64 labels.

    ``dataset[i]`` is ``(transform(data[i]), int(targets[i]))``; with the default transform that is a
    float32 ``3 x 32 x 32`` tensor normalised with the dataset's per-channel mean/std.

    Attributes:
        data: uint8 tensor ``N x 3 x 32 x 32`` (channels R, G, B).
        targets: int64 tensor ``N`` (CIFAR-100: the fine label).
        classes: class names in label order; ``num_classes == len(classes)``.
        input_shape: ``(3, 32, 32)``.
        transform: callable applied to each uint8 image (replace it freely).
        normalize: the final :class:`ToFloatNormalize` step (``normalize.unnormalize`` inverts it).
        augment: whether the random crop/flip is on.
        source_format: ``"binary"`` or ``"python"``; ``folder``: where the files were read.
    """

    def __init__(self, data: torch.Tensor, targets: torch.Tensor, *, name: str, classes: tuple[str, ...],
                 train: bool, transform: Compose, augment: bool, source_format: str, folder: Path) -> None:
        self.data = data
        self.targets = targets
        self.name = name
        self.classes = list(classes)
        self.num_classes = len(classes)
        self.input_shape: tuple[int, ...] = (3, 32, 32)
        self.train = train
        self.transform = transform
        self.normalize = transform.transforms[-1]
        self.augment = augment
        self.source_format = source_format
        self.folder = folder

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.data[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return (f"CIFARDataset({self.name}, split={split}, n={len(self)}, format={self.source_format}, "
                f"augment={self.augment}, folder={str(self.folder)!r})")


# --------------------------------------------------------------------------------------------- locating
def _locate(root: Path, v: _Variant, train: bool) -> tuple[str, Path, tuple[str, ...]]:
    """``(format, folder, file names)`` for the first complete candidate, binary before python."""
    bin_files = v.bin_train if train else v.bin_test
    py_files = v.py_train if train else v.py_test
    # The root-itself python candidate goes last: CIFAR-100's python files are plainly named "train"/"test".
    candidates = [("binary", root, bin_files), ("binary", root / v.bin_folder, bin_files),
                  ("python", root / v.py_folder, py_files), ("python", root, py_files)]
    for fmt, folder, files in candidates:
        if folder.is_dir() and all((folder / f).is_file() for f in files):
            return fmt, folder, files
    split = "train" if train else "test"
    base = root.parent if root.name in (v.bin_folder, v.py_folder) else root

    def option(label: str, folder: Path, files: tuple[str, ...]) -> str:
        missing = [f if not (folder / f).exists() else f"{f} (exists but is not a regular file)"
                   for f in files if not (folder / f).is_file()]
        state = f" (folder exists; missing: {', '.join(missing)})" if folder.is_dir() else " (folder does not exist)"
        return f"  - {label}: {folder}/ containing {', '.join(files)}{state}"

    lines = [f"{v.title} {split} files not found under {root}. Expected either",
             option("the binary version (preferred, read without unpickling)", base / v.bin_folder, bin_files),
             option("or the python version", base / v.py_folder, py_files),
             f"Get the '{v.title} binary version' archive from {CIFAR_URL} and extract it into {base} "
             "(root may be that folder or the extracted folder itself). sparsekit never downloads data."]
    raise FileNotFoundError("\n".join(lines))


# ---------------------------------------------------------------------------------------------- readers
def _read_binary(folder: Path, files: tuple[str, ...], v: _Variant) -> tuple[np.ndarray, np.ndarray]:
    record = v.label_bytes + _IMAGE_BYTES
    images, labels = [], []
    for f in files:
        path = folder / f
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise SparsekitError(
                f"{path} is not a {v.title} binary batch: its size {raw.size} bytes is not a positive multiple of "
                f"the {record}-byte record ({v.label_bytes} label byte(s) + {_IMAGE_BYTES} pixels); "
                f"is it truncated, or the other CIFAR variant? Re-extract it from {CIFAR_URL}")
        rec = raw.reshape(-1, record)
        lab = rec[:, v.label_bytes - 1].astype(np.int64)
        if v.label_bytes == 2 and rec[:, 0].max() >= 20:
            raise SparsekitError(f"{path}: coarse label {int(rec[:, 0].max())} out of range [0, 20); "
                                 f"not a {v.title} binary batch")
        _check_labels(lab, v, path)
        images.append(rec[:, v.label_bytes:])
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


def _check_labels(lab: np.ndarray, v: _Variant, path: Path) -> None:
    if lab.size and (lab.min() < 0 or lab.max() >= len(v.classes)):
        bad = int(lab.max()) if lab.max() >= len(v.classes) else int(lab.min())
        raise SparsekitError(f"{path}: label {bad} out of range [0, {len(v.classes)}); not a {v.title} batch")


def _official_md5(v: _Variant, train: bool) -> dict[str, str]:
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise ImportError(
            f"checking the {v.title} python-version files against the official checksums needs torchvision: "
            f"{VISION_HINT}. Alternatives: use the binary version (read without unpickling), or pass "
            "trust_pickle=True (CLI: --trust-pickle) if you trust the files.") from e
    cls = getattr(tvd, v.tv_class)
    return {str(name): str(md5) for name, md5 in (cls.train_list if train else cls.test_list)}


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify_python_files(folder: Path, files: tuple[str, ...], v: _Variant, train: bool) -> None:
    official = _official_md5(v, train)
    bad = []
    for f in files:
        expected = official.get(f)
        got = _md5(folder / f)
        if got != expected:
            bad.append(f"{f} (md5 {got}, official {expected})")
    if bad:
        raise UnsafeFileError(
            f"the {v.title} python-version files in {folder} do not match the official checksums: {'; '.join(bad)}. "
            "They are pickles, and unpickling an untrusted file can run arbitrary code, so they were not loaded. "
            "If you trust them, pass trust_pickle=True (CLI: --trust-pickle); better, use the binary version "
            f"({v.bin_folder}/ from {CIFAR_URL}), which is read without unpickling.")


def _get(entry: dict[Any, Any], key: str) -> Any:
    if key in entry:
        return entry[key]
    return entry.get(key.encode("latin1"))


def _read_python(folder: Path, files: tuple[str, ...], v: _Variant) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for f in files:
        path = folder / f
        entry = safe_load(path, what=f"{v.title} python batch")
        data = _get(entry, "data") if isinstance(entry, dict) else None
        lab = _get(entry, v.py_label_key) if isinstance(entry, dict) else None
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != _IMAGE_BYTES or not isinstance(lab, (list, np.ndarray)):
            raise SparsekitError(
                f"{path} is not a {v.title} python batch: expected a dict with 'data' (uint8 array N x {_IMAGE_BYTES}) "
                f"and '{v.py_label_key}' (list of N ints)")
        try:
            lab_arr = np.asarray(lab, dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as e:
            raise SparsekitError(f"{path}: '{v.py_label_key}' is not a list of ints") from e
        if lab_arr.shape != (data.shape[0],):
            raise SparsekitError(f"{path}: {data.shape[0]} images but {lab_arr.size} labels")
        _check_labels(lab_arr, v, path)
        images.append(data)
        labels.append(lab_arr)
    return np.concatenate(images), np.concatenate(labels)


def _load(v: _Variant, root: Any, train: Any, augment: Any, trust_pickle: Any) -> CIFARDataset:
    root_path = check_root(root)
    train = check_bool(train, "train")
    augment = check_augment(augment)
    trust_pickle = check_bool(trust_pickle, "trust_pickle")
    use_aug = train if augment is None else augment
    # Build the transform first: a missing torchvision fails before reading 150 MB.
    transform = image_transform(32, v.mean, v.std, augment=use_aug, dataset=v.title)
    fmt, folder, files = _locate(root_path, v, train)
    if fmt == "binary":
        images, labels = _read_binary(folder, files, v)
    else:
        if not trust_pickle:
            _verify_python_files(folder, files, v, train)
        images, labels = _read_python(folder, files, v)
    data = torch.from_numpy(np.ascontiguousarray(images).reshape(-1, 3, 32, 32))
    targets = torch.from_numpy(labels.astype(np.int64, copy=False))
    return CIFARDataset(data, targets, name=v.name, classes=v.classes, train=train, transform=transform,
                        augment=use_aug, source_format=fmt, folder=folder)


def cifar10(root: str | Path, *, train: bool = True, augment: bool | None = None,
            trust_pickle: bool = False) -> CIFARDataset:
    """CIFAR-10 from local files (the paper's main benchmark, §3 and App. A.7).

    Args:
        root: the folder holding ``cifar-10-batches-bin/`` (or ``cifar-10-batches-py/``), or that folder itself.
        train: the 50,000-image training split (``data_batch_1..5``) or the 10,000-image test split.
        augment: ``None`` applies the standard augmentation (``RandomCrop(32, padding=4)`` and a random
            horizontal flip, needs torchvision) to the training split only; ``True``/``False`` force it on/off.
            Every sample is then scaled to [0, 1] and normalised with :data:`CIFAR10_MEAN`/:data:`CIFAR10_STD`.
        trust_pickle: load python-version files whose md5 differs from the official checksum. They are
            still unpickled with an allowlist that only rebuilds numpy arrays.

    Returns:
        A :class:`CIFARDataset` yielding ``(float32 tensor 3 x 32 x 32, int label)``.

    Raises:
        FileNotFoundError: the files are missing (the message names them and where to get them).
        UnsafeFileError: python-version files do not match the official checksums and ``trust_pickle`` is
            False, or a pickle asks for anything but numpy arrays.
        SparsekitError: a file is truncated or not a CIFAR-10 batch.
        ImportError: augmentation (or the checksum list) needs torchvision: ``pip install "sparsekit[vision]"``.
    """
    return _load(_CIFAR10, root, train, augment, trust_pickle)


def cifar100(root: str | Path, *, train: bool = True, augment: bool | None = None,
             trust_pickle: bool = False) -> CIFARDataset:
    """CIFAR-100 from local files (paper §3, App. A.7), labelled with the 100 fine classes.

    Args:
        root: the folder holding ``cifar-100-binary/`` (or ``cifar-100-python/``), or that folder itself.
        train: the 50,000-image training split (``train.bin``) or the 10,000-image test split (``test.bin``).
        augment: as in :func:`cifar10`; normalisation uses :data:`CIFAR100_MEAN`/:data:`CIFAR100_STD`.
        trust_pickle: as in :func:`cifar10`.

    Returns:
        A :class:`CIFARDataset` yielding ``(float32 tensor 3 x 32 x 32, int fine label)``.

    Raises:
        FileNotFoundError, UnsafeFileError, SparsekitError, ImportError: as in :func:`cifar10`.
    """
    return _load(_CIFAR100, root, train, augment, trust_pickle)
