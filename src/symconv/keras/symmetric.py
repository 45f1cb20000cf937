"""Keras 3 reflection-symmetric convolutions: ``SymmetricConv1D/2D/3D``.

The Keras twins of :class:`symconv.SymmetricConv1d/2d/3d`, driven by the same
framework-agnostic :func:`symconv.symmetry.make_plan`: the same ``symmetry`` spec forms
(counts, percentage strings, ``'hv:50%,h:2'``), the same validation messages, the same
channel layout and the same ``share_bias`` semantics. Built with ``keras.ops`` only, so
they run on the TensorFlow, PyTorch and JAX backends.

Shapes (``k`` the kernel size, ``g`` the groups)::

    kernel           (*k, in_channels / g, plan.n_free)     free filters (the only weight)
    bias             (plan.n_bias,)                         free biases, if use_bias
    expanded_kernel  (*k, in_channels / g, filters)         what the convolution uses
    expanded_bias    (filters,)
    input            (batch, *spatial, in_channels)         channels_last (default)
                     (batch, in_channels, *spatial)         channels_first
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from symconv.core.symmetric_conv import SymmetricConvSpec
from symconv.core.symmetry import SymmetrySpec
from symconv.keras.gathered import GatheredConv

__all__ = ["SymmetricConv1D", "SymmetricConv2D", "SymmetricConv3D"]


class _SymmetricConv(GatheredConv):
    """Shared implementation of ``SymmetricConv1D/2D/3D``: ``keras.ops.conv`` with the
    kernel gathered from the free one by :meth:`SymmetryPlan.gather_index`."""

    _spec_class = SymmetricConvSpec

    def __init__(
        self, *args: Any, symmetry: SymmetrySpec = None, share_bias: bool = True, **kwargs: Any
    ) -> None:
        """``keras.layers.ConvND``'s arguments plus ``symmetry`` and ``share_bias``."""
        options = {"symmetry": symmetry, "share_bias": share_bias}
        super().__init__(*args, family_options=options, **kwargs)
        self.plan = self.spec.plan

    @classmethod
    def _spec_from_keras(
        cls, conv_args: dict[str, Any], *, symmetry: SymmetrySpec, share_bias: bool
    ) -> SymmetricConvSpec:
        return SymmetricConvSpec.from_keras(
            cls.rank, **conv_args, symmetry=symmetry, share_bias=share_bias
        )

    def _indices(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        plan, in_per_group = self.plan, self.spec.conv.in_per_group
        index = None
        if not plan.is_trivial:
            index = plan.gather_index(in_per_group, self.kernel_size, layout="keras")
        return index, plan.bias_index if plan.share_bias else None

    def _representatives(self) -> np.ndarray:
        # Member 0 (the identity) comes first in every orbit.
        return np.unique(self.plan.free_index, return_index=True)[1]

    def _family_config(self) -> dict[str, Any]:
        return {"symmetry": self.plan.spec_dict(), "share_bias": self.plan.share_bias}

    @classmethod
    def from_conv(
        cls, conv: keras.layers.Layer, symmetry: SymmetrySpec, share_bias: bool = True
    ) -> _SymmetricConv:
        """A symmetric layer with a built ``keras.layers.ConvND``'s configuration and the
        closest symmetric weights (each free filter the average of its orbit's members
        with their transform undone); a ``conv`` that has the symmetry is reproduced."""
        config, in_channels = cls._plain_source(conv)
        layer = cls(**config, symmetry=symmetry, share_bias=share_bias)
        layer.build(layer._input_shape_for(in_channels))
        kernel = ops.convert_to_numpy(conv.kernel)
        layer.kernel.assign(layer.plan.project(kernel, layout="keras"))
        if conv.use_bias:
            bias = ops.convert_to_numpy(conv.bias)
            layer.bias.assign(layer.plan.project_bias(bias) if layer.plan.share_bias else bias)
        return layer


_DOC = """{rank}-D convolution whose output channels share weights across reflections (Keras 3).

    The Keras twin of :class:`symconv.{torch_name}`; a drop-in replacement for
    ``keras.layers.{plain}`` taking every argument of it (except ``lora_rank``) plus

    Args:
        symmetry: which output channels are reflected copies of a free filter, e.g.
            ``{example}``: counts (whole orbits) or percentage strings of ``filters``
            (rounded down to whole orbits), or a string such as ``'{string}'``. Keys:
            {keys}. ``None`` or ``{{}}`` gives a plain convolution. The channel layout
            is ``layer.plan`` (:class:`symconv.SymmetryPlan`), the same as the torch layer's.
        share_bias: one bias per orbit (default; exact flip equivariance) or, when
            ``False``, a free bias per output channel.

    Weights: ``kernel`` is the free kernel ``(*kernel_size, in_channels / groups,
    plan.n_free)`` and ``bias`` the free bias ``(plan.n_bias,)``: regularizers and
    constraints act on them. ``expanded_kernel`` and ``expanded_bias`` are the full ones,
    one gather away. Initialization: a full kernel is drawn with ``kernel_initializer``
    (fans of the full kernel, as ``keras.layers.{plain}``) and each orbit keeps its
    un-flipped member.

    Shapes: input ``(batch, {sp}, channels)`` (``channels_last``) or
    ``(batch, channels, {sp})`` (``channels_first``); output likewise with ``filters``
    channels.

    Example::

        >>> layer = {name}(16, 3, padding="same", symmetry={example})
        >>> y = layer(keras.ops.ones((2, {example_in}, 8)))
        >>> layer.plan.n_free, tuple(layer.expanded_kernel.shape[-2:])
        {example_out}
    """


#: Per rank: a doc example, its string form and output, the keys, the spatial axes, the
#: example input's spatial shape.
_DOC_ARGS = {
    1: ("{'h': 8}", "h:50%", "(12, (8, 16))", "'h' (the length axis)", "length", "10"),
    2: (
        "{'h': 2, 'v': 4, 'hv': 8}",
        "hv:50%,h:2",
        "(7, (8, 16))",
        "'h' (width), 'v' (height), 'hv'",
        "height, width",
        "10, 10",
    ),
    3: (
        "{'hvz': 8, 'hz': 4}",
        "hvz:50%",
        "(6, (8, 16))",
        "'h' (width), 'v' (height), 'z' (depth), 'hv', 'hz', 'vz', 'hvz'",
        "depth, height, width",
        "6, 6, 6",
    ),
}


def _doc(rank: int) -> str:
    example, string, example_out, keys, spatial, example_in = _DOC_ARGS[rank]
    return _DOC.format(
        rank=rank,
        torch_name=f"SymmetricConv{rank}d",
        plain=f"Conv{rank}D",
        example=example,
        string=string,
        keys=keys,
        sp=spatial,
        name=f"SymmetricConv{rank}D",
        example_in=example_in,
        example_out=example_out,
    )


@keras.saving.register_keras_serializable(package="symconv")
class SymmetricConv1D(_SymmetricConv):
    rank, _plain_name, __doc__ = 1, "Conv1D", _doc(1)


@keras.saving.register_keras_serializable(package="symconv")
class SymmetricConv2D(_SymmetricConv):
    rank, _plain_name, __doc__ = 2, "Conv2D", _doc(2)


@keras.saving.register_keras_serializable(package="symconv")
class SymmetricConv3D(_SymmetricConv):
    rank, _plain_name, __doc__ = 3, "Conv3D", _doc(3)
