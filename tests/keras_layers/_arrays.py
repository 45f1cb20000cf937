"""Backend tensors as numpy arrays, the active backend, and a Keras conv layer's output in
numpy, for the Keras tests."""

import os

import keras
import numpy as np
from keras import ops

from _numpy_conv import conv_nd


def np_(t) -> np.ndarray:
    """``t`` (a tensor of the active Keras backend, or an array) as a numpy array."""
    return np.asarray(ops.convert_to_numpy(t))


def backend() -> str:
    """The active Keras backend: ``'tensorflow'``, ``'torch'`` or ``'jax'``."""
    return keras.backend.backend()


def tensorflow_onednn_may_be_wrong(layer, x_shape: tuple[int, ...]) -> bool:
    """Whether TensorFlow 2.21's oneDNN convolution may return wrong values for ``layer`` on
    an input of ``x_shape``: it does for some inputs whose output has width 1 (the last
    spatial axis), and never otherwise in a sweep of tiny shapes, with Keras' own ConvND
    too (docs/keras.md). oneDNN is on by default on CPUs with AVX-512 and off with
    ``TF_ENABLE_ONEDNN_OPTS=0``; the other backends test these shapes."""
    if backend() != "tensorflow" or os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        return False
    out = layer.compute_output_shape(x_shape)
    return (out[-1] if layer.data_format == "channels_first" else out[-2]) == 1


def keras_conv_reference(layer, x: np.ndarray, kernel: np.ndarray, bias) -> np.ndarray:
    """A naive numpy convolution with ``layer``'s settings (strides, padding, dilation,
    groups, data format) of ``x`` with the full ``kernel`` ``(*k, in/groups, filters)`` and
    ``bias`` ``(filters,)`` (or ``None``)."""
    if layer.data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    out = conv_nd(x, kernel, layer.strides, layer.padding, layer.dilation_rate, layer.groups)
    if bias is not None:
        out = out + bias
    if layer.data_format == "channels_first":
        out = np.moveaxis(out, -1, 1)
    return out


def assert_fit_step_matches_torch(layer, x, y, lr: float = 0.1) -> None:
    """One full-batch SGD step of a compiled Keras ``fit`` on ``layer`` (MSE on its output)
    moves every weight as the torch twin's step does: Keras' gradients through the layer
    equal torch's, an independent implementation. ``x``/``y``: channels_last arrays."""
    import torch
    import torch.nn.functional as F

    from symconv.keras import keras_to_torch

    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    twin = keras_to_torch(layer)  # the same weights, before the step
    names = [w.path.split("/")[-1] for w in layer.weights]
    before = [np_(w) for w in layer.weights]
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    model.fit(x, y, epochs=1, batch_size=len(x), shuffle=False, verbose=0)

    xt = torch.from_numpy(np.moveaxis(x, -1, 1))
    F.mse_loss(twin(xt), torch.from_numpy(np.moveaxis(y, -1, 1))).backward()
    torch.optim.SGD(twin.parameters(), lr=lr).step()
    for layout in layer.spec.params():
        if not layout.present:
            continue
        after = np_(getattr(layer, layout.keras_name))
        start = before[names.index(layout.keras_name)]
        assert np.abs(after - start).max() > 1e-4, layout.keras_name  # the step moved it
        want = getattr(twin, layout.torch_name).detach().numpy()
        if layout.to_keras is not None:
            want = want.transpose(layout.to_keras)
        np.testing.assert_allclose(after, want, atol=2e-6, err_msg=layout.keras_name)
