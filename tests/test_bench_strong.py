"""Smoke test of benchmarks/bench_strong.py's variants on a tiny model, so the benchmark cannot rot.

Each variant must train: in particular the ER_SLT re-write and the sort baseline must select exactly
the masks ``fit_strong`` selects (same scores, same k), or their timings would compare different work.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

import sparsekit
import sparsekit.train.strong as strong_mod

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench():
    if str(BENCH) not in sys.path:  # importable by name: the lockstep workers are spawned processes
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("bench_strong")


def test_variants_select_the_same_tickets_as_fit_strong():
    bench = _bench()
    data = torch.utils.data.TensorDataset(torch.randn(64, 16), torch.randint(0, 4, (64,)))
    masks = {}
    for name, cls in (("strong", strong_mod.EdgePopup), *bench.VARIANTS.items()):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        original = strong_mod.EdgePopup
        strong_mod.EdgePopup = cls
        try:
            t = sparsekit.fit_strong(model, data, density=0.1, er_density=0.5, levels=2, epochs_per_level=1,
                                     batch_size=16, lr=1e-30, device="cpu", progress=False, num_workers=0)
        finally:
            strong_mod.EdgePopup = original
        masks[name] = {f: m.bool() for f, m in t.compact_masks.items()}
    ref = masks.pop("strong")
    masks.pop("frozen")  # a floor for timing, not edge-popup: it keeps its first level's selection
    for name, got in masks.items():  # lr 1e-30: the scores keep their init values, so every variant must agree
        assert got.keys() == ref.keys(), name
        assert all(torch.equal(got[f], ref[f]) for f in ref), name


def test_compare_runs_every_variant_and_reports_the_ratios():
    bench = _bench()

    class Quiet:
        def print(self, *a, **k):
            pass

    r = bench.compare(batch=4, steps=3, warmup=1, device="cpu", amp=None, console=Quiet(), keep_noisy=True,
                      model_name="resnet20")
    assert set(r["median_step_s"]) == {"strong", "sort", "dense", "unfused", "er_slt", "frozen"}
    assert r["cycles"] == 3 and all(len(t) == 3 for t in r["step_times_s"].values())
    assert all(v > 0 for v in r["median_step_s"].values())
    assert r["sort_vs_strong"] == r["median_step_s"]["sort"] / r["median_step_s"]["strong"]
    assert set(r["paired_median_ratios"]) == {"sort_vs_strong", "dense_vs_strong", "unfused_vs_strong",
                                              "er_slt_vs_strong", "frozen_vs_strong", "strong_vs_dense",
                                              "bound_sort_vs_strong"}
    # lockstep: no two steps overlap in time, and they follow the cycle order strong, sort, dense, ...
    spans = sorted((a, b, v) for v, ss in r["step_spans"].items() for a, b in ss)
    assert all(b0 <= a1 for (_, b0, _), (a1, _, _) in zip(spans, spans[1:], strict=False))
    order = ["strong", "sort", "dense", "unfused", "er_slt", "frozen"]
    assert [v for _, _, v in spans] == order * (len(spans) // len(order))
