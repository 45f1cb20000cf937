"""The blog post's ConvTwist, re-implemented as published: the baseline that the benchmark
times and that the tests check ``symconv.ConvTwist`` against (three ``nn.Conv2d``,
antisymmetrisation through ``.data`` and numpy grids in every forward).

Shapes: ``(N, ni, H, W) -> (N, nf, H_out, W_out)``, a 3x3 convolution with padding 1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["PostConvTwist"]


class PostConvTwist(nn.Module):
    """The blog post's ``conv_twist``, as published (the baseline it is)."""

    def __init__(self, ni: int, nf: int, init_max: float = 1.5, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ni, nf, kernel_size=3, stride=stride, padding=1, bias=False)
        self.conv_x = nn.Conv2d(ni, nf, kernel_size=3, stride=stride, padding=1, bias=False)
        self.conv_y = nn.Conv2d(ni, nf, kernel_size=3, stride=stride, padding=1, bias=False)
        self.conv_x.weight.data = (self.conv_x.weight - self.conv_x.weight.flip(2).flip(3)) / 2
        self.conv_y.weight.data = self.conv_x.weight.transpose(2, 3).flip(3)
        self.center_x = nn.Parameter(torch.empty(nf).uniform_(-init_max, init_max))
        self.center_y = nn.Parameter(torch.empty(nf).uniform_(-init_max, init_max))

    def forward(self, inpt: Tensor) -> Tensor:
        self.conv_x.weight.data = (self.conv_x.weight - self.conv_x.weight.flip(2).flip(3)) / 2
        self.conv_y.weight.data = (self.conv_y.weight - self.conv_y.weight.flip(2).flip(3)) / 2
        out = self.conv(inpt)
        _, c, h, w = out.size()
        idx = np.indices((1, h, w))
        XX = torch.from_numpy(idx[2] * 2 / w).type(out.dtype).to(out.device)
        YY = torch.from_numpy(idx[1] * 2 / h).type(out.dtype).to(out.device)
        XX = XX - self.center_x.view(-1, 1, 1)
        YY = YY - self.center_y.view(-1, 1, 1)
        return out + (XX * self.conv_x(inpt) + YY * self.conv_y(inpt))
