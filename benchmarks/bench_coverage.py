#!/usr/bin/env python
"""Prune time and extra memory on full-size transformers models (issue 14), CPU.

Cases, each in a fresh subprocess (peak RSS is per process):

* ``gpt2-meta-plan`` / ``mixtral-meta-plan``: full-size GPT-2 (124M) and Mixtral-8x7B (46.7B) built on
  the meta device; time of the density *plan*: ``find_layers`` + ``layer_densities("er-balanced",
  0.01)`` + ``model_coverage`` (no masks are drawn).
* ``gpt2-prune``: full-size GPT-2 with real fp32 tensors, ``sparsekit.prune(model, "er-balanced",
  density=0.01)`` end to end (discovery, densities, sampling, flow repair, attach, coverage).
* ``mixtral-block-prune``: one full-size Mixtral-8x7B decoder block (8 experts, 1.41B parameters,
  bfloat16 tensors, uninitialised: values do not matter to ER masks), ``prune`` end to end; each
  expert matrix is its own ER graph with its own flow repair.

Reported: median wall seconds over ``--repeats`` runs, masked parameters per second, and extra peak
memory (``VmHWM`` - RSS before pruning, kernel high-water mark reset via ``/proc/self/clear_refs``, as
in ``bench_prune.py``) per masked parameter. Writes ``benchmarks/results/bench_coverage.json``.

Usage::

    python benchmarks/bench_coverage.py              # all cases, 3 runs each (~2 min on 2 idle cores)
    python benchmarks/bench_coverage.py --quick      # 1 run each, no Mixtral block
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_coverage.json"
CASES = ("gpt2-meta-plan", "mixtral-meta-plan", "gpt2-prune", "mixtral-block-prune")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _reset_peak() -> int:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_bytes("VmRSS")


def _worker(case: str) -> dict:
    import torch
    import transformers as T

    import sparsekit
    from sparsekit.layers import find_layers

    warnings.simplefilter("ignore")
    out: dict = {"case": case}
    if case.endswith("meta-plan"):
        with torch.device("meta"):
            model = (T.GPT2LMHeadModel(T.GPT2Config()) if case.startswith("gpt2")
                     else T.MixtralForCausalLM(T.MixtralConfig()))
        base = _reset_peak()
        t0 = time.perf_counter()
        layers = find_layers(model)
        dens = sparsekit.layer_densities(model, "er-balanced", 0.01)
        cov = sparsekit.model_coverage(model, layers, dens)
        out["seconds"] = time.perf_counter() - t0
        out["masked_params"] = cov.params("masked")
        out["coverage"] = {s: cov.fraction(s) for s in ("masked", "dense", "excluded", "unknown")}
        out["excluded_by_rule"] = cov.by_rule()
    else:
        if case == "gpt2-prune":
            torch.manual_seed(0)
            model = T.GPT2LMHeadModel(T.GPT2Config())
        else:
            from transformers.models.mixtral.modeling_mixtral import MixtralDecoderLayer

            torch.set_default_dtype(torch.bfloat16)
            cfg = T.MixtralConfig()
            model = MixtralDecoderLayer(cfg, 0)
            torch.set_default_dtype(torch.float32)
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(0.01)  # touch the pages now, so that pruning's extra memory is not the model's
        sparsekit.prune(torch.nn.Linear(8, 8), density=0.5)  # warm up the code path
        base = _reset_peak()
        t0 = time.perf_counter()
        ticket = sparsekit.prune(model, "er-balanced", density=0.01)
        out["seconds"] = time.perf_counter() - t0
        c = ticket.coverage
        out["masked_params"] = c["masked_params"]
        out["coverage"] = {s: c[s] for s in ("masked", "dense", "excluded", "unknown")}
        out["excluded_by_rule"] = c["excluded_by_rule"]
        out["realised_density"] = ticket.realised_density
    out["extra_peak_bytes"] = _status_bytes("VmHWM") - base
    out["model_params"] = sum(p.numel() for p in model.parameters())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker)))
        return
    cases = [c for c in args.cases if not (args.quick and c == "mixtral-block-prune")]
    repeats = 1 if args.quick else args.repeats
    results = {}
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for case in cases:
        runs = []
        for _ in range(repeats):
            p = subprocess.run([sys.executable, __file__, "--worker", case], capture_output=True, text=True, env=env)
            if p.returncode:
                raise SystemExit(f"{case} failed:\n{p.stderr[-2000:]}")
            runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
        secs = statistics.median(r["seconds"] for r in runs)
        peak = statistics.median(r["extra_peak_bytes"] for r in runs)
        r0 = runs[0]
        results[case] = {"runs": runs, "median_seconds": secs, "median_extra_peak_bytes": peak,
                         "masked_params": r0["masked_params"], "model_params": r0["model_params"],
                         "masked_per_s": r0["masked_params"] / secs if secs else None,
                         "extra_bytes_per_masked_param": peak / r0["masked_params"] if r0["masked_params"] else None,
                         "coverage": r0["coverage"], "excluded_by_rule": r0["excluded_by_rule"]}
    head = (f"{'case':<22}{'model params':>15}{'masked':>15}{'seconds':>10}{'masked/s':>12}{'extra MiB':>11}"
            f"{'B/param':>9}")
    print(head)
    print("-" * len(head))
    for case, r in results.items():
        print(f"{case:<22}{r['model_params']:>15,}{r['masked_params']:>15,}{r['median_seconds']:>10.3f}"
              f"{r['masked_per_s'] / 1e6:>10.0f}M {r['median_extra_peak_bytes'] / 2**20:>10.1f}"
              f"{r['extra_bytes_per_masked_param']:>9.3f}")
    for case, r in results.items():
        cov = r["coverage"]
        rules = ", ".join(f"{k} {v / r['model_params']:.1%}" for k, v in r["excluded_by_rule"].items())
        print(f"{case}: masked {cov['masked']:.1%}, dense {cov['dense']:.1%}, excluded {cov['excluded']:.1%} "
              f"({rules}), unknown {cov['unknown']:.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "repeats": repeats}
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
