"""transformers.Trainer with SparsekitCallback: a tiny BERT fine-tuned on synthetic data (CPU)."""

from __future__ import annotations

import pytest
import torch

import sparsekit

transformers = pytest.importorskip("transformers")
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

from sparsekit.errors import SparsekitError  # noqa: E402
from sparsekit.integrations.hf import TICKET_FILE, SparsekitCallback, from_pretrained, save_pretrained  # noqa: E402


class Synthetic(torch.utils.data.Dataset):
    def __init__(self, n: int = 48) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, 12), generator=g)
        self.labels = (self.ids[:, 0] > 31).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.labels[i]}


def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     num_labels=2)
    return BertForSequenceClassification(cfg)


def trainer(out, callback, max_steps: int = 6) -> Trainer:
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8, save_steps=3,
                             save_strategy="steps", learning_rate=5e-3, report_to=[], use_cpu=True, seed=0,
                             logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    return Trainer(model=bert(), args=args, train_dataset=Synthetic(), callbacks=[callback])


def masks_of(model) -> dict[str, torch.Tensor]:
    return {n: m.clone() for n, _p, m in sparsekit.masked_parameters(model)}


def assert_masked(model) -> None:
    for name, p, m in sparsekit.masked_parameters(model):
        assert bool((p.detach()[~m] == 0).all()), name


@pytest.mark.parametrize("rewire", [None, "rigl"])
def test_trainer_callback_prunes_checkpoints_and_resumes_identically(tmp_path, rewire):
    opts = {"update_every": 2} if rewire else None
    cb = SparsekitCallback("er-balanced", density=0.1, seed=3, rewire=rewire, rewire_options=opts)
    full = trainer(tmp_path / "a", cb)
    full.train()
    assert sparsekit.is_pruned(full.model)
    assert_masked(full.model)
    final = {k: v.clone() for k, v in full.model.state_dict().items()}
    final_masks = masks_of(full.model)
    for step in (3, 6):
        t = sparsekit.load_ticket(tmp_path / "a" / f"checkpoint-{step}" / TICKET_FILE)
        assert t.kind == ("rewired" if rewire else "er")
    assert (tmp_path / "a" / TICKET_FILE).is_file()
    er = sparsekit.prune(bert(), "er-balanced", density=0.1, seed=3)
    if rewire:  # the masks did move, with the same count per layer
        assert any(not torch.equal(final_masks[k], er.masks[k]) for k in final_masks)
        assert all(int(final_masks[k].sum()) == int(er.masks[k].sum()) for k in final_masks)
    else:
        assert all(torch.equal(final_masks[k], er.masks[k]) for k in final_masks)

    # resume a second run from the checkpoint at step 3: same masks, bit-identical continuation
    (tmp_path / "b").mkdir()
    import shutil

    shutil.copytree(tmp_path / "a" / "checkpoint-3", tmp_path / "b" / "checkpoint-3")
    again = trainer(tmp_path / "b", SparsekitCallback("er-balanced", density=0.1, seed=3, rewire=rewire,
                                                      rewire_options=opts))
    again.train(resume_from_checkpoint=True)
    assert masks_of(again.model).keys() == final_masks.keys()
    assert all(torch.equal(masks_of(again.model)[k], final_masks[k]) for k in final_masks)
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, final[k]), k


def test_resuming_a_rewired_run_without_its_ticket_fails_loudly(tmp_path):
    cb = SparsekitCallback(density=0.1, rewire="set", rewire_options={"update_every": 2})
    trainer(tmp_path, cb, max_steps=3).train()
    (tmp_path / "checkpoint-3" / TICKET_FILE).unlink()
    again = trainer(tmp_path, SparsekitCallback(density=0.1, rewire="set", rewire_options={"update_every": 2}))
    with pytest.raises(SparsekitError, match="needs the ticket its checkpoint saved"):
        again.train(resume_from_checkpoint=True)


def test_save_pretrained_keeps_zeros_and_the_ticket_reattaches_masks(tmp_path):
    model = bert()
    t = sparsekit.prune(model, "er-balanced", density=0.1, seed=1)
    save_pretrained(model, tmp_path / "m")
    plain = BertForSequenceClassification.from_pretrained(tmp_path / "m")
    assert not sparsekit.is_pruned(plain)
    for name, mask in t.masks.items():
        assert bool((plain.state_dict()[name][~mask] == 0).all())  # the saved weights hold the zeros
    again = from_pretrained(BertForSequenceClassification, tmp_path / "m")
    assert all(torch.equal(m, t.masks[n]) for n, _p, m in sparsekit.masked_parameters(again))
    with pytest.raises(FileNotFoundError, match=TICKET_FILE):
        from_pretrained(BertForSequenceClassification, tmp_path / "nothing")
    with pytest.raises(SparsekitError, match="no sparsekit ticket"):
        save_pretrained(bert(), tmp_path / "dense")


def test_callback_validates_its_arguments():
    with pytest.raises(ValueError, match="density"):
        SparsekitCallback(density=1.5)
    with pytest.raises(ValueError, match="rewire must be"):
        SparsekitCallback(rewire="magic")
    with pytest.raises(ValueError, match="unknown rewire_options"):
        SparsekitCallback(rewire="rigl", rewire_options={"every": 3})
