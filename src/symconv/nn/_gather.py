"""The expansion gather: ``source.reshape(rows, -1).index_select(1, index)`` on views.

The gather of a kernel from free parameters factors into rows sharing one small index
(:class:`symconv.core.row_gather.RowGather`); ``index_select`` along axis 1 of the
``(rows, row_size)`` view reads that index from cache once per row, a single native op
each way (its autograd backward is one ``index_add``, deterministic on CUDA when
deterministic algorithms are on). Being native ops, they add no Python-level autograd
node (the host cost of a training step on a GPU), and ``torch.jit.trace``, FX and ONNX
export record them as plain ops. One row is a flat ``index_select`` along axis 0.
Timings: benchmarks/README.md.

Under ``torch.compile`` and ``torch.export`` the same gather is written ``torch.take``
with the full index computed in the graph: inductor cannot lower ``index_select`` of a
reshaped view once the parameters' sizes are symbolic (``dynamic=True``, or automatic
dynamic shapes after a recompile), and it fuses the index arithmetic and ``take`` into
one kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gather(source: Tensor, index: Tensor, rows: int, shape: tuple[int, ...]) -> Tensor:
    """``source.reshape(rows, -1)[:, index]`` reshaped to ``shape``; differentiable (also
    twice).

    ``source``: any shape, ``rows`` dividing its size (a view of it is taken when it is
    contiguous in the order of ``reshape``); ``index``: ``(n,)`` int64 positions within
    one row; ``shape``: ``rows * n`` entries.
    """
    if torch.compiler.is_compiling():
        offsets = torch.arange(rows, device=index.device) * (source.numel() // rows)
        return torch.take(source, (offsets[:, None] + index).reshape(shape))
    if rows == 1:
        return source.reshape(-1).index_select(0, index).view(shape)
    return source.reshape(rows, -1).index_select(1, index).view(shape)
