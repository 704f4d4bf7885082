"""The training engine shared by ``fit_weak``, ``fit_strong`` and ``rewire``.

One loop, one job each for the pieces around it:

* **device and precision**: ``device="auto"`` picks CUDA when present; ``amp="auto"`` uses bf16
  autocast on GPUs that support it and full precision on the CPU; ``"fp16"`` adds a GradScaler.
* **determinism**: at the start of every epoch the global torch (and ``random``) generators are
  reseeded from ``(seed, epoch)`` and the data order is a permutation drawn from ``(seed, epoch)``,
  so an epoch's result depends only on the state at its start. That is what makes ``resume``
  exact: a run interrupted after epoch ``k`` and resumed reaches bit-identical weights (on the
  same device and software) as one that never stopped.
* **checkpoints**: after every epoch, rank 0 writes ``checkpoint.pt`` atomically (model,
  optimizer, scheduler, grad scaler, algorithm state, ticket, RNG states, history, config) and
  ``history.json``. Checkpoints are read back with ``torch.load(weights_only=True)``: no code runs.
* **distributed**: launched by ``torchrun`` (``WORLD_SIZE`` > 1), the engine joins the process
  group (NCCL on GPUs, gloo on CPUs), checks that every rank holds bit-identical masks (they come
  from seeds, so a mismatch means a different seed, method or model on some rank and is fatal),
  wraps the model in DistributedDataParallel, shards data with a DistributedSampler and lets only
  rank 0 print and write. ``batch_size`` is per process, as in torch's DDP convention.
* **algorithms** plug in through :class:`Algorithm` (which parameters to optimise, hooks after
  backward, after the step and at epoch end, extra checkpoint state); ``fit_weak`` uses the base
  class unchanged (paper §2.2-2.5: train the weights inside a fixed ER mask).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from .._dtensor import is_dtensor
from .._io import atomic_write_bytes, atomic_write_text, clean_stale_temps
from ..attach import is_pruned, mask_gradients, masked_parameters, ticket_of
from ..distributed import check_same_masks
from ..errors import SparsekitError
from ..rng import stream_key

__all__ = ["TrainConfig", "EpochStats", "History", "Algorithm", "Callback", "TrainState", "run", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
_CHECKPOINT_FORMAT = "sparsekit-checkpoint"
_CHECKPOINT_VERSION = 1
_SCHEDULES = ("multistep", "cosine", "constant")
_AMP = ("auto", "bf16", "fp16", None)


# --------------------------------------------------------------------------------------------------
# configuration and results


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run; the defaults are the paper's (App. A.7).

    ``schedule="multistep"`` divides the learning rate by 10 at 50% and 75% of the epochs (80 and
    120 of 160 in the paper); ``"cosine"`` anneals it to zero over the run; ``"constant"`` keeps it.
    """

    epochs: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "multistep"
    seed: int = 0
    amp: str | None = "auto"
    device: str = "auto"
    num_workers: int | None = None
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> None:
            raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            bad("epochs", "a positive int")
        for name in ("lr", "momentum", "weight_decay", "gamma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                bad(name, "a finite number >= 0")
            if v > _MAX_HYPER:  # SGD would overflow float32 weights in its first step
                bad(name, f"at most {_MAX_HYPER:g} (larger values overflow float32 arithmetic)")
        if self.lr <= 0:
            bad("lr", "> 0")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            bad("batch_size", "a positive int")
        if self.schedule not in _SCHEDULES:
            bad("schedule", f"one of {_SCHEDULES}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            bad("seed", "an int >= 0")
        if self.amp not in _AMP:
            bad("amp", f"one of {_AMP}")
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            bad("num_workers", "None (automatic) or an int >= 0")
        if not all(isinstance(m, (int, float)) and 0 < m <= 1 for m in self.milestones):
            bad("milestones", "fractions of the run in (0, 1]")

    def resume_key(self) -> dict[str, Any]:
        """The fields a resumed run must share with the checkpoint (device, workers may change)."""
        d = asdict(self)
        for k in ("device", "num_workers"):
            d.pop(k)
        d["milestones"] = list(d["milestones"])
        return d


_MAX_HYPER = 1e30


@dataclass
class EpochStats:
    """What one epoch did. Accuracies are fractions in [0, 1]; ``images_per_s`` counts all ranks."""

    epoch: int
    train_loss: float
    train_acc: float
    lr: float
    images_per_s: float
    seconds: float
    eval_loss: float | None = None
    eval_acc: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


class History(list):
    """Per-epoch :class:`EpochStats`, oldest first; ``history.column("eval_acc")`` gives one series."""

    def column(self, name: str) -> list[Any]:
        names = {f.name for f in fields(EpochStats)} - {"extra"}
        if name in names:
            return [getattr(s, name) for s in self]
        if any(name in s.extra for s in self):
            return [s.extra.get(name) for s in self]
        raise KeyError(f"no column {name!r}; columns: {sorted(names | {k for s in self for k in s.extra})}")

    def to_dicts(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self]

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dicts(), indent=2)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    def __repr__(self) -> str:
        return f"History({len(self)} epochs{', last: ' + repr(self[-1].to_dict()) if self else ''})"


@dataclass
class TrainState:
    """What hooks and callbacks see. Setting ``should_stop = True`` ends the run after this epoch."""

    model: nn.Module  #: the user's model (not the DDP wrapper)
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    epoch: int = 0  #: 0-based index of the current epoch
    step: int = 0  #: global optimizer steps taken so far
    steps_per_epoch: int = 0
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    history: History = field(default_factory=History)
    should_stop: bool = False
    is_main: bool = True


class Algorithm:
    """What a training method changes in the shared loop; the base class trains the weights (weak tickets).

    Subclasses (edge-popup, RigL/SET) override the hooks they need. All randomness a hook uses must
    come from ``(seed, step)`` so that runs are reproducible and resumable.
    """

    name = "weak"
    #: build the default SGD with ``fused=True``: one kernel per tensor, the same update up to one
    #: rounding in a few entries (tested); edge-popup sets it (its trained tensors are flat score vectors)
    fused_sgd = False

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Called once the model is on ``device``, before the optimizer is built (create state here)."""

    def parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        """The parameters the optimizer updates."""
        return [p for p in model.parameters() if p.requires_grad]

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop calls for training and evaluation (default: the model itself)."""
        return model

    def schedule(self, optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
        """A learning-rate scheduler stepped once per epoch, or None for the config's schedule."""
        return None

    def on_train_start(self, state: TrainState) -> None:
        """Called once, after the model is on its device and before DDP wrapping."""

    def after_backward(self, state: TrainState) -> None:
        """Called after gradients are complete (all-reduced under DDP), before ``optimizer.step``."""

    def after_step(self, state: TrainState) -> None:
        """Called after every optimizer step (``state.step`` already counts it)."""

    def on_epoch_end(self, state: TrainState) -> dict[str, float]:
        """Called after each epoch's training, before evaluation; returns extra history columns."""
        return {}

    def ticket(self, model: nn.Module) -> Any:
        """The ticket describing the current masks (saved in checkpoints)."""
        return ticket_of(model)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Callback:
    """Hooks into a run; override what you need. Plain callables are called as ``fn(state, stats)``."""

    def on_train_start(self, state: TrainState) -> None:
        pass

    def on_step_end(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState, stats: EpochStats) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass


class _FnCallback(Callback):
    def __init__(self, fn: Callable[[TrainState, EpochStats], Any]) -> None:
        self.fn = fn

    def on_epoch_end(self, state: TrainState, stats: EpochStats) -> None:
        self.fn(state, stats)


def _callbacks(callbacks: Sequence[Any]) -> list[Callback]:
    if isinstance(callbacks, (Callback, str)) or callable(callbacks) and not isinstance(callbacks, Sequence):
        callbacks = [callbacks]
    out = []
    for cb in callbacks:
        if isinstance(cb, Callback):
            out.append(cb)
        elif callable(cb):
            out.append(_FnCallback(cb))
        else:
            raise TypeError(f"callbacks must be sparsekit Callback objects or callables fn(state, stats), "
                            f"got {type(cb).__name__}")
    return out


# --------------------------------------------------------------------------------------------------
# distributed, device, precision


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_available():
        raise SparsekitError("WORLD_SIZE is set but this torch build has no torch.distributed")
    here = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        here = True
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), here)


def _resolve_device(device: str | torch.device, d: _Dist) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a torch device: {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SparsekitError(f"device {device!r} asked for but CUDA is not available; use device='cpu' or 'auto'")
        if dev.index is None:
            dev = torch.device("cuda", d.local_rank if d.active else torch.cuda.current_device())
    return dev


def _amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]


# --------------------------------------------------------------------------------------------------
# data


def _data_seed(seed: int) -> int:
    return stream_key(seed, "data", "order") & ((1 << 62) - 1)


def _epoch_seed(seed: int, epoch: int) -> int:
    return stream_key(seed, "train", f"epoch-{epoch}") & ((1 << 62) - 1)


class _EpochPermutation(Sampler[int]):
    """Shuffles with the same permutation ``DistributedSampler(seed=s)`` draws at ``set_epoch(e)``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class _TensorBatches:
    """Fast path for in-memory TensorDatasets: index whole batches instead of collating samples."""

    def __init__(self, tensors: Sequence[torch.Tensor], batch_size: int, sampler: Sampler[int] | None) -> None:
        self.tensors, self.batch_size, self.sampler = tensors, batch_size, sampler

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        n = len(self.tensors[0])
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.long) if self.sampler is not None else \
            torch.arange(n)
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield [t[idx] for t in self.tensors]

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.tensors[0])
        return math.ceil(n / self.batch_size)


class _Data:
    """A training or evaluation data source with a per-epoch deterministic order."""

    def __init__(self, data: Dataset | DataLoader, *, batch_size: int, shuffle: bool, seed: int, d: _Dist,
                 device: torch.device, num_workers: int | None, what: str) -> None:
        self.user_loader: DataLoader | None = None
        self.sampler: Any = None
        if isinstance(data, DataLoader):
            loader = data
            if d.active and not _is_distributed_sampler(loader.sampler):
                data = loader.dataset  # rebuild it with a DistributedSampler (same batch size and collate)
                batch_size = loader.batch_size or batch_size
                num_workers = loader.num_workers
                self._collate = loader.collate_fn
            else:
                self.user_loader = loader
                self.sampler = loader.sampler if _is_distributed_sampler(loader.sampler) else None
                return
        else:
            self._collate = None
        if not isinstance(data, Dataset) or not hasattr(data, "__len__"):
            raise TypeError(f"{what} must be a torch Dataset with a length or a DataLoader, got {type(data).__name__}")
        n = len(data)
        if n == 0:
            raise ValueError(f"{what} is empty")
        if d.active:
            from torch.utils.data.distributed import DistributedSampler

            if shuffle:
                self.sampler = DistributedSampler(data, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                                  seed=seed, drop_last=False)
            else:  # evaluation: disjoint shards, no padding, so the all-reduced sums are exact
                data = torch.utils.data.Subset(data, list(range(d.rank, n, d.world_size)))
        elif shuffle:
            self.sampler = _EpochPermutation(n, seed)
        if num_workers is None:
            num_workers = min(8, (os.cpu_count() or 1) // max(1, d.world_size)) if device.type == "cuda" else 0
        self.dataset, self.batch_size, self.num_workers, self.device = data, batch_size, num_workers, device

    def epoch(self, epoch: int, seed: int) -> Iterable[Any]:
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if self.user_loader is not None:
            return self.user_loader
        if isinstance(self.dataset, TensorDataset) and self.num_workers == 0 and self._collate is None:
            return _TensorBatches(self.dataset.tensors, self.batch_size, self.sampler)
        g = torch.Generator()
        g.manual_seed(_epoch_seed(seed, epoch))  # worker seeds (augmentation in workers)
        kwargs: dict[str, Any] = {}
        if self._collate is not None:
            kwargs["collate_fn"] = self._collate
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda", generator=g,
                          drop_last=False, **kwargs)


def _is_distributed_sampler(s: object) -> bool:
    from torch.utils.data.distributed import DistributedSampler

    return isinstance(s, DistributedSampler)


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and "input" in batch and "label" in batch:
        return batch["input"], batch["label"]
    raise SparsekitError(
        f"a batch must be (inputs, targets) or a dict with 'input' and 'label'; got {type(batch).__name__}")


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


# --------------------------------------------------------------------------------------------------
# optimizer and schedule


def _build_optimizer(optimizer: Any, params: list[nn.Parameter], cfg: TrainConfig, *,
                     fused: bool = False) -> torch.optim.Optimizer:
    if optimizer is None:
        kw = {}
        if fused and all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
                         for p in params):
            kw["fused"] = True  # one kernel per tensor (Algorithm.fused_sgd)
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **kw)
    if isinstance(optimizer, torch.optim.Optimizer):
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not ids & {id(p) for p in params}:
            raise SparsekitError("the optimizer given does not hold any of the model's trainable parameters; "
                                 "build it from model.parameters() or pass a factory lambda params: ...")
        return optimizer
    if callable(optimizer):
        opt = optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer factory must return a torch.optim.Optimizer, got {type(opt).__name__}")
        return opt
    raise TypeError("optimizer must be None (SGD with the paper's settings), a torch.optim.Optimizer or a "
                    f"callable params -> Optimizer; got {type(optimizer).__name__}")


def _build_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "multistep":
        ms = sorted({max(1, round(m * cfg.epochs)) for m in cfg.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _e: 1.0)


# --------------------------------------------------------------------------------------------------
# checkpoints


def _rng_state(device: torch.device) -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _py_rng_to_tensor()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _py_rng_to_tensor() -> torch.Tensor:
    version, internal, gauss = random.getstate()
    return torch.tensor([version, *internal, -1 if gauss is None else 1], dtype=torch.int64)


def _set_rng_state(st: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(st["torch"].cpu())
    py = st["python"].tolist()
    random.setstate((py[0], tuple(py[1:-1]), None))
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"].cpu(), device)


def _write_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


_CHECKPOINT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "step": int, "config": str, "algorithm_name": str, "model": dict, "optimizer": dict,
    "scheduler": dict, "rng": dict, "history": str}


def _read_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    from .._safety import check_regular_file

    check_regular_file(path, "checkpoint")
    if path.stat().st_size == 0:
        raise SparsekitError(f"cannot read checkpoint {path}: the file is empty (0 bytes); start a new run in another "
                             "checkpoint_dir")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unpickling failure means "not our checkpoint"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SparsekitError(f"cannot read checkpoint {path}: {first} "
                             "(only sparsekit checkpoints are read, without executing code)") from None
    if not isinstance(ck, dict) or ck.get("format") != _CHECKPOINT_FORMAT:
        raise SparsekitError(f"{path} is not a sparsekit checkpoint")
    if ck.get("version") != _CHECKPOINT_VERSION:
        raise SparsekitError(f"{path} is a checkpoint of format version {ck.get('version')}; this sparsekit reads "
                             f"version {_CHECKPOINT_VERSION}: resume it with the sparsekit that wrote it")
    bad = [k for k, t in _CHECKPOINT_FIELDS.items() if not isinstance(ck.get(k), t) or isinstance(ck.get(k), bool)]
    if not bad:
        try:
            config = json.loads(ck["config"])
            history = json.loads(ck["history"])
            if not isinstance(config, dict) or not isinstance(history, list) or ck["epoch"] < 0 or ck["step"] < 0:
                bad = ["config/history/epoch/step"]
        except (ValueError, RecursionError):
            bad = ["config/history (not JSON)"]
    if bad:
        raise SparsekitError(f"checkpoint {path} is damaged or tampered: field {bad[0]} missing or of the wrong "
                             "type; start a new run in another checkpoint_dir")
    return ck


def _ticket_payload(ticket: Any) -> torch.Tensor | None:
    if ticket is None:
        return None
    from ..formats.ticket_file import ticket_bytes

    return torch.frombuffer(bytearray(ticket_bytes(ticket)), dtype=torch.uint8)


def load_checkpoint_ticket(ck: dict[str, Any], model: nn.Module | None = None) -> Any:
    """The ticket stored in a checkpoint (validated like a ticket file, bounded by ``model``), or None."""
    data = ck.get("ticket")
    if data is None:
        return None
    from ..formats.ticket_file import load_ticket

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "ticket.safetensors"
        if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 1:
            raise SparsekitError("the checkpoint's ticket entry is not a 1-D uint8 tensor (tampered checkpoint)")
        p.write_bytes(data.cpu().numpy().tobytes())
        return load_ticket(p, model=model)


def _stats_from_dict(d: dict[str, Any]) -> EpochStats:
    names = {f.name for f in fields(EpochStats)} - {"extra"}
    return EpochStats(**{k: v for k, v in d.items() if k in names},
                      extra={k: v for k, v in d.items() if k not in names})


# --------------------------------------------------------------------------------------------------
# progress


class _Progress:
    """A live bar on terminals (epoch, step, loss, accuracy, images/s) and one summary line per epoch."""

    def __init__(self, enabled: bool, epochs: int) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self._bar: Any = None
        self._task: Any = None
        self.console: Any = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=False, highlight=False)

    def start_epoch(self, epoch: int, steps: int | None) -> None:
        if not self.enabled or not self.console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn(f"epoch {epoch + 1}/{self.epochs}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console,
                             transient=True)
        self._bar.start()
        self._task = self._bar.add_task("train", total=steps, info="")

    def update(self, step: int, loss: float, acc: float, ips: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step,
                             info=f"loss {loss:.4f}  acc {acc:.4f}  {ips:,.0f} img/s")

    def end_epoch(self, s: EpochStats) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self.enabled:
            ev = f"  eval loss {s.eval_loss:.4f} acc {s.eval_acc:.4f}" if s.eval_acc is not None else ""
            extra = "".join(f"  {k} {v:.4g}" for k, v in s.extra.items())
            self.console.print(f"epoch {s.epoch + 1}/{self.epochs}  loss {s.train_loss:.4f} acc {s.train_acc:.4f}"
                               f"{ev}  lr {s.lr:.4g}  {s.images_per_s:,.0f} img/s  {s.seconds:.1f}s{extra}",
                               soft_wrap=True)

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, soft_wrap=True)


# --------------------------------------------------------------------------------------------------
# the loop


def _evaluate(model: nn.Module, data: _Data, epoch: int, seed: int, device: torch.device,
              amp: torch.dtype | None, loss_fn: Callable, d: _Dist) -> tuple[float, float]:
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    with torch.no_grad():
        for batch in data.epoch(epoch, seed):
            x, y = _split_batch(batch)
            x, y = _to(x, device), _to(y, device)
            with _autocast(device, amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            n = y.shape[0]
            sums += torch.stack([loss.detach().double() * n, (out.argmax(1) == y).sum().double(),
                                 torch.tensor(float(n), dtype=torch.float64, device=device)])
    _all_reduce(sums, d)
    model.train(was_training)
    loss_sum, correct, count = sums.tolist()
    return loss_sum / max(count, 1), correct / max(count, 1)


def _all_reduce(t: torch.Tensor, d: _Dist) -> None:
    if d.active:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.all_reduce(t)
        else:
            cpu = t.cpu()
            dist.all_reduce(cpu)
            t.copy_(cpu)


def _autocast(device: torch.device, amp: torch.dtype | None) -> Any:
    if amp is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def run(model: nn.Module, train_data: Dataset | DataLoader, config: TrainConfig, *,
        algorithm: Algorithm | None = None, eval_data: Dataset | DataLoader | None = None,
        optimizer: Any = None, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        callbacks: Sequence[Any] = (), checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
        progress: bool = True) -> History:
    """Train ``model`` in place with ``algorithm``; see the module docstring. Returns the history."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir: the folder the interrupted run wrote checkpoints to")
    algorithm = algorithm or Algorithm()
    cbs = _callbacks(callbacks)
    loss_fn = loss_fn or F.cross_entropy
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    d = _setup_distributed(config.device if isinstance(config.device, str) else str(config.device))
    try:
        return _run(model, train_data, config, algorithm, eval_data, optimizer, loss_fn, cbs, ckdir, resume,
                    progress, d)
    finally:
        if d.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(model: nn.Module, train_data: Any, cfg: TrainConfig, algorithm: Algorithm, eval_data: Any,
         optimizer: Any, loss_fn: Callable, cbs: list[Callback], ckdir: Path | None, resume: bool,
         progress: bool, d: _Dist) -> History:
    sharded = [n for n, p in model.named_parameters() if is_dtensor(p)]
    if sharded:
        raise SparsekitError(
            f"the model is sharded ({sharded[0]} is a DTensor, e.g. after fully_shard): fit_weak, fit_strong and "
            "rewire train with DistributedDataParallel under torchrun; pass the unsharded model, or train the "
            "sharded one in your own loop (README: 'In your training code', FSDP2)")
    device = _resolve_device(cfg.device, d)
    amp = _amp_dtype(cfg.amp, device)
    bar = _Progress(bool(progress) and d.is_main, cfg.epochs)
    ck = None
    ckpath = ckdir / CHECKPOINT_NAME if ckdir is not None else None
    data_key = _data_key(train_data) if ckdir is not None else None
    if ckdir is not None and d.is_main:
        if ckdir.exists() and not ckdir.is_dir():
            raise NotADirectoryError(f"checkpoint_dir {ckdir} is a file; give a folder")
        ckdir.mkdir(parents=True, exist_ok=True)
    if resume and ckpath is not None:
        if d.is_main:  # temp files a killed run left behind (kill -9 during a checkpoint write)
            clean_stale_temps(ckpath)
            clean_stale_temps(ckpath.parent / "history.json")
        if ckpath.exists():
            ck = _read_checkpoint(ckpath, torch.device("cpu"))
            _check_resume_config(ck, cfg, algorithm, ckpath, data_key)
            _restore_masks(model, ck, ckpath)
        else:
            bar.note(f"no checkpoint in {ckdir}: starting from epoch 1")
    elif ckpath is not None and ckpath.exists() and d.is_main:
        raise FileExistsError(f"{ckpath} exists from an earlier run; pass resume=True (CLI: --resume) to continue "
                              "it, or choose another checkpoint_dir")

    try:
        model.train(model.training)  # torch.export programs have no train mode
    except NotImplementedError as e:
        raise SparsekitError(f"this model cannot be trained ({e}); a torch.export program (.pt2) is for inference: "
                             "train the eager nn.Module (sparsekit:NAME, package.module:factory or a state_dict "
                             "with --arch) and export it afterwards") from None
    model.to(device)
    state_model = model
    algorithm.setup(model, device)
    params = list(algorithm.parameters(model))
    if not params:
        raise SparsekitError("nothing to train: the model has no parameters with requires_grad=True")
    opt = _build_optimizer(optimizer, params, cfg, fused=algorithm.fused_sgd)
    sched = algorithm.schedule(opt, cfg) or _build_schedule(opt, cfg)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    state = TrainState(model=state_model, optimizer=opt, config=cfg, rank=d.rank, world_size=d.world_size,
                       device=device, is_main=d.is_main)
    algorithm.on_train_start(state)

    if ck is not None:
        algorithm.load_state_dict(ck.get("algorithm", {}))  # first: rewired masks before the weights they keep
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        state.history = History(_stats_from_dict(s) for s in json.loads(ck["history"]))
        state.epoch = int(ck["epoch"])
        state.step = int(ck["step"])
        _set_rng_state(ck["rng"], device)
        bar.note(f"resumed from {ckpath} after epoch {state.epoch}")

    net: nn.Module = algorithm.wrap(model)
    if d.active:
        check_same_masks(model)
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)

    data_seed = _data_seed(cfg.seed)
    train = _Data(train_data, batch_size=cfg.batch_size, shuffle=True, seed=data_seed, d=d, device=device,
                  num_workers=cfg.num_workers, what="train_data")
    evaluation = None if eval_data is None else _Data(
        eval_data, batch_size=max(cfg.batch_size, 256), shuffle=False, seed=data_seed, d=d, device=device,
        num_workers=cfg.num_workers, what="eval_data")
    pruned = is_pruned(model)

    for cb in cbs:
        cb.on_train_start(state)
    while state.epoch < cfg.epochs and not state.should_stop:
        epoch = state.epoch
        es = _epoch_seed(cfg.seed, epoch)
        torch.manual_seed(es)  # dropout, augmentation and any other global-RNG use: a function of (seed, epoch)
        random.seed(es)
        batches = train.epoch(epoch, data_seed)
        try:
            steps = len(batches)  # type: ignore[arg-type]
        except TypeError:
            steps = None
        state.steps_per_epoch = steps or 0
        bar.start_epoch(epoch, steps)
        net.train()
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        lr = opt.param_groups[0]["lr"]
        t0 = time.perf_counter()
        last_show = t0
        for i, batch in enumerate(batches):
            x, y = _split_batch(batch)
            x, y = _to(x, device), _to(y, device)
            with _autocast(device, amp):
                out = net(x)
            loss = loss_fn(out.float(), y)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if d.active and pruned:
                mask_gradients(model)  # the all-reduce rewrote .grad after the per-parameter hook ran
            algorithm.after_backward(state)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            state.step += 1
            algorithm.after_step(state)
            n = y.shape[0]
            with torch.no_grad():
                sums += torch.stack([loss.detach().double() * n, (out.argmax(1) == y).sum().double(),
                                     torch.tensor(float(n), dtype=torch.float64, device=device)])
            for cb in cbs:
                cb.on_step_end(state)
            now = time.perf_counter()
            if bar._bar is not None and now - last_show > 0.25:
                last_show = now
                ls, c, k = sums.tolist()
                bar.update(i + 1, ls / k, c / k, k * d.world_size / (now - t0))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        sched.step()
        _all_reduce(sums, d)
        loss_sum, correct, count = sums.tolist()
        if count == 0:
            raise SparsekitError("train_data gave no batches this epoch")
        extra = dict(algorithm.on_epoch_end(state) or {})
        ev_loss = ev_acc = None
        if evaluation is not None:
            ev_loss, ev_acc = _evaluate(net, evaluation, epoch, data_seed, device, amp, loss_fn, d)
        stats = EpochStats(epoch=epoch, train_loss=loss_sum / count, train_acc=correct / count, lr=lr,
                           images_per_s=count / seconds if seconds > 0 else float("inf"), seconds=seconds,
                           eval_loss=ev_loss, eval_acc=ev_acc, extra=extra)
        if not math.isfinite(stats.train_loss):
            raise SparsekitError(f"training diverged in epoch {epoch + 1} (loss {stats.train_loss}); lower lr "
                                 f"(now {lr}) or use amp='bf16'/None instead of fp16")
        state.history.append(stats)
        state.epoch += 1
        bar.end_epoch(stats)
        if ckpath is not None and d.is_main:
            _write_checkpoint(ckpath, {
                "format": _CHECKPOINT_FORMAT, "version": _CHECKPOINT_VERSION, "epoch": state.epoch,
                "step": state.step, "config": json.dumps(cfg.resume_key()), "algorithm_name": algorithm.name,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {}, "algorithm": algorithm.state_dict(),
                "ticket": _ticket_payload(algorithm.ticket(model)), "rng": _rng_state(device),
                "history": json.dumps(state.history.to_dicts()), "data": data_key,
            })
            state.history.to_json(ckdir / "history.json")
        for cb in cbs:  # after the checkpoint: a callback that raises (or a kill) loses nothing
            cb.on_epoch_end(state, stats)
    for cb in cbs:
        cb.on_train_end(state)
    return state.history


def _data_key(train_data: Any) -> str:
    """A fingerprint of the training data, taken without indexing it (which would draw augmentation randomness).

    Type, length and a hash of the start and end of its array attributes (``tensors`` of a TensorDataset,
    ``data``/``targets``); the dataset's own ``repr`` when it has no such arrays. Moving the files to
    another folder keeps the fingerprint.
    """
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    try:
        n: int | None = len(train_data)
    except TypeError:
        n = None
    h.update(f"{type(train_data).__module__}.{type(train_data).__qualname__}:{n}".encode())
    arrays = list(getattr(train_data, "tensors", ()) or ())
    arrays += [getattr(train_data, a, None) for a in ("data", "targets", "labels", "images")]
    arrays = [a for a in arrays if isinstance(a, (torch.Tensor, np.ndarray))]
    if not arrays and type(train_data).__repr__ is not object.__repr__:
        h.update(repr(train_data)[:2000].encode())  # no arrays to hash: the dataset's own description
    for a in arrays:
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        elif isinstance(a, np.ndarray):
            a = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        else:
            continue
        h.update(str(a.size).encode())
        h.update(a[:65536].tobytes())
        h.update(a[-65536:].tobytes())
    return f"{n} samples, sha256 {h.hexdigest()[:16]}"


def _check_resume_config(ck: dict[str, Any], cfg: TrainConfig, algorithm: Algorithm, path: Path,
                         data_key: str | None = None) -> None:
    saved = json.loads(ck["config"])
    now = cfg.resume_key()
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)]
    if data_key is not None and isinstance(ck.get("data"), str) and ck["data"] != data_key:
        diff.append(f"training data: checkpoint {ck['data']}, now {data_key}")
    if ck.get("algorithm_name") != algorithm.name:
        diff.insert(0, f"method: checkpoint {ck.get('algorithm_name')!r}, now {algorithm.name!r}")
    if diff:
        raise SparsekitError(f"cannot resume {path}: the run's settings differ ({'; '.join(diff)}); resume with the "
                             "same settings or start a new run in another checkpoint_dir")


def _restore_masks(model: nn.Module, ck: dict[str, Any], path: Path) -> None:
    """Attach the checkpoint's ticket to an unpruned model, or check a pruned model carries the same masks."""
    ticket = load_checkpoint_ticket(ck, model)
    if ticket is None:
        return
    if not is_pruned(model):
        from ..formats.ticket_file import apply_ticket

        apply_ticket(model, ticket, strict=False)
        return
    now = ticket_of(model)
    if now is not None and ticket.kind == "er" and getattr(now, "kind", None) == "er":
        diff = [f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in (
            ("method", ticket.method, now.method), ("density", ticket.density, now.density),
            ("method options", dict(ticket.method_options), dict(now.method_options)), ("seed", ticket.seed, now.seed),
            ("flow", ticket.flow, now.flow), ("exact", ticket.exact, now.exact),
            ("structure", getattr(ticket, "structure", "element"), getattr(now, "structure", "element"))) if a != b]
        if diff:
            raise SparsekitError(f"cannot resume {path}: the masks were made with other settings ({'; '.join(diff)}); "
                                 "resume with the same settings or start a new run in another checkpoint_dir")
    mine = dict((n, m) for n, _p, m in masked_parameters(model))
    theirs = ticket.compact_masks
    if set(mine) != set(theirs) or any(not torch.equal(mine[k].cpu(), theirs[k].bool().cpu()) for k in theirs):
        raise SparsekitError(f"cannot resume {path}: the model's masks differ from the checkpoint's ticket; prune "
                             "with the same method, density and seed, or pass an unpruned model (the checkpoint's "
                             "masks are then attached)")
