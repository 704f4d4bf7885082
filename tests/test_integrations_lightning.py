"""PyTorch Lightning with SparsekitLightningCallback: single process with save/resume (DDP: test_distributed.py)."""

from __future__ import annotations

import pytest
import torch

import sparsekit

pytest.importorskip("lightning")
import lightning.pytorch as L  # noqa: E402
from lightning_helpers import Net, loader, trainer  # noqa: E402

from sparsekit.errors import SparsekitError  # noqa: E402
from sparsekit.integrations.lightning import CHECKPOINT_KEY, SparsekitLightningCallback  # noqa: E402


def _ck(root):
    return L.callbacks.ModelCheckpoint(dirpath=str(root / "ck"), every_n_train_steps=3, save_top_k=-1,
                                       filename="{step}")


def masks_of(model) -> dict[str, torch.Tensor]:
    return {n: m.clone() for n, _p, m in sparsekit.masked_parameters(model)}


@pytest.mark.parametrize("rewire", [None, "rigl"])
def test_lightning_callback_prunes_checkpoints_and_resumes_identically(tmp_path, rewire):
    opts = {"update_every": 2} if rewire else None
    net = Net()
    # 24 samples, batch 8: the step-3 checkpoint ends epoch 1 (Lightning restarts a non-resumable loader)
    trainer(tmp_path, 6, [SparsekitLightningCallback(density=0.2, seed=3, rewire=rewire, rewire_options=opts),
                          _ck(tmp_path)]).fit(net, loader(24))
    final = {k: v.clone() for k, v in net.state_dict().items()}
    final_masks = masks_of(net)
    for name, p, m in sparsekit.masked_parameters(net):
        assert bool((p.detach()[~m] == 0).all()), name
    er = sparsekit.prune(Net(), density=0.2, seed=3).masks
    moved = any(not torch.equal(final_masks[k], er[k]) for k in er)
    assert moved == (rewire is not None)
    ck = torch.load(tmp_path / "ck" / "step=3.ckpt", weights_only=False)
    assert CHECKPOINT_KEY in ck

    again = Net()
    trainer(tmp_path / "b", 6, [SparsekitLightningCallback(density=0.2, seed=3, rewire=rewire, rewire_options=opts)]
            ).fit(again, loader(24), ckpt_path=str(tmp_path / "ck" / "step=3.ckpt"))
    assert all(torch.equal(masks_of(again)[k], final_masks[k]) for k in final_masks)
    for k, v in again.state_dict().items():
        assert torch.equal(v, final[k]), k


def test_rewired_resume_from_a_checkpoint_without_ticket_fails_loudly(tmp_path):
    net = Net()
    trainer(tmp_path, 3, [_ck(tmp_path)]).fit(net, loader(24))  # dense run, no sparsekit callback
    with pytest.raises(SparsekitError, match="no 'sparsekit_ticket'"):
        trainer(tmp_path / "b", 6, [SparsekitLightningCallback(density=0.2, rewire="set")]
                ).fit(Net(), loader(), ckpt_path=str(tmp_path / "ck" / "step=3.ckpt"))
