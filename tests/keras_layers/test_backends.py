"""Run the Keras tests again on the other backends and without TensorFlow's oneDNN kernels.

Keras picks its backend once per process, and TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS``
once, at import: each variant is a subprocess running this directory's tests. The main run
uses TensorFlow with TensorFlow's own choice (oneDNN on for CPUs with AVX-512, off
elsewhere); the ``tensorflow-onednn-off`` run is the machine without it, where TensorFlow
has no ``channels_first`` convolution on the CPU.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("keras")

HERE = Path(__file__).parent

VARIANTS = {
    "torch": {"KERAS_BACKEND": "torch"},
    "jax": {"KERAS_BACKEND": "jax"},
    "tensorflow-onednn-off": {"KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "0"},
}


@pytest.mark.skipif(
    os.environ.get("SYMCONV_KERAS_SUBRUN") == "1", reason="already inside a backend re-run"
)
@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_keras_suite_on(variant: str) -> None:
    env = dict(os.environ, SYMCONV_KERAS_SUBRUN="1", **VARIANTS[variant])
    module = env["KERAS_BACKEND"]
    pytest.importorskip(
        module, reason=f"{module} is not installed (pip install 'symconv[{module}]')"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider", "-x"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (
        f"Keras tests failed ({variant}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    )
    # The summary line ("N passed ...") must not read "no tests ran".
    assert " passed" in proc.stdout.strip().splitlines()[-1], proc.stdout[-2000:]
