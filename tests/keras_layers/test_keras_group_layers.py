"""Keras GroupPool and GroupBatchNormalization: definitions, torch parity, exact equivariance
of stacks of group layers (float64 where the backend has it), config and .keras files."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import torch
from _arrays import backend, np_
from _group_numpy import MEMBERS, act
from _tolerance import assert_close_to_scale

from symconv.core.groups import group as make_group
from symconv.keras import (
    ConvTwist2D,
    GroupBatchNormalization,
    GroupConv2D,
    GroupPool,
    SymmetricConv2D,
)
from symconv.nn.group_norm import GroupBatchNorm2d
from symconv.nn.group_pool import GroupPool as TorchGroupPool

FORMATS = ["channels_last", "channels_first"]


def _input(shape, seed=0, dtype="float32"):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _to_torch_layout(y: np.ndarray, data_format: str) -> np.ndarray:
    return y if data_format == "channels_first" else np.moveaxis(y, -1, 1)


# -- GroupPool ------------------------------------------------------------------------------
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize(("key", "to"), [("hr", None), ("hr", "r"), ("hr", "h"), ("hv", "v")])
def test_group_pool_matches_the_definition_and_torch(key, to, mode, data_format):
    order = len(MEMBERS[key])
    x = _input((2, 3 * order, 4, 5))  # torch layout
    layer = GroupPool(key, mode, to, data_format=data_format)
    keras_x = x if data_format == "channels_first" else np.moveaxis(x, 1, -1)
    got = _to_torch_layout(np_(layer(keras_x)), data_format)
    with torch.no_grad():
        want = TorchGroupPool(key, mode, to)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert (
        got.shape
        == _to_torch_layout(np.empty(layer.compute_output_shape(keras_x.shape)), data_format).shape
    )
    if to is None:  # the definition: a reduction over each field's members
        fields = x.reshape(2, 3, order, 4, 5)
        expected = fields.max(2) if mode == "max" else fields.mean(2)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize(("key", "to"), [("hr", "r"), ("hr", "h"), ("hr", "hv"), ("hvz", "hz")])
def test_group_pool_to_a_subgroup_commutes_with_its_members(key, to, data_format):
    order, nd = len(MEMBERS[key]), 3 if "z" in key else 2
    shape = (2, 2 * order, *(4, 5, 6)[:nd])
    if data_format == "channels_last":
        shape = (shape[0], *shape[2:], shape[1])
    x = _input(shape)
    pool = GroupPool(key, to=to, data_format=data_format)
    y = np_(pool(x))
    members = make_group(key, nd).subgroup(to)
    for i, u in enumerate(members):  # member i of the subgroup is member u of the group
        np.testing.assert_array_equal(
            np_(pool(act(x, key, int(u), data_format))), act(y, to, i, data_format)
        )


# -- GroupBatchNormalization ----------------------------------------------------------------
def _field_reference(x: np.ndarray, order: int, axis: int, gamma, beta, eps) -> np.ndarray:
    """Normalize with each field's statistics over the batch, spatial axes and members."""
    moved = np.moveaxis(x.astype(np.float64), axis, -1)
    fields = moved.reshape(-1, moved.shape[-1] // order, order).transpose(1, 0, 2)
    mean = fields.reshape(fields.shape[0], -1).mean(1)
    var = fields.reshape(fields.shape[0], -1).var(1)
    scale = np.repeat(gamma / np.sqrt(var + eps), order)
    shift = np.repeat(beta - mean * gamma / np.sqrt(var + eps), order)
    return np.moveaxis(moved * scale + shift, -1, axis), mean, var


@pytest.mark.parametrize("axis", [-1, 1])
def test_group_batch_norm_matches_the_definition_and_torch(axis):
    x = _input((4, 16, 5, 6))  # torch layout, 2 fields of |hr| = 8
    keras_x = x if axis == 1 else np.moveaxis(x, 1, -1)
    data_format = "channels_first" if axis == 1 else "channels_last"
    layer = GroupBatchNormalization(
        "hr", axis=axis, momentum=0.9, epsilon=1e-5,
        gamma_initializer="random_normal", beta_initializer="random_normal",
    )  # fmt: skip
    out = np_(layer(keras_x, training=True))
    gamma, beta = np_(layer.gamma), np_(layer.beta)
    expected, mean, var = _field_reference(keras_x, 8, axis, gamma, beta, 1e-5)
    assert_close_to_scale(out, expected)
    np.testing.assert_allclose(np_(layer.moving_mean), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(layer.moving_variance), 0.9 + 0.1 * var, rtol=1e-5)
    # torch: the same output in training, and in eval with the same running statistics.
    twin = GroupBatchNorm2d(16, "hr", eps=1e-5, momentum=0.1)
    with torch.no_grad():
        twin.weight.copy_(torch.from_numpy(gamma))
        twin.bias.copy_(torch.from_numpy(beta))
        want = twin(torch.from_numpy(x)).numpy()
    assert_close_to_scale(_to_torch_layout(out, data_format), want)
    twin.eval()
    layer.moving_variance.assign(twin.running_var.numpy())
    layer.moving_mean.assign(twin.running_mean.numpy())
    with torch.no_grad():
        want = twin(torch.from_numpy(x)).numpy()
    out = np_(layer(keras_x, training=False))
    assert_close_to_scale(_to_torch_layout(out, data_format), want)


def test_group_batch_norm_weights_are_per_field():
    layer = GroupBatchNormalization("r", center=False)
    layer.build((None, 5, 5, 12))
    assert [tuple(w.shape) for w in layer.weights] == [(3,)] * 3
    assert layer.beta is None and [w.path.split("/")[-1] for w in layer.trainable_weights] == [
        "gamma"
    ]


def test_group_batch_norm_rank_picks_the_torch_twin_and_bad_ranks_say_so():
    from symconv.keras import keras_to_torch
    from symconv.nn.group_norm import GroupBatchNorm1d, GroupBatchNorm3d

    for shape, torch_cls in [
        ((None, 7, 4), GroupBatchNorm1d),
        ((None, 3, 3, 3, 8), GroupBatchNorm3d),
    ]:
        layer = GroupBatchNormalization("h" if len(shape) == 3 else "hv", momentum=0.9)
        layer.build(shape)
        twin = keras_to_torch(layer)
        assert type(twin) is torch_cls and twin.momentum == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"needs an input with 1 to 3 spatial axes .* \(None, 8\)"):
        GroupBatchNormalization("h").build((None, 8))


def test_group_batch_norm_copies_check_channels_and_rank_before_copying():
    from symconv.keras import keras_to_torch, torch_to_keras

    small = GroupBatchNormalization("hr", momentum=0.9, epsilon=1e-5)
    small.build((None, 4, 4, 8))  # one field
    with pytest.raises(ValueError, match=r"^mismatched channels: the torch layer has 32, the "):
        keras_to_torch(small, GroupBatchNorm2d(32, "hr"))  # would broadcast 1 field into 4
    with pytest.raises(ValueError, match=r"^mismatched channels: the torch layer has 16, the "):
        torch_to_keras(GroupBatchNorm2d(16, "hr"), _built((None, 32, 4, 4), axis=1))
    one_d = _built((None, 4, 16), group="h")
    with pytest.raises(ValueError, match=r"^mismatched spatial axes: the torch layer has 2, the"):
        torch_to_keras(GroupBatchNorm2d(16, "h", eps=1e-3, momentum=0.01), one_d)


def _built(shape, group="hr", axis=-1):
    layer = GroupBatchNormalization(group, axis=axis, momentum=0.99, epsilon=1e-5)
    layer.build(shape)
    return layer


def test_group_batch_norm_data_format_follows_any_channel_axis_once_built():
    from symconv.keras import torch_to_keras

    torch_layer = GroupBatchNorm2d(16, "hr", momentum=0.01)
    x = _input((2, 16, 5, 5))
    built = _built((None, 16, 5, 5), axis=-3)
    assert built.data_format == "channels_first"
    torch_to_keras(torch_layer, built)
    want = torch_layer.eval()(torch.from_numpy(x)).detach().numpy()
    assert_close_to_scale(np_(built(x, training=False)), want)
    unbuilt = GroupBatchNormalization("hr", axis=-3, momentum=0.99, epsilon=1e-5)
    with pytest.raises(ValueError, match=r"^axis=-3 is neither 1 .* before the layer is built"):
        torch_to_keras(torch_layer, unbuilt)
    assert GroupBatchNormalization("hr", axis=1).data_format == "channels_first"
    assert GroupBatchNormalization("hr").data_format == "channels_last"


# -- exact equivariance of stacks ------------------------------------------------------------
def _precision() -> tuple[str, float]:
    """float64 and 1e-10 where the backend computes in it (JAX without x64 keeps float32)."""
    return ("float32", 1e-5) if backend() == "jax" else ("float64", 1e-10)


class _Chain:
    """Layers applied in turn (a ``keras.Sequential`` would cast float64 inputs to its own
    float32 policy)."""

    def __init__(self, layers: list) -> None:
        self.layers = layers

    def __call__(self, x, training: bool | None = None):
        for layer in self.layers:
            if isinstance(layer, GroupBatchNormalization):
                x = layer(x, training=training)
            else:
                x = layer(x)
        return x


def _stack(data_format: str, dtype: str, head: list) -> _Chain:
    g = dict(padding="same", data_format=data_format, dtype=dtype, group="hr")
    axis = -1 if data_format == "channels_last" else 1
    rand = dict(bias_initializer="random_normal")
    layers = []
    for filters in (16, 16, 8):
        layers += [
            GroupConv2D(filters, 3, **g, **rand),
            GroupBatchNormalization("hr", axis=axis, dtype=dtype, beta_initializer="ones"),
            keras.layers.ReLU(dtype=dtype),
        ]
    return _Chain(layers + head)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("data_format", FORMATS)
def test_stack_of_group_layers_is_exactly_equivariant(data_format, training):
    dtype, tol = _precision()
    pool = GroupPool("hr", to="r", data_format=data_format, dtype=dtype)
    model = _stack(data_format, dtype, [pool])
    first = data_format == "channels_first"
    x = _input((2, 16, 7, 6) if first else (2, 7, 6, 16), dtype=dtype)
    model(x * 3 + 1, training=True)  # moving statistics now differ from field to field
    y = np_(model(x, training=training))
    assert y.shape == ((2, 4, 7, 6) if first else (2, 7, 6, 4))
    for u in range(8):
        got = np_(model(act(x, "hr", u, data_format), training=training))
        if u < 4:  # a turn: the 'r' fields turn and permute
            assert_close_to_scale(got, act(y, "r", u, data_format), tol)
        assert_close_to_scale(
            np_(GroupPool("r", data_format=data_format, dtype=dtype)(got)),
            act(np_(GroupPool("r", data_format=data_format, dtype=dtype)(y)), "hr", u,
                data_format, layout="image"),
            tol,
        )  # fmt: skip


@pytest.mark.parametrize("data_format", FORMATS)
def test_lifted_network_is_exactly_invariant(data_format):
    dtype, tol = _precision()
    lift = SymmetricConv2D(
        16, 3, padding="same", symmetry={"hr": 16}, data_format=data_format, dtype=dtype
    )
    head = [
        GroupPool("hr", data_format=data_format, dtype=dtype),
        # Max, not average: keras.ops.mean averages float64 in float32 on the torch backend.
        keras.layers.GlobalMaxPooling2D(data_format=data_format, dtype=dtype),
        keras.layers.Dense(3, dtype=dtype),
    ]
    model = _Chain([lift, *_stack(data_format, dtype, head).layers])
    first = data_format == "channels_first"
    x = _input((2, 3, 9, 8) if first else (2, 9, 8, 3), dtype=dtype)
    logits = np_(model(x, training=True))
    for u in range(1, 8):
        turned = act(x, "hr", u, data_format, layout="image")
        assert_close_to_scale(np_(model(turned, training=True)), logits, tol)
    # Not vacuous: a plain convolution in front breaks it.
    plain_conv = SymmetricConv2D(16, 3, symmetry=None, data_format=data_format, dtype=dtype)
    plain = _Chain([plain_conv, *model.layers[1:]])
    turned = act(x, "hr", 1, data_format, layout="image")
    assert np.abs(np_(plain(turned)) - np_(plain(x))).max() > 1e-3


# -- serialization and errors ----------------------------------------------------------------
def test_pool_and_norm_config_and_keras_save_load(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((8, 5, 5)),
            GroupBatchNormalization("hv", axis=1, momentum=0.8, gamma_regularizer="l2",
                                    gamma_initializer="random_normal", name="norm"),
            GroupPool("hv", "mean", to="h", data_format="channels_first", name="pool"),
        ]
    )  # fmt: skip
    x = _input((3, 8, 5, 5))
    model(x, training=True)  # moving statistics move away from their initial values
    for name in ("norm", "pool"):
        layer = model.get_layer(name)
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np_(loaded(x)), np_(model(x)))
    np.testing.assert_array_equal(
        np_(loaded.get_layer("norm").moving_variance), np_(model.get_layer("norm").moving_variance)
    )


def test_invalid_arguments_same_message_as_torch():
    for args in [("hr", "sum"), ("r", "max", "hv"), ("x",), (3,)]:
        with pytest.raises((ValueError, TypeError)) as torch_error:
            TorchGroupPool(*args)
        with pytest.raises(torch_error.type, match=f"^{re.escape(str(torch_error.value))}$"):
            GroupPool(*args)
    with pytest.raises(ValueError) as torch_error:
        GroupBatchNorm2d(12, "hr")
    with pytest.raises(ValueError, match=f"^{re.escape(str(torch_error.value))}$"):
        GroupBatchNormalization("hr").build((None, 4, 4, 12))
    with pytest.raises(ValueError, match=f"^{re.escape(str(torch_error.value))}$"):
        GroupPool("hr").build((None, 4, 4, 12))
    with pytest.raises(ValueError, match=r"axis=4 is not allowed; it must be an axis of a rank-4"):
        GroupBatchNormalization("hr", axis=4).build((None, 4, 4, 8))
    with pytest.raises(ValueError, match=r"momentum=1.5 is not allowed"):
        GroupBatchNormalization("hr", momentum=1.5)
    with pytest.raises(TypeError, match=r"center='yes' must be a bool"):
        GroupBatchNormalization("hr", center="yes")
    with pytest.raises(ValueError, match="needs a known channel dimension"):
        GroupPool("hr").build((None, 4, 4, None))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "make",
    [
        lambda f: GroupConv2D(16, 3, group="hr", data_format=f),
        lambda f: GroupConv2D(16, 3, strides=2, padding="same", group="r", data_format=f),
        lambda f: SymmetricConv2D(8, 3, symmetry={"h": 2}, data_format=f),
        lambda f: GroupPool("hr", data_format=f),
        lambda f: GroupPool("hr", "mean", to="r", data_format=f),
        lambda f: ConvTwist2D(8, 3, data_format=f),
        lambda f: ConvTwist2D(8, 3, strides=2, padding_mode="reflect", data_format=f),
    ],
    ids=["group_conv", "group_conv_strided", "symmetric", "pool_max", "pool_mean_to_r", "twist"]
    + ["twist_reflect"],
)
def test_an_empty_batch_gives_an_empty_output_of_the_right_shape(make, data_format):
    """TensorFlow's oneDNN convolution returns an empty input unchanged, and Keras refuses
    the max of an empty tensor: neither may reach the user."""
    layer = make(data_format)
    shape = (0, 8, 8, 16) if data_format == "channels_last" else (0, 16, 8, 8)
    out = np_(layer(np.zeros(shape, "float32")))
    assert out.shape == tuple(layer.compute_output_shape(shape))


def test_an_empty_training_batch_leaves_the_moving_statistics_alone():
    """As torch's batch norm does; the moments of no sample are NaN."""
    layer = GroupBatchNormalization("hr")
    layer(np.ones((2, 4, 4, 16), "float32"), training=True)
    before = [np_(w).copy() for w in (layer.moving_mean, layer.moving_variance)]
    out = layer(np.zeros((0, 4, 4, 16), "float32"), training=True)
    assert np_(out).shape == (0, 4, 4, 16)
    for w, b in zip((layer.moving_mean, layer.moving_variance), before, strict=True):
        np.testing.assert_array_equal(np_(w), b)
