"""The networks ``symconv compare`` trains: a small CNN and a ResNet-18-style net.

Both are built from a *conv factory* ``conv(in_channels, out_channels, kernel_size)`` that
returns a stride-1, 'same'-padded convolution module, so a variant can swap every
convolution (``sym-inv`` swaps in symmetric convolutions with orbit pooling) while the
rest of the architecture stays identical.

Every operation in these nets commutes with horizontal and vertical flips: odd kernels
with symmetric zero padding, stride-1 convolutions, per-channel batch norm, pointwise
ReLU, :class:`HalvingPool2d` for downsampling (never a stride-2 convolution, which on an
even-sized input samples the left/top pixels but not their mirror images) and global
average pooling. So a network whose convolutions are flip-equivariant *as maps between
images* is exactly flip-invariant, and the plain networks are fair baselines for it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from symconv.compare.config import DEFAULT_WIDTH, MODELS
from symconv.core.validate import check_int

__all__ = [
    "MODELS",
    "DEFAULT_WIDTH",
    "BasicBlock",
    "ConvFactory",
    "HalvingPool2d",
    "ResNet",
    "SmallCNN",
    "build_model",
    "plain_conv",
]

#: ``conv(in_channels, out_channels, kernel_size) -> module``: stride 1, 'same' padding.
ConvFactory = Callable[[int, int, int], nn.Module]


def plain_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    """A bias-free ``nn.Conv2d`` with 'same' zero padding (batch norm follows it)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)


class HalvingPool2d(nn.Module):
    """Max or average pooling that halves each spatial size and commutes with flips.

    An even side is pooled in disjoint pairs (kernel 2, stride 2); an odd side of length
    ``L`` with kernel 3, stride 2, padding 1, giving ``(L + 1) // 2`` windows centered on
    pixels ``0, 2, ..., L - 1``, a set the flip ``i -> L - 1 - i`` maps onto itself. (A
    kernel-2 pool of an odd side drops the last pixel but not the first: not symmetric.)
    Padding never enters a maximum or a mean.

    Shapes: ``(N, C, H, W) -> (N, C, ceil(H / 2), ceil(W / 2))``.
    """

    def __init__(self, mode: str = "max") -> None:
        super().__init__()
        if mode not in ("max", "avg"):
            raise ValueError(f"mode={mode!r} is not allowed; use 'max' or 'avg'")
        self.mode = mode

    def forward(self, input: Tensor) -> Tensor:
        h, w = input.shape[-2:]
        kernel = (2 if h % 2 == 0 else 3, 2 if w % 2 == 0 else 3)
        padding = (kernel[0] // 3, kernel[1] // 3)  # 0 for kernel 2, 1 for kernel 3
        if self.mode == "max":
            return F.max_pool2d(input, kernel, 2, padding)
        return F.avg_pool2d(input, kernel, 2, padding, count_include_pad=False)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (widths ``w, 2w, 4w``), two halvings, global average pool.

    Shapes: ``(N, in_channels, H, W) -> (N, num_classes)``; about 24k parameters at
    ``width=16`` (``symconv compare``'s default) and 93k at ``width=32``, with one input
    channel.
    """

    def __init__(
        self, in_channels: int, num_classes: int, width: int = 16, conv: ConvFactory = plain_conv
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("num_classes", num_classes, 2)
        check_int("width", width, 1)
        w = width
        self.features = nn.Sequential(
            conv(in_channels, w, 3),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            HalvingPool2d("max"),
            conv(w, 2 * w, 3),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            HalvingPool2d("max"),
            conv(2 * w, 4 * w, 3),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, input: Tensor) -> Tensor:
        return self.head(self.features(input).mean((-2, -1)))


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``.

    The shortcut is the identity, or a 1x1 convolution with batch norm when the width
    changes (a 1x1 kernel is its own mirror image, so it commutes with flips as is).
    """

    def __init__(self, in_channels: int, out_channels: int, conv: ConvFactory) -> None:
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 3)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # Each block starts as the identity map plus its shortcut: stabler early training.
        nn.init.zeros_(self.bn2.weight)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, input: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(input)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(input), inplace=True)


class ResNet(nn.Module):
    """A ResNet-18-style network for 28-128 px inputs.

    A 3x3 stem, then four stages of ``layers[i]`` basic blocks with widths ``w, 2w, 4w,
    8w``, each stage after the first entered through a :class:`HalvingPool2d` (average),
    global average pooling and a linear head. ``stem_pool`` halves once more after the
    stem (use it from about 64 px up). ``layers=(2, 2, 2, 2)`` and ``width=64`` is
    ResNet-18's layout.

    Shapes: ``(N, in_channels, H, W) -> (N, num_classes)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 32,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        conv: ConvFactory = plain_conv,
        stem_pool: bool = False,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("num_classes", num_classes, 2)
        check_int("width", width, 1)
        if not layers or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers
        ):
            raise ValueError(f"layers={layers!r} must be a non-empty tuple of positive integers")
        stem: list[nn.Module] = [
            conv(in_channels, width, 3),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        if stem_pool:
            stem.append(HalvingPool2d("max"))
        self.stem = nn.Sequential(*stem)
        stages: list[nn.Module] = []
        c_in = width
        for i, n_blocks in enumerate(layers):
            c_out = width * 2**i
            blocks: list[nn.Module] = [HalvingPool2d("avg")] if i > 0 else []
            for _ in range(n_blocks):
                blocks.append(BasicBlock(c_in, c_out, conv))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, input: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(input)).mean((-2, -1)))


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    *,
    size: int = 28,
    width: int | None = None,
    conv: ConvFactory = plain_conv,
) -> nn.Module:
    """``'cnn'`` or ``'resnet'``; ``width=None`` is :data:`DEFAULT_WIDTH` of the model (the
    ResNet pools in its stem from 64 px)."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not allowed; use one of {MODELS}")
    width = width or DEFAULT_WIDTH[name]
    if name == "cnn":
        return SmallCNN(in_channels, num_classes, width=width, conv=conv)
    return ResNet(in_channels, num_classes, width=width, conv=conv, stem_pool=size >= 64)
    raise ValueError(f"model={name!r} is not allowed; use one of {MODELS}")
