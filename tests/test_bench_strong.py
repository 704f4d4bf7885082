"""Smoke test of benchmarks/bench_strong.py's variants on a tiny model, so the benchmark cannot rot.

Each variant must train: in particular the ER_SLT re-write and the sort baseline must select exactly
the masks ``fit_strong`` selects (same scores, same k), or their timings would compare different work.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

import sparsekit
import sparsekit.train.strong as strong_mod

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_strong", BENCH / "bench_strong.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
    assert set(r["median_step_s"]) == {"strong", "sort", "dense", "unfused", "er_slt"}
    assert r["cycles"] == 3 and all(len(t) == 3 for t in r["step_times_s"].values())
    assert all(v > 0 for v in r["median_step_s"].values())
    assert r["sort_vs_strong"] == r["median_step_s"]["sort"] / r["median_step_s"]["strong"]
    assert set(r["paired_median_ratios"]) == {"sort_vs_strong", "dense_vs_strong", "unfused_vs_strong",
                                              "er_slt_vs_strong", "strong_vs_dense"}


def test_baton_runs_one_thread_at_a_time_in_turn():
    """The lockstep harness: steps of the variants never overlap and follow the cycle order."""
    import threading
    import time

    bench = _bench()
    names = ["a", "b", "c"]
    baton = bench._Baton(names)
    log, active = [], []

    def body(name: str, steps: int) -> None:
        baton.wait(name)
        for _ in range(steps):
            active.append(name)
            assert len(active) == 1
            log.append(name)
            time.sleep(0.002)
            active.remove(name)
            baton.pass_on(name)
            baton.wait(name)
        baton.pass_on(name, finished=True)

    threads = [threading.Thread(target=body, args=(n, s)) for n, s in zip(names, (3, 1, 3), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert log == ["a", "b", "c", "a", "c", "a", "c"]
