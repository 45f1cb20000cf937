"""The expansion gather: ``source.reshape(-1)[index]`` as one ``index_select`` on flat views.

Advanced indexing (``free.reshape(-1)[index]``) runs a generic kernel forward and
differentiates through ``index_put_(accumulate=True)``; ``index_select`` on a flat view is
one kernel each way (its autograd backward is a single ``index_add``, deterministic on CUDA
when deterministic algorithms are on). Being a native op, it adds no Python-level autograd
node (the host cost of a training step on a GPU), and it is recorded as a plain op by
``torch.jit.trace``, FX and ONNX export. Timings: benchmarks/README.md.

Under ``torch.compile`` and ``torch.export`` the same gather is written ``torch.take``:
inductor cannot lower ``index_select`` of a flat view once the parameters' sizes are
symbolic (``dynamic=True``, or automatic dynamic shapes after a recompile), and it fuses
``take`` into one indexing kernel anyway.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gather(source: Tensor, index: Tensor) -> Tensor:
    """``source.reshape(-1)[index]``, shaped like ``index``; differentiable (also twice).

    ``source``: any shape (a view of it is taken when it is contiguous in the order of
    ``reshape(-1)``); ``index``: integer positions into the flattened ``source``.
    """
    if torch.compiler.is_compiling():
        return torch.take(source, index)
    return source.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape)
