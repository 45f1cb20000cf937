"""The symmetry plan's data: :class:`SymmetryPlan` and its :class:`OrbitBlock` s.

Built by :func:`symconv.core.symmetry.make_plan`, which documents the channel layout.
numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from symconv.core.groups import group, word_matrix
from symconv.core.symmetry_keys import letters_for_ndim

__all__ = ["OrbitBlock", "SymmetryPlan", "readonly"]


@dataclass(frozen=True)
class OrbitBlock:
    """The channels of one spec key: ``n_orbits`` orbits of ``orbit_size`` channels."""

    key: str
    # spatial axes flipped by the reflection generators, in generator order; for the
    # rotation keys, the (height, width) plane the turns act on
    axes: tuple[int, ...]
    n_orbits: int
    start: int  # first output channel of the block
    first_orbit: int  # index of the block's first orbit (= free filter)
    # Stored, not a property over `group(key)`: forward passes read it (OrbitPool), and
    # torch.compile should see a constant, not trace the group's construction.
    orbit_size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "orbit_size", group(self.key).order)

    @property
    def channels(self) -> int:
        return self.n_orbits * self.orbit_size

    @property
    def stop(self) -> int:
        return self.start + self.channels


@dataclass(frozen=True, eq=False)
class SymmetryPlan:
    """Which output channel is which reflection (or turn) of which free filter, and its bias.

    Build one with :func:`make_plan`.  Per output channel ``c`` (arrays of length
    ``out_channels``, read-only):

    - ``free_index[c]``: the free filter (= orbit) it is made from;
    - ``member[c]``: its index within the orbit, i.e. in its key's group (for reflection
      keys, bit ``i`` set = generator ``i`` applied);
    - ``axis_perm[c]``, ``flips[c]`` ``(ndim,)``: the free filter's spatial axes are
      transposed by ``axis_perm[c]``, then axis ``a`` is reversed where ``flips[c, a]``
      (``axis_perm`` is the identity for reflection keys);
    - ``bias_index[c]``: which free bias it uses.
    """

    ndim: int
    out_channels: int
    groups: int
    share_bias: bool
    blocks: tuple[OrbitBlock, ...]
    spec: tuple[tuple[str, object], ...]  # the user's spec, keys canonical, for repr/config
    free_index: np.ndarray
    member: np.ndarray
    flips: np.ndarray
    bias_index: np.ndarray
    axis_perm: np.ndarray

    # -- sizes -------------------------------------------------------------------------
    @property
    def n_symmetric(self) -> int:
        """Output channels covered by the spec."""
        return sum(b.channels for b in self.blocks)

    @property
    def n_plain(self) -> int:
        """Output channels that are ordinary free filters (placed last)."""
        return self.out_channels - self.n_symmetric

    @property
    def n_free(self) -> int:
        """Free filters stored: one per orbit plus one per plain channel.

        This is also the number of orbits when each plain channel counts as an orbit of
        one (what :class:`~symconv.nn.OrbitPool` outputs).
        """
        return sum(b.n_orbits for b in self.blocks) + self.n_plain

    @property
    def n_bias(self) -> int:
        """Free biases stored: one per orbit when ``share_bias``, else one per channel."""
        return self.n_free if self.share_bias else self.out_channels

    @property
    def is_trivial(self) -> bool:
        """True when no channel is symmetric (the layer is a plain convolution)."""
        return not self.blocks

    @property
    def orbit_sizes(self) -> np.ndarray:
        """Size of every orbit (free filter), shape ``(n_free,)``."""
        return np.bincount(self.free_index, minlength=self.n_free)

    def block_for_channel(self, channel: int) -> OrbitBlock | None:
        """The block containing ``channel``, or ``None`` for a plain channel."""
        for block in self.blocks:
            if block.start <= channel < block.stop:
                return block
        return None

    # -- equivariance ------------------------------------------------------------------
    def flip_permutation(self, axes: str | Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Channel permutation induced by reflecting the input along ``axes``.

        ``axes`` is a string of letters (``'h'``, ``'v'``, ``'hv'``, ...).  Returns
        ``(perm, equivariant)``, both of shape ``(out_channels,)``, such that for a layer
        with odd kernels, stride 1 (or a stride the input size fits) and symmetric padding::

            layer(flip(x))[:, c] == flip(layer(x))[:, perm[c]]   for c where equivariant[c]

        A channel is equivariant when its orbit's group contains the reflection: an
        ``hv`` orbit is permuted by ``h``, ``v`` and ``hv`` flips; an ``h`` orbit only by
        ``h``.  Plain channels are equivariant only for the empty flip.  ``perm`` is the
        identity on channels that are not equivariant.
        """
        letters = "".join(axes) if not isinstance(axes, str) else axes
        allowed = letters_for_ndim(self.ndim)
        if any(ch not in allowed for ch in letters) or len(set(letters)) != len(letters):
            raise ValueError(
                f"axes={axes!r} is not a set of flip axes for a {self.ndim}-D layer; "
                f"use letters from {''.join(allowed)!r}"
            )
        return self.member_permutation(letters or "e")

    def member_permutation(self, g: object) -> tuple[np.ndarray, np.ndarray]:
        """Channel permutation induced by acting on the input with the transform ``g``.

        ``g`` is a member name (a word such as ``'r'``, ``'rh'``, ``'r2'``, ``'hv'``, ``'e'``;
        see :mod:`symconv.core.groups`) or a ``(key, index)`` pair (member ``index`` of
        group ``key``). Returns ``(perm, equivariant)`` of shape ``(out_channels,)`` with::

            layer(g x)[:, c] == g(layer(x))[:, perm[c]]   for c where equivariant[c]

        (under the conditions of :meth:`flip_permutation`; ``g`` acts on the spatial axes
        as :meth:`symconv.core.groups.Group.apply`). A channel is equivariant when its
        orbit's group contains ``g``; then ``perm`` maps member ``m`` to ``g^-1 m`` of the
        same orbit. ``perm`` is the identity elsewhere.
        """
        matrix = _transform_matrix(g, self.ndim)
        perm = np.arange(self.out_channels)
        equivariant = np.full(self.out_channels, bool((matrix == np.eye(self.ndim)).all()))
        for block in self.blocks:
            grp = group(block.key, self.ndim)
            index = grp.find(matrix)
            if index is None:
                continue
            chans = np.arange(block.start, block.stop)
            local = chans - block.start
            orbit_start = chans - local % grp.order
            perm[chans] = orbit_start + grp.table[grp.inverse[index], local % grp.order]
            equivariant[chans] = True
        return perm, equivariant

    # -- kernel expansion --------------------------------------------------------------
    def free_weight_shape(
        self, in_per_group: int, kernel_size: tuple[int, ...], layout: str = "torch"
    ) -> tuple[int, ...]:
        """Free kernel shape: torch ``(n_free, in/g, *k)``, keras ``(*k, in/g, n_free)``."""
        if layout == "torch":
            return (self.n_free, in_per_group, *kernel_size)
        if layout == "keras":
            return (*kernel_size, in_per_group, self.n_free)
        raise ValueError(f"layout={layout!r}; allowed: 'torch', 'keras'")

    def gather_index(
        self, in_per_group: int, kernel_size: tuple[int, ...], layout: str = "torch"
    ) -> np.ndarray:
        """Flat indices that expand a free kernel into the full kernel with one gather.

        ``full = free.reshape(-1)[index].reshape(full_shape)`` where ``full_shape`` is
        ``(out, in/groups, *k)`` for ``layout='torch'`` and ``(*k, in/groups, out)`` for
        ``layout='keras'``.  Returns an ``int64`` array of shape ``full_shape``.
        """
        kernel_size = tuple(int(k) for k in kernel_size)
        if len(kernel_size) != self.ndim:
            raise ValueError(
                f"kernel_size={kernel_size} has {len(kernel_size)} dims, the plan has {self.ndim}"
            )
        free_shape = self.free_weight_shape(in_per_group, kernel_size, layout)
        flat = np.arange(math.prod(free_shape), dtype=np.int64).reshape(free_shape)
        # Work in torch layout (out, in, *k); keras is a transpose of it.
        if layout == "keras":
            flat = np.moveaxis(flat, (-1, -2), (0, 1))
        for block in self.blocks:
            group(block.key, self.ndim).check_kernel(kernel_size)
        full = flat[self.free_index].copy()
        codes = np.concatenate([self.axis_perm, self.flips], axis=1)
        for code in np.unique(codes, axis=0):
            perm, flips = code[: self.ndim], code[self.ndim :].astype(bool)
            if not flips.any() and (perm == np.arange(self.ndim)).all():
                continue
            rows = np.flatnonzero((codes == code).all(axis=1))
            full[rows] = _act(full[rows], perm, flips)
        if layout == "keras":
            full = np.moveaxis(full, (0, 1), (-1, -2))
        return np.ascontiguousarray(full)

    def expand(self, free: np.ndarray, layout: str = "torch") -> np.ndarray:
        """Expand a free kernel (numpy) into the full kernel; the reference for backends."""
        free = np.asarray(free)
        if layout == "torch":
            in_per_group, kernel_size = free.shape[1], free.shape[2:]
        else:
            in_per_group, kernel_size = free.shape[-2], free.shape[:-2]
        index = self.gather_index(in_per_group, tuple(kernel_size), layout)
        return free.reshape(-1)[index]

    def expand_bias(self, free_bias: np.ndarray) -> np.ndarray:
        """Expand free biases of shape ``(n_bias,)`` to ``(out_channels,)``."""
        return np.asarray(free_bias)[self.bias_index]

    def project(self, full: np.ndarray, layout: str = "torch") -> np.ndarray:
        """Least-squares free kernel for a full kernel: the orbit average of un-flipped members.

        ``plan.expand(plan.project(w))`` is the closest symmetric kernel to ``w``; a
        kernel that already has the symmetry is returned exactly.
        """
        full = np.asarray(full)
        if layout == "keras":
            full = np.moveaxis(full, (-1, -2), (0, 1))
        if full.shape[0] != self.out_channels:
            raise ValueError(
                f"kernel has {full.shape[0]} output channels, the plan has {self.out_channels}"
            )
        unflipped = full.copy()
        for block in self.blocks:
            grp = group(block.key, self.ndim)
            for c in range(block.start, block.stop):
                undo = int(grp.inverse[self.member[c]])
                unflipped[c] = grp.apply(full[c], undo, first_axis=1)
        free = np.zeros((self.n_free, *full.shape[1:]), dtype=np.result_type(full, np.float32))
        np.add.at(free, self.free_index, unflipped)
        free /= self.orbit_sizes.reshape(-1, *([1] * (full.ndim - 1)))
        free = free.astype(full.dtype, copy=False)
        if layout == "keras":
            free = np.moveaxis(free, (0, 1), (-1, -2))
        return free

    def project_bias(self, full_bias: np.ndarray) -> np.ndarray:
        """Free biases for full biases ``(out_channels,)``: the mean over each bias group."""
        full_bias = np.asarray(full_bias)
        sums = np.zeros(self.n_bias, dtype=np.result_type(full_bias, np.float32))
        np.add.at(sums, self.bias_index, full_bias)
        return (sums / np.bincount(self.bias_index, minlength=self.n_bias)).astype(
            full_bias.dtype, copy=False
        )

    # -- presentation ------------------------------------------------------------------
    def spec_dict(self) -> dict[str, object]:
        """The spec as given (keys canonical), for configs and reprs."""
        return dict(self.spec)

    def describe(self) -> str:
        """A table of the channel layout, one line per block."""
        lines = [
            f"SymmetryPlan({self.ndim}-D, out_channels={self.out_channels}, groups={self.groups}, "
            f"share_bias={self.share_bias}): {self.n_free} free filters, {self.n_bias} biases"
        ]
        for b in self.blocks:
            lines.append(
                f"  {b.key:>4}: channels {b.start}-{b.stop - 1}, {b.n_orbits} orbit(s) of "
                f"{b.orbit_size}"
            )
        if self.n_plain:
            lines.append(
                f"  plain: channels {self.n_symmetric}-{self.out_channels - 1}, "
                f"{self.n_plain} ordinary filter(s)"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        spec = ", ".join(f"{k!r}: {v!r}" for k, v in self.spec)
        return (
            f"SymmetryPlan(ndim={self.ndim}, out_channels={self.out_channels}, "
            f"symmetry={{{spec}}}, groups={self.groups}, share_bias={self.share_bias}, "
            f"n_free={self.n_free})"
        )


def _transform_matrix(g: object, ndim: int) -> np.ndarray:
    """The matrix of a member given as a word or a ``(key, index)`` pair."""
    if isinstance(g, tuple) and len(g) == 2:
        grp = group(g[0], ndim)
        return grp.matrices[grp.index(g[1])]
    return word_matrix(g, ndim)


def _act(x: np.ndarray, perm: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Transpose the spatial axes of ``(n, c, *k)`` by ``perm``, then reverse ``flips``."""
    out = np.transpose(x, (0, 1, *(2 + int(a) for a in perm)))
    dims = tuple(2 + int(a) for a in np.flatnonzero(flips))
    return np.flip(out, axis=dims) if dims else out


def readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a
