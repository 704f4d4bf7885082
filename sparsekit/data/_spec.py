"""``load_data(spec)``: one string names a dataset and its options (used by ``sparsekit fit weak --data``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from ..errors import SparsekitError
from ._cifar import cifar10, cifar100
from ._common import check_augment, check_bool
from ._small import digits, synthetic
from ._tiny import tiny_imagenet

__all__ = ["DataSpec", "load_data", "SPEC_FORMS"]

SPEC_FORMS = (
    "cifar10:/path/to/root       CIFAR-10 from local files (root holds cifar-10-batches-bin/ or -py/)",
    "cifar100:/path/to/root      CIFAR-100 from local files (cifar-100-binary/ or cifar-100-python/)",
    "tiny-imagenet:/path/to/root Tiny-ImageNet (tiny-imagenet-200/ or its parent; also tinyimagenet:)",
    "digits[:flat=false,test_size=0.2,seed=0]   scikit-learn's bundled 8x8 digits",
    "synthetic[:n=1024,n_test=256,num_classes=10,shape=3x32x32,seed=0,learnable=true,noise=1.0]",
)


@dataclass(frozen=True)
class DataSpec:
    """A loaded dataset: the splits plus what a model needs to know about them.

    Attributes:
        train: training split (augmented as requested).
        test: test split (never augmented), or None.
        num_classes: number of labels.
        input_shape: shape of one input sample, e.g. ``(3, 32, 32)`` or ``(64,)``.
        name: canonical dataset name: ``"cifar10"``, ``"cifar100"``, ``"tiny-imagenet"``, ``"digits"`` or
            ``"synthetic"``.
    """

    train: Dataset
    test: Dataset | None
    num_classes: int
    input_shape: tuple[int, ...]
    name: str


def _forms() -> str:
    return "\n".join(f"  {f}" for f in SPEC_FORMS)


def _bool(key: str, text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise SparsekitError(f"data option {key}={text!r}: expected true or false")


def _int(key: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise SparsekitError(f"data option {key}={text!r}: expected an integer") from None


def _float(key: str, text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise SparsekitError(f"data option {key}={text!r}: expected a number") from None


def _size(key: str, text: str) -> float | int:
    t = text.strip()
    return _float(key, t) if any(c in t for c in ".eE") else _int(key, t)


def _shape(key: str, text: str) -> tuple[int, ...]:
    parts = text.strip().lower().replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise SparsekitError(f"data option {key}={text!r}: expected dimensions like 3x32x32 or 64") from None
    if not dims or any(d < 1 for d in dims):
        raise SparsekitError(f"data option {key}={text!r}: dimensions must be positive, like 3x32x32")
    return dims


_Parser = Callable[[str, str], Any]
_DIGITS_OPTIONS: dict[str, _Parser] = {"flat": _bool, "test_size": _size, "seed": _int}
_SYNTHETIC_OPTIONS: dict[str, _Parser] = {"n": _int, "n_test": _int, "num_classes": _int, "shape": _shape,
                                          "seed": _int, "learnable": _bool, "noise": _float}


def _options(scheme: str, rest: str, parsers: dict[str, _Parser]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in rest.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep:
            raise SparsekitError(f"data spec {scheme}: option {item.strip()!r} is not key=value; "
                                 f"known keys: {', '.join(parsers)}")
        if key not in parsers:
            raise SparsekitError(f"data spec {scheme}: unknown option {key!r}; known keys: {', '.join(parsers)}")
        if key in out:
            raise SparsekitError(f"data spec {scheme}: option {key!r} given twice")
        out[key] = parsers[key](key, value)
    return out


_SCHEMES = {
    "cifar10": "cifar10", "cifar-10": "cifar10",
    "cifar100": "cifar100", "cifar-100": "cifar100",
    "tiny-imagenet": "tiny-imagenet", "tinyimagenet": "tiny-imagenet", "tiny_imagenet": "tiny-imagenet",
    "digits": "digits", "synthetic": "synthetic",
}


def load_data(spec: str, *, trust_pickle: bool = False, augment: bool | None = None) -> DataSpec:
    """Load the train and test splits a spec string names (paper §3: CIFAR-10/100; App. A.12: Tiny-ImageNet).

    Spec forms::

        cifar10:/path/to/root        cifar100:/path/to/root
        tiny-imagenet:/path/to/root  (also tinyimagenet:)
        digits                       digits:flat=false,test_size=0.2,seed=0
        synthetic                    synthetic:n=512,num_classes=10,shape=3x32x32,seed=0,n_test=128

    For image datasets the test split is CIFAR's test batch or Tiny-ImageNet's val split.
    ``synthetic``'s test split has ``n_test`` samples (default ``n // 4``, at least 1) of the same classes.

    Args:
        spec: the dataset, ``scheme`` or ``scheme:argument``. The path after ``cifar10:`` etc. is used as
            is (``~`` expanded), so it may contain ``:`` or ``,``.
        trust_pickle: allow python-version CIFAR files that fail the official checksum (see :func:`cifar10`).
        augment: ``None`` = the standard augmentation on the training split, ``False`` = none, ``True`` =
            force it on the training split. The test split is never augmented. ``digits`` and
            ``synthetic`` have no augmentation, so ``augment=True`` is an error there.

    Returns:
        A :class:`DataSpec`.

    Raises:
        SparsekitError: unknown scheme (the message lists the forms) or a malformed option.
        FileNotFoundError, UnsafeFileError, ImportError: from the dataset loaders.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string such as 'cifar10:/data' or 'synthetic', got {type(spec).__name__}")
    trust_pickle = check_bool(trust_pickle, "trust_pickle")
    augment = check_augment(augment)
    scheme_text, sep, rest = spec.strip().partition(":")
    scheme = _SCHEMES.get(scheme_text.strip().lower())
    if scheme is None:
        raise SparsekitError(f"unknown data spec {spec!r}; expected one of:\n{_forms()}")
    if scheme in ("cifar10", "cifar100", "tiny-imagenet"):
        path = rest.strip()
        if not path:
            raise SparsekitError(f"data spec {spec!r} needs a folder: {scheme}:/path/to/root\n{_forms()}")
        test_aug = False
        if scheme == "tiny-imagenet":
            train = tiny_imagenet(path, split="train", augment=augment)
            test = tiny_imagenet(path, split="val", augment=test_aug)
        else:
            fn = cifar10 if scheme == "cifar10" else cifar100
            train = fn(path, train=True, augment=augment, trust_pickle=trust_pickle)
            test = fn(path, train=False, augment=test_aug, trust_pickle=trust_pickle)
        return DataSpec(train, test, train.num_classes, train.input_shape, scheme)
    if augment:
        raise SparsekitError(f"{scheme} has no augmentation; leave augment unset (or False) for {spec!r}")
    if scheme == "digits":
        opts = _options(scheme, rest, _DIGITS_OPTIONS)
        train = digits(train=True, **opts)
        test = digits(train=False, **opts)
    else:
        opts = _options(scheme, rest, _SYNTHETIC_OPTIONS)
        n = opts.pop("n", 1024)
        n_test = opts.pop("n_test", max(1, n // 4) if isinstance(n, int) else 1)
        train = synthetic(n, train=True, **opts)
        test = synthetic(n_test, train=False, **opts)
    return DataSpec(train, test, train.num_classes, train.input_shape, scheme)
