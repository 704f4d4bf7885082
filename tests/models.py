"""Small models for the tests (the zoo of issue 2) and helpers."""

from __future__ import annotations

import torch
from torch import nn


class Conv1D(nn.Module):
    """transformers-style Conv1D: weight stored (in, out), y = x @ W + b (duck typed by sparsekit)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], self.nf)


class GPT2Block(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.c_attn = Conv1D(3 * d, d)
        self.c_proj = Conv1D(d, d)
        self.c_fc = Conv1D(4 * d, d)
        self.mlp_proj = Conv1D(d, 4 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v
        x = x + self.c_proj(a)
        return x + self.mlp_proj(torch.relu(self.c_fc(x)))


class TiedLM(nn.Module):
    """Embedding and output projection share one Parameter."""

    def __init__(self, vocab: int = 50, d: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.hidden = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.emb(idx))))


def mlp(sizes=(64, 128, 64, 10)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def deconv_decoder() -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1, groups=4), nn.ReLU(),
        nn.ConvTranspose2d(16, 3, 3, padding=1))


def transformer() -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=256, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


def zoo(meta_big: bool = True) -> dict[str, nn.Module]:
    """The model zoo: torchvision models (meta device: no weight init) plus small ones."""
    import torchvision

    out: dict[str, nn.Module] = {}
    for name in ("resnet18", "resnet50", "vgg16", "mobilenet_v3_small"):
        with torch.device("meta" if meta_big else "cpu"):
            out[name] = getattr(torchvision.models, name)()
    out["transformer"] = transformer()
    out["deconv"] = deconv_decoder()
    out["mlp"] = mlp()
    out["tied"] = TiedLM()
    out["conv1d"] = GPT2Block()
    out["small_cnn"] = small_cnn()
    return out


class WithPrototypes(nn.Module):
    """A Linear plus a 2-D parameter no rule covers (coverage: unknown)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.proto = nn.Parameter(torch.randn(4, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) @ self.proto.T


def with_prototypes() -> nn.Module:
    return WithPrototypes()
