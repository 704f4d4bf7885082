"""Ticket files: share a mask as a few KiB of seeds, a trained weak ticket as a complete small model.

    python examples/tickets.py [--out-dir tickets/]

1. prune an MLP (er-balanced, density 0.05) and save the er ticket: no mask bits, only seeds;
2. load it elsewhere: the masks are rebuilt bit-identically;
3. train the masked MLP on sklearn digits, save it with weights="kept" (kept values only);
4. apply that file to a fresh MLP: same logits as the trained one.
Needs scikit-learn (``dev`` extra). Runs on CPU in seconds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from quickstart import digits, make_mlp, train

import sparsekit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=None, help="where to write the tickets (default: a temp dir)")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    out = args.out_dir or Path(tempfile.mkdtemp(prefix="sparsekit-tickets-"))
    out.mkdir(parents=True, exist_ok=True)

    model = make_mlp()
    ticket = sparsekit.prune(model, "er-balanced", density=0.05, seed=0)
    er_path = sparsekit.save_ticket(ticket, out / "mlp-er.safetensors", overwrite=True)
    masked = sum(r.numel for r in ticket.layers)
    print(f"er ticket: {er_path.stat().st_size:,} bytes for {masked:,} masked weights "
          f"(a bool mask would be {masked:,} bytes)")

    rebuilt = sparsekit.load_ticket(er_path)
    same = all(torch.equal(rebuilt.masks[k], ticket.masks[k]) for k in ticket.masks)
    print(f"masks rebuilt from the seed are identical: {same}")

    acc = train(model, digits(), args.epochs)
    weak_path = sparsekit.save_ticket(ticket, out / "mlp-weak.safetensors", weights="kept", overwrite=True)
    dense_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(f"trained weak ticket: accuracy {acc:.3f}; file {weak_path.stat().st_size:,} bytes "
          f"vs {dense_bytes:,} bytes of dense fp32 weights")

    fresh = make_mlp(seed=123)
    sparsekit.apply_ticket(fresh, weak_path)
    x = digits()[2][:16]
    with torch.no_grad():
        equal = torch.equal(model(x), fresh(x))
    print(f"a fresh model with the weak ticket applied gives identical logits: {equal}")
    print(f"files in {out}")


if __name__ == "__main__":
    main()
