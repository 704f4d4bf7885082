"""A tiny LightningModule and data for tests/test_integrations_lightning.py and dist_worker.py."""

from __future__ import annotations

import lightning.pytorch as L
import torch
from torch import nn


class Net(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)


def loader(n: int = 96, batch_size: int = 8) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 20, generator=g)
    y = (x[:, :5].sum(1) > 0).long() + 2 * (x[:, 5:10].sum(1) > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def trainer(root, max_steps: int, callbacks, **kw) -> L.Trainer:
    return L.Trainer(default_root_dir=str(root), max_steps=max_steps, accelerator="cpu", callbacks=callbacks,
                     logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=True, **kw)
