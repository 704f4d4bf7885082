#!/usr/bin/env python
"""Benchmark of sparsekit ticket files and mask codecs (CPU).

One run measures, prints four tables and writes JSON (``benchmarks/results/bench_ticket.json``):

1. **er tickets**: file size of ``save_ticket`` for an ``er`` ticket of
   ``sparsekit.prune(model, "er-balanced", density=0.01)`` on torchvision resnet50, vit_b_16 and a
   302M-parameter ``nn.TransformerEncoder`` (all built on the meta device: the masks are drawn on CPU
   and not attached, which is all the ticket needs), next to a bool mask (1 byte per masked param),
   bit-packed masks (masked params / 8) and the entropy bound of the drawn masks; median time of
   ``save_ticket`` and of ``load_ticket`` (which rebuilds every mask from the seed; rebuild
   throughput in masked params/s). The rebuilt masks are checked against the pruned ones.
2. **codecs**: 10M-element flat masks from ``sparsekit.rng.bernoulli_flat`` at densities 0.5, 0.1,
   0.01 and 0.001: encoding chosen by ``encode_mask`` (auto), payload bytes, bytes / entropy bound
   (``numel * H(p) / 8`` with ``p`` the realised density), median throughput (mask elements/s) of
   ``encode_mask`` (from the bool mask), ``encode_indices`` (from the kept indices, the path
   ``save_ticket`` uses), ``decode_indices`` and ``decode_mask``; round trips checked.
3. **rewired tickets**: the same masks as the single layer of a ``kind="rewired"`` ticket (an
   ``nn.Linear(5000, 2000, bias=False)`` pruned on the meta device, its compact mask replaced by
   ``CompactMask.from_bool(mask)``), through ``save_ticket``/``load_ticket``: file bytes, payload
   bytes and header overhead vs the entropy bound, median save/load time; round trip checked.
4. **weak ticket with kept weights**: torchvision resnet50 (random init, seed 0, CPU, eval mode)
   pruned at density 0.01; file size of ``save_ticket(weights="kept")`` in float32 and with
   ``weights_dtype=torch.float16`` next to ``torch.save`` of the (pruned) model's dense state_dict;
   median time of ``load_ticket`` + ``apply_ticket`` on a freshly built resnet50 vs
   ``torch.load(weights_only=True)`` + ``load_state_dict`` of the dense file (model construction
   outside the timer); whether the logits of the restored model (fixed input, eval mode) equal
   those of the pruned-and-saved model bit for bit.

Noise: like ``bench_prune.py`` (whose helpers it imports), the script waits (``--quiet-wait``)
until other processes use < 5% of the CPUs before each section, counts the CPU time other processes
used during every timed call and repeats disturbed calls (``--max-retries`` per measurement); the
JSON records all of it. File sizes do not depend on the machine.

Usage::

    python benchmarks/bench_ticket.py            # full run (~1 minute on 2 idle CPU cores)
    python benchmarks/bench_ticket.py --quick    # smoke run: resnet50 only, 1M-element masks, fewer repeats
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

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

DEFAULT_OUT = HERE / "results" / "bench_ticket.json"

METHOD = "er-balanced"
DENSITY = 0.01
CODEC_DENSITIES = (0.5, 0.1, 0.01, 0.001)
CODEC_NUMEL = 10_000_000
LINEAR_IN = 5000  # rewired tickets: nn.Linear(5000, numel // 5000).weight (2000 x 5000 = 10M elements)

GOAL_ER_FILE_BYTES = 16 * 1024  # er ticket file, whatever the model size
GOAL_BOUND_RATIO = 1.02  # codec payload / entropy bound
GOAL_DECODE_RATE = 100e6  # mask elements per second

MODELS = {
    "resnet50": "torchvision.models.resnet50()",
    "vit_b_16": "torchvision.models.vit_b_16()",
    "transformer-302m": ("nn.TransformerEncoder(nn.TransformerEncoderLayer(d_model=1024, nhead=16, "
                         "dim_feedforward=4096, batch_first=True), num_layers=24, enable_nested_tensor=False)"),
}


# --------------------------------------------------------------------------------------------------
# timing


class Timer:
    """Median wall time of a callable; calls disturbed by other processes are repeated."""

    def __init__(self, max_retries: int) -> None:
        self.max_retries = max_retries

    def __call__(self, fn, n: int, *, setup=None, warmup: int = 1) -> dict:
        """``fn(state)`` timed ``n`` times, ``state = setup()`` (outside the timer) before each call."""
        for _ in range(warmup):
            fn(setup() if setup else None)
        times, foreign_s, dropped = [], [], []
        while len(times) < n:
            state = setup() if setup else None
            gc.collect()
            f = Foreign()
            t0 = time.perf_counter()
            fn(state)
            dt = time.perf_counter() - t0
            fs, wall = f.stop()
            del state
            if is_noisy(fs, wall) and len(dropped) < self.max_retries:
                dropped.append(dt)
                continue
            times.append(dt)
            foreign_s.append(fs)
        noisy_kept = sum(is_noisy(f, t) for f, t in zip(foreign_s, times, strict=True))
        return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times,
                "foreign_cpu_s": foreign_s, "noisy_kept": noisy_kept, "dropped_noisy_s": dropped}


def _build(name: str, device: str | None = None):
    import torch
    import torchvision  # noqa: F401
    from torch import nn  # noqa: F401

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if device is None:
            return eval(MODELS[name])  # noqa: S307 - fixed table above
        with torch.device(device):
            return eval(MODELS[name])  # noqa: S307


def _prune_quiet(model, *args, **kw):
    import sparsekit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "model is on the meta device: masks ... not attached"
        return sparsekit.prune(model, *args, **kw)


def _same_masks(a, b) -> bool:
    import torch

    if a.compact_masks.keys() != b.compact_masks.keys():
        return False
    for k, ca in a.compact_masks.items():
        cb = b.compact_masks[k]
        if ca.nnz != cb.nnz:
            return False
        if ca.kept is not None and cb.kept is not None:
            if not torch.equal(ca.kept, cb.kept):
                return False
        elif not torch.equal(ca.bool(), cb.bool()):
            return False
    return True


# --------------------------------------------------------------------------------------------------
# 1. er tickets


def bench_er(models: list[str], timer: Timer, tmp: Path, args) -> list[dict]:
    import sparsekit
    from sparsekit.formats.codecs import entropy_bound_bytes

    out = []
    for name in models:
        wait_for_quiet(args.quiet_wait)
        model = _build(name, "meta")
        total = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        ticket = _prune_quiet(model, METHOD, density=DENSITY)
        prune_s = time.perf_counter() - t0
        recs = [r for r in ticket.layers if r.fqn in ticket.compact_masks]
        masked = sum(r.numel for r in recs)
        bound = sum(entropy_bound_bytes(r.numel, r.nonzeros) for r in recs)
        path = tmp / f"er-{name}.safetensors"
        save = timer(lambda _, t=ticket, f=path: sparsekit.save_ticket(t, f, overwrite=True), args.save_repeats)
        size = path.stat().st_size
        load = timer(lambda _, f=path: sparsekit.load_ticket(f), args.load_repeats if name != "transformer-302m"
                     else args.big_load_repeats)
        back = sparsekit.load_ticket(path)
        identical = _same_masks(ticket, back) and [r.nonzeros for r in back.layers] == [r.nonzeros for r in
                                                                                         ticket.layers]
        e = {
            "model": name, "constructor": MODELS[name], "total_params": total, "masked_params": masked,
            "masked_layers": len(recs), "nonzeros": sum(r.nonzeros for r in recs),
            "realised_density": ticket.realised_density, "prune_on_meta_s": prune_s,
            "file_bytes": size, "bool_mask_bytes": masked, "bitpacked_bytes": math.ceil(masked / 8),
            "bitpacked_per_layer_bytes": sum(math.ceil(r.numel / 8) for r in recs),
            "entropy_bound_bytes": bound, "save": save, "load": load,
            "rebuild_params_per_s": masked / load["median_s"], "rebuilt_masks_identical": identical,
            "goal_file_bytes_ok": size <= GOAL_ER_FILE_BYTES,
        }
        print(f"  [er] {name:<17} file {size:,} B, save {1e3 * save['median_s']:.1f} ms, load "
              f"{load['median_s']:.3f} s ({e['rebuild_params_per_s'] / 1e6:.0f}M params/s), identical {identical}",
              flush=True)
        out.append(e)
        del model, ticket, back
        gc.collect()
    return out


# --------------------------------------------------------------------------------------------------
# 2. codecs and 3. rewired tickets


def _draw(numel: int, p: float):
    from sparsekit import rng

    return rng.bernoulli_flat(rng.stream_key(0, f"bench_ticket/{p}", "mask"), numel, p)


def bench_codecs(numel: int, timer: Timer, args) -> list[dict]:
    import numpy as np

    from sparsekit.formats import codecs

    wait_for_quiet(args.quiet_wait)
    out = []
    for p in CODEC_DENSITIES:
        mask = _draw(numel, p)
        mask_np = mask.numpy()
        kept = mask.nonzero().squeeze(1)
        nnz = kept.numel()
        enc, payload, params = codecs.encode_mask(mask)
        bound = codecs.entropy_bound_bytes(numel, nnz)
        enc_i, payload_i, _ = codecs.encode_indices(kept, numel)
        idx = codecs.decode_indices(enc, payload, numel, params)
        dm = codecs.decode_mask(enc, payload, numel, params)
        ok = (enc_i == enc and payload_i == payload and np.array_equal(idx, kept.numpy())
              and np.array_equal(dm, mask_np))
        r = args.codec_repeats
        t_enc = timer(lambda _, m=mask: codecs.encode_mask(m), r)
        t_enci = timer(lambda _, i=kept: codecs.encode_indices(i, numel), r)
        code = (enc, payload, numel, params)
        t_di = timer(lambda _, c=code: codecs.decode_indices(*c), r)
        t_dm = timer(lambda _, c=code: codecs.decode_mask(*c), r)
        ratio = len(payload) / bound
        e = {
            "density": p, "numel": numel, "nnz": nnz, "realised_density": nnz / numel, "encoding": enc,
            "params": params, "bytes": len(payload), "entropy_bound_bytes": bound, "bytes_over_bound": ratio,
            "bitpacked_bytes": math.ceil(numel / 8), "bits_per_kept": 8 * len(payload) / nnz if nnz else None,
            "encode_mask": t_enc, "encode_indices": t_enci, "decode_indices": t_di, "decode_mask": t_dm,
            "encode_mask_elems_per_s": numel / t_enc["median_s"],
            "encode_indices_elems_per_s": numel / t_enci["median_s"],
            "decode_indices_elems_per_s": numel / t_di["median_s"],
            "decode_mask_elems_per_s": numel / t_dm["median_s"],
            "roundtrip_ok": bool(ok),
            "goal_bound_ok": ratio <= GOAL_BOUND_RATIO,
            "goal_decode_ok": min(numel / t_di["median_s"], numel / t_dm["median_s"]) >= GOAL_DECODE_RATE,
        }
        print(f"  [codec] p={p:<6} {enc:<4} {len(payload):>10,} B, {ratio:.4f} x bound, decode "
              f"{e['decode_indices_elems_per_s'] / 1e6:.0f}M / {e['decode_mask_elems_per_s'] / 1e6:.0f}M elem/s, "
              f"round trip {ok}", flush=True)
        out.append(e)
    return out


def _linear_shape(numel: int) -> tuple[int, int]:
    if numel % LINEAR_IN:
        raise ValueError(f"mask size {numel} is not a multiple of {LINEAR_IN}")
    return numel // LINEAR_IN, LINEAR_IN


def _rewired_ticket(mask):
    """A kind="rewired" ticket holding ``mask`` as the weight of one nn.Linear (built on meta)."""
    import torch
    from torch import nn

    from sparsekit.masks import CompactMask

    with torch.device("meta"):
        out_f, in_f = _linear_shape(mask.numel())
        model = nn.Sequential(nn.Linear(in_f, out_f, bias=False))
    t = _prune_quiet(model, "er-uniform", 0.1)
    t.kind = "rewired"
    t.compact_masks = {r.fqn: CompactMask.from_bool(mask.view(r.shape)) for r in t.layers}
    for r in t.layers:
        r.nonzeros = t.compact_masks[r.fqn].nnz
    return t


def bench_rewired(numel: int, timer: Timer, tmp: Path, args) -> list[dict]:
    import sparsekit
    from sparsekit.formats import codecs

    wait_for_quiet(args.quiet_wait)
    out = []
    for p in CODEC_DENSITIES:
        mask = _draw(numel, p)  # the same mask as in the codec table
        n = mask.numel()
        nnz = int(mask.sum())
        t = _rewired_ticket(mask)
        path = tmp / f"rewired-{p}.safetensors"
        save = timer(lambda _, tk=t, f=path: sparsekit.save_ticket(tk, f, overwrite=True), args.codec_repeats)
        size = path.stat().st_size
        load = timer(lambda _, f=path: sparsekit.load_ticket(f), args.codec_repeats)
        back = sparsekit.load_ticket(path)
        fqn = t.layers[0].fqn
        ok = back.kind == "rewired" and _same_masks(t, back) and back.layers[0].nonzeros == nnz
        with open(path, "rb") as f:
            hlen = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(hlen))
        off = header[f"mask/{fqn}"]["data_offsets"]
        payload = off[1] - off[0]
        meta = json.loads(header["__metadata__"]["ticket"])
        bound = codecs.entropy_bound_bytes(n, nnz)
        e = {
            "density": p, "numel": n, "nnz": nnz, "encoding": meta["layers"][0].get("encoding"),
            "file_bytes": size, "payload_bytes": payload, "overhead_bytes": size - payload,
            "entropy_bound_bytes": bound, "file_over_bound": size / bound, "payload_over_bound": payload / bound,
            "save": save, "load": load, "load_elems_per_s": n / load["median_s"], "roundtrip_ok": bool(ok),
            "goal_payload_bound_ok": payload / bound <= GOAL_BOUND_RATIO,
        }
        print(f"  [rewired] p={p:<6} file {size:,} B ({size / bound:.4f} x bound), save "
              f"{1e3 * save['median_s']:.1f} ms, load {1e3 * load['median_s']:.1f} ms, round trip {ok}", flush=True)
        out.append(e)
        del t, back, mask
    return out


# --------------------------------------------------------------------------------------------------
# 4. weak ticket with kept weights


def bench_weak(timer: Timer, tmp: Path, args) -> dict:
    import torch
    import torchvision

    import sparsekit

    wait_for_quiet(args.quiet_wait)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    ticket = sparsekit.prune(model, METHOD, density=DENSITY)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    p32 = sparsekit.save_ticket(ticket, tmp / "weak-f32.safetensors", weights="kept", overwrite=True)
    p16 = sparsekit.save_ticket(ticket, tmp / "weak-f16.safetensors", weights="kept",
                                weights_dtype=torch.float16, overwrite=True)
    pdense = tmp / "dense.pt"
    torch.save(model.state_dict(), pdense)
    save_kept = timer(lambda _: sparsekit.save_ticket(ticket, tmp / "weak-f32.safetensors", weights="kept",
                                                      overwrite=True), args.weak_repeats)
    save_dense = timer(lambda _, m=model: torch.save(m.state_dict(), pdense), args.weak_repeats)
    total = sum(p.numel() for p in model.parameters())
    masked = sum(r.numel for r in ticket.layers if r.fqn in ticket.compact_masks)
    nonzeros = sum(r.nonzeros for r in ticket.layers if r.fqn in ticket.compact_masks)
    del model

    def fresh():
        torch.manual_seed(123)  # different weights from the saved model
        return torchvision.models.resnet50().eval()

    def load_apply(m, path):
        sparsekit.apply_ticket(m, sparsekit.load_ticket(path))

    def load_dense(m):
        m.load_state_dict(torch.load(pdense, weights_only=True))

    t_kept = timer(lambda m: load_apply(m, p32), args.weak_repeats, setup=fresh)
    t_kept16 = timer(lambda m: load_apply(m, p16), args.weak_repeats, setup=fresh)
    t_dense = timer(load_dense, args.weak_repeats, setup=fresh)

    def logits(path=None):
        m = fresh()
        if path is None:
            load_dense(m)
        else:
            load_apply(m, path)
        with torch.no_grad():
            return m(x)

    out32, out16, outd = logits(p32), logits(p16), logits()
    sd_buf = io.BytesIO()
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in torch.load(pdense, weights_only=True).items()},
               sd_buf)
    return {
        "model": "torchvision.models.resnet50() (random init, seed 0)", "total_params": total,
        "masked_params": masked, "nonzeros": nonzeros, "input": [2, 3, 224, 224],
        "kept_f32_bytes": p32.stat().st_size, "kept_f16_bytes": p16.stat().st_size,
        "dense_torch_save_bytes": pdense.stat().st_size, "dense_f16_torch_save_bytes": len(sd_buf.getvalue()),
        "save_kept_f32": save_kept, "save_dense": save_dense,
        "load_apply_kept_f32": t_kept, "load_apply_kept_f16": t_kept16, "load_dense": t_dense,
        "logits_equal_f32": bool(torch.equal(out32, ref)),
        "logits_equal_dense": bool(torch.equal(outd, ref)),
        "logits_max_abs_diff_f16": float((out16 - ref).abs().max()),
        "logits_max_abs_ref": float(ref.abs().max()),
        "note": "construction of the fresh resnet50 is outside the timer; times include reading the file "
                "(from the page cache)",
    }


# --------------------------------------------------------------------------------------------------
# output


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1 << 20 else f"{n / 2**20:,.1f} MiB"


def _rate(x: float) -> str:
    return f"{x / 1e6:,.0f}M"


def _ms(t: dict) -> str:
    return f"{1e3 * t['median_s']:.1f}"


def render(report: dict, console) -> None:
    info = report["machine"]
    console.print(f"\nsparsekit {info['sparsekit']}  torch {info['torch']}  threads {info['torch_threads']}  "
                  f"cpus {info['cpu_count']}  ({info.get('cpu_model', '?')})")
    cfg = report["config"]
    if report.get("er"):
        head = ["model", "params", "masked params", "ticket file", "bool masks", "bit-packed", "entropy bound",
                "file / bit-packed", "save ms", "load s", "rebuild Mparam/s", "identical"]
        rows = [[e["model"], f"{e['total_params']:,}", f"{e['masked_params']:,}",
                 f"{e['file_bytes']:,} B{_ok(e['goal_file_bytes_ok'])}", _kib(e["bool_mask_bytes"]),
                 _kib(e["bitpacked_bytes"]), _kib(e["entropy_bound_bytes"]),
                 f"1/{e['bitpacked_bytes'] / e['file_bytes']:,.0f}", _ms(e["save"]), f"{e['load']['median_s']:.3f}",
                 f"{e['rebuild_params_per_s'] / 1e6:.0f}", str(e["rebuilt_masks_identical"])]
                for e in report["er"]]
        _table(console, f"er ticket files: prune(model, {METHOD!r}, density={DENSITY}) on meta, save_ticket / "
                        f"load_ticket (rebuilds the masks from the seed); goal: file <= {GOAL_ER_FILE_BYTES // 1024} "
                        f"KiB; medians of {cfg['save_repeats']} saves, {cfg['load_repeats']} loads "
                        f"({cfg['big_load_repeats']} for transformer-302m)", head, rows)
    if report.get("codecs"):
        head = ["density", "realised", "encoding", "bytes", "bits/kept", "bytes / bound", "encode_mask",
                "encode_indices", "decode_indices", "decode_mask", "round trip"]
        rows = [[f"{e['density']:g}", f"{e['realised_density']:.5f}", e["encoding"] + (
                 f" k={e['params']['k']}" if "k" in e["params"] else ""), f"{e['bytes']:,}",
                 "-" if e["bits_per_kept"] is None else f"{e['bits_per_kept']:.2f}",
                 f"{e['bytes_over_bound']:.4f}{_ok(e['goal_bound_ok'])}",
                 _rate(e["encode_mask_elems_per_s"]), _rate(e["encode_indices_elems_per_s"]),
                 _rate(e["decode_indices_elems_per_s"]) + _ok(e["decode_indices_elems_per_s"] >= GOAL_DECODE_RATE),
                 _rate(e["decode_mask_elems_per_s"]) + _ok(e["decode_mask_elems_per_s"] >= GOAL_DECODE_RATE),
                 str(e["roundtrip_ok"])] for e in report["codecs"]]
        _table(console, f"mask codecs on {report['codecs'][0]['numel']:,}-element masks (bernoulli_flat): throughput "
                        f"in mask elements/s, median of {cfg['codec_repeats']}; goals: bytes / entropy bound <= "
                        f"{GOAL_BOUND_RATIO}, decode >= {GOAL_DECODE_RATE / 1e6:.0f}M elements/s", head, rows)
    if report.get("rewired"):
        head = ["density", "encoding", "file bytes", "payload bytes", "overhead bytes", "entropy bound",
                "file / bound", "payload / bound", "save ms", "load ms", "load Melem/s", "round trip"]
        rows = [[f"{e['density']:g}", e["encoding"], f"{e['file_bytes']:,}", f"{e['payload_bytes']:,}",
                 f"{e['overhead_bytes']:,}", f"{e['entropy_bound_bytes']:,.0f}", f"{e['file_over_bound']:.4f}",
                 f"{e['payload_over_bound']:.4f}{_ok(e['goal_payload_bound_ok'])}", _ms(e["save"]), _ms(e["load"]),
                 f"{e['load_elems_per_s'] / 1e6:,.0f}", str(e["roundtrip_ok"])] for e in report["rewired"]]
        shp = _linear_shape(report["rewired"][0]["numel"])
        _table(console, f"kind='rewired' tickets: the same masks as the weight of one nn.Linear({shp[1]}, {shp[0]}), "
                        f"save_ticket / load_ticket (medians of {cfg['codec_repeats']}); overhead = header "
                        f"(JSON metadata) + framing; goal: payload / bound <= {GOAL_BOUND_RATIO}", head, rows)
    w = report.get("weak")
    if w:
        dense = w["dense_torch_save_bytes"]
        head = ["file", "bytes", "vs dense", "save ms", "load (+apply) ms", "vs dense load", "logits equal"]
        rows = [
            ["save_ticket(weights='kept')", f"{w['kept_f32_bytes']:,}", f"{w['kept_f32_bytes'] / dense:.4f}",
             _ms(w["save_kept_f32"]), _ms(w["load_apply_kept_f32"]),
             f"{w['load_apply_kept_f32']['median_s'] / w['load_dense']['median_s']:.3f}",
             str(w["logits_equal_f32"])],
            ["  ... weights_dtype=float16", f"{w['kept_f16_bytes']:,}", f"{w['kept_f16_bytes'] / dense:.4f}", "-",
             _ms(w["load_apply_kept_f16"]),
             f"{w['load_apply_kept_f16']['median_s'] / w['load_dense']['median_s']:.3f}",
             f"max |diff| {w['logits_max_abs_diff_f16']:.2e}"],
            ["torch.save(state_dict) (dense)", f"{dense:,}", "1", _ms(w["save_dense"]), _ms(w["load_dense"]), "1",
             str(w["logits_equal_dense"])],
            ["  ... (dense, float16, size only)", f"{w['dense_f16_torch_save_bytes']:,}",
             f"{w['dense_f16_torch_save_bytes'] / dense:.4f}", "-", "-", "-", "-"],
        ]
        _table(console, f"weak ticket with kept weights: resnet50 (random init, CPU, eval), {METHOD} density "
                        f"{DENSITY} ({w['nonzeros']:,} of {w['masked_params']:,} masked weights kept); load = "
                        f"load_ticket + apply_ticket on a fresh resnet50 vs torch.load(weights_only=True) + "
                        f"load_state_dict; medians of {cfg['weak_repeats']}; logits on a fixed 2x3x224x224 "
                        "input vs the pruned model", head, rows)
    notes = []
    for sec in ("er", "codecs", "rewired"):
        for e in report.get(sec) or []:
            for k, v in e.items():
                if isinstance(v, dict) and "dropped_noisy_s" in v and (v["dropped_noisy_s"] or v["noisy_kept"]):
                    notes.append(f"{sec}/{e.get('model', e.get('density'))}/{k}: {len(v['dropped_noisy_s'])} "
                                 f"disturbed call(s) repeated, {v['noisy_kept']} kept")
    for k, v in (w or {}).items():
        if isinstance(v, dict) and "dropped_noisy_s" in v and (v["dropped_noisy_s"] or v["noisy_kept"]):
            notes.append(f"weak/{k}: {len(v['dropped_noisy_s'])} disturbed call(s) repeated, {v['noisy_kept']} kept")
    for n in notes:
        console.print("note: " + n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: resnet50 only, 1M-element codec masks, fewer repeats")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="models for the er ticket table")
    ap.add_argument("--skip-er", action="store_true")
    ap.add_argument("--skip-codecs", action="store_true")
    ap.add_argument("--skip-rewired", action="store_true")
    ap.add_argument("--skip-weak", action="store_true")
    ap.add_argument("--save-repeats", type=int, default=5, help="save_ticket calls per er ticket (default 5)")
    ap.add_argument("--load-repeats", type=int, default=5, help="load_ticket calls per er ticket (default 5)")
    ap.add_argument("--big-load-repeats", type=int, default=3,
                    help="load_ticket calls for transformer-302m (default 3, ~1-2 s each)")
    ap.add_argument("--codec-repeats", type=int, default=5, help="calls per codec / rewired measurement (default 5)")
    ap.add_argument("--weak-repeats", type=int, default=3, help="calls per weak-ticket measurement (default 3)")
    ap.add_argument("--plain", action="store_true", help="plain-text tables instead of rich")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="before each section wait up to this many seconds for other processes to go below "
                         "5%% CPU (default 30; 0 disables)")
    ap.add_argument("--max-retries", type=int, default=3,
                    help="timed calls disturbed by other processes (>5%% CPU) are repeated up to this many "
                         "times per measurement (default 3)")
    args = ap.parse_args(argv)
    if args.quick:
        args.save_repeats = min(args.save_repeats, 3)
        args.load_repeats = min(args.load_repeats, 3)
        args.codec_repeats = min(args.codec_repeats, 3)
        args.weak_repeats = min(args.weak_repeats, 2)
    models = args.models or (["resnet50"] if args.quick else list(MODELS))
    numel = 1_000_000 if args.quick else CODEC_NUMEL
    warnings.simplefilter("ignore", UserWarning)

    console = make_console(args.plain)

    import sparsekit.formats.codecs as codecs_mod  # imported once: the whole run uses this version

    t_start = time.perf_counter()
    timer = Timer(args.max_retries)
    report: dict = {
        "benchmark": "bench_ticket", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
        "codecs_py_sha1": hashlib.sha1(Path(codecs_mod.__file__).read_bytes()).hexdigest()[:12],
        "config": {"method": METHOD, "density": DENSITY, "quick": args.quick, "models": models,
                   "codec_numel": numel, "codec_densities": list(CODEC_DENSITIES),
                   "save_repeats": args.save_repeats, "load_repeats": args.load_repeats,
                   "big_load_repeats": args.big_load_repeats, "codec_repeats": args.codec_repeats,
                   "weak_repeats": args.weak_repeats, "quiet_wait_s": args.quiet_wait,
                   "max_retries": args.max_retries},
        "goals": {"er_file_bytes_max": GOAL_ER_FILE_BYTES, "bytes_over_entropy_bound_max": GOAL_BOUND_RATIO,
                  "decode_elems_per_s_min": GOAL_DECODE_RATE},
    }
    with tempfile.TemporaryDirectory(prefix="bench_ticket-") as d:
        tmp = Path(d)
        if not args.skip_er:
            print(f"er tickets: {', '.join(models)}", flush=True)
            report["er"] = bench_er(models, timer, tmp, args)
        if not args.skip_codecs:
            print(f"codecs: {numel:,}-element masks at densities {', '.join(map(str, CODEC_DENSITIES))}", flush=True)
            report["codecs"] = bench_codecs(numel, timer, args)
        if not args.skip_rewired:
            print("rewired tickets", flush=True)
            report["rewired"] = bench_rewired(numel, timer, tmp, args)
        if not args.skip_weak:
            print("weak ticket with kept weights: resnet50", flush=True)
            report["weak"] = bench_weak(timer, tmp, args)
    report["total_wall_s"] = time.perf_counter() - t_start
    report["sparsekit_src_sha1_end"] = sparsekit_fingerprint()
    report["codecs_py_sha1_end"] = hashlib.sha1(Path(codecs_mod.__file__).read_bytes()).hexdigest()[:12]
    report["sparsekit_changed_during_run"] = report["sparsekit_src_sha1_end"] != report["machine"]["sparsekit_src_sha1"]

    render(report, console)
    if report["sparsekit_changed_during_run"]:
        which = " (sparsekit/formats/codecs.py among them)" if report["codecs_py_sha1_end"] != report[
            "codecs_py_sha1"] else ""
        console.print(f"note: sparsekit's source files changed on disk during the run{which}; the numbers are for "
                      "the version imported at the start (sparsekit_src_sha1 / codecs_py_sha1 at start and end are "
                      "in the JSON)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"total {report['total_wall_s']:.0f} s; JSON written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
