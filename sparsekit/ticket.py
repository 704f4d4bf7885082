"""The :class:`Ticket`: masks plus the provenance needed to rebuild them, and a report.

An ``er`` ticket (drawn by :func:`sparsekit.prune`) is a pure function of ``(seed, method, per-layer
densities, flow mode, exact, rng)``: the masks are kept in memory for enforcement and inspection,
but a ticket file (``formats/TICKET.md``) only has to store these fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ._io import atomic_write_text
from .masks import CompactMask, MaskView

__all__ = ["Ticket", "LayerRecord", "Report", "model_fingerprint"]


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """A digest of every parameter's name and shape: tickets check it before they are applied."""
    import hashlib

    items = sorted((n, list(p.shape)) for n, p in model.named_parameters())
    return {"params_sha256": hashlib.sha256(json.dumps(items, separators=(",", ":")).encode()).hexdigest()[:32]}


@dataclass
class LayerRecord:
    """One masked weight of a ticket (a row of the report)."""

    fqn: str
    module_type: str
    shape: tuple[int, ...]
    target_density: float
    nonzeros: int
    edges_added: int = 0
    rows_repaired: int = 0
    cols_repaired: int = 0
    fallbacks: int = 0
    aliases: tuple[str, ...] = ()
    dtype: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def realised_density(self) -> float:
        return self.nonzeros / self.numel if self.numel else 1.0


@dataclass
class Report:
    """Per-layer rows and totals of a ticket; ``str(report)`` is a plain-text table."""

    rows: list[dict[str, Any]]
    totals: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.rows, "totals": self.totals}

    def coverage_lines(self) -> list[str]:
        """The coverage line, tied parameters and unknown parameters (empty without coverage)."""
        c = self.totals.get("coverage")
        if not c:
            return []
        rules = ", ".join(f"{r} {n / c['params']:.1%}" for r, n in sorted(c["excluded_by_rule"].items(),
                                                                          key=lambda kv: -kv[1]))
        lines = ["coverage of the model's parameters: " + " | ".join([
            f"masked {c['masked']:.1%}", f"dense {c['dense']:.1%}",
            f"excluded {c['excluded']:.1%}" + (f" ({rules})" if rules else ""), f"unknown {c['unknown']:.1%}"])]
        lines += [f"tied: {t['fqn']} = {', '.join(t['aliases'])} -> {t['status']} ({t['rule']})" for t in c["tied"]]
        if c["unknown_params"]:
            lines.append("unknown (left dense, no rule covers them): " + ", ".join(
                f"{u['fqn']} {tuple(u['shape'])}" for u in c["unknown_params"][:8])
                + (f" and {len(c['unknown_params']) - 8} more" if len(c["unknown_params"]) > 8 else ""))
        return lines

    def to_json(self, path: str | None = None, *, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    def __str__(self) -> str:
        head = ["layer", "shape", "params", "target", "realised", "nonzeros", "edges added", "rows repaired",
                "cols repaired"]  # the CLI's column names (sparsekit prune)
        body = [[r["fqn"], "x".join(map(str, r["shape"])), f"{r['params']:,}", f"{r['target_density']:.4g}",
                 f"{r['realised_density']:.4g}", f"{r['nonzeros']:,}", str(r["edges_added"]),
                 str(r["rows_repaired"]), str(r["cols_repaired"])] for r in self.rows]
        t = self.totals
        body.append(["total", "", f"{t['params']:,}", f"{t['target_density']:.4g}", f"{t['realised_density']:.4g}",
                     f"{t['nonzeros']:,}", str(t["edges_added"]), "", f"{t['num_corrected']} corrected"])
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

        def fmt(row: list[str]) -> str:
            cells = enumerate(zip(row, widths, strict=True))
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in cells)

        lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body[:-1]]
        lines += [fmt(["-" * w for w in widths]), fmt(body[-1])]
        return "\n".join(lines + self.structure_lines() + self.coverage_lines())

    def structure_lines(self) -> list[str]:
        """What the repair counters count for a structured ticket (formats/TICKET.md §11); empty for element."""
        s = self.totals.get("structure", "element")
        if s.startswith("block:"):
            return [f"structure {s}: flow repair counts blocks (edges added = blocks added, rows/cols repaired = "
                    "block-rows/block-columns)"]
        if s != "element":
            return [f"structure {s}: dead inputs are revived by moving an edge (counted in cols repaired); edges "
                    "added counts only fallbacks, where a layer had too few edges to reach every input"]
        return []


@dataclass
class Ticket:
    """Masks plus provenance plus a report.

    Attributes:
        kind: ``"er"`` for masks drawn by ``prune`` (later: ``"strong"``, ``"rewired"``).
        method: canonical method name, e.g. ``"er-balanced"``.
        method_options: options given to the method (e.g. ``{"redistribute": False}``).
        density: the global target density.
        seed: seed of the counter RNG.
        flow: ``"repair"``, ``"resample"`` or None.
        exact: exact-count masks instead of Bernoulli.
        layers: one :class:`LayerRecord` per masked weight, in module order (layers kept dense
            appear with target density 1).
        compact_masks: the masks of the layers with density below 1, by fqn, stored compactly
            (:class:`~sparsekit.masks.CompactMask`); ``masks`` shows them as bool tensors.
        rng: id of the random number generator (``formats/TICKET.md``).
        structure: the mask structure (``"element"``, ``"block:HxW"``, ``"fanin"``, ``"nm:N:M"``).
    """

    method: str
    density: float
    seed: int
    flow: str | None
    exact: bool
    layers: list[LayerRecord]
    compact_masks: dict[str, CompactMask] = field(repr=False)
    method_options: dict[str, Any] = field(default_factory=dict)
    kind: str = "er"
    rng: str = "sk-ctr64-v1"
    sparsekit_version: str = ""
    elapsed_s: float = field(default=0.0, compare=False)
    #: axes of each masked weight (needed to rebuild flow repairs from the seed)
    layouts: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: strong tickets: ``{"scheme": ..., "seed": ...}`` rebuilding the frozen weights (formats/TICKET.md §9)
    init: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    #: stored weights of a ticket file saved with ``weights="kept"`` (``kept/<fqn>``, ``state/<key>``)
    weights: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    #: fingerprint of the model a loaded ticket was saved from
    file_fingerprint: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    #: the model spec the ticket was made from on the command line: ``{"spec": str, "arch": str | None}``
    #: (ticket format 1.1 field ``model``); None when unknown
    model_spec: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    #: weak reference to the model the masks are attached to
    model_ref: Any = field(default=None, repr=False, compare=False)
    #: what happened to every parameter of the model (:meth:`sparsekit.coverage.Coverage.summary`);
    #: set by ``prune`` (None for tickets read from files)
    coverage: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    #: how the masks were drawn at each layer's density (:mod:`sparsekit.structures`): ``"element"``,
    #: ``"block:HxW"``, ``"fanin"`` or ``"nm:N:M"``; recorded in ticket files (format 2.0 when not element)
    structure: str = "element"

    def __getstate__(self) -> dict[str, Any]:
        # pickles and copies (``torch.save(model)``, ``copy.deepcopy``) do not carry the weak model reference
        state = dict(self.__dict__)
        state["model_ref"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        """One line: kind, method, densities, seed and layer counts (``ticket.report()`` has every layer)."""
        masked = len(self.compact_masks)
        options = "".join(f", {k}={v!r}" for k, v in self.method_options.items())
        model = f", model={self.model_spec['spec']!r}" if self.model_spec else ""
        model += f", structure={self.structure!r}" if self.structure != "element" else ""
        return (f"Ticket(kind={self.kind!r}, method={self.method!r}{options}, density={self.density:.4g}, "
                f"realised={self.realised_density:.4g}, seed={self.seed}, flow={self.flow!r}, "
                f"layers={len(self.layers)} ({masked} masked){model})")

    @property
    def masks(self) -> MaskView:
        """``{fqn: bool mask}`` (read-only; each lookup builds a new tensor from the compact form)."""
        return MaskView(self.compact_masks)

    @property
    def densities(self) -> dict[str, float]:
        """Target density per layer."""
        return {r.fqn: r.target_density for r in self.layers}

    @property
    def realised_density(self) -> float:
        total = sum(r.numel for r in self.layers)
        return sum(r.nonzeros for r in self.layers) / total if total else 1.0

    def mask(self, fqn: str) -> torch.Tensor:
        """The mask of ``fqn`` (all True for layers kept dense)."""
        for r in self.layers:
            if r.fqn == fqn or fqn in r.aliases:
                if r.fqn in self.compact_masks:
                    return self.compact_masks[r.fqn].bool()
                return torch.ones(r.shape, dtype=torch.bool)
        raise KeyError(f"{fqn!r} is not a layer of this ticket; layers: {[r.fqn for r in self.layers][:8]}...")

    def report(self) -> Report:
        """One row per masked weight and totals.

        Flow repair (paper App. A.1, :mod:`sparsekit.flow`) is counted two ways: ``edges_added`` (per
        row and in total) and the total ``num_corrected``, the number of (layer, direction) pairs that
        needed a repair: the quantity of the paper's Tables 5 and 6 (the authors' ``num_corrected``).
        ``pairs_repaired`` is the same number under its older name.
        """
        rows = [{
            "fqn": r.fqn, "module_type": r.module_type, "shape": list(r.shape), "params": r.numel,
            "target_density": r.target_density, "realised_density": r.realised_density,
            "nonzeros": r.nonzeros, "edges_added": r.edges_added, "rows_repaired": r.rows_repaired,
            "cols_repaired": r.cols_repaired, "resample_fallbacks": r.fallbacks, "aliases": list(r.aliases),
        } for r in self.layers]
        params = sum(r.numel for r in self.layers)
        corrected = sum((r.rows_repaired > 0) + (r.cols_repaired > 0) for r in self.layers)
        totals = {
            "method": self.method, "method_options": dict(self.method_options), "seed": self.seed,
            "flow": self.flow, "exact": self.exact, "structure": self.structure, "layers": len(self.layers),
            "params": params,
            "target_density": self.density,
            "expected_density": sum(r.target_density * r.numel for r in self.layers) / params if params else 1.0,
            "realised_density": self.realised_density,
            "nonzeros": sum(r.nonzeros for r in self.layers),
            "edges_added": sum(r.edges_added for r in self.layers),
            "num_corrected": corrected,
            "pairs_repaired": corrected,
            "elapsed_s": self.elapsed_s,
        }
        if self.coverage is not None:
            totals["coverage"] = self.coverage
        return Report(rows, totals)

    def to(self, device: torch.device | str) -> Ticket:
        """A copy of the ticket with its masks on ``device``."""
        d = {k: v for k, v in self.__dict__.items() if k != "compact_masks"}
        return Ticket(**d, compact_masks={k: v.to(device) for k, v in self.compact_masks.items()})
