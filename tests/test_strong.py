"""fit_strong: frozen seed-drawn weights, masks inside the ER source, exact level densities, exact rebuild."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset
from train_helpers import blobs as train_blobs

import sparsekit
from sparsekit.errors import SparsekitError
from sparsekit.init import fan_in, init_weight
from sparsekit.layers import LayerLayout
from sparsekit.train import Callback
from sparsekit.train.strong import level_counts, topk_mask

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")


def blobs(n: int = 192, seed: int = 0) -> TensorDataset:
    return train_blobs(n, seed=seed)


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 4))


KW = dict(density=0.1, er_density=0.5, levels=3, epochs_per_level=2, batch_size=32, lr=0.1, device="cpu",
          progress=False)


class Watch(Callback):
    """Records the masked weights and the scores' owner after every step."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, state) -> None:
        if state.step % 5 == 1:
            self.snapshots.append({k: v.detach().clone() for k, v in self.model.state_dict().items()
                                   if k.endswith("weight") or k.endswith("bias")})


def test_weights_frozen_masks_inside_er_and_level_densities_exact():
    model = net()
    watch = Watch(model)
    ticket = sparsekit.fit_strong(model, blobs(), eval_data=blobs(64, seed=1), callbacks=[watch], seed=3, **KW)
    assert ticket.kind == "strong" and ticket.init == {"scheme": "signed-kaiming-constant", "seed": "3",
                                                       "scale_fan": True}
    # weights never change: every snapshot equals the first, and masked weights are the seed-drawn ones
    first = watch.snapshots[0]
    assert len(watch.snapshots) > 3
    for snap in watch.snapshots[1:]:
        assert all(torch.equal(first[k], snap[k]) for k in first)
    er = sparsekit.prune(net(), "er-uniform", 0.5, seed=3)  # the same ER source, drawn again
    for r in ticket.layers:
        w = model.get_parameter(r.fqn)
        lay = ticket.layouts[r.fqn]
        drawn = init_weight(r.fqn, tuple(w.shape), lay, "signed-kaiming-constant", 3, density=r.nonzeros / r.numel,
                            scale_fan=True)
        assert torch.equal(first[r.fqn], drawn)
        strong = ticket.masks[r.fqn]
        assert not (strong & ~er.masks[r.fqn]).any()  # inside the ER mask
        assert torch.equal(w, drawn * strong)  # the model now carries the strong mask
        assert int(strong.sum()) == r.nonzeros == max(1, min(er.compact_masks[r.fqn].nnz, round(0.1 * r.numel)))
    # the density column follows level_counts exactly, level by level
    h = ticket.history
    assert h.column("level") == [1, 1, 2, 2, 3, 3]
    for lvl in range(3):
        expect = sum(level_counts(er.compact_masks[r.fqn].nnz, r.nonzeros, 3)[lvl] for r in ticket.layers)
        total = sum(r.numel for r in ticket.layers)
        assert h.column("density")[2 * lvl] == pytest.approx(expect / total)
    assert h[-1].eval_acc > 0.5  # far above chance (0.25) with frozen random weights


def test_ticket_rebuilds_the_network_exactly(tmp_path):
    model = net()
    ticket = sparsekit.fit_strong(model, blobs(), init="kaiming-normal", scale_fan=True, seed=1, **KW)
    x = blobs(32, seed=5).tensors[0]
    model.eval()
    with torch.no_grad():
        ref = model(x)
    path = sparsekit.save_ticket(ticket, tmp_path / "strong.safetensors")
    size = path.stat().st_size
    masked_params = sum(r.numel for r in ticket.layers)
    assert size < masked_params  # mask bits + BN state + biases: far below 4 bytes per weight
    fresh = net(seed=42)  # other random weights: all of them are rebuilt or loaded
    loaded = sparsekit.apply_ticket(fresh, path)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), ref)
    assert all(torch.equal(loaded.masks[k], ticket.masks[k]) for k in ticket.compact_masks)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(),
                                                 strict=True))


def test_biases_zero_by_default_or_kept():
    kw = {**KW, "levels": 1, "epochs_per_level": 1}
    model = net()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("bias")}
    t = sparsekit.fit_strong(model, blobs(64), **kw)
    assert t.method_options["bias"] == "zero"
    for n in ("0.bias", "3.bias", "5.bias"):  # the masked layers' biases
        assert not before[n].eq(0).all() and torch.equal(model.get_parameter(n), torch.zeros_like(before[n]))
    assert torch.equal(model.get_parameter("1.bias"), before["1.bias"])  # BatchNorm's bias is not a layer bias
    model = net()
    t = sparsekit.fit_strong(model, blobs(64), **{**kw, "bias": "keep"})
    assert all(torch.equal(model.get_parameter(n), before[n]) for n in before)
    with pytest.raises(ValueError, match="bias must be one of"):
        sparsekit.fit_strong(net(), blobs(64), **{**kw, "bias": "random"})


def test_frozen_non_default_batchnorm_affine_warns():
    kw = {**KW, "levels": 1, "epochs_per_level": 1}
    model = net()
    with torch.no_grad():
        model[1].weight.fill_(2.0)
    with pytest.warns(UserWarning, match="freezes normalisation affine parameters; 1 layer"):
        sparsekit.fit_strong(model, blobs(64), **kw)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        sparsekit.fit_strong(net(), blobs(64), **kw)  # BatchNorm at 1 and 0: no warning


def test_resume_gives_the_same_strong_ticket(tmp_path):
    class Stop(Callback):
        def on_epoch_end(self, state, stats):
            if state.epoch == 3:
                raise KeyboardInterrupt

    full = sparsekit.fit_strong(net(), blobs(), checkpoint_dir=tmp_path / "a", **KW)
    with pytest.raises(KeyboardInterrupt):
        sparsekit.fit_strong(net(), blobs(), checkpoint_dir=tmp_path / "b", callbacks=[Stop()], **KW)
    resumed = sparsekit.fit_strong(net(), blobs(), checkpoint_dir=tmp_path / "b", resume=True, **KW)
    assert all(torch.equal(full.masks[k], resumed.masks[k]) for k in full.compact_masks)
    assert full.history.column("train_loss") == resumed.history.column("train_loss")


def test_scores_get_straight_through_gradients():
    from sparsekit.train.strong import _GetSubnet

    s = torch.randn(10, requires_grad=True)
    m, _ = topk_mask(s.detach().abs(), 3)
    w = torch.arange(10.0)
    (w * _GetSubnet.apply(m, s.abs())).sum().backward()
    assert torch.equal(s.grad, w * torch.sign(s.detach()))  # unselected edges get gradients too


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(0, 310), st.integers(0, 3), st.booleans(),
       st.sampled_from([0.0, 0.5, 3.0, 1e5]))
def test_topk_mask_exact_with_ties(n, k, levels_of_ties, use_hint, width):
    g = torch.Generator().manual_seed(n * 1000 + k)
    s = torch.randint(0, 5 if levels_of_ties else 10**6, (n,), generator=g).float()
    hint = s.median() if use_hint else None
    m, thr = topk_mask(s, k, hint, width * (1 if levels_of_ties else 1e4))
    kk = min(max(k, 0), n)
    assert int(m.sum()) == kk
    if 0 < kk < n:
        assert s[m].min() >= s[~m].max()  # a top-k set
        ties = (s == s[m].min()).nonzero().flatten()
        chosen = ties[m[ties]]
        assert torch.equal(chosen, ties[:chosen.numel()])  # ties resolved by lowest index


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 10**6), st.floats(0.0001, 1.0), st.integers(1, 8))
def test_level_counts_geometric_and_final_exact(nnz, ratio, levels):
    final = max(1, round(nnz * ratio))
    c = level_counts(nnz, final, levels)
    assert len(c) == levels and c[-1] == final
    assert all(1 <= x <= nnz for x in c)
    assert all(a >= b for a, b in zip(c, c[1:], strict=False))  # non-increasing
    for i, x in enumerate(c[:-1], start=1):
        assert x == max(1, min(nnz, round(nnz * (final / nnz) ** (i / levels))))


def test_init_schemes_statistics_and_fan():
    assert fan_in((64, 32, 3, 3), LayerLayout()) == 288
    assert fan_in((32, 16, 3, 3), LayerLayout(out_axis=1, in_axis=0, groups=2)) == 32 * 9 // 2  # transposed
    for scheme in ("signed-kaiming-constant", "kaiming-normal", "kaiming-uniform"):
        w = init_weight("w", (256, 512), LayerLayout(), scheme, 0)
        assert w.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.02)
        assert abs(w.mean().item()) < 0.002
        assert torch.equal(w, init_weight("w", (256, 512), LayerLayout(), scheme, 0))
        assert not torch.equal(w, init_weight("w", (256, 512), LayerLayout(), scheme, 1))
    w = init_weight("w", (256, 512), LayerLayout(), "signed-kaiming-constant", 0, density=0.25, scale_fan=True)
    vals = w.abs().unique().tolist()
    assert len(vals) == 1 and vals[0] == pytest.approx(math.sqrt(2 / (512 * 0.25)))


@pytest.mark.parametrize(("kwargs", "err", "match"), [
    ({"density": 0.6}, ValueError, "must not exceed er_density"),
    ({"init": "xavier"}, ValueError, "init must be one of"),
    ({"levels": 0}, ValueError, "levels must be"),
    ({"score_init": "zeros"}, ValueError, "score_init"),
])
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        sparsekit.fit_strong(net(), blobs(), **{**KW, **kwargs})


def test_pruned_model_refused():
    m = net()
    sparsekit.prune(m, density=0.5)
    with pytest.raises(SparsekitError, match="unpruned model"):
        sparsekit.fit_strong(m, blobs(), **KW)


def test_dense_source_is_plain_edge_popup():
    model = net()
    t = sparsekit.fit_strong(model, blobs(), **{**KW, "er_density": 1.0, "levels": 1})
    assert t.method_options["er_density"] == 1.0
    assert t.realised_density == pytest.approx(0.1, abs=0.01)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_strong_on_cuda_rebuilds_on_cpu(tmp_path):
    model = net()
    ticket = sparsekit.fit_strong(model, blobs(), **{**KW, "device": "cuda"})
    path = sparsekit.save_ticket(ticket, tmp_path / "s.safetensors")
    fresh = net(seed=9)
    sparsekit.apply_ticket(fresh, path)
    for r in ticket.layers:
        assert torch.equal(fresh.get_parameter(r.fqn), model.get_parameter(r.fqn).cpu())


@pytest.mark.parametrize("scheme", ["signed-kaiming-constant", "kaiming-normal", "kaiming-uniform"])
def test_init_matches_the_spec_reference(scheme):
    """TICKET.md §9.5 re-implemented in pure Python from the reference generator (float64 math)."""
    import _reference_rng as ref

    shape, seed, fqn = (6, 5, 3), 123456789, "block.conv.weight"
    k = ref.key(seed, fqn, "init")
    sigma = math.sqrt(2 / (5 * 3))
    expect = []
    for i in range(math.prod(shape)):
        z = ref.word(k, i)  # unsigned 64-bit
        lo, hi = z & 0xFFFFFFFF, z >> 32
        u = lambda x: (x + 0.5) / 2**32  # noqa: E731
        if scheme == "signed-kaiming-constant":
            v = sigma if z < 2**63 else -sigma
        elif scheme == "kaiming-uniform":
            v = sigma * math.sqrt(3) * (2 * u(hi) - 1)
        else:
            v = sigma * math.sqrt(-2 * math.log(u(lo))) * math.cos(2 * math.pi * u(hi))
        expect.append(v)
    got = init_weight(fqn, shape, LayerLayout(), scheme, seed, dtype=torch.float64).flatten().tolist()
    if scheme == "kaiming-normal":
        assert got == pytest.approx(expect, rel=1e-12, abs=1e-15)
    else:
        assert got == expect


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 400), st.floats(0.05, 1.0), st.integers(0, 2**31 - 1), st.booleans())
def test_fused_effective_weight_equals_the_unfused_graph(numel, frac, seed, dense):
    """_EffectiveWeight: same values and same straight-through score gradients as w * GetSubnet(|s|) scattered."""
    from sparsekit.train.strong import _EffectiveWeight, _GetSubnet

    g = torch.Generator().manual_seed(seed)
    n = numel if dense else max(1, round(numel * frac))
    kept = None if dense else torch.randperm(numel, generator=g)[:n].sort().values
    w = torch.randn(n, generator=g)
    s0 = torch.randn(n, generator=g)
    s0[torch.rand(n, generator=g) < 0.1] = 0.0  # sign(0) = 0: no gradient, as through abs()
    m, _ = topk_mask(s0.abs(), max(1, n // 3))
    upstream = torch.randn(numel, generator=g)
    s1, s2 = s0.clone().requires_grad_(), s0.clone().requires_grad_()
    vals = w * _GetSubnet.apply(m, s1.abs())
    ref = vals if kept is None else torch.zeros(numel).index_put((kept,), vals)
    got = _EffectiveWeight.apply(s2, m, w, kept, numel)
    assert torch.equal(ref, got)
    ref.backward(upstream)
    got.backward(upstream)
    assert torch.equal(s1.grad, s2.grad)
    if kept is not None and n < numel:  # a wrong scatter position would show here
        assert torch.equal(got[kept][m], w[m]) and int(torch.count_nonzero(got)) <= int(m.sum())


def test_scale_fan_uses_the_final_tickets_fan_in_not_the_er_sources():
    """scale_fan (the default): sigma = sqrt(2 / (fan_in * final layer density)), whatever the ER source's density.

    This is edge-popup's scaled init and what a ticket file rebuilds (TICKET.md §9.5): the fan is that
    of the final ticket, nonzeros / numel of each layer, not fan_in * er_density.
    """
    kw = {**KW, "levels": 1, "epochs_per_level": 1}
    mags = {}
    for er_density in (0.5, 0.25, 1.0):
        model = net()
        ticket = sparsekit.fit_strong(model, blobs(64), **{**kw, "er_density": er_density})
        assert ticket.init["scale_fan"] is True
        for r in ticket.layers:
            w = model.get_parameter(r.fqn)
            vals = w[ticket.masks[r.fqn]].abs().unique()
            assert vals.numel() == 1  # signed constant: one magnitude
            fan = fan_in(tuple(w.shape), ticket.layouts[r.fqn]) * r.nonzeros / r.numel
            assert vals.item() == pytest.approx(math.sqrt(2 / fan), rel=1e-6)
            mags.setdefault(r.fqn, set()).add(round(vals.item(), 7))
    assert all(len(v) == 1 for v in mags.values())  # independent of er_density (final counts are equal)
    model = net()
    old = sparsekit.fit_strong(model, blobs(64), **{**kw, "scale_fan": False})  # the old default, by argument
    r = old.layers[0]
    w = model.get_parameter(r.fqn)
    assert w[old.masks[r.fqn]].abs().unique().item() == pytest.approx(math.sqrt(2 / 16), rel=1e-6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=200), st.data())
def test_topk_mask_matches_reference_with_any_hint(values, data):
    """The top k by value, ties at the threshold to the lowest indices, whatever hint and band width:
    the hint/band fast paths must give exactly the full selection's answer."""
    from sparsekit.train.strong import topk_mask

    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    a = torch.tensor(values, dtype=dtype) / 4  # few distinct values: many ties (all exact in every dtype)
    n = a.numel()
    k = data.draw(st.integers(0, n))
    hint = data.draw(st.one_of(st.none(), st.integers(-1, 14).map(lambda v: v / 4 + 0.05 * (v % 3))))
    width = data.draw(st.sampled_from([0.0, 0.1, 0.3, 1.0, 5.0]))
    per_unit = data.draw(st.sampled_from([0.0, 0.5, 40.0]))
    nonnegative = data.draw(st.booleans())  # integer comparisons of the bit patterns (values are >= 0)
    if not nonnegative:  # negative scores order differently as bit patterns: the float path must run
        a, hint = a - 1.5, None if hint is None else hint - 1.5
    m, _thr = topk_mask(a.clone(), k, hint, width, per_unit=per_unit, nonnegative=nonnegative)
    order = sorted(range(n), key=lambda i: (-values[i], i))[:k]
    want = torch.zeros(n, dtype=torch.bool)
    want[order] = True
    assert torch.equal(m, want)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.floats(0.05, 1.0), st.integers(0, 2**31 - 1), st.booleans(), st.integers(2, 6))
def test_reused_effective_weight_equals_a_fresh_one_at_every_step(numel, frac, seed, dense, steps):
    """_WeightCache: rewriting only the edges whose selection changed gives the fresh tensor bit for bit,
    with the same gradients, over a sequence of selections (few, many and no changes)."""
    from sparsekit.train.strong import _EffectiveWeight, _WeightCache

    g = torch.Generator().manual_seed(seed)
    n = numel if dense else max(1, round(numel * frac))
    kept = None if dense else torch.randperm(numel, generator=g)[:n].sort().values
    w = torch.randn(n, generator=g)
    cache = _WeightCache()
    for step in range(steps):
        s = torch.randn(n, generator=g)
        m, _ = topk_mask(s.abs(), max(1, n // (step + 2)))
        upstream = torch.randn(numel, generator=g)
        s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
        want = _EffectiveWeight.apply(s1, m, w, kept, numel)
        got = _EffectiveWeight.apply(s2, m.clone(), w, kept, numel, None, cache, True)
        assert torch.equal(want, got)
        want.backward(upstream)
        got.backward(upstream)
        assert torch.equal(s1.grad, s2.grad)
        assert not cache.live  # its graph was backpropagated: the next step may rewrite the buffer


def _subnet_grads(reuse: bool, twice: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Score gradients of fit_strong's training forward called once or twice (selection changed in between)
    before one backward."""
    from sparsekit.train.strong import EdgePopup

    model = net()
    ticket = sparsekit.prune(model, "er-uniform", 0.5, seed=0)
    masks = dict(ticket.compact_masks)
    sparsekit.finalize(model)
    algo = EdgePopup(masks, {f: max(1, m.nnz // 5) for f, m in masks.items()}, dict(ticket.layouts), levels=1,
                     epochs_per_level=1, init="signed-kaiming-constant", scale_fan=True, score_init="kaiming-uniform",
                     seed=0, schedule="cosine")
    algo.setup(model, torch.device("cpu"))
    x = blobs(8).tensors[0]
    sub = algo.wrap(model)
    if not reuse:
        sub.forward = lambda *a: torch.func.functional_call(model, algo.effective_weights(), a, strict=False)
    sub(x).sum().backward()  # a first step fills the buffers
    for s in algo.scores:
        s.grad = None
    out = sub(x).square().sum()
    if twice:
        for L in algo.layers:  # a different selection for the second call
            L.counts = [max(1, L.counts[0] // 2)]
        sub(torch.zeros_like(x)).sum()  # an evaluation-style call whose graph is dropped
        out = out + sub(x).sum()
    out.backward()
    return [s.grad.clone() for s in algo.scores], out.detach()


@pytest.mark.parametrize("twice", [False, True])
def test_reused_weights_never_change_under_a_pending_graph(twice):
    """Two training forward passes before one backward (or one whose graph is dropped): the second call
    must not rewrite the weight the first graph saved; gradients equal those of fresh tensors."""
    want, out_want = _subnet_grads(False, twice)
    got, out_got = _subnet_grads(True, twice)
    assert torch.equal(out_want, out_got)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))


def test_fused_sgd_is_the_default_update_up_to_one_rounding():
    """EdgePopup's scores are trained by SGD(fused=True): the default loop's numbers, up to one rounding
    (the fused kernel may contract a multiply-add) in a few entries."""
    from sparsekit.train.engine import TrainConfig, _build_optimizer

    cfg = TrainConfig(epochs=1, lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    p0 = [torch.randn(n, generator=g) for n in (1, 7, 4099, 70001)]
    grads = [[torch.randn(p.shape, generator=g) for p in p0] for _ in range(5)]
    out = []
    for fused in (False, True):
        ps = [nn.Parameter(p.clone()) for p in p0]
        opt = _build_optimizer(None, ps, cfg, fused=fused)
        assert opt.defaults.get("fused") is (True if fused else None)
        for gs in grads:
            for p, gr in zip(ps, gs, strict=True):
                p.grad = gr.clone()
            opt.step()
        out.append(torch.cat([p.detach() for p in ps]))
    torch.testing.assert_close(out[1], out[0], rtol=2.4e-7, atol=0)  # two float32 ulps at most
    assert int((out[0] != out[1]).sum()) <= out[0].numel() // 1000


def test_reused_effective_weight_rebuilds_after_its_mask_changed_in_place():
    """A selection handed in again after being changed in place (a subclass reusing its mask tensors)
    no longer describes the kept tensor: the result must still equal a fresh one."""
    from sparsekit.train.strong import _EffectiveWeight, _WeightCache

    g = torch.Generator().manual_seed(0)
    numel, kept = 50, torch.arange(0, 50, 2)
    w, s = torch.randn(25, generator=g), torch.randn(25, generator=g)
    m, _ = topk_mask(s.abs(), 10)
    cache = _WeightCache()
    _EffectiveWeight.apply(s, m, w, kept, numel, None, cache, False)
    m.copy_(~m)  # the same tensor, another selection
    got = _EffectiveWeight.apply(s, m, w, kept, numel, None, cache, False)
    assert torch.equal(got, _EffectiveWeight.apply(s, m, w, kept, numel))
