"""Where a training step's time goes: the top operators of one layer's forward + backward.

    python benchmarks/profile_step.py twist --shape 64/56 --batch 64 --device cuda --bf16
    python benchmarks/profile_step.py sym --shape 256/14 --device cpu

Profiles ``--steps`` steps after a warm-up with ``torch.profiler`` and prints the operators
sorted by device time (self time on the CPU). A tool for deciding what to optimize; the
ratios that count are measured by ``bench_twist.py`` and ``bench_symmetric.py``.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from symconv import ConvTwist, SymmetricConv2d

LAYERS = {
    "conv2d": lambda c: nn.Conv2d(c, c, 3, padding=1, bias=False),
    "twist": lambda c: ConvTwist(c, c, bias=False),
    "sym": lambda c: SymmetricConv2d(c, c, 3, padding=1, bias=False, symmetry={"hv": "100%"}),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("layer", choices=sorted(LAYERS))
    p.add_argument("--shape", default="64/56", help="C/HW (default 64/56)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast and channels_last")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args(argv)
    try:
        c, hw = (int(v) for v in args.shape.split("/"))
    except ValueError:
        p.error(f"--shape={args.shape!r}; expected C/HW, e.g. 64/56")
    fmt = torch.channels_last if args.bf16 else torch.contiguous_format
    layer = LAYERS[args.layer](c).to(args.device, memory_format=fmt)
    x = torch.randn(args.batch, c, hw, hw, device=args.device).to(memory_format=fmt)
    x.requires_grad_(True)
    amp = torch.autocast(args.device, dtype=torch.bfloat16) if args.bf16 else nullcontext()

    def step() -> None:
        with amp:
            y = layer(x)
        y.float().sum().backward()

    for _ in range(3):
        step()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(
        f"{args.layer} {args.shape} batch {args.batch} {'bf16-cl' if args.bf16 else 'fp32'} "
        f"on {args.device}, {args.steps} steps"
    )
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
