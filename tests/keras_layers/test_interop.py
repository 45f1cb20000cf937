"""torch <-> Keras weight interop: every layer computes the same function in both."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from _arrays import np_
from _tolerance import assert_close_to_scale
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from symconv import ConvTwist, GlobalConv1d, SymmetricConv1d, SymmetricConv2d, SymmetricConv3d
from symconv import TopKPool as TorchTopKPool
from symconv.keras import (
    ConvTwist2D,
    GlobalConv1D,
    SymmetricConv2D,
    SymmetricConv3D,
    TopKPool,
    keras_to_torch,
    torch_to_keras,
)
from symconv.symmetry import allowed_keys

TORCH_SYM = {1: SymmetricConv1d, 2: SymmetricConv2d, 3: SymmetricConv3d}


def run_torch(layer, x, *args):
    with torch.no_grad():
        return layer(torch.from_numpy(x), *args).numpy()


def to_keras_layout(x, data_format):
    """torch (N, C, *spatial) -> the Keras input for ``data_format``."""
    return x if data_format == "channels_first" else np.moveaxis(x, 1, -1)


@st.composite
def symmetric_configs(draw):
    nd = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 2]))
    key = draw(st.sampled_from(allowed_keys(nd)))
    per_group = 2 ** len(key)
    out = groups * per_group + (0 if groups > 1 else draw(st.integers(0, 2)))
    spec = {key: per_group * draw(st.integers(0, groups))}
    k = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = draw(st.sampled_from(["valid", "same", "int"]))
    stride = (1,) * nd if padding != "valid" else tuple(draw(st.integers(1, 2)) for _ in range(nd))
    if padding == "int":  # an int padding Keras can express: 'same' for odd kernels
        k = tuple(kk | 1 for kk in k)
        padding = tuple(kk // 2 for kk in k)
    return dict(
        nd=nd,
        torch_kwargs=dict(
            in_channels=2 * groups,
            out_channels=out,
            kernel_size=k,
            stride=stride,
            padding=padding,
            groups=groups,
            bias=draw(st.booleans()),
            symmetry=spec,
            share_bias=draw(st.booleans()),
        ),
        data_format=draw(st.sampled_from(["channels_last", "channels_first"])),
    )


@settings(max_examples=10)
@given(cfg=symmetric_configs(), seed=st.integers(0, 2**16))
def test_symmetric_parity_both_ways(cfg, seed):
    torch.manual_seed(seed)
    t = TORCH_SYM[cfg["nd"]](**cfg["torch_kwargs"])
    k = torch_to_keras(t, data_format=cfg["data_format"])
    assert k.built and k.data_format == cfg["data_format"]
    x = np.random.default_rng(seed).standard_normal((2, 2 * t.groups, *(5, 6, 7)[-cfg["nd"] :]))
    x = x.astype("float32")
    y_torch = run_torch(t, x)
    y_keras = np_(k(to_keras_layout(x, cfg["data_format"])))
    if cfg["data_format"] == "channels_last":
        y_keras = np.moveaxis(y_keras, -1, 1)
    assert_close_to_scale(y_keras, y_torch)
    # Back: a fresh torch twin from the Keras layer computes the same again.
    back = keras_to_torch(k)
    assert type(back) is type(t)
    np.testing.assert_array_equal(back.weight.detach().numpy(), t.weight.detach().numpy())
    assert_close_to_scale(run_torch(back, x), y_torch)


def test_symmetric_into_existing_layers_and_keras_initialized_weights():
    k = SymmetricConv3D(8, 3, padding="same", symmetry={"hvz": 8}, bias_initializer="random_normal")
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 5, 6)).astype("float32")
    y_keras = np.moveaxis(np_(k(np.moveaxis(x, 1, -1))), -1, 1)
    t = SymmetricConv3d(2, 8, 3, padding=1, symmetry={"hvz": 8})
    assert keras_to_torch(k, t) is t
    assert_close_to_scale(run_torch(t, x), y_keras)
    # torch -> an existing, unbuilt Keras layer (built on the fly).
    fresh = SymmetricConv3D(8, 3, padding="same", symmetry={"hvz": 8})
    assert torch_to_keras(t, fresh) is fresh
    assert_close_to_scale(np.moveaxis(np_(fresh(np.moveaxis(x, 1, -1))), -1, 1), y_keras)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    ("stride", "groups", "bias", "padding_mode"),
    [(1, 1, False, "zeros"), (2, 2, True, "reflect"), ((1, 2), 1, True, "zeros")],
)
def test_twist_parity_both_ways(data_format, stride, groups, bias, padding_mode):
    torch.manual_seed(0)
    t = ConvTwist(
        2 * groups, 4, 3, stride=stride, groups=groups, bias=bias, padding_mode=padding_mode
    )
    with torch.no_grad():
        if bias:
            t.bias.normal_()
    k = torch_to_keras(t, data_format=data_format)
    x = np.random.default_rng(1).standard_normal((2, 2 * groups, 8, 7)).astype("float32")
    y_torch = run_torch(t, x)
    y_keras = np_(k(to_keras_layout(x, data_format)))
    if data_format == "channels_last":
        y_keras = np.moveaxis(y_keras, -1, 1)
    assert_close_to_scale(y_keras, y_torch)
    # The odd kernels agree tap for tap.
    np.testing.assert_array_equal(
        np_(k.kernel_x), t.weight_x.detach().numpy().transpose(2, 3, 1, 0)
    )
    back = keras_to_torch(k)
    assert_close_to_scale(run_torch(back, x), y_torch)
    for name in ("weight", "twist_x", "twist_y", "center_x", "center_y"):
        np.testing.assert_array_equal(
            getattr(back, name).detach().numpy(), getattr(t, name).detach().numpy()
        )


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("activation", [None, "tanh"])
def test_global_conv_parity_both_ways(reduction, activation):
    torch.manual_seed(0)
    t = GlobalConv1d(3, 4, reduction=reduction, activation=nn.Tanh() if activation else None)
    k = torch_to_keras(t)
    assert k.reduction == reduction
    x = np.random.default_rng(2).standard_normal((2, 3, 6)).astype("float32")
    mask = np.random.default_rng(3).random((2, 6)) > 0.3
    for m in (None, mask):
        y_torch = run_torch(t, x, None if m is None else torch.from_numpy(m))
        y_keras = np_(k(np.moveaxis(x, 1, -1), mask=m))
        assert_close_to_scale(np.moveaxis(y_keras, -1, 1), y_torch)
    back = keras_to_torch(k)
    assert isinstance(back.activation, nn.Tanh) if activation else back.activation is None
    assert_close_to_scale(run_torch(back, x), run_torch(t, x))


def test_wide_twist_parity_is_relative_to_the_output_scale():
    """64 channels, outputs of ~50: float32 rounding is ~3e-5 absolute, ~6e-7 of the scale."""
    torch.manual_seed(0)
    t = ConvTwist(64, 64, 3, bias=True)
    k = torch_to_keras(t)
    x = 10 * np.random.default_rng(0).standard_normal((2, 64, 12, 12)).astype("float32")
    y_torch = run_torch(t, x)
    assert np.abs(y_torch).max() > 40
    assert_close_to_scale(np.moveaxis(np_(k(np.moveaxis(x, 1, -1))), -1, 1), y_torch)
    # ... and a real difference (one center moved by 1e-3) is still caught.
    with torch.no_grad():
        t.center_x[0] += 1e-3
    with pytest.raises(AssertionError):
        assert_close_to_scale(np.moveaxis(np_(k(np.moveaxis(x, 1, -1))), -1, 1), run_torch(t, x))


def test_topk_parity():
    x = np.random.default_rng(4).standard_normal((2, 3, 7)).astype("float32")
    k = torch_to_keras(TorchTopKPool(3))
    assert isinstance(k, TopKPool) and k.k == 3
    np.testing.assert_array_equal(
        np.moveaxis(np_(k(np.moveaxis(x, 1, -1))), -1, 1), run_torch(TorchTopKPool(3), x)
    )
    assert keras_to_torch(TopKPool(2)).k == 2


def test_copies_share_no_memory():
    """Updating one twin in place leaves the other as copied (JAX keeps numpy buffers)."""
    t = ConvTwist(2, 4, bias=True)
    k = torch_to_keras(t)
    t2 = keras_to_torch(k)
    before = [np_(w).copy() for w in k.weights]
    with torch.no_grad():
        for p in (*t.parameters(), *t2.parameters()):
            p.add_(1.0)
    for w, b in zip(k.weights, before, strict=True):
        np.testing.assert_array_equal(np_(w), b)
    for w in k.weights:
        w.assign(w + 1.0)
    for twin in (t, t2):
        np.testing.assert_array_equal(twin.center_x.detach().numpy(), before[3] + 1.0)


def test_float64_torch_layer_round_trip():
    t = GlobalConv1d(2, 3, dtype=torch.float64)
    k = torch_to_keras(t)
    t2 = keras_to_torch(k, GlobalConv1d(2, 3, dtype=torch.float64))
    assert t2.center.dtype == torch.float64
    np.testing.assert_allclose(t2.center.detach().numpy(), t.center.detach().numpy(), atol=1e-7)


# -- errors -----------------------------------------------------------------------------
def test_mismatched_configs_raise():
    t = SymmetricConv2d(3, 8, 3, padding=1, symmetry={"hv": 4})
    with pytest.raises(ValueError, match=r"mismatched symmetry channel layout"):
        torch_to_keras(t, SymmetricConv2D(8, 3, padding="same", symmetry={"h": 4}))
    with pytest.raises(
        ValueError,
        match=r"mismatched out_channels / filters: the torch layer has 8, the Keras layer 6",
    ):
        torch_to_keras(t, SymmetricConv2D(6, 3, padding="same", symmetry={"hv": 4}))
    with pytest.raises(ValueError, match=r"mismatched share_bias"):
        torch_to_keras(
            t, SymmetricConv2D(8, 3, padding="same", symmetry={"hv": 4}, share_bias=False)
        )
    with pytest.raises(
        ValueError, match=r"mismatched in_channels: the torch layer has 3, the Keras layer 4"
    ):
        k = SymmetricConv2D(8, 3, padding="same", symmetry={"hv": 4})
        k.build((None, 5, 5, 4))
        torch_to_keras(t, k)
    # Padding changes the output, not the weights: strict=False copies anyway.
    valid = SymmetricConv2D(8, 3, padding="valid", symmetry={"hv": 4})
    with pytest.raises(
        ValueError,
        match=r"mismatched padding \(as Keras padding\): the torch layer has 'same', the Keras layer 'valid'",
    ):
        torch_to_keras(t, valid)
    torch_to_keras(t, valid, strict=False)
    np.testing.assert_array_equal(
        np_(valid.kernel), t.weight.detach().numpy().transpose(2, 3, 1, 0)
    )
    # A torch padding Keras cannot express is shown as it is, not as None.
    strided = SymmetricConv2d(3, 8, 3, stride=2, padding=1, symmetry={"hv": 4})
    with pytest.raises(ValueError, match=r"the torch layer has padding=\(1, 1\) with "
                       r"padding_mode='zeros', which no Keras padding computes, the Keras layer "
                       r"'valid'"):  # fmt: skip
        torch_to_keras(strided, SymmetricConv2D(8, 3, strides=2, symmetry={"hv": 4}))
    with pytest.raises(ValueError, match=r"mismatched reduction"):
        torch_to_keras(GlobalConv1d(2, 2), GlobalConv1D(2, reduction="mean"))
    with pytest.raises(ValueError, match=r"mismatched k: the torch layer has 2, the Keras layer 3"):
        torch_to_keras(TorchTopKPool(2), TopKPool(3), strict=False)
    with pytest.raises(ValueError, match=r"mismatched stride / strides"):
        torch_to_keras(ConvTwist(2, 2, stride=2), ConvTwist2D(2))


def test_strict_compares_activations():
    """A Keras activation the torch twin lacks changes the output: strict=True refuses."""
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 6)).astype("float32")
    t = SymmetricConv2d(3, 8, 3, padding=1, symmetry={"hv": 4})
    relu = SymmetricConv2D(8, 3, padding="same", symmetry={"hv": 4}, activation="relu")
    message = (
        r"mismatched activation: the torch layer has None, the Keras layer 'relu' "
        r"\(SymmetricConv2d has no activation: apply it after the torch layer\); pass "
        r"strict=False to copy the weights anyway"
    )
    with pytest.raises(ValueError, match=message):
        torch_to_keras(t, relu)
    torch_to_keras(t, relu, strict=False)  # the weights only
    y_keras = np.moveaxis(np_(relu(np.moveaxis(x, 1, -1))), -1, 1)
    assert_close_to_scale(y_keras, np.maximum(run_torch(t, x), 0))
    with pytest.raises(ValueError, match=message):
        keras_to_torch(relu)
    assert_close_to_scale(np.maximum(run_torch(keras_to_torch(relu, strict=False), x), 0), y_keras)
    # 'linear' is no activation.
    torch_to_keras(
        t, SymmetricConv2D(8, 3, padding="same", symmetry={"hv": 4}, activation="linear")
    )
    with pytest.raises(ValueError, match=r"mismatched activation: .* None, the Keras layer 'tanh'"):
        torch_to_keras(ConvTwist(2, 2), ConvTwist2D(2, activation="tanh"))
    # GlobalConv1d: its activation against the Keras one.
    with pytest.raises(
        ValueError, match=r"mismatched activation: .* 'relu', the Keras layer 'tanh'"
    ):
        torch_to_keras(GlobalConv1d(2, 2, activation=nn.ReLU()), GlobalConv1D(2, activation="tanh"))
    with pytest.raises(ValueError, match=r"mismatched activation: .* None, the Keras layer 'relu'"):
        torch_to_keras(GlobalConv1d(2, 2), GlobalConv1D(2, activation="relu"))
    torch_to_keras(GlobalConv1d(2, 2, activation=torch.relu), GlobalConv1D(2, activation="relu"))
    gelu = GlobalConv1d(2, 2, activation=nn.GELU())
    with pytest.raises(ValueError, match=r"activation=GELU.* strict=True cannot check"):
        torch_to_keras(gelu, GlobalConv1D(2, activation="gelu"))
    torch_to_keras(gelu, GlobalConv1D(2, activation="gelu"), strict=False)


def test_wrong_pairs_and_unsupported_layers_raise():
    with pytest.raises(
        TypeError, match=r"the Keras twin of SymmetricConv2d is SymmetricConv2D, got GlobalConv1D"
    ):
        torch_to_keras(SymmetricConv2d(2, 2, 3), GlobalConv1D(2))
    with pytest.raises(TypeError, match=r"no Keras twin for Conv2d"):
        torch_to_keras(nn.Conv2d(2, 2, 3))
    with pytest.raises(TypeError, match=r"no torch twin for Conv2D"):
        keras_to_torch(keras.layers.Conv2D(2, 3))
    with pytest.raises(
        TypeError, match=r"the torch twin of GlobalConv1D is GlobalConv1d, got TopKPool"
    ):
        keras_to_torch(torch_to_keras(GlobalConv1d(2, 2)), TorchTopKPool(1))
    with pytest.raises(ValueError, match=r"is not built: call it on an input"):
        keras_to_torch(GlobalConv1D(2))


def test_twins_without_an_equivalent_raise():
    with pytest.raises(
        ValueError, match=r"padding=\(2, 2\) \(padding_mode='zeros'\) has no Keras equivalent"
    ):
        torch_to_keras(SymmetricConv2d(2, 2, 3, padding=2))
    with pytest.raises(ValueError, match=r"padding_mode='reflect'\) has no Keras equivalent"):
        torch_to_keras(SymmetricConv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match=r"padding_mode='circular' has no ConvTwist2D equivalent"):
        torch_to_keras(ConvTwist(2, 2, padding_mode="circular"))
    with pytest.raises(ValueError, match=r"activation=GELU.* has no known Keras equivalent"):
        torch_to_keras(GlobalConv1d(2, 2, activation=nn.GELU()))
    strided_same = SymmetricConv2D(2, 3, strides=2, padding="same")
    strided_same.build((None, 6, 6, 2))
    with pytest.raises(
        ValueError, match=r"padding='same' with strides=\(2, 2\) has no torch equivalent"
    ):
        keras_to_torch(strided_same)
    gelu = GlobalConv1D(2, activation="gelu")
    gelu.build((None, None, 2))
    with pytest.raises(ValueError, match=r"activation='gelu' has no known torch equivalent"):
        keras_to_torch(gelu)


def test_strict_must_be_a_bool_and_reading_weights_does_not_warn():
    import warnings

    from symconv import GroupConv2d
    from symconv.keras import keras_to_torch, torch_to_keras

    with pytest.raises(TypeError, match="strict='yes' must be a bool"):
        torch_to_keras(GroupConv2d(8, 8, 3, group="hr"), strict="yes")
    layer = torch_to_keras(GroupConv2d(8, 8, 3, group="hr"))
    with warnings.catch_warnings():  # numpy's conversion of a variable warns (no `copy`)
        warnings.simplefilter("error", DeprecationWarning)
        keras_to_torch(layer)
