"""Time SymmetricConv2d/3d against nn.Conv2d/3d of the same shape, in the same run.

For each ResNet-like shape, each layer variant, each precision (float32; bfloat16 autocast
with channels_last) and each mode (a training step = forward + backward; eval = forward
under ``torch.no_grad``), the script times the plain convolution and the symmetric one
alternately, several rounds, and reports the median time and the ratio of medians.

    python benchmarks/bench_symmetric.py                  # CPU, batch 8
    python benchmarks/bench_symmetric.py --device cuda --batch 64
    python benchmarks/bench_symmetric.py --markdown out.md

Speed is never asserted in the tests; this script is where it is measured.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from bench_common import (  # beside this script
    Row,
    add_run_arguments,
    markdown_table,
    median_time,
    parse_shapes,
)
from torch import nn

from symconv import SymmetricConv2d, SymmetricConv3d

SHAPES_2D = ((64, 56), (128, 28), (256, 14), (512, 7))
SHAPES_3D = ((32, 16), (64, 8))
VARIANTS_2D = ({"hv": "100%"}, {"h": "100%"}, {"hv": "50%"})
VARIANTS_3D = ({"hvz": "100%"},)


def _step_fn(
    layer: nn.Module, x: torch.Tensor, mode: str, bf16: bool, device: str
) -> Callable[[], None]:
    def train_step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            out = layer(x)
        out.float().sum().backward()
        layer.zero_grad(set_to_none=True)

    def eval_step() -> None:
        with (
            torch.no_grad(),
            torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16),
        ):
            layer(x)

    return train_step if mode == "train" else eval_step


def bench_pair(
    plain: nn.Module,
    sym: nn.Module,
    x: torch.Tensor,
    mode: str,
    bf16: bool,
    args: argparse.Namespace,
) -> tuple[float, float]:
    """Alternate plain and symmetric timings; return the medians over rounds."""
    if bf16 or args.channels_last:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        plain, sym, x = (
            plain.to(memory_format=fmt),
            sym.to(memory_format=fmt),
            x.to(memory_format=fmt),
        )
    if mode == "train":
        x = x.requires_grad_(False)
    fa = _step_fn(plain, x, mode, bf16, args.device)
    fb = _step_fn(sym, x, mode, bf16, args.device)
    ta, tb = [], []
    for _ in range(args.rounds):
        ta.append(median_time(fa, args.device, args.min_time))
        tb.append(median_time(fb, args.device, args.min_time))
    return statistics.median(ta), statistics.median(tb)


def run(args: argparse.Namespace) -> list[Row]:
    torch.manual_seed(0)
    rows: list[Row] = []
    cases = [(2, s, v) for s in args.shapes_2d for v in VARIANTS_2D]
    if not args.no_3d:
        cases += [(3, s, v) for s in SHAPES_3D for v in VARIANTS_3D]
    for ndim, (c, hw), spec in cases:
        batch = args.batch if ndim == 2 else max(1, args.batch // 4)
        plain_cls, sym_cls = (
            (nn.Conv2d, SymmetricConv2d) if ndim == 2 else (nn.Conv3d, SymmetricConv3d)
        )
        plain = plain_cls(c, c, 3, padding=1, bias=False, device=args.device)
        sym = sym_cls(c, c, 3, padding=1, bias=False, symmetry=spec, device=args.device)
        x = torch.randn(batch, c, *([hw] * ndim), device=args.device)
        key = ",".join(f"{k}:{v}" for k, v in spec.items())
        for precision in args.precisions:
            for mode in ("train", "eval"):
                if mode == "eval":
                    plain.eval(), sym.eval()
                else:
                    plain.train(), sym.train()
                tp, ts = bench_pair(plain, sym, x, mode, precision == "bf16-cl", args)
                rows.append(
                    Row(
                        f"{sym_cls.__name__}({key})",
                        f"{batch}x{c}x{'x'.join([str(hw)] * ndim)}",
                        precision,
                        mode,
                        sum(p.numel() for p in sym.parameters()),
                        sum(p.numel() for p in plain.parameters()),
                        tp,
                        ts,
                    )
                )
                r = rows[-1]
                print(
                    f"{r.layer:32s} {r.shape:18s} {r.precision:8s} {r.mode:5s} "
                    f"plain {r.t_plain * 1e3:8.2f} ms  sym {r.t_layer * 1e3:8.2f} ms  "
                    f"ratio {r.ratio:5.2f}  params {r.params}/{r.params_plain}",
                    flush=True,
                )
    return rows


def markdown(rows: list[Row], args: argparse.Namespace) -> str:
    dev = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    return markdown_table(
        rows, dev, f"median of {args.rounds} alternating rounds", "symmetric ms",
        "params (sym / plain)",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--no-3d", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or (64 if args.device == "cuda" else 8)
    args.precisions = args.precisions.split(",")
    args.shapes_2d = parse_shapes(parser, args.shapes) if args.shapes else SHAPES_2D
    rows = run(args)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(markdown(rows, args))


if __name__ == "__main__":
    main()
