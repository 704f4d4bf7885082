from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet_meta_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the model is on the meta device")
        yield


@pytest.fixture
def root() -> Path:
    return ROOT


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
