"""A gather split into rows: ``source.reshape(-1)[flat]`` as rows sharing one index.

The kernel of a symmetric or group convolution is gathered from the free parameters,
and its out-channel blocks read only their own free block, at the same offsets in each:
output field ``f`` of a group convolution is the ``|G|`` transformed copies of free filter
``f``; an orbit of a lifting layer, the members of its free filter. So the full-size
index (``out_channels * in_channels * k^d`` entries) factors into ``rows`` blocks sharing
one small row index (``1 / rows`` of it): ``flat[r, j] == r * row_size + index[j]``.
Backends gather along axis 1 of the ``(rows, row_size)`` view with that row index: the
index they keep is ``rows`` times smaller, and a gather along axis 1 reads it once per row
from cache where the flat gather streams a full-size index from memory (timings:
benchmarks/README.md). A gather without that structure is one row (``rows == 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from symconv.core.validate import check_int, value_error

__all__ = ["RowGather", "column_rows"]


@dataclass(frozen=True, eq=False)
class RowGather:
    """``source.reshape(rows, row_size)[:, index].reshape(shape)``.

    ``shape``: the gathered tensor's shape (``rows * len(index)`` entries, its leading axis
    a multiple of ``rows``); ``index``: ``(n,)`` int64 positions in one source row.
    """

    rows: int
    row_size: int
    index: np.ndarray
    shape: tuple[int, ...]

    @classmethod
    def of(cls, flat: np.ndarray, source_size: int) -> RowGather:
        """The gather ``source.reshape(-1)[flat]`` (``flat``: integer array, any shape with
        at least one axis) with as many rows as it factors into; ``source_size``: the
        source's number of entries."""
        source_size = check_int("source_size", source_size, minimum=1)
        flat = np.asarray(flat)
        if flat.ndim == 0 or flat.dtype.kind not in "iu":
            raise value_error("flat", flat.dtype, "an integer array with at least one axis")
        if flat.size and (flat.min() < 0 or flat.max() >= source_size):
            raise value_error(
                "flat", f"[{flat.min()}, {flat.max()}]", f"positions in [0, {source_size})"
            )
        flat = flat.astype(np.int64, copy=False)
        for rows in _divisors_descending(int(np.gcd(flat.shape[0], source_size))):
            index = _row_index(flat, source_size, rows)
            if index is not None:
                return cls(int(rows), source_size // rows, index, tuple(map(int, flat.shape)))
        raise AssertionError("unreachable: one row always factors")  # pragma: no cover

    @property
    def size(self) -> int:
        """The gathered tensor's number of entries."""
        return self.rows * len(self.index)

    def flat(self) -> np.ndarray:
        """The full-size flat index, shaped ``shape``: ``flat[r, j] = r * row_size + index[j]``."""
        offsets = np.arange(self.rows, dtype=np.int64)[:, None] * self.row_size
        return (offsets + self.index[None, :]).reshape(self.shape)


def _divisors_descending(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)}, reverse=True)


def _row_index(flat: np.ndarray, source_size: int, rows: int) -> np.ndarray | None:
    """The shared row index when ``flat`` factors into ``rows`` rows, else ``None``."""
    row_size = source_size // rows
    blocks = flat.reshape(rows, -1)
    offsets = np.arange(rows, dtype=np.int64)[:, None] * row_size
    # The first column rejects most candidates before the full comparison.
    if not np.array_equal(blocks[:, :1] - offsets, np.broadcast_to(blocks[:1, :1], (rows, 1))):
        return None
    index = blocks[0]
    if index.size and (index.min() < 0 or index.max() >= row_size):
        return None
    if not np.array_equal(blocks - offsets, np.broadcast_to(index, blocks.shape)):
        return None
    return index.copy()


def column_rows(flat: np.ndarray, columns: int) -> RowGather | None:
    """The row structure of a gather that yields a kernel with its out-channel axis *last*
    (Keras' ``(*k, in, out)``) from free parameters ``(*k, in, columns)``, or ``None``.

    ``flat``: ``(*k, in, out)`` positions in the free parameters read as one flat array.
    Transposed, this is the out-channel-first gather that :class:`RowGather` factors; the
    result is that factoring when it has one row per free column (``rows == columns``):
    then output channel ``c * m + j`` (``m = out / columns`` channels per column) is free
    column ``c`` read at rows ``index[j * K:(j + 1) * K]`` (``K = flat.size / out``).
    """
    flat = np.asarray(flat, dtype=np.int64)
    columns = check_int("columns", columns, minimum=1)
    out = flat.shape[-1]
    if out % columns:
        return None
    rows_k = flat.reshape(-1, out)  # (K, out)
    source_rows = rows_k.size * columns // out  # K
    # free (K, columns) read transposed: position f * K + k
    transposed = (rows_k % columns) * source_rows + rows_k // columns
    gather = RowGather.of(np.ascontiguousarray(transposed.T), source_rows * columns)
    return gather if gather.rows == columns else None
