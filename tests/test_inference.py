"""sparse_inference: kernels, conversion, exactness against the dense masked model, choice, guards."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit
from sparsekit.errors import SparsekitError
from sparsekit.inference import (
    BSRKernel,
    CondensedKernel,
    CSRKernel,
    InferenceOnlyError,
    SparseConv2d,
    SparseLinear,
    SparseMultiheadAttention,
    _convert,
    condensed_width,
    detect_blocks,
    inference_report,
    sparse_inference,
)

SPARSE = ("csr", "bsr", "condensed")  # force sparse kernels: exactness tests must not depend on timing


@pytest.fixture(autouse=True)
def _quiet_beta_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse (CSR|BSR) tensor support is in beta.*")
        warnings.filterwarnings("ignore", message=".*[Ss]parse invariant checks.*")
        yield


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, float(b.abs().max())))


def _block_weight(out: int, inp: int, block: tuple[int, int], p: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(out // block[0], inp // block[1], generator=g) < p
    keep[0, 0] = True
    m = keep.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    return torch.randn(out, inp, generator=g) * m


def _fan_in_weight(out: int, inp: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(out, inp, generator=g).argsort(1)[:, :k]
    w = torch.zeros(out, inp)
    w.scatter_(1, idx, torch.randn(out, k, generator=g))
    return w


# ---------------------------------------------------------------------------------------------- kernels


@settings(max_examples=25, deadline=None)
@given(out=st.integers(1, 40), inp=st.integers(1, 40), m=st.integers(1, 5), p=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_csr_and_condensed_match_dense_matmul(out, inp, m, p, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(out, inp, generator=g) * (torch.rand(out, inp, generator=g) < p)).to(dtype)
    x = torch.randn(inp, m, generator=g).to(dtype)
    csr = CSRKernel(w)
    assert csr.nnz == int((w != 0).sum())
    assert csr.col.dtype == torch.int32 and csr.crow.dtype == torch.int32
    assert torch.equal(csr.to_dense(), w)
    _close(csr(x), w @ x)
    k = max(1, int((w != 0).sum(1).max()))
    cond = CondensedKernel(w, k)
    assert torch.equal(cond.to_dense(), w)
    _close(cond(x), w @ x)


def test_bsr_detects_blocks_and_matches():
    for block in ((16, 16), (4, 4), (1, 4)):
        w = _block_weight(64, 128, block, 0.2)
        got = detect_blocks(w)
        # a larger shape may also tile the pattern only if the blocks happen to align; never a smaller one
        assert got is not None and got[0] * got[1] >= block[0] * block[1]
        k = BSRKernel(w, got)
        assert torch.equal(k.to_dense(), w)
        assert k.nbytes() <= 1.2 * k.nnz * (4 + 4)  # one int32 index per block: far below one per value
        if got[0] == got[1]:  # torch's CPU kernel multiplies square blocks only
            x = torch.randn(128, 3)
            _close(k(x), w @ x)
        else:
            assert detect_blocks(w, square_only=True) is None


def test_detect_blocks_rejects_elementwise_and_partial_blocks():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 64, generator=g) * (torch.rand(64, 64, generator=g) < 0.05)
    assert detect_blocks(w) is None
    wb = _block_weight(64, 64, (16, 16), 0.3)
    wb[0, :8] = 0  # half of one row of one block: padding 8 / nnz stays small -> still 16x16
    assert detect_blocks(wb) == (16, 16)
    wb[:, ::2] = 0  # every block half empty: not 16x16 blocks any more, but (1, 4)? no: 2 of 4 columns kept
    assert detect_blocks(wb) in (None, (4, 1), (2, 2)) and detect_blocks(wb) != (16, 16)
    assert detect_blocks(torch.zeros(8, 8)) is None


def test_condensed_width_constant_and_ragged():
    w = _fan_in_weight(32, 100, 7)
    assert condensed_width(w) == 7
    w[0, w[0].nonzero()[0]] = 0  # one row with 6: padding 1/223, still condensed with k=7
    assert condensed_width(w) == 7
    g = torch.Generator().manual_seed(2)
    ragged = torch.randn(32, 100, generator=g) * (torch.rand(32, 100, generator=g) < 0.05)
    ragged[0, :60] = 1.0  # one dense-ish row: padding every row to 60 is far above 10%
    assert condensed_width(ragged) is None


# ------------------------------------------------------------------------------------------- conversion


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 96), nn.ReLU(), nn.Linear(96, 10))


@pytest.mark.parametrize("kernel", ["csr", "condensed", "bsr"])
def test_mlp_matches_dense_and_holds_only_sparse_weights(kernel):
    m = _mlp()
    if kernel == "bsr":  # block-structured weights (as block-ER draws them), baked in as zeros
        with torch.no_grad():
            for lin in (m[0], m[2], m[4]):
                o, i = lin.weight.shape
                lin.weight.mul_(_block_weight(o, i, (2, 2), 0.1) != 0)
    elif kernel == "condensed":  # constant fan-in
        with torch.no_grad():
            for lin in (m[0], m[2], m[4]):
                o, i = lin.weight.shape
                lin.weight.mul_(_fan_in_weight(o, i, 5) != 0)
    else:
        sparsekit.prune(m, method="er-balanced", density=0.05)
    x = torch.randn(3, 64)
    fast = sparse_inference(m, x, kernels=(kernel,), repeats=1)
    m.eval()
    with torch.no_grad():
        _close(fast(x), m(x))
        x2 = torch.randn(2, 5, 64)  # other batch shapes work too (leading dims)
        _close(fast(x2), m(x2))
    assert isinstance(m[0], nn.Linear)  # the original is untouched
    rep = inference_report(fast)
    assert [r.kernel.split(" ")[0] for r in rep.layers] == [kernel] * 3
    assert all(isinstance(fast[i], SparseLinear) for i in (0, 2, 4))
    assert not list(fast.parameters())  # no dense weight left anywhere
    assert rep.memory_ratio <= 1.2, rep.table()
    assert rep.bytes < 0.25 * rep.dense_bytes
    assert rep.max_abs_error is not None and rep.max_abs_error < 1e-4
    assert "model weights" in rep.table() and rep.to_dict()["layers"][0]["name"] == "0"


def test_pruned_finalized_and_ticket_models_give_the_same_result():
    m = _mlp()
    ticket = sparsekit.prune(m, method="er-balanced", density=0.1)
    x = torch.randn(4, 64)
    a = sparse_inference(m, x, kernels=("csr",), repeats=1)
    baked = sparsekit.finalize(_mlp_copy(m))
    b = sparse_inference(baked, x, kernels=("csr",), repeats=1)
    fresh = _mlp()
    fresh.load_state_dict(m.state_dict())
    other = _mlp(seed=1)
    sparsekit.apply_ticket(other, ticket)
    other.load_state_dict(m.state_dict())
    c = sparse_inference(other, x, kernels=("csr",), repeats=1)
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and torch.equal(a(x), c(x))


def _mlp_copy(m):
    import copy

    return copy.deepcopy(m)


def test_cnn_convolution_variants_match():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 24, 3, stride=2, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(24, 24, (3, 1), padding="same", padding_mode="reflect"), nn.ReLU(),
        nn.Conv2d(24, 32, 1), nn.ReLU(),
        nn.Conv2d(32, 8, 2, stride=2, bias=False), nn.Flatten(), nn.LazyLinear(10),
    )
    x = torch.randn(2, 3, 12, 12)
    net(x)
    sparsekit.prune(net, method="er-balanced", density=0.2)
    fast = sparse_inference(net, x, kernels=("csr",), repeats=1)
    convs = [m for m in fast.modules() if isinstance(m, SparseConv2d)]
    assert len(convs) == 5 and convs[3]._pointwise
    with torch.no_grad():
        _close(fast(x), net.eval()(x))
        _close(fast[0](x[0]), net[0](x[0]))  # unbatched input


def test_grouped_and_1d_convolutions_stay_dense_with_a_warning():
    torch.manual_seed(0)
    for net, x, kind in ((nn.Sequential(nn.Conv1d(4, 8, 3)), torch.randn(1, 4, 10), "Conv1d"),
                         (nn.Sequential(nn.Conv2d(4, 8, 3, groups=2)), torch.randn(1, 4, 6, 6), "grouped")):
        with torch.no_grad():
            net[0].weight.mul_(torch.rand_like(net[0].weight) < 0.1)
        with pytest.warns(UserWarning, match=r"stay dense.*0\.weight"):
            fast = sparse_inference(net, x)
        row = inference_report(fast).layers[0]
        assert row.kernel == "dense" and kind in row.reason


def test_transformer_encoder_matches_both_layouts_and_masks():
    torch.manual_seed(0)
    for batch_first in (True, False):
        enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=batch_first), 2,
                                    enable_nested_tensor=False)
        sparsekit.prune(enc, method="er-balanced", density=0.1)
        x = torch.randn(2, 6, 32) if batch_first else torch.randn(6, 2, 32)
        fast = sparse_inference(enc, x, kernels=("csr",), repeats=1)
        assert isinstance(fast.layers[0].self_attn, SparseMultiheadAttention)
        pad = torch.zeros(2, 6, dtype=torch.bool)
        pad[1, 4:] = True
        causal = nn.Transformer.generate_square_subsequent_mask(6)
        enc.eval()
        with torch.no_grad(), _fastpath_off():  # the fused path writes 0 at padded positions
            _close(fast(x), enc(x))
            _close(fast(x, src_key_padding_mask=pad), enc(x, src_key_padding_mask=pad))
            _close(fast(x, mask=causal, is_causal=True), enc(x, mask=causal, is_causal=True))


class _fastpath_off:
    def __enter__(self):
        self.old = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)

    def __exit__(self, *a):
        torch.backends.mha.set_fastpath_enabled(self.old)


def test_multihead_attention_all_call_forms():
    torch.manual_seed(0)
    for kdim in (None, 24):
        mha = nn.MultiheadAttention(32, 4, kdim=kdim, vdim=kdim).eval()
        with torch.no_grad():
            for p in mha.parameters():
                if p.dim() == 2:
                    p.mul_(torch.rand_like(p) < 0.2)
        q = torch.randn(5, 3, 32)
        kv = torch.randn(7, 3, kdim or 32)
        fast = sparse_inference(mha, (q, kv, kv), kernels=("csr",), repeats=1)
        assert isinstance(fast, SparseMultiheadAttention)
        am = torch.rand(5, 7) > 0.7
        kpm = torch.zeros(3, 7, dtype=torch.bool)
        kpm[0, 5:] = True
        for kw in ({}, {"attn_mask": am}, {"key_padding_mask": kpm, "average_attn_weights": False},
                   {"attn_mask": torch.randn(12, 5, 7)}, {"need_weights": False, "key_padding_mask": kpm}):
            with torch.no_grad():
                a, aw = mha(q, kv, kv, **kw)
                b, bw = fast(q, kv, kv, **kw)
            _close(b, a)
            assert (aw is None) == (bw is None)
            if aw is not None:
                _close(bw, aw)
        with torch.no_grad():  # unbatched
            _close(fast(q[:, 0], kv[:, 0], kv[:, 0])[0], mha(q[:, 0], kv[:, 0], kv[:, 0])[0])


@pytest.mark.slow
def test_resnet18_matches():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    sparsekit.prune(net, method="er-balanced", density=0.05)
    x = torch.randn(1, 3, 32, 32)
    fast = sparse_inference(net, x, kernels=("csr",), repeats=1)
    rep = inference_report(fast)
    assert sum(isinstance(m, SparseConv2d) for m in fast.modules()) == 20
    assert rep.memory_ratio <= 1.2
    with torch.no_grad():
        _close(fast(x), net.eval()(x), tol=1e-4)


def test_tiny_hf_bert_matches():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg).eval()
    sparsekit.prune(bert, method="er-balanced", density=0.1)
    ids = torch.randint(0, 50, (2, 8))
    fast = sparse_inference(bert, {"input_ids": ids}, kernels=("csr",), repeats=1)
    n = sum(isinstance(m, SparseLinear) for m in fast.modules())
    assert n >= 12  # q, k, v, attention output, intermediate, output per layer
    with torch.no_grad():
        _close(fast(input_ids=ids).last_hidden_state, bert(input_ids=ids).last_hidden_state, tol=1e-4)


# -------------------------------------------------------------------------------------- choice by timing


def _fake_measure(times, medians=None):
    def measure(fns, device, repeats, budget_s):
        for fn in fns.values():
            fn()
        return ({k: v for k, v in times.items() if k in fns}, {},
                {k: v for k, v in (medians or times).items() if k in fns})
    return measure


def test_choice_follows_measurement_and_margin(monkeypatch):
    m = _mlp()
    sparsekit.prune(m, method="er-balanced", density=0.05)
    x = torch.randn(2, 64)
    monkeypatch.setattr(_convert, "_measure", _fake_measure({"dense": 1.0, "csr": 0.5, "condensed": 0.8}))
    fast = sparse_inference(m, x, kernels=("dense", "csr", "condensed"))
    assert [r.kernel for r in inference_report(fast).layers] == ["csr"] * 3
    assert inference_report(fast).layers[0].speedup == pytest.approx(2.0)
    monkeypatch.setattr(_convert, "_measure", _fake_measure({"dense": 1.0, "csr": 0.95}))
    kept = sparse_inference(m, x, kernels=("dense", "csr"))  # 5% faster < margin 10%: stays dense
    assert all(isinstance(kept[i], nn.Linear) for i in (0, 2, 4))
    assert all("dense faster" in r.reason for r in inference_report(kept).layers)
    forced = sparse_inference(m, x, kernels=("csr",))  # without "dense": sparse even when slower
    assert isinstance(forced[0], SparseLinear)
    monkeypatch.setattr(_convert, "_measure", _fake_measure({"dense": 1.0, "csr": 0.8}))
    assert isinstance(sparse_inference(m, x, kernels=("dense", "csr"), margin=0.1)[0], SparseLinear)
    assert isinstance(sparse_inference(m, x, kernels=("dense", "csr"), margin=0.5)[0], nn.Linear)
    # one lucky fastest round is not enough: the median round must win too
    monkeypatch.setattr(_convert, "_measure", _fake_measure({"dense": 1.0, "csr": 0.5}, {"dense": 1.0, "csr": 1.2}))
    assert isinstance(sparse_inference(m, x, kernels=("dense", "csr"))[0], nn.Linear)


def test_dense_layers_are_not_measured_and_synthetic_input(monkeypatch):
    m = _mlp()  # not pruned: density 1 everywhere
    calls = []
    monkeypatch.setattr(_convert, "_measure", lambda *a, **k: calls.append(1) or ({}, {}, {}))
    fast = sparse_inference(m)
    assert not calls and all("max_density" in r.reason for r in inference_report(fast).layers)
    sparsekit.prune(m, method="er-balanced", density=0.05)
    monkeypatch.setattr(_convert, "_measure", _fake_measure({"dense": 1.0, "csr": 0.1}))
    fast = sparse_inference(m, batch_size=4)  # no sample_input: Linear layers measured on (4, in)
    rows = inference_report(fast).layers
    assert all(r.kernel == "csr" and r.input_shape[0] == 4 and "synthetic" in r.reason for r in rows)


def test_convolutions_without_sample_input_stay_dense():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten())
    with torch.no_grad():
        net[0].weight.mul_(torch.rand_like(net[0].weight) < 0.1)
    fast = sparse_inference(net)
    assert isinstance(fast[0], nn.Conv2d) and "needs sample_input" in inference_report(fast).layers[0].reason


def test_choices_rebuild_without_measuring(monkeypatch):
    m = _mlp()
    sparsekit.prune(m, method="er-balanced", density=0.05)
    x = torch.randn(2, 64)
    monkeypatch.setattr(_convert, "_measure", _fake_measure({"dense": 1.0, "csr": 0.5}))
    first = sparse_inference(m, x, kernels=("dense", "csr"))
    plan = inference_report(first).choices()
    assert plan == {"0": "csr", "2": "csr", "4": "csr"}
    monkeypatch.setattr(_convert, "_measure", lambda *a, **k: pytest.fail("measured despite choices"))
    again = sparse_inference(m, x, choices=dict(plan, **{"2": "dense"}))
    assert isinstance(again[0], SparseLinear) and isinstance(again[2], nn.Linear)
    assert inference_report(again).max_abs_error is not None  # verified although nothing was measured
    with torch.no_grad():
        assert torch.equal(again(x), first(x)) or _close(again(x), first(x)) is None
    with pytest.raises(SparsekitError, match="names no convertible layer"):
        sparse_inference(m, x, choices={"nope": "csr"})
    with pytest.raises(SparsekitError, match="expected one of"):
        sparse_inference(m, x, choices={"0": "coo"})
    with pytest.raises(SparsekitError, match="does not fit"):
        sparse_inference(m, x, choices={"0": "bsr"})


# ------------------------------------------------------------------------------------------------ guards


def test_verification_catches_a_wrong_kernel(monkeypatch):
    m = _mlp()
    sparsekit.prune(m, method="er-balanced", density=0.05)
    real = CSRKernel.forward
    monkeypatch.setattr(CSRKernel, "forward", lambda self, x: real(self, x) * 1.01)
    with pytest.raises(SparsekitError, match="differs from the dense model"):
        sparse_inference(m, torch.randn(2, 64), kernels=("csr",), repeats=1)
    with pytest.raises(SparsekitError, match="differs from the dense model"):  # also when nothing is measured
        sparse_inference(m, torch.randn(2, 64), choices={"0": "csr", "2": "csr", "4": "csr"})


def test_a_failing_kernel_is_reported_and_the_layer_stays_dense(monkeypatch):
    m = _mlp()
    sparsekit.prune(m, method="er-balanced", density=0.05)

    def broken(self, x):
        raise RuntimeError("no kernel for this dtype")

    monkeypatch.setattr(CSRKernel, "forward", broken)
    with pytest.warns(UserWarning, match=r"3 layer\(s\) stay dense because no sparse kernel ran.*no kernel for"):
        fast = sparse_inference(m, torch.randn(2, 64), kernels=("csr",), repeats=1)
    rows = inference_report(fast).layers
    assert all(r.kernel == "dense" and "csr failed (RuntimeError: no kernel" in r.reason for r in rows)
    assert isinstance(fast[0], nn.Linear)


def test_low_precision_models_convert_or_say_why():
    m = _mlp().to(torch.bfloat16)
    with torch.no_grad():
        for lin in (m[0], m[2], m[4]):
            lin.weight.mul_(torch.rand_like(lin.weight.float()) < 0.1)
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # CPU CSR has no bfloat16 kernel in some torch versions
        fast = sparse_inference(m, x, kernels=("csr", "condensed"), repeats=1)
    for r in inference_report(fast).layers:  # either converted and verified, or dense with the kernel's error
        assert r.kernel != "dense" or "failed" in r.reason


def test_inference_only_guards():
    m = _mlp()
    sparsekit.prune(m, method="er-balanced", density=0.05)
    x = torch.randn(2, 64)
    fast = sparse_inference(m, x, kernels=("csr",), repeats=1)
    assert not fast.training
    with pytest.raises(InferenceOnlyError, match="requires grad"):
        fast(x.requires_grad_())
    with pytest.raises(AttributeError, match="only in sparse form"):
        fast[0].weight  # noqa: B018
    assert not hasattr(fast[0], "weight")
    fast.train()
    with pytest.raises(InferenceOnlyError, match="inference-only"):
        fast(torch.randn(2, 64))
    fast.eval()
    with pytest.raises(SparsekitError, match="export the pruned model before"):
        sparsekit.export_onnx(fast, "/nonexistent/x.onnx", example_input=torch.randn(1, 64))
    with pytest.raises(InferenceOnlyError, match="cannot be exported"):
        torch.jit.trace(fast, torch.randn(1, 64))
    with pytest.raises(SparsekitError, match="already converted"):
        sparse_inference(fast)


@pytest.mark.parametrize("kwargs, match", [
    ({"kernels": ("csr", "fast")}, "kernels"),
    ({"kernels": ()}, "kernels"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_density": 1.5}, "max_density"),
    ({"margin": float("nan")}, "margin"),
    ({"repeats": 0}, "repeats"),
    ({"exclude": ["nope"]}, "exclude"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(SparsekitError, match=match):
        sparse_inference(_mlp(), **kwargs)


def test_bad_sample_input_and_model():
    m = _mlp()
    sparsekit.prune(m, method="er-balanced", density=0.05)
    with pytest.raises(SparsekitError, match="sample_input must be"):
        sparse_inference(m, 3.0)
    with pytest.raises(TypeError, match="nn.Module"):
        sparse_inference("model")
    with pytest.raises(SparsekitError, match="not made by sparsekit.sparse_inference"):
        inference_report(m)


def test_exclude_and_tied_weights_stay_dense():
    m = _mlp()
    sparsekit.prune(m, method="er-balanced", density=0.05)
    fast = sparse_inference(m, torch.randn(1, 64), kernels=("csr",), exclude=["2"], repeats=1)
    assert isinstance(fast[2], nn.Linear) and isinstance(fast[0], SparseLinear)
    assert inference_report(fast).layers[1].reason == "excluded"
    tied = nn.Sequential(nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False))
    with torch.no_grad():
        tied[0].weight.mul_(torch.rand(16, 16) < 0.1)
    tied[1].weight = tied[0].weight
    fast = sparse_inference(tied, torch.randn(1, 16), kernels=("csr",), repeats=1)
    assert all(isinstance(l, nn.Linear) for l in fast)
    assert all("shared" in r.reason for r in inference_report(fast).layers)


def test_inplace_converts_the_model_itself_and_unsupported_attention_stays_dense():
    m = _mlp()
    sparsekit.prune(m, method="er-balanced", density=0.05)
    x = torch.randn(2, 64)
    with torch.no_grad():
        ref = m.eval()(x)
    same = sparse_inference(m, x, kernels=("csr",), inplace=True, repeats=1)
    assert same is m and isinstance(m[0], SparseLinear)
    with torch.no_grad():
        _close(m(x), ref)
    mha = nn.MultiheadAttention(16, 2, add_bias_kv=True)
    with torch.no_grad():
        mha.in_proj_weight.mul_(torch.rand_like(mha.in_proj_weight) < 0.1)
    fast = sparse_inference(nn.ModuleDict({"a": mha}), None, kernels=("csr",))
    assert isinstance(fast["a"], nn.MultiheadAttention)
    assert all("add_bias_kv" in r.reason for r in inference_report(fast).layers)


def test_state_dict_and_device_moves_keep_working():
    m = _mlp()
    sparsekit.prune(m, method="er-balanced", density=0.05)
    x = torch.randn(2, 64)
    fast = sparse_inference(m, x, kernels=("csr",), repeats=1)
    sd = fast.state_dict()
    assert "0.kernel.values" in sd and "0.weight" not in sd
    import copy

    dup = copy.deepcopy(fast).double()
    with torch.no_grad():
        _close(dup(x.double()), fast(x).double())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kernels_match():
    m = _mlp().cuda()
    sparsekit.prune(m, method="er-balanced", density=0.05)
    x = torch.randn(8, 64, device="cuda")
    for k in SPARSE:
        fast = sparse_inference(m, x, kernels=(k, "csr"), repeats=2)
        with torch.no_grad():
            _close(fast(x), m.eval()(x), tol=1e-4)


class _ShiftedLinear(nn.Linear):
    """A Linear subclass with its own forward: replacing it by a plain sparse Linear would lose the shift."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x) + 1


def test_layers_with_their_own_forward_or_hooks_stay_dense_and_are_named():
    torch.manual_seed(0)
    m = nn.Sequential(_ShiftedLinear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    sparsekit.prune(m, method="er-balanced", density=0.05)
    calls = []
    m[2].register_forward_hook(lambda mod, a, out: calls.append(1))
    x = torch.randn(2, 64)
    with torch.no_grad():
        want = m(x)
    for sample in (None, x):  # without a sample nothing checks the outputs: the plan itself must be right
        got = sparse_inference(m, sample, kernels=SPARSE, choices=None if sample is None else {"4": "csr"})
        assert type(got[0]) is _ShiftedLinear and type(got[2]) is nn.Linear
        reasons = {r.name: r.reason for r in inference_report(got).layers}
        assert "own forward" in reasons["0"] and "hooks" in reasons["2"]
        calls.clear()
        with torch.no_grad():
            _close(got(x), want)
        assert calls == [1]  # the user's hook still runs
    for name in ("0", "2"):  # and a replayed plan cannot convert them either
        with pytest.raises(SparsekitError, match="must stay dense"):
            sparse_inference(m, x, choices={name: "csr"})


def test_an_output_without_tensors_cannot_pass_verification():
    class Out:
        def __init__(self, y: torch.Tensor) -> None:
            self.y = y

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 64)

        def forward(self, x: torch.Tensor) -> Out:
            return Out(self.fc(x))

    net = Net()
    sparsekit.prune(net, method="er-balanced", density=0.05)
    with pytest.raises(SparsekitError, match="holds no tensors"):
        sparse_inference(net, torch.randn(2, 64), kernels=SPARSE)
    sparse_inference(net, torch.randn(2, 64), kernels=SPARSE, verify=False)  # the named way out


def test_dense_is_timed_without_going_through_module_hooks(monkeypatch):
    """The dense side of a measurement calls the layer's forward, not the module (whose hooks, including
    the measuring pre-hook itself, would add a fixed cost to dense only and favour sparse kernels)."""
    m = _mlp()
    sparsekit.prune(m, method="er-balanced", density=0.05)
    dense_fns = []
    real = _convert._time_unit

    def spy(u, x, dense, *a):
        dense_fns.append(dense)
        return real(u, x, dense, *a)

    monkeypatch.setattr(_convert, "_time_unit", spy)
    sparse_inference(m, torch.randn(2, 64), repeats=1)
    assert dense_fns
    calls = []
    h = torch.nn.modules.module.register_module_forward_pre_hook(lambda mod, args: calls.append(mod))
    try:
        for fn in dense_fns:
            fn()
    finally:
        h.remove()
    assert calls == []


def test_a_wrapped_model_is_converted_under_the_inner_names():
    """Layer names (for choices=, exclude= and the report) are the inner module's, as in the ticket."""
    m = _mlp()
    sparsekit.prune(m, method="er-balanced", density=0.05)
    got = sparse_inference(nn.DataParallel(m), None, kernels=SPARSE, exclude=["2"])
    assert isinstance(got, nn.Sequential) and isinstance(got[0], SparseLinear) and isinstance(got[2], nn.Linear)
    assert [r.name for r in inference_report(nn.DataParallel(got)).layers] == ["0", "2", "4"]
