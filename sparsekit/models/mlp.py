"""A fully connected network: ``Flatten``, then ``Linear`` + activation per hidden layer, then ``Linear``.

The paper's theory (§2) is stated for fully connected ReLU networks; its experiments use the
convolutional networks of :mod:`sparsekit.models.vgg` and :mod:`sparsekit.models.resnet`. This MLP is
the small network sparsekit's own checks use, by default 64-512-512-10 for scikit-learn's 8x8 digits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ._common import check_positive_int

__all__ = ["mlp", "ACTIVATIONS"]

#: Accepted ``activation`` names.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


def mlp(
    in_features: int = 64,
    hidden: Sequence[int] = (512, 512),
    num_classes: int = 10,
    *,
    activation: str = "relu",
) -> nn.Sequential:
    """``Flatten`` + ``Linear``/activation per hidden width + ``Linear(.., num_classes)``.

    Inputs of any shape ``(batch, ...)`` with ``in_features`` entries per sample work (e.g. digits as
    ``(batch, 64)`` or ``(batch, 1, 8, 8)``). Linear layers keep PyTorch's default initialisation.

    Args:
        in_features: entries per input sample.
        hidden: widths of the hidden layers, in order; empty gives a single ``Linear`` layer.
        num_classes: number of outputs.
        activation: one of ``"relu"``, ``"tanh"``, ``"gelu"``, ``"sigmoid"``.

    Returns:
        An ``nn.Sequential``; with the defaults (64-512-512-10) it has 301,066 parameters.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: a size is below 1 or ``activation`` is unknown.
    """
    check_positive_int(in_features, "in_features")
    check_positive_int(num_classes, "num_classes")
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of positive integers (e.g. (512, 512)), got "
                        f"{type(hidden).__name__} {hidden!r}")
    widths = [check_positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden)]
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a string, one of {', '.join(ACTIVATIONS)}; got "
                        f"{type(activation).__name__}")
    make_act = ACTIVATIONS.get(activation.lower())
    if make_act is None:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    size = in_features
    for width in widths:
        layers += [nn.Linear(size, width), make_act()]
        size = width
    layers.append(nn.Linear(size, num_classes))
    return nn.Sequential(*layers)
