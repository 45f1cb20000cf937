"""What every torch layer family needs from a plain ``nn.ConvNd``: its geometry as a core
spec, and its training mode carried over to a replacement."""

from __future__ import annotations

from torch import nn

from symconv.core.conv import ConvGeometry

__all__ = ["copy_mode", "geometry_of"]


def geometry_of(conv: nn.modules.conv._ConvNd) -> ConvGeometry:
    """The :class:`~symconv.core.conv.ConvGeometry` of an ``nn.Conv1d/2d/3d`` (or of a
    symconv layer built on one)."""
    return ConvGeometry.from_torch(
        len(conv.kernel_size),
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )


def copy_mode(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the training mode and ``requires_grad`` of ``source``, so a
    replacement behaves like the layer it replaces (``fuse_conv_bn_eval`` checks both): a
    parameter of the same name (``weight``, ``bias``) takes its counterpart's flag; when
    nothing in ``source`` trains, nothing in ``target`` does."""
    target.train(source.training)
    flags = {name: p.requires_grad for name, p in source.named_parameters()}
    if not any(flags.values()):
        target.requires_grad_(False)
        return
    for name, p in target.named_parameters():
        if name in flags:
            p.requires_grad_(flags[name])
