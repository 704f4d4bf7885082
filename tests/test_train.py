"""fit_weak and the training engine: learning, fixed masks, schedules, exact resume, checkpoints, errors."""

from __future__ import annotations

import math
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from train_helpers import blobs

import sparsekit
from sparsekit.errors import SparsekitError
from sparsekit.train import Callback, History, TrainConfig
from sparsekit.train.engine import CHECKPOINT_NAME, _read_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")


class NoisyBlobs(Dataset):
    """Per-sample augmentation from the global torch RNG, like torchvision transforms."""

    def __init__(self, n: int = 128) -> None:
        self.base = blobs(n)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return x + 0.1 * torch.randn_like(x), y


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 64),
                         nn.ReLU(), nn.Linear(64, 4))


def pruned(seed: int = 0, density: float = 0.3, **kw) -> tuple[nn.Module, sparsekit.Ticket]:
    m = mlp(seed, **kw)
    return m, sparsekit.prune(m, method="er-erk", density=density, seed=5)


def masked_zero(m: nn.Module) -> bool:
    return all(bool((p[~mk] == 0).all()) for _n, p, mk in sparsekit.masked_parameters(m))


def test_fit_weak_learns_and_keeps_masks():
    m, ticket = pruned()
    before = {n: mk.clone() for n, _p, mk in sparsekit.masked_parameters(m)}
    h = sparsekit.fit_weak(m, blobs(), eval_data=blobs(128, seed=1), epochs=6, lr=0.05, batch_size=32,
                           device="cpu", progress=False)
    assert isinstance(h, History) and len(h) == 6
    assert h[-1].eval_acc >= 0.9 and h[-1].train_loss < h[0].train_loss
    assert masked_zero(m)
    after = {n: mk for n, _p, mk in sparsekit.masked_parameters(m)}
    assert all(torch.equal(before[k], after[k]) for k in before)  # masks stay fixed
    s = h[-1].to_dict()
    for key in ("epoch", "train_loss", "train_acc", "eval_loss", "eval_acc", "lr", "images_per_s", "seconds"):
        assert key in s
    assert h.column("epoch") == list(range(6)) and all(v > 0 for v in h.column("images_per_s"))
    with pytest.raises(KeyError, match="columns"):
        h.column("nope")


def test_multistep_schedule_follows_paper_fractions():
    m, _ = pruned()
    h = sparsekit.fit_weak(m, blobs(64), epochs=8, lr=0.1, batch_size=32, device="cpu", progress=False)
    # paper App. A.7: x0.1 at 80 and 120 of 160 epochs -> here at 4 and 6 of 8
    assert h.column("lr") == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    m, _ = pruned()
    h = sparsekit.fit_weak(m, blobs(64), epochs=4, lr=0.1, batch_size=32, schedule="cosine", device="cpu",
                           progress=False)
    assert h.column("lr") == pytest.approx([0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])


def test_same_seed_same_result_different_seed_differs():
    def train(seed: int) -> dict[str, torch.Tensor]:
        m, _ = pruned(dropout=0.2)
        sparsekit.fit_weak(m, NoisyBlobs(), epochs=2, lr=0.05, batch_size=16, seed=seed, device="cpu",
                           progress=False)
        return m.state_dict()

    a, b, c = train(1), train(1), train(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


class Interrupt(Callback):
    def __init__(self, after: int) -> None:
        self.after = after

    def on_epoch_end(self, state, stats) -> None:
        if state.epoch == self.after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("momentum_opt", ["sgd", "adam"])
def test_resume_reaches_the_uninterrupted_weights_exactly(tmp_path, momentum_opt):
    opt = None if momentum_opt == "sgd" else (lambda params: torch.optim.Adam(params, lr=1e-3))
    kw = dict(eval_data=blobs(64, seed=3), epochs=5, lr=0.05, batch_size=16, seed=4, device="cpu", progress=False,
              optimizer=opt)
    m_full, _ = pruned(dropout=0.2)
    full = sparsekit.fit_weak(m_full, NoisyBlobs(), checkpoint_dir=tmp_path / "a", **kw)

    m_cut, _ = pruned(dropout=0.2)
    with pytest.raises(KeyboardInterrupt):
        sparsekit.fit_weak(m_cut, NoisyBlobs(), checkpoint_dir=tmp_path / "b", callbacks=[Interrupt(2)], **kw)
    torch.manual_seed(12345)  # disturb global RNG state: resume must not depend on it
    m_new = mlp(seed=77, dropout=0.2)  # a fresh, unpruned model: the checkpoint's ticket is attached
    resumed = sparsekit.fit_weak(m_new, NoisyBlobs(), checkpoint_dir=tmp_path / "b", resume=True, **kw)

    a, b = m_full.state_dict(), m_new.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert masked_zero(m_new) and sparsekit.is_pruned(m_new)
    assert [s.to_dict() | {"seconds": 0, "images_per_s": 0} for s in full] == \
        [s.to_dict() | {"seconds": 0, "images_per_s": 0} for s in resumed]
    assert (tmp_path / "b" / "history.json").exists()


def test_resume_of_finished_run_returns_history_and_resume_without_checkpoint_starts(tmp_path):
    m, _ = pruned()
    h1 = sparsekit.fit_weak(m, blobs(64), epochs=2, batch_size=32, device="cpu", progress=False,
                            checkpoint_dir=tmp_path)
    w = {k: v.clone() for k, v in m.state_dict().items()}
    h2 = sparsekit.fit_weak(m, blobs(64), epochs=2, batch_size=32, device="cpu", progress=False,
                            checkpoint_dir=tmp_path, resume=True)
    assert len(h2) == 2 and h2.column("train_loss") == h1.column("train_loss")
    assert all(torch.equal(w[k], v) for k, v in m.state_dict().items())
    m2, _ = pruned()
    h3 = sparsekit.fit_weak(m2, blobs(64), epochs=1, batch_size=32, device="cpu", progress=False,
                            checkpoint_dir=tmp_path / "new", resume=True)
    assert len(h3) == 1


def test_checkpoint_refusals(tmp_path):
    m, _ = pruned()
    sparsekit.fit_weak(m, blobs(64), epochs=1, batch_size=32, device="cpu", progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(FileExistsError, match="resume=True"):
        sparsekit.fit_weak(m, blobs(64), epochs=1, batch_size=32, device="cpu", progress=False,
                           checkpoint_dir=tmp_path)
    with pytest.raises(SparsekitError, match=r"settings differ \(batch_size: checkpoint 32, now 16"):
        sparsekit.fit_weak(m, blobs(64), epochs=1, batch_size=16, device="cpu", progress=False,
                           checkpoint_dir=tmp_path, resume=True)
    other = mlp()
    sparsekit.prune(other, method="er-erk", density=0.3, seed=6)
    with pytest.raises(SparsekitError, match="masks were made with other settings .seed: checkpoint 5, now 6"):
        sparsekit.fit_weak(other, blobs(64), epochs=1, batch_size=32, device="cpu", progress=False,
                           checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        sparsekit.fit_weak(m, blobs(64), epochs=1, resume=True, progress=False)


def test_checkpoint_is_read_without_executing_code(tmp_path):
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (sentinel,))

    (tmp_path / CHECKPOINT_NAME).write_bytes(pickle.dumps({"format": "sparsekit-checkpoint", "x": Evil()}))
    with pytest.raises(SparsekitError, match="cannot read checkpoint"):
        _read_checkpoint(tmp_path / CHECKPOINT_NAME, torch.device("cpu"))
    assert not sentinel.exists()
    m, _ = pruned()
    with pytest.raises(SparsekitError, match="cannot read checkpoint"):
        sparsekit.fit_weak(m, blobs(64), epochs=1, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert not sentinel.exists()


def test_checkpoint_contents(tmp_path):
    m, ticket = pruned()
    sparsekit.fit_weak(m, blobs(64), epochs=2, batch_size=32, device="cpu", progress=False, checkpoint_dir=tmp_path)
    ck = _read_checkpoint(tmp_path / CHECKPOINT_NAME, torch.device("cpu"))
    assert ck["epoch"] == 2 and ck["step"] == 4
    assert set(ck) >= {"model", "optimizer", "scheduler", "rng", "ticket", "history", "config"}
    from sparsekit.train.engine import load_checkpoint_ticket

    t = load_checkpoint_ticket(ck)
    assert t.seed == ticket.seed and t.method == ticket.method
    assert all(torch.equal(t.masks[k], ticket.masks[k]) for k in ticket.compact_masks)


def test_dataloader_optimizer_and_callbacks():
    m, _ = pruned()
    loader = DataLoader(blobs(), batch_size=32, shuffle=True)
    seen = []
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)

    def stop_after_two(state, stats):
        seen.append(stats.epoch)
        if stats.epoch == 1:
            state.should_stop = True

    h = sparsekit.fit_weak(m, loader, epochs=5, optimizer=opt, callbacks=[stop_after_two], device="cpu",
                           progress=False)
    assert len(h) == 2 and seen == [0, 1] and masked_zero(m)
    with pytest.raises(TypeError, match="optimizer"):
        sparsekit.fit_weak(m, blobs(), epochs=1, optimizer="adam", progress=False)
    with pytest.raises(SparsekitError, match="does not hold"):
        sparsekit.fit_weak(m, blobs(), epochs=1, optimizer=torch.optim.SGD(mlp().parameters(), lr=0.1),
                           progress=False)
    with pytest.raises(TypeError, match="callbacks"):
        sparsekit.fit_weak(m, blobs(), epochs=1, callbacks=[3], progress=False)


def test_bf16_autocast_on_cpu_trains():
    m, _ = pruned()
    h = sparsekit.fit_weak(m, blobs(), epochs=2, lr=0.05, batch_size=32, amp="bf16", device="cpu", progress=False)
    assert math.isfinite(h[-1].train_loss) and masked_zero(m)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"epochs": 0}, "epochs must be a positive int"),
    ({"epochs": 1, "lr": -1.0}, "lr must be"),
    ({"epochs": 1, "schedule": "step"}, "schedule must be one of"),
    ({"epochs": 1, "amp": "fp8"}, "amp must be one of"),
    ({"epochs": 1, "batch_size": 0}, "batch_size must be a positive int"),
    ({"epochs": 1, "seed": -1}, "seed must be an int"),
])
def test_bad_arguments(kwargs, match):
    m, _ = pruned()
    with pytest.raises(ValueError, match=match):
        sparsekit.fit_weak(m, blobs(), progress=False, **kwargs)


def test_data_errors_and_dense_warning():
    m, _ = pruned()
    with pytest.raises(TypeError, match="train_data must be a torch Dataset"):
        sparsekit.fit_weak(m, [(torch.zeros(2, 16), torch.zeros(2))], epochs=1, progress=False)
    with pytest.raises(ValueError, match="train_data is empty"):
        sparsekit.fit_weak(m, TensorDataset(torch.zeros(0, 16), torch.zeros(0, dtype=torch.long)), epochs=1,
                           progress=False)
    dense = mlp()
    with pytest.warns(UserWarning, match="trains dense"):
        sparsekit.fit_weak(dense, blobs(64), epochs=1, device="cpu", progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_requested_without_cuda():
    m, _ = pruned()
    with pytest.raises(SparsekitError, match="CUDA is not available"):
        sparsekit.fit_weak(m, blobs(), epochs=1, device="cuda", progress=False)


def test_progress_prints_one_line_per_epoch(capsys):
    m, _ = pruned()
    sparsekit.fit_weak(m, blobs(64), eval_data=blobs(32), epochs=2, batch_size=32, device="cpu", progress=True)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2 and "eval loss" in lines[0] and "img/s" in lines[0] and lines[1].startswith("epoch 2/2")


def test_train_config_resume_key_ignores_device():
    a = TrainConfig(epochs=3, device="cpu", num_workers=0).resume_key()
    b = TrainConfig(epochs=3, device="cuda", num_workers=4).resume_key()
    assert a == b


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_weak_on_cuda_with_bf16():
    m, _ = pruned()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = sparsekit.fit_weak(m, blobs(), epochs=3, lr=0.05, batch_size=32, device="cuda", amp="auto",
                               progress=False)
    assert next(m.parameters()).is_cuda and masked_zero(m) and h[-1].train_acc > 0.8
