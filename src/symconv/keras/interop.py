"""Move weights between the PyTorch layers and their Keras twins.

=================================  ==================================
torch (:mod:`symconv.nn`)          Keras (:mod:`symconv.keras`)
=================================  ==================================
``SymmetricConv1d/2d/3d``          ``SymmetricConv1D/2D/3D``
``ConvTwist``                      ``ConvTwist2D``
``GlobalConv1d``                   ``GlobalConv1D``
``TopKPool``                       ``TopKPool`` (no weights)
``GroupConv1d/2d/3d``              ``GroupConv1D/2D/3D``
``GroupPool``                      ``GroupPool`` (no weights)
``GroupBatchNorm1d/2d/3d``         ``GroupBatchNormalization`` (any rank)
=================================  ==================================

The pairs are :data:`symconv.registry.FAMILIES`. :func:`torch_to_keras` and
:func:`keras_to_torch` copy the weights of one layer into its twin (creating the twin when
none is given) with one loop for every family: the layer's spec
(:class:`~symconv.core.spec.LayerSpec`) lists its parameters with their torch and Keras
layouts, so a copy is a transpose (torch keeps ``(out, in, *k)``, Keras ``(*k, in, out)``)
and the twins compute the same function up to float rounding. Kept statistics (a batch
norm's running mean and variance) are copied like the parameters:

    >>> import symconv, symconv.keras
    >>> t = symconv.SymmetricConv2d(3, 8, 3, padding=1, symmetry={"hv": 4})
    >>> k = symconv.keras.torch_to_keras(t)   # a built SymmetricConv2D, same weights

Checks before copying: the weight-carrying settings of the spec (channels, kernel size,
groups, bias, symmetry plan and ``share_bias``, ...) must match, or a ``ValueError`` names
the first difference. With ``strict=True`` (default) so must everything else that changes the
output (strides, dilation, padding, reduction, padding mode, activation, ``k``), so that a
successful copy means "same outputs"; ``strict=False`` copies weights between layers that
differ only there. Activations: the torch convolutions have none, so their Keras twin's
must be ``None``/``'linear'``; a ``GlobalConv1d`` activation ``nn.ReLU``/``nn.Tanh``/
``nn.Sigmoid`` (or ``torch.relu``/``torch.tanh``/``torch.sigmoid``) must meet the Keras
activation of that name, and ``None`` meets ``'linear'``; any other torch callable cannot
be compared, so ``strict=True`` rejects it. Twins created here map activations the same way.

Layout: Keras layers are ``channels_last`` unless the Keras layer (or the
``data_format`` argument when a twin is created) says ``channels_first``; a torch input
``(N, C, *spatial)`` corresponds to a Keras input ``(N, *spatial, C)`` (or the same
tensor with ``channels_first``). ``GlobalConv1D`` and ``TopKPool`` take
``(batch, n, channels)`` where the torch layers take ``(N, channels, n)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import torch
from keras import ops
from torch import nn

from symconv.core.spec import LayerSpec
from symconv.core.validate import check_bool
from symconv.registry import FAMILIES, Family, family_of

__all__ = ["keras_to_torch", "torch_to_keras"]

_ACTIVATIONS: dict[Any, str] = {
    nn.ReLU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    torch.relu: "relu",
    torch.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    torch.nn.functional.relu: "relu",
}
_TORCH_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


# -- public API -------------------------------------------------------------------------
def torch_to_keras(
    torch_layer: nn.Module,
    keras_layer: keras.layers.Layer | None = None,
    *,
    data_format: str = "channels_last",
    strict: bool = True,
) -> keras.layers.Layer:
    """Copy ``torch_layer``'s weights into its Keras twin and return the twin.

    Args:
        torch_layer: a :mod:`symconv.nn` layer (see the module table).
        keras_layer: the twin to write into; built on the fly if it is not built yet.
            ``None`` creates a twin with the matching configuration (and
            ``data_format``).
        data_format: the layout of a twin created here (ignored otherwise).
        strict: also require the settings that change the output to match.

    Raises ``TypeError`` for a layer without a twin or a wrong pair, ``ValueError`` for
    mismatched configurations (naming the first difference).
    """
    family = _family(torch_layer, "torch_layer", "Keras")
    keras_cls = family.keras_class
    if keras_layer is None:
        keras_layer = _make_keras_twin(torch_layer, keras_cls, data_format)
    elif type(keras_layer) is not keras_cls:
        raise TypeError(
            f"the Keras twin of {type(torch_layer).__name__} is {keras_cls.__name__}, got "
            f"{type(keras_layer).__name__}"
        )
    spec: LayerSpec = torch_layer.spec
    if spec.params() and not keras_layer.built:
        keras_layer.build(spec.keras_input_shape(getattr(keras_layer, "data_format", None)))
    _check_pair(torch_layer, keras_layer, strict)
    for layout in spec.params():
        if not layout.present:
            continue
        target = getattr(keras_layer, layout.keras_name)
        array = _to_numpy(getattr(torch_layer, layout.torch_name))
        if layout.to_keras is not None:
            array = array.transpose(layout.to_keras)
        # A copy: `array` may view the torch parameter's memory, and JAX keeps a CPU numpy
        # buffer without copying, so the Keras weight would follow later torch updates.
        target.assign(np.array(array, dtype=target.dtype))
    return keras_layer


def keras_to_torch(
    keras_layer: keras.layers.Layer,
    torch_layer: nn.Module | None = None,
    *,
    strict: bool = True,
) -> nn.Module:
    """Copy a built Keras layer's weights into its torch twin and return the twin.

    Args:
        keras_layer: a built :mod:`symconv.keras` layer (``TopKPool`` needs no build).
        torch_layer: the twin to write into; ``None`` creates one (float32, CPU).
        strict: also require the settings that change the output to match.

    Raises like :func:`torch_to_keras`.
    """
    family = _family(keras_layer, "keras_layer", "torch")
    spec: LayerSpec = keras_layer.spec
    if spec.params() and not keras_layer.built:
        raise ValueError(
            f"keras_layer {keras_layer.name!r} is not built: call it on an input (or "
            "`.build(input_shape)`) first"
        )
    torch_cls = family.torch_class
    if torch_layer is None:
        torch_layer = _make_torch_twin(keras_layer, torch_cls)
    elif type(torch_layer) is not torch_cls:
        raise TypeError(
            f"the torch twin of {type(keras_layer).__name__} is {torch_cls.__name__}, got "
            f"{type(torch_layer).__name__}"
        )
    _check_pair(torch_layer, keras_layer, strict)
    with torch.no_grad():
        for layout in spec.params():
            if not layout.present:
                continue
            array = _numpy(getattr(keras_layer, layout.keras_name))
            if layout.to_torch is not None:
                array = array.transpose(layout.to_torch)
            param = getattr(torch_layer, layout.torch_name)
            param.copy_(torch.as_tensor(np.ascontiguousarray(array)).to(param))
    if hasattr(torch_layer, "clear_cache"):
        torch_layer.clear_cache()
    return torch_layer


# -- pairing ----------------------------------------------------------------------------
def _family(layer: object, argname: str, other: str) -> Family:
    side = "torch" if other == "Keras" else "keras"
    family = family_of(layer)
    cls = type(layer)
    if family is not None and getattr(family, side) != f"{cls.__module__}:{cls.__qualname__}":
        raise TypeError(
            f"{argname} must be a {'torch' if side == 'torch' else 'Keras'} layer, got the "
            f"{'Keras' if side == 'torch' else 'torch'} layer {cls.__name__}"
        )
    if family is None or family.keras is None:
        supported = dict.fromkeys(getattr(f, side).rpartition(":")[2] for f in FAMILIES if f.keras)
        raise TypeError(
            f"{argname}: no {other} twin for {type(layer).__name__} in symconv.registry "
            f"(interop copies weights between registered pairs); supported: "
            f"{', '.join(supported)}"
        )
    return family


def _numpy(weight: Any) -> np.ndarray:
    """A Keras weight's values, read with the backend's own conversion: numpy's conversion
    of a ``keras.Variable``, a ``tf.Variable`` or a torch tensor (which
    ``keras.ops.convert_to_numpy`` uses) warns that ``__array__`` takes no ``copy``."""
    value = getattr(weight, "value", weight)  # the backend's own tensor or variable
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return np.asarray(value.numpy())
    if backend == "torch":
        return value.detach().cpu().numpy()
    return np.asarray(ops.convert_to_numpy(value))


def _check_pair(t: nn.Module, k: keras.layers.Layer, strict: bool) -> None:
    strict = check_bool("strict", strict)
    mismatch = t.spec.describe_mismatch(k.spec, strict)
    if mismatch is not None:
        raise ValueError(mismatch)
    if strict and t.spec.params():
        _check_activation(t, k)


def _keras_activation_name(k: keras.layers.Layer) -> object:
    """The Keras layer's activation as compared with torch's: ``None`` for the identity,
    else its serialized form (the name, for a built-in)."""
    activation = getattr(k, "activation", None)  # normalization layers have none
    if activation is None:
        return None
    name = keras.activations.serialize(activation)
    return None if name == "linear" else name


def _check_activation(t: nn.Module, k: keras.layers.Layer) -> None:
    torch_activation = getattr(t, "activation", None)  # only GlobalConv1d has one
    if torch_activation is None:
        torch_name = None
    else:
        torch_name = _ACTIVATIONS.get(type(torch_activation)) or _ACTIVATIONS.get(torch_activation)
        if torch_name is None:
            raise ValueError(
                f"activation={torch_activation!r} of the torch layer has no known Keras "
                "equivalent, so strict=True cannot check that the twins compute the same; "
                "pass strict=False to copy the weights anyway"
            )
    keras_name = _keras_activation_name(k)
    if torch_name != keras_name:
        hint = (
            ""
            if hasattr(t, "activation")
            else f" ({type(t).__name__} has no activation: apply it after the torch layer)"
        )
        raise ValueError(
            f"mismatched activation: the torch layer has {torch_name!r}, the Keras layer "
            f"{keras_name!r}{hint}; pass strict=False to copy the weights anyway"
        )


# -- weights ----------------------------------------------------------------------------
def _to_numpy(p: torch.Tensor) -> np.ndarray:
    p = p.detach().cpu()
    if p.dtype not in (torch.float32, torch.float64):
        p = p.float()  # numpy has no bfloat16
    return p.numpy()


# -- twins ------------------------------------------------------------------------------
def _keras_activation(activation: Callable[..., Any] | None) -> str | None:
    if activation is None:
        return None
    name = _ACTIVATIONS.get(type(activation)) or _ACTIVATIONS.get(activation)
    if name is None:
        raise ValueError(
            f"activation={activation!r} has no known Keras equivalent; create the Keras "
            "layer yourself and pass it as keras_layer"
        )
    return name


def _make_keras_twin(t: nn.Module, keras_cls: type, data_format: str) -> keras.layers.Layer:
    kwargs = t.spec.keras_kwargs(data_format)
    if hasattr(t, "activation"):
        kwargs["activation"] = _keras_activation(t.activation)
    return keras_cls(**kwargs)


def _make_torch_twin(k: keras.layers.Layer, torch_cls: type) -> nn.Module:
    kwargs = k.spec.torch_kwargs_from_keras()
    if "activation" in inspect.signature(torch_cls).parameters and k.activation is not None:
        name = keras.activations.serialize(k.activation)
        torch_act = _TORCH_ACTIVATIONS.get(name)
        if torch_act is None and name != "linear":
            raise ValueError(
                f"activation={name!r} has no known torch equivalent; create the torch "
                "layer yourself and pass it as torch_layer"
            )
        kwargs["activation"] = None if torch_act is None else torch_act()
    return torch_cls(**kwargs)
