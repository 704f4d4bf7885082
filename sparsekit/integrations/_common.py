"""What the Trainer and Lightning callbacks share: what to prune, and one sparse run's life cycle.

A run prunes the model at train start (or restores the masks a checkpoint carries), optionally
rewires them after every optimizer step through :class:`~sparsekit.Rewirer` (paper §3, RigL/SET),
and hands out the current ticket for checkpoints. Restoring attaches the checkpoint's masks
*after* the checkpoint's weights were loaded into an unpruned model, so rewired masks never zero
weights they keep.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._prune import prune, validate_flow, validate_seed
from .._registry import Method
from ..attach import is_pruned, masked_parameters, ticket_of
from ..densities import validate_density
from ..errors import SparsekitError
from ..layers import FilterFn
from ..ticket import Ticket

__all__ = ["TICKET_FILE", "PruneSpec", "SparseRun"]

#: the ticket's file name inside a checkpoint folder or beside ``save_pretrained`` files
TICKET_FILE = "sparsekit-ticket.safetensors"

_REWIRE_OPTIONS = {"update_every", "drop_fraction", "drop_schedule", "stop_at", "final_density", "flow"}


@dataclass(frozen=True)
class PruneSpec:
    """How a callback prunes (the arguments of :func:`sparsekit.prune`) and whether it rewires.

    Attributes:
        method: a registered method name or :class:`~sparsekit.Method` (paper §3 layerwise densities).
        density: global density in (0, 1]; None for the method's default.
        seed: seed of the masks (and of SET's random growth).
        filter_fn: ``(module, module_fqn) -> bool`` choosing the layers.
        dense: layers kept dense (fqn, module fqn or regex).
        flow: flow repair mode (App. A.1): ``"repair"``, ``"resample"`` or None.
        options: further method options (e.g. ``redistribute=False``).
        rewire: None, ``"rigl"``, ``"set"`` or a :class:`~sparsekit.train.rewire.RewireMethod`.
        rewire_options: :class:`~sparsekit.Rewirer` options (``update_every``, ``drop_fraction``,
            ``drop_schedule``, ``stop_at``, ``final_density``, ``flow``).
    """

    method: str | Method = "er-balanced"
    density: float | None = None
    seed: int = 0
    filter_fn: FilterFn | None = None
    dense: tuple[str, ...] = ()
    flow: str | None = "repair"
    options: Mapping[str, Any] = field(default_factory=dict)
    rewire: Any = None
    rewire_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.density is not None:
            validate_density(self.density)
        validate_seed(self.seed)
        validate_flow(self.flow)
        if isinstance(self.dense, str) or not isinstance(self.dense, Iterable):
            raise TypeError(f"dense must be a list of layer names, got {self.dense!r}")
        object.__setattr__(self, "dense", tuple(self.dense))
        if self.filter_fn is not None and not callable(self.filter_fn):
            raise TypeError(f"filter_fn must be a function (module, fqn) -> bool, got {self.filter_fn!r}")
        if isinstance(self.rewire, str) and self.rewire.lower() not in ("rigl", "set"):
            raise ValueError(f"rewire must be None, 'rigl', 'set' or a RewireMethod, got {self.rewire!r}")
        unknown = set(self.rewire_options) - _REWIRE_OPTIONS
        if unknown:
            raise ValueError(f"unknown rewire_options {sorted(unknown)}; valid: {sorted(_REWIRE_OPTIONS)}")
        if self.rewire_options and self.rewire is None:
            raise ValueError("rewire_options were given but rewire is None; pass rewire='rigl' or 'set'")


class SparseRun:
    """One training run's masks: prune or restore, rewire, and the current ticket."""

    def __init__(self, spec: PruneSpec) -> None:
        self.spec = spec
        self.rewirer: Any = None
        self._resume_step: int | None = None

    @classmethod
    def from_callback_args(cls, method: Any, density: float | None, seed: int, filter_fn: Any, dense: Any,
                           rewire: Any, rewire_options: Mapping[str, Any] | None,
                           options: dict[str, Any]) -> SparseRun:
        """The run described by a callback's constructor arguments (``flow`` travels in ``options``)."""
        options = dict(options)
        flow = options.pop("flow", "repair")
        return cls(PruneSpec(method, density, seed, filter_fn, tuple(dense), flow, options, rewire,
                             dict(rewire_options or {})))

    def prepare(self, model: nn.Module) -> Ticket:
        """Prune ``model`` as the spec says, unless it already carries a ticket (which is then kept)."""
        t = ticket_of(model)
        if t is not None:
            return t
        if is_pruned(model):
            raise SparsekitError("the model carries sparsekit masks but no ticket (attached by hand?): call "
                                 "sparsekit.finalize(model) or prune it with sparsekit.prune")
        s = self.spec
        kwargs: dict[str, Any] = dict(s.options)
        if s.density is not None:
            kwargs["density"] = s.density
        return prune(model, s.method, seed=s.seed, flow=s.flow, filter_fn=s.filter_fn, dense=s.dense, **kwargs)

    def restore(self, model: nn.Module, ticket: Ticket) -> None:
        """Attach a checkpoint's ticket to ``model`` (weights already loaded), or check it carries the same masks."""
        from ..formats.ticket_file import apply_ticket

        if is_pruned(model):
            mine = {n: m for n, _p, m in masked_parameters(model)}
            theirs = ticket.compact_masks
            if set(mine) != set(theirs) or any(not torch.equal(mine[k].cpu(), theirs[k].bool().cpu())
                                               for k in theirs):
                raise SparsekitError("cannot resume: the model's masks differ from the checkpoint's ticket; resume "
                                     "with an unpruned model (the checkpoint's masks are then attached)")
        else:
            apply_ticket(model, ticket, strict=False)
        steps = (ticket.method_options or {}).get("rewire", {}).get("steps")
        if ticket.kind == "rewired" and self.spec.rewire is None:
            raise SparsekitError("the checkpoint holds rewired masks but this callback does not rewire; pass the "
                                 "same rewire= as the run that wrote it")
        self._resume_step = int(steps) if steps is not None else None

    def start_rewiring(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, total_steps: int) -> None:
        """Create the :class:`~sparsekit.Rewirer` (when the spec rewires), continuing a restored run's schedule."""
        if self.spec.rewire is None:
            return
        if optimizer is None:
            raise SparsekitError("rewiring needs the optimizer, and the trainer passed none")
        from ..train.rewire import Rewirer

        self.rewirer = Rewirer(model, optimizer, self.spec.rewire, total_steps=int(total_steps), seed=self.spec.seed,
                               **dict(self.spec.rewire_options))
        if self._resume_step is not None:
            self.rewirer.load_state_dict({"step": self._resume_step, "masks": {
                fqn: mask.kept_indices() for fqn, mask in ticket_of(model).compact_masks.items()}})

    def after_optimizer_step(self) -> None:
        if self.rewirer is not None:
            self.rewirer.step()

    def ticket(self, model: nn.Module) -> Ticket:
        """The current masks: the rewirer's (kind ``rewired``) or the pruning ticket."""
        t = self.rewirer.ticket() if self.rewirer is not None else ticket_of(model)
        if t is None:
            raise SparsekitError("the model carries no sparsekit ticket: was it pruned by this callback?")
        return t


class SparseCallbackArgs:
    """The constructor shared by the training-framework callbacks (HF ``Trainer``, Lightning).

    Args:
        method: pruning method (``sparsekit.list_methods()``), default ``"er-balanced"``.
        density: global density; None for the method's default.
        seed: seed of the masks.
        filter_fn: ``(module, module_fqn) -> bool`` choosing the layers.
        dense: layers kept dense.
        rewire: None, ``"rigl"`` or ``"set"``: rewire the masks during training.
        rewire_options: :class:`~sparsekit.Rewirer` options, e.g. ``{"update_every": 100}``.
        **options: further :func:`sparsekit.prune` options.
    """

    def __init__(self, method: Any = "er-balanced", density: float | None = None, *, seed: int = 0,
                 filter_fn: Any = None, dense: Any = (), rewire: Any = None,
                 rewire_options: dict[str, Any] | None = None, **options: Any) -> None:
        self.run = SparseRun.from_callback_args(method, density, seed, filter_fn, dense, rewire, rewire_options,
                                                options)
