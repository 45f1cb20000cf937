"""Shared test configuration.

Keras chooses its backend once per process, on first import. The main run uses the
TensorFlow backend; ``tests/keras_layers/test_backends.py`` re-runs the Keras tests in
subprocesses on torch, on JAX and on TensorFlow with ``TF_ENABLE_ONEDNN_OPTS=0``.

Skipping, one idiom each:

- an optional module: ``pytest.importorskip("name")`` (at module level when the whole file
  needs it, else in the test);
- a missing capability of this machine: a marker, checked here before the test runs:
  ``@pytest.mark.requires_cuda`` (a CUDA device), ``@pytest.mark.requires_gloo``
  (``torch.distributed`` with gloo), ``@pytest.mark.requires_inductor`` (``torch.compile``
  with its default backend, which needs a C++ compiler). The ``device`` fixture runs a
  test on the CPU and, marked ``requires_cuda``, on CUDA.
"""

import functools
import os
import sys
from pathlib import Path

# The benchmarks' baselines (e.g. the blog post's ConvTwist) are what some tests compare with.
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.requires_cuda)]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@functools.cache
def _gloo_works() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available()


@functools.cache
def _inductor_works() -> bool:
    try:
        torch.compile(lambda t: t * 2)(torch.ones(2))
    except Exception:  # noqa: BLE001 - any failure means no usable toolchain here
        return False
    return True


#: marker -> (is the capability here?, the skip reason)
_CAPABILITIES = {
    "requires_cuda": (torch.cuda.is_available, "needs a CUDA device"),
    "requires_gloo": (_gloo_works, "needs torch.distributed with the gloo backend"),
    "requires_inductor": (_inductor_works, "needs torch.compile's inductor (a C++ compiler)"),
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, (available, reason) in _CAPABILITIES.items():
        if item.get_closest_marker(marker) is not None and not available():
            pytest.skip(reason)


@pytest.fixture
def one_thread():
    """One torch thread for the test: exact, reproducible numbers, and fast on a busy machine
    (an oversubscribed thread pool crawls)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config: pytest.Config) -> None:
    for marker, (_, reason) in _CAPABILITIES.items():
        config.addinivalue_line("markers", f"{marker}: {reason}; skipped without it")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    _match_inductor_to_aten_capability()


def _match_inductor_to_aten_capability() -> None:
    """Make ``ATEN_CPU_CAPABILITY=avx2`` (how the tests imitate a CPU without AVX-512) a
    faithful imitation for ``torch.compile`` too.

    With the variable set, inductor compiles its C++ kernels for that ISA but still sizes
    their tiles from the real CPU's vectors, and the mixture reads past its buffers (garbage
    outputs on an AVX-512 machine, torch 2.13). On a real AVX2-only CPU both agree; setting
    ``simdlen`` to the imitated width makes them agree here.
    """
    widths = {"avx2": 256, "avx512": 512}
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    if capability in widths:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.simdlen = widths[capability]
