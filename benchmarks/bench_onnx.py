#!/usr/bin/env python
"""Benchmark of ONNX export (``sparsekit.export_onnx``): file size per storage, session creation, latency.

torchvision ``resnet18`` and ``vit_b_16`` (random weights, 1000 classes, 3x224x224 inputs; nothing is
downloaded; ViT's head, which torchvision initialises to zero, gets normal(0, 0.02) weights), pruned
with er-balanced at densities 0.5, 0.1, 0.01 and 0.001:

1. **Size.** ``export_onnx(storage="dense")`` (checked against PyTorch in onnxruntime), then
   ``encode_storage`` turns the dense file into the ``sparse-initializer`` and ``compact`` files.
   Reported: bytes of each divided by the dense bytes, bytes per kept weight of the masked layers (payload:
   values plus positions or indices), and ``auto`` = the smallest (goal at density 0.01: <= 2% of dense).
   Every storage's onnxruntime output is compared with the dense file's (they should be identical: the
   decoded weights are the same bits).
2. **Session creation.** Median of ``--sessions`` onnxruntime sessions per file (read, decode sparse or
   compact weights, optimise).
3. **Latency.** Median onnxruntime run time at batch 1 and batch 32 of the unpruned dense model and of
   the ``auto`` file at every density (CPU; with onnxruntime-gpu and a CUDA device also on the GPU).
   onnxruntime densifies sparse weights at load, so no speed-up is expected; this measures it.

Other processes disturb timings on a small machine: before each timed block the script waits
(``--quiet-wait``) until other processes use < 5% of the CPUs and records the CPU time they used during
it (``noisy`` in the JSON). Prints a table and writes JSON (``benchmarks/results/bench_onnx.json``).

Usage::

    python benchmarks/bench_onnx.py                  # resnet18 + vit_b_16 (~10-12 min on 2 CPU cores)
    python benchmarks/bench_onnx.py --quick          # resnet18 only, fewer runs (~75 s)
    python benchmarks/bench_onnx.py --skip-latency   # sizes and session creation only
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_prune import (  # noqa: E402 - helpers shared with bench_prune
    Foreign,
    _ok,
    _table,
    is_noisy,
    machine_info,
    make_console,
    sparsekit_fingerprint,
    wait_for_quiet,
)

import sparsekit  # noqa: E402
from sparsekit.formats.onnx import encode_storage, export_onnx, ort_session  # noqa: E402

DEFAULT_OUT = HERE / "results" / "bench_onnx.json"
METHOD = "er-balanced"
DENSITIES = (0.5, 0.1, 0.01, 0.001)
MODELS = ("resnet18", "vit_b_16")
SHAPE = (3, 224, 224)
GOAL_AUTO_SHARE = 0.02  # auto at density 0.01: at most 2% of the dense file
STORAGES = ("dense", "sparse-initializer", "compact")


def build(name: str) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(torchvision.models, name)().eval()
    if name.startswith("vit"):  # torchvision zero-initialises ViT's head: all outputs would be 0
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def timed_runs(session, x: np.ndarray, runs: int, warmup: int, quiet_wait: float) -> dict:
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: x})
    waited = wait_for_quiet(quiet_wait) if quiet_wait > 0 else 0.0
    times = []
    f = Foreign()
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1e3)
    foreign, wall = f.stop()
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs_ms": times,
            "foreign_cpu_s": foreign, "noisy": is_noisy(foreign, wall), "waited_for_quiet_s": waited}


def session_times(path: Path, n: int, quiet_wait: float, provider: str) -> dict:
    waited = wait_for_quiet(quiet_wait) if quiet_wait > 0 else 0.0
    times = []
    f = Foreign()
    for _ in range(n):
        t = time.perf_counter()
        s = ort_session(path, provider)
        times.append(time.perf_counter() - t)
        del s
    foreign, wall = f.stop()
    return {"median_s": statistics.median(times), "runs_s": times, "noisy": is_noisy(foreign, wall),
            "waited_for_quiet_s": waited}


def latencies(path: Path, args, providers: list[str]) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for provider in providers:
        session = ort_session(path, provider)
        for batch, runs, warm in ((1, args.runs_b1, 2), (32, args.runs_b32, 1)):
            x = rng.standard_normal((batch, *SHAPE)).astype(np.float32)
            out[f"{provider}/b{batch}"] = timed_runs(session, x, runs, warm, args.quiet_wait)
        del session
    return out


def bench_model(name: str, args, folder: Path, providers: list[str], console) -> dict:
    base = build(name)
    result: dict = {"model": name, "params": sum(p.numel() for p in base.parameters()), "densities": []}
    x1 = np.random.default_rng(1).standard_normal((1, *SHAPE)).astype(np.float32)

    print(f"{name}: unpruned dense export", flush=True)
    dense_path = folder / f"{name}-unpruned.onnx"
    export_onnx(base, dense_path, input_shape=(1, *SHAPE), storage="dense", verify=False, overwrite=True)
    result["unpruned"] = {"file_bytes": dense_path.stat().st_size,
                          "session": session_times(dense_path, args.sessions, args.quiet_wait, "cpu"),
                          "latency": latencies(dense_path, args, providers) if not args.skip_latency else {}}
    for density in args.densities:
        print(f"{name}: density {density}", flush=True)
        model = copy.deepcopy(base)
        sparsekit.prune(model, method=METHOD, density=density, seed=0)
        paths = {mode: folder / f"{name}-{density}-{mode}.onnx" for mode in STORAGES}
        t = time.perf_counter()
        report = export_onnx(model, paths["dense"], input_shape=(1, *SHAPE), storage="dense", overwrite=True)
        export_s = time.perf_counter() - t
        import onnx

        proto = onnx.load(str(paths["dense"]))
        infos = {}
        for mode in STORAGES[1:]:
            t = time.perf_counter()
            encoded, infos[mode] = encode_storage(proto, mode)
            encode_s = time.perf_counter() - t
            paths[mode].write_bytes(encoded.SerializeToString())
            infos[mode] = (infos[mode], encode_s)
        del proto, model
        sizes = {mode: p.stat().st_size for mode, p in paths.items()}
        names = [r.initializer for r in report.layers if r.initializer]
        per_kept = {"dense": report.bytes_per_kept_weight.get("dense")}
        for mode, (info, _) in infos.items():
            per_kept[mode] = sum(info[n].payload_bytes for n in names) / report.kept if report.kept else None
        auto = min(sizes, key=sizes.__getitem__)
        reference = None
        same = {}
        for mode in STORAGES:
            s = ort_session(paths[mode])
            (y,) = s.run(None, {s.get_inputs()[0].name: x1})
            reference = y if reference is None else reference
            same[mode] = float(np.abs(y - reference).max())
            del s
        entry = {
            "density": density, "masked_params": report.params, "kept": report.kept,
            "realised_density": report.density, "exporter": report.exporter, "export_s": export_s,
            "encode_s": {mode: e for mode, (_, e) in infos.items()},
            "parity_vs_pytorch": {"max_abs_diff": report.max_abs_diff, "max_rel_diff": report.max_rel_diff},
            "bytes": sizes, "share_of_dense": {m: n / sizes["dense"] for m, n in sizes.items()},
            "bytes_per_kept_weight": per_kept, "auto": auto,
            "max_abs_diff_vs_dense_file": same,
            "session": {mode: session_times(p, args.sessions, args.quiet_wait, "cpu") for mode, p in paths.items()},
            "latency_auto": latencies(paths[auto], args, providers) if not args.skip_latency else {},
        }
        result["densities"].append(entry)
        for p in paths.values():
            p.unlink()
    dense_path.unlink()
    return result


def render(report: dict, console) -> None:
    info = report["machine"]
    console.print(f"\nsparsekit {info['sparsekit']}  torch {info['torch']}  onnxruntime {report['onnxruntime']}  "
                  f"cpus {info['cpu_count']}  ({info.get('cpu_model', '?')})")
    head = ["model", "density", "kept", "dense MB", "sparse-init", "compact", "auto", "B/kept sparse-init",
            "B/kept compact", "session ms dense / sparse / compact", "b1 ms dense -> auto", "b32 ms dense -> auto",
            "same output"]
    rows = []
    providers = report["config"]["providers"]
    for m in report["models"]:
        un = m["unpruned"]["latency"]
        for e in m["densities"]:
            share = e["share_of_dense"]
            goal = _ok(share[e["auto"]] <= GOAL_AUTO_SHARE) if e["density"] == 0.01 else ""
            sess = " / ".join(f"{1e3 * e['session'][s]['median_s']:.0f}" for s in STORAGES)
            lat = {1: "-", 32: "-"}
            for b in (1, 32) if un else ():
                key = f"cpu/b{b}"
                noisy = "*" if un[key]["noisy"] or e["latency_auto"][key]["noisy"] else ""
                lat[b] = f"{un[key]['median_ms']:.1f} -> {e['latency_auto'][key]['median_ms']:.1f}{noisy}"
            pk = e["bytes_per_kept_weight"]
            rows.append([m["model"], f"{e['density']:g}", f"{e['kept']:,}", f"{e['bytes']['dense'] / 1e6:.1f}",
                         f"{100 * share['sparse-initializer']:.2f}%", f"{100 * share['compact']:.2f}%",
                         f"{e['auto']} {100 * share[e['auto']]:.2f}%{goal}",
                         f"{pk['sparse-initializer']:.2f}", f"{pk['compact']:.2f}", sess, lat[1], lat[32],
                         str(max(e["max_abs_diff_vs_dense_file"].values()) == 0.0)])
    _table(console, f"ONNX storage of {METHOD} tickets: file bytes / dense bytes, bytes per kept weight, onnxruntime "
                    f"session creation and median latency (CPU; goal: auto at density "
                    f"0.01 <= {100 * GOAL_AUTO_SHARE:g}% of dense; * = other processes used > 5% CPU while timing)",
           head, rows)
    if "cuda" in providers and not report["config"]["skip_latency"]:
        head = ["model", "density", "b1 ms dense -> auto", "b32 ms dense -> auto"]
        rows = [[m["model"], f"{e['density']:g}"] + [
            f"{m['unpruned']['latency'][f'cuda/b{b}']['median_ms']:.2f} -> "
            f"{e['latency_auto'][f'cuda/b{b}']['median_ms']:.2f}" for b in (1, 32)]
            for m in report["models"] for e in m["densities"]]
        _table(console, "onnxruntime CUDAExecutionProvider latency (median)", head, rows)
    console.print("bytes per kept weight: values plus positions (compact) or int64 indices (sparse-initializer) "
                  "of the masked layers; 'same output': every storage gives bit-identical onnxruntime output to "
                  "the dense file")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="resnet18 only, fewer runs")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=None)
    ap.add_argument("--densities", nargs="+", type=float, default=list(DENSITIES))
    ap.add_argument("--runs-b1", type=int, default=None, help="timed runs at batch 1 (default 20, quick 10)")
    ap.add_argument("--runs-b32", type=int, default=None, help="timed runs at batch 32 (default 5, quick 3)")
    ap.add_argument("--sessions", type=int, default=None, help="sessions created per file (default 3, quick 2)")
    ap.add_argument("--skip-latency", action="store_true", help="no latency measurements (sizes and sessions only)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    ap.add_argument("--plain", action="store_true", help="plain-text tables instead of rich")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="before each timed block wait up to this many seconds for other processes to go below "
                         "5%% CPU (default 30; 0 disables)")
    args = ap.parse_args(argv)
    q = args.quick
    args.models = args.models or (["resnet18"] if q else list(MODELS))
    args.runs_b1 = args.runs_b1 or (10 if q else 20)
    args.runs_b32 = args.runs_b32 or (3 if q else 5)
    args.sessions = args.sessions or (2 if q else 3)
    import onnxruntime

    providers = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else [])
    console = make_console(args.plain)
    t0 = time.perf_counter()
    report: dict = {
        "benchmark": "bench_onnx", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "onnxruntime": onnxruntime.__version__,
        "config": {"quick": q, "models": args.models, "densities": args.densities, "method": METHOD,
                   "input_shape": [1, *SHAPE], "runs_b1": args.runs_b1, "runs_b32": args.runs_b32,
                   "sessions": args.sessions, "skip_latency": args.skip_latency, "quiet_wait_s": args.quiet_wait,
                   "providers": providers},
        "goals": {"auto_share_of_dense_at_0.01_max": GOAL_AUTO_SHARE},
        "models": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            report["models"].append(bench_model(name, args, Path(tmp), providers, console))
    report["total_wall_s"] = time.perf_counter() - t0
    report["sparsekit_changed_during_run"] = sparsekit_fingerprint() != report["machine"]["sparsekit_src_sha1"]
    render(report, console)
    if report["sparsekit_changed_during_run"]:
        console.print("WARNING: sparsekit's sources changed during the run; the numbers may mix versions")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"total {report['total_wall_s']:.0f} s; JSON written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
