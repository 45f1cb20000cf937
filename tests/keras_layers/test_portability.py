"""The same results on every backend and CPU: channels_first, compiled graphs, exports.

``test_backends.py`` runs this file on TensorFlow, TensorFlow without oneDNN, torch and JAX.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from _arrays import backend, np_
from _tolerance import assert_close_to_scale

from symconv.keras import (
    ConvTwist2D,
    GlobalConv1D,
    SymmetricConv1D,
    SymmetricConv2D,
    SymmetricConv3D,
    TopKPool,
)

CONV_CASES = {
    "sym1d": (SymmetricConv1D, dict(filters=4, kernel_size=3, symmetry={"h": 2}), (9,), 3),
    "sym1d-groups-strided": (
        SymmetricConv1D,
        dict(filters=8, kernel_size=3, strides=2, groups=2, symmetry={"h": 4}),
        (9,),
        4,
    ),
    "sym2d-same-dilated": (
        SymmetricConv2D,
        dict(filters=8, kernel_size=3, padding="same", dilation_rate=2, symmetry="hv:4,h:2"),
        (7, 6),
        3,
    ),
    "sym2d-groups-strided": (
        SymmetricConv2D,
        dict(filters=8, kernel_size=(3, 2), strides=(2, 1), groups=2, symmetry={"v": 4}),
        (7, 6),
        4,
    ),
    "sym3d": (SymmetricConv3D, dict(filters=8, kernel_size=3, symmetry={"hvz": 8}), (5, 4, 6), 2),
    "twist-groups-reflect": (
        ConvTwist2D,
        dict(filters=6, strides=2, groups=2, use_bias=True, padding_mode="reflect"),
        (7, 8),
        4,
    ),
    "twist-k5": (ConvTwist2D, dict(filters=4, kernel_size=5), (6, 7), 3),
}


def _twins(cls, kwargs, spatial, channels):
    """A channels_last layer and its channels_first copy with the same (random) weights."""
    last = cls(**kwargs, data_format="channels_last", bias_initializer="random_normal")
    last.build((None, *spatial, channels))
    first = cls.from_config({**last.get_config(), "data_format": "channels_first"})
    first.build((None, channels, *spatial))
    first.set_weights(last.get_weights())
    return last, first


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_channels_first_equals_channels_last(case):
    """channels_first works on every backend and CPU (TensorFlow without oneDNN has no NCHW
    convolution on the CPU) and gives the channels_last numbers: identical on TensorFlow,
    where both run the same NHWC convolution, within float rounding elsewhere."""
    cls, kwargs, spatial, channels = CONV_CASES[case]
    last, first = _twins(cls, kwargs, spatial, channels)
    x = np.random.default_rng(0).standard_normal((2, *spatial, channels)).astype("float32")
    y_last = np_(last(x))
    y_first = np.moveaxis(np_(first(np.moveaxis(x, -1, 1))), 1, -1)
    if backend() == "tensorflow":
        np.testing.assert_array_equal(y_first, y_last)
    else:
        assert_close_to_scale(y_first, y_last, rtol=1e-6)
    # A compiled channels_first model predicts the same, and one full-batch SGD step of
    # `fit` moves every weight as the channels_last step does (the gradients agree).
    model_first = keras.Sequential([keras.Input((channels, *spatial)), first])
    np.testing.assert_allclose(
        model_first.predict(np.moveaxis(x, -1, 1), verbose=0),
        np.moveaxis(y_first, -1, 1),
        atol=1e-5,
    )
    model_last = keras.Sequential([keras.Input((*spatial, channels)), last])
    target = np.random.default_rng(1).standard_normal(y_last.shape).astype("float32")
    before = last.get_weights()
    for model, inputs, goal in (
        (model_last, x, target),
        (model_first, np.moveaxis(x, -1, 1), np.moveaxis(target, -1, 1)),
    ):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(inputs, goal, epochs=1, batch_size=len(x), shuffle=False, verbose=0)
    for start, w_last, w_first in zip(before, last.get_weights(), first.get_weights(), strict=True):
        assert np.abs(w_last - start).max() > 1e-4  # the step moved every weight
        assert_close_to_scale(w_first, w_last, rtol=1e-5)


@pytest.mark.skipif(
    backend() != "tensorflow" or os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0",
    reason="checks the oneDNN-off re-run reproduces a CPU without NCHW convolutions",
)
def test_tensorflow_without_onednn_has_no_nchw_conv():
    """The premise of the oneDNN-off run: Keras' own channels_first Conv2D fails there."""
    import tensorflow as tf

    x = np.zeros((1, 2, 5, 5), "float32")
    with pytest.raises(tf.errors.UnimplementedError, match="NHWC"):
        keras.layers.Conv2D(3, 3, data_format="channels_first")(x)
    # ... while the symmetric twin computes it.
    assert np_(SymmetricConv2D(3, 3, data_format="channels_first")(x)).shape == (1, 3, 3, 3)


def _export_models():
    """(name, model, input): every layer, channels_first convolutions, a masked set model."""
    rng = np.random.default_rng(1)
    models = []
    for rank, cls in ((1, SymmetricConv1D), (2, SymmetricConv2D), (3, SymmetricConv3D)):
        spatial = (6, 5, 4)[:rank]
        layer = cls(4, 3, data_format="channels_first", symmetry={"h": 2}, share_bias=False)
        models.append(
            (
                cls.__name__,
                keras.Sequential([keras.Input((3, *spatial)), layer]),
                rng.standard_normal((2, 3, *spatial)),
            )
        )
    twist = keras.Sequential(
        [
            keras.Input((2, 6, 7)),
            ConvTwist2D(4, use_bias=True, data_format="channels_first"),
            ConvTwist2D(4, strides=2, data_format="channels_first", padding_mode="reflect"),
        ]
    )
    models.append(("ConvTwist2D", twist, rng.standard_normal((2, 2, 6, 7))))
    inputs = keras.Input((7, 3))
    features = GlobalConv1D(5, reduction="mean", activation="relu")(inputs)
    sets = keras.Model(inputs, TopKPool(3)(features))
    models.append(("GlobalConv1D+TopKPool", sets, rng.standard_normal((2, 7, 3))))
    return [(name, model, x.astype("float32")) for name, model, x in models]


def _masked_set_model(top_k=True):
    """Sets of any length; zero rows are padding."""
    inputs = keras.Input((None, 3))
    x = keras.layers.Masking(0.0)(inputs)
    x = GlobalConv1D(5, reduction="mean", activation="relu")(x)
    return keras.Model(inputs, TopKPool(3)(x) if top_k else x)


def _padded_sets(rng, length=7):
    x = rng.standard_normal((2, length, 3))
    x[0, 5:] = 0
    return x.astype("float32")


def _onnx_round_trip(model, x, path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    expected = np_(model(x))
    model.export(str(path), format="onnx", verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(inputs):
        return session.run(None, {session.get_inputs()[0].name: inputs})[0]

    assert_close_to_scale(run(x), expected)
    return run


@pytest.mark.skipif(backend() != "torch", reason="Keras exports ONNX from torch here")
# Raised inside Keras' use of torch's TorchScript ONNX exporter, not by symconv.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Constant folding:UserWarning")
def test_onnx_export_on_torch_matches_onnxruntime(tmp_path):
    for name, model, x in _export_models():
        _onnx_round_trip(model, x, tmp_path / f"{name}.onnx")
    # Sets of any length: GlobalConv1D exports with a dynamic length; TopKPool(k > 1) cannot
    # (Keras traces a length-None input at length 1) and says so.
    rng = np.random.default_rng(2)
    model = _masked_set_model(top_k=False)
    run = _onnx_round_trip(model, _padded_sets(rng), tmp_path / "sets.onnx")
    short = _padded_sets(rng, length=5)
    assert_close_to_scale(run(short), np_(model(short)))
    model = _masked_set_model()
    model(short)
    with pytest.raises(ValueError, match=r"TopKPool\(k=3\) cannot be exported to ONNX"):
        model.export(str(tmp_path / "topk.onnx"), format="onnx", verbose=False)


def _saved_model_round_trip(model, x, path):
    import tensorflow as tf

    expected = np_(model(x))
    model.export(str(path), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(path))  # kept: serve() needs its variables alive

    def run(inputs):
        return loaded.serve(tf.constant(inputs)).numpy()

    assert_close_to_scale(run(x), expected)
    return run


@pytest.mark.skipif(backend() == "torch", reason="SavedModel export needs TensorFlow or JAX")
def test_saved_model_export_round_trip(tmp_path):
    pytest.importorskip("tensorflow")
    for name, model, x in _export_models():
        _saved_model_round_trip(model, x, tmp_path / name)
    # Sets of any length: all of it from TensorFlow; from JAX, TopKPool needs a fixed length.
    rng = np.random.default_rng(2)
    model = _masked_set_model(top_k=backend() == "tensorflow")
    run = _saved_model_round_trip(model, _padded_sets(rng), tmp_path / "sets")
    short = _padded_sets(rng, length=5)
    assert_close_to_scale(run(short), np_(model(short)))
    if backend() == "jax":
        with pytest.raises(
            ValueError, match=r"TopKPool\(k=3\) on the JAX backend needs a fixed length"
        ):
            _masked_set_model().export(
                str(tmp_path / "topk"), format="tf_saved_model", verbose=False
            )
