"""Datasets from local files for training ER networks (paper §3, App. A.7 and A.12). Nothing is ever downloaded.

* :func:`cifar10`, :func:`cifar100`: the official binary version (read with numpy) or the python
  version (pickles, accepted only with the official md5s or ``trust_pickle=True``, and unpickled with
  an allowlist that can only rebuild numpy arrays).
* :func:`tiny_imagenet`: the standard ``tiny-imagenet-200`` folder; ``split="val"`` is the paper's test set.
* :func:`digits`: scikit-learn's bundled 8 x 8 digits, a real dataset that trains in seconds.
* :func:`synthetic`: seeded, optionally learnable random data for tests and benchmarks.
* :func:`load_data`: a spec string (``"cifar10:/data"``, ``"digits"``, ``"synthetic:n=512"``) -> :class:`DataSpec`.

>>> from sparsekit.data import load_data
>>> spec = load_data("synthetic:n=64,shape=3x8x8")
>>> spec.num_classes, spec.input_shape, len(spec.train), len(spec.test)
(10, (3, 8, 8), 64, 16)

torchvision (``pip install "sparsekit[vision]"``) is imported only where needed: CIFAR/Tiny-ImageNet
augmentation and the official checksum list for python-version CIFAR files.
"""

from __future__ import annotations

from ._cifar import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFARDataset, cifar10, cifar100
from ._common import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LabeledTensorDataset,
    ToFloatNormalize,
)
from ._small import digits, synthetic
from ._spec import SPEC_FORMS, DataSpec, load_data
from ._tiny import TinyImageNetDataset, tiny_imagenet

__all__ = [
    "cifar10",
    "cifar100",
    "tiny_imagenet",
    "digits",
    "synthetic",
    "load_data",
    "DataSpec",
    "SPEC_FORMS",
    "CIFARDataset",
    "TinyImageNetDataset",
    "LabeledTensorDataset",
    "ToFloatNormalize",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
