"""Time GroupConv2d against nn.Conv2d of the same full shape, in the same run.

For each ResNet-like shape (C channels in and out, HxW maps, 3x3, stride 1, padding 1, no
bias), each precision (float32; bfloat16 autocast with channels_last) and each mode (a
training step = forward + backward to the input and the parameters; eval = forward under
``torch.no_grad``, the cached kernel), the script times ``nn.Conv2d(C, C, 3)`` and
``GroupConv2d(C, C, 3, group=g)`` for ``g`` in ``r`` (C4, p4), ``hr`` (D4, p4m) and ``hv``
(D2), interleaved over several rounds, and reports the median times, the ratio of
medians to the plain layer, and the paired ratio: the median over rounds of each round's
layer / plain time (steadier when the machine's speed drifts).

Memory: the bytes autograd saves for backward in one training step (unique storages, via
``torch.autograd.graph.saved_tensors_hooks``), split into *activations* (what grows with
the batch: saved bytes at batch 2B minus batch B) and *kernel copies* (the rest, less the
tensors the layer keeps anyway: its parameters and its gather index). ``kernel`` lines: the
full kernel built from the free parameters and back-propagated into them, alone: all a
training step costs beyond a plain convolution's, independent of the batch.

``--escnn`` adds escnn's ``R2Conv`` (or e2cnn's, whichever is installed) on the regular
representation of the same group (``flipRot2dOnR2(4)`` for ``hr``, ``rot2dOnR2(4)`` for
``r``, ``flipRot2dOnR2(2)`` for ``hv``) with the same number of fields (C / |G|): training
step in train mode (the filter expanded from the basis every step), eval forward in eval
mode (escnn caches the expanded filter when a layer leaves train mode; ``export()`` gives a
plain ``nn.Conv2d``, i.e. the baseline), and construction time beside GroupConv2d's.

    python benchmarks/bench_group.py --threads 1 --batch 16              # CPU
    python benchmarks/bench_group.py --device cuda --batch 64 --markdown group.md
    /path/to/escnn-venv/bin/python benchmarks/bench_group.py --escnn --groups hr,r

Speed is never asserted in the tests; this script is where it is measured.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from types import ModuleType

import torch
from bench_common import (  # beside this script
    CLOCKS,
    Row,
    add_clock_argument,
    add_run_arguments,
    markdown_table,
    median_time,
    parse_shapes,
    saved_bytes,
)
from torch import Tensor, nn

from symconv import GroupConv2d
from symconv.compare.memory import keep_freed_memory

SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))
GROUPS = ("r", "hr", "hv")
ORDER = {"r": 4, "hr": 8, "hv": 4}


# -- escnn / e2cnn ---------------------------------------------------------------------------
def load_escnn() -> tuple[str, ModuleType, ModuleType] | None:
    """``(name, gspaces, nn)`` of escnn, else of e2cnn, else ``None``."""
    for name in ("escnn", "e2cnn"):
        try:
            lib = importlib.import_module(name)
            return name, importlib.import_module(f"{name}.gspaces"), lib.nn
        except ImportError:
            continue
    return None


def gspace(name: str, gspaces: ModuleType, key: str):  # type: ignore[no-untyped-def]
    """The gspace whose regular representation has GroupConv2d's member count for ``key``."""
    rot, fliprot = (
        ("rot2dOnR2", "flipRot2dOnR2") if name == "escnn" else ("Rot2dOnR2", "FlipRot2dOnR2")
    )
    kind, n = {"r": (rot, 4), "hr": (fliprot, 4), "hv": (fliprot, 2)}[key]
    return getattr(gspaces, kind)(N=n)


class R2ConvLayer(nn.Module):
    """escnn's ``R2Conv`` on the regular representation, tensors in and out."""

    def __init__(self, lib: tuple[str, ModuleType, ModuleType], key: str, c: int, device: str):
        super().__init__()
        name, gspaces, enn = lib
        gs = gspace(name, gspaces, key)
        self.ftype = enn.FieldType(gs, [gs.regular_repr] * (c // ORDER[key]))
        self.conv = enn.R2Conv(self.ftype, self.ftype, kernel_size=3, padding=1, bias=False)
        self.conv.to(device)
        self._geometric = enn.GeometricTensor

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self._geometric(x, self.ftype)).tensor

    def expanded(self) -> tuple[Tensor, Tensor | None]:
        """The full kernel (and bias) from the basis coefficients, differentiably."""
        return self.conv.expand_parameters()


def construction_times(
    lib: tuple[str, ModuleType, ModuleType] | None, key: str, c: int, device: str, repeats: int
) -> dict[str, float]:
    """Median seconds to build each layer (escnn's first build of a shape is timed apart:
    it computes and caches the steerable basis)."""

    def timed(build: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        build()
        return time.perf_counter() - t0

    out = {
        "nn.Conv2d": statistics.median(
            timed(lambda: nn.Conv2d(c, c, 3, padding=1, bias=False, device=device))
            for _ in range(repeats)
        ),
        f"GroupConv2d({key})": statistics.median(
            timed(lambda: GroupConv2d(c, c, 3, padding=1, bias=False, group=key, device=device))
            for _ in range(repeats)
        ),
    }
    if lib is not None:
        out[f"R2Conv({key}) first"] = timed(lambda: R2ConvLayer(lib, key, c, device))
        out[f"R2Conv({key})"] = statistics.median(
            timed(lambda: R2ConvLayer(lib, key, c, device)) for _ in range(repeats)
        )
    return out


# -- measurement -------------------------------------------------------------------------------
def owned_storages(module: nn.Module) -> set[int]:
    """Data pointers of the tensors ``module`` keeps anyway (parameters, buffers, tensor
    attributes such as a gather index): saving them for backward allocates nothing."""
    tensors = [*module.parameters(), *module.buffers()]
    for m in module.modules():
        tensors += [v for v in vars(m).values() if isinstance(v, Tensor)]
    return {t.untyped_storage().data_ptr() for t in tensors}


def _steps(
    layer: nn.Module, x: Tensor, grad: Tensor, bf16: bool, device: str
) -> dict[str, Callable[[], object]]:
    amp = (
        (lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)) if bf16 else nullcontext
    )

    def train() -> None:
        x.grad = None
        for p in layer.parameters():
            p.grad = None
        with amp():
            out = layer(x)
        out.backward(grad.to(out.dtype))

    def evaluate() -> None:
        with torch.no_grad(), amp():
            layer(x)

    return {"train": train, "eval": evaluate}


def kernel_step(layer: nn.Module, bf16: bool, device: str) -> Callable[[], None]:
    """Build the full kernel from the free parameters and back-propagate into them: the
    whole of what a training step costs beyond a plain convolution's (batch-independent)."""
    amp = torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.no_grad(), amp:
        # A dense gradient in the kernel's own layout, as a convolution's backward gives it
        # (``sum().backward()`` would hand the gather's backward a stride-0 tensor).
        grad = torch.randn_like(layer.expanded()[0])

    def step() -> None:
        for p in layer.parameters():
            p.grad = None
        with amp:
            weight = layer.expanded()[0]
        weight.backward(grad)

    return step


def run_shape(
    args: argparse.Namespace, lib: tuple[str, ModuleType, ModuleType] | None, c: int, hw: int
) -> list[Row]:
    torch.manual_seed(0)
    dev = args.device
    layers: dict[str, nn.Module] = {"nn.Conv2d": nn.Conv2d(c, c, 3, padding=1, bias=False)}
    for key in args.groups:
        layers[f"GroupConv2d({key})"] = GroupConv2d(c, c, 3, padding=1, bias=False, group=key)
        if lib is not None:
            layers[f"R2Conv({key})"] = R2ConvLayer(lib, key, c, "cpu")
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in layers.items()}
    rows: list[Row] = []
    clock = CLOCKS[args.clock]
    for precision in args.precisions:
        bf16 = precision == "bf16-cl"
        fmt = torch.channels_last if bf16 or args.channels_last else torch.contiguous_format
        for m in layers.values():
            m.to(device=dev, memory_format=fmt)
        x = torch.randn(args.batch, c, hw, hw, device=dev).to(memory_format=fmt)
        x.requires_grad_(True)
        grad = torch.randn_like(x)
        steps = {k: _steps(m, x, grad, bf16, dev) for k, m in layers.items()}
        if args.memory:
            report_memory(layers, x, bf16, dev, c, hw, precision)
        for k, m in layers.items():
            if k != "nn.Conv2d":
                m.train()
                t = statistics.median(
                    median_time(kernel_step(m, bf16, dev), dev, args.min_time, clock)
                    for _ in range(args.rounds)
                )
                print(
                    f"kernel {k:17s} {c}/{hw} {precision:7s} expansion forward + backward "
                    f"{t * 1e3:8.3f} ms",
                    flush=True,
                )
        for mode in ("train", "eval"):
            for m in layers.values():
                m.train(mode == "train")
            times: dict[str, list[float]] = {k: [] for k in layers}
            for _ in range(args.rounds):  # interleaved, so drifts hit every layer alike
                for k in layers:
                    times[k].append(median_time(steps[k][mode], dev, args.min_time, clock))
            base = statistics.median(times["nn.Conv2d"])
            for k in layers:
                if k == "nn.Conv2d":
                    continue
                # Each round's plain and layer blocks run minutes apart at most: the
                # median of their ratios resists a machine whose speed drifts between rounds.
                pairs = [t / p for t, p in zip(times[k], times["nn.Conv2d"], strict=True)]
                r = Row(
                    k, f"{args.batch}x{c}x{hw}x{hw}", precision, mode, params[k],
                    params["nn.Conv2d"], base, statistics.median(times[k]),
                    statistics.median(pairs),
                )  # fmt: skip
                rows.append(r)
                print(
                    f"{r.layer:17s} {r.shape:15s} {r.precision:7s} {r.mode:5s} "
                    f"plain {r.t_plain * 1e3:8.2f} ms  layer {r.t_layer * 1e3:8.2f} ms  "
                    f"ratio {r.ratio:5.2f}  paired {r.paired:5.2f}  "
                    f"params {r.params}/{r.params_plain}",
                    flush=True,
                )
    return rows


def report_memory(
    layers: dict[str, nn.Module], x: Tensor, bf16: bool, dev: str, c: int, hw: int, prec: str
) -> None:
    """Print each layer's saved activations and kernel copies in one training step."""
    x2 = torch.cat([x, x]).detach().requires_grad_(True)
    amp = torch.autocast(device_type=dev, dtype=torch.bfloat16) if bf16 else nullcontext()
    for k, m in layers.items():
        m.train()

        def step(inp: Tensor, m: nn.Module = m) -> Callable[[], Tensor]:
            def fwd() -> Tensor:
                with amp:
                    return m(inp)

            return fwd

        step(x)()  # builds what the layer builds once (a channels_last index)
        owned = owned_storages(m)
        one = saved_bytes(step(x), owned)
        act = saved_bytes(step(x2), owned) - one
        print(
            f"memory {k:17s} {c}/{hw} {prec:7s} saved activations {act / 2**20:8.2f} MiB  "
            f"kernel copies {(one - act) / 2**20:6.2f} MiB",
            flush=True,
        )


def markdown(rows: list[Row], args: argparse.Namespace) -> str:
    dev = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU ({torch.get_num_threads()} threads, {args.clock} clock)"
    )
    return markdown_table(rows, dev, f"median of {args.rounds} interleaved rounds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--groups", default=",".join(GROUPS), help="comma list of r, hr, hv")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--escnn", action="store_true", help="add escnn's (or e2cnn's) R2Conv")
    parser.add_argument(
        "--malloc-default",
        action="store_true",
        help="leave glibc's malloc as it is (default on the CPU: keep freed blocks for reuse)",
    )
    add_clock_argument(parser)
    args = parser.parse_args(argv)
    shapes = parse_shapes(parser, args.shapes) if args.shapes else list(SHAPES)
    args.groups = args.groups.split(",")
    if any(g not in GROUPS for g in args.groups):
        parser.error(f"--groups={','.join(args.groups)!r}; each must be one of {GROUPS}")
    if any(c % 8 for c, _ in shapes):
        parser.error(f"--shapes={args.shapes!r}; channels must be multiples of 8 (|D4|)")
    args.precisions = args.precisions.split(",")
    if any(p not in ("fp32", "bf16-cl") for p in args.precisions):
        parser.error(f"--precisions={args.precisions!r}; each must be fp32 or bf16-cl")
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu measures host CPU time; use it with --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Without it, whether a step's activation buffers are page-faulted in afresh depends on
    # the process's allocation history, i.e. on which layer ran before: not on the layer.
    tuned = args.device == "cpu" and not args.malloc_default and keep_freed_memory()
    args.batch = args.batch or (64 if args.device == "cuda" else 8)
    lib = load_escnn() if args.escnn else None
    if args.escnn and lib is None:
        print("escnn/e2cnn: neither is installed; skipping the R2Conv comparison")
    elif lib is not None:
        mod = importlib.import_module(lib[0])
        print(f"{lib[0]} {getattr(mod, '__version__', '?')}: R2Conv on the regular representation")
    print(
        f"torch {torch.__version__}, device {args.device}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, {args.clock} clock, median of {args.rounds} rounds, "
        f"malloc {'keeps freed blocks' if tuned else 'default'}"
    )
    rows: list[Row] = []
    for c, hw in shapes:
        for key in args.groups:
            for name, t in construction_times(lib, key, c, args.device, 3).items():
                print(f"construct {name:22s} {c:4d}/{c:<4d} {t * 1e3:10.3f} ms", flush=True)
        rows += run_shape(args, lib, c, hw)
    table = markdown(rows, args)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
