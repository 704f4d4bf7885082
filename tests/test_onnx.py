"""ONNX export (issue 7): baked masks, the three storages, onnxruntime parity, errors.

Model coverage (kept small so the file runs in well under a minute on 2 CPU cores): an MLP, a small CNN
(BatchNorm, grouped and depthwise convolutions) and a 2-layer transformer encoder (MultiheadAttention)
at densities 0.5, 0.1 and 0.01, each storage checked on its own; torchvision resnet18 (32x32 input,
density 0.01) and ``sparsekit:vgg16`` (density 0.1) once each with ``storage="auto"`` (``slow``: most of
their time is drawing the masks of 11M and 15M weights).
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import TiedLM, mlp, small_cnn, transformer
from torch import nn

import sparsekit

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparsekit.formats.onnx import (  # noqa: E402
    METADATA_KEY,
    check_onnx,
    encode_storage,
    export_onnx,
    load_onnx_weights,
    ort_session,
)

DENSITIES = (0.5, 0.1, 0.01)
STORAGES = ("dense", "sparse-initializer", "compact")
MODELS = {
    "mlp": (mlp, (1, 64)),
    "cnn": (small_cnn, (1, 3, 16, 16)),
    "transformer": (transformer, (1, 8, 64)),
}
HAS_ONNXSCRIPT = True
try:
    import onnxscript  # noqa: F401
except ImportError:
    HAS_ONNXSCRIPT = False


def build(name: str, density: float) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    model = factory()
    sparsekit.prune(model, density=density, seed=0)
    return model, shape


@torch.no_grad()
def reference(model: nn.Module, *inputs: torch.Tensor) -> np.ndarray:
    """PyTorch output of an eval-mode copy (the model itself stays as it is)."""
    return copy.deepcopy(model).eval()(*inputs).numpy()


def run_ort(proto: onnx.ModelProto, *inputs: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
    session = ort_session(proto.SerializeToString())
    names = [i.name for i in session.get_inputs()]
    return session.run(outputs, dict(zip(names, inputs, strict=True)))


def probe(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``proto`` that also outputs the tensors ``names`` as onnxruntime computes them."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for i, name in enumerate(names):
        out.graph.node.append(helper.make_node("Identity", [name], [f"probe{i}"]))
        out.graph.output.append(helper.make_value_info(f"probe{i}", helper.make_tensor_type_proto(TensorProto.FLOAT,
                                                                                                   None)))
    return out


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """``get(model name, density)`` -> (pruned model, input shape, dense ONNX path, report), exported once."""
    cache: dict[tuple[str, float], tuple[nn.Module, tuple[int, ...], Path, object]] = {}
    folder = tmp_path_factory.mktemp("onnx")

    def get(name: str, density: float):
        if (name, density) not in cache:
            model, shape = build(name, density)
            path = folder / f"{name}-{density}.onnx"
            report = export_onnx(model, path, input_shape=shape, storage="dense")
            cache[name, density] = (model, shape, path, report)
        return cache[name, density]

    return get


# --- every model x density x storage --------------------------------------------------------------------


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("name", list(MODELS))
def test_storage_parity_zeros_and_size(exported, name: str, density: float, storage: str) -> None:
    model, shape, path, report = exported(name, density)
    proto, info = encode_storage(onnx.load(str(path)), storage)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.shape_inference.InferenceError:
        assert storage == "sparse-initializer"  # onnx's shape inference does not read sparse initializers
        onnx.checker.check_model(proto)

    # dynamic batch: symbolic first axis, and onnxruntime matches PyTorch at batch 1 and 3
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randn((batch, *shape[1:]), generator=gen)
        (got,) = run_ort(proto, x.numpy())
        np.testing.assert_allclose(got, reference(model, x), rtol=1e-4, atol=1e-5)

    # zeros exactly where the mask says, kept values bit for bit: decoded in numpy and by onnxruntime
    masked = list(sparsekit.masked_parameters(model))
    weights = load_onnx_weights(proto)
    names = {layer.fqn: layer.initializer for layer in report.layers}
    assert all(names.values()), names
    probed = run_ort(probe(proto, [names[fqn] for fqn, _, _ in masked]), np.zeros(shape, np.float32))[1:]
    for (fqn, p, mask), from_ort in zip(masked, probed, strict=True):
        expected = p.detach().numpy()
        assert np.array_equal(weights[names[fqn]], expected), fqn
        assert np.array_equal(from_ort, expected), fqn
        assert not weights[names[fqn]][~mask.numpy()].any()

    # sizes: sparse-initializer 12 B per stored weight (fp32 value + int64 index), used below ~1/3 density;
    # compact at most 6 B per kept weight
    for fqn, _, mask in masked:
        t = info[names[fqn]]
        layer_density = float(mask.float().mean())
        if storage == "dense":
            assert t.encoding == "dense" and t.payload_bytes == 4 * mask.numel()
        elif storage == "sparse-initializer":
            if layer_density < 0.3:
                assert t.encoding == "sparse" and t.payload_bytes == 12 * t.nonzeros, (fqn, t)
            elif layer_density > 0.34:
                assert t.encoding == "dense", (fqn, t)
        elif layer_density <= 0.5:  # denser layers may stay dense (the decoding nodes cost a few hundred bytes)
            assert t.encoding in ("bitmask", "gap8", "gap16"), (fqn, t)
            assert t.payload_bytes <= 6 * t.nonzeros + 8, (fqn, t, t.payload_bytes / t.nonzeros)
    if storage == "compact":
        assert proto.ByteSize() < onnx.load(str(path)).ByteSize()


@pytest.mark.parametrize("name", list(MODELS))
def test_auto_picks_the_smallest_verified_storage(tmp_path: Path, name: str) -> None:
    model, shape = build(name, 0.01)
    path = tmp_path / "model.onnx"
    report = export_onnx(model, path, input_shape=shape)
    assert report.requested_storage == "auto"
    assert set(report.sizes) == set(STORAGES) and not report.rejected
    assert report.storage == min(report.sizes, key=report.sizes.__getitem__)
    assert max(report.sizes["compact"], report.sizes["sparse-initializer"]) < report.sizes["dense"]
    if name != "cnn":  # the small CNN's layers hold a few weights each: the decoding nodes outweigh them
        assert report.storage == "compact" and report.sizes["compact"] < report.sizes["sparse-initializer"]
    assert path.stat().st_size == report.file_bytes == report.sizes[report.storage]
    per = report.bytes_per_kept_weight
    assert 11.5 <= per["sparse-initializer"] <= 12.0 + 1e-9, per
    assert per["compact"] <= 6.0, per
    assert report.verified and report.max_rel_diff < 1e-4 and len(report.parity) == 2
    assert report.exporter == ("dynamo" if HAS_ONNXSCRIPT else "torchscript")
    assert report.layers and all(r.initializer for r in report.layers)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert METADATA_KEY in meta and meta["sparsekit.exporter"] == report.exporter
    assert '"method":"er-balanced","density":0.01,"seed":0' in meta["sparsekit.ticket"]
    assert "compact" in report.summary() and "not faster" in report.summary()


def test_auto_keeps_dense_when_nothing_is_sparse(tmp_path: Path) -> None:
    torch.manual_seed(0)
    report = export_onnx(mlp(), tmp_path / "dense.onnx", input_shape=(1, 64))
    assert report.storage == "dense" and report.kept == report.params == 0 and report.layers == []
    assert report.sizes["dense"] <= min(report.sizes.values())


@pytest.mark.slow
def test_resnet18_density_001(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    sparsekit.prune(model, density=0.01, seed=0)
    path = tmp_path / "resnet18.onnx"
    report = export_onnx(model, path, input_shape=(1, 3, 32, 32))
    assert report.storage == "compact" and report.verified
    assert report.sizes["compact"] <= 0.02 * report.sizes["dense"], report.sizes
    assert report.bytes_per_kept_weight["compact"] <= 6.0
    assert len(report.layers) >= 20 and all(r.initializer for r in report.layers)
    weights = load_onnx_weights(path)
    for fqn, p, _ in sparsekit.masked_parameters(model):
        assert np.array_equal(weights[fqn], p.detach().numpy()), fqn
    x = torch.randn(2, 3, 32, 32)
    (got,) = run_ort(onnx.load(str(path)), x.numpy())
    np.testing.assert_allclose(got, reference(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_sparsekit_vgg16_density_01(tmp_path: Path) -> None:
    from sparsekit.models import get_model

    torch.manual_seed(0)
    model = get_model("vgg16", num_classes=10)
    sparsekit.prune(model, density=0.1, seed=0)
    report = export_onnx(model, tmp_path / "vgg16.onnx", input_shape=(1, 3, 32, 32))
    assert report.storage == "compact" and report.verified and report.max_rel_diff < 1e-4
    assert report.sizes["compact"] < 0.15 * report.sizes["dense"]
    assert report.bytes_per_kept_weight["compact"] <= 5.5
    assert report.bytes_per_kept_weight["sparse-initializer"] <= 12.0
    assert all(r.initializer for r in report.layers)


# --- the user's model, tickets, inputs --------------------------------------------------------------------


def test_users_model_is_unchanged(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = small_cnn()
    ticket = sparsekit.prune(model, density=0.1, seed=0)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {fqn: m.clone() for fqn, _, m in sparsekit.masked_parameters(model)}
    export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 16, 16))
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():  # bit for bit, -0.0 included
        assert torch.equal(v.view(torch.uint8) if v.is_floating_point() else v,
                           after[k].view(torch.uint8) if v.is_floating_point() else after[k]), k
    assert model.training and sparsekit.ticket_of(model) is ticket
    assert {fqn: m for fqn, _, m in sparsekit.masked_parameters(model)}.keys() == masks.keys()
    for fqn, _, m in sparsekit.masked_parameters(model):
        assert torch.equal(m, masks[fqn])
    # masks still enforced: a training step keeps the pruned weights at zero
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    opt.step()
    for _, p, m in sparsekit.masked_parameters(model):
        assert not p[~m].any()


def test_ticket_file_with_kept_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = mlp()
    ticket = sparsekit.prune(trained, density=0.1, seed=3)
    sparsekit.save_ticket(ticket, tmp_path / "t.safetensors", weights="kept")
    fresh = mlp()  # other weights; the ticket file brings the kept ones
    fresh_before = {k: v.clone() for k, v in fresh.state_dict().items()}
    report = export_onnx(fresh, tmp_path / "m.onnx", input_shape=(1, 64), ticket=tmp_path / "t.safetensors")
    weights = load_onnx_weights(tmp_path / "m.onnx")
    for fqn, p, _ in sparsekit.masked_parameters(trained):
        assert np.array_equal(weights[fqn], p.detach().numpy()), fqn
    assert report.kept == sum(r.nonzeros for r in ticket.layers)
    assert not sparsekit.is_pruned(fresh)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in fresh_before.items())
    # a Ticket object works too; a different ticket on a pruned model is refused
    export_onnx(fresh, tmp_path / "m2.onnx", input_shape=(1, 64), ticket=ticket, verify=False)
    other = mlp()
    sparsekit.prune(other, density=0.5, seed=1)
    with pytest.raises(sparsekit.SparsekitError, match="already carries sparsekit masks"):
        export_onnx(other, tmp_path / "m3.onnx", input_shape=(1, 64), ticket=ticket)
    export_onnx(other, tmp_path / "m3.onnx", input_shape=(1, 64), ticket=sparsekit.ticket_of(other), verify=False)


def test_tied_weights_and_integer_inputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedLM()
    sparsekit.prune(model, density=0.1, seed=0, filter_fn=lambda m, n: True)  # selects the tied embedding
    tokens = torch.randint(0, 50, (2, 7))
    report = export_onnx(model, tmp_path / "lm.onnx", example_input=tokens, storage="compact")
    assert report.verified and report.parity[0].inputs == "the example input" and len(report.parity) == 3
    layers = {r.fqn: r for r in report.layers}
    assert layers["emb.weight"].initializer in ("emb.weight", "head.weight")  # one initializer for the tied pair
    weights = load_onnx_weights(tmp_path / "lm.onnx")
    assert np.array_equal(weights[layers["emb.weight"].initializer], model.emb.weight.detach().numpy())
    (got,) = run_ort(onnx.load(str(tmp_path / "lm.onnx")), tokens.numpy())
    np.testing.assert_allclose(got, reference(model, tokens), rtol=1e-5, atol=1e-6)


def test_static_batch_and_multiple_inputs(tmp_path: Path) -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(4, 16)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.a(x) + self.b(y), self.b(y)

    torch.manual_seed(0)
    model = TwoInputs()
    sparsekit.prune(model, density=0.5, seed=0)
    path = tmp_path / "two.onnx"
    report = export_onnx(model, path, input_shape=[(2, 8), (2, 4)], dynamic_batch=False)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input_0", "input_1"]
    assert [o.name for o in proto.graph.output] == ["output_0", "output_1"]
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [2, 8]
    assert not report.dynamic_batch and [p.inputs for p in report.parity] == ["random batch 2"]


def test_model_with_a_fixed_batch_size(tmp_path: Path) -> None:
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.view(1, 8))  # batch 1 only

    model = FixedBatch()
    sparsekit.prune(model, density=0.5, seed=0)
    with pytest.raises(sparsekit.SparsekitError, match="cannot have a dynamic batch: pass dynamic_batch=False"):
        export_onnx(model, tmp_path / "f.onnx", input_shape=(1, 8))
    assert files_in(tmp_path) == []
    assert export_onnx(model, tmp_path / "f.onnx", input_shape=(1, 8), dynamic_batch=False).verified


def test_exporter_choice_and_opset(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = mlp()
    sparsekit.prune(model, density=0.1, seed=0)
    report = export_onnx(model, tmp_path / "ts.onnx", input_shape=(1, 64), exporter="torchscript", opset=13)
    assert report.exporter == "torchscript" and report.exporter_note is None and report.opset == 13
    assert report.storage == "compact" and report.verified
    # opset 10 has no CumSum: compact is not possible, auto says so and picks another storage
    report = export_onnx(model, tmp_path / "ts10.onnx", input_shape=(1, 64), exporter="torchscript", opset=10)
    assert report.storage == "sparse-initializer" and "opset >= 11" in report.rejected["compact"]
    with pytest.raises(sparsekit.SparsekitError, match="opset >= 11"):
        export_onnx(model, tmp_path / "x.onnx", input_shape=(1, 64), exporter="torchscript", opset=10,
                    storage="compact")
    assert not (tmp_path / "x.onnx").exists()


def test_dynamo_failure_falls_back_to_torchscript(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.jit.script(mlp())  # torch.export cannot take a ScriptModule; the TorchScript exporter can
    sparsekit.prune(model, density=0.1, seed=0)
    report = export_onnx(model, tmp_path / "s.onnx", input_shape=(1, 64))
    assert report.exporter == "torchscript" and report.verified and report.storage == "compact"
    if HAS_ONNXSCRIPT:
        assert "ScriptModule" in report.exporter_note
    assert all(r.initializer for r in report.layers)


# --- bad inputs: clear errors, nothing left behind ------------------------------------------------------------


@pytest.fixture
def pruned_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = mlp()
    sparsekit.prune(model, density=0.1, seed=0)
    return model


def test_wrong_input_shape(tmp_path: Path, pruned_mlp: nn.Module) -> None:
    with pytest.raises(sparsekit.SparsekitError, match=r"does not run on inputs of shape \(1, 63\).*input_shape"):
        export_onnx(pruned_mlp, tmp_path / "m.onnx", input_shape=(1, 63))
    with pytest.raises(ValueError, match="example_input.*input_shape"):
        export_onnx(pruned_mlp, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="not both"):
        export_onnx(pruned_mlp, tmp_path / "m.onnx", input_shape=(1, 64), example_input=torch.zeros(1, 64))
    with pytest.raises(ValueError, match="positive integer"):
        export_onnx(pruned_mlp, tmp_path / "m.onnx", input_shape=(0, 64))
    with pytest.raises(TypeError, match="input_shape"):
        export_onnx(pruned_mlp, tmp_path / "m.onnx", input_shape="1,64")
    with pytest.raises(ValueError, match="storage must be one of"):
        export_onnx(pruned_mlp, tmp_path / "m.onnx", input_shape=(1, 64), storage="sparse")
    assert files_in(tmp_path) == []


def test_model_that_cannot_be_exported(tmp_path: Path) -> None:
    class Spectral(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.svdvals(self.fc(x))  # no ONNX operator for an SVD

    model = Spectral()
    sparsekit.prune(model, density=0.5, seed=0)
    with pytest.raises(sparsekit.SparsekitError, match="cannot export this model") as info:
        export_onnx(model, tmp_path / "svd.onnx", input_shape=(2, 8))
    message = str(info.value)
    assert "svd" in message and "torchscript exporter" in message and "\n" not in message
    assert files_in(tmp_path) == []


def test_export_that_does_not_match_pytorch_is_not_written(tmp_path: Path) -> None:
    class Drifting(nn.Module):
        """Each call scales differently: the traced graph cannot match later PyTorch calls."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.fc(x) * self.calls

    model = Drifting()
    sparsekit.prune(model, density=0.5, seed=0)
    with pytest.raises(sparsekit.SparsekitError, match="does not match PyTorch, nothing was written.*max abs diff"):
        export_onnx(model, tmp_path / "d.onnx", input_shape=(2, 8))
    assert files_in(tmp_path) == []
    assert model.calls == 0  # only the copy ran
    report = export_onnx(model, tmp_path / "d.onnx", input_shape=(2, 8), verify=False)
    assert report.parity == [] and not report.verified and (tmp_path / "d.onnx").exists()


def test_unwritable_paths(tmp_path: Path, pruned_mlp: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = {"input_shape": (1, 64), "verify": False}
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        export_onnx(pruned_mlp, tmp_path / "missing" / "m.onnx", **kwargs)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        export_onnx(pruned_mlp, tmp_path, **kwargs)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        export_onnx(pruned_mlp, tmp_path / "file" / "m.onnx", **kwargs)
    (tmp_path / "old.onnx").write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_onnx(pruned_mlp, tmp_path / "old.onnx", **kwargs)
    assert (tmp_path / "old.onnx").read_bytes() == b"keep me"

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the write fails half way
    with pytest.raises(OSError, match="No space left"):
        export_onnx(pruned_mlp, tmp_path / "old.onnx", overwrite=True, **kwargs)
    monkeypatch.undo()
    assert (tmp_path / "old.onnx").read_bytes() == b"keep me"
    assert files_in(tmp_path) == ["file", "old.onnx"]  # no temporary file left
    export_onnx(pruned_mlp, tmp_path / "old.onnx", overwrite=True, **kwargs)
    assert (tmp_path / "old.onnx").read_bytes() != b"keep me"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_folder(tmp_path: Path, pruned_mlp: nn.Module) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="permission denied"):
            export_onnx(pruned_mlp, folder / "m.onnx", input_shape=(1, 64))
        assert files_in(folder) == []
    finally:
        folder.chmod(0o700)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA provider available")
def test_cuda_provider_missing(tmp_path: Path, pruned_mlp: nn.Module) -> None:
    with pytest.raises(sparsekit.SparsekitError, match="onnxruntime-gpu"):
        export_onnx(pruned_mlp, tmp_path / "m.onnx", input_shape=(1, 64), provider="cuda")
    with pytest.raises(ValueError, match="provider must be one of"):
        export_onnx(pruned_mlp, tmp_path / "m.onnx", input_shape=(1, 64), provider="tpu")
    assert files_in(tmp_path) == []


# --- the compact code, tensor by tensor -------------------------------------------------------------------


def single_tensor_model(arr: np.ndarray) -> onnx.ModelProto:
    """A model whose only output is its one initializer ``W`` (through Identity)."""
    init = numpy_helper.from_array(arr, "W")
    graph = helper.make_graph([helper.make_node("Identity", ["W"], ["out"])], "g", [],
                              [helper.make_tensor_value_info("out", init.data_type, list(arr.shape))], [init])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def fillers(nz: np.ndarray, bits: int) -> int:
    gaps = np.diff(nz, prepend=-1)
    return int(((gaps - 1) // 2**bits).sum())


@st.composite
def sparse_arrays(draw):
    dtype = draw(st.sampled_from([np.float32, np.float16, np.float64]))
    shape = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)))
    numel = math.prod(shape)
    if draw(st.booleans()) and numel < 2000:  # sometimes a long, very sparse vector: big gaps, fillers
        shape = (draw(st.integers(66_000, 140_000)),)
        numel = shape[0]
    density = draw(st.sampled_from([0.0, 1e-4, 0.003, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    keep = rng.random(numel) < density
    values = rng.standard_normal(numel).astype(dtype)
    values[values == 0] = 1
    if draw(st.booleans()):
        values = -np.abs(values)  # pruned negative weights multiplied by 0 give -0.0
    return np.where(keep, values, np.zeros((), dtype) * values).reshape(shape).astype(dtype)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sparse_arrays())
def test_compact_code_round_trips(arr: np.ndarray) -> None:
    proto, info = encode_storage(single_tensor_model(arr), "compact")
    onnx.checker.check_model(proto, full_check=True)
    t = info["W"]
    dense_bytes = arr.nbytes
    nz = np.flatnonzero(arr.reshape(-1))
    assert t.nonzeros == nz.size
    if t.encoding != "dense":
        item = arr.dtype.itemsize
        best = min((arr.size + 7) // 8 + (nz.size + 1) * item, (nz.size + fillers(nz, 8)) * (1 + item),
                   (nz.size + fillers(nz, 16)) * (2 + item))
        assert t.payload_bytes == (0 if nz.size == 0 else best) < dense_bytes
    (got,) = run_ort(proto)
    assert got.dtype == arr.dtype and np.array_equal(got, arr)
    decoded = load_onnx_weights(proto)
    assert list(decoded) == ["W"] and np.array_equal(decoded["W"], arr)
    if t.encoding != "dense":
        assert not np.signbit(decoded["W"][decoded["W"] == 0]).any()  # -0.0 reads back as +0.0
    # the sparse-initializer storage round-trips too
    proto, info = encode_storage(single_tensor_model(arr), "sparse-initializer")
    assert info["W"].encoding in ("dense", "sparse")
    assert np.array_equal(load_onnx_weights(proto)["W"], arr)
    (got,) = run_ort(proto)
    assert np.array_equal(got, arr)


def test_gap_fillers_bridge_long_gaps() -> None:
    arr = np.zeros(300_000, np.float32)
    arr[[5, 5 + 70_000, 299_999]] = [1.5, -2.0, 3.0]
    proto, info = encode_storage(single_tensor_model(arr), "compact")
    assert info["W"].encoding == "gap16"
    codes = next(numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.endswith(".positions"))
    assert codes.dtype == np.uint16 and codes.size == 3 + 1 + 3  # one filler for 70,000, three for 229,999
    (got,) = run_ort(proto)
    assert np.array_equal(got, arr)


# --- check_onnx -----------------------------------------------------------------------------------------


def test_check_onnx(exported, tmp_path: Path) -> None:
    _, _, path, _ = exported("mlp", 0.1)
    c = check_onnx(path, runs=5, warmup=1)
    assert c.checker == "full" and c.file_bytes == path.stat().st_size and c.opset >= 11
    assert c.inputs == [("input", [1, 64], "float32")] and c.outputs == [("output", [1, 10])]
    assert len(c.latency_ms) == 5 and c.median_ms > 0 and c.session_s > 0 and c.storage is None
    compact, _ = encode_storage(onnx.load(str(path)), "compact")
    onnx.save(compact, str(tmp_path / "c.onnx"))
    c = check_onnx(tmp_path / "c.onnx", input_shape=(4, 64), runs=2)
    assert c.outputs == [("output", [4, 10])] and c.storage["storage"] == "compact"
    assert sum(c.storage["encodings"].values()) >= 2
    with pytest.raises(ValueError, match="does not fit"):
        check_onnx(path, input_shape=(1, 63))
    with pytest.raises(FileNotFoundError):
        check_onnx(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not onnx")
    with pytest.raises(sparsekit.SparsekitError):
        check_onnx(tmp_path / "junk.onnx")


# --- public API and example ---------------------------------------------------------------------------------


def test_public_api() -> None:
    assert getattr(sparsekit, "export_onnx", None) is export_onnx, \
        "add 'from .formats.onnx import export_onnx' and \"export_onnx\" in __all__ to sparsekit/__init__.py"
    assert "export_onnx" in sparsekit.__all__


def test_onnx_deploy_example_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import ROOT

    if getattr(sparsekit, "export_onnx", None) is None:
        pytest.skip("sparsekit.export_onnx is not exported yet (see test_public_api)")
    out = subprocess.run([sys.executable, str(ROOT / "examples/onnx_deploy.py"), "--out-dir", str(tmp_path)],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert "storage compact" in out and "same predictions: True" in out
    share = float(out.split("% of dense)")[0].rsplit("(", 1)[1])
    assert share < 20 and (tmp_path / "resnet20-sparse.onnx").exists()
