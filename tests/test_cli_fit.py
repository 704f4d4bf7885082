"""``sparsekit fit weak``: trains, writes a weak ticket that reproduces the model, resumes, refuses mistakes."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import error_line, run

import sparsekit
from sparsekit.data import digits
from sparsekit.models import mlp

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")


def test_fit_weak_digits_writes_a_weak_ticket(tmp_path):
    out, hist = tmp_path / "weak.safetensors", tmp_path / "h.json"
    r = run("fit", "weak", "--data", "digits", "--density", "0.05", "--epochs", "3", "-o", out, "--history", hist,
            "--seed", "2")
    assert r.exit_code == 0, r.output
    assert "trained 3 epochs: last test accuracy" in r.output and "weak ticket written to" in r.output
    assert r.output.count("epoch ") >= 3
    history = json.loads(hist.read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]

    # the ticket alone rebuilds the trained model: same masks (from seed 2), same weights, same accuracy
    ticket = sparsekit.load_ticket(out)
    assert ticket.method == "er-balanced" and ticket.seed == 2 and ticket.weights
    model = mlp()
    sparsekit.apply_ticket(model, ticket)
    model.eval()
    x, y = digits(train=False).tensors
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(history[-1]["eval_acc"], abs=1e-6)


def test_fit_weak_resume_and_ticket_input(tmp_path):
    ck = tmp_path / "ck"
    args = ["fit", "weak", "--data", "synthetic:n=64,shape=16,num_classes=4", "--density", "0.2", "--epochs", "2",
            "--batch-size", "16", "--checkpoint-dir", ck, "--no-progress"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert (ck / "checkpoint.pt").exists()
    r = run(*args)  # same folder again without --resume: refused, nothing overwritten
    assert "--resume" in error_line(r, 1) or "resume=True" in error_line(r, 1)
    r = run(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert "trained 2 epochs" in r.output

    t = tmp_path / "t.safetensors"
    assert run("fit", "weak", "--data", "synthetic:n=64,shape=16,num_classes=4", "--density", "0.2", "--epochs", "1",
               "-o", t, "--no-progress").exit_code == 0
    r = run("fit", "weak", "--data", "synthetic:n=64,shape=16,num_classes=4", "--ticket", t, "--epochs", "1",
            "--no-progress")
    assert r.exit_code == 0, r.output


def test_fit_weak_conv_model_from_data_shape(tmp_path):
    r = run("fit", "weak", "--model", "sparsekit:resnet20", "--data", "synthetic:n=32,n_test=16", "--density", "0.1",
            "--epochs", "1", "--batch-size", "16", "--no-progress")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(("args", "needle"), [
    (["--data", "digits", "--epochs", "1"], "give --density"),
    (["--data", "digits", "--density", "0.1", "--ticket", "x.safetensors"], "--ticket brings its own masks"),
    (["--data", "digits", "--density", "0.1", "--resume"], "--resume needs --checkpoint-dir"),
    (["--data", "digits", "--density", "0.1", "-o", "w.pt"], "must end in .safetensors"),
    (["--data", "nowhere:/x", "--density", "0.1"], "nowhere"),
    (["--data", "synthetic", "--density", "0.1"], "--model is required"),
    (["--data", "digits", "--density", "2"], "--density"),
    (["--data", "cifar10:/does/not/exist", "--model", "sparsekit:resnet20", "--density", "0.1"], "CIFAR-10"),
])
def test_fit_weak_errors(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert needle in error_line(run("fit", "weak", *args), 1)


def test_fit_weak_refuses_existing_output(tmp_path):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"keep me")
    r = run("fit", "weak", "--data", "digits", "--density", "0.1", "--epochs", "1", "-o", out)
    assert "exists" in error_line(r, 1)
    assert out.read_bytes() == b"keep me"


def test_fit_strong_digits_ticket_rebuilds_the_network(tmp_path):
    out = tmp_path / "strong.safetensors"
    r = run("fit", "strong", "--data", "digits", "--model", "sparsekit:mlp:hidden=(128,128)", "--er-density", "0.5",
            "--density", "0.2", "--levels", "2", "--epochs-per-level", "2", "--batch-size", "64", "-o", out,
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert "strong ticket density 0.2" in r.output and "trained 4 epochs" in r.output
    ticket = sparsekit.load_ticket(out)
    assert ticket.kind == "strong" and ticket.init["scheme"] == "signed-kaiming-constant"
    assert ticket.init["scale_fan"] is True and ticket.method_options["bias"] == "zero"  # the defaults
    assert not any(k.startswith("kept/") for k in ticket.weights)  # no weight values of masked layers
    model = mlp(hidden=(128, 128))
    sparsekit.apply_ticket(model, out)
    model.eval()
    x, y = digits(train=False).tensors
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    acc_line = r.output.split("test accuracy ")[1].split(";")[0].split(",")[0]
    assert acc == pytest.approx(float(acc_line), abs=1e-4)
    info = run("info", out)
    assert info.exit_code == 0 and "strong" in info.output


@pytest.mark.parametrize(("args", "needle"), [
    (["--data", "digits", "--density", "0.6", "--er-density", "0.5"], "must not exceed --er-density"),
    (["--data", "digits", "--density", "0.1", "--train-seed", "3"], "one --seed"),
    (["--data", "digits"], "Missing option"),
])
def test_fit_strong_errors(args, needle):
    r = run("fit", "strong", *args)
    assert r.exit_code != 0 and needle in r.output


def test_fit_rewire_writes_a_rewired_ticket(tmp_path):
    out = tmp_path / "rw.safetensors"
    r = run("fit", "rewire", "--data", "digits", "--density", "0.05", "--final-density", "0.03", "--epochs", "3",
            "--update-every", "5", "-o", out, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "rewired ticket density 0.03" in r.output
    t = sparsekit.load_ticket(out)
    assert t.kind == "rewired" and t.method_options["rewire"]["final_density"] == 0.03
    r = run("fit", "rewire", "--data", "digits", "--epochs", "1")
    assert "either --density" in error_line(r, 1)


def _digits_accuracy(state_dict_path) -> float:
    from safetensors.torch import load_file

    model = mlp()
    model.load_state_dict(load_file(str(state_dict_path)))
    model.eval()
    x, y = digits(train=False).tensors
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_fit_rewire_out_then_apply_reproduces_the_trained_accuracy(tmp_path):
    out, hist, applied = tmp_path / "rw.safetensors", tmp_path / "h.json", tmp_path / "applied.safetensors"
    r = run("fit", "rewire", "--data", "digits", "--density", "0.1", "--epochs", "2", "--update-every", "5",
            "--batch-size", "64", "-o", out, "--history", hist, "--no-progress")
    assert r.exit_code == 0, r.output
    trained = json.loads(hist.read_text())[-1]["eval_acc"]
    assert trained > 0.5
    assert run("apply", out, "sparsekit:mlp", "-o", applied).exit_code == 0
    assert _digits_accuracy(applied) == pytest.approx(trained, abs=1e-6)
    assert run("verify", out, applied).exit_code == 0
    # --weights none: the masks only (apply then gives the untrained weights, and says nothing was trained)
    masks_only = tmp_path / "m.safetensors"
    r = run("fit", "rewire", "--data", "digits", "--density", "0.1", "--epochs", "1", "--update-every", "5",
            "--batch-size", "64", "-o", masks_only, "--weights", "none", "--no-progress")
    assert r.exit_code == 0, r.output
    assert not sparsekit.load_ticket(masks_only).weights


@pytest.mark.parametrize(("args", "needle"), [
    (["--model", "sparsekit:vgg16", "--data", "digits"], "does not fit --data digits"),
    (["--data", "digits:flat=false", "--model", "sparsekit:resnet20:in_channels=3"], "does not fit"),
    (["--data", "digits:flat=false"], "--model is required"),
    (["--data", "digits", "--model", "sparsekit:mlp:num_classes=3"], "num_classes=10"),
])
def test_model_data_mismatch_is_one_line_before_training(args, needle):
    r = run("fit", "weak", *args, "--density", "0.1", "--epochs", "1", "--no-progress")
    line = error_line(r, 1)
    assert needle in line and "epoch" not in r.stdout
