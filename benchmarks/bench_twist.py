"""Forward+backward cost of ConvTwist against nn.Conv2d, measured in the same run.

Compared, at the ResNet-like shapes of the SymmetricConv benchmark (C channels in and out,
HxW spatial, 3x3, stride 1):

* ``conv2d``     -- ``nn.Conv2d(C, C, 3, padding=1, bias=False)``, the baseline (ratio 1);
* ``twist``      -- :class:`symconv.ConvTwist` as shipped (``impl='auto'``);
* ``stacked``    -- ``ConvTwist(impl='stacked')``: one convolution with the three kernels
  stacked along the output axis, centers folded into ``W``, constant-grid tail;
* ``split``      -- ``ConvTwist(impl='split')``: the same three kernels as three calls;
* ``taps``       -- ``ConvTwist(impl='taps')``: the odd kernels through their
  ``(k*k-1)/2`` free taps: input differences and one GEMM per cache-sized chunk of images,
  differences recomputed in backward (17/9 of a plain 3x3's multiply-adds instead of 3);
* ``one-conv``   -- the stacked convolution with the unfolded tail
  ``a + (X - cx) * b + (Y - cy) * c`` (an alternative measured for the design);
* ``naive``      -- three separate convolutions and explicit grids, as the formula reads;
* ``post``       -- the implementation of the blog post, re-implemented as published (three
  ``nn.Conv2d``, ``.data`` antisymmetrisation and numpy grids in every forward).

Reported: median milliseconds per training step (forward, backward to the input and all
parameters), the ratio to ``conv2d``, and the bytes autograd saves for backward in one step
(unique storages, via ``torch.autograd.graph.saved_tensors_hooks``), split into
*activations* (what grows with the batch: saved bytes at batch 2B minus batch B; the input,
saved by every variant, included) and *kernels* (parameter-sized tensors built from the
parameters); on CUDA also the peak ``torch.cuda.max_memory_allocated`` of a step above what
was allocated before it.

    python benchmarks/bench_twist.py --batch 8 --repeats 7          # CPU, short
    python benchmarks/bench_twist.py --device cuda                   # batch 64
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from bench_common import (
    CLOCKS,
    add_clock_argument,
    parse_shapes,
    saved_bytes,
    sync,
)  # beside this script
from post_conv_twist import PostConvTwist  # beside this script
from torch import Tensor, nn

from symconv.nn.twist import ConvTwist

SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))


# -- baselines -------------------------------------------------------------------------------
class NaiveTwist(nn.Module):
    """Three separate convolutions and full-size grids, straight from the formula."""

    def __init__(self, twist: ConvTwist) -> None:
        super().__init__()
        self.t = twist

    def forward(self, x: Tensor) -> Tensor:
        t = self.t

        def conv(w: Tensor) -> Tensor:
            return F.conv2d(x, w, None, t.stride, t.padding, 1, t.groups)

        a, b, c = conv(t.weight), conv(t.weight_x), conv(t.weight_y)
        h, w = a.shape[-2:]
        ii, jj = torch.meshgrid(
            torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij"
        )
        X = (2 * jj / w).to(a.dtype) - t.center_x.view(-1, 1, 1)
        Y = (2 * ii / h).to(a.dtype) - t.center_y.view(-1, 1, 1)
        return a + X * b + Y * c


class OneConvUnfolded(nn.Module):
    """One stacked convolution, centers applied in the tail: ``a + (X-cx) b + (Y-cy) c``."""

    def __init__(self, twist: ConvTwist) -> None:
        super().__init__()
        self.t = twist

    def forward(self, x: Tensor) -> Tensor:
        t = self.t
        w = torch.cat([t.weight, t.weight_x, t.weight_y])
        y = F.conv2d(x, w, None, t.stride, t.padding)
        n, _, h, wd = y.shape
        a, b, c = y.view(n, 3, t.out_channels, h, wd).unbind(1)
        gx, gy = t._grid(h, wd, y.device, y.dtype)
        X = gx - t.center_x.view(-1, 1, 1).to(y.dtype)
        Y = gy - t.center_y.view(-1, 1, 1).to(y.dtype)
        return torch.addcmul(torch.addcmul(a, b, X), c, Y)


# -- measurement -------------------------------------------------------------------------------
def run_shape(args: argparse.Namespace, device: str, c: int, hw: int, precision: str) -> None:
    torch.manual_seed(0)
    bf16 = precision == "bf16-cl"
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    twist = ConvTwist(c, c, bias=False, device=device)  # as the nn.Conv2d it is timed against
    conv = nn.Conv2d(c, c, 3, padding=1, bias=False, device=device)
    post = PostConvTwist(c, c).to(device)
    stacked, split, taps = (copy.deepcopy(twist) for _ in range(3))
    stacked.impl, split.impl, taps.impl = "stacked", "split", "taps"
    variants: dict[str, nn.Module] = {
        "conv2d": conv,
        "twist": twist,
        "stacked": stacked,
        "split": split,
        "taps": taps,
        "one-conv": OneConvUnfolded(twist),
        "naive": NaiveTwist(twist),
        "post": post,
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if k == "conv2d" or k in args.only}
    for m in variants.values():
        m.to(memory_format=fmt)
    x = torch.randn(args.batch, c, hw, hw, device=device).to(memory_format=fmt)
    x.requires_grad_(True)
    grad = torch.randn(args.batch, c, hw, hw, device=device).to(memory_format=fmt)
    amp = torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()
    if bf16:
        grad = grad.bfloat16()

    def make_step(m: nn.Module, inp: Tensor = x) -> Callable[[], Tensor]:
        def fwd() -> Tensor:
            with amp:
                return m(inp)

        return fwd

    def train_step(m: nn.Module) -> None:
        x.grad = None
        for p in m.parameters():
            p.grad = None
        make_step(m)().backward(grad)

    clock = CLOCKS[args.clock]

    times: dict[str, list[float]] = {k: [] for k in variants}
    # Saved bytes at batch B and 2B: the difference is what scales with the batch (the
    # activations); the rest is parameter-sized (kernels built from the parameters).
    x2 = torch.cat([x, x]).detach().requires_grad_(True)
    mem: dict[str, int] = {}
    act: dict[str, int] = {}
    for k, m in variants.items():
        mem[k] = saved_bytes(make_step(m))
        act[k] = saved_bytes(make_step(m, x2)) - mem[k]
    del x2
    peak: dict[str, int] = {}
    for name, m in variants.items():  # warm-up (and CUDA peak memory)
        for _ in range(2):
            train_step(m)
        if device == "cuda":
            sync(device)
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            train_step(m)
            sync(device)
            peak[name] = torch.cuda.max_memory_allocated() - base
    for _ in range(args.repeats):  # interleaved, so drifts hit every variant alike
        for name, m in variants.items():
            sync(device)
            t0 = clock()
            train_step(m)
            sync(device)
            times[name].append(clock() - t0)
    base_t = statistics.median(times["conv2d"])
    for name in variants:
        t = statistics.median(times[name])
        extra = f"  peak {peak[name] / 2**20:8.1f} MiB" if peak else ""
        print(
            f"{device:4s} {precision:7s} {c:4d}/{hw:<3d} {name:9s} {t * 1e3:9.2f} ms "
            f"{t / base_t:6.2f}x  activations {act[name] / 2**20:7.2f} MiB  "
            f"kernels {(mem[name] - act[name]) / 2**20:6.2f} MiB{extra}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--shapes",
        default=",".join(f"{c}/{hw}" for c, hw in SHAPES),
        help="comma-separated C/HW list (default: %(default)s)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--precision", choices=["fp32", "bf16-cl", "all"], default="all")
    parser.add_argument("--only", nargs="*", default=None, help="variants besides conv2d")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_clock_argument(parser)
    args = parser.parse_args(argv)
    shapes = parse_shapes(parser, args.shapes)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        print("CUDA is not available", file=sys.stderr)
        return 1
    if args.clock == "cpu" and "cuda" in devices:
        parser.error("--clock cpu measures host CPU time; use it with --device cpu")
    precisions = ["fp32", "bf16-cl"] if args.precision == "all" else [args.precision]
    print(
        f"torch {torch.__version__}, batch {args.batch}, {args.repeats} repeats, "
        f"{torch.get_num_threads()} CPU threads, {args.clock} clock; "
        "median ms per forward+backward step"
    )
    for device in devices:
        if device == "cuda":
            print(f"GPU: {torch.cuda.get_device_name()}")
        for precision in precisions:
            for c, hw in shapes:
                run_shape(args, device, c, hw, precision)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
