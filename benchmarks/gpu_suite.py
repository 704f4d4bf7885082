#!/usr/bin/env python
"""One GPU validation command: masks, training step ratios, ONNX parity and sparse speed-ups on CUDA.

    python benchmarks/gpu_suite.py                 # on a CUDA machine: <= 8 min on one H100/H200
    python benchmarks/gpu_suite.py --cpu-smoke     # short CPU run of every code path (automatic without CUDA)

Sections (each one reports ``ok``, ``FAILED: <why>`` or ``skipped: <reason>``, in the table and the JSON):

1. ``masks``: masks drawn on the device are bit-identical to the golden vectors (``formats/vectors``:
   Bernoulli/exact lanes of rng-v1.json, every structure of structures-v1.json) and to CPU masks
   (``prune`` of sparsekit:resnet18 with every structure, the golden er ticket file rebuilt on the device).
2. ``fit_weak``: median step time masked (er-balanced, density 0.01) / dense, bf16 autocast, batch 128,
   sparsekit:vgg16 and sparsekit:resnet18 (synthetic CIFAR-shaped data; CUDA synchronised).
3. ``fit_strong``: edge-popup step time / dense fit_weak step time, resnet18 (bench_strong's setup).
4. ``rewire``: RigL epoch time (one mask update) / fit_weak epoch time, resnet18 (bench_rewire's setup).
5. ``onnx``: an exported ticket run in onnxruntime with ``CUDAExecutionProvider`` against PyTorch.
6. ``sparse_inference``: part A's sparse execution speed-ups (``bench_inference.run`` or
   ``sparsekit.sparse_inference``), when that code is present.
7. ``semi_structured``: a 2:4 mask (structure ``nm:2:4``) as ``torch.sparse.to_sparse_semi_structured``
   against the dense masked Linear (CUDA compute capability >= 8.0): speed-up and output parity.

The CPU smoke mode runs the same functions with tiny models, few steps and fp32, so they cannot rot
(``tests/test_gpu_suite.py``); sections that need CUDA say so by name. Exit status 1 if any section FAILED.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import sparsekit  # noqa: E402
from sparsekit import rng  # noqa: E402
from sparsekit.data import synthetic  # noqa: E402
from sparsekit.models import get_model  # noqa: E402
from sparsekit.sampling import draw_mask  # noqa: E402
from sparsekit.structures import draw_structured, parse_structure  # noqa: E402
from sparsekit.train import Callback  # noqa: E402

DEFAULT_OUT = HERE / "results" / "gpu_suite.json"
STRUCTURES = ("element", "block:4x4", "block:16x16", "fanin", "nm:2:4")
warnings.filterwarnings("ignore", message="fit_weak: the model carries no sparsekit masks")


class Skip(Exception):
    """A section that cannot run here; the message is the reason."""


class Timer(Callback):
    """Wall time of every optimizer step, CUDA-synchronised on GPUs."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.times: list[float] = []
        self._last = 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_start(self, state) -> None:
        self._last = self._now()

    def on_step_end(self, state) -> None:
        now = self._now()
        self.times.append(now - self._last)
        self._last = now


def _unpack(hexstr: str, n: int) -> torch.Tensor:
    data = bytes.fromhex(hexstr)
    return torch.tensor([bool(data[i // 8] >> (i % 8) & 1) for i in range(n)])


# --------------------------------------------------------------------------------------------------
# 1. masks


def section_masks(cfg: dict) -> dict:
    dev = cfg["device"]
    checked, mismatches = 0, []
    gold = json.loads((ROOT / "formats/vectors/rng-v1.json").read_text())
    for case in gold["cases"]:
        k = rng.stream_key(int(case["seed"]), case["fqn"], case["purpose"])
        for p, bits in case["bernoulli"].items():
            got = rng.bernoulli_flat(k, 257, float(p), device=dev, chunk_words=3).cpu()
            checked += 1
            if not torch.equal(got, _unpack(bits, 257)):
                mismatches.append(f"rng-v1 bernoulli {case['fqn']} p={p}")
        if case["purpose"] == "mask":
            for p, bits in case["exact"].items():
                got = draw_mask(case["fqn"], (257,), float(p), int(case["seed"]), exact=True, device=dev).cpu()
                checked += 1
                if not torch.equal(got, _unpack(bits, 257)):
                    mismatches.append(f"rng-v1 exact {case['fqn']} p={p}")
    sgold = json.loads((ROOT / "formats/vectors/structures-v1.json").read_text())
    for case in sgold["cases"]:
        shape = tuple(case["shape"])
        layer = sparsekit.Layer(case["fqn"], "", "", shape, sparsekit.LayerLayout(*case["layout"]), torch.empty(0))
        mask, _ = draw_structured(layer, case["density"], int(case["seed"]), parse_structure(case["structure"]),
                                  case["flow"], device=dev)
        checked += 1
        if not torch.equal(mask.cpu().reshape(-1), _unpack(case["mask"], math.prod(shape))):
            mismatches.append(f"structures-v1 {case['structure']} {case['fqn']}")
    model_name = cfg["mask_model"]
    with torch.device("meta"):
        meta_model = get_model(model_name, num_classes=10, **cfg["model_kwargs"].get(model_name, {}))
    per_structure = {}
    for s in STRUCTURES:
        density = 0.6 if s.startswith("nm") else 0.01
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cpu = sparsekit.prune(meta_model, "er-balanced", density, seed=7, structure=s, device="cpu")
            t0 = time.perf_counter()
            other = sparsekit.prune(meta_model, "er-balanced", density, seed=7, structure=s, device=dev)
            seconds = time.perf_counter() - t0
        same = all(torch.equal(cpu.compact_masks[f].kept_indices(), other.compact_masks[f].kept_indices().cpu())
                   for f in cpu.compact_masks)
        checked += 1
        per_structure[s] = {"identical": same, "prune_s_on_device": seconds, "layers": len(cpu.compact_masks)}
        if not same:
            mismatches.append(f"{model_name} {s}: device masks differ from CPU masks")
    golden_ticket = ROOT / "formats/vectors/ticket-er-v1.safetensors"
    a = sparsekit.load_ticket(golden_ticket)
    b = sparsekit.load_ticket(golden_ticket, device=dev)
    checked += 1
    if a.masks.keys() != b.masks.keys() or not all(torch.equal(a.masks[k], b.masks[k].cpu()) for k in a.masks):
        mismatches.append("golden ticket ticket-er-v1 rebuilt on the device differs")
    if mismatches:
        raise AssertionError("; ".join(mismatches[:5]))
    return {"device": dev, "checks": checked, "model": model_name, "prune": per_structure,
            "summary": f"{checked} checks bit-identical on {dev} ({model_name}: {', '.join(STRUCTURES)})"}


# --------------------------------------------------------------------------------------------------
# 2-4. training step ratios


def _model(name: str, device: str, density: float | None, cfg: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    m = get_model(name, num_classes=10, **cfg["model_kwargs"].get(name, {}))
    if density is not None:
        sparsekit.prune(m, "er-balanced", density, seed=0)
    return m.to(device)


def _weak_steps(model, data, cfg, batch: int) -> list[float]:
    timer = Timer(cfg["device"])
    sparsekit.fit_weak(model, data, epochs=1, batch_size=batch, device=cfg["device"], amp=cfg["amp"],
                       progress=False, callbacks=[timer], num_workers=0)
    return timer.times[cfg["warmup"]:]


def _ratio_rounds(run_a: Callable[[], list[float]], run_b: Callable[[], list[float]], rounds: int) -> dict:
    a, b, ratios = [], [], []
    for r in range(rounds):
        order = (("a", run_a), ("b", run_b)) if r % 2 == 0 else (("b", run_b), ("a", run_a))
        got = {k: fn() for k, fn in order}
        a += got["a"]
        b += got["b"]
        ratios.append(statistics.median(got["a"]) / statistics.median(got["b"]))
    return {"median_a_s": statistics.median(a), "median_b_s": statistics.median(b),
            "ratio": statistics.median(a) / statistics.median(b), "round_ratios": ratios}


def section_fit_weak(cfg: dict) -> dict:
    out = {}
    batch = cfg["batch"]
    data = synthetic((cfg["steps"] + cfg["warmup"]) * batch, shape=cfg["image_shape"], num_classes=10, seed=0)
    for name in cfg["train_models"]:
        masked, dense = _model(name, cfg["device"], 0.01, cfg), _model(name, cfg["device"], None, cfg)
        r = _ratio_rounds(lambda m=masked: _weak_steps(m, data, cfg, batch),
                          lambda m=dense: _weak_steps(m, data, cfg, batch), cfg["rounds"])
        out[name] = {"masked_step_s": r["median_a_s"], "dense_step_s": r["median_b_s"], "ratio": r["ratio"],
                     "round_ratios": r["round_ratios"], "images_per_s_masked": batch / r["median_a_s"]}
    return {"batch": batch, "amp": str(cfg["amp"]), "density": 0.01, "models": out,
            "summary": ", ".join(f"{n} masked/dense {v['ratio']:.3f}" for n, v in out.items())}


def section_fit_strong(cfg: dict) -> dict:
    batch, name = cfg["batch"], cfg["train_models"][-1]
    data = synthetic((cfg["steps"] + cfg["warmup"]) * batch, shape=cfg["image_shape"], num_classes=10, seed=0)

    def strong() -> list[float]:
        timer = Timer(cfg["device"])
        sparsekit.fit_strong(_model(name, "cpu", None, cfg), data, density=0.1, er_density=0.5, levels=1,
                             epochs_per_level=1, batch_size=batch, device=cfg["device"], amp=cfg["amp"],
                             progress=False, callbacks=[timer], num_workers=0)
        return timer.times[cfg["warmup"]:]

    dense = _model(name, cfg["device"], None, cfg)
    r = _ratio_rounds(strong, lambda: _weak_steps(dense, data, cfg, batch), cfg["rounds"])
    return {"model": name, "batch": batch, "strong_step_s": r["median_a_s"], "dense_step_s": r["median_b_s"],
            "ratio": r["ratio"], "round_ratios": r["round_ratios"],
            "summary": f"{name} edge-popup/dense step {r['ratio']:.3f}"}


def section_rewire(cfg: dict) -> dict:
    batch, name = cfg["batch"], cfg["train_models"][-1]
    steps = cfg["steps"] + cfg["warmup"]
    data = synthetic(steps * batch, shape=cfg["image_shape"], num_classes=10, seed=0)

    def epoch(variant: str) -> list[float]:
        model = _model(name, cfg["device"], 0.01, cfg)
        kw = dict(epochs=1, batch_size=batch, device=cfg["device"], amp=cfg["amp"], progress=False, num_workers=0)
        if cfg["device"].startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if variant == "rewire":  # stop_at=1: the update at the last step of the epoch happens
            sparsekit.rewire(model, data, method="rigl", update_every=steps, stop_at=1.0, **kw)
        else:
            sparsekit.fit_weak(model, data, **kw)
        if cfg["device"].startswith("cuda"):
            torch.cuda.synchronize()
        return [time.perf_counter() - t0]

    r = _ratio_rounds(lambda: epoch("rewire"), lambda: epoch("weak"), cfg["rounds"])
    return {"model": name, "batch": batch, "steps_per_epoch": steps, "rewire_epoch_s": r["median_a_s"],
            "weak_epoch_s": r["median_b_s"], "ratio": r["ratio"], "round_ratios": r["round_ratios"],
            "summary": f"{name} rigl/fit_weak epoch ({steps} steps, 1 update) {r['ratio']:.3f}"}


# --------------------------------------------------------------------------------------------------
# 5. onnxruntime parity


def section_onnx(cfg: dict) -> dict:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Skip(f"onnxruntime is not installed ({e})") from None
    available = ort.get_available_providers()
    provider = "cuda" if "CUDAExecutionProvider" in available else None
    if provider is None:
        if not cfg["smoke"]:
            raise Skip(f"CUDAExecutionProvider not available (onnxruntime-gpu not installed; providers: "
                       f"{', '.join(available)})")
        provider = "cpu"  # smoke: the same export and parity path on the CPU provider
    name = cfg["onnx_model"]
    model = _model(name, "cpu", None, cfg)
    ticket = sparsekit.prune(model, "er-balanced", 0.05, seed=0, structure="block:4x4")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ticket.safetensors"
        sparsekit.save_ticket(ticket, path)
        fresh = _model(name, "cpu", None, cfg)
        report = sparsekit.export_onnx(fresh, Path(d) / "m.onnx", input_shape=(2, *cfg["image_shape"]), ticket=path,
                                       provider=provider, exporter=cfg["onnx_exporter"])
    parity = [{"inputs": p.inputs, "max_abs_diff": p.max_abs_diff, "passed": p.passed} for p in report.parity]
    if not parity or not all(p["passed"] for p in parity):
        raise AssertionError(f"onnxruntime ({report.provider}) differs from PyTorch: {parity}")
    worst = max(p["max_abs_diff"] for p in parity)
    note = "" if provider == "cuda" else " (smoke; CUDA provider: skipped, not available)"
    return {"model": name, "provider": report.provider, "storage": report.storage, "parity": parity,
            "summary": f"{name} block:4x4 ticket on {report.provider}: max |ORT - torch| {worst:.2e}{note}"}


# --------------------------------------------------------------------------------------------------
# 6. sparse inference (part A, optional)


def section_sparse_inference(cfg: dict) -> dict:
    try:
        from bench_inference import run as inference_run  # type: ignore[import-not-found]
    except ImportError:
        inference_run = None
    if inference_run is None:
        if not hasattr(sparsekit, "sparse_inference"):
            raise Skip("not available: neither benchmarks/bench_inference.py run() nor sparsekit.sparse_inference "
                       "exists in this checkout")
        raise Skip("not available: sparsekit.sparse_inference exists but benchmarks/bench_inference.py run() "
                   "does not; nothing to time")
    try:
        result = inference_run(device=cfg["device"], quick=cfg["smoke"])
    except TypeError as e:
        raise Skip(f"not available: bench_inference.run has another signature ({e})") from None
    return {"result": result, "summary": str(result.get("summary", "done")) if isinstance(result, dict) else "done"}


# --------------------------------------------------------------------------------------------------
# 7. 2:4 semi-structured sparsity


def _nm_mask(out_f: int, in_f: int, device: str) -> torch.Tensor:
    layer = sparsekit.Layer("semi.weight", "semi", "Linear", (out_f, in_f), sparsekit.LayerLayout(), torch.empty(0))
    mask, _ = draw_structured(layer, 0.5, 0, parse_structure("nm:2:4"), None, device=device)
    return mask


def section_semi_structured(cfg: dict) -> dict:
    out_f, in_f, tokens = cfg["semi_shape"]
    mask = _nm_mask(out_f, in_f, "cpu")
    groups = mask.view(out_f, in_f // 4, 4).sum(-1)
    if not bool((groups == 2).all()):
        raise AssertionError("the nm:2:4 mask is not a 2:4 pattern")
    dev = cfg["device"]
    if not dev.startswith("cuda"):
        raise Skip("needs CUDA with compute capability >= 8.0 (have: no CUDA); the 2:4 pattern check passed")
    cc = torch.cuda.get_device_capability()
    if cc < (8, 0):
        raise Skip(f"needs compute capability >= 8.0 (this GPU: {cc[0]}.{cc[1]})")
    try:
        from torch.sparse import to_sparse_semi_structured
    except ImportError as e:
        raise Skip(f"torch.sparse.to_sparse_semi_structured is not available ({e})") from None
    torch.manual_seed(0)
    dtype = torch.bfloat16
    w = (torch.randn(out_f, in_f, device=dev) * mask.to(dev)).to(dtype)
    x = torch.randn(tokens, in_f, device=dev, dtype=dtype)
    sw = to_sparse_semi_structured(w)

    def timed(fn: Callable[[], torch.Tensor]) -> float:
        for _ in range(5):
            fn()
        times = []
        for _ in range(cfg["semi_repeats"]):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / 10)
        return statistics.median(times)

    dense_out = torch.nn.functional.linear(x, w)
    sparse_out = torch.nn.functional.linear(x, sw)
    err = float((dense_out.float() - sparse_out.float()).abs().max() / dense_out.float().abs().max())
    if err > 2e-2:
        raise AssertionError(f"semi-structured output differs from dense: max rel diff {err:.3g}")
    t_dense = timed(lambda: torch.nn.functional.linear(x, w))
    t_sparse = timed(lambda: torch.nn.functional.linear(x, sw))
    return {"shape": [out_f, in_f], "tokens": tokens, "dtype": str(dtype), "dense_s": t_dense, "sparse_s": t_sparse,
            "speedup": t_dense / t_sparse, "max_rel_diff": err,
            "summary": f"Linear {out_f}x{in_f}, {tokens} tokens bf16: 2:4 speed-up {t_dense / t_sparse:.2f}x"}


SECTIONS: dict[str, Callable[[dict], dict]] = {
    "masks": section_masks, "fit_weak": section_fit_weak, "fit_strong": section_fit_strong,
    "rewire": section_rewire, "onnx": section_onnx, "sparse_inference": section_sparse_inference,
    "semi_structured": section_semi_structured,
}


def config(smoke: bool, device: str) -> dict:
    if smoke:
        # the same functions on a tiny MLP over 3x8x8 inputs, fp32, a few steps
        return {"smoke": True, "device": device, "amp": None, "batch": 8, "steps": 2, "warmup": 1, "rounds": 1,
                "image_shape": (3, 8, 8), "model_kwargs": {"mlp": {"in_features": 192, "hidden": (32, 32)}},
                "train_models": ["mlp"], "mask_model": "mlp", "onnx_model": "mlp", "onnx_exporter": "torchscript",
                "semi_shape": (64, 128, 32), "semi_repeats": 2}
    return {"smoke": False, "device": device, "amp": "bf16", "batch": 128, "steps": 30, "warmup": 5, "rounds": 3,
            "image_shape": (3, 32, 32), "model_kwargs": {},
            "train_models": ["vgg16", "resnet18"], "mask_model": "resnet18", "onnx_model": "resnet18",
            "onnx_exporter": "auto", "semi_shape": (4096, 4096, 4096), "semi_repeats": 10}


def run_suite(cfg: dict, sections: list[str], log: Callable[[str], None] = print) -> dict:
    results: dict[str, Any] = {}
    for name in sections:
        t0 = time.perf_counter()
        try:
            res = SECTIONS[name](cfg)
            res["status"] = "ok"
        except Skip as e:
            res = {"status": f"skipped: {e}"}
        except Exception as e:  # a failing section must not hide the others
            res = {"status": f"FAILED: {type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
        res["seconds"] = time.perf_counter() - t0
        results[name] = res
        log(f"  {name}: {res['status']} ({res['seconds']:.1f} s)")
    return results


def render(results: dict) -> str:
    rows = [("section", "status", "result", "s")]
    for name, r in results.items():
        status = r["status"] if r["status"] == "ok" else r["status"].split(":")[0]
        detail = r.get("summary", "") if r["status"] == "ok" else r["status"].partition(": ")[2]
        rows.append((name, status, detail, f"{r['seconds']:.1f}"))
    w = [max(len(x[i]) for x in rows) for i in range(3)]
    lines = [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}}  {d:>6}" for a, b, c, d in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="short CPU run of every code path (default without "
                    "CUDA)")
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    smoke = args.cpu_smoke or not cuda
    device = "cpu" if smoke else "cuda"
    if smoke and not args.cpu_smoke:
        print("no CUDA device: running the CPU smoke mode (sections that need CUDA are skipped by name)")
    cfg = config(smoke, device)
    started = time.perf_counter()
    results = run_suite(cfg, args.sections)
    report = {
        "suite": "gpu_suite", "mode": "cpu-smoke" if smoke else "cuda", "config": cfg,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "sparsekit": sparsekit.__version__,
                    "platform": platform.platform(),
                    "gpu": torch.cuda.get_device_name() if cuda else None,
                    "compute_capability": list(torch.cuda.get_device_capability()) if cuda else None},
        "sections": results, "seconds": time.perf_counter() - started,
    }
    print(render(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")
    return 1 if any(r["status"].startswith("FAILED") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
