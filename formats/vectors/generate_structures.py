"""Regenerate formats/vectors/structures-v1.json (formats/TICKET.md §11) from the pure-Python reference.

The reference (tests/_reference_structures.py) shares no code with sparsekit.structures. Only run this
when the spec's major version changes: the file is the contract that tests check.
    python formats/vectors/generate_structures.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root / "tests"))
import _reference_structures as ref  # noqa: E402
from generate import bits_hex  # noqa: E402

#: (structure, seed, fqn, shape, groups, p, flow): small weights covering edge blocks, kernels, groups,
#: trailing N:M groups, swap repairs and a fan-in fallback (a wide layer with too few edges for its inputs)
CASES = [
    ("block:4x4", 0, "fc.weight", (10, 37), 1, 0.1, True),
    ("block:1x4", 7, "fc.weight", (12, 40), 1, 0.05, True),
    ("block:16x16", 3, "big.weight", (40, 70), 1, 0.2, True),
    ("block:2x3", 5, "conv.weight", (8, 2, 3, 3), 2, 0.15, True),
    ("block:4x4", 0, "fc.weight", (10, 37), 1, 0.1, False),
    ("fanin", 0, "fc.weight", (12, 40), 1, 0.1, True),
    ("fanin", 11, "conv.weight", (8, 3, 3, 3), 1, 0.05, True),
    ("fanin", 2, "gconv.weight", (8, 2, 3, 3), 2, 0.2, True),
    ("fanin", 4, "wide.weight", (3, 100), 1, 0.05, True),
    ("fanin", 0, "fc.weight", (12, 40), 1, 0.1, False),
    ("nm:2:4", 0, "fc.weight", (8, 30), 1, 0.5, True),
    ("nm:2:4", 9, "conv.weight", (4, 3, 3, 3), 1, 0.5, True),
    ("nm:1:4", 1, "fc.weight", (2, 64), 1, 0.25, True),
]


def main() -> None:
    cases = []
    for structure, seed, fqn, shape, groups, p, flow in CASES:
        if structure.startswith("block:"):
            bh, bw = (int(x) for x in structure[6:].split("x"))
            mask, rep = ref.block(seed, fqn, shape, p, bh, bw, groups, flow)
        elif structure == "fanin":
            mask, rep = ref.fanin(seed, fqn, shape, p, groups, flow)
        else:
            n, m = (int(x) for x in structure[3:].split(":"))
            mask, rep = ref.nm(seed, fqn, shape, n, m, groups, flow)
        cases.append({"structure": structure, "seed": str(seed), "fqn": fqn, "shape": list(shape),
                      "layout": [0, 1, groups], "density": p, "flow": "repair" if flow else None,
                      "nonzeros": sum(mask), "repair": rep, "mask": bits_hex(mask)})
    doc = {"rng": "sk-ctr64-v1", "spec": "formats/TICKET.md section 11",
           "packing": "bit i of the mask (C-order element i) is bit (i % 8) of byte (i // 8)", "cases": cases}
    path = Path(__file__).with_name("structures-v1.json")
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
