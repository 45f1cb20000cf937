"""Backend tensors as numpy arrays, and the active backend, for the Keras tests."""

import keras
import numpy as np
from keras import ops


def np_(t) -> np.ndarray:
    """``t`` (a tensor of the active Keras backend, or an array) as a numpy array."""
    return np.asarray(ops.convert_to_numpy(t))


def backend() -> str:
    """The active Keras backend: ``'tensorflow'``, ``'torch'`` or ``'jax'``."""
    return keras.backend.backend()
