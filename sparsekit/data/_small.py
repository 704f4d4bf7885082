"""Small in-process datasets: scikit-learn's bundled digits and seeded synthetic data (no files, no downloads)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ._common import LabeledTensorDataset, check_bool, check_int, check_shape

__all__ = ["digits", "synthetic"]

_DIGITS_N = 1797
_DIGITS_CLASSES = 10


def _check_test_size(test_size: object) -> float | int:
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise TypeError(f"test_size must be a fraction in (0, 1) or a number of samples, "
                        f"got {type(test_size).__name__} {test_size!r}")
    if isinstance(test_size, float):
        if not (math.isfinite(test_size) and 0.0 < test_size < 1.0):
            raise ValueError(f"test_size must be a fraction in (0, 1) or an int count, got {test_size!r}")
        n_test = math.ceil(test_size * _DIGITS_N)
    else:
        n_test = int(test_size)
    if not _DIGITS_CLASSES <= n_test <= _DIGITS_N - _DIGITS_CLASSES:
        raise ValueError(f"test_size={test_size!r} gives {n_test} test samples; a stratified split of the "
                         f"{_DIGITS_N} digits needs between {_DIGITS_CLASSES} and {_DIGITS_N - _DIGITS_CLASSES}")
    return test_size


def digits(*, train: bool = True, test_size: float | int = 0.2, seed: int = 0, flat: bool = True
           ) -> LabeledTensorDataset:
    """scikit-learn's bundled handwritten digits (1,797 real 8 x 8 images, 10 classes; nothing is downloaded).

    A quick real-data stand-in for the paper's image benchmarks (§3) that trains in seconds on a CPU.
    The split is ``train_test_split(test_size=test_size, random_state=seed, stratify=y)``, so
    ``test_size=0.2`` gives 1,437 train and 360 test samples with the class proportions kept.

    Preprocessing: pixels (0..16) are divided by 16, then standardised **per pixel** with the mean and
    std of the *training* split (population std, as ``sklearn.preprocessing.StandardScaler``); pixels
    that are constant in the training split (std < 1e-8, e.g. the always-blank corners) are only
    centred (their std is taken as 1), so no feature is blown up by a tiny divisor. Both splits use
    the training statistics, available as ``dataset.feature_mean`` / ``dataset.feature_std`` (64 each).

    Args:
        train: the training split, else the test split.
        test_size: fraction in (0, 1) or number of test samples (sklearn semantics).
        seed: ``random_state`` of the split, an int in [0, 2**32 - 1].
        flat: features of shape ``(64,)`` if True, images ``(1, 8, 8)`` if False.

    Returns:
        A ``TensorDataset`` of (float32 features, int64 labels) with ``num_classes == 10`` and ``input_shape``.

    Raises:
        ImportError: scikit-learn is not installed (``pip install scikit-learn``).
    """
    train = check_bool(train, "train")
    test_size = _check_test_size(test_size)
    seed = check_int(seed, "seed", low=0, high=2**32 - 1)
    flat = check_bool(flat, "flat")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ImportError("digits() needs scikit-learn (its bundled digits images): pip install scikit-learn") from e
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std = np.where(std < 1e-8, 1.0, std)
    xs, ys = (x_tr, y_tr) if train else (x_te, y_te)
    feats = torch.from_numpy(((xs - mean) / std).astype(np.float32))
    if not flat:
        feats = feats.reshape(-1, 1, 8, 8)
    ds = LabeledTensorDataset(feats, torch.from_numpy(np.ascontiguousarray(ys)), num_classes=_DIGITS_CLASSES,
                              name="digits")
    ds.classes = [str(i) for i in range(_DIGITS_CLASSES)]
    ds.feature_mean = torch.from_numpy(mean.astype(np.float32))
    ds.feature_std = torch.from_numpy(std.astype(np.float32))
    ds.train = train
    return ds


def synthetic(n: int = 1024, *, shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10, seed: int = 0,
              learnable: bool = True, train: bool = True, noise: float = 1.0) -> LabeledTensorDataset:
    """Seeded random data for tests and benchmarks; the same arguments always give the same tensors.

    With ``learnable=True`` every class has a fixed prototype ``N(0, 1)`` of ``shape`` and a sample is
    its class prototype plus ``noise * N(0, 1)``, so a model (even a linear one) can learn it. With
    ``learnable=False`` features are pure ``N(0, 1)`` noise, unrelated to the labels.
    Labels are balanced (``arange(n) % num_classes``) in a seeded random order.

    The prototypes depend only on ``seed`` and ``num_classes``/``shape``; ``train=False`` draws fresh
    samples of the *same* classes, so ``synthetic(..., train=False)`` is a matching test set.

    Args:
        n: number of samples, >= 1.
        shape: per-sample shape, e.g. ``(3, 32, 32)`` or ``(64,)``.
        num_classes: >= 1.
        seed: seeds a private ``torch.Generator`` (the global RNG is untouched).
        learnable: prototypes + noise if True, pure noise otherwise.
        train: which of two independent sample streams to draw from.
        noise: std of the per-sample noise when ``learnable`` (>= 0).

    Returns:
        A ``TensorDataset`` of (float32 ``n x *shape``, int64 ``n``) with ``num_classes`` and ``input_shape``.
    """
    n = check_int(n, "n", low=1, high=2**31 - 1)
    shape = check_shape(shape)
    num_classes = check_int(num_classes, "num_classes", low=1, high=2**31 - 1)
    seed = check_int(seed, "seed", low=0, high=2**63 - 1)
    learnable = check_bool(learnable, "learnable")
    train = check_bool(train, "train")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if n * math.prod(shape) > 2**31:
        raise ValueError(f"n={n} samples of shape {shape} is {n * math.prod(shape)} floats; at most 2**31 allowed")
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn((num_classes, *shape), generator=g) if learnable else None
    stream_seeds = torch.randint(0, 2**62, (2,), generator=g)
    gs = torch.Generator().manual_seed(int(stream_seeds[0 if train else 1]))
    labels = (torch.arange(n, dtype=torch.int64) % num_classes)[torch.randperm(n, generator=gs)]
    x = torch.randn((n, *shape), generator=gs)
    if protos is not None:
        x = protos[labels] + float(noise) * x
    ds = LabeledTensorDataset(x.contiguous(), labels, num_classes=num_classes, name="synthetic")
    ds.classes = [str(i) for i in range(num_classes)]
    ds.train = train
    ds.learnable = learnable
    return ds
