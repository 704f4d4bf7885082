"""Regenerate formats/vectors/rng-v1.json from the pure-Python reference in tests/_reference_rng.py.

Only run this when the spec's major version changes: the file is the contract that tests check.
    python formats/vectors/generate.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(root / "tests"))
import _reference_rng as ref  # noqa: E402


def bits_hex(bits: list[bool]) -> str:
    """Little-endian bit packing (element i is bit i % 8 of byte i // 8), as hex."""
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            out[i // 8] |= 1 << (i % 8)
    return out.hex()


def main() -> None:
    cases = []
    for seed, fqn, purpose in [(0, "fc.weight", "mask"), (1, "fc.weight", "mask"), (0, "conv1.weight", "mask"),
                               (2**64 - 1, "layer1.0.conv2.weight", "mask"), (12345, "héllo.wörld", "flow-row")]:
        k = ref.key(seed, fqn, purpose)
        cases.append({
            "seed": str(seed), "fqn": fqn, "purpose": purpose,
            "name_hash": f"{ref.text_hash(purpose + chr(0) + fqn):016x}",
            "key": f"{k:016x}",
            "words": [f"{ref.word(k, j):016x}" for j in range(8)],
            "lanes": [ref.lane(k, i) for i in range(16)],
            "bernoulli": {str(p): bits_hex(ref.bernoulli(k, 257, p)) for p in (0.001, 0.1, 0.3, 0.5, 0.9)},
            "exact": {str(p): bits_hex(ref.exact(k, 257, p)) for p in (0.01, 0.1, 0.5)},
            "choice": [ref.choice(k, c, n) for c, n in [(0, 3), (1, 9), (2, 1000), (3, 2**31 - 1)]],
        })
    doc = {
        "rng": "sk-ctr64-v1",
        "mix64": {f"{z:016x}": f"{ref.mix(z):016x}" for z in (0, 1, 2**63, 2**64 - 1, 0x0123456789ABCDEF)},
        "threshold": {str(p): ref.thresh(p) for p in (0.0, 1e-12, 0.001, 0.01, 0.1, 0.5, 0.999999999999, 1.0)},
        "packing": "bit i of the mask is bit (i % 8) of byte (i // 8); 257 elements",
        "cases": cases,
    }
    path = Path(__file__).with_name("rng-v1.json")
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
