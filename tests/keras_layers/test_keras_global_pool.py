"""Keras GlobalConv1D and TopKPool: references, equivariance, masks, save/load, errors."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from _arrays import backend, np_
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from symconv import GlobalConv1d
from symconv import TopKPool as TorchTopKPool
from symconv.core.global_conv import GlobalConvSpec
from symconv.core.pooling import TopKPoolSpec
from symconv.keras import GlobalConv1D, TopKPool
from symconv.keras import global_conv as keras_global_conv
from symconv.keras import pooling as keras_pooling


def reference(layer, x, mask=None):
    """Straight from the formula: a double loop over positions i, j (float64, numpy)."""
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        x = x[..., None]
    C, S = np_(layer.center).astype(np.float64), np_(layer.surround).astype(np.float64)
    b = np_(layer.bias).astype(np.float64) if layer.use_bias else 0.0
    valid = np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask)
    out = np.zeros((*x.shape[:2], layer.filters))
    for s in range(x.shape[0]):
        n_valid = int(valid[s].sum())
        for i in range(x.shape[1]):
            if not valid[s, i]:
                continue
            surround = np.zeros(x.shape[2])
            for j in range(x.shape[1]):
                if j != i and valid[s, j]:
                    surround += x[s, j]
            if layer.reduction == "mean" and n_valid > 1:
                surround /= n_valid - 1
            out[s, i] = x[s, i] @ C + surround @ S + b
    return out


def _layer(**kwargs):
    kwargs.setdefault("bias_initializer", "random_normal")
    return GlobalConv1D(**kwargs)


@settings(max_examples=10)
@given(
    n=st.integers(1, 6),
    cin=st.integers(1, 3),
    filters=st.integers(1, 3),
    use_bias=st.booleans(),
    reduction=st.sampled_from(["sum", "mean"]),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(n, cin, filters, use_bias, reduction, seed):
    rng = np.random.default_rng(seed)
    layer = _layer(filters=filters, use_bias=use_bias, reduction=reduction)
    x = rng.standard_normal((2, n, cin)).astype("float32")
    mask = rng.random((2, n)) > 0.3
    for m in (None, mask):
        out = np_(layer(x, mask=m))
        assert out.shape == (2, n, filters)
        np.testing.assert_allclose(out, reference(layer, x, m), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_permutation_equivariance_with_and_without_mask(reduction):
    rng = np.random.default_rng(0)
    layer = _layer(filters=4, reduction=reduction, activation="tanh")
    x = rng.standard_normal((3, 7, 2)).astype("float32")
    mask = rng.random((3, 7)) > 0.3
    y, y_masked = np_(layer(x)), np_(layer(x, mask=mask))
    for _ in range(3):
        perm = rng.permutation(7)
        np.testing.assert_allclose(np_(layer(x[:, perm])), y[:, perm], atol=1e-5)
        np.testing.assert_allclose(
            np_(layer(x[:, perm], mask=mask[:, perm])), y_masked[:, perm], atol=1e-5
        )
    # Equivariant, not invariant (the seed's docstring said invariant).
    assert not np.allclose(np_(layer(x[:, ::-1])), y, atol=1e-3)


def test_masked_positions_neither_contribute_nor_receive():
    rng = np.random.default_rng(1)
    layer = _layer(filters=3, reduction="mean", activation="sigmoid")
    x = rng.standard_normal((2, 6, 2)).astype("float32")
    mask = np.array([[1, 1, 0, 1, 0, 0], [0, 1, 1, 1, 1, 1]], bool)
    out = np_(layer(x, mask=mask))
    assert np.all(out[~mask] == 0)  # even though sigmoid(0) != 0
    garbage = x.copy()
    garbage[~mask] = np.nan
    np.testing.assert_allclose(np_(layer(garbage, mask=mask)), out, atol=1e-6)
    for s in range(2):
        np.testing.assert_allclose(np_(layer(x[s : s + 1, mask[s]]))[0], out[s, mask[s]], atol=1e-5)


def test_keras_mask_is_consumed_and_propagated():
    # A Masking layer's mask reaches GlobalConv1D, which passes it on.
    inputs = keras.Input((5, 2))
    masked = keras.layers.Masking(mask_value=0.0)(inputs)
    layer = _layer(filters=3)
    outputs = layer(masked)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(2).standard_normal((2, 5, 2)).astype("float32")
    x[0, 3:] = 0.0
    mask = np.any(x != 0, axis=-1)
    np.testing.assert_allclose(np_(model(x)), np_(layer(x, mask=mask)), atol=1e-6)
    assert np_(layer.compute_mask(x, mask)).tolist() == mask.tolist()


def test_two_dim_input_and_length_one():
    layer = _layer(filters=4)
    x = np.random.default_rng(3).standard_normal((3, 5)).astype("float32")
    np.testing.assert_allclose(np_(layer(x)), reference(layer, x), atol=1e-5)
    assert tuple(layer(x).shape) == (3, 5, 4)
    one = _layer(filters=2, reduction="mean")
    one.build((None, None, 3))
    x1 = np.ones((2, 1, 3), "float32")
    expected = x1[:, 0] @ np_(one.center) + np_(one.bias)  # empty surround
    np.testing.assert_allclose(np_(one(x1))[:, 0], expected, atol=1e-6)


def test_config_round_trip_and_keras_save_load(tmp_path):
    layer = GlobalConv1D(
        3,
        reduction="mean",
        activation="relu",
        bias_initializer="ones",
        kernel_regularizer="l2",
        name="gc",
    )
    model = keras.Sequential([keras.Input((5, 2)), layer, TopKPool(2, name="topk")])
    config = layer.get_config()
    clone = GlobalConv1D.from_config(config)
    assert clone.get_config() == config
    clone.build((None, 5, 2))
    clone.set_weights(layer.get_weights())
    x = np.random.default_rng(4).standard_normal((3, 5, 2)).astype("float32")
    np.testing.assert_allclose(np_(clone(x)), np_(layer(x)), atol=1e-6)
    assert TopKPool.from_config(model.get_layer("topk").get_config()).k == 2
    path = tmp_path / "set.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("gc")) is GlobalConv1D
    assert type(loaded.get_layer("topk")) is TopKPool
    np.testing.assert_array_equal(np_(loaded(x)), np_(model(x)))


def test_a_fit_step_matches_the_torch_twin():
    """One full-batch SGD step of a compiled ``fit`` moves every weight exactly as the torch
    twin's step does: the Keras gradients through a masked GlobalConv1D and TopKPool are
    torch's (an independent implementation of the same formula)."""
    import torch
    import torch.nn.functional as F

    from symconv.keras import keras_to_torch

    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 6, 2)).astype("float32")
    x[:3, 4:] = 0.0  # padding, masked by Masking below
    y = rng.standard_normal((8, 2, 4)).astype("float32")
    conv = _layer(filters=4, reduction="mean", activation="tanh")
    model = keras.Sequential([keras.Input((6, 2)), keras.layers.Masking(0.0), conv, TopKPool(2)])
    twin = keras_to_torch(conv)  # the same weights, before the step
    before = [np_(w) for w in conv.weights]
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    model.fit(x, y, epochs=1, batch_size=len(x), shuffle=False, verbose=0)

    mask = torch.from_numpy(np.any(x != 0, axis=-1))
    xt = torch.from_numpy(x).transpose(1, 2)
    out = TorchTopKPool(2)(twin(xt, mask), mask).transpose(1, 2)
    F.mse_loss(out, torch.from_numpy(y)).backward()
    torch.optim.SGD(twin.parameters(), lr=0.5).step()
    for name, start in zip(("center", "surround", "bias"), before, strict=True):
        after = np_(getattr(conv, name))
        assert np.abs(after - start).max() > 1e-3, name  # the step moved it
        np.testing.assert_allclose(after, getattr(twin, name).detach().numpy(), atol=2e-6)


def test_invalid_arguments_same_messages_as_torch():
    with pytest.raises(ValueError) as torch_error:
        GlobalConv1d(2, 2, reduction="max")
    with pytest.raises(ValueError, match=f"^{re.escape(str(torch_error.value))}$"):
        GlobalConv1D(2, reduction="max")
    with pytest.raises(ValueError, match=r"filters=0 is not allowed; it must be an int >= 1"):
        GlobalConv1D(0)
    with pytest.raises(TypeError, match=r"use_bias=1 must be a bool"):
        GlobalConv1D(2, use_bias=1)
    with pytest.raises(ValueError, match=r"needs a known channel dimension"):
        GlobalConv1D(2).build((None, 5, None))


# -- TopKPool ----------------------------------------------------------------------------
def test_topk_sorted_values_from_the_input():
    x = np.random.default_rng(6).standard_normal((2, 7, 3)).astype("float32")
    out = np_(TopKPool(3)(x))
    assert out.shape == (2, 3, 3)
    expected = -np.sort(-x, axis=1)[:, :3]
    np.testing.assert_array_equal(out, expected)


def test_topk_k1_equals_global_max_pooling():
    x = np.random.default_rng(7).standard_normal((4, 9, 5)).astype("float32")
    np.testing.assert_array_equal(
        np_(TopKPool(1)(x)), np_(keras.layers.GlobalMaxPooling1D(keepdims=True)(x))
    )


def _grad(fn, x):
    """d sum(fn(x) * w) / dx on the active backend (w = 1, 10, 100, ... along axis 1)."""
    if backend() == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = fn(xt)
            w = tf.reshape(10.0 ** tf.range(y.shape[1], dtype=y.dtype), (1, -1, 1))
            loss = tf.reduce_sum(y * w)
        return tape.gradient(loss, xt).numpy()
    if backend() == "jax":
        import jax
        import jax.numpy as jnp

        def loss(xj):
            y = fn(xj)
            return jnp.sum(y * (10.0 ** jnp.arange(y.shape[1], dtype=y.dtype))[None, :, None])

        return np.asarray(jax.grad(loss)(jnp.asarray(x)))
    xt = ops.convert_to_tensor(x).requires_grad_()
    y = fn(xt)
    w = (10.0 ** ops.arange(y.shape[1], dtype=y.dtype)).reshape(1, -1, 1)
    (y * w).sum().backward()
    return xt.grad.cpu().numpy()


def test_topk_gradients_flow_to_the_selected_entries():
    x = np.array([[[0.5], [3.0], [-1.0], [2.0], [1.0]]], "float32")
    grad = _grad(TopKPool(2), x)
    np.testing.assert_array_equal(grad[0, :, 0], [0.0, 1.0, 0.0, 10.0, 0.0])


def test_topk_errors_same_messages_as_torch():
    for bad in (0, -1, 2.0, True):
        with pytest.raises((ValueError, TypeError)) as torch_error:
            TorchTopKPool(bad)
        with pytest.raises(torch_error.type, match=f"^{re.escape(str(torch_error.value))}$"):
            TopKPool(bad)
    with pytest.raises(ValueError) as torch_error:
        TorchTopKPool(5)(__import__("torch").zeros(2, 3, 4))
    with pytest.raises(ValueError, match=re.escape(str(torch_error.value))):
        TopKPool(5)(np.zeros((2, 4, 3), "float32"))
    with pytest.raises(ValueError, match=r"TopKPool\(k=5\) needs at least k values.*length is 4"):
        keras.Sequential([keras.Input((4, 3)), TopKPool(5)])
    assert tuple(TopKPool(2).compute_output_shape((None, 6, 3))) == (None, 2, 3)


@pytest.mark.parametrize("initializer", ["glorot_uniform", keras.initializers.RandomNormal(seed=4)])
def test_center_and_surround_are_drawn_independently(initializer):
    # One Keras initializer object returns the same values on every call.
    layer = GlobalConv1D(8, kernel_initializer=initializer)
    layer.build((None, None, 5))
    assert not np.allclose(np_(layer.center), np_(layer.surround))
    if not isinstance(initializer, str):  # a seeded initializer stays deterministic
        again = GlobalConv1D(8, kernel_initializer=keras.initializers.RandomNormal(seed=4))
        again.build((None, None, 5))
        np.testing.assert_array_equal(np_(again.surround), np_(layer.surround))


def test_topk_mask_matches_torch_and_ends_the_mask():
    import torch

    x = np.random.default_rng(8).standard_normal((3, 6, 2)).astype("float32")
    mask = np.array([[1, 1, 0, 1, 1, 0], [0, 0, 0, 0, 1, 0], [1] * 6], bool)
    out = np_(TopKPool(3)(x, mask=mask))
    expected = TorchTopKPool(3)(torch.from_numpy(x).transpose(1, 2), torch.from_numpy(mask))
    np.testing.assert_array_equal(out, expected.transpose(1, 2).numpy())
    assert np.all(out[1, 1:] == 0) and np.isfinite(out).all()
    # Through a Keras mask: Masking -> GlobalConv1D -> TopKPool sees it, passes none on.
    inputs = keras.Input((None, 2))
    pooled = TopKPool(2)(GlobalConv1D(3)(keras.layers.Masking(mask_value=0.0)(inputs)))
    model = keras.Model(inputs, pooled)
    padded = x.copy()
    padded[0, 3:] = 0.0
    alone = np_(model(padded[:1, :3]))
    np.testing.assert_allclose(np_(model(padded))[:1], alone, atol=1e-5)
    assert TopKPool(2).compute_mask(x, mask) is None


# -- the specs (symconv.core) ------------------------------------------------------------
@pytest.mark.parametrize("use_bias", [True, False])
def test_global_conv_spec_describes_the_layer(use_bias):
    layer = GlobalConv1D(5, reduction="mean", use_bias=use_bias)
    assert layer.spec == GlobalConvSpec(None, 5, use_bias, "mean")
    layer.build((None, None, 3))
    assert layer.spec == GlobalConvSpec(3, 5, use_bias, "mean")
    for layout in layer.spec.params():
        weight = getattr(layer, layout.keras_name)
        assert (weight is not None) == layout.present
        if weight is not None:
            assert tuple(weight.shape) == layout.keras_shape
    twin = GlobalConv1D.from_spec(layer.spec, activation="tanh", name="twin")
    assert twin.built and twin.spec == layer.spec and twin.name == "twin"
    assert keras.activations.serialize(twin.activation) == "tanh"
    unbuilt = GlobalConv1D.from_spec(GlobalConvSpec.from_keras(2), data_format="channels_first")
    assert not unbuilt.built and tuple(unbuilt(np.zeros((1, 4, 3), "float32")).shape) == (1, 4, 2)
    with pytest.raises(ValueError, match=r"data_format='nhwc' is not allowed"):
        GlobalConv1D.from_spec(layer.spec, data_format="nhwc")
    with pytest.raises(TypeError, match=r"spec=TopKPoolSpec\(k=2\) must be a GlobalConvSpec"):
        GlobalConv1D.from_spec(TopKPoolSpec(2))


def test_topk_spec_describes_the_layer():
    layer = TopKPool(2, name="top")
    assert layer.spec == TopKPoolSpec(2)
    twin = TopKPool.from_spec(layer.spec, name="twin")
    assert twin.k == 2 and twin.name == "twin"
    with pytest.raises(TypeError, match=r"must be a TopKPoolSpec"):
        TopKPool.from_spec(GlobalConvSpec.example())


def test_keras_layers_do_not_import_torch_modules():
    """Their rules come from symconv.core, not from the torch layers (the package's
    __init__ imports interop, which needs torch, so the modules' own imports are read).
    TopKPool imports torch only inside its torch-backend ONNX check."""

    def imports(nodes):
        return [
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in nodes
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        ]

    for module in (keras_global_conv, keras_pooling):
        tree = ast.parse(Path(module.__file__).read_text())
        assert not [m for m in imports(ast.walk(tree)) if m.startswith("symconv.nn")]
        assert "torch" not in [m.split(".")[0] for m in imports(tree.body)]
