"""Deploy a pruned network with ONNX: prune, export in compact storage, run in onnxruntime, compare.

    python examples/onnx_deploy.py [--density 0.05] [--out-dir DIR]

Needs ``pip install "sparsekit[onnx]"`` (onnx, onnxruntime; onnxscript for torch's dynamo exporter).
Uses the paper's CIFAR ResNet-20 with random weights (train it first in real use: see quickstart.py);
runs on CPU in a few seconds.

The file is small because only the kept weights and a compact code of their positions are stored;
onnxruntime rebuilds the dense weights when it creates the session, so inference takes as long as with
the dense model (unstructured zeros give no speed-up in onnxruntime).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import sparsekit
from sparsekit.formats.onnx import check_onnx, ort_session
from sparsekit.models import get_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--out-dir", type=Path, default=None, help="where to write the .onnx files (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.density, args.out_dir or Path(tmp))


def run(density: float, out_dir: Path) -> None:
    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10)
    sparsekit.prune(model, method="er-balanced", density=density, seed=0)
    # ... train here (sparsekit.fit_weak or your own loop); masked weights stay zero ...

    path = out_dir / "resnet20-sparse.onnx"
    report = sparsekit.export_onnx(model, path, input_shape=(1, 3, 32, 32), storage="compact", overwrite=True)
    print(report.summary())
    dense = out_dir / "resnet20-dense.onnx"
    sparsekit.export_onnx(model, dense, input_shape=(1, 3, 32, 32), storage="dense", verify=False, overwrite=True)
    print(f"file size: compact {path.stat().st_size:,} bytes, dense {dense.stat().st_size:,} bytes "
          f"({100 * path.stat().st_size / dense.stat().st_size:.1f}% of dense)")

    # deployment side: only onnxruntime and numpy are needed from here on
    images = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    session = ort_session(path)  # or onnxruntime.InferenceSession(str(path))
    (logits,) = session.run(None, {session.get_inputs()[0].name: images})
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    print(f"batch of {len(images)}: max abs diff onnxruntime vs PyTorch {np.abs(logits - expected).max():.2e}, "
          f"same predictions: {bool((logits.argmax(1) == expected.argmax(1)).all())}")
    for name, file in (("compact", path), ("dense", dense)):
        c = check_onnx(file, runs=20)
        print(f"{name}: session creation {c.session_s * 1e3:.1f} ms, median latency {c.median_ms:.2f} ms (batch 1)")


if __name__ == "__main__":
    main()
