"""Keras SymmetricConv1D/2D/3D: naive reference, flip equivariance, config, save/load, errors."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from _arrays import (
    assert_fit_step_matches_torch,
    keras_conv_reference,
    np_,
    tensorflow_onednn_may_be_wrong,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from symconv import SymmetricConv1d, SymmetricConv2d, SymmetricConv3d
from symconv.keras import SymmetricConv1D, SymmetricConv2D, SymmetricConv3D
from symconv.symmetry import allowed_keys, letter_axis

LAYERS = {1: SymmetricConv1D, 2: SymmetricConv2D, 3: SymmetricConv3D}
TORCH_LAYERS = {1: SymmetricConv1d, 2: SymmetricConv2d, 3: SymmetricConv3d}


def reference(layer, x):
    """Build each full filter by flipping its free filter, then a naive numpy convolution."""
    plan = layer.plan
    free = np_(layer.kernel).astype(np.float64)  # (*k, in/g, n_free)
    filters = []
    for c in range(layer.filters):
        f = free[..., int(plan.free_index[c])]
        axes = [int(a) for a in np.flatnonzero(plan.flips[c])]
        filters.append(np.flip(f, axis=axes) if axes else f)
    kernel = np.stack(filters, axis=-1)
    bias = None
    if layer.use_bias:
        free_bias = np_(layer.bias)
        bias = np.array([free_bias[int(plan.bias_index[c])] for c in range(layer.filters)])
    return keras_conv_reference(layer, x, kernel, bias)


@st.composite
def configs(draw):
    nd = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 1, 2]))
    cin = groups * draw(st.integers(1, 2))
    if groups == 1:
        spec, filters = {}, 0
        for key in draw(st.lists(st.sampled_from(allowed_keys(nd)), unique=True, max_size=2)):
            n = draw(st.integers(0, 1)) * 2 ** len(key)
            if n:
                spec[key] = n
                filters += n
        filters += draw(st.integers(0 if filters else 1, 2))
    else:
        key = draw(st.sampled_from(allowed_keys(nd)))
        per_group = 2 ** len(key)
        filters = groups * per_group
        spec = {key: per_group * draw(st.integers(0, groups))}
    ks = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    if draw(st.booleans()):
        strides, dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd)), (1,) * nd
    else:
        strides, dilation = (1,) * nd, tuple(draw(st.integers(1, 2)) for _ in range(nd))
    size = tuple(
        draw(st.integers(d * (k - 1) + 1, d * (k - 1) + 4))
        for k, d in zip(ks, dilation, strict=True)
    )
    return dict(
        nd=nd,
        cin=cin,
        size=size,
        kwargs=dict(
            filters=filters,
            kernel_size=ks,
            strides=strides,
            dilation_rate=dilation,
            padding=draw(st.sampled_from(["valid", "same"])),
            groups=groups,
            data_format=draw(st.sampled_from(["channels_last", "channels_first"])),
            use_bias=draw(st.booleans()),
            share_bias=draw(st.booleans()),
            bias_initializer="random_normal",
            symmetry=spec,
        ),
    )


def _input(layer_kwargs, nd, cin, size, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    if layer_kwargs.get("data_format") == "channels_first":
        return rng.standard_normal((batch, cin, *size)).astype("float32")
    return rng.standard_normal((batch, *size, cin)).astype("float32")


@settings(max_examples=15)
@given(cfg=configs())
def test_matches_reference(cfg):
    layer = LAYERS[cfg["nd"]](**cfg["kwargs"])
    x = _input(cfg["kwargs"], cfg["nd"], cfg["cin"], cfg["size"])
    assume(not tensorflow_onednn_may_be_wrong(layer, x.shape))
    out = np_(layer(x))
    expected = reference(layer, x)
    assert out.shape == expected.shape == tuple(layer.compute_output_shape(x.shape))
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    # Only the free kernel and bias are weights; the gather index is not saved.
    assert len(layer.weights) == 1 + layer.use_bias and not layer.non_trainable_weights
    assert layer.kernel.shape == layer.plan.free_weight_shape(
        cfg["cin"] // layer.groups, layer.kernel_size, layout="keras"
    )


def test_batch_zero_and_expanded_kernel_is_the_plan_expansion():
    layer = SymmetricConv2D(8, (2, 3), symmetry={"h": 2, "hv": 4}, share_bias=False)
    # keras.ops.conv on TensorFlow mishandles an empty batch (plain Conv2D too): torch only.
    batch = 0 if keras.backend.backend() == "torch" else 1
    y = layer(np.zeros((batch, 5, 6, 3), "float32"))
    assert tuple(y.shape) == (batch, 4, 4, 8)
    np.testing.assert_array_equal(
        np_(layer.expanded_kernel), layer.plan.expand(np_(layer.kernel), layout="keras")
    )
    np.testing.assert_array_equal(np_(layer.expanded_bias), np_(layer.bias))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    ("nd", "spec", "axes"),
    [
        (1, {"h": 4}, ["h"]),
        (2, {"h": 2, "v": 2, "hv": 4}, ["h", "v", "hv"]),
        (3, {"hvz": 8, "z": 2}, ["h", "z", "hz", "hvz"]),
    ],
)
def test_flip_equivariance(nd, spec, axes, data_format):
    layer = LAYERS[nd](
        sum(spec.values()) + 1,
        3,
        padding="same",
        data_format=data_format,
        symmetry=spec,
        bias_initializer="random_normal",
    )
    size = (5, 6, 7)[-nd:]
    x = _input({"data_format": data_format}, nd, 2, size)
    y = np_(layer(x))
    offset = 1 if data_format == "channels_last" else 2
    channel = -1 if data_format == "channels_last" else 1
    for letters in axes:
        dims = tuple(offset + letter_axis(ch, nd) for ch in letters)
        perm, equivariant = layer.plan.flip_permutation(letters)
        assert equivariant.any()
        y_flip = np_(layer(np.flip(x, dims).copy()))
        expected = np.take(np.flip(y, dims), perm, axis=channel)
        np.testing.assert_allclose(
            np.compress(equivariant, y_flip, axis=channel),
            np.compress(equivariant, expected, axis=channel),
            atol=1e-5,
        )
        # The plain channel is not equivariant (guards against a vacuous test).
        assert not np.allclose(
            np.compress(~equivariant, y_flip, axis=channel),
            np.compress(~equivariant, expected, axis=channel),
            atol=1e-3,
        )


def test_initializer_draws_full_kernel_and_keeps_unflipped_members():
    init = keras.initializers.GlorotUniform(seed=3)
    layer = SymmetricConv2D(8, 3, symmetry={"hv": 4, "h": 2}, kernel_initializer=init)
    layer.build((None, 6, 6, 5))
    full = np_(keras.initializers.GlorotUniform(seed=3)((3, 3, 5, 8)))
    # Layout h pair (0-1), hv quadruple (2-5), plain (6, 7): each orbit's first channel.
    representative = [0, 2, 6, 7]
    assert np.flatnonzero(layer.plan.member == 0).tolist() == representative
    np.testing.assert_array_equal(np_(layer.kernel), full[..., representative])
    # Fans of the full kernel (as keras.layers.Conv2D): limit sqrt(6 / (9*5 + 9*8)).
    big = SymmetricConv2D(64, 3, symmetry={"hv": 64})
    big.build((None, 6, 6, 32))
    limit = np.sqrt(6 / (9 * 32 + 9 * 64))
    kernel = np_(big.kernel)
    assert kernel.shape == (3, 3, 32, 16)
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit


def test_string_and_percentage_specs_give_the_same_plan_as_torch():
    for spec in ["hv:50%,h:2", {"hv": "50%", "h": 2}, {"vh": "25%"}]:
        keras_layer = SymmetricConv2D(16, 3, symmetry=spec)
        torch_layer = SymmetricConv2d(4, 16, 3, symmetry=spec)
        assert keras_layer.plan.blocks == torch_layer.plan.blocks
        np.testing.assert_array_equal(keras_layer.plan.free_index, torch_layer.plan.free_index)


def test_regularizer_and_constraint_act_on_the_free_kernel():
    layer = SymmetricConv1D(
        4,
        3,
        symmetry={"h": 4},
        kernel_regularizer=keras.regularizers.L2(0.5),
        kernel_constraint=keras.constraints.NonNeg(),
    )
    layer.build((None, 7, 2))
    assert len(layer.losses) == 1
    expected = 0.5 * float(np.sum(np_(layer.kernel) ** 2))
    np.testing.assert_allclose(float(np_(layer.losses[0])), expected, rtol=1e-5)
    assert layer.kernel.constraint is layer.kernel_constraint


def _model(layer, in_shape):
    return keras.Sequential(
        [keras.Input(in_shape), layer, keras.layers.Flatten(), keras.layers.Dense(1)]
    )


ROUND_TRIP = {
    1: dict(filters=6, kernel_size=2, groups=3, symmetry={"h": 6}, activation="relu"),
    2: dict(filters=8, kernel_size=2, strides=2, padding="same", groups=2, symmetry={"hv": "50%"}),
    3: dict(filters=5, kernel_size=(1, 2, 2), data_format="channels_first", symmetry="hz:4"),
}


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_config_round_trip_and_keras_save_load(nd, tmp_path):
    layer = LAYERS[nd](
        **ROUND_TRIP[nd],
        share_bias=False,
        bias_initializer="random_normal",
        kernel_regularizer="l2",
        name="sym",
    )
    in_shape = {1: (6, 3), 2: (5, 6, 2), 3: (2, 4, 5, 6)}[nd]
    model = _model(layer, in_shape)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    assert clone.plan.blocks == layer.plan.blocks and clone.plan.share_bias is False
    clone.build((None, *in_shape))
    clone.set_weights(layer.get_weights())
    x = np.random.default_rng(1).standard_normal((3, *in_shape)).astype("float32")
    np.testing.assert_allclose(np_(clone(x)), np_(layer(x)), atol=1e-6)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_layer = loaded.get_layer("sym")
    assert type(loaded_layer) is type(layer)
    assert loaded_layer.plan.blocks == layer.plan.blocks
    np.testing.assert_array_equal(np_(loaded(x)), np_(model(x)))


def test_to_conv_and_from_conv():
    layer = SymmetricConv2D(
        6, 3, padding="same", symmetry={"v": 2, "hv": 4}, bias_initializer="random_normal"
    )
    x = np.random.default_rng(2).standard_normal((2, 5, 5, 3)).astype("float32")
    y = np_(layer(x))
    conv = layer.to_conv()
    assert type(conv) is keras.layers.Conv2D
    np.testing.assert_allclose(np_(conv(x)), y, atol=1e-5)
    back = SymmetricConv2D.from_conv(conv, symmetry={"v": 2, "hv": 4})
    np.testing.assert_allclose(np_(back.kernel), np_(layer.kernel), atol=1e-6)
    np.testing.assert_allclose(np_(back(x)), y, atol=1e-5)
    with pytest.raises(TypeError, match="needs a keras.layers.Conv2D, got Conv1D"):
        SymmetricConv2D.from_conv(keras.layers.Conv1D(2, 3), symmetry=None)
    with pytest.raises(ValueError, match="needs a built Conv2D"):
        SymmetricConv2D.from_conv(keras.layers.Conv2D(2, 3), symmetry=None)


def test_a_fit_step_matches_the_torch_twin():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6, 6, 2)).astype("float32")
    y = rng.standard_normal((8, 6, 6, 6)).astype("float32")
    layer = SymmetricConv2D(
        6, 3, padding="same", symmetry={"h": 2, "hv": 4}, bias_initializer="random_normal"
    )
    assert_fit_step_matches_torch(layer, x, y)


# -- invalid arguments -----------------------------------------------------------------
BAD_SPECS = [
    {"x": 2},
    {"z": 2},
    {"h": 3},
    {"h": -2},
    {"h": "fifty"},
    {"h": "150%"},
    {"h": True},
    {"h": 4, "hv": 8},
    {"hv": 4, "vh": 4},
    "h:2,,",
]


@pytest.mark.parametrize("spec", BAD_SPECS, ids=str)
def test_invalid_symmetry_same_message_as_torch(spec):
    with pytest.raises(ValueError) as torch_error:
        SymmetricConv2d(3, 8, 3, symmetry=spec)
    with pytest.raises(ValueError, match=f"^{re.escape(str(torch_error.value))}$"):
        SymmetricConv2D(8, 3, symmetry=spec)


def test_invalid_groups_and_type_errors_same_message_as_torch():
    with pytest.raises(ValueError) as torch_error:
        SymmetricConv1d(2, 6, 3, groups=2, symmetry={"h": 4})
    assert "straddle two groups" in str(torch_error.value)
    with pytest.raises(ValueError, match=f"^{re.escape(str(torch_error.value))}$"):
        SymmetricConv1D(6, 3, groups=2, symmetry={"h": 4})
    for bad in ({"h": 2.5}, ["h"]):
        with pytest.raises((ValueError, TypeError)) as torch_error:
            SymmetricConv1d(4, 4, 3, symmetry=bad)
        with pytest.raises(torch_error.type, match=f"^{re.escape(str(torch_error.value))}$"):
            SymmetricConv1D(4, 3, symmetry=bad)
    with pytest.raises(TypeError, match="share_bias=1 must be a bool"):
        SymmetricConv1D(4, 3, symmetry={"h": 2}, share_bias=1)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (
            dict(filters=0, kernel_size=3),
            ValueError,
            r"filters=0 is not allowed; it must be an int >= 1",
        ),
        (
            dict(filters=2.5, kernel_size=3),
            TypeError,
            r"filters=2.5 must be an int >= 1, got float",
        ),
        (
            dict(filters=4, kernel_size=0),
            ValueError,
            r"kernel_size=0 is not allowed; it must be an int >= 1",
        ),
        (
            dict(filters=4, kernel_size=(3, 3, 3)),
            ValueError,
            r"kernel_size=\(3, 3, 3\) has 3 entries; it must be an int >= 1 or a tuple of 2",
        ),
        (dict(filters=4, kernel_size=3, strides=0), ValueError, r"strides=0 is not allowed"),
        (
            dict(filters=4, kernel_size=3, padding="causal"),
            ValueError,
            r"padding='causal' is not allowed; it must be one of \('valid', 'same'\)",
        ),
        (
            dict(filters=4, kernel_size=3, data_format="NCHW"),
            ValueError,
            r"data_format='NCHW' is not allowed",
        ),
        (
            dict(filters=4, kernel_size=3, groups=3),
            ValueError,
            r"filters=4 is not divisible by groups=3",
        ),
        (
            dict(filters=4, kernel_size=3, strides=2, dilation_rate=2),
            ValueError,
            r"strides > 1 together with dilation_rate > 1",
        ),
        (
            dict(filters=4, kernel_size=3, use_bias="yes"),
            TypeError,
            r"use_bias='yes' must be a bool",
        ),
        # Rotation keys: checked at construction, in Keras' argument names.
        (
            dict(filters=16, kernel_size=(3, 5), symmetry={"r": 16}),
            ValueError,
            r"^kernel_size=\(3, 5\) is not allowed; it must be square for symmetry key 'r'",
        ),
        (
            dict(filters=16, kernel_size=3, strides=(1, 2), symmetry={"hr": 16}),
            ValueError,
            r"^strides=\(1, 2\) is not allowed; it must be the same on height and width",
        ),
        (
            dict(filters=16, kernel_size=3, dilation_rate=(2, 1), symmetry={"r": 8}),
            ValueError,
            r"^dilation_rate=\(2, 1\) is not allowed; it must be the same on height and width",
        ),
    ],
)
def test_invalid_keras_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SymmetricConv2D(**kwargs)


def test_invalid_input_channels():
    layer = SymmetricConv2D(4, 3, groups=2)
    with pytest.raises(
        ValueError, match=r"input has 3 channels, which is not divisible by groups=2"
    ):
        layer.build((None, 5, 5, 3))
    with pytest.raises(ValueError, match=r"needs a known channel dimension"):
        SymmetricConv2D(4, 3).build((None, 5, 5, None))
    with pytest.raises(ValueError, match=r"too small for kernel_size=\(3, 3\)"):
        SymmetricConv2D(4, 3).compute_output_shape((None, 2, 5, 1))


def test_channels_first_bias_when_a_spatial_size_equals_filters():
    # Regression: keras.ops.add on TensorFlow adds a (1, C, 1) bias along the last axis
    # when that axis also has size C; the layer must add it along the channels.
    layer = SymmetricConv1D(
        4, 1, data_format="channels_first", symmetry={"h": 2}, bias_initializer="random_normal"
    )
    x = np.random.default_rng(3).standard_normal((2, 3, 4)).astype("float32")
    np.testing.assert_allclose(np_(layer(x)), reference(layer, x), atol=1e-5)
