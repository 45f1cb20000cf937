"""Backend tensors as numpy arrays, for comparing Keras layers with references."""

import numpy as np
from keras import ops


def np_(t) -> np.ndarray:
    """``t`` (a tensor of the active Keras backend, or an array) as a numpy array."""
    return np.asarray(ops.convert_to_numpy(t))
