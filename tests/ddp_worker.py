"""Launched by tests/test_train_ddp.py through torchrun (2 processes, gloo, CPU).

argv: MODE OUT_DIR.
* "train": trains a pruned MLP under DDP and saves weights (rank 0 writes, every rank records its own
  final weights);
* "mismatch": prunes with a rank-dependent seed and expects fit_weak to fail loudly on every rank;
* "rewire": rewires with RigL and saves every rank's masks and weights.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

import sparsekit
from sparsekit.errors import SparsekitError


def data(n: int = 96) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 20, generator=g)
    y = (x[:, :5].sum(1) > 0).long() + 2 * (x[:, 5:10].sum(1) > 0).long()
    return torch.utils.data.TensorDataset(x, y)


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    m = model()
    prune_seed = rank if mode == "mismatch" else 7
    sparsekit.prune(m, method="er-erk", density=0.3, seed=prune_seed)
    if mode == "rewire":
        t = sparsekit.rewire(m, data(), epochs=3, lr=0.05, batch_size=8, device="cpu", seed=3, method="rigl",
                             update_every=2, progress=rank == 0)
        torch.save({k: v.clone() for k, v in t.masks.items()}, os.path.join(out, f"masks-{rank}.pt"))
        torch.save({k: v.detach().clone() for k, v in m.state_dict().items()}, os.path.join(out, f"weights-{rank}.pt"))
        with open(os.path.join(out, f"updates-{rank}.json"), "w") as f:
            json.dump(t.method_options["rewire"]["steps"], f)
        return
    try:
        h = sparsekit.fit_weak(m, data(), eval_data=data(40), epochs=3, lr=0.05, batch_size=8, device="cpu",
                               seed=3, checkpoint_dir=os.path.join(out, "ck"), progress=True)
    except SparsekitError as e:
        with open(os.path.join(out, f"error-{rank}.txt"), "w") as f:
            f.write(str(e))
        sys.exit(3)
    torch.save({k: v.detach().clone() for k, v in m.state_dict().items()}, os.path.join(out, f"weights-{rank}.pt"))
    with open(os.path.join(out, f"history-{rank}.json"), "w") as f:
        json.dump(h.to_dicts(), f)


if __name__ == "__main__":
    main()
