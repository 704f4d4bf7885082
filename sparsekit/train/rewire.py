"""Dynamic sparse training from ER masks: RigL and SET rewiring, and sparse-to-sparse pruning schedules.

Paper §3 "Dynamical Sparse Training", Table 4 and App. A.13 (Tables 20-21): an ER network is
trained while its mask is updated every ``update_every`` steps: a fraction of the kept weights with
the smallest magnitude is dropped and as many connections are grown, by gradient magnitude (RigL,
Evci et al. 2020) or at random (SET, Mocanu et al. 2018). The drop fraction decays with a cosine
schedule and updates stop at ``stop_at`` of training (RigL's defaults: 0.5 / 100 steps / 0.75). With
``final_density`` below the starting density, extra weights are dropped at every update following
the cubic schedule of Zhu & Gupta (2017), reaching ``final_density`` at ``stop_at`` (the
sparse-to-sparse runs of Table 21).

Details that matter:

* Counts: without a pruning schedule every layer keeps exactly its number of weights.
* RigL's dense gradient is taken only on update steps: the step before one, the gradient hook
  is told to keep a copy of the next dense gradient before it masks it (no dense gradients on any
  other step). Under DDP those copies are all-reduced, so every rank makes the same decisions.
* Regrown weights start at zero and their optimizer state (momentum, Adam moments) is zero; dropped
  weights and their state are zeroed too.
* ``flow=True``: a drop never takes the last edge of a row or column (the weakest safe edges are
  dropped instead), so no neuron or input loses all its connections (App. A.1).
* Randomness (SET's growth, tie-free) comes from the counter RNG keyed by ``(seed, fqn, step)``.
* Methods are small classes: override :meth:`RewireMethod.grow_scores` (and ``drop_scores``).
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .._dtensor import is_dtensor
from .._wrappers import unwrap
from ..attach import _ATTR, is_pruned, replace_mask, ticket_of
from ..errors import SparsekitError
from ..flow import dead_units
from ..init import uniform_from_stream
from ..layers import Layer, LayerLayout
from ..masks import CompactMask
from ..rng import stream_key
from ..ticket import LayerRecord, Ticket
from .engine import Algorithm, History, TrainConfig, TrainState, run

__all__ = ["Rewirer", "RewireMethod", "RigL", "SET", "rewire", "REWIRE_METHODS", "register_rewire_method"]


class RewireMethod:
    """Drop and grow criteria. Higher drop score = keep; higher grow score = grow first."""

    name = ""
    needs_gradient = False

    def drop_scores(self, weight: torch.Tensor, fqn: str, step: int, seed: int) -> torch.Tensor:
        """Scores of every entry (flat); the lowest kept ones are dropped. Default: ``|w|`` (RigL and SET)."""
        return weight.detach().abs().reshape(-1)

    def grow_scores(self, weight: torch.Tensor, grad: torch.Tensor | None, fqn: str, step: int,
                    seed: int) -> torch.Tensor:
        raise NotImplementedError


class RigL(RewireMethod):
    """Grow where the dense gradient is largest (Evci et al. 2020)."""

    name = "rigl"
    needs_gradient = True

    def grow_scores(self, weight, grad, fqn, step, seed):
        return grad.abs().reshape(-1).float()


class SET(RewireMethod):
    """Grow uniformly at random (Mocanu et al. 2018), from the counter RNG keyed by (seed, fqn, step)."""

    name = "set"

    def grow_scores(self, weight, grad, fqn, step, seed):
        key = stream_key(seed, fqn, f"set-grow/{step}")
        return uniform_from_stream(key, weight.numel(), 0.0, 1.0, device=weight.device)


REWIRE_METHODS: dict[str, type[RewireMethod]] = {"rigl": RigL, "set": SET}


def register_rewire_method(cls: type[RewireMethod]) -> type[RewireMethod]:
    """Class decorator: make ``method=cls.name`` available to :func:`rewire` and :class:`Rewirer`."""
    if not cls.name or cls.name in REWIRE_METHODS:
        raise ValueError(f"a rewire method needs a new, non-empty name; {cls.name!r} is taken or empty")
    REWIRE_METHODS[cls.name] = cls
    return cls


def _method(method: str | RewireMethod) -> RewireMethod:
    if isinstance(method, RewireMethod):
        return method
    cls = REWIRE_METHODS.get(str(method).lower())
    if cls is None:
        raise ValueError(f"unknown rewire method {method!r}; valid: {sorted(REWIRE_METHODS)} (add one with "
                         "sparsekit.train.rewire.register_rewire_method)")
    return cls()


def _unit_ids(layer: Layer, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row (output unit) and column (input unit) ids of flat indices, unique per group."""
    lay = layer.layout
    shape = tuple(layer.shape)
    coords = torch.unravel_index(flat, shape)
    o, i = coords[lay.out_axis], coords[lay.in_axis]
    if lay.stack_axis is not None:  # each stacked matrix (expert) has its own units
        e = coords[lay.stack_axis]
        return e * shape[lay.out_axis] + o, e * shape[lay.in_axis] + i
    G = max(1, lay.groups)
    if lay.out_axis == 0 or G == 1:  # the in axis holds in/groups channels: columns are per group
        R = shape[lay.out_axis] // G
        return o, (o // max(1, R)) * shape[lay.in_axis] + i
    C = shape[lay.in_axis] // G  # transposed: the out axis holds out/groups channels
    return (i // max(1, C)) * shape[lay.out_axis] + o, i


class Rewirer:
    """Rewires a pruned model's masks during training; call :meth:`step` after every ``optimizer.step()``.

    Example (your own loop)::

        ticket = sparsekit.prune(model, "er-balanced", density=0.01)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        rewirer = sparsekit.Rewirer(model, opt, method="rigl", total_steps=epochs * len(loader))
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            rewirer.step()
        ticket = rewirer.ticket()            # kind "rewired", save with sparsekit.save_ticket

    Args:
        model: a model ``prune`` masked (or a ticket was applied to).
        optimizer: the optimizer of the model's weights (its state is reset where weights regrow).
        method: ``"rigl"``, ``"set"`` or a :class:`RewireMethod`.
        total_steps: steps of the whole run (the schedules are fractions of it).
        update_every: steps between mask updates (paper A.13: 100).
        drop_fraction: fraction of kept weights replaced at the first update (paper: 0.5).
        drop_schedule: ``"cosine"`` (decays to 0 at ``stop_at``) or ``"constant"``.
        stop_at: fraction of ``total_steps`` after which the mask no longer changes.
        final_density: prune gradually (cubic schedule) to this global density by ``stop_at``.
        flow: never drop the last edge of a row or column.
        seed: seed of the random choices (SET's growth).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, method: str | RewireMethod = "rigl", *,
                 total_steps: int, update_every: int = 100, drop_fraction: float = 0.5,
                 drop_schedule: str = "cosine", stop_at: float = 0.75, final_density: float | None = None,
                 flow: bool = True, seed: int = 0) -> None:
        model = unwrap(model)  # DDP / torch.compile wrappers: the ticket names weights like the module inside
        if not is_pruned(model):
            raise SparsekitError("Rewirer needs a pruned model: call sparsekit.prune(model, ...) first")
        sharded = [n for n, p in model.named_parameters() if is_dtensor(p)]
        if sharded:
            raise SparsekitError(
                f"Rewirer does not support sharded models ({sharded[0]} is a DTensor, e.g. after fully_shard): "
                "RigL/SET rank weights and gradients of whole layers; rewire under DistributedDataParallel")
        self.method = _method(method)
        for name, v, ok in (("update_every", update_every, isinstance(update_every, int) and update_every >= 1),
                            ("drop_fraction", drop_fraction, isinstance(drop_fraction, (int, float))
                             and 0 <= drop_fraction <= 1),
                            ("stop_at", stop_at, isinstance(stop_at, (int, float)) and 0 < stop_at <= 1),
                            ("total_steps", total_steps, isinstance(total_steps, int) and total_steps >= 0)):
            if not ok or isinstance(v, bool):
                raise ValueError(f"{name} has a bad value {v!r}")
        if drop_schedule not in ("cosine", "constant"):
            raise ValueError(f"drop_schedule must be 'cosine' or 'constant', got {drop_schedule!r}")
        self.model, self.optimizer = model, optimizer
        self.total_steps, self.update_every, self.drop_fraction = total_steps, update_every, float(drop_fraction)
        self.drop_schedule, self.stop_at, self.flow, self.seed = drop_schedule, float(stop_at), flow, seed
        base = ticket_of(model)
        _refuse_structured(base)
        self.base = base
        layouts = dict(getattr(base, "layouts", {}) or {})
        self.entries: list[tuple[str, nn.Parameter, Layer]] = []
        seen = set()
        for p in model.parameters():
            h = getattr(p, _ATTR, None)
            if h is None or id(p) in seen:
                continue
            seen.add(id(p))
            layout = layouts.get(h.fqn) or LayerLayout()
            mod, _, _ = h.fqn.rpartition(".")
            self.entries.append((h.fqn, p, Layer(h.fqn, mod, "", tuple(p.shape), layout, p)))
        self.initial = {fqn: getattr(p, _ATTR).mask.nnz for fqn, p, _ in self.entries}
        total = sum(p.numel() for _f, p, _L in self.entries)
        self.start_density = sum(self.initial.values()) / total if total else 1.0
        if final_density is not None:
            if isinstance(final_density, bool) or not isinstance(final_density, (int, float)) or \
                    not 0 < final_density <= self.start_density:
                raise ValueError(f"final_density must be in (0, {self.start_density:.4g}] (the current density), "
                                 f"got {final_density!r}")
        self.final_density = final_density
        self.step_count = 0
        self.updates: list[dict[str, Any]] = []
        self._arm()

    # -- schedule -----------------------------------------------------------------------------------
    @property
    def end_step(self) -> int:
        return int(self.stop_at * self.total_steps)

    def is_update_step(self, step: int) -> bool:
        return step > 0 and step % self.update_every == 0 and step <= self.end_step

    def drop_fraction_at(self, step: int) -> float:
        if self.drop_schedule == "constant":
            return self.drop_fraction
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * min(step, self.end_step) / max(1, self.end_step)))

    def target_count(self, fqn: str, step: int) -> int:
        """Kept weights of a layer after the update at ``step`` (Zhu & Gupta's cubic schedule)."""
        n0 = self.initial[fqn]
        if self.final_density is None:
            return n0
        nf = max(1, round(n0 * self.final_density / self.start_density))
        frac = min(1.0, step / max(1, self.end_step))
        return round(nf + (n0 - nf) * (1 - frac) ** 3)

    def _arm(self) -> None:
        """Ask the gradient hooks for a dense gradient on the next backward if the next step updates."""
        want = self.method.needs_gradient and self.is_update_step(self.step_count + 1)
        for _fqn, p, _L in self.entries:
            h = getattr(p, _ATTR)
            h.capture = want
            if not want:
                h.captured = None

    # -- the update ---------------------------------------------------------------------------------
    def step(self) -> dict[str, Any] | None:
        """Count one optimizer step; on update steps rewire every layer and return what changed."""
        self.step_count += 1
        info = None
        if self.is_update_step(self.step_count):
            info = self.update()
        self._arm()
        return info

    @torch.no_grad()
    def update(self) -> dict[str, Any]:
        t = self.step_count
        frac = self.drop_fraction_at(t)
        grads = self._gradients()
        dropped = grown = 0
        for (fqn, p, layer), g in zip(self.entries, grads, strict=True):
            d, gr = self._update_layer(fqn, p, layer, g, frac, t)
            dropped += d
            grown += gr
        info = {"step": t, "drop_fraction": frac, "dropped": dropped, "grown": grown,
                "density": self.density()}
        self.updates.append(info)
        return info

    def _gradients(self) -> list[torch.Tensor | None]:
        if not self.method.needs_gradient:
            return [None] * len(self.entries)
        out = []
        for fqn, p, _L in self.entries:
            g = getattr(p, _ATTR).captured
            if g is None:
                raise SparsekitError(f"no dense gradient was captured for {fqn} before this RigL update: call "
                                     "rewirer.step() once after every optimizer.step(), with a backward in between")
            out.append(g)
        if torch.distributed.is_available() and torch.distributed.is_initialized() and \
                torch.distributed.get_world_size() > 1:
            import torch.distributed as dist

            flat = torch.cat([g.reshape(-1).float() for g in out])
            backend_cpu = dist.get_backend() != "nccl"
            buf = flat.cpu() if backend_cpu else flat
            dist.all_reduce(buf)
            buf = buf.to(flat.device) / dist.get_world_size()
            out, i = [], 0
            for _fqn, p, _L in self.entries:
                out.append(buf[i:i + p.numel()].view(p.shape))
                i += p.numel()
        for _fqn, p, _L in self.entries:
            getattr(p, _ATTR).captured = None
        return out

    def _update_layer(self, fqn: str, p: nn.Parameter, layer: Layer, grad: torch.Tensor | None, frac: float,
                      step: int) -> tuple[int, int]:
        h = getattr(p, _ATTR)
        kept = h.mask.kept_indices().to(p.device)
        n = kept.numel()
        target = self.target_count(fqn, step)
        n_swap = min(round(frac * n), n - 1) if n > 1 else 0
        n_drop = n_swap + max(0, n - target)
        if n_drop <= 0:
            return 0, 0
        drop_score = self.method.drop_scores(p, fqn, step, self.seed)[kept]
        order = torch.argsort(drop_score, stable=True)  # weakest first
        drop = self._safe_drop(layer, kept, order, n_drop) if self.flow else kept[order[:n_drop]]
        n_drop = drop.numel()
        n_grow = max(0, min(n_swap, n_drop - max(0, n - target)))
        flat = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
        flat[kept] = True
        flat[drop] = False
        grow = torch.empty(0, dtype=torch.long, device=p.device)
        if n_grow:
            score = self.method.grow_scores(p, grad, fqn, step, self.seed).to(p.device).clone()
            score[flat] = -math.inf
            grow = torch.topk(score, n_grow, sorted=False).indices
            flat[grow] = True
        new = CompactMask.from_bool(flat.view(p.shape).cpu())
        replace_mask(p, new)
        # regrown weights start at zero (they were masked), dropped weights were zeroed by replace_mask; reset
        # the optimizer state at both
        changed = torch.cat([drop, grow])
        for v in self.optimizer.state.get(p, {}).values():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                v.view(-1)[changed.to(v.device)] = 0
        return n_drop, grow.numel()

    def _safe_drop(self, layer: Layer, kept: torch.Tensor, order: torch.Tensor, n_drop: int) -> torch.Tensor:
        """The ``n_drop`` weakest kept edges whose removal leaves every row and column an edge."""
        rows, cols = _unit_ids(layer, kept)
        deg_r = torch.bincount(rows, minlength=int(rows.max()) + 1 if rows.numel() else 0)
        deg_c = torch.bincount(cols, minlength=int(cols.max()) + 1 if cols.numel() else 0)
        first = order[:n_drop]
        r_drop = torch.bincount(rows[first], minlength=deg_r.numel())
        c_drop = torch.bincount(cols[first], minlength=deg_c.numel())
        if bool((r_drop < deg_r).all()) and bool((c_drop < deg_c).all()):
            return kept[first]  # the common case: nobody loses its last edge
        chosen = []  # rare: walk the candidates and keep every unit's last edge
        dr, dc = deg_r.clone(), deg_c.clone()
        for j in order.tolist():
            r, c = int(rows[j]), int(cols[j])
            if dr[r] > 1 and dc[c] > 1:
                dr[r] -= 1
                dc[c] -= 1
                chosen.append(j)
                if len(chosen) == n_drop:
                    break
        return kept[torch.tensor(chosen, dtype=torch.long, device=kept.device)]

    # -- results ------------------------------------------------------------------------------------
    def density(self) -> float:
        total = sum(p.numel() for _f, p, _L in self.entries)
        return sum(getattr(p, _ATTR).mask.nnz for _f, p, _L in self.entries) / total if total else 1.0

    def dead_units(self) -> int:
        """Rows plus columns without any kept edge, over all layers (0 when flow is preserved)."""
        n = 0
        for _fqn, p, layer in self.entries:
            r, c = dead_units(layer, getattr(p, _ATTR).mask.bool().to(p.device))
            n += r.shape[0] + c.shape[0]
        return n

    def ticket(self) -> Ticket:
        """The current masks as a ticket of kind ``"rewired"`` (mask bits + provenance)."""
        base = self.base
        masks = {fqn: getattr(p, _ATTR).mask for fqn, p, _L in self.entries}
        records = []
        base_records = {r.fqn: r for r in getattr(base, "layers", [])}
        for fqn, p, _L in self.entries:
            r = base_records.get(fqn)
            cm = masks[fqn]
            records.append(LayerRecord(fqn, r.module_type if r else "", tuple(p.shape), cm.nnz / cm.numel, cm.nnz,
                                       aliases=r.aliases if r else (), dtype=r.dtype if r else ""))
        options = dict(getattr(base, "method_options", {}) or {})
        options["rewire"] = {"method": self.method.name, "update_every": self.update_every,
                             "drop_fraction": self.drop_fraction, "drop_schedule": self.drop_schedule,
                             "stop_at": self.stop_at, "final_density": self.final_density, "flow": self.flow,
                             "seed": self.seed, "steps": self.step_count, "initial_density": self.start_density}
        t = Ticket(getattr(base, "method", "unknown"), self.density(), getattr(base, "seed", 0),
                   getattr(base, "flow", None), getattr(base, "exact", False), records, masks, options,
                   kind="rewired", sparsekit_version=getattr(base, "sparsekit_version", ""))
        t.layouts = {fqn: L.layout for fqn, _p, L in self.entries}
        t.model_ref = weakref.ref(self.model)
        return t

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count, "masks": {fqn: getattr(p, _ATTR).mask.kept_indices().cpu()
                                                   for fqn, p, _L in self.entries}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])
        for fqn, p, _L in self.entries:
            kept = state["masks"][fqn].to(torch.long)
            flat = torch.zeros(p.numel(), dtype=torch.bool)
            flat[kept] = True
            replace_mask(p, CompactMask.from_bool(flat.view(p.shape)))
        self._arm()


class _RewireAlgorithm(Algorithm):
    name = "rewire"

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs
        self.rewirer: Rewirer | None = None
        self._pending: dict[str, Any] | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.rewirer = Rewirer(state.model, state.optimizer, total_steps=0, **self.kwargs)
        if self._pending is not None:
            self.rewirer.load_state_dict(self._pending)

    def after_step(self, state: TrainState) -> None:
        r = self.rewirer
        if r.total_steps == 0:
            r.total_steps = state.config.epochs * max(1, state.steps_per_epoch)
        r.step()

    def on_epoch_end(self, state: TrainState) -> dict[str, float]:
        r = self.rewirer
        return {"density": r.density(), "updates": float(len(r.updates))}

    def ticket(self, model: nn.Module) -> Any:
        return None  # masks are in state_dict(); the original ticket stays in the checkpoint via the model

    def state_dict(self) -> dict[str, Any]:
        return self.rewirer.state_dict() if self.rewirer is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            if self.rewirer is None:
                self._pending = state
            else:
                self.rewirer.load_state_dict(state)


def _refuse_structured(base: Any) -> None:
    """RigL/SET drop and grow single weights, which would break a block, fan-in or N:M structure."""
    structure = getattr(base, "structure", "element")
    if structure != "element":
        raise SparsekitError(
            f"rewiring (RigL/SET) drops and regrows single weights and would break the ticket's {structure} mask "
            "structure; train structured masks with fit_weak (fixed masks), or prune with structure='element'")


def rewire(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    *,
    epochs: int,
    method: str | RewireMethod = "rigl",
    final_density: float | None = None,
    update_every: int = 100,
    drop_fraction: float = 0.5,
    drop_schedule: str = "cosine",
    stop_at: float = 0.75,
    flow: bool = True,
    eval_data: Dataset | DataLoader | None = None,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    schedule: str = "multistep",
    optimizer: torch.optim.Optimizer | Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
    device: str | torch.device = "auto",
    amp: str | None = "auto",
    seed: int = 0,
    callbacks: Sequence[Any] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    num_workers: int | None = None,
) -> Ticket:
    """Train a pruned model while rewiring its masks with RigL or SET (paper §3, Table 4, App. A.13).

    Training arguments are those of :func:`sparsekit.fit_weak`; see :class:`Rewirer` for the rewiring
    ones. ``final_density`` below the model's density prunes gradually while rewiring (Table 21).

    Returns:
        A ``"rewired"`` ticket of the final masks (``ticket.history`` holds the per-epoch history,
        with ``density`` and ``updates`` columns). The model keeps the final masks attached.
    """
    if not is_pruned(model):
        raise SparsekitError("rewire needs a pruned model: call sparsekit.prune(model, ...) or apply a ticket first")
    _refuse_structured(ticket_of(model))
    config = TrainConfig(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                         schedule=schedule, seed=seed, amp=amp, num_workers=num_workers,
                         device=device if isinstance(device, str) else str(device))
    algo = _RewireAlgorithm({"method": method, "update_every": update_every, "drop_fraction": drop_fraction,
                             "drop_schedule": drop_schedule, "stop_at": stop_at, "final_density": final_density,
                             "flow": flow, "seed": seed})
    _method(method)  # validate before training starts
    history: History = run(model, train_data, config, algorithm=algo, eval_data=eval_data, optimizer=optimizer,
                           loss_fn=loss_fn, callbacks=callbacks, checkpoint_dir=checkpoint_dir, resume=resume,
                           progress=progress)
    ticket = algo.rewirer.ticket()
    from ..attach import _remember_ticket

    _remember_ticket(model, ticket)
    ticket.history = history  # type: ignore[attr-defined]
    return ticket
