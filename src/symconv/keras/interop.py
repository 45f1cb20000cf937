"""Move weights between the PyTorch layers and their Keras twins.

=================================  ==================================
torch (:mod:`symconv.nn`)          Keras (:mod:`symconv.keras`)
=================================  ==================================
``SymmetricConv1d/2d/3d``          ``SymmetricConv1D/2D/3D``
``ConvTwist``                      ``ConvTwist2D``
``GlobalConv1d``                   ``GlobalConv1D``
``TopKPool``                       ``TopKPool`` (no weights)
=================================  ==================================

:func:`torch_to_keras` and :func:`keras_to_torch` copy the weights of one layer into its
twin (creating the twin when none is given) and dispatch on the layer's type. The twins
use the same parametrisation, so a copy is a transpose (torch keeps ``(out, in, *k)``,
Keras ``(*k, in, out)``) and the two compute the same function up to float rounding:

    >>> import symconv, symconv.keras
    >>> t = symconv.SymmetricConv2d(3, 8, 3, padding=1, symmetry={"hv": 4})
    >>> k = symconv.keras.torch_to_keras(t)   # a built SymmetricConv2D, same weights

Checks before copying: the weight-carrying configuration (channels, kernel size, groups,
bias, symmetry plan and ``share_bias``) must match, or a ``ValueError`` names the first
difference. With ``strict=True`` (default) so must everything else that changes the
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

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import torch
from keras import ops
from torch import nn

from symconv.keras.global_conv import GlobalConv1D
from symconv.keras.pooling import TopKPool as KerasTopKPool
from symconv.keras.symmetric import SymmetricConv1D, SymmetricConv2D, SymmetricConv3D
from symconv.keras.twist import PADDING_MODES, ConvTwist2D
from symconv.nn.global_conv import GlobalConv1d
from symconv.nn.pooling import TopKPool as TorchTopKPool
from symconv.nn.symmetric import SymmetricConv1d, SymmetricConv2d, SymmetricConv3d
from symconv.nn.twist import ConvTwist

__all__ = ["keras_to_torch", "torch_to_keras"]

_SYMMETRIC = {
    SymmetricConv1d: SymmetricConv1D,
    SymmetricConv2d: SymmetricConv2D,
    SymmetricConv3d: SymmetricConv3D,
}
_PAIRS: dict[type, type] = {
    **_SYMMETRIC,
    ConvTwist: ConvTwist2D,
    GlobalConv1d: GlobalConv1D,
    TorchTopKPool: KerasTopKPool,
}
_ACTIVATIONS: dict[Any, str] = {
    nn.ReLU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    torch.relu: "relu",
    torch.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    torch.nn.functional.relu: "relu",
}


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
    keras_cls = _twin_class(torch_layer, "torch_layer")
    if keras_layer is None:
        keras_layer = _make_keras_twin(torch_layer, data_format)
    elif type(keras_layer) is not keras_cls:
        raise TypeError(
            f"the Keras twin of {type(torch_layer).__name__} is {keras_cls.__name__}, got "
            f"{type(keras_layer).__name__}"
        )
    _ensure_built(keras_layer, torch_layer)
    _check_pair(torch_layer, keras_layer, strict)
    for target, array in zip(
        _keras_weights(keras_layer), _torch_arrays_as_keras(torch_layer), strict=True
    ):
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
    torch_cls = next((t for t, k in _PAIRS.items() if type(keras_layer) is k), None)
    if torch_cls is None:
        raise TypeError(
            f"keras_layer: no torch twin for {type(keras_layer).__name__}; supported: "
            f"{', '.join(k.__name__ for k in _PAIRS.values())}"
        )
    if _keras_weights(keras_layer) is None:
        raise ValueError(
            f"keras_layer {keras_layer.name!r} is not built: call it on an input (or "
            "`.build(input_shape)`) first"
        )
    if torch_layer is None:
        torch_layer = _make_torch_twin(keras_layer)
    elif type(torch_layer) is not torch_cls:
        raise TypeError(
            f"the torch twin of {type(keras_layer).__name__} is {torch_cls.__name__}, got "
            f"{type(torch_layer).__name__}"
        )
    _check_pair(torch_layer, keras_layer, strict)
    arrays = [np.asarray(ops.convert_to_numpy(v)) for v in _keras_weights(keras_layer)]
    with torch.no_grad():
        for param, array in zip(
            _torch_params(torch_layer), _keras_arrays_as_torch(torch_layer, arrays), strict=True
        ):
            param.copy_(torch.as_tensor(np.ascontiguousarray(array)).to(param))
    if hasattr(torch_layer, "clear_cache"):
        torch_layer.clear_cache()
    return torch_layer


# -- pairing ----------------------------------------------------------------------------
def _twin_class(torch_layer: nn.Module, argname: str) -> type:
    cls = _PAIRS.get(type(torch_layer))
    if cls is None:
        raise TypeError(
            f"{argname}: no Keras twin for {type(torch_layer).__name__}; supported: "
            f"{', '.join(t.__name__ for t in _PAIRS)}"
        )
    return cls


def _mismatch(what: str, torch_value: object, keras_value: object) -> None:
    if torch_value != keras_value:
        raise ValueError(
            f"mismatched {what}: the torch layer has {torch_value!r}, the Keras layer "
            f"{keras_value!r}"
        )


def _torch_padding_as_keras(layer: nn.Module) -> str | None:
    """The Keras padding computing the same as a torch conv's, or ``None`` if there is none."""
    if layer.padding_mode != "zeros":
        return None
    if isinstance(layer.padding, str):
        return layer.padding
    if not any(layer.padding):
        return "valid"
    same = all(
        s == 1 and d * (k - 1) % 2 == 0 and p == d * (k - 1) // 2
        for p, k, s, d in zip(
            layer.padding, layer.kernel_size, layer.stride, layer.dilation, strict=True
        )
    )
    return "same" if same else None


def _keras_activation_name(k: keras.layers.Layer) -> object:
    """The Keras layer's activation as compared with torch's: ``None`` for the identity,
    else its serialized form (the name, for a built-in)."""
    name = keras.activations.serialize(k.activation)
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
            if isinstance(t, GlobalConv1d)
            else f" ({type(t).__name__} has no activation: apply it after the torch layer)"
        )
        raise ValueError(
            f"mismatched activation: the torch layer has {torch_name!r}, the Keras layer "
            f"{keras_name!r}{hint}; pass strict=False to copy the weights anyway"
        )


def _check_pair(t: nn.Module, k: keras.layers.Layer, strict: bool) -> None:
    if isinstance(t, tuple(_SYMMETRIC)):
        _mismatch("in_channels", t.in_channels, int(k.kernel.shape[-2]) * k.groups)
        _mismatch("out_channels / filters", t.out_channels, k.filters)
        _mismatch("kernel_size", tuple(t.kernel_size), tuple(k.kernel_size))
        _mismatch("groups", t.groups, k.groups)
        _mismatch("bias / use_bias", t.bias is not None, k.use_bias)
        _mismatch("share_bias", t.plan.share_bias, k.plan.share_bias)
        _mismatch("symmetry channel layout", t.plan.blocks, k.plan.blocks)
        if strict:
            _mismatch("stride / strides", tuple(t.stride), tuple(k.strides))
            _mismatch("dilation / dilation_rate", tuple(t.dilation), tuple(k.dilation_rate))
            _mismatch("padding (as Keras padding)", _torch_padding_as_keras(t), k.padding)
    elif isinstance(t, ConvTwist):
        _mismatch("in_channels", t.in_channels, int(k.kernel.shape[2]) * k.groups)
        _mismatch("out_channels / filters", t.out_channels, k.filters)
        _mismatch("kernel_size", tuple(t.kernel_size), tuple(k.kernel_size))
        _mismatch("groups", t.groups, k.groups)
        _mismatch("bias / use_bias", t.bias is not None, k.use_bias)
        if strict:
            _mismatch("stride / strides", tuple(t.stride), tuple(k.strides))
            _mismatch("padding_mode", t.padding_mode, k.padding_mode)
    elif isinstance(t, GlobalConv1d):
        _mismatch("in_channels", t.in_channels, int(k.center.shape[0]))
        _mismatch("out_channels / filters", t.out_channels, k.filters)
        _mismatch("bias / use_bias", t.bias is not None, k.use_bias)
        if strict:
            _mismatch("reduction", t.reduction, k.reduction)
    elif isinstance(t, TorchTopKPool):
        _mismatch("k", t.k, k.k)
    if strict and not isinstance(t, TorchTopKPool):
        _check_activation(t, k)


# -- weights ----------------------------------------------------------------------------
def _torch_params(t: nn.Module) -> list[torch.Tensor]:
    if isinstance(t, tuple(_SYMMETRIC)):
        names = ["weight", "bias"]
    elif isinstance(t, ConvTwist):
        names = ["weight", "twist_x", "twist_y", "center_x", "center_y", "bias"]
    elif isinstance(t, GlobalConv1d):
        names = ["center", "surround", "bias"]
    else:
        names = []
    return [p for p in (getattr(t, n) for n in names) if p is not None]


def _keras_weights(k: keras.layers.Layer) -> list[Any] | None:
    """The Keras variables in the order of :func:`_torch_params`, or ``None`` if unbuilt."""
    if isinstance(k, KerasTopKPool):
        return []
    if not k.built:
        return None
    if isinstance(k, tuple(_SYMMETRIC.values())):
        names = ["kernel", "bias"]
    elif isinstance(k, ConvTwist2D):
        names = ["kernel", "twist_x", "twist_y", "center_x", "center_y", "bias"]
    else:
        names = ["center", "surround", "bias"]
    return [v for v in (getattr(k, n) for n in names) if v is not None]


def _to_numpy(p: torch.Tensor) -> np.ndarray:
    p = p.detach().cpu()
    if p.dtype not in (torch.float32, torch.float64):
        p = p.float()  # numpy has no bfloat16
    return p.numpy()


def _kernel_perm(ndim: int) -> tuple[int, ...]:
    """torch ``(out, in, *k)`` -> Keras ``(*k, in, out)``."""
    return (*range(2, ndim + 2), 1, 0)


def _torch_arrays_as_keras(t: nn.Module) -> list[np.ndarray]:
    arrays = [_to_numpy(p) for p in _torch_params(t)]
    if isinstance(t, tuple(_SYMMETRIC)):
        arrays[0] = arrays[0].transpose(_kernel_perm(t.plan.ndim))
    elif isinstance(t, ConvTwist):
        arrays[0] = arrays[0].transpose(_kernel_perm(2))
        arrays[1] = arrays[1].transpose(2, 1, 0)  # taps: (out, in, n) -> (n, in, out)
        arrays[2] = arrays[2].transpose(2, 1, 0)
    return arrays


def _keras_arrays_as_torch(t: nn.Module, arrays: list[np.ndarray]) -> list[np.ndarray]:
    if isinstance(t, tuple(_SYMMETRIC)):
        arrays[0] = arrays[0].transpose(np.argsort(_kernel_perm(t.plan.ndim)))
    elif isinstance(t, ConvTwist):
        arrays[0] = arrays[0].transpose(np.argsort(_kernel_perm(2)))
        arrays[1] = arrays[1].transpose(2, 1, 0)
        arrays[2] = arrays[2].transpose(2, 1, 0)
    return arrays


# -- twins ------------------------------------------------------------------------------
def _input_shape(k: keras.layers.Layer, in_channels: int, rank: int) -> tuple[int | None, ...]:
    if getattr(k, "data_format", "channels_last") == "channels_first":
        return (None, in_channels) + (None,) * rank
    return (None,) * (rank + 1) + (in_channels,)


def _ensure_built(k: keras.layers.Layer, t: nn.Module) -> None:
    if k.built or isinstance(k, KerasTopKPool):
        return
    if isinstance(t, tuple(_SYMMETRIC)):
        k.build(_input_shape(k, t.in_channels, t.plan.ndim))
    elif isinstance(t, ConvTwist):
        k.build(_input_shape(k, t.in_channels, 2))
    else:
        k.build((None, None, t.in_channels))


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


def _make_keras_twin(t: nn.Module, data_format: str) -> keras.layers.Layer:
    if isinstance(t, tuple(_SYMMETRIC)):
        padding = _torch_padding_as_keras(t)
        if padding is None:
            raise ValueError(
                f"padding={t.padding!r} (padding_mode={t.padding_mode!r}) has no Keras "
                "equivalent: Keras offers 'valid' and 'same' with zero padding"
            )
        return _SYMMETRIC[type(t)](
            t.out_channels,
            t.kernel_size,
            strides=t.stride,
            padding=padding,
            data_format=data_format,
            dilation_rate=t.dilation,
            groups=t.groups,
            use_bias=t.bias is not None,
            symmetry=t.plan.spec_dict(),
            share_bias=t.plan.share_bias,
        )
    if isinstance(t, ConvTwist):
        if t.padding_mode not in PADDING_MODES:
            raise ValueError(
                f"padding_mode={t.padding_mode!r} has no ConvTwist2D equivalent; it supports "
                f"{tuple(PADDING_MODES)}"
            )
        return ConvTwist2D(
            t.out_channels,
            t.kernel_size,
            strides=t.stride,
            groups=t.groups,
            use_bias=t.bias is not None,
            init_max=t.init_max,
            padding_mode=t.padding_mode,
            data_format=data_format,
        )
    if isinstance(t, GlobalConv1d):
        return GlobalConv1D(
            t.out_channels,
            reduction=t.reduction,
            activation=_keras_activation(t.activation),
            use_bias=t.bias is not None,
        )
    return KerasTopKPool(t.k)


def _make_torch_twin(k: keras.layers.Layer) -> nn.Module:
    if isinstance(k, tuple(_SYMMETRIC.values())):
        if k.padding == "same" and max(k.strides) > 1:
            raise ValueError(
                f"padding='same' with strides={k.strides} has no torch equivalent (torch "
                "allows padding='same' only with stride 1)"
            )
        torch_cls = next(t for t, kc in _SYMMETRIC.items() if kc is type(k))
        return torch_cls(
            int(k.kernel.shape[-2]) * k.groups,
            k.filters,
            k.kernel_size,
            stride=k.strides,
            padding=k.padding,
            dilation=k.dilation_rate,
            groups=k.groups,
            bias=k.use_bias,
            symmetry=k.plan.spec_dict(),
            share_bias=k.plan.share_bias,
        )
    if isinstance(k, ConvTwist2D):
        return ConvTwist(
            int(k.kernel.shape[2]) * k.groups,
            k.filters,
            k.kernel_size[0],
            stride=k.strides,
            groups=k.groups,
            bias=k.use_bias,
            init_max=k.init_max,
            padding_mode=k.padding_mode,
        )
    if isinstance(k, GlobalConv1D):
        activation = None
        if k.activation is not None:
            name = keras.activations.serialize(k.activation)
            torch_act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}.get(name)
            if torch_act is None and name != "linear":
                raise ValueError(
                    f"activation={name!r} has no known torch equivalent; create the torch "
                    "layer yourself and pass it as torch_layer"
                )
            activation = None if torch_act is None else torch_act()
        return GlobalConv1d(
            int(k.center.shape[0]),
            k.filters,
            bias=k.use_bias,
            reduction=k.reduction,
            activation=activation,
        )
    return TorchTopKPool(k.k)
