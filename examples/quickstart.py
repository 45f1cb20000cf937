"""Quick start: a small CNN with symmetric layers, its parameter count, and the flip check.

    python examples/quickstart.py

Builds the same 3-layer CNN three ways (plain, symmetric first layer as in the seed
README, fully symmetric), prints the parameter counts, then verifies exactly, in float64,
that flipping the input flips a symmetric layer's output and permutes its channels.
"""

from __future__ import annotations

import torch
from torch import nn

import symconv
from symconv import OrbitPool, SymmetricConv2d, flip_permutation


def make_cnn(first: nn.Module, rest_symmetry: dict | None = None) -> nn.Sequential:
    def conv(cin: int, cout: int) -> nn.Module:
        if rest_symmetry is None:
            return nn.Conv2d(cin, cout, 3, padding=1)
        return SymmetricConv2d(cin, cout, 3, padding=1, symmetry=rest_symmetry)

    return nn.Sequential(
        first,
        nn.ReLU(),
        conv(16, 16),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        conv(16, 32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    torch.manual_seed(0)
    models = {
        "plain": make_cnn(nn.Conv2d(1, 16, 3, padding=1)),
        "seed example (first layer h:2, v:4, hv:8)": make_cnn(
            SymmetricConv2d(1, 16, 3, padding=1, symmetry={"h": 2, "v": 4, "hv": 8})
        ),
        "every conv hv:100%": make_cnn(
            SymmetricConv2d(1, 16, 3, padding=1, symmetry={"hv": "100%"}), {"hv": "100%"}
        ),
    }
    base = n_params(models["plain"])
    print(f"symconv {symconv.__version__}, torch {torch.__version__}\n")
    print(f"{'model':45s} {'params':>8s} {'vs plain':>9s}")
    for name, model in models.items():
        print(f"{name:45s} {n_params(model):8d} {n_params(model) / base:9.1%}")

    layer = SymmetricConv2d(1, 16, 3, padding=1, symmetry={"h": 2, "v": 4, "hv": 8}).double()
    print("\n" + layer.plan.describe())
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    y = layer(x)
    print("\nflip  channels equivariant  max |layer(flip x) - P flip(layer x)|")
    for axes, dims in (("h", [3]), ("v", [2]), ("hv", [2, 3])):
        perm, eq = flip_permutation(layer, axes)
        err = (layer(x.flip(dims))[:, eq] - y.flip(dims)[:, perm][:, eq]).abs().max().item()
        print(f"{axes:5s} {int(eq.sum()):2d} of {layer.out_channels}            {err:.1e}")
    # Orbit pooling removes the channel permutation; a global average then removes the flip.
    pooled = OrbitPool(layer)
    _, eq = flip_permutation(layer, "h")
    h_orbits = sorted(set(layer.plan.free_index[eq.numpy()].tolist()))
    feats = pooled(y).mean((2, 3))[:, h_orbits]
    feats_flipped = pooled(layer(x.flip([3]))).mean((2, 3))[:, h_orbits]
    print(
        f"\norbit-pooled, globally averaged features of the {len(h_orbits)} orbits that contain "
        f"h, after an h flip: max change {(feats_flipped - feats).abs().max().item():.1e}"
    )


if __name__ == "__main__":
    main()
