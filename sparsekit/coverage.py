"""Coverage: what happened to *every* parameter of a pruned model.

Each parameter (each Parameter object once, under its first name) gets one status:

* ``masked``: selected and drawn at a density below 1;
* ``dense``: selected but kept at density 1 (``dense=``, or a scheme that capped the layer at 1);
* ``excluded``: left out by a stated rule: ``embedding`` (also a projection tied to one),
  ``router``, ``bias`` (any parameter named ``*bias``, also stacked ``(E, out)`` expert biases),
  ``norm``, ``1-D parameter``, ``weight_norm magnitude``,
  ``positional/token table`` (named like ``pos_embed``/``cls_token``/``position_embeddings``),
  ``filter_fn`` (a supported layer that the user's filter left out);
* ``unknown``: a parameter with two or more dimensions that no rule covers (e.g. a custom module's
  ``nn.Parameter`` not named ``weight``). ``prune`` warns about these, naming them and their share
  of the model's parameters, and raises under ``strict=True``.

Fractions are of the model's parameter count (elements), so ``masked + dense + excluded + unknown
== 1``. Nothing is skipped silently (DESIGN.md: coverage is explicit).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .layers import EXCLUDED_ATTR, Layer, _reader_for, is_embedding, is_router

__all__ = ["Coverage", "model_coverage", "STATUSES"]

STATUSES = ("masked", "dense", "excluded", "unknown")

#: parameter names of learned additive tables (not matrices of a linear map) excluded by rule
_TABLE_NAME = re.compile(
    r"(^|[._])(pos_embed\w*|pos_emb\w*|\w*position\w*embed\w*|\w*positional\w*|(cls|class|dist|distill|mask|reg|register|query|prompt)_tokens?|"
    r"\w*relative_position_bias_table|\w*_embeddings?|query_tokens)$")

_NORM_WORDS = ("norm", "Norm")


@dataclass
class Coverage:
    """Status of every parameter of a model after selection (see the module docstring).

    Attributes:
        entries: one dict per parameter: ``fqn``, ``shape``, ``params``, ``status``, ``rule`` and
            ``aliases`` (other names of a tied Parameter).
    """

    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(e["params"] for e in self.entries)

    def params(self, status: str) -> int:
        return sum(e["params"] for e in self.entries if e["status"] == status)

    def fraction(self, status: str) -> float:
        t = self.total
        return self.params(status) / t if t else 0.0

    @property
    def unknown(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["status"] == "unknown"]

    def by_rule(self) -> dict[str, int]:
        """Parameters excluded per rule."""
        out: dict[str, int] = {}
        for e in self.entries:
            if e["status"] == "excluded":
                out[e["rule"]] = out.get(e["rule"], 0) + e["params"]
        return out

    def summary(self) -> dict[str, Any]:
        """Fractions and counts per status and per exclusion rule, plus tied and unknown parameters."""
        return {
            "params": self.total,
            **{s: self.fraction(s) for s in STATUSES},
            **{f"{s}_params": self.params(s) for s in STATUSES},
            "excluded_by_rule": self.by_rule(),
            "tied": [{"fqn": e["fqn"], "aliases": e["aliases"], "status": e["status"], "rule": e["rule"]}
                     for e in self.entries if e["aliases"]],
            "unknown_params": [{"fqn": e["fqn"], "shape": e["shape"]} for e in self.unknown],
        }

    def unknown_message(self, limit: int = 8) -> str:
        unk = self.unknown
        names = ", ".join(f"{e['fqn']} {tuple(e['shape'])}" for e in unk[:limit])
        more = f" and {len(unk) - limit} more" if len(unk) > limit else ""
        share = self.fraction("unknown")
        return (f"{len(unk)} parameter(s) with 2+ dimensions are covered by no rule and stay dense: {names}{more} "
                f"({share:.2%} of the model's parameters); declare their axes with sparsekit.declare_layouts("
                "module, {name: sparsekit.LayerLayout(...)}) or sparsekit.register_layer_type, or keep them dense "
                "knowingly with sparsekit.declare_excluded(module, {name: reason}); strict=True makes this an error")


def _owner_rule(m: nn.Module, pname: str, p: torch.Tensor) -> str | None:
    if is_embedding(m):
        return "embedding"
    if is_router(m) and pname == "weight":
        return "router"
    return None


def _is_weight_norm_g(m: nn.Module, pname: str) -> bool:
    if type(m).__name__ == "ParametrizationList":
        return pname == "original0" and [type(f).__name__ for f in m] == ["_WeightNorm"]
    return pname.endswith("_g") and f"{pname[:-2]}_v" in m._parameters


def model_coverage(model: nn.Module, layers: Iterable[Layer], densities: Mapping[str, float] | None = None,
                   ) -> Coverage:
    """Classify every parameter of ``model`` given the selected ``layers`` and their ``densities``.

    Args:
        model: the model (any device, meta included).
        layers: the selected layers (``find_layers(model, filter_fn)``).
        densities: per-layer density by fqn; layers at density 1 (or missing) count as ``dense``.
    """
    densities = densities or {}
    selected = {id(L.param): L for L in layers}
    owners: dict[int, list[tuple[nn.Module, str, str]]] = {}
    names: dict[int, list[str]] = {}
    params: dict[int, torch.Tensor] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for pname, p in m.named_parameters(recurse=False):
            fqn = f"{mname}.{pname}" if mname else pname
            owners.setdefault(id(p), []).append((m, mname, pname))
            if fqn not in names.setdefault(id(p), []):
                names[id(p)].append(fqn)
            params[id(p)] = p
    entries = []
    for pid, p in params.items():
        fqn, *aliases = names[pid]
        e: dict[str, Any] = {"fqn": fqn, "shape": list(p.shape), "params": math.prod(p.shape),
                             "aliases": aliases, "rule": ""}
        L = selected.get(pid)
        if L is not None:
            d = densities.get(L.fqn, 1.0)
            e["status"] = "masked" if d < 1.0 else "dense"
            e["rule"] = L.module_type + (f" ({L.parametrization.split(':')[0]})" if L.parametrization else "")
            if any(is_embedding(m) for m, _, _ in owners[pid]):
                e["rule"] += " (embedding selected by filter_fn)"
        else:
            e["status"], e["rule"] = _excluded_or_unknown(p, owners[pid])
        entries.append(e)
    return Coverage(entries)


def _excluded_or_unknown(p: torch.Tensor, owners: list[tuple[nn.Module, str, str]]) -> tuple[str, str]:
    for m, _mname, pname in owners:
        declared = m.__dict__.get(EXCLUDED_ATTR, {})
        if pname in declared:
            return "excluded", f"declared: {declared[pname]}"
    for m, _mname, pname in owners:
        rule = _owner_rule(m, pname, p)
        if rule is not None:
            if rule == "embedding" and len({id(o) for o, _, _ in owners}) > 1:
                rule = "embedding (tied)"
            return "excluded", rule
    m, mname, pname = owners[0]
    if any(_is_weight_norm_g(o, n) for o, _, n in owners):
        return "excluded", "weight_norm magnitude"
    if pname.endswith("bias") or pname.startswith("bias"):
        return "excluded", "bias"  # also stacked per-expert biases (E, out), e.g. GPT-OSS
    if p.dim() < 2:
        if any(w in type(m).__name__ for w in _NORM_WORDS):
            return "excluded", "norm"
        return "excluded", "1-D parameter"
    reader = _reader_for(m)
    if reader is not None and pname in {n for n, _ in reader(m)}:
        return "excluded", "filter_fn"
    if type(m).__name__ == "ParametrizationList":
        # an original of a parametrization whose module the filter left out
        return "excluded", "filter_fn"
    if reader is None and pname == "weight":
        return "excluded", "filter_fn"  # find_layers raises for unknown weights unless the filter excludes them
    if _TABLE_NAME.search(pname) or _TABLE_NAME.search(f"{mname}.{pname}"):
        return "excluded", "positional/token table"
    return "unknown", ""
