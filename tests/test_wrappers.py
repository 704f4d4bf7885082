"""Wrapped models name weights like the module inside: the same masks, tickets that transfer both ways."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit._wrappers import unwrap


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))


WRAPPERS = {
    "compile": lambda m: torch.compile(m),
    "dataparallel": lambda m: nn.DataParallel(m),  # CPU: a plain pass-through wrapper with a "module." prefix
    "compile-of-dataparallel": lambda m: torch.compile(nn.DataParallel(m)),
}


@pytest.mark.parametrize("wrap", sorted(WRAPPERS))
def test_prune_through_wrapper_gives_the_plain_masks(wrap, tmp_path):
    plain = _model()
    t_plain = sparsekit.prune(plain, "er-balanced", 0.1, seed=7)
    inner = _model()
    wrapped = WRAPPERS[wrap](inner)
    assert unwrap(wrapped) is inner
    t_wrapped = sparsekit.prune(wrapped, "er-balanced", 0.1, seed=7)
    assert [r.fqn for r in t_wrapped.layers] == [r.fqn for r in t_plain.layers] == ["0.weight", "2.weight", "4.weight"]
    assert t_wrapped.masks == t_plain.masks
    assert sparsekit.ticket_of(wrapped) is t_wrapped and sparsekit.ticket_of(inner) is t_wrapped
    dens = sparsekit.layer_densities(wrapped, "er-balanced", 0.1)
    assert dens == sparsekit.layer_densities(plain, "er-balanced", 0.1)
    # tickets transfer both ways
    path = tmp_path / "t.safetensors"
    sparsekit.save_ticket(t_wrapped, path)
    fresh = _model()
    sparsekit.apply_ticket(fresh, path)
    assert sparsekit.ticket_of(fresh).masks == t_plain.masks
    other = WRAPPERS[wrap](_model())
    sparsekit.apply_ticket(other, sparsekit.load_ticket(path, model=other))
    assert sparsekit.ticket_of(other).masks == t_plain.masks
    names = [n for n, _p, _m in sparsekit.masked_parameters(other)]
    assert names == ["0.weight", "2.weight", "4.weight"]
    sparsekit.finalize(other)
    assert sparsekit.ticket_of(other) is None and not sparsekit.is_pruned(other)


def test_rewirer_on_wrapped_model_names_like_the_plain_model():
    m = _model()
    sparsekit.prune(m, "er-balanced", 0.2, seed=1)
    w = nn.DataParallel(m)
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    rw = sparsekit.Rewirer(w, opt, method="set", total_steps=4, update_every=1, seed=0)
    for i in range(2):
        opt.zero_grad()
        w(torch.randn(8, 20, generator=torch.Generator().manual_seed(i))).pow(2).mean().backward()
        opt.step()
        rw.step()
    assert [r.fqn for r in sparsekit.ticket_of(m).layers] == ["0.weight", "2.weight", "4.weight"]
    for fqn, p, mask in sparsekit.masked_parameters(w):
        assert not bool((p.detach()[~mask] != 0).any()), fqn


def test_a_wrapped_submodule_is_named_in_a_warning():
    """Only the root is unwrapped; a wrapped submodule keeps 'module.' in its weights' names (which key the
    masks), so its masks differ from the unwrapped model's: said, by name."""
    m = _model()
    m[0] = nn.DataParallel(m[0])
    with pytest.warns(UserWarning, match=r"submodule\(s\) \['0'\] are wrapped"):
        t = sparsekit.prune(m, "er-balanced", 0.2, seed=1)
    assert t.layers[0].fqn == "0.module.weight"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsekit.prune(nn.DataParallel(_model()), "er-balanced", 0.2, seed=1)  # a wrapped root: no warning
