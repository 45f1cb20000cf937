"""Keras ConvTwist2D: naive reference, odd kernels, config, save/load, training, errors."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from _arrays import assert_fit_step_matches_torch, np_
from hypothesis import given, settings
from hypothesis import strategies as st

from _numpy_conv import conv_nd
from symconv import ConvTwist
from symconv.keras import ConvTwist2D


def odd_from_taps(taps, k):
    """Free taps ``(n, in, out)`` -> odd kernel ``(k, k, in, out)``, tap by tap."""
    kernel = np.zeros((k, k, *taps.shape[1:]))
    for t in range(taps.shape[0]):
        r, c = divmod(t, k)
        kernel[r, c] = taps[t]
        kernel[k - 1 - r, k - 1 - c] = -taps[t]
    return kernel


def reference(layer, x):
    """out = conv(x, W) + (X - cx) conv(x, Wx) + (Y - cy) conv(x, Wy) + b, from the formula."""
    k = layer.kernel_size[0]
    if layer.data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    p = k // 2
    mode = {"zeros": "constant", "reflect": "reflect"}[layer.padding_mode]
    x = np.pad(np.asarray(x, np.float64), [(0, 0), (p, p), (p, p), (0, 0)], mode=mode)
    w = np_(layer.kernel).astype(np.float64)
    wx = odd_from_taps(np_(layer.twist_x).astype(np.float64), k)
    wy = odd_from_taps(np_(layer.twist_y).astype(np.float64), k)
    conv = [conv_nd(x, kern, layer.strides, "valid", None, layer.groups) for kern in (w, wx, wy)]
    h, wd = conv[0].shape[1:3]
    X = (2 * np.arange(wd) / wd)[None, None, :, None]
    Y = (2 * np.arange(h) / h)[None, :, None, None]
    cx, cy = np_(layer.center_x), np_(layer.center_y)
    out = conv[0] + (X - cx) * conv[1] + (Y - cy) * conv[2]
    if layer.use_bias:
        out = out + np_(layer.bias)
    if layer.data_format == "channels_first":
        out = np.moveaxis(out, -1, 1)
    return out


@settings(max_examples=10)
@given(
    k=st.sampled_from([3, 5]),
    groups=st.sampled_from([1, 2]),
    strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    size=st.tuples(st.integers(5, 8), st.integers(5, 8)),
    use_bias=st.booleans(),
    padding_mode=st.sampled_from(["zeros", "reflect"]),
    data_format=st.sampled_from(["channels_last", "channels_first"]),
)
def test_matches_reference(k, groups, strides, size, use_bias, padding_mode, data_format):
    layer = ConvTwist2D(
        2 * groups,
        k,
        strides=strides,
        groups=groups,
        use_bias=use_bias,
        padding_mode=padding_mode,
        data_format=data_format,
        bias_initializer="random_normal",
    )
    cin = 2 * groups
    rng = np.random.default_rng(0)
    shape = (2, *size, cin) if data_format == "channels_last" else (2, cin, *size)
    x = rng.standard_normal(shape).astype("float32")
    out = np_(layer(x))
    assert out.shape == tuple(layer.compute_output_shape(x.shape))
    np.testing.assert_allclose(out, reference(layer, x), atol=1e-4, rtol=1e-5)


def test_twist_kernels_are_odd_and_initialized_as_torch():
    layer = ConvTwist2D(4, 3)
    layer.build((None, 6, 6, 3))
    wx, wy = np_(layer.kernel_x), np_(layer.kernel_y)
    for kern in (wx, wy):
        np.testing.assert_array_equal(kern, -np.flip(kern, axis=(0, 1)))
        assert np.all(kern[1, 1] == 0) and np.abs(kern).max() > 0
    # Wy is Wx rotated by 90 degrees (torch: wx.transpose(2, 3).flip(3)).
    np.testing.assert_allclose(wy, np.flip(np.transpose(wx, (1, 0, 2, 3)), axis=1), atol=1e-7)
    # ... and Wx is not W's odd part: V and W are independent draws.
    w = np_(layer.kernel)
    assert not np.allclose(wx, (w - np.flip(w, axis=(0, 1))) / 2)
    cx = np_(layer.center_x)
    assert np.abs(cx).max() <= 1.5 and not np.allclose(cx, np_(layer.center_y))
    # kernel, twist_x, twist_y, center_x, center_y and (the default, as Conv2D) the bias
    assert layer.twist_x.shape == (4, 3, 4) and len(layer.weights) == 6


def test_zero_twist_is_a_plain_conv():
    layer = ConvTwist2D(3, 3, strides=2, use_bias=True, bias_initializer="random_normal")
    x = np.random.default_rng(1).standard_normal((2, 7, 6, 2)).astype("float32")
    layer.build(x.shape)
    layer.twist_x.assign(np.zeros(layer.twist_x.shape))
    layer.twist_y.assign(np.zeros(layer.twist_y.shape))
    conv = keras.layers.Conv2D(3, 3, strides=2, padding="valid")
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    conv.build(padded.shape)
    conv.set_weights([np_(layer.kernel), np_(layer.bias)])
    np.testing.assert_allclose(np_(layer(x)), np_(conv(padded)), atol=1e-5)


def test_config_round_trip_and_keras_save_load(tmp_path):
    layer = ConvTwist2D(
        4,
        3,
        strides=2,
        groups=2,
        use_bias=True,
        init_max=0.5,
        padding_mode="reflect",
        activation="relu",
        kernel_regularizer="l2",
        name="twist",
    )
    model = keras.Sequential([keras.Input((6, 7, 2)), layer, keras.layers.Flatten()])
    config = layer.get_config()
    clone = ConvTwist2D.from_config(config)
    assert clone.get_config() == config
    clone.build((None, 6, 7, 2))
    clone.set_weights(layer.get_weights())
    x = np.random.default_rng(2).standard_normal((3, 6, 7, 2)).astype("float32")
    np.testing.assert_allclose(np_(clone(x)), np_(layer(x)), atol=1e-6)
    path = tmp_path / "twist.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("twist")) is ConvTwist2D
    np.testing.assert_array_equal(np_(loaded(x)), np_(model(x)))


def test_a_fit_step_matches_the_torch_twin():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 6, 6, 2)).astype("float32")
    y = rng.standard_normal((8, 6, 6, 4)).astype("float32")
    layer = ConvTwist2D(4, 3, bias_initializer="random_normal")
    assert_fit_step_matches_torch(layer, x, y)


@pytest.mark.parametrize(
    ("torch_kwargs", "keras_kwargs"),
    [
        (dict(kernel_size=4), dict(kernel_size=4)),
        (dict(kernel_size=1), dict(kernel_size=1)),
        (dict(kernel_size=(3, 5)), dict(kernel_size=(3, 5))),
        (dict(init_max=-1.0), dict(init_max=-1.0)),
        (dict(init_max=float("inf")), dict(init_max=float("inf"))),
        (dict(stride=0), dict(strides=0)),
        (dict(groups=0), dict(groups=0)),
    ],
)
def test_invalid_arguments_same_messages_as_torch(torch_kwargs, keras_kwargs):
    with pytest.raises(ValueError) as torch_error:
        ConvTwist(4, 4, **torch_kwargs)
    message = (
        str(torch_error.value)
        .replace("stride=", "strides=")
        .replace("use nn.Conv2d", "use keras.layers.Conv2D")
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ConvTwist2D(4, **keras_kwargs)


def test_invalid_keras_arguments():
    with pytest.raises(ValueError, match=r"filters=0 is not allowed; it must be an int >= 1"):
        ConvTwist2D(0)
    with pytest.raises(ValueError, match=r"filters=3 is not divisible by groups=2"):
        ConvTwist2D(3, groups=2)
    with pytest.raises(
        ValueError,
        match=r"padding_mode='circular' is not allowed; it must be one of \('zeros', 'reflect'\)",
    ):
        ConvTwist2D(2, padding_mode="circular")
    with pytest.raises(ValueError, match=r"data_format='NHWC' is not allowed"):
        ConvTwist2D(2, data_format="NHWC")
    with pytest.raises(TypeError, match=r"use_bias=None must be a bool"):
        ConvTwist2D(2, use_bias=None)
    with pytest.raises(
        ValueError, match=r"input has 3 channels, which is not divisible by groups=2"
    ):
        ConvTwist2D(2, groups=2).build((None, 5, 5, 3))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_spec_layouts_and_from_spec(data_format):
    """The Keras layer's spec gives its variables' shapes (``keras_shape``) in interop's order;
    ``from_spec`` of the torch layer's spec builds a twin whose spec equals a Keras-made one
    and which takes the torch weights permuted by ``to_keras``, computing the same."""
    import torch

    torch.manual_seed(0)
    t = ConvTwist(4, 6, kernel_size=5, stride=2, groups=2, padding_mode="reflect", init_max=0.5)
    k = ConvTwist2D.from_spec(t.spec, data_format=data_format)
    assert k.built and k.data_format == data_format
    made = ConvTwist2D(6, 5, strides=2, groups=2, padding_mode="reflect", init_max=0.5)
    made.build((None, 8, 8, 4))
    assert k.spec == made.spec.with_in_channels(4) == made.spec
    layouts = [p for p in k.spec.params() if p.present]
    assert [p.keras_name for p in layouts] == [v.path.split("/")[-1] for v in k.weights]
    assert [tuple(v.shape) for v in k.weights] == [p.keras_shape for p in layouts]
    k.set_weights(
        [np.transpose(getattr(t, p.torch_name).detach().numpy(), p.to_keras) for p in layouts]
    )
    x = np.random.default_rng(4).standard_normal((2, 4, 9, 8)).astype("float32")
    expected = t(torch.from_numpy(x)).detach().numpy()
    if data_format == "channels_last":
        x, expected = np.moveaxis(x, 1, -1), np.moveaxis(expected, 1, -1)
    np.testing.assert_allclose(np_(k(x)), expected, atol=1e-4, rtol=1e-4)
    # ... and back: the Keras-made spec's torch twin has the torch layer's settings.
    back = ConvTwist(**made.spec.torch_kwargs_from_keras())
    assert back.spec == t.spec
    unbuilt = ConvTwist2D.from_spec(ConvTwist2D(3).spec)
    assert not unbuilt.built


def test_keras_twist_does_not_import_torch_layers():
    """Its rules come from symconv.core.twist, not from the torch layer's module."""
    import ast
    import inspect

    import symconv.keras.twist

    tree = ast.parse(inspect.getsource(symconv.keras.twist))
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert "symconv.core.twist" in modules
    assert not [m for m in modules if m == "torch" or m.startswith(("torch.", "symconv.nn"))]
