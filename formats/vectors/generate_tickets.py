"""Regenerate the golden ticket files in formats/vectors/ (format 1.0).

    python formats/vectors/generate_tickets.py

Writes ticket-{er,rewired,weights}-v1.safetensors and ticket-vectors-v1.json (the masks each file
must decode to, bit-packed little endian as in rng-v1.json, plus the file's SHA-256). Only run this
when the format's major version changes: tests check the files byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import sparsekit  # noqa: E402
from sparsekit.masks import CompactMask  # noqa: E402


def golden_model() -> nn.Module:
    """The tiny model of the golden vectors, with deterministic weights (no RNG)."""
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.ConvTranspose2d(4, 2, 2))
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=torch.float32).view(p.shape).mul_(0.01).add_(i).sin_())
    return model


def learned_masks(model: nn.Module) -> dict[str, CompactMask]:
    """Arbitrary masks with a fixed pattern: dense-ish for one layer, sparse for the others."""
    out = {}
    for j, (name, p) in enumerate((n, p) for n, p in model.named_parameters() if p.dim() >= 2):
        i = torch.arange(p.numel())
        keep = (i * 7919 + j) % 13 < (6 if j == 0 else 1)
        out[name] = CompactMask.from_bool(keep.view(p.shape))
    return out


def bits_hex(mask: torch.Tensor) -> str:
    flat = mask.reshape(-1).tolist()
    out = bytearray((len(flat) + 7) // 8)
    for i, b in enumerate(flat):
        if b:
            out[i // 8] |= 1 << (i % 8)
    return out.hex()


def build(tmp: Path) -> dict[str, tuple[Path, sparsekit.Ticket]]:
    model = golden_model()
    er = sparsekit.prune(model, "er-pyramidal", 0.3, seed=7, flow="repair")
    files = {"er": (sparsekit.save_ticket(er, tmp / "ticket-er-v1.safetensors", overwrite=True), er)}
    files["weights"] = (sparsekit.save_ticket(er, tmp / "ticket-weights-v1.safetensors", weights="kept",
                                              overwrite=True), er)
    learned = sparsekit.prune(golden_model(), "er-pyramidal", 0.3, seed=7, flow="repair")
    learned.kind = "rewired"
    learned.compact_masks = learned_masks(golden_model())
    for r in learned.layers:
        if r.fqn in learned.compact_masks:
            r.nonzeros = learned.compact_masks[r.fqn].nnz
    files["rewired"] = (sparsekit.save_ticket(learned, tmp / "ticket-rewired-v1.safetensors", overwrite=True),
                        learned)
    return files


def main() -> None:
    files = build(HERE)
    doc = {"format_version": "1.0", "model": "formats/vectors/generate_tickets.py:golden_model", "files": {}}
    for kind, (path, ticket) in files.items():
        doc["files"][kind] = {
            "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "masks": {k: bits_hex(v) for k, v in ticket.masks.items()},
        }
    (HERE / "ticket-vectors-v1.json").write_text(json.dumps(doc, indent=1) + "\n")
    print("wrote", ", ".join(p.name for p, _ in files.values()))


if __name__ == "__main__":
    main()
