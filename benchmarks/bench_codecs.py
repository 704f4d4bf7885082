#!/usr/bin/env python
"""Benchmark of the mask codecs (``sparsekit.formats.codecs``, spec ``formats/TICKET.md`` §10), CPU.

For seeded Bernoulli masks of ``--numel`` elements (default 10M) at densities 0.5, 0.1, 0.01 and
0.001 it measures the payload size of the encoding ``"auto"`` picks (and of ``U8`` and ``RICE``
forced) against the entropy bound ``numel * H(nnz / numel) / 8``, and the throughput in mask
elements per second (``numel / median time`` over ``--repeats`` runs) of:

* ``encode_mask``  : bool numpy mask -> payload (``"auto"``)
* ``encode_idx``   : sorted kept indices -> payload (``"auto"``)
* ``decode_idx``   : payload -> sorted kept indices (the fast path)
* ``decode_bool``  : payload -> flat bool mask

Goals: bytes / entropy bound <= 1.02 where ``RICE`` is chosen, ``U8`` chosen at density 0.5, decode
>= 100M mask elements/s. Prints a table and writes JSON (``benchmarks/results/bench_codecs.json``,
``--out`` to change) with machine info and every raw timing. numpy runs single-threaded here, but on
a shared machine other processes still disturb timings: the load average before and after each
density is recorded.

Usage::

    python benchmarks/bench_codecs.py                 # ~10 s on an idle core
    python benchmarks/bench_codecs.py --numel 1000000 --repeats 3
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
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sparsekit.formats.codecs import (  # noqa: E402
    RICE,
    U8,
    decode_indices,
    decode_mask,
    encode_indices,
    encode_mask,
    entropy_bound_bytes,
)

DEFAULT_OUT = HERE / "results" / "bench_codecs.json"
DENSITIES = (0.5, 0.1, 0.01, 0.001)
GOAL_RATIO = 1.02
GOAL_DECODE = 100e6  # mask elements per second


def _times(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up (page faults of first-touch allocations, caches)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def bench_density(numel: int, density: float, repeats: int, seed: int) -> dict:
    """Sizes and timings for one seeded Bernoulli mask."""
    mask = np.random.default_rng(seed).random(numel) < density
    idx = np.flatnonzero(mask)
    nnz = int(idx.size)
    bound = entropy_bound_bytes(numel, nnz)
    load_before = os.getloadavg()[0]
    enc, payload, params = encode_mask(mask)
    sizes = {name: len(encode_mask(mask, name)[1]) for name in (U8, RICE)}
    assert encode_indices(idx, numel) == (enc, payload, params)
    assert np.array_equal(decode_indices(enc, payload, numel), idx)
    assert np.array_equal(decode_mask(enc, payload, numel), mask)
    timings = {
        "encode_mask": _times(lambda: encode_mask(mask), repeats),
        "encode_idx": _times(lambda: encode_indices(idx, numel), repeats),
        "decode_idx": _times(lambda: decode_indices(enc, payload, numel), repeats),
        "decode_bool": _times(lambda: decode_mask(enc, payload, numel), repeats),
    }
    rice_payload = encode_mask(mask, RICE)[1]
    timings["decode_idx_rice"] = _times(lambda: decode_indices(RICE, rice_payload, numel), repeats)
    return {
        "density": density,
        "numel": numel,
        "nnz": nnz,
        "encoding": enc,
        "params": params,
        "bytes": len(payload),
        "bytes_u8": sizes[U8],
        "bytes_rice": sizes[RICE],
        "entropy_bound_bytes": bound,
        "ratio": len(payload) / bound if bound else None,
        "ratio_rice": sizes[RICE] / bound if bound else None,
        "median_s": {k: statistics.median(v) for k, v in timings.items()},
        "rate": {k: numel / statistics.median(v) for k, v in timings.items()},
        "raw_s": timings,
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numel", type=int, default=10_000_000)
    ap.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    rows = [bench_density(args.numel, d, args.repeats, args.seed) for d in args.densities]

    head = (
        f"{'density':>8} {'enc':>4} {'k':>3} {'bytes':>10} {'bound':>10} {'ratio':>7} {'RICE/bd':>7} "
        f"{'enc_mask':>9} {'enc_idx':>9} {'dec_idx':>9} {'dec_bool':>9}   (M mask elements/s, median)"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = f"{r['ratio']:.4f}" if r["ratio"] else "-"
        rratio = f"{r['ratio_rice']:.4f}" if r["ratio_rice"] else "-"
        rates = " ".join(
            f"{r['rate'][k] / 1e6:9.0f}" for k in ("encode_mask", "encode_idx", "decode_idx", "decode_bool")
        )
        print(
            f"{r['density']:>8g} {r['encoding']:>4} {r['params'].get('k', '-'):>3} {r['bytes']:>10} "
            f"{r['entropy_bound_bytes']:>10.0f} {ratio:>7} {rratio:>7} {rates}"
        )

    goals = []
    for r in rows:
        if r["encoding"] == RICE:
            goals.append((f"ratio <= {GOAL_RATIO} at {r['density']:g} (RICE)", r["ratio"] <= GOAL_RATIO))
        if r["density"] == 0.5:
            goals.append(("U8 chosen at 0.5", r["encoding"] == U8))
        for k in ("decode_idx", "decode_bool"):
            goals.append((f"{k} >= 100M/s at {r['density']:g}", r["rate"][k] >= GOAL_DECODE))
    print()
    for name, ok in goals:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")

    result = {
        "benchmark": "bench_codecs",
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
        "git_commit": _git_commit(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "goals": {name: ok for name, ok in goals},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0 if all(ok for _, ok in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
