"""sparsekit.data: local-file datasets (CIFAR binary/python, Tiny-ImageNet), digits, synthetic, load_data.

Everything is built in tmp folders; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from sparsekit.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_CLASSES,
    IMAGENET_MEAN,
    SPEC_FORMS,
    DataSpec,
    ToFloatNormalize,
    cifar10,
    cifar100,
    digits,
    load_data,
    synthetic,
    tiny_imagenet,
)
from sparsekit.errors import SparsekitError, UnsafeFileError

PIL = pytest.importorskip("PIL.Image")


# ----------------------------------------------------------------------------------------------- helpers
def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def write_bin(path: Path, images: np.ndarray, labels: np.ndarray, coarse: np.ndarray | None = None) -> None:
    """Official binary record layout: [coarse label byte] label byte + 3072 CHW pixel bytes."""
    cols = [] if coarse is None else [coarse.astype(np.uint8)[:, None]]
    cols += [labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.concatenate(cols, axis=1).tobytes())


def make_cifar10_bin(base: Path, per_batch: int = 3, test_n: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder = base / "cifar-10-batches-bin"
    tr_x, tr_y = _images(rng, 5 * per_batch), rng.integers(0, 10, 5 * per_batch)
    for b in range(5):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        write_bin(folder / f"data_batch_{b + 1}.bin", tr_x[sl], tr_y[sl])
    te_x, te_y = _images(rng, test_n), rng.integers(0, 10, test_n)
    write_bin(folder / "test_batch.bin", te_x, te_y)
    return folder, (tr_x, tr_y), (te_x, te_y)


def make_cifar100_bin(base: Path, n_train: int = 6, n_test: int = 3, seed: int = 1):
    rng = np.random.default_rng(seed)
    folder = base / "cifar-100-binary"
    out = []
    for name, n in (("train.bin", n_train), ("test.bin", n_test)):
        x, fine, coarse = _images(rng, n), rng.integers(0, 100, n), rng.integers(0, 20, n)
        write_bin(folder / name, x, fine, coarse)
        out.append((x, fine))
    return folder, out[0], out[1]


def write_py(path: Path, images: np.ndarray, labels: np.ndarray, key: str = "labels", protocol: int = 2) -> None:
    entry = {"batch_label": "tiny batch", key: [int(v) for v in labels],
             "data": images.reshape(len(images), -1).copy(), "filenames": [f"img{i}.png" for i in range(len(images))]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(entry, protocol=protocol))


def py2_pickle(data: np.ndarray, labels) -> bytes:
    """A protocol-2 pickle as Python 2 + numpy wrote the official CIFAR files (py2 str = SHORT_BINSTRING)."""
    def s(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def i(v: int) -> bytes:
        return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)

    arr = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R("
           + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1)
           + b"\x87R(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb\x89" + s(data.tobytes()) + b"tb")
    lab = b"](" + b"".join(i(int(v)) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"batch_label") + s(b"batch") + s(b"data") + arr + s(b"labels") + lab + b"u."


def make_cifar10_py(base: Path, per_batch: int = 2, seed: int = 2, protocol: int = 2):
    rng = np.random.default_rng(seed)
    folder = base / "cifar-10-batches-py"
    tr_x, tr_y = _images(rng, 5 * per_batch), rng.integers(0, 10, 5 * per_batch)
    for b in range(5):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        write_py(folder / f"data_batch_{b + 1}", tr_x[sl], tr_y[sl], protocol=protocol)
    te_x, te_y = _images(rng, 3), rng.integers(0, 10, 3)
    write_py(folder / "test_batch", te_x, te_y, protocol=protocol)
    return folder, (tr_x, tr_y), (te_x, te_y)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _patch_official_md5(monkeypatch, cls_name: str, folder: Path, train: list[str], test: list[str]) -> None:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    monkeypatch.setattr(cls, "train_list", [[f, _md5(folder / f)] for f in train])
    monkeypatch.setattr(cls, "test_list", [[f, _md5(folder / f)] for f in test])


def _unnormalized(ds, i: int) -> torch.Tensor:
    x, _ = ds[i]
    return ds.normalize.unnormalize(x).round().clamp(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------ CIFAR binary
def test_cifar10_binary_roundtrip(tmp_path):
    _, (tr_x, tr_y), (te_x, te_y) = make_cifar10_bin(tmp_path)
    train = cifar10(tmp_path, train=True, augment=False)
    test = cifar10(tmp_path, train=False)
    assert (len(train), len(test)) == (15, 4)
    assert train.source_format == test.source_format == "binary"
    assert train.data.dtype == torch.uint8 and train.data.shape == (15, 3, 32, 32)
    assert train.targets.dtype == torch.int64
    assert torch.equal(train.data, torch.from_numpy(tr_x)) and torch.equal(test.data, torch.from_numpy(te_x))
    assert train.targets.tolist() == tr_y.tolist() and test.targets.tolist() == te_y.tolist()
    assert train.classes == list(CIFAR10_CLASSES) and train.num_classes == 10 and train.input_shape == (3, 32, 32)
    assert not train.augment and not test.augment  # augment=None: none for test
    for ds, xs, ys in ((train, tr_x, tr_y), (test, te_x, te_y)):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and isinstance(y, int) and y == ys[i]
            assert torch.equal(_unnormalized(ds, i), torch.from_numpy(xs[i]))
    # the normalisation is the documented per-channel one
    x0 = train[0][0]
    expected = (torch.from_numpy(tr_x[0]).float() / 255 - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) \
        / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    torch.testing.assert_close(x0, expected)
    # root may be the batches folder itself
    same = cifar10(tmp_path / "cifar-10-batches-bin", augment=False)
    assert torch.equal(same.data, train.data)


def test_cifar100_binary_uses_fine_label(tmp_path):
    _, (tr_x, tr_y), (te_x, te_y) = make_cifar100_bin(tmp_path)
    train = cifar100(tmp_path, augment=False)
    test = cifar100(tmp_path / "cifar-100-binary", train=False)
    assert (len(train), len(test)) == (6, 3)
    assert torch.equal(train.data, torch.from_numpy(tr_x)) and train.targets.tolist() == tr_y.tolist()
    assert torch.equal(test.data, torch.from_numpy(te_x)) and test.targets.tolist() == te_y.tolist()
    assert train.num_classes == 100 and len(CIFAR100_CLASSES) == 100
    assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    assert torch.equal(_unnormalized(test, 2), torch.from_numpy(te_x[2]))


def test_cifar_augmentation_keeps_shape_and_varies(tmp_path):
    make_cifar10_bin(tmp_path)
    train = cifar10(tmp_path)  # augment=None: standard augmentation on train
    plain = cifar10(tmp_path, augment=False)
    assert train.augment and not plain.augment
    torch.manual_seed(0)
    differs = 0
    for _ in range(10):
        x, y = train[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == plain[0][1]
        differs += not torch.equal(x, plain[0][0])
    assert differs > 0
    forced = cifar10(tmp_path, train=False, augment=True)
    assert forced.augment and forced[1][0].shape == (3, 32, 32)
    xb, yb = next(iter(DataLoader(train, batch_size=4)))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64


def test_cifar_corrupt_binary(tmp_path):
    folder, _, _ = make_cifar10_bin(tmp_path)
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes()[:-5])
    with pytest.raises(SparsekitError, match="not a positive multiple of the 3073-byte record"):
        cifar10(tmp_path, train=False)
    write_bin(folder / "test_batch.bin", np.zeros((1, 3, 32, 32), np.uint8), np.array([12]))
    with pytest.raises(SparsekitError, match="label 12 out of range"):
        cifar10(tmp_path, train=False)
    # a CIFAR-100 file (2 label bytes) in place of CIFAR-10's
    (folder / "test_batch.bin").write_bytes(b"\x00" * 3074 * 3)
    with pytest.raises(SparsekitError, match="3073-byte record"):
        cifar10(tmp_path, train=False)


def test_cifar_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        cifar10(tmp_path / "nowhere")
    msg = str(e.value)
    for f in ("cifar-10-batches-bin", *(f"data_batch_{i}.bin" for i in range(1, 6)), "cifar-10-batches-py",
              "https://www.cs.toronto.edu/~kriz/cifar.html", "never downloads"):
        assert f in msg
    folder, _, _ = make_cifar10_bin(tmp_path)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: data_batch_3\.bin"):
        cifar10(tmp_path)
    assert len(cifar10(tmp_path, train=False)) == 4  # the test split needs only test_batch.bin
    with pytest.raises(FileNotFoundError, match=r"cifar-100-binary/ containing test\.bin"):
        cifar100(tmp_path, train=False)


def test_cifar_argument_validation(tmp_path):
    make_cifar10_bin(tmp_path)
    with pytest.raises(TypeError, match="root must be a path"):
        cifar10(123)
    with pytest.raises(ValueError, match="root must be a non-empty path"):
        cifar10("")
    with pytest.raises(TypeError, match="augment must be None"):
        cifar10(tmp_path, augment="yes")
    with pytest.raises(TypeError, match="trust_pickle must be True or False"):
        cifar10(tmp_path, trust_pickle=1)
    with pytest.raises(TypeError, match="train must be True or False"):
        cifar100(tmp_path, train="test")


def test_cifar_without_torchvision(tmp_path, monkeypatch):
    make_cifar10_bin(tmp_path)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match=r'pip install "sparsekit\[vision\]"'):
        cifar10(tmp_path)  # train split: augmentation by default
    assert len(cifar10(tmp_path, augment=False)) == 15  # no augmentation, no torchvision needed


# ------------------------------------------------------------------------------------------ CIFAR python
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_python_refused_then_trusted(tmp_path, protocol):
    folder, (tr_x, tr_y), (te_x, te_y) = make_cifar10_py(tmp_path, protocol=protocol)
    with pytest.raises(UnsafeFileError) as e:
        cifar10(tmp_path, augment=False)
    msg = str(e.value)
    assert "do not match the official checksums" in msg and "trust_pickle=True" in msg and "--trust-pickle" in msg
    train = cifar10(tmp_path, augment=False, trust_pickle=True)
    test = cifar10(folder, train=False, trust_pickle=True)
    assert train.source_format == "python" and (len(train), len(test)) == (10, 3)
    assert torch.equal(train.data, torch.from_numpy(tr_x)) and train.targets.tolist() == tr_y.tolist()
    assert torch.equal(test.data, torch.from_numpy(te_x)) and test.targets.tolist() == te_y.tolist()
    assert torch.equal(_unnormalized(test, 0), torch.from_numpy(te_x[0]))


def test_cifar10_python_official_md5_accepted(tmp_path, monkeypatch):
    folder, (tr_x, _), _ = make_cifar10_py(tmp_path)
    # files in the exact layout Python 2 + numpy wrote them, as in the official archive
    rng = np.random.default_rng(5)
    py2_x, py2_y = _images(rng, 2), [7, 1]
    (folder / "test_batch").write_bytes(py2_pickle(py2_x.reshape(2, -1), py2_y))
    _patch_official_md5(monkeypatch, "CIFAR10", folder, [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
    train = cifar10(tmp_path, augment=False)  # no trust_pickle: the md5s are "official"
    test = cifar10(tmp_path, train=False)
    assert torch.equal(train.data, torch.from_numpy(tr_x))
    assert torch.equal(test.data, torch.from_numpy(py2_x)) and test.targets.tolist() == py2_y
    # one changed byte breaks the match
    raw = bytearray((folder / "data_batch_2").read_bytes())
    raw[-3] ^= 1
    (folder / "data_batch_2").write_bytes(bytes(raw))
    with pytest.raises(UnsafeFileError, match=r"data_batch_2 \(md5"):
        cifar10(tmp_path, augment=False)


def test_cifar100_python(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-100-python"
    x, y = _images(rng, 4), rng.integers(0, 100, 4)
    write_py(folder / "train", x, y, key="fine_labels")
    write_py(folder / "test", x[:2], y[:2], key="fine_labels")
    with pytest.raises(UnsafeFileError, match="official checksums"):
        cifar100(tmp_path, augment=False)
    ds = cifar100(tmp_path, augment=False, trust_pickle=True)
    assert torch.equal(ds.data, torch.from_numpy(x)) and ds.targets.tolist() == y.tolist()
    _patch_official_md5(monkeypatch, "CIFAR100", folder, ["train"], ["test"])
    assert len(cifar100(folder, train=False)) == 2


def test_cifar_binary_preferred_over_python(tmp_path):
    make_cifar10_py(tmp_path)
    _, (tr_x, _), _ = make_cifar10_bin(tmp_path)
    ds = cifar10(tmp_path, augment=False)  # no UnsafeFileError: the binary version is used
    assert ds.source_format == "binary" and torch.equal(ds.data, torch.from_numpy(tr_x))


class _Evil:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class _EvilOpen:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (str(self.sentinel), "w"))


@pytest.mark.parametrize("evil_cls", [_Evil, _EvilOpen])
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_refused_even_when_trusted(tmp_path, monkeypatch, evil_cls, protocol):
    sentinel = tmp_path / "pwned"
    folder, _, _ = make_cifar10_py(tmp_path)
    entry = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": evil_cls(sentinel)}
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=protocol))
    with pytest.raises(UnsafeFileError, match="only numpy array reconstruction is allowed"):
        cifar10(tmp_path, train=False, trust_pickle=True)
    # even if its md5 were the official one
    _patch_official_md5(monkeypatch, "CIFAR10", folder, [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
    with pytest.raises(UnsafeFileError):
        cifar10(tmp_path, train=False)
    assert not sentinel.exists()


def test_bad_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_py(folder / f"data_batch_{i}", np.zeros((1, 3, 32, 32), np.uint8), np.array([1]))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": [1, 2, 3], "labels": [0]}))
    with pytest.raises(SparsekitError, match="not a CIFAR-10 python batch"):
        cifar10(tmp_path, train=False, trust_pickle=True)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8)})[:-7])
    with pytest.raises(SparsekitError, match="truncated or corrupt"):
        cifar10(tmp_path, train=False, trust_pickle=True)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}))
    with pytest.raises(SparsekitError, match="2 images but 1 labels"):
        cifar10(tmp_path, train=False, trust_pickle=True)


# ------------------------------------------------------------------------------------------ Tiny-ImageNet
def _jpeg(path: Path, color: tuple[int, int, int], size=(64, 64), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = PIL.new(mode, size, color if mode == "RGB" else color[0])
    img.save(path, format="JPEG", quality=95)


def make_tiny(base: Path) -> Path:
    folder = base / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("n02000002\nn01000001\n")  # unsorted on purpose
    colors = {"n01000001": (200, 10, 10), "n02000002": (10, 10, 200)}
    for wnid, c in colors.items():
        for k in range(2):
            _jpeg(folder / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", c)
    _jpeg(folder / "val" / "images" / "val_0.JPEG", colors["n02000002"])
    _jpeg(folder / "val" / "images" / "val_1.JPEG", (90, 90, 90), mode="L")  # grayscale files exist in the set
    (folder / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02000002\t0\t0\t63\t63\nval_1.JPEG\tn01000001\t1\t2\t30\t40\n")
    return folder


def test_tiny_imagenet_train_and_val(tmp_path):
    folder = make_tiny(tmp_path)
    train = tiny_imagenet(tmp_path, augment=False)
    val = tiny_imagenet(folder, split="val")
    assert train.classes == ["n01000001", "n02000002"] and train.num_classes == 2
    assert (len(train), len(val)) == (4, 2) and train.input_shape == (3, 64, 64)
    assert train.targets.tolist() == [0, 0, 1, 1] and val.targets.tolist() == [1, 0]
    assert not val.augment
    x, y = train[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y == 0
    pixels = _unnormalized(train, 0).float()
    assert (pixels[0].mean() - 200).abs() < 3 and (pixels[2].mean() - 10).abs() < 3  # red image, JPEG-lossy
    torch.testing.assert_close(train.normalize.mean, IMAGENET_MEAN)
    gray = _unnormalized(val, 1).float()
    assert gray.shape == (3, 64, 64) and torch.allclose(gray[0], gray[1]) and (gray.mean() - 90).abs() < 3
    aug = tiny_imagenet(tmp_path)  # default: augmented train split
    assert aug.augment and aug[3][0].shape == (3, 64, 64) and aug[3][1] == 1


def test_tiny_imagenet_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"wnids\.txt.*train/<wnid>/images"):
        tiny_imagenet(tmp_path)
    folder = make_tiny(tmp_path)
    with pytest.raises(ValueError, match="split must be 'train' or 'val'.*test images have no labels"):
        tiny_imagenet(folder, split="test")
    with pytest.raises(TypeError, match="split must be"):
        tiny_imagenet(folder, split=1)
    (folder / "val" / "val_annotations.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val_annotations.txt"):
        tiny_imagenet(folder, split="val")
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(SparsekitError, match="not in wnids.txt"):
        tiny_imagenet(folder, split="val")
    (folder / "val" / "val_annotations.txt").write_text("val_9.JPEG\tn01000001\t0\t0\t1\t1\n")
    with pytest.raises(FileNotFoundError, match="val_9.JPEG"):
        tiny_imagenet(folder, split="val")
    _jpeg(folder / "train" / "n01000001" / "images" / "n01000001_0.JPEG", (1, 2, 3), size=(32, 32))
    with pytest.raises(SparsekitError, match="Tiny-ImageNet images are 64x64"):
        tiny_imagenet(folder, augment=False)[0]
    for p in (folder / "train" / "n02000002" / "images").iterdir():
        p.unlink()
    (folder / "train" / "n02000002" / "images").rmdir()
    with pytest.raises(FileNotFoundError, match="n02000002/images"):
        tiny_imagenet(folder)


# ------------------------------------------------------------------------------------------------ digits
def test_digits_split_sizes_stratified_and_standardized():
    train, test = digits(), digits(train=False)
    assert (len(train), len(test)) == (1437, 360)
    assert train.num_classes == 10 and train.input_shape == (64,)
    assert train.features.dtype == torch.float32 and train.labels.dtype == torch.int64
    all_counts = torch.bincount(torch.cat([train.labels, test.labels]), minlength=10).double()
    assert (torch.bincount(test.labels, minlength=10).double() - 0.2 * all_counts).abs().max() <= 1
    mean, std = train.features.mean(0), train.features.std(0, unbiased=False)
    varying = train.feature_std != 1.0
    assert varying.sum() > 50
    assert mean.abs().max() < 1e-5
    assert (std[varying] - 1).abs().max() < 1e-4 and std[~varying].abs().max() < 1e-6
    assert torch.equal(train.feature_mean, test.feature_mean) and torch.equal(train.feature_std, test.feature_std)
    assert (train.feature_mean >= 0).all() and (train.feature_mean <= 1).all()  # stats of pixels / 16
    # the test split uses the train statistics: raw pixels are recovered from them exactly
    raw = test.features * test.feature_std + test.feature_mean
    torch.testing.assert_close(raw * 16, (raw * 16).round(), atol=1e-4, rtol=0)


def test_digits_determinism_and_images():
    a, b, c = digits(seed=3), digits(seed=3), digits(seed=4)
    assert torch.equal(a.features, b.features) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)
    img = digits(flat=False, seed=3)
    assert img.input_shape == (1, 8, 8) and img.features.shape == (1437, 1, 8, 8)
    assert torch.equal(img.features.reshape(1437, 64), a.features)
    assert len(digits(test_size=100, train=False)) == 100
    with pytest.raises(ValueError, match="test_size"):
        digits(test_size=1.5)
    with pytest.raises(ValueError, match="test_size"):
        digits(test_size=3)
    with pytest.raises(TypeError, match="test_size"):
        digits(test_size="0.2")
    with pytest.raises(TypeError, match="seed must be an int"):
        digits(seed=1.0)
    with pytest.raises(ValueError, match="seed must be an int in"):
        digits(seed=-1)
    with pytest.raises(TypeError, match="flat must be True or False"):
        digits(flat=None)


# --------------------------------------------------------------------------------------------- synthetic
def test_synthetic_seeded_and_learnable():
    state = torch.get_rng_state()
    a, b = synthetic(256, shape=(3, 8, 8), seed=7), synthetic(256, shape=(3, 8, 8), seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # a private generator
    assert torch.equal(a.features, b.features) and torch.equal(a.labels, b.labels)
    c = synthetic(256, shape=(3, 8, 8), seed=8)
    assert not torch.equal(a.features, c.features)
    assert a.features.dtype == torch.float32 and a.labels.dtype == torch.int64 and a.input_shape == (3, 8, 8)
    assert torch.bincount(a.labels, minlength=10).tolist() == [26] * 6 + [25] * 4
    test = synthetic(200, shape=(3, 8, 8), seed=7, train=False)
    assert not torch.equal(test.features[:10], a.features[:10])
    # same class prototypes in both splits: nearest class mean (from train) classifies the test split
    centroids = torch.stack([a.features[a.labels == k].mean(0) for k in range(10)]).flatten(1)
    pred = torch.cdist(test.features.flatten(1), centroids).argmin(1)
    assert (pred == test.labels).float().mean() > 0.9
    noise = synthetic(200, shape=(3, 8, 8), seed=7, learnable=False, train=False)
    pred = torch.cdist(noise.features.flatten(1), centroids).argmin(1)
    assert (pred == noise.labels).float().mean() < 0.4


def test_synthetic_validation():
    with pytest.raises(ValueError, match=r"n must be an int in \[1"):
        synthetic(0)
    with pytest.raises(TypeError, match="n must be an int"):
        synthetic(10.0)
    with pytest.raises(ValueError, match="shape must be a non-empty tuple of positive ints"):
        synthetic(4, shape=(3, 0))
    with pytest.raises(TypeError, match="shape must be"):
        synthetic(4, shape="3x8x8")
    with pytest.raises(ValueError, match="num_classes"):
        synthetic(4, num_classes=0)
    with pytest.raises(TypeError, match="learnable must be True or False"):
        synthetic(4, learnable="yes")
    with pytest.raises(ValueError, match="noise"):
        synthetic(4, noise=-1.0)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
       num_classes=st.integers(1, 12), seed=st.integers(0, 2**63 - 1), learnable=st.booleans())
def test_synthetic_properties(n, shape, num_classes, seed, learnable):
    ds = synthetic(n, shape=shape, num_classes=num_classes, seed=seed, learnable=learnable)
    again = synthetic(n, shape=shape, num_classes=num_classes, seed=seed, learnable=learnable)
    assert ds.features.shape == (n, *shape) and ds.features.dtype == torch.float32
    assert ds.input_shape == shape and ds.num_classes == num_classes and len(ds) == n
    assert torch.isfinite(ds.features).all()
    assert torch.equal(ds.features, again.features) and torch.equal(ds.labels, again.labels)
    counts = torch.bincount(ds.labels, minlength=num_classes)
    assert counts.numel() == num_classes and counts.max() - counts.min() <= 1


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(1, 4), min_size=6, max_size=6), seed=st.integers(0, 2**32 - 1),
       variant=st.sampled_from(["cifar10", "cifar100"]))
def test_cifar_binary_roundtrip_property(counts, seed, variant):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        if variant == "cifar10":
            files = [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]
            names = [f"cifar-10-batches-bin/{f}" for f in files]
            parts = [(_images(rng, k), rng.integers(0, 10, k), None) for k in counts]
            loader, train_parts, test_parts = cifar10, parts[:5], parts[5:]
        else:
            names = ["cifar-100-binary/train.bin", "cifar-100-binary/test.bin"]
            parts = [(_images(rng, k), rng.integers(0, 100, k), rng.integers(0, 20, k)) for k in counts[:2]]
            loader, train_parts, test_parts = cifar100, parts[:1], parts[1:]
        for name, (x, y, coarse) in zip(names, parts, strict=True):
            write_bin(base / name, x, y, coarse)
        for train, expected in ((True, train_parts), (False, test_parts)):
            ds = loader(base, train=train, augment=False)
            assert torch.equal(ds.data, torch.from_numpy(np.concatenate([p[0] for p in expected])))
            assert ds.targets.tolist() == np.concatenate([p[1] for p in expected]).tolist()
            assert torch.equal(_unnormalized(ds, len(ds) - 1), ds.data[-1])


# --------------------------------------------------------------------------------------------- load_data
def test_load_data_image_specs(tmp_path):
    make_cifar10_bin(tmp_path / "c10")
    make_cifar100_bin(tmp_path / "c100")
    make_tiny(tmp_path / "tiny")
    spec = load_data(f"cifar10:{tmp_path / 'c10'}")
    assert isinstance(spec, DataSpec) and spec.name == "cifar10" and spec.num_classes == 10
    assert spec.input_shape == (3, 32, 32) and (len(spec.train), len(spec.test)) == (15, 4)
    assert spec.train.augment and not spec.test.augment
    assert not load_data(f"CIFAR-10:{tmp_path / 'c10'}", augment=False).train.augment
    spec = load_data(f"cifar100:{tmp_path / 'c100'}")
    assert (spec.name, spec.num_classes, len(spec.train), len(spec.test)) == ("cifar100", 100, 6, 3)
    for scheme in ("tiny-imagenet", "tinyimagenet"):
        spec = load_data(f"{scheme}:{tmp_path / 'tiny'}")
        assert (spec.name, spec.num_classes, spec.input_shape) == ("tiny-imagenet", 2, (3, 64, 64))
        assert (len(spec.train), len(spec.test)) == (4, 2) and spec.test.split == "val"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"


def test_load_data_passes_trust_pickle(tmp_path):
    make_cifar10_py(tmp_path)
    with pytest.raises(UnsafeFileError):
        load_data(f"cifar10:{tmp_path}")
    spec = load_data(f"cifar10:{tmp_path}", trust_pickle=True)
    assert (len(spec.train), len(spec.test)) == (10, 3)


def test_load_data_small_specs():
    spec = load_data("digits")
    assert (spec.name, spec.num_classes, spec.input_shape, len(spec.train), len(spec.test)) == \
        ("digits", 10, (64,), 1437, 360)
    spec = load_data("digits:flat=false,seed=2,test_size=0.5")
    assert spec.input_shape == (1, 8, 8) and len(spec.test) == 899
    spec = load_data("synthetic")
    assert (spec.input_shape, spec.num_classes, len(spec.train), len(spec.test)) == ((3, 32, 32), 10, 1024, 256)
    spec = load_data(" synthetic:n=512, num_classes=5, shape=2x4x4, seed=3, n_test=7, learnable=false")
    assert (spec.input_shape, spec.num_classes, len(spec.train), len(spec.test)) == ((2, 4, 4), 5, 512, 7)
    assert torch.equal(spec.train.features, synthetic(512, shape=(2, 4, 4), num_classes=5, seed=3,
                                                      learnable=False).features)
    assert load_data("synthetic:shape=64").input_shape == (64,)


@pytest.mark.parametrize(("spec", "match"), [
    ("mnist", "unknown data spec 'mnist'"),
    ("/data/cifar", "unknown data spec"),
    ("cifar10", r"needs a folder: cifar10:/path/to/root"),
    ("tiny-imagenet:", "needs a folder"),
    ("synthetic:n=abc", "n='abc': expected an integer"),
    ("synthetic:bogus=1", "unknown option 'bogus'; known keys: n, n_test"),
    ("synthetic:shape=3xx4", "expected dimensions like 3x32x32"),
    ("synthetic:n=1,n=2", "given twice"),
    ("digits:flat", "is not key=value"),
    ("digits:flat=maybe", "expected true or false"),
])
def test_load_data_errors(spec, match):
    with pytest.raises(SparsekitError, match=match):
        load_data(spec)


def test_load_data_error_lists_forms_and_checks_args(tmp_path):
    with pytest.raises(SparsekitError) as e:
        load_data("imagenet:/x")
    for form in SPEC_FORMS:
        assert form in str(e.value)
    with pytest.raises(SparsekitError, match="no augmentation"):
        load_data("digits", augment=True)
    with pytest.raises(TypeError, match="spec must be a string"):
        load_data(None)
    with pytest.raises(TypeError, match="trust_pickle must be True or False"):
        load_data("digits", trust_pickle="yes")
    with pytest.raises(ValueError, match=r"n must be an int in \[1"):
        load_data("synthetic:n=0")
    with pytest.raises(FileNotFoundError, match="cifar-100-binary"):
        load_data(f"cifar100:{tmp_path}")


def test_to_float_normalize_rejects_non_uint8():
    norm = ToFloatNormalize((0.5,), (0.25,))
    with pytest.raises(TypeError, match="uint8"):
        norm(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="std > 0"):
        ToFloatNormalize((0.5,), (0.0,))
    x = torch.arange(4, dtype=torch.uint8).view(1, 2, 2)
    assert torch.equal(norm.unnormalize(norm(x)).round().to(torch.uint8), x)
