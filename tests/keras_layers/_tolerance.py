"""Float32 tolerance for comparing two computations of the same layer."""

import numpy as np


def assert_close_to_scale(actual, expected, rtol: float = 1e-5) -> None:
    """``|actual - expected| <= rtol * max(1, max |expected|)`` everywhere.

    Relative to the output's scale, not per element: two float32 computations that sum in
    different orders differ by rounding that grows with the magnitude of the terms (a
    64-channel ConvTwist with outputs of ~50 differs by ~3e-5 between torch and Keras), and
    an element near 0 can carry the rounding of large terms that cancelled.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)
