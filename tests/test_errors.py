"""Bad input gets a clear error naming the argument and the fix."""

from __future__ import annotations

import pytest
from models import mlp
from torch import nn

import sparsekit


@pytest.mark.parametrize("density", [0, -0.1, 1.5, float("nan"), 50])
def test_bad_density(density):
    with pytest.raises(ValueError, match="density must be in"):
        sparsekit.prune(mlp(), "er-uniform", density)


@pytest.mark.parametrize("density", ["0.1", None, True])
def test_density_wrong_type(density):
    with pytest.raises(TypeError, match="density must be a number"):
        sparsekit.prune(mlp(), "er-uniform", density)


def test_sparsity_hint():
    with pytest.raises(ValueError, match="did you pass a sparsity"):
        sparsekit.prune(mlp(), "er-uniform", 99)


def test_unknown_method_lists_valid_names():
    with pytest.raises(sparsekit.UnknownMethodError) as e:
        sparsekit.prune(mlp(), "er-magic", 0.1)
    msg = str(e.value)
    for name in sparsekit.list_methods():
        assert name in msg
    assert "register" in msg


def test_short_names_and_config_objects():
    assert sparsekit.get_method("pyramidal").name == "er-pyramidal"
    assert sparsekit.get_method("ER-ERK").name == "er-erk"
    t = sparsekit.prune(mlp(), sparsekit.Method("balanced", {"redistribute": False}), 0.5)
    assert t.method == "er-balanced" and t.method_options == {"redistribute": False}


def test_unknown_option():
    with pytest.raises(TypeError, match="unknown option.*accepted options: redistribute"):
        sparsekit.prune(mlp(), "er-balanced", 0.1, redistribtue=False)


def test_no_prunable_layers():
    with pytest.raises(sparsekit.NoPrunableLayersError, match="no prunable weights"):
        sparsekit.prune(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "er-uniform", 0.1)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        sparsekit.prune("resnet18", "er-uniform", 0.1)


@pytest.mark.parametrize("kw,match", [({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"),
                                      ({"flow": "fix"}, "flow must be"), ({"exact": "yes"}, "exact")])
def test_bad_arguments(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sparsekit.prune(mlp(), "er-uniform", 0.1, **kw)


def test_list_methods():
    assert sparsekit.list_methods() == ["er-balanced", "er-erk", "er-from", "er-layerwise", "er-pyramidal",
                                        "er-snip", "er-synflow", "er-uniform"]
    assert sparsekit.list_methods("*p*") == ["er-pyramidal", "er-snip"]


def test_register_method_and_duplicate_name():
    @sparsekit.register_method("er-test-half", description="test")
    def half(layers, density):
        return {L.fqn: density for L in layers}

    try:
        assert "er-test-half" in sparsekit.list_methods()
        with pytest.raises(ValueError, match="already registered"):
            sparsekit.register_method("er-test-half", description="x")(half)
    finally:
        from sparsekit import _registry

        _registry._METHODS.pop("er-test-half")
