"""Keras GroupConv1D/2D/3D: naive reference, torch parity, config and .keras files, errors."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import torch
from _arrays import keras_conv_reference, np_, tensorflow_onednn_may_be_wrong
from _group_numpy import MEMBERS, full_kernel
from _tolerance import assert_close_to_scale
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from symconv.keras import GroupConv1D, GroupConv2D, GroupConv3D, keras_to_torch, torch_to_keras
from symconv.nn.group_conv import GroupConv1d, GroupConv2d, GroupConv3d

LAYERS = {1: GroupConv1D, 2: GroupConv2D, 3: GroupConv3D}
TORCH_LAYERS = {1: GroupConv1d, 2: GroupConv2d, 3: GroupConv3d}
KEYS = {1: ["h"], 2: ["h", "v", "hv", "r", "hr"], 3: ["h", "v", "hv", "z", "hz", "vz", "hvz"]}


def reference(layer, x: np.ndarray) -> np.ndarray:
    """Turned copies of the free kernel (``_group_numpy``), then a naive numpy conv."""
    kernel = full_kernel(layer.group, np_(layer.kernel).astype(np.float64))
    bias = np.repeat(np_(layer.bias), len(MEMBERS[layer.group])) if layer.use_bias else None
    return keras_conv_reference(layer, x, kernel, bias)


@st.composite
def configs(draw):
    nd = draw(st.sampled_from([1, 2, 3]))
    key = draw(st.sampled_from(KEYS[nd]))
    order = len(MEMBERS[key])
    groups = draw(st.sampled_from([1, 1, 2]))
    k = draw(st.integers(1, 3))
    ks = (k,) * nd if "r" in key else tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = draw(st.integers(1, 2))
    dilation = 1 if stride > 1 else draw(st.integers(1, 2))
    size = tuple(draw(st.integers(dilation * (k - 1) + 1, dilation * (k - 1) + 3)) for k in ks)
    kwargs = dict(
        filters=order * groups * draw(st.integers(1, 2)),
        kernel_size=ks,
        strides=stride,
        dilation_rate=dilation,
        padding=draw(st.sampled_from(["valid", "same"])),
        groups=groups,
        data_format=draw(st.sampled_from(["channels_last", "channels_first"])),
        use_bias=draw(st.booleans()),
        bias_initializer="random_normal",
        group=key,
    )
    return nd, order * groups * draw(st.integers(1, 2)), size, kwargs


def _input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


@settings(max_examples=15)
@given(cfg=configs())
def test_matches_naive_reference(cfg):
    nd, cin, size, kwargs = cfg
    layer = LAYERS[nd](**kwargs)
    first = kwargs["data_format"] == "channels_first"
    x = _input((2, cin, *size) if first else (2, *size, cin))
    assume(not tensorflow_onednn_may_be_wrong(layer, x.shape))
    out = np_(layer(x))
    expected = reference(layer, x)
    assert out.shape == expected.shape == tuple(layer.compute_output_shape(x.shape))
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    # Only the free kernel and bias are weights; the gather index is not saved.
    assert [w.path.split("/")[-1] for w in layer.weights] == ["kernel", "bias"][
        : 1 + layer.use_bias
    ]
    assert tuple(layer.kernel.shape) == layer.spec.params()[0].keras_shape


@pytest.mark.parametrize("key", KEYS[2])
def test_expanded_kernel_is_the_spec_expansion_for_every_member(key):
    layer = GroupConv2D(2 * len(MEMBERS[key]), 3, group=key)
    layer.build((None, 5, 5, 3 * len(MEMBERS[key])))
    free = np_(layer.kernel)
    np.testing.assert_array_equal(np_(layer.expanded_kernel), full_kernel(key, free))
    torch_free = np.transpose(free, (3, 2, 0, 1))
    np.testing.assert_array_equal(
        np_(layer.expanded_kernel), np.transpose(layer.spec.expand(torch_free), (2, 3, 1, 0))
    )


@pytest.mark.parametrize(
    ("nd", "kwargs", "cin"),
    [
        (1, dict(filters=4, kernel_size=3, group="h", groups=2, padding="same"), 4),
        (2, dict(filters=16, kernel_size=3, group="hr", strides=2), 8),
        (2, dict(filters=8, kernel_size=(3, 2), group="hv", dilation_rate=2), 12),
        (3, dict(filters=8, kernel_size=2, group="hvz", padding="same"), 8),
    ],
)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_torch_keras_parity_both_ways(nd, kwargs, cin, data_format):
    layer = LAYERS[nd](**kwargs, data_format=data_format, bias_initializer="random_normal")
    first = data_format == "channels_first"
    size = (7, 6, 5)[:nd]
    x = _input((3, cin, *size))
    y = np_(layer(x if first else np.moveaxis(x, 1, -1)))
    twin = keras_to_torch(layer)
    assert type(twin) is TORCH_LAYERS[nd] and twin.group == layer.group
    with torch.no_grad():
        want = twin(torch.from_numpy(x)).numpy()
    assert_close_to_scale(y if first else np.moveaxis(y, -1, 1), want)
    back = torch_to_keras(twin, data_format=data_format)
    np.testing.assert_array_equal(np_(back.kernel), np_(layer.kernel))
    np.testing.assert_array_equal(np_(back.bias), np_(layer.bias))
    assert back.spec == layer.spec


def test_initializer_draws_a_full_kernel_and_keeps_member_e():
    init = keras.initializers.GlorotUniform(seed=3)
    layer = GroupConv2D(16, 3, group="hr", kernel_initializer=init)
    layer.build((None, 6, 6, 8))
    full = np_(keras.initializers.GlorotUniform(seed=3)((3, 3, 8, 16)))
    np.testing.assert_array_equal(np_(layer.kernel), full[..., [0, 8]])
    # Fans of the full kernel (as keras.layers.Conv2D): limit sqrt(6 / (9*64 + 9*64)).
    big = GroupConv2D(64, 3, group="hr")
    big.build((None, 6, 6, 64))
    limit = np.sqrt(6 / (9 * 64 + 9 * 64))
    kernel = np_(big.kernel)
    assert kernel.shape == (3, 3, 64, 8)
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit


ROUND_TRIP = {
    1: (dict(filters=4, kernel_size=2, groups=2, group="h", activation="relu"), (6, 4)),
    2: (dict(filters=8, kernel_size=3, strides=2, padding="same", group="r"), (5, 6, 4)),
    3: (dict(filters=8, kernel_size=(1, 2, 2), data_format="channels_first", group="hz"),
        (4, 3, 4, 5)),
}  # fmt: skip


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_config_round_trip_and_keras_save_load(nd, tmp_path):
    kwargs, in_shape = ROUND_TRIP[nd]
    layer = LAYERS[nd](
        **kwargs, bias_initializer="random_normal", kernel_regularizer="l2", name="grp"
    )
    model = keras.Sequential([keras.Input(in_shape), layer, keras.layers.Flatten()])
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone.build((None, *in_shape))
    clone.set_weights(layer.get_weights())
    x = _input((3, *in_shape), seed=1)
    np.testing.assert_array_equal(np_(clone(x)), np_(layer(x)))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path).get_layer("grp")
    assert type(loaded) is type(layer) and loaded.spec == layer.spec
    np.testing.assert_array_equal(np_(loaded(x)), np_(layer(x)))


def test_from_spec_builds_with_the_spec_channels():
    spec = GroupConv2d(16, 24, 3, padding=1, group="hr").spec
    layer = GroupConv2D.from_spec(spec, "channels_first", name="g")
    assert layer.built and layer.name == "g"
    assert layer.spec.pair_fields() == spec.pair_fields()  # torch (1, 1) is Keras "same"
    assert tuple(layer.kernel.shape) == (3, 3, 16, 3)
    with pytest.raises(TypeError, match="(?s)spec=.* must be a 2-D GroupConvSpec"):
        GroupConv2D.from_spec(GroupConv1d(2, 2, 3, group="h").spec)


def test_to_conv_and_from_conv():
    layer = GroupConv2D(8, 3, padding="same", group="r", bias_initializer="random_normal")
    x = _input((2, 5, 5, 8), seed=2)
    y = np_(layer(x))
    plain = layer.to_conv()
    assert type(plain) is keras.layers.Conv2D
    np.testing.assert_allclose(np_(plain(x)), y, atol=1e-5)
    back = GroupConv2D.from_conv(plain, group="r")
    np.testing.assert_allclose(np_(back.kernel), np_(layer.kernel), atol=1e-6)
    np.testing.assert_allclose(np_(back.bias), np_(layer.bias), atol=1e-6)
    np.testing.assert_allclose(np_(back(x)), y, atol=1e-5)
    with pytest.raises(TypeError, match="needs a keras.layers.Conv2D, got Conv1D"):
        GroupConv2D.from_conv(keras.layers.Conv1D(4, 3), group="r")
    with pytest.raises(ValueError, match="needs a built Conv2D"):
        GroupConv2D.from_conv(keras.layers.Conv2D(4, 3), group="r")
    odd = keras.layers.Conv2D(6, 3)
    odd.build((None, 5, 5, 4))
    with pytest.raises(ValueError, match=r"cannot make a GroupConv2D of .*out_channels=6"):
        GroupConv2D.from_conv(odd, group="r")


# -- invalid arguments: the torch layer's messages -----------------------------------------
@pytest.mark.parametrize(
    ("torch_kwargs", "keras_kwargs"),
    [
        (dict(out_channels=6, kernel_size=3, group="hr"), dict(filters=6, kernel_size=3)),
        (dict(out_channels=8, kernel_size=(3, 2), group="r"), dict(filters=8, kernel_size=(3, 2))),
        (dict(out_channels=8, kernel_size=3, group="x"), dict(filters=8, kernel_size=3)),
        (dict(out_channels=8, kernel_size=3, group=4), dict(filters=8, kernel_size=3)),
        (dict(out_channels=8, kernel_size=3, group="z"), dict(filters=8, kernel_size=3)),
        (dict(out_channels=8, kernel_size=3, group="hv", groups=4), dict(filters=8, kernel_size=3)),
    ],
)
def test_invalid_arguments_same_message_as_torch(torch_kwargs, keras_kwargs):
    with pytest.raises((ValueError, TypeError)) as torch_error:
        GroupConv2d(16, **torch_kwargs)
    keras_kwargs = {**keras_kwargs, "group": torch_kwargs["group"]}
    keras_kwargs["groups"] = torch_kwargs.get("groups", 1)
    # The same words, with the argument named as the Keras user wrote it.
    message = str(torch_error.value).replace("out_channels=", "filters=")
    with pytest.raises(torch_error.type, match=f"^{re.escape(message)}$"):
        GroupConv2D(**keras_kwargs)


def test_invalid_input_channels_same_message_as_torch():
    with pytest.raises(ValueError) as torch_error:
        GroupConv2d(12, 8, 3, group="hr")
    with pytest.raises(ValueError, match=f"^{re.escape(str(torch_error.value))}$"):
        GroupConv2D(8, 3, group="hr").build((None, 5, 5, 12))
    with pytest.raises(ValueError, match="needs a known channel dimension"):
        GroupConv2D(8, 3, group="hr").build((None, 5, 5, None))
    with pytest.raises(ValueError, match=r"too small for kernel_size=\(3, 3\)"):
        GroupConv2D(8, 3, group="hr").compute_output_shape((None, 2, 5, 8))


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("family", ["GroupConv", "SymmetricConv"])
def test_positional_arguments_are_keras_conv_ones_in_order(family, rank):
    """A drop-in for keras.layers.ConvND: the same positional parameters, in its order
    (``activation`` before ``use_bias``), then the family's keywords."""
    import inspect

    import symconv.keras as sk

    cls = getattr(sk, f"{family}{rank}D")
    plain = getattr(keras.layers, f"Conv{rank}D")

    def positional(c):
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY)
        return [n for n, p in inspect.signature(c).parameters.items() if p.kind in kinds]

    assert positional(cls) == positional(plain)
    args = (4 * 2**rank, 3, 1, "same", None, 1, 1, "relu", False, "he_normal")
    layer, twin = cls(*args), plain(*args)
    for name in ("activation", "use_bias", "kernel_initializer", "padding"):
        assert type(getattr(layer, name)) is type(getattr(twin, name)), name
    assert layer.activation is twin.activation and layer.use_bias is False
    too_many = (*args, "zeros", None, None, None, None, None, "h")
    with pytest.raises(TypeError, match=rf"^{cls.__name__}\(\) takes at most 16 positional"):
        cls(*too_many)
