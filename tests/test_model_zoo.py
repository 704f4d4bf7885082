"""The model zoo people actually prune (issue 14): random-weight constructors, no downloads.

For every family: which parameters are masked / excluded (and by which rule) / unknown is asserted,
the density over the masked set is within binomial tolerance, masks stay exact after AdamW and
SGD-momentum steps, and a ticket file re-applied to a freshly built model gives bit-identical masks.
Full-size GPT-2 and Mixtral run on the meta device for the coverage and density plan.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.flow import dead_units
from sparsekit.layers import find_layers

T = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

warnings.filterwarnings("ignore", message=".*token_id.*")


class RNNLM(nn.Module):
    """Token embedding -> stacked bidirectional LSTM (with projections) or GRU -> Linear head."""

    def __init__(self, kind: str = "lstm", vocab: int = 40, d: int = 16, hidden: int = 24) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        if kind == "lstm":
            self.rnn = nn.LSTM(d, hidden, num_layers=2, bidirectional=True, proj_size=8, batch_first=True)
            out = 16
        else:
            self.rnn = nn.GRU(d, hidden, num_layers=2, bidirectional=True, batch_first=True)
            out = 2 * hidden
        self.head = nn.Linear(out, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.emb(idx))[0])


def _ids(vocab: int = 100, shape: tuple[int, int] = (2, 8)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))


def _hf(cls: str, cfg: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(T, cls)(getattr(T, cfg)(**kw))
    return build


_LM = dict(vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_ENC_DEC = dict(_LM, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, decoder_start_token_id=1)

#: name -> (constructor, inputs, {excluded >=2-D parameter: rule}); every other >=2-D parameter is masked
ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[], dict[str, torch.Tensor]], dict[str, str]]] = {
    "gpt2": (_hf("GPT2LMHeadModel", "GPT2Config", n_layer=1, n_embd=32, n_head=2, n_positions=16, **_LM),
             lambda: {"input_ids": _ids()},
             {"transformer.wte.weight": "embedding (tied)", "transformer.wpe.weight": "embedding"}),
    "bert": (_hf("BertForMaskedLM", "BertConfig", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=16, vocab_size=100, pad_token_id=0),
             lambda: {"input_ids": _ids()},
             {"bert.embeddings.word_embeddings.weight": "embedding (tied)",
              "bert.embeddings.position_embeddings.weight": "embedding",
              "bert.embeddings.token_type_embeddings.weight": "embedding"}),
    "llama": (_hf("LlamaForCausalLM", "LlamaConfig", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, **_LM),
              lambda: {"input_ids": _ids()}, {"model.embed_tokens.weight": "embedding"}),
    "t5": (_hf("T5ForConditionalGeneration", "T5Config", d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
               vocab_size=100, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
           lambda: {"input_ids": _ids(), "decoder_input_ids": _ids()},
           {"shared.weight": "embedding (tied)",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "embedding",
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "embedding"}),
    "bart": (_hf("BartForConditionalGeneration", "BartConfig", max_position_embeddings=16, **_ENC_DEC),
             lambda: {"input_ids": _ids(), "decoder_input_ids": _ids()},
             {"model.shared.weight": "embedding (tied)", "model.encoder.embed_positions.weight": "embedding",
              "model.decoder.embed_positions.weight": "embedding"}),
    "whisper": (_hf("WhisperForConditionalGeneration", "WhisperConfig", num_mel_bins=8, max_source_positions=16,
                    max_target_positions=16, **_ENC_DEC),
                lambda: {"input_features": torch.randn(2, 8, 32), "decoder_input_ids": _ids()},
                {"model.encoder.embed_positions.weight": "embedding", "model.decoder.embed_tokens.weight":
                 "embedding (tied)", "model.decoder.embed_positions.weight": "embedding"}),
    "mixtral": (_hf("MixtralForCausalLM", "MixtralConfig", hidden_size=32, intermediate_size=16,
                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                    num_experts_per_tok=2, **_LM),
                lambda: {"input_ids": _ids()},
                {"model.embed_tokens.weight": "embedding", "model.layers.0.mlp.gate.weight": "router"}),
    "wav2vec2": (_hf("Wav2Vec2Model", "Wav2Vec2Config", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2),
                 lambda: {"input_values": torch.randn(2, 400)},
                 {"encoder.pos_conv_embed.conv.parametrizations.weight.original0": "weight_norm magnitude"}),
    "timm-vit": (lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                           depth=1, embed_dim=32, num_heads=2, num_classes=10),
                 lambda: {"x": torch.randn(2, 3, 32, 32)},
                 {"cls_token": "positional/token table", "pos_embed": "positional/token table"}),
    "timm-convnext": (lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=10, depths=(1, 1, 1, 1),
                                                dims=(8, 16, 24, 32)),
                      lambda: {"x": torch.randn(2, 3, 32, 32)}, {}),
    "torchvision-mobilenet_v3": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10, width_mult=0.25),
                                 lambda: {"x": torch.randn(2, 3, 32, 32)}, {}),
    "lstm-lm": (lambda: RNNLM("lstm"), lambda: {"idx": _ids(40)}, {"emb.weight": "embedding"}),
    "gru-lm": (lambda: RNNLM("gru"), lambda: {"idx": _ids(40)}, {"emb.weight": "embedding"}),
}


def _loss(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    first = out if isinstance(out, torch.Tensor) else out[0]
    return first.float().pow(2).mean()


def _two_d(model: nn.Module) -> dict[str, torch.Tensor]:
    seen: set[int] = set()
    out = {}
    for n, p in model.named_parameters():
        if p.dim() >= 2 and id(p) not in seen:
            seen.add(id(p))
            out[n] = p
    return out


def _effective_zero_ok(model: nn.Module, ticket: sparsekit.Ticket) -> None:
    """Every masked entry is exactly zero, in the trained tensor and in the weight the forward uses."""
    params = dict(model.named_parameters())
    for fqn, mask in ticket.masks.items():
        p = params[fqn]
        assert torch.all(p.detach()[~mask] == 0), fqn
        if ".parametrizations." in fqn:  # the effective (parametrized) weight
            mod, _, rest = fqn.partition(".parametrizations.")
            eff = getattr(model.get_submodule(mod), rest.split(".")[0])
            assert torch.all(eff.detach()[~mask] == 0), f"effective weight of {fqn}"


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_coverage_density_training_and_round_trip(name: str, tmp_path: Path) -> None:
    build, inputs, excluded = ZOO[name]
    torch.manual_seed(0)
    model = build()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no unknown-parameter warning for any family
        ticket = sparsekit.prune(model, "er-balanced", 0.1, seed=3, strict=True)
    cov = ticket.coverage
    assert cov["unknown"] == 0 and cov["unknown_params"] == []
    assert math.isclose(cov["masked"] + cov["dense"] + cov["excluded"], 1.0)
    entries = {e["fqn"]: e for e in sparsekit.model_coverage(model, find_layers(model), ticket.densities).entries}
    two_d = _two_d(model)
    got_excluded = {n: entries[n]["rule"] for n in two_d if entries[n]["status"] == "excluded"}
    assert got_excluded == excluded
    selected = {r.fqn for r in ticket.layers}
    assert selected == set(two_d) - set(excluded)  # every other >=2-D parameter is selected
    # density over the masked set within binomial tolerance (drawn entries, before flow repair)
    recs = [r for r in ticket.layers if r.target_density < 1]
    drawn = sum(r.nonzeros - r.edges_added for r in recs)
    mean = sum(r.target_density * r.numel for r in recs)
    sd = math.sqrt(sum(r.target_density * (1 - r.target_density) * r.numel for r in recs))
    assert abs(drawn - mean) <= 5 * sd + 1, (drawn, mean, sd)
    # flow: every row and column (per group / gate / expert) keeps an edge
    layers = {L.fqn: L for L in find_layers(model)}
    for fqn, mask in ticket.masks.items():
        rows, cols = dead_units(layers[fqn], mask)
        assert rows.numel() == 0 and cols.numel() == 0, fqn
    # masks exact after AdamW and SGD-momentum steps
    model.train()
    x = inputs()
    for opt in (torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1),
                torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-3)):
        for _ in range(2):
            opt.zero_grad()
            _loss(model, x).backward()
            opt.step()
        _effective_zero_ok(model, ticket)
    # ticket file round trip onto a freshly built model: bit-identical masks
    path = tmp_path / "t.safetensors"
    sparsekit.save_ticket(ticket, path)
    torch.manual_seed(1)
    fresh = build()
    back = sparsekit.apply_ticket(fresh, path)
    assert set(back.compact_masks) == set(ticket.compact_masks)
    for fqn in ticket.compact_masks:
        assert torch.equal(back.masks[fqn], ticket.masks[fqn]), fqn
    _effective_zero_ok(fresh, back)


def test_tied_head_policy_and_explicit_selection() -> None:
    build = ZOO["gpt2"][0]
    model = build()
    t = sparsekit.prune(model, density=0.1)
    assert "transformer.wte.weight" not in t.densities and "lm_head.weight" not in t.densities
    assert t.coverage["tied"] == [{"fqn": "transformer.wte.weight", "aliases": ["lm_head.weight"],
                                   "status": "excluded", "rule": "embedding (tied)"}]
    text = str(t.report())
    assert "tied: transformer.wte.weight = lm_head.weight -> excluded (embedding (tied))" in text
    # selected explicitly: one mask, reported as the embedding it is, head and embedding agree
    model = build()
    t = sparsekit.prune(model, density=0.1, filter_fn=lambda m, n: True)
    rec = next(r for r in t.layers if r.fqn == "transformer.wte.weight")
    assert rec.aliases == ("lm_head.weight",) and rec.module_type == "Embedding"
    assert t.coverage["tied"][0]["status"] == "masked"
    assert "embedding selected by filter_fn" in t.coverage["tied"][0]["rule"]
    assert torch.equal(model.lm_head.weight != 0, t.masks["transformer.wte.weight"])


def test_tied_weight_is_read_as_embedding_whatever_the_module_order() -> None:
    class HeadFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(6, 20, bias=False)
            self.emb = nn.Embedding(20, 6)
            self.head.weight = self.emb.weight

    L = find_layers(HeadFirst(), filter_fn=lambda m, n: True)[0]
    assert (L.fqn, L.aliases, L.module_type, L.layout) == ("head.weight", ("emb.weight",), "Embedding",
                                                           sparsekit.LayerLayout(1, 0))
    assert find_layers(HeadFirst(), filter_fn=lambda m, n: n == "head") == []  # the head alone: not selected


def test_weight_norm_model_exports_with_its_zeros(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from sparsekit.formats.onnx import load_onnx_weights

    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 8, 3), dim=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(48, 3))
    t = sparsekit.prune(model, "er-uniform", 0.3, seed=4)
    report = sparsekit.export_onnx(model, tmp_path / "wn.onnx", input_shape=(1, 4, 8), storage="dense")
    assert report.verified
    fqn = "0.parametrizations.weight.original1"
    w = load_onnx_weights(tmp_path / "wn.onnx")[next(r.initializer for r in report.layers if r.fqn == fqn)]
    assert (torch.from_numpy(w) != 0).eq(t.masks[fqn]).all()


def test_embedding_subclasses_and_torchscript_are_embeddings() -> None:
    class Scaled(nn.Embedding):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2.0

    model = nn.Sequential(Scaled(10, 4), nn.Linear(4, 4))
    assert sparsekit.layers.is_embedding(model[0])
    assert {L.fqn for L in find_layers(model)} == {"1.weight"}
    scripted = torch.jit.script(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4)))
    assert {L.fqn for L in find_layers(scripted)} == {"1.weight"}
    assert not sparsekit.layers.is_embedding(nn.Linear(4, 4))


def test_unknown_parameters_warn_strict_raises_and_declare() -> None:
    class Experts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 8, 16))  # (experts, out, in), not named weight
            self.proto = nn.Parameter(torch.randn(5, 16))
            self.fc = nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("eoi,bi->beo", self.w, self.fc(x)).sum(1) + (x @ self.proto.T).sum(-1, keepdim=True)

    model = Experts()
    with pytest.warns(UserWarning, match=r"2 parameter\(s\).*w \(3, 8, 16\), proto \(5, 16\) \(63\.04% of"):
        t = sparsekit.prune(model, density=0.2)
    assert t.coverage["unknown_params"] == [{"fqn": "w", "shape": [3, 8, 16]}, {"fqn": "proto", "shape": [5, 16]}]
    assert "unknown (left dense, no rule covers them): w (3, 8, 16), proto (5, 16)" in str(t.report())
    sparsekit.finalize(model)
    with pytest.raises(sparsekit.UnsupportedLayerError, match="covered by no rule"):
        sparsekit.prune(model, density=0.2, strict=True)
    assert not sparsekit.is_pruned(model)
    # declared: each expert its own ER graph with its own flow repair; the prototypes dense on purpose
    sparsekit.declare_layouts(model, {"w": sparsekit.LayerLayout(1, 2, stack_axis=0)})
    sparsekit.declare_layouts(model.fc, {"weight": sparsekit.LayerLayout()})
    sparsekit.declare_excluded(model, {"proto": "class prototypes"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        t = sparsekit.prune(model, "er-uniform", density=0.02, seed=5, strict=True)
    assert t.coverage["excluded_by_rule"]["declared: class prototypes"] == 80
    L = {x.fqn: x for x in find_layers(model)}["w"]
    assert L.grid() == (3, 8, 16, 1)
    mask = t.masks["w"]
    for e in range(3):  # every expert: each output row and each input column keeps an edge
        assert mask[e].any(1).all() and mask[e].any(0).all()
    with pytest.raises(ValueError, match="has no parameters"):
        sparsekit.declare_excluded(model, {"nope": "x"})


def test_stack_axis_grid_flat_index_and_file_round_trip(tmp_path: Path) -> None:
    layer = sparsekit.Layer("w", "", "", (3, 5, 4, 2), sparsekit.LayerLayout(2, 0, stack_axis=1), torch.empty(0))
    t = torch.arange(120).reshape(3, 5, 4, 2)
    g = layer.as_grid(t)
    assert g.shape == (5, 4, 3, 2)  # (experts = axis 1, rows = axis 2, cols = axis 0, kernel)
    for e, r, c, k in [(0, 0, 0, 0), (4, 3, 2, 1), (2, 1, 0, 1)]:
        idx = layer.flat_index(torch.tensor(e), torch.tensor(r), torch.tensor(c), torch.tensor(k))
        assert t.view(-1)[idx] == g[e, r, c, k] == t[c, e, r, k]
    with pytest.raises(sparsekit.UnsupportedLayerError, match="stack_axis"):
        sparsekit.layers.check_layout("w", (3, 4, 5), sparsekit.LayerLayout(1, 2, stack_axis=1))
    with pytest.raises(sparsekit.UnsupportedLayerError, match="groups=1"):
        sparsekit.layers.check_layout("w", (3, 4, 4), sparsekit.LayerLayout(1, 2, groups=2, stack_axis=0))
    # the fused MoE layout round-trips through a ticket file with its stack axis
    model = ZOO["mixtral"][0]()
    t = sparsekit.prune(model, density=0.05, seed=2)
    assert t.layouts["model.layers.0.mlp.experts.gate_up_proj"] == sparsekit.LayerLayout(1, 2, stack_axis=0)
    sparsekit.save_ticket(t, tmp_path / "moe.safetensors")
    # a stacked layout is a format 1.1 feature (older readers reject it instead of rebuilding other masks)
    from sparsekit.formats.ticket_file import read_ticket_metadata

    assert read_ticket_metadata(tmp_path / "moe.safetensors").meta["format_version"] == "1.1"
    back = sparsekit.load_ticket(tmp_path / "moe.safetensors")
    assert back.layouts["model.layers.0.mlp.experts.down_proj"] == sparsekit.LayerLayout(1, 2, stack_axis=0)
    assert torch.equal(back.masks["model.layers.0.mlp.experts.down_proj"],
                       t.masks["model.layers.0.mlp.experts.down_proj"])


def test_fused_experts_transposed_layout_by_structure() -> None:
    class GptOssLikeExperts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_experts, self.is_transposed = 2, True
            self.gate_up_proj = nn.Parameter(torch.randn(2, 8, 12))  # (E, in, out)

    experts = GptOssLikeExperts()
    experts.gate_up_proj_bias = nn.Parameter(torch.zeros(2, 12))  # stacked expert biases: the bias rule
    layers = find_layers(experts)
    cov = sparsekit.model_coverage(experts, layers, {"gate_up_proj": 0.1})
    assert [(e["fqn"], e["status"], e["rule"]) for e in cov.entries][1] == ("gate_up_proj_bias", "excluded", "bias")
    assert [(L.fqn, L.layout) for L in layers] == [("gate_up_proj", sparsekit.LayerLayout(2, 1, stack_axis=0))]
    assert layers[0].grid() == (2, 12, 8, 1)


def test_rnn_gate_blocks_are_groups() -> None:
    lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True, proj_size=3)
    layers = {L.fqn: L for L in find_layers(lstm)}
    assert set(layers) == {f"weight_{k}_l{i}{s}" for k in ("ih", "hh", "hr") for i in (0, 1) for s in ("", "_reverse")}
    assert layers["weight_ih_l0"].grid() == (4, 5, 6, 1)  # i, f, g, o gates
    assert layers["weight_hh_l1_reverse"].grid() == (4, 5, 3, 1)  # recurrent input is the projection
    assert layers["weight_hr_l0"].grid() == (1, 3, 5, 1)
    assert find_layers(nn.GRU(4, 5))[0].grid() == (3, 5, 4, 1)
    t = sparsekit.prune(lstm, "er-uniform", 0.01, seed=0)
    m = t.masks["weight_ih_l0"].view(4, 5, 6)
    assert m.any(2).all() and m.any(1).all()  # every gate: each unit and each input connected
    assert sparsekit.layer_densities(lstm, "er-uniform", 0.01).keys() == t.densities.keys()


def test_parametrizations_spectral_old_weight_norm_and_custom() -> None:
    from torch.nn.utils import parametrizations, parametrize

    model = nn.Sequential(parametrizations.spectral_norm(nn.Linear(8, 8)), nn.ReLU(),
                          nn.Unflatten(1, (2, 4)), nn.utils.weight_norm(nn.Conv1d(2, 4, 3)))
    t = sparsekit.prune(model, "er-uniform", 0.3, seed=1)
    assert set(t.densities) == {"0.parametrizations.weight.original", "3.weight_v"}
    assert sparsekit.layer_densities(model, "er-uniform", 0.3).keys() == t.densities.keys()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
    assert torch.all(model[0].weight.detach()[~t.masks["0.parametrizations.weight.original"]] == 0)
    model(torch.randn(1, 8))  # old-style weight_norm recomputes .weight in a forward pre-hook
    assert torch.all(model[3].weight.detach()[~t.masks["3.weight_v"]] == 0)
    sparsekit.finalize(model)
    assert torch.all(model[0].weight.detach()[~t.masks["0.parametrizations.weight.original"]] == 0)

    class Scale(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2 * w

    class Shift(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w + 1

    ok = nn.Sequential(nn.Linear(8, 8))
    parametrize.register_parametrization(ok[0], "weight", Scale())
    t = sparsekit.prune(ok, density=0.3)
    assert torch.all(ok[0].weight.detach()[~t.masks["0.parametrizations.weight.original"]] == 0)
    bad = nn.Sequential(nn.Linear(8, 8))
    parametrize.register_parametrization(bad[0], "weight", Shift())
    before = bad[0].parametrizations.weight.original.detach().clone()
    with pytest.raises(sparsekit.UnsupportedLayerError, match="does not keep the zeros.*remove_parametrizations"):
        sparsekit.prune(bad, density=0.3)
    assert torch.equal(bad[0].parametrizations.weight.original, before) and not sparsekit.is_pruned(bad)


@pytest.mark.parametrize("name", ["gpt2", "gru-lm"])  # torch.onnx exports no LSTM with proj_size
def test_zoo_onnx_parity(name: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    build, inputs, _ = ZOO[name]
    model = build().eval()
    sparsekit.prune(model, density=0.1, seed=0)
    if name == "gpt2":  # a causal LM exports without a wrapper: input_ids -> logits, cache off
        report = sparsekit.export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 8))
        assert "input_ids -> logits" in report.exporter_note
    else:
        report = sparsekit.export_onnx(model, tmp_path / "m.onnx", example_input=inputs()["idx"])
    assert report.verified and report.kept < report.params


def test_auto_exporter_falls_back_when_dynamo_output_fails_parity(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    from sparsekit.formats import onnx as skonnx

    real = skonnx._export_dynamo

    class AddOne(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    def wrong_output(net, inputs, n_out, opset, dynamic_batch):  # a graph that exports but computes wrongly
        return real(nn.Sequential(net[0], AddOne()), inputs, n_out, opset, dynamic_batch)

    monkeypatch.setattr(skonnx, "_export_dynamo", wrong_output)
    model = nn.Sequential(nn.Linear(8, 4))
    sparsekit.prune(model, density=0.5)
    report = sparsekit.export_onnx(model, tmp_path / "a.onnx", input_shape=(2, 8))
    assert report.exporter == "torchscript" and "dynamo export failed the checks" in report.exporter_note
    with pytest.raises(sparsekit.SparsekitError, match="does not match PyTorch"):
        sparsekit.export_onnx(model, tmp_path / "b.onnx", input_shape=(2, 8), exporter="dynamo")
    assert not (tmp_path / "b.onnx").exists()


def _meta_plan(model: nn.Module, density: float) -> tuple[dict[str, float], sparsekit.Coverage]:
    layers = find_layers(model)
    dens = sparsekit.layer_densities(model, "er-balanced", density)
    return dens, sparsekit.model_coverage(model, layers, dens)


def test_full_size_gpt2_and_mixtral_on_meta() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            gpt2 = T.GPT2LMHeadModel(T.GPT2Config())
            mixtral = T.MixtralForCausalLM(T.MixtralConfig(num_hidden_layers=4))
    dens, cov = _meta_plan(gpt2, 0.01)
    entries = {e["fqn"]: e for e in cov.entries}
    assert entries["transformer.wte.weight"]["rule"] == "embedding (tied)"
    assert entries["transformer.wte.weight"]["aliases"] == ["lm_head.weight"]
    assert len(dens) == 48 and cov.unknown == []
    assert 0.68 < cov.fraction("masked") < 0.69  # 85M of 124M: the transformer blocks' matrices
    assert math.isclose(sum(dens[f] * entries[f]["params"] for f in dens) / cov.params("masked"), 0.01, rel_tol=1e-9)
    dens, cov = _meta_plan(mixtral, 0.01)
    entries = {e["fqn"]: e for e in cov.entries}
    assert cov.unknown == [] and cov.fraction("masked") > 0.95
    assert entries["model.layers.0.mlp.experts.gate_up_proj"]["status"] == "masked"
    assert entries["model.layers.0.mlp.gate.weight"]["rule"] == "router"
    layer = {L.fqn: L for L in find_layers(mixtral)}["model.layers.0.mlp.experts.gate_up_proj"]
    assert layer.grid() == (8, 2 * 14336, 4096, 1)


def test_cli_prune_shows_coverage_and_strict_fails() -> None:
    from cli_helpers import error_line, run

    result = run("prune", "models:with_prototypes", "-d", "0.5")
    assert result.exit_code == 0, result.output
    assert ("coverage of the model's parameters: masked 76.2% | dense 0.0% | excluded 4.8% (bias 4.8%) | "
            "unknown 19.0%") in result.output
    assert "warning: 1 parameter(s) with 2+ dimensions are covered by no rule and stay dense: proto (4, 16)" \
        in result.output
    result = run("prune", "models:with_prototypes", "-d", "0.5", "--strict")
    assert "covered by no rule" in error_line(result, 1)


def test_cli_include_embeddings_selects_the_tied_head(tmp_path: Path) -> None:
    from cli_helpers import run

    for flag, expect in (((), False), (("--include-embeddings",), True)):
        out = tmp_path / f"t{len(flag)}.safetensors"
        result = run("prune", "models:TiedLM", "-d", "0.2", "-o", out, *flag)
        assert result.exit_code == 0, result.output
        t = sparsekit.load_ticket(out)
        assert ("emb.weight" in t.densities) is expect and "hidden.weight" in t.densities
    assert sparsekit.layers.include_embeddings(nn.Embedding(3, 2), "e")
