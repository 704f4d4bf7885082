#!/usr/bin/env python
"""Benchmark of ``sparsekit.prune`` and of mask enforcement during training (CPU).

One run measures, prints two tables and writes JSON (``benchmarks/results/bench_prune.json``):

1. **prune**: wall time and extra peak memory of ``sparsekit.prune(model, "er-balanced", density=0.01)``
   (density allocation, sampling, flow repair and attach, i.e. end to end) on torchvision resnet50,
   torchvision vit_b_16 and a 302M-parameter ``nn.TransformerEncoder`` with random weights, next to
   ``torch.nn.utils.prune.random_unstructured`` applied to the same layers with the same per-layer
   densities (``amount = 1 - p_l`` from ``sparsekit.layer_densities``).
   Every run happens in a fresh subprocess: build the model, warm up the code path on a tiny model,
   ``gc.collect()``, reset the kernel's RSS high-water mark (``echo 5 > /proc/self/clear_refs``; a
   1 ms sampler of ``/proc/self/statm`` when that is not writable), record the RSS, prune, read
   ``VmHWM``. Extra peak memory = ``VmHWM - RSS before``; it includes the masks the ticket keeps.
2. **train**: median training-step time of resnet18 (num_classes=10, batch 32 of 3x32x32, SGD lr 0.1
   momentum 0.9 wd 5e-4, cross entropy) pruned at density 0.01, relative to the dense model, for
   sparsekit's mechanism and variants of it (which hooks, which mask dtype) and for
   ``torch.nn.utils.parametrize`` and ``torch.nn.utils.prune.custom_from_mask``. All variants live in
   one process and are stepped in interleaved rounds (one step each per round, rotating order), so
   machine noise hits them alike. A micro-benchmark times one masking pass over all masked grads per
   mask representation (bool, uint8 view, float32, torch.where, kept indices).

Other processes: on a small machine a concurrent job (e.g. a test run) slows 2-thread torch down by
10-100x. Before every measurement the script waits (``--quiet-wait``) until other processes use < 5%
of the CPUs, it counts the CPU time other processes used during each timed region (``/proc/stat``
minus its own) and repeats disturbed prune runs (``--max-retries``) and drops disturbed training
rounds; the JSON records all of it.

Usage::

    python benchmarks/bench_prune.py            # full run (4-5 minutes on 2 idle CPU cores)
    python benchmarks/bench_prune.py --quick    # smoke run: resnet50 only, fewer steps
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_prune.json"

METHOD = "er-balanced"
DENSITY = 0.01

GOAL_SPEEDUP = 20.0  # sparsekit vs torch random_unstructured
GOAL_RATE = 300e6  # masked params per second
GOAL_EXTRA_BYTES = 1.0  # extra peak memory per masked parameter
GOAL_TRAIN_RATIO = 1.05  # pruned / dense training-step time

MODELS = {
    "resnet50": "torchvision.models.resnet50()",
    "vit_b_16": "torchvision.models.vit_b_16()",
    "transformer-302m": ("nn.TransformerEncoder(nn.TransformerEncoderLayer(d_model=1024, nhead=16, "
                         "dim_feedforward=4096, batch_first=True), num_layers=24, enable_nested_tensor=False)"),
}
IMPLS = ("sparsekit", "torch-random_unstructured")


# --------------------------------------------------------------------------------------------------
# memory: RSS and its high-water mark from /proc


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakRSS:
    """Peak RSS over a region: kernel high-water mark reset via clear_refs, else a 1 ms sampler."""

    def __init__(self) -> None:
        self.method = "clear_refs"
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._max = 0
        self._thread: threading.Thread | None = None

    def _statm_rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, self._statm_rss())
            time.sleep(0.001)

    def start(self) -> int:
        """Reset the peak; returns the RSS baseline in bytes."""
        try:
            if os.environ.get("BENCH_PRUNE_FORCE_SAMPLER"):
                raise OSError("sampler forced")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _status_bytes("VmRSS")
            if _status_bytes("VmHWM") > base + (8 << 20):  # reset did not take effect
                raise OSError("VmHWM not reset")
        except OSError:
            self.method = "statm-sampler-1ms"
            base = self._statm_rss()
            self._max = base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return base

    def stop(self) -> int:
        """Peak RSS in bytes since :meth:`start`."""
        if self._thread is None:
            return _status_bytes("VmHWM")
        self._stop.set()
        self._thread.join()
        return max(self._max, self._statm_rss())


# --------------------------------------------------------------------------------------------------
# contention: CPU time used by other processes, from /proc/stat (tick resolution) minus our own

_TCK = os.sysconf("SC_CLK_TCK")
NCPU = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _busy_cpu_s() -> float:
    """CPU seconds spent busy on the whole machine since boot (all CPUs, not idle/iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / _TCK


def _own_cpu_s(children: bool = False) -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    t = r.ru_utime + r.ru_stime
    if children:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        t += c.ru_utime + c.ru_stime
    return t


class Foreign:
    """CPU seconds used by *other* processes between start() and stop() (about +-1 tick per CPU)."""

    def __init__(self, children: bool = False) -> None:
        self.children = children
        self.start()

    def start(self) -> None:
        self._b, self._o, self._t = _busy_cpu_s(), _own_cpu_s(self.children), time.perf_counter()

    def stop(self) -> tuple[float, float]:
        """``(foreign cpu seconds, wall seconds)``."""
        return (max(0.0, (_busy_cpu_s() - self._b) - (_own_cpu_s(self.children) - self._o)),
                time.perf_counter() - self._t)


def is_noisy(foreign_s: float, wall_s: float) -> bool:
    """Other processes took more than 5% of the machine (plus 3 ticks per CPU of slack)."""
    return foreign_s > 0.05 * wall_s * NCPU + 3.0 * NCPU / _TCK


def wait_for_quiet(max_wait_s: float, window_s: float = 0.5) -> float:
    """Wait (up to ``max_wait_s``) until other processes use < 5% of the CPUs; returns seconds waited."""
    t0 = time.perf_counter()
    while True:
        f = Foreign(children=True)
        time.sleep(window_s)
        foreign, wall = f.stop()
        if foreign <= 0.05 * wall * NCPU or time.perf_counter() - t0 >= max_wait_s:
            return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# workers (run in fresh subprocesses)


def _build_model(name: str):
    import torch
    import torchvision  # noqa: F401
    from torch import nn  # noqa: F401

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return eval(MODELS[name])  # noqa: S307 - fixed table above


def _baseline_plan(model, method: str, density: float):
    """``[(module, param name, amount, numel)]``: the layers sparsekit masks, amount = 1 - p_l."""
    import sparsekit

    dens = sparsekit.layer_densities(model, method, density)
    plan = []
    for L in sparsekit.find_layers(model):
        p = dens[L.fqn]
        if p >= 1.0:
            continue
        assert L.fqn.startswith(L.module_fqn + ".") or not L.module_fqn, L.fqn
        pname = L.fqn[len(L.module_fqn) + 1:] if L.module_fqn else L.fqn
        plan.append((model.get_submodule(L.module_fqn), pname, 1.0 - p, L.numel))
    return plan


def _tiny_model():
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.Flatten(), nn.Linear(64, 64),
                         nn.TransformerEncoderLayer(64, 4, 128, batch_first=True))


def _prune_worker(spec: dict) -> dict:
    import torch
    from torch.nn.utils import prune as tprune

    import sparsekit

    impl, method, density = spec["impl"], spec["method"], spec["density"]
    t0 = time.perf_counter()
    model = _build_model(spec["model"])
    build_s = time.perf_counter() - t0
    total_params = sum(p.numel() for p in model.parameters())

    # Warm up the code path (thread pool, lazily initialised kernels) on a tiny model.
    if spec.get("warmup", True):
        tiny = _tiny_model()
        if impl == "sparsekit":
            sparsekit.prune(tiny, method, density=0.1)
            sparsekit.finalize(tiny)
        else:
            for mod, pname, amount, _ in _baseline_plan(tiny, method, 0.1):
                tprune.random_unstructured(mod, pname, amount=amount)
        del tiny

    plan = _baseline_plan(model, method, density) if impl != "sparsekit" else None
    gc.collect()
    peak = PeakRSS()
    rss0 = peak.start()
    foreign = Foreign()
    t0 = time.perf_counter()
    if impl == "sparsekit":
        kw = {"chunk_words": spec["chunk_words"]} if spec.get("chunk_words") else {}
        ticket = sparsekit.prune(model, method, density=density, **kw)
    else:
        for mod, pname, amount, _ in plan:
            tprune.random_unstructured(mod, pname, amount=amount)
    seconds = time.perf_counter() - t0
    foreign_s, _ = foreign.stop()
    hwm = peak.stop()
    rss1 = _status_bytes("VmRSS")

    if impl == "sparsekit":
        recs = [r for r in ticket.layers if r.target_density < 1.0]  # the layers that got a mask
        masked = sum(r.numel for r in recs)
        nonzeros = sum(r.nonzeros for r in recs)
        layers = len(recs)
    else:
        masked = sum(n for *_, n in plan)
        nonzeros = sum(int(getattr(mod, pname + "_mask").count_nonzero()) for mod, pname, _, _ in plan)
        layers = len(plan)
    return {
        "model": spec["model"], "impl": impl, "seconds": seconds, "build_s": build_s,
        "total_params": total_params, "masked_params": masked, "masked_layers": layers,
        "nonzeros": nonzeros, "realised_density": nonzeros / masked,
        "rss_before": rss0, "peak_rss": hwm, "rss_after": rss1,
        "extra_peak_bytes": hwm - rss0, "retained_bytes": rss1 - rss0,
        "memory_method": peak.method, "threads": torch.get_num_threads(), "warmup": spec.get("warmup", True),
        "foreign_cpu_s": foreign_s, "noisy": is_noisy(foreign_s, seconds),
    }


def _train_worker(spec: dict) -> dict:
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch import nn
    from torch.nn.utils import parametrize
    from torch.nn.utils import prune as tprune

    import sparsekit

    sk_attach = sys.modules["sparsekit.attach"]  # ``sparsekit.attach`` the attribute is the function

    steps, warmup, batch = spec["steps"], spec["warmup"], spec["batch"]
    method, density = spec["method"], spec["density"]
    torch.manual_seed(0)
    state = copy.deepcopy(torchvision.models.resnet18(num_classes=10).state_dict())
    # 8 fixed batches, cycled (the same batch for every variant in a round); learnable labels (a fixed
    # random linear function of the input) so that lr 0.1 does not blow up the dense model.
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(batch, 3, 32, 32, generator=gen) for _ in range(8)]
    proj = torch.randn(3 * 32 * 32, 10, generator=gen)
    ys = [(x.flatten(1) @ proj).argmax(1) for x in xs]

    def fresh():
        m = torchvision.models.resnet18(num_classes=10)
        m.load_state_dict(state)
        return m.train()

    def sgd(m):
        return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    # The masks every variant uses (identical: masks are a function of seed, names and shapes).
    ref_model = fresh()
    sparsekit.prune(ref_model, method, density=density)
    masks = {fqn: mk.clone() for fqn, _, mk in sparsekit.masked_parameters(ref_model)}
    masked_params = sum(m.numel() for m in masks.values())
    h0 = next(p for p in ref_model.parameters() if getattr(p, "_sparsekit_mask", None) is not None)._sparsekit_mask
    sk_mechanism = f"mask handle holds {type(h0.mask).__name__}"
    if getattr(h0.mask, "kept", None) is not None:
        sk_mechanism += " (kept indices)"
    n_mult = sum(1 for p in ref_model.parameters() if getattr(getattr(p, "_sparsekit_mask", None), "multiply", False))
    sk_mechanism += f"; dense grad masks on {n_mult}/{len(masks)} layers (DENSE_MASK_BUDGET)"
    del ref_model, h0
    # sparsekit's optimizer hook is process-global and would fire for every model here; take it out
    # and give each variant that wants it a per-optimizer hook running the very same function.
    if sk_attach._OPT_HOOK is not None:
        sk_attach._OPT_HOOK.remove()  # the removed handle stays, so attach() does not re-register

    zero = torch.zeros(())

    def make_rep(kind, mk, dtype):
        """The mask of one weight in representation ``kind`` and an in-place ``keep_only(t, rep)``."""
        if kind == "bool":
            return mk
        if kind == "uint8":
            return mk.view(torch.uint8)
        if kind == "float":
            return mk.to(dtype)
        if kind == "where":
            return mk
        if kind in ("index", "index_select"):
            return mk.reshape(-1).nonzero().squeeze(1)
        raise ValueError(kind)

    def keep_only(kind, t, rep):
        if kind in ("bool", "uint8", "float"):
            t.mul_(rep)
        elif kind == "where":
            torch.where(rep, t, zero, out=t)
        elif kind == "index":
            flat = t.view(-1)
            v = flat[rep]
            flat.zero_()
            flat[rep] = v
        else:  # index_select
            flat = t.view(-1)
            v = flat.index_select(0, rep)
            flat.zero_()
            flat.index_copy_(0, rep, v)

    def sk_model(grad_hook=True, opt_hook=True, kind=None, budget=None):
        """sparsekit.prune, then either sparsekit's own enforcement (``kind=None``; ``budget`` sets
        ``sparsekit.attach.DENSE_MASK_BUDGET`` for this model) or the benchmark's hooks of the same
        structure (post-accumulate-grad hook per weight, optimizer step post-hook re-masking every step)
        with mask representation ``kind``."""
        m = fresh()
        default_budget = sk_attach.DENSE_MASK_BUDGET
        if budget is not None:
            sk_attach.DENSE_MASK_BUDGET = budget
        try:
            sparsekit.prune(m, method, density=density)
        finally:
            sk_attach.DENSE_MASK_BUDGET = default_budget
        opt = sgd(m)
        if kind is None:  # sparsekit as installed
            opt.register_step_post_hook(sk_attach._optimizer_post_hook)
            return m, opt
        params = dict(m.named_parameters())
        rep = {}
        for fqn, mk in masks.items():
            p = params[fqn]
            h = getattr(p, "_sparsekit_mask", None)
            if h is not None and h.grad_hook is not None:
                h.grad_hook.remove()
                h.grad_hook = None
            rep[id(p)] = make_rep(kind, mk, p.dtype)
        if grad_hook:
            for fqn in masks:
                p = params[fqn]

                def hook(q, r=rep[id(p)]):
                    if q.grad is not None:
                        keep_only(kind, q.grad, r)
                p.register_post_accumulate_grad_hook(hook)
        if opt_hook:
            @torch.no_grad()
            def opt_post(optimizer, args, kwargs):
                for group in optimizer.param_groups:
                    for q in group["params"]:
                        r = rep.get(id(q))
                        if r is not None:
                            keep_only(kind, q, r)
            opt.register_step_post_hook(opt_post)
        return m, opt

    class MaskParam(nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.register_buffer("mask", mask, persistent=False)

        def forward(self, w):
            return w * self.mask

    def parametrized():
        m = fresh()
        for fqn, mk in masks.items():
            mod_name, _, pname = fqn.rpartition(".")
            mod = m.get_submodule(mod_name)
            parametrize.register_parametrization(mod, pname, MaskParam(mk.to(getattr(mod, pname).dtype)))
        return m, sgd(m)

    def custom_from_mask():
        m = fresh()
        for fqn, mk in masks.items():
            mod_name, _, pname = fqn.rpartition(".")
            tprune.custom_from_mask(m.get_submodule(mod_name), pname, mk)
        return m, sgd(m)

    variants = [  # (key, description, builder, check that masked weights stayed exactly zero)
        ("dense", "dense resnet18 (reference)", lambda: (lambda m: (m, sgd(m)))(fresh()), False),
        ("sparsekit", f"sparsekit {sparsekit.__version__} as installed ({sk_mechanism})", lambda: sk_model(), True),
        ("sparsekit-budget0", "sparsekit with DENSE_MASK_BUDGET=0 (compact masks only: before issue 15)",
         lambda: sk_model(budget=0.0), True),
        ("sparsekit-budget1", "sparsekit with DENSE_MASK_BUDGET=1 (a dense float mask for every layer, +4 B/param)",
         lambda: sk_model(budget=1.0), True),
        ("both-bool", "grad hook g.mul_(bool) + opt hook re-masking weights every step (sparsekit 5fcaf3a)",
         lambda: sk_model(kind="bool"), True),
        ("grad-bool", "(a) grad hook only, bool mask", lambda: sk_model(opt_hook=False, kind="bool"), True),
        ("opt-bool", "(b) optimizer post-hook only, bool mask", lambda: sk_model(grad_hook=False, kind="bool"), True),
        ("both-uint8", "grad + opt hook, mask.view(uint8) (same bytes)", lambda: sk_model(kind="uint8"), True),
        ("both-float", "(d) grad + opt hook, float32 mask (+4 B/param)", lambda: sk_model(kind="float"), True),
        ("grad-float", "(a)+(d) grad hook only, float32 mask", lambda: sk_model(opt_hook=False, kind="float"),
         True),
        ("opt-float", "(b)+(d) optimizer post-hook only, float32 mask",
         lambda: sk_model(grad_hook=False, kind="float"), True),
        ("both-where", "grad + opt hook, torch.where(mask, t, 0, out=t)", lambda: sk_model(kind="where"), True),
        ("both-index", "grad + opt hook, kept indices: t[i] gather, zero_, t[i] = v",
         lambda: sk_model(kind="index"), True),
        ("grad-index", "grad hook only, kept indices: t[i] gather, zero_, t[i] = v",
         lambda: sk_model(opt_hook=False, kind="index"), True),
        ("grad-index_select", "grad hook only, kept indices: index_select, zero_, index_copy_",
         lambda: sk_model(opt_hook=False, kind="index_select"), True),
        ("hooks-off", "control: pruned weights, no hooks at all (masks not enforced)",
         lambda: sk_model(grad_hook=False, opt_hook=False, kind="bool"), False),
        ("parametrize", "torch.nn.utils.parametrize, w * float mask", parametrized, False),
        ("custom_from_mask", "torch.nn.utils.prune.custom_from_mask", custom_from_mask, False),
    ]
    only = spec.get("variants")
    if only:
        variants = [v for v in variants if v[0] in only or v[0] == "dense"]
    # Micro-benchmark (before the models are built): one masking pass over all masked grads, per mask
    # representation.
    micro = {}
    grads = {fqn: torch.randn(mk.shape) for fqn, mk in masks.items()}
    kinds = ["bool", "uint8", "float", "where", "index", "index_select"]
    reps = {k: {f: make_rep(k, mk, torch.float32) for f, mk in masks.items()} for k in kinds}

    def one_pass(kind, rep, grads=grads):
        for f, g in grads.items():
            keep_only(kind, g, rep[f])

    alloc = {}
    for kind in kinds:
        one_pass(kind, reps[kind])
        try:  # bytes allocated by one pass (temporaries), from the profiler's memory events
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                one_pass(kind, reps[kind])
            alloc[kind] = sum(max(0, e.self_cpu_memory_usage) for e in prof.key_averages())
        except Exception:  # noqa: BLE001 - the profiler is optional here
            alloc[kind] = None
    mts: dict[str, list[float]] = {k: [] for k in kinds}
    micro_blocks = micro_noisy = 0
    while len(mts["bool"]) < spec.get("micro_reps", 40) and micro_blocks < 40:
        block = {k: [] for k in kinds}
        fg = Foreign()
        for c in range(10):  # blocks of 10 interleaved cycles; a block disturbed by other processes is dropped
            for kind in kinds[c % len(kinds):] + kinds[:c % len(kinds)]:
                t0 = time.perf_counter()
                one_pass(kind, reps[kind])
                block[kind].append(time.perf_counter() - t0)
        micro_blocks += 1
        if is_noisy(*fg.stop()) and micro_blocks < 40:
            micro_noisy += 1
            continue
        for k in kinds:
            mts[k] += block[k]
    for kind in kinds:
        extra = sum(r.numel() * r.element_size() for r in reps[kind].values()) / masked_params
        micro[kind] = {"median_ms": 1e3 * statistics.median(mts[kind]), "min_ms": 1e3 * min(mts[kind]),
                       "mask_bytes_per_param": extra, "passes": len(mts[kind]),
                       "allocated_bytes_per_pass": alloc[kind]}
    del grads, reps, one_pass

    built = {}
    for key, _, builder, _ in variants:
        torch.manual_seed(0)
        built[key] = builder()

    # Interleaved rounds: one step of every variant per round, order rotated each round. Rounds during
    # which other processes used more than 5% of the CPUs are dropped and repeated (up to 3x steps).
    times = {k: [] for k in built}
    losses = {}
    keys = list(built)
    rounds = dropped = 0
    while len(times["dense"]) < steps and rounds < warmup + 3 * steps:
        order = keys[rounds % len(keys):] + keys[:rounds % len(keys)]
        fg = Foreign()
        step_t = {}
        x, y = xs[rounds % len(xs)], ys[rounds % len(ys)]
        for k in order:
            m, opt = built[k]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            step_t[k] = time.perf_counter() - t0
            losses[k] = float(loss.detach())
        rounds += 1
        if rounds <= warmup:
            continue
        if is_noisy(*fg.stop()) and rounds < warmup + 3 * steps:
            dropped += 1
            continue
        for k, dt in step_t.items():
            times[k].append(dt)

    dense_med = statistics.median(times["dense"])
    out = {}
    for key, desc, _, check in variants:
        t = times[key]
        med = statistics.median(t)
        zeros_kept = None
        if check:
            m = built[key][0]
            params = dict(m.named_parameters())
            zeros_kept = all(bool(params[f].detach()[~mk].eq(0).all()) for f, mk in masks.items())
        out[key] = {
            "description": desc, "median_s": med, "mean_s": statistics.fmean(t), "min_s": min(t),
            "ratio_vs_dense": med / dense_med,
            "paired_ratio_median": statistics.median(a / b for a, b in zip(t, times["dense"], strict=True)),
            "masked_zeros_kept": zeros_kept, "final_loss": losses[key], "step_times_s": t,
        }
    return {
        "model": "resnet18(num_classes=10)", "batch": batch, "input": [3, 32, 32], "steps": steps,
        "warmup": warmup, "optimizer": "SGD(lr=0.1, momentum=0.9, weight_decay=5e-4)",
        "method": method, "density": density, "masked_params": masked_params, "masked_layers": len(masks),
        "threads": torch.get_num_threads(), "variants": out, "mask_pass_micro": micro,
        "measured_steps": len(times["dense"]), "rounds_run": rounds, "rounds_dropped_noisy": dropped,
        "micro_blocks_dropped_noisy": micro_noisy,
        "note": "sparsekit variants use per-optimizer step post-hooks running sparsekit.attach._optimizer_post_hook "
                "(the process-global hook was removed so it does not fire for the other variants)",
    }


def _worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    warnings.simplefilter("ignore")
    res = _prune_worker(spec) if spec["task"] == "prune" else _train_worker(spec)
    res["sparsekit_src_sha1"] = sparsekit_fingerprint()
    with open(spec["result_path"], "w") as f:
        json.dump(res, f)


def _run_worker(spec: dict, timeout: float = 900, quiet_wait_s: float = 0.0) -> dict:
    waited = wait_for_quiet(quiet_wait_s) if quiet_wait_s > 0 else 0.0
    with tempfile.TemporaryDirectory() as d:
        spec = {**spec, "result_path": os.path.join(d, "result.json")}
        proc = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise RuntimeError(f"worker {spec['task']} {spec.get('model', '')} {spec.get('impl', '')} failed "
                               f"with exit code {proc.returncode}")
        with open(spec["result_path"]) as f:
            return {**json.load(f), "waited_for_quiet_s": waited}


# --------------------------------------------------------------------------------------------------
# driver


def sparsekit_fingerprint() -> str:
    """sha1 (12 hex digits) of sparsekit's Python sources, to tie results to the code measured."""
    import hashlib

    import sparsekit

    h = hashlib.sha1()
    root = Path(sparsekit.__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def machine_info() -> dict:
    import torch

    import sparsekit

    info = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(), "sparsekit": sparsekit.__version__,
        "sparsekit_src_sha1": sparsekit_fingerprint(),
    }
    try:
        import torchvision
        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        info["mem_total_bytes"] = next(int(ln.split()[1]) * 1024 for ln in open("/proc/meminfo")
                                       if ln.startswith("MemTotal"))
    except OSError:
        pass
    try:
        git = ["git", "-C", str(HERE.parent)]
        info["git_commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(git + ["status", "--porcelain", "--", "sparsekit"],
                                                capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    return info


def _summarise(runs: list[dict], dropped: list[dict]) -> dict:
    secs = [r["seconds"] for r in runs]
    med = statistics.median(secs)
    masked = runs[0]["masked_params"]
    extra = max(r["extra_peak_bytes"] for r in runs)
    return {
        "runs": len(runs), "seconds": secs, "median_s": med, "params_per_s": masked / med,
        "extra_peak_bytes_max": extra, "extra_peak_bytes_per_param": extra / masked,
        "extra_peak_bytes_per_param_runs": [r["extra_peak_bytes"] / masked for r in runs],
        "retained_bytes_per_param": statistics.median(r["retained_bytes"] for r in runs) / masked,
        "realised_density": runs[0]["realised_density"], "memory_method": runs[0]["memory_method"],
        "build_s": statistics.median(r["build_s"] for r in runs), "noisy_runs_kept": sum(r["noisy"] for r in runs),
        "details": runs, "dropped_noisy_runs": dropped,
    }


def bench_prune(models: list[str], args) -> list[dict]:
    results = []
    for name in models:
        entry: dict = {"model": name, "constructor": MODELS[name]}
        for impl in IMPLS:
            if impl == "sparsekit":
                n = args.repeats
            elif name == "transformer-302m":
                if args.skip_baseline_big:
                    continue
                n = args.big_baseline_repeats
            else:
                n = args.baseline_repeats
            if n <= 0:
                continue
            runs: list[dict] = []
            dropped: list[dict] = []
            while len(runs) < n:
                r = _run_worker({"task": "prune", "model": name, "impl": impl, "method": METHOD,
                                 "density": DENSITY, "warmup": not args.cold, "chunk_words": args.chunk_words},
                                quiet_wait_s=args.quiet_wait)
                retry = r["noisy"] and len(dropped) < args.max_retries
                print(f"  [prune] {name:<17} {impl:<26} run {len(runs) + 1}/{n}: {r['seconds']:8.3f} s, "
                      f"extra peak {r['extra_peak_bytes'] / r['masked_params']:.3f} B/param "
                      f"({r['memory_method']}), other processes {r['foreign_cpu_s']:.2f} cpu-s"
                      + (" -> noisy, repeated" if retry else " (noisy)" if r["noisy"] else ""), flush=True)
                (dropped if retry else runs).append(r)
            entry[impl] = _summarise(runs, dropped)
        sk = entry["sparsekit"]
        entry["total_params"] = sk["details"][0]["total_params"]
        entry["masked_params"] = sk["details"][0]["masked_params"]
        base = entry.get("torch-random_unstructured")
        entry["speedup_vs_random_unstructured"] = base["median_s"] / sk["median_s"] if base else None
        results.append(entry)
    return results


def _enforcing(variant: str) -> bool:
    """A sparsekit(-style) enforcement variant (not dense, the no-hooks control or torch's own)."""
    return variant not in ("dense", "hooks-off", "parametrize", "custom_from_mask")


def _fmt_bytes_pp(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _ok(flag: bool | None) -> str:
    return "" if flag is None else (" ok" if flag else " MISS")


def render(report: dict, console) -> None:
    prune_rows = report.get("prune") or []
    info = report["machine"]
    console.print(f"\nsparsekit {info['sparsekit']}  torch {info['torch']}  threads {info['torch_threads']}  "
                  f"cpus {info['cpu_count']}  ({info.get('cpu_model', '?')})")
    if prune_rows:
        head = ["model", "masked params", "sk median s (n)", "sk Mparam/s", "sk extra B/param",
                "sk retained B/param", "baseline median s (n)", "baseline Mparam/s", "baseline extra B/param",
                "speedup"]
        rows = []
        for e in prune_rows:
            sk, b = e["sparsekit"], e.get("torch-random_unstructured")
            rows.append([
                e["model"], f"{e['masked_params']:,}", f"{sk['median_s']:.3f} ({sk['runs']})",
                f"{sk['params_per_s'] / 1e6:.0f}{_ok(sk['params_per_s'] >= GOAL_RATE)}",
                f"{sk['extra_peak_bytes_per_param']:.3f}{_ok(sk['extra_peak_bytes_per_param'] <= GOAL_EXTRA_BYTES)}",
                f"{sk['retained_bytes_per_param']:.3f}",
                f"{b['median_s']:.3f} ({b['runs']})" if b else "skipped",
                f"{b['params_per_s'] / 1e6:.1f}" if b else "-",
                _fmt_bytes_pp(b["extra_peak_bytes_per_param"]) if b else "-",
                (f"{e['speedup_vs_random_unstructured']:.1f}x"
                 f"{_ok(e['speedup_vs_random_unstructured'] >= GOAL_SPEEDUP)}") if b else "-",
            ])
        _table(console, f"prune(model, {METHOD!r}, density={DENSITY}) vs torch.nn.utils.prune.random_unstructured "
                        f"(goals: >= {GOAL_SPEEDUP:.0f}x faster, >= {GOAL_RATE / 1e6:.0f}M params/s, "
                        f"extra peak <= {GOAL_EXTRA_BYTES:g} B/param)", head, rows)
        notes = []
        for e in prune_rows:
            for impl in IMPLS:
                r = e.get(impl)
                if r and (r["dropped_noisy_runs"] or r["noisy_runs_kept"]):
                    notes.append(f"{e['model']}/{impl}: {len(r['dropped_noisy_runs'])} run(s) disturbed by other "
                                 f"processes repeated, {r['noisy_runs_kept']} disturbed run(s) kept")
        mem = {r["memory_method"] for e in prune_rows for i in IMPLS if e.get(i) for r in e[i]["details"]}
        console.print(f"extra = peak RSS during prune - RSS before (includes the masks kept by the ticket; "
                      f"measured with {', '.join(sorted(mem))}); retained = RSS after - RSS before; "
                      f"each run in a fresh process, prune warmed up on a tiny model"
                      f"{'' if report['config']['warm_prune'] else ' (disabled: --cold)'}; "
                      f"baseline densities computed outside the timer")
        for n in notes:
            console.print("note: " + n)
    tr = report.get("train")
    if tr:
        head = ["variant", "median ms", "ratio vs dense", "paired ratio", "zeros kept", "description"]
        rows = []
        for k, v in tr["variants"].items():
            goal = _ok(v["ratio_vs_dense"] <= GOAL_TRAIN_RATIO) if _enforcing(k) else ""
            rows.append([k, f"{1e3 * v['median_s']:.1f}", f"{v['ratio_vs_dense']:.3f}{goal}",
                         f"{v['paired_ratio_median']:.3f}",
                         "-" if v["masked_zeros_kept"] is None else str(v["masked_zeros_kept"]), v["description"]])
        _table(console, f"training step, {tr['model']}, batch {tr['batch']}x3x32x32, {tr['optimizer']}, "
                        f"density {tr['density']}: median of {tr['measured_steps']} interleaved steps after "
                        f"{tr['warmup']} warm-up (goal for sparsekit: <= {GOAL_TRAIN_RATIO:.2f}x dense)", head, rows)
        if tr["rounds_dropped_noisy"]:
            console.print(f"note: {tr['rounds_dropped_noisy']} round(s) disturbed by other processes dropped")
        head = ["mask representation", "median ms", "min ms", "mask bytes/param", "temporaries per pass, MiB"]
        rows = [[k, f"{v['median_ms']:.2f}", f"{v['min_ms']:.2f}", f"{v['mask_bytes_per_param']:.3f}",
                 "?" if v["allocated_bytes_per_pass"] is None else f"{v['allocated_bytes_per_pass'] / 2**20:.1f}"]
                for k, v in tr["mask_pass_micro"].items()]
        _table(console, f"one masking pass over all masked grads of resnet18, alone ({tr['masked_params']:,} "
                        f"params in {tr['masked_layers']} tensors; grad+opt-hook variants do two such passes "
                        "per step)", head, rows)


def _table(console, title: str, head: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.table import Table
    except ImportError:
        Table = None
    if Table is not None and not isinstance(console, _PlainConsole):
        t = Table(title=title, title_justify="left")
        for i, h in enumerate(head):
            t.add_column(h, justify="left" if i == 0 or h == "description" else "right", no_wrap=i == 0)
        from rich.markup import escape

        for r in rows:
            t.add_row(*(escape(str(c)) for c in r))
        console.print(t)
        return
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    console.print("\n" + title)
    for r in [head, ["-" * w for w in widths], *rows]:
        console.print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def make_console(plain: bool = False):
    """A wide rich console, or a plain-text one with ``--plain`` (or when rich is missing)."""
    try:
        if plain:
            raise ImportError
        from rich.console import Console
        return Console(width=max(160, int(os.environ.get("COLUMNS", 0) or 0)))
    except ImportError:
        return _PlainConsole()


class _PlainConsole:
    def print(self, text: str = "") -> None:
        print(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: resnet50 only, 2 sparsekit / 1 baseline runs, 10 train steps")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="models for the prune benchmark")
    ap.add_argument("--repeats", type=int, default=None, help="sparsekit prune runs per model (default 3)")
    ap.add_argument("--baseline-repeats", type=int, default=None,
                    help="random_unstructured runs per model (default 3)")
    ap.add_argument("--big-baseline-repeats", type=int, default=1,
                    help="random_unstructured runs on transformer-302m (default 1: about a minute each)")
    ap.add_argument("--skip-baseline-big", action="store_true", help="no random_unstructured on transformer-302m")
    ap.add_argument("--skip-prune", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--train-steps", type=int, default=None, help="measured steps per variant (default 60)")
    ap.add_argument("--train-warmup", type=int, default=None, help="warm-up steps per variant (default 5)")
    ap.add_argument("--train-variants", nargs="+", help="subset of training variants (dense always runs)")
    ap.add_argument("--chunk-words", type=int, default=None,
                    help="chunk_words passed to sparsekit.prune (default: sparsekit's default; masks do not "
                         "depend on it)")
    ap.add_argument("--cold", action="store_true", help="no warm-up prune on a tiny model before the timed prune")
    ap.add_argument("--plain", action="store_true", help="plain-text tables instead of rich")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="before each measurement wait up to this many seconds for other processes to go "
                         "below 5%% CPU (default 60; 0 disables)")
    ap.add_argument("--max-retries", type=int, default=3,
                    help="prune runs disturbed by other processes (>5%% CPU) are repeated up to this many "
                         "times per model and implementation (default 3)")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        _worker_main(args._worker)
        return 0

    q = args.quick
    models = args.models or (["resnet50"] if q else list(MODELS))
    args.repeats = args.repeats if args.repeats is not None else (2 if q else 3)
    args.baseline_repeats = args.baseline_repeats if args.baseline_repeats is not None else (1 if q else 3)
    steps = args.train_steps if args.train_steps is not None else (10 if q else 60)
    warm = args.train_warmup if args.train_warmup is not None else (2 if q else 5)

    console = make_console(args.plain)

    t_start = time.perf_counter()
    report: dict = {
        "benchmark": "bench_prune", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "config": {"method": METHOD, "density": DENSITY, "quick": q, "models": models, "repeats": args.repeats,
                   "baseline_repeats": args.baseline_repeats, "big_baseline_repeats": args.big_baseline_repeats,
                   "skip_baseline_big": args.skip_baseline_big, "warm_prune": not args.cold,
                   "chunk_words": args.chunk_words,
                   "quiet_wait_s": args.quiet_wait, "max_retries": args.max_retries,
                   "train_steps": steps, "train_warmup": warm},
        "goals": {"speedup_vs_random_unstructured_min": GOAL_SPEEDUP, "masked_params_per_s_min": GOAL_RATE,
                  "extra_peak_bytes_per_masked_param_max": GOAL_EXTRA_BYTES,
                  "train_step_ratio_vs_dense_max": GOAL_TRAIN_RATIO},
    }
    if not args.skip_prune:
        print(f"prune benchmark: {', '.join(models)} (one fresh subprocess per run)", flush=True)
        report["prune"] = bench_prune(models, args)
    if not args.skip_train:
        print(f"training benchmark: resnet18, {warm} + {steps} interleaved steps per variant", flush=True)
        report["train"] = _run_worker({"task": "train", "steps": steps, "warmup": warm, "batch": 32,
                                       "method": METHOD, "density": DENSITY, "variants": args.train_variants},
                                      quiet_wait_s=args.quiet_wait)
    report["total_wall_s"] = time.perf_counter() - t_start
    seen = {report["machine"]["sparsekit_src_sha1"]}
    seen |= {r["sparsekit_src_sha1"] for e in report.get("prune", []) for i in IMPLS if e.get(i)
             for r in e[i]["details"]}
    if "train" in report:
        seen.add(report["train"]["sparsekit_src_sha1"])
    report["sparsekit_changed_during_run"] = len(seen) > 1

    render(report, console)
    if report["sparsekit_changed_during_run"]:
        console.print("WARNING: sparsekit's sources changed during the run (see sparsekit_src_sha1 in the JSON); "
                      "the numbers mix versions")
    if "train" in report:
        tv = {k: v for k, v in report["train"]["variants"].items() if _enforcing(k)}
        best = min(tv, key=lambda k: tv[k]["median_s"]) if tv else None
        cur = tv.get("sparsekit")
        if cur and best:
            console.print(f"fastest enforcement variant: {best} ({1e3 * tv[best]['median_s']:.1f} ms, "
                          f"{tv[best]['ratio_vs_dense']:.3f}x dense); sparsekit as installed: "
                          f"{1e3 * cur['median_s']:.1f} ms ({cur['ratio_vs_dense']:.3f}x dense)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"total {report['total_wall_s']:.0f} s; JSON written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
