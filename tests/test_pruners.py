"""SNIP, SynFlow and IMP pruners and the ER randomisations er-snip, er-synflow, er-from (paper §3, App. A.7, A.10)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsekit
import sparsekit._data_methods  # noqa: F401  (registers er-snip, er-synflow, er-from)
from sparsekit import pruners
from sparsekit.data import synthetic
from sparsekit.flow import dead_units
from sparsekit.layers import find_layers


def net(sizes=(16, 32, 24, 4), bias=True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def data(n=64, shape=(16,), classes=4, seed=0) -> TensorDataset:
    return synthetic(n, shape=shape, num_classes=classes, seed=seed)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def total(model: nn.Module) -> int:
    return sum(L.numel for L in find_layers(model))


# --------------------------------------------------------------------------------------------------
# SNIP


def test_snip_scores_equal_abs_grad_times_weight_on_a_hand_built_net():
    torch.manual_seed(0)
    w1, w2 = torch.randn(3, 4), torch.randn(2, 3)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w1)
        model[1].weight.copy_(w2)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 1, 0, 1])
    scores = pruners.snip_scores(model, (x, y))
    # by hand: y = W2 W1 x, loss = mean CE; dL/dlogits = (softmax - onehot) / n
    h = x @ w1.T
    d = (torch.softmax(h @ w2.T, 1) - nn.functional.one_hot(y, 2).float()) / len(y)
    g2, g1 = d.T @ h, (d @ w2).T @ x
    assert torch.allclose(scores["1.weight"], (g2 * w2).abs(), atol=1e-6)
    assert torch.allclose(scores["0.weight"], (g1 * w1).abs(), atol=1e-6)
    assert model[0].weight.grad is None  # no gradients left behind


def test_snip_leaves_the_model_as_it_was():
    torch.manual_seed(1)
    model = cnn().train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = state(model)
    pruners.snip_scores(model, data(32, (1, 6, 6)), batches=2, batch_size=8)
    assert same_state(before, state(model))  # BatchNorm statistics unchanged (scored in eval mode)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[3].weight.grad is None and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("density", [0.5, 0.1, 0.02])
def test_snip_is_a_global_top_k_and_attaches_a_learned_ticket(density, tmp_path):
    torch.manual_seed(2)
    model = net()
    before = state(model)
    loader = DataLoader(data(), batch_size=16)
    scores = pruners.snip_scores(model, loader)
    ticket = pruners.snip(model, loader, density)
    assert ticket.kind == "learned" and ticket.method == "snip" and ticket.flow is None
    kept = sum(r.nonzeros for r in ticket.layers)
    assert kept == round(density * total(model))
    lowest_kept = min(scores[f][ticket.mask(f)].min() for f in scores if ticket.mask(f).any())
    highest_pruned = max(scores[f][~ticket.mask(f)].max() for f in scores if (~ticket.mask(f)).any())
    assert lowest_kept >= highest_pruned
    assert sparsekit.ticket_of(model) is ticket
    for r in ticket.layers:  # masks attached, kept weights untouched
        w = model.get_parameter(r.fqn)
        assert torch.equal(w[ticket.mask(r.fqn)], before[r.fqn][ticket.mask(r.fqn)])
        assert not w[~ticket.mask(r.fqn)].any()
        assert r.realised_density == r.target_density == r.nonzeros / r.numel
    sparsekit.save_ticket(ticket, tmp_path / "snip.safetensors")
    loaded = sparsekit.load_ticket(tmp_path / "snip.safetensors")
    assert loaded.kind == "learned" and all(torch.equal(loaded.mask(r.fqn), ticket.mask(r.fqn)) for r in ticket.layers)


def test_snip_refuses_a_pruned_model_and_bad_data():
    model = net()
    sparsekit.prune(model, "er-uniform", 0.5)
    with pytest.raises(sparsekit.SparsekitError, match="finalize"):
        pruners.snip(model, data(), 0.1)
    with pytest.raises(TypeError, match="DataLoader"):
        pruners.snip(net(), 42, 0.1)
    with pytest.raises(ValueError, match="density"):
        pruners.snip(net(), data(), 5)


# --------------------------------------------------------------------------------------------------
# SynFlow


def test_synflow_scores_closed_form_and_data_independence():
    """R = 1^T |W2| |W1| 1, so score(W1_ij) = |W1_ij| (1^T |W2|)_i and score(W2_ki) = |W2_ki| (|W1| 1)_i."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    w1, w2 = model[0].weight.detach().clone(), model[2].weight.detach().clone()
    scores = pruners.synflow_scores(model)  # input shape inferred from the first Linear
    assert torch.allclose(scores["0.weight"], w1.abs() * w2.abs().sum(0)[:, None], rtol=1e-5)
    assert torch.allclose(scores["2.weight"], w2.abs() * w1.abs().sum(1)[None, :], rtol=1e-5)
    assert torch.equal(model[0].weight, w1) and torch.equal(model[2].weight, w2)  # signs restored
    with torch.no_grad():  # no data enters: flipping signs or reseeding the global RNG changes nothing
        model[0].weight.neg_()
    torch.manual_seed(99)
    again = pruners.synflow_scores(model)
    assert all(torch.equal(scores[k], again[k]) for k in scores)


def test_synflow_scores_are_conserved_per_layer():
    """Without biases every layer's scores sum to R (Tanaka et al. 2020, Thm 1): BN in eval mode, abs stats."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 5, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(5, 3, bias=False)).double()
    with torch.no_grad():  # a BatchNorm that only rescales (zero mean and shift keep R bias-free)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(-2, 2)  # made absolute, as in the original code
    before = state(model)
    scores = pruners.synflow_scores(model, input_shape=(2, 8, 8))
    sums = [s.sum().item() for s in scores.values()]
    assert sums == pytest.approx([sums[0]] * 3, rel=1e-9)
    assert same_state(before, state(model)) and model.training


@settings(max_examples=15, deadline=None)
@given(density=st.floats(0.005, 1.0), iterations=st.integers(1, 6))
def test_synflow_exponential_schedule_hits_the_density(density, iterations):
    torch.manual_seed(5)
    model = net(bias=False)
    n = total(model)
    seen: list[int] = []
    real = pruners._prune_kept

    def spy(scores, kept, k, what):
        seen.append(k)
        return real(scores, kept, k, what)

    pruners._prune_kept = spy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # layer collapse warnings at low density
            ticket = pruners.synflow(model, density, iterations)
    finally:
        pruners._prune_kept = real
    assert seen == [round(density ** (k / iterations) * n) for k in range(1, iterations + 1)]
    assert sum(r.nonzeros for r in ticket.layers) == round(density * n)
    assert ticket.method_options == {"iterations": iterations, "input_shape": [16]}


@pytest.mark.slow
def test_iterative_synflow_avoids_layer_collapse_on_vgg16_at_0_999():
    torch.manual_seed(0)
    model = sparsekit.models.get_model("vgg16")
    layers = find_layers(model)
    before = state(model)
    single = pruners.synflow_masks(model, layers, 0.001, 1, (3, 32, 32))
    assert any(not m.any() for m in single.values())  # one-shot SynFlow collapses layers here
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no collapse warning
        ticket = pruners.synflow(model, 0.001, iterations=8, input_shape=(3, 32, 32))
    assert min(r.nonzeros for r in ticket.layers) > 0
    assert sum(r.nonzeros for r in ticket.layers) == round(0.001 * total(model))
    kept = {k: v for k, v in before.items() if k not in ticket.compact_masks}
    assert same_state(kept, {k: v for k, v in state(model).items() if k in kept})  # BN etc. restored


def test_synflow_needs_an_input_shape_for_conv_models():
    with pytest.raises(ValueError, match="input_shape=\\(C, H, W\\)"):
        pruners.synflow(cnn(), 0.1)
    with pytest.raises(sparsekit.SparsekitError, match="does not fit"):
        pruners.synflow(cnn(), 0.1, input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="input_shape must be"):
        pruners.synflow(cnn(), 0.1, input_shape=(1, -8, 8))
    assert pruners.synflow(cnn(), 0.1, iterations=3, input_shape=(1, 8, 8)).realised_density == pytest.approx(
        0.1, abs=1e-3)


# --------------------------------------------------------------------------------------------------
# IMP


def _capture_after(epoch: int, store: dict):
    def cb(state, stats):  # callbacks run after the epoch: state.epoch counts finished epochs
        if state.epoch == epoch and not store:
            store.update({k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()})
    return cb


@pytest.mark.parametrize("rewind_epoch", [0, 1])
def test_imp_rewinds_kept_weights_exactly(rewind_epoch):
    torch.manual_seed(6)
    model = net()
    init = state(model)
    early: dict = {}
    ticket = pruners.imp(model, data(), 0.3, rounds=2, epochs_per_round=2, rewind_epoch=rewind_epoch,
                           batch_size=16, device="cpu", progress=False, callbacks=[_capture_after(1, early)])
    target = init if rewind_epoch == 0 else early
    assert not same_state(init, early)  # training moved the weights
    now = state(model)
    for r in ticket.layers:
        mask = ticket.mask(r.fqn)
        assert torch.equal(now[r.fqn][mask], target[r.fqn][mask])
        assert not now[r.fqn][~mask].any()
    for k in now:  # biases are rewound too
        if k not in ticket.compact_masks:
            assert torch.equal(now[k], target[k])
    assert ticket.kind == "learned" and ticket.method == "imp" and ticket.density == 0.3
    assert sum(r.nonzeros for r in ticket.layers) == round(0.3 * total(model))
    assert [len(h) for h in ticket.history] == [2, 2]


def test_imp_prunes_by_global_magnitude_of_the_trained_weights():
    torch.manual_seed(7)
    model = net()
    trained: dict = {}
    ticket = pruners.imp(model, data(), 0.2, rounds=1, epochs_per_round=2, batch_size=16, device="cpu",
                           progress=False, callbacks=[_capture_after(2, trained)])
    scores = {r.fqn: trained[r.fqn].abs() for r in ticket.layers}
    expect = pruners.global_topk(scores, round(0.2 * total(model)))
    assert all(torch.equal(expect[r.fqn], ticket.mask(r.fqn)) for r in ticket.layers)


class _Stop(Exception):
    pass


def test_imp_resume_after_a_crash_is_exact(tmp_path):
    kw = dict(rounds=3, epochs_per_round=2, rewind_epoch=1, batch_size=16, device="cpu", progress=False, seed=3)
    torch.manual_seed(8)
    reference = net()
    init = state(reference)
    ref = pruners.imp(reference, data(), 0.2, checkpoint_dir=tmp_path / "a", **kw)
    assert (tmp_path / "a" / pruners.IMP_STATE_NAME).exists()
    assert sorted(p.name for p in (tmp_path / "a").glob("ticket-*.safetensors")) == [
        "ticket-01.safetensors", "ticket-02.safetensors", "ticket-03.safetensors"]
    assert sparsekit.load_ticket(tmp_path / "a" / "ticket-01.safetensors").realised_density == pytest.approx(
        0.2 ** (1 / 3), abs=1e-3)

    calls = {"n": 0}

    def crash(state, stats):
        calls["n"] += 1
        if calls["n"] == 4:  # round 2, after its first epoch
            raise _Stop

    crashed = net()
    crashed.load_state_dict(init)
    with pytest.raises(_Stop):
        pruners.imp(crashed, data(), 0.2, checkpoint_dir=tmp_path / "b", callbacks=[crash], **kw)
    with pytest.raises(FileExistsError, match="resume"):
        pruners.imp(net(), data(), 0.2, checkpoint_dir=tmp_path / "b", **kw)
    with pytest.raises(sparsekit.SparsekitError, match="settings differ"):
        pruners.imp(net(), data(), 0.1, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    torch.manual_seed(123)
    fresh = net()  # another initialisation: the run folder's init.pt wins
    resumed = pruners.imp(fresh, data(), 0.2, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert same_state(state(reference), state(fresh))
    assert all(torch.equal(ref.mask(r.fqn), resumed.mask(r.fqn)) for r in ref.layers)
    assert [len(h) for h in resumed.history] == [2, 2, 2]


def test_imp_argument_errors():
    with pytest.raises(ValueError, match="rewind_epoch"):
        pruners.imp(net(), data(), 0.1, rounds=2, epochs_per_round=2, rewind_epoch=3)
    with pytest.raises(ValueError, match="rounds"):
        pruners.imp(net(), data(), 0.1, rounds=0, epochs_per_round=2)
    model = net()
    with pytest.raises(TypeError, match="factory"):
        pruners.imp(model, data(), 0.1, rounds=1, epochs_per_round=1, optimizer=torch.optim.SGD(model.parameters(),
                                                                                                  lr=0.1))
    with pytest.raises(ValueError, match="checkpoint_dir"):
        pruners.imp(net(), data(), 0.1, rounds=1, epochs_per_round=1, resume=True)


# --------------------------------------------------------------------------------------------------
# ER randomisations


def _binomial_ok(ticket: sparsekit.Ticket, sigmas: float = 5.0) -> None:
    for rec in ticket.layers:
        m, p = rec.numel, rec.target_density
        drawn = rec.nonzeros - rec.edges_added  # the Bernoulli draw before flow repair
        assert abs(drawn - p * m) <= sigmas * math.sqrt(m * p * (1 - p)) + 1, (rec.fqn, drawn, p * m)


def _learned_source() -> tuple[nn.Module, sparsekit.Ticket]:
    torch.manual_seed(9)
    model = net((16, 64, 48, 4))
    ticket = pruners.snip(model, data(), 0.15)
    return model, ticket


SOURCE_MODEL, SOURCE = _learned_source()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), from_file=st.booleans())
def test_er_from_reproduces_the_source_densities(seed, from_file, tmp_path_factory):
    source: object = SOURCE
    if from_file:
        path = tmp_path_factory.mktemp("src") / "snip.safetensors"
        sparsekit.save_ticket(SOURCE, path)
        source = path
    model = net((16, 64, 48, 4))
    ticket = sparsekit.prune(model, "er-from", ticket=source, seed=seed)  # density: the source's
    assert ticket.method == "er-from" and ticket.method_options == {} and ticket.kind == "er"
    assert ticket.density == pytest.approx(SOURCE.realised_density, rel=1e-12)
    for rec, src in zip(ticket.layers, SOURCE.layers, strict=True):
        assert rec.target_density == pytest.approx(src.realised_density, rel=1e-12)
    _binomial_ok(ticket)
    layers = {L.fqn: L for L in find_layers(model)}
    for rec in ticket.layers:  # flow repair applies as usual
        rows, cols = dead_units(layers[rec.fqn], ticket.mask(rec.fqn))
        assert rows.numel() == 0 and cols.numel() == 0
    assert not all(torch.equal(ticket.mask(r.fqn), SOURCE.mask(r.fqn)) for r in ticket.layers)  # a fresh mask


def test_er_from_at_another_density_keeps_the_shape_of_the_ratios():
    d = sparsekit.layer_densities(net((16, 64, 48, 4)), "er-from", 0.05, ticket=SOURCE)
    src = {r.fqn: r.realised_density for r in SOURCE.layers}
    ratios = [d[f] / src[f] for f in d]
    assert ratios == pytest.approx([ratios[0]] * len(ratios))
    sizes = {L.fqn: L.numel for L in find_layers(net((16, 64, 48, 4)))}
    assert sum(d[f] * sizes[f] for f in d) / sum(sizes.values()) == pytest.approx(0.05)
    high = sparsekit.layer_densities(net((16, 64, 48, 4)), "er-from", 0.9, ticket=SOURCE)
    assert max(high.values()) == 1.0  # capped; the rest shared by the other layers
    assert sum(high[f] * sizes[f] for f in high) / sum(sizes.values()) == pytest.approx(0.9)


def test_er_from_rejects_a_ticket_of_another_model():
    with pytest.raises(sparsekit.SparsekitError, match="has shape"):
        sparsekit.prune(net((16, 64, 40, 4)), "er-from", ticket=SOURCE)
    with pytest.raises(sparsekit.SparsekitError, match="no layer"):
        sparsekit.prune(nn.ModuleDict({"a": nn.Linear(3, 3)}), "er-from", ticket=SOURCE)
    with pytest.raises(TypeError, match="needs 'ticket'"):
        sparsekit.prune(net(), "er-from")
    with pytest.raises(TypeError, match="Ticket or the path"):
        sparsekit.prune(net((16, 64, 48, 4)), "er-from", ticket=3)


def test_er_snip_and_er_synflow_take_the_pruners_ratios(tmp_path):
    torch.manual_seed(10)
    model = net((16, 64, 48, 4))
    before = state(model)
    train = data()
    ticket = sparsekit.prune(model, "er-snip", 0.1, data=train, seed=4)
    assert same_state({k: v for k, v in before.items() if k not in ticket.compact_masks},
                      {k: v for k, v in state(model).items() if k not in ticket.compact_masks})
    assert ticket.method_options == {}  # the data is an input, not recorded
    sparsekit.finalize(model)
    model.load_state_dict(before)
    reference = pruners.snip(model, train, 0.1)
    assert [r.target_density for r in ticket.layers] == [r.realised_density for r in reference.layers]
    _binomial_ok(ticket)
    path = sparsekit.save_ticket(ticket, tmp_path / "er-snip.safetensors")  # an ordinary er ticket
    loaded = sparsekit.load_ticket(path)
    assert loaded.method == "er-snip" and all(torch.equal(loaded.mask(r.fqn), ticket.mask(r.fqn))
                                              for r in ticket.layers)

    sparsekit.finalize(model)
    model.load_state_dict(before)
    er = sparsekit.prune(model, "er-synflow", 0.1, iterations=5, seed=1)
    assert er.method_options == {"iterations": 5}
    sparsekit.finalize(model)
    model.load_state_dict(before)
    sf = pruners.synflow(model, 0.1, iterations=5)
    assert [r.target_density for r in er.layers] == [r.realised_density for r in sf.layers]


def test_er_snip_with_dense_layers():
    torch.manual_seed(11)
    model = net((16, 64, 48, 4))
    d = sparsekit.layer_densities(model, "er-snip", 0.3, data=data(), dense=["0.weight"])
    assert d["0.weight"] == 1.0
    sizes = {L.fqn: L.numel for L in find_layers(model)}
    assert sum(d[f] * sizes[f] for f in d) == pytest.approx(round(0.3 * sum(sizes.values())), abs=1.5)


def test_a_collapsed_source_layer_gets_one_expected_weight_and_flow_repair():
    model = net()
    layers = find_layers(model)
    masks = {L.fqn: torch.rand(L.shape) < 0.3 for L in layers}
    masks["2.weight"][:] = False  # layer collapse in the source
    source = pruners._learned_ticket(model, layers, masks, "test", 0.2, {})
    sparsekit.finalize(model)
    with pytest.warns(UserWarning, match="layer collapse"):
        ticket = sparsekit.prune(net(), "er-from", ticket=source, seed=2)
    rec = next(r for r in ticket.layers if r.fqn == "2.weight")
    assert rec.target_density == pytest.approx(1 / rec.numel) and rec.nonzeros > 0  # repaired: rows and columns


def test_inputs_are_required_and_are_not_options():
    with pytest.raises(TypeError, match="needs 'data'"):
        sparsekit.prune(net(), "er-snip", 0.1)
    with pytest.raises(TypeError, match="is an input of method 'er-snip', not an option"):
        sparsekit.Method("er-snip", {"data": data()})
    with pytest.raises(TypeError, match="unknown option"):
        sparsekit.prune(net(), "er-balanced", 0.1, data=data())
    info = sparsekit.get_method("er-snip")
    assert info.inputs == ("model", "data") and info.options == ("batches", "batch_size")
    with pytest.raises(ValueError, match="inputs"):
        sparsekit.register_method("er-bad-input", description="x", inputs=("weights",))(lambda layers, density: {})


def test_baselines_example_quick_mode(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "r.json"
    text = subprocess.run([sys.executable, str(ROOT / "examples/baselines_digits.py"), "--quick", "--models", "cnn",
                           "--out", str(out)], capture_output=True, text=True, check=True, timeout=300).stdout
    row = next(line.split() for line in text.splitlines() if line.startswith("cnn"))
    assert row[1] == "0.1" and len(row) == 2 + 3 * 8  # mean ± std for each of the 8 methods
    runs = json.loads(out.read_text())["runs"]
    assert [r["method"] for r in runs] == ["snip", "synflow", "imp", "er-snip", "er-synflow", "er-from-imp",
                                           "er-balanced", "er-erk"]
    for r in runs:
        assert 0.0 <= r["test_acc"] <= 1.0
        assert r["realised_density"] == pytest.approx(0.1, abs=0.02)
