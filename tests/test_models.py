"""sparsekit.models: the paper's CIFAR networks (§3, App. A.9.1, A.11, A.12), the registry and the CLI spec."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.cli._models import load_model
from sparsekit.errors import SparsekitError
from sparsekit.models import get_model, list_models, register_model
from sparsekit.models.resnet import BasicBlock, Bottleneck, ResNet
from sparsekit.models.vgg import VGG

ALL = ["mlp", "resnet110", "resnet18", "resnet20", "resnet50", "vgg16", "vgg19"]
CONV_NETS = [n for n in ALL if n != "mlp"]


# --- parameter counts, by hand ---------------------------------------------------------------------------

def conv(cin: int, cout: int, k: int = 3) -> int:
    """A bias-free k x k convolution."""
    return cin * cout * k * k


def bn(c: int) -> int:
    """BatchNorm weight and bias (running statistics are buffers)."""
    return 2 * c


def linear(i: int, o: int) -> int:
    return i * o + o


def basic(cin: int, cout: int) -> int:
    """BasicBlock without its shortcut: 3x3 conv + BN, 3x3 conv + BN."""
    return conv(cin, cout) + bn(cout) + conv(cout, cout) + bn(cout)


def bottleneck(cin: int, planes: int) -> int:
    """Bottleneck without its shortcut: 1x1 reduce + BN, 3x3 + BN, 1x1 expand (x4) + BN."""
    return conv(cin, planes, 1) + bn(planes) + conv(planes, planes) + bn(planes) + conv(planes, 4 * planes, 1) \
        + bn(4 * planes)


def proj(cin: int, cout: int) -> int:
    """Projection shortcut: 1x1 conv + BN."""
    return conv(cin, cout, 1) + bn(cout)


def vgg16_params(c: int) -> int:
    return (conv(3, 64) + bn(64) + conv(64, 64) + bn(64)                              # stage 1
            + conv(64, 128) + bn(128) + conv(128, 128) + bn(128)                      # stage 2
            + conv(128, 256) + bn(256) + 2 * (conv(256, 256) + bn(256))               # stage 3
            + conv(256, 512) + bn(512) + 2 * (conv(512, 512) + bn(512))               # stage 4
            + 3 * (conv(512, 512) + bn(512))                                          # stage 5
            + linear(512, c))


def vgg19_params(c: int) -> int:
    return (conv(3, 64) + bn(64) + conv(64, 64) + bn(64)                              # stage 1
            + conv(64, 128) + bn(128) + conv(128, 128) + bn(128)                      # stage 2
            + conv(128, 256) + bn(256) + 3 * (conv(256, 256) + bn(256))               # stage 3
            + conv(256, 512) + bn(512) + 3 * (conv(512, 512) + bn(512))               # stage 4
            + 4 * (conv(512, 512) + bn(512))                                          # stage 5
            + linear(512, c))


def resnet18_params(c: int) -> int:
    return (conv(3, 64) + bn(64)                                                      # stem
            + 2 * basic(64, 64)                                                       # layer1
            + basic(64, 128) + proj(64, 128) + basic(128, 128)                        # layer2
            + basic(128, 256) + proj(128, 256) + basic(256, 256)                      # layer3
            + basic(256, 512) + proj(256, 512) + basic(512, 512)                      # layer4
            + linear(512, c))


def resnet50_params(c: int) -> int:
    return (conv(3, 64) + bn(64)                                                      # stem
            + bottleneck(64, 64) + proj(64, 256) + 2 * bottleneck(256, 64)            # layer1
            + bottleneck(256, 128) + proj(256, 512) + 3 * bottleneck(512, 128)        # layer2
            + bottleneck(512, 256) + proj(512, 1024) + 5 * bottleneck(1024, 256)      # layer3
            + bottleneck(1024, 512) + proj(1024, 2048) + 2 * bottleneck(2048, 512)    # layer4
            + linear(2048, c))


def cifar_resnet_params(n: int, c: int) -> int:
    """ResNet-(6n+2) with projection shortcuts where the shape changes."""
    return (conv(3, 16) + bn(16)                                                      # stem
            + n * basic(16, 16)                                                       # layer1
            + basic(16, 32) + proj(16, 32) + (n - 1) * basic(32, 32)                  # layer2
            + basic(32, 64) + proj(32, 64) + (n - 1) * basic(64, 64)                  # layer3
            + linear(64, c))


def mlp_params(c: int) -> int:
    return linear(64, 512) + linear(512, 512) + linear(512, c)


HAND = {
    "vgg16": vgg16_params,
    "vgg19": vgg19_params,
    "resnet18": resnet18_params,
    "resnet50": resnet50_params,
    "resnet20": lambda c: cifar_resnet_params(3, c),
    "resnet110": lambda c: cifar_resnet_params(18, c),
    "mlp": mlp_params,
}

# The hand counts above, evaluated (also in the builders' docstrings); ResNet18 and ResNet50 match the
# usual CIFAR references (11,173,962 and 23,520,842).
EXPECTED = {
    ("vgg16", 10): 14_724_042, ("vgg16", 100): 14_770_212,
    ("vgg19", 10): 20_035_018, ("vgg19", 100): 20_081_188,
    ("resnet18", 10): 11_173_962, ("resnet18", 100): 11_220_132,
    ("resnet50", 10): 23_520_842, ("resnet50", 100): 23_705_252,
    ("resnet20", 10): 272_474, ("resnet20", 100): 278_324,
    ("resnet110", 10): 1_730_714, ("resnet110", 100): 1_736_564,
    ("mlp", 10): 301_066, ("mlp", 100): 347_236,
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **kwargs) -> nn.Module:
    """Built on the meta device: shapes only, no memory and no init cost."""
    with torch.device("meta"):
        return get_model(name, **kwargs)


def n_conv_linear(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", ALL)
def test_parameter_count_matches_hand_count(name, num_classes):
    expected = HAND[name](num_classes)
    assert expected == EXPECTED[name, num_classes]
    assert n_params(meta_model(name, num_classes=num_classes)) == expected


def test_projection_shortcuts_cost_what_the_docstring_says():
    # ResNet20 with He et al.'s option A (zero padding) would lack exactly the two projections.
    assert proj(16, 32) + proj(32, 64) == 2_752
    for name, count in [("resnet20", 2), ("resnet110", 2), ("resnet18", 3), ("resnet50", 4)]:
        model = meta_model(name)
        shortcuts = [m.downsample for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))
                     and m.downsample is not None]
        assert len(shortcuts) == count, name


@pytest.mark.parametrize("name, convs, linears", [
    ("vgg16", 13, 1), ("vgg19", 16, 1), ("resnet18", 17 + 3, 1), ("resnet50", 49 + 4, 1),
    ("resnet20", 19 + 2, 1), ("resnet110", 109 + 2, 1), ("mlp", 0, 3),
])
def test_layer_counts(name, convs, linears):
    model = meta_model(name)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == linears
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_vgg_structure():
    model = get_model("vgg16")
    assert isinstance(model, VGG)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and model.avgpool.output_size == 1
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(convs)
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)


def test_resnet_cifar_stem_has_no_maxpool():
    for name, stem in [("resnet18", 64), ("resnet20", 16)]:
        model = meta_model(name)
        assert isinstance(model, ResNet)
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert model.conv1.out_channels == stem
        assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


# --- forward passes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vgg19", "resnet20"])  # App. A.12
def test_forward_tiny_imagenet(name):
    model = get_model(name, num_classes=200).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 200)


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "resnet110"])
def test_resnets_take_digits_as_1x8x8_images(name):
    model = get_model(name, in_channels=1).eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_vgg_in_channels():
    model = get_model("vgg16", in_channels=1, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 5)


def test_mlp_digits():
    model = get_model("mlp")
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [512, 512, 10]
    with torch.no_grad():
        assert model(torch.randn(2, 64)).shape == (2, 10)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)  # Flatten first
    small = sparsekit.models.mlp(4, (), 3, activation="tanh")
    assert [type(m) for m in small] == [nn.Flatten, nn.Linear]
    assert [type(m) for m in sparsekit.models.mlp(4, [8], 3, activation="GELU")] == \
        [nn.Flatten, nn.Linear, nn.GELU, nn.Linear]


# --- CIFAR forward and pruning (one build per model keeps the file fast) -----------------------------------

@pytest.mark.parametrize("name", ALL)
def test_forward_cifar_and_prune_er_balanced(name):
    torch.manual_seed(0)
    model = get_model(name, num_classes=100, **({"in_features": 3 * 32 * 32} if name == "mlp" else {})).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 100)
    assert torch.isfinite(out).all()

    ticket = sparsekit.prune(model, method="er-balanced", density=0.05)
    assert len(ticket.layers) == n_conv_linear(model)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert sum(r.numel for r in ticket.layers) == weights
    assert ticket.realised_density == pytest.approx(0.05, rel=0.05)
    assert sparsekit.is_pruned(model)
    with torch.no_grad():
        assert model(x).shape == (2, 100)


# --- registry --------------------------------------------------------------------------------------------

def test_list_models():
    assert list_models() == ALL
    assert set(sparsekit.models.__all__) >= {"get_model", "list_models", "register_model", *ALL}


def test_get_model_is_case_insensitive():
    assert isinstance(meta_model(" VGG19 "), VGG)


def test_get_model_unknown_name():
    with pytest.raises(SparsekitError) as e:
        get_model("vgg17")
    msg = str(e.value)
    assert "unknown model 'vgg17' (did you mean vgg19, vgg16?)" in msg
    assert "valid models: " + ", ".join(ALL) in msg
    with pytest.raises(TypeError, match="model name must be a string"):
        get_model(16)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_classes": 0}, ValueError, "num_classes must be a positive integer, got 0"),
    ({"num_classes": -3}, ValueError, "num_classes must be a positive integer, got -3"),
    ({"num_classes": 2.5}, TypeError, "num_classes must be a positive integer, got float 2.5"),
    ({"num_classes": True}, TypeError, "num_classes must be a positive integer, got bool True"),
    ({"num_classes": "10"}, TypeError, "num_classes must be a positive integer, got str '10'"),
    ({"in_channels": 0}, ValueError, "in_channels must be a positive integer, got 0"),
    ({"depth": 20}, TypeError, r"model 'resnet20' got unknown argument\(s\) 'depth'; it accepts: num_classes, "
                               "in_channels"),
])
def test_get_model_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        get_model("resnet20", **kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"hidden": "512"}, TypeError, "hidden must be a sequence of positive integers"),
    ({"hidden": 512}, TypeError, "hidden must be a sequence of positive integers"),
    ({"hidden": (512, 0)}, ValueError, r"hidden\[1\] must be a positive integer, got 0"),
    ({"in_features": 0}, ValueError, "in_features must be a positive integer, got 0"),
    ({"activation": "swish"}, ValueError, "activation must be one of relu, tanh, gelu, sigmoid, got 'swish'"),
    ({"activation": nn.ReLU}, TypeError, "activation must be a string"),
    ({"in_channels": 1}, TypeError, "model 'mlp' got unknown argument"),
])
def test_mlp_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        get_model("mlp", **kwargs)


def test_register_model():
    from sparsekit.models import _MODELS

    @register_model("Test-Tiny")
    def tiny(num_classes: int = 10) -> nn.Module:
        return nn.Linear(4, num_classes)

    try:
        assert "test-tiny" in list_models()
        assert get_model("test-tiny", num_classes=3).out_features == 3
        with pytest.raises(ValueError, match="already registered"):
            register_model("test-tiny")(tiny)
    finally:
        _MODELS.pop("test-tiny", None)
    with pytest.raises(TypeError, match="must accept a num_classes argument"):
        register_model("test-no-classes")(lambda: nn.Linear(1, 1))
    with pytest.raises(ValueError, match="without ':'"):
        register_model("a:b")
    assert list_models() == ALL


# --- CLI spec --------------------------------------------------------------------------------------------

def test_cli_spec_builds_sparsekit_models():
    model = load_model("sparsekit:resnet20:num_classes=100")
    assert isinstance(model, ResNet) and model.fc.out_features == 100
    assert isinstance(load_model("sparsekit:vgg16"), VGG)
    assert load_model("sparsekit:mlp:hidden=(32,),num_classes=4")[-1].out_features == 4


@pytest.mark.parametrize("spec, error, match", [
    ("sparsekit:resnet21", SparsekitError, "sparsekit has no model 'resnet21'; valid models: " + ", ".join(ALL)),
    ("sparsekit:", SparsekitError, "sparsekit has no model ''"),
    ("sparsekit:resnet20:depth=3", SparsekitError, r"unknown argument\(s\) 'depth'; it accepts: num_classes"),
    ("sparsekit:resnet20:num_classes=0", SparsekitError, "num_classes must be a positive integer, got 0"),
    ("sparsekit:resnet20:num_classes", ValueError, "expected KEY=VALUE"),
])
def test_cli_spec_errors(spec, error, match):
    with pytest.raises(error, match=match):
        load_model(spec)


def test_cli_state_dict_with_sparsekit_arch(tmp_path):
    torch.manual_seed(1)
    source = get_model("resnet20", in_channels=1)
    path = tmp_path / "r20.pt"
    torch.save(source.state_dict(), path)
    model = load_model(str(path), arch="sparsekit:resnet20:in_channels=1")
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    with pytest.raises(SparsekitError, match="shapes differ"):
        load_model(str(path), arch="sparsekit:resnet20")
    with pytest.raises(SparsekitError, match="--arch is only used with state_dict files"):
        load_model("sparsekit:resnet20", arch="sparsekit:resnet20")
