"""``OrbitConv2d``: a symmetric convolution and its orbit pooling, whose output flips with its
input channel by channel (the building block of ``symconv compare``'s ``sym-inv``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from symconv.nn.orbit import ORBIT_KEYS, OrbitConv2d

FLIPS = {"h": [-1], "v": [-2], "hv": [-2, -1]}


def _integer_weights(layer: nn.Module, seed: int) -> None:
    """Small integer weights: with integer inputs every sum is exact in float64, so
    equivariance holds bit for bit, whatever order the convolution adds the taps in."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randint(-3, 4, p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("key", ["h", "v", "hv"])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("shape", [(7, 8), (6, 6), (5, 9)])
def test_output_flips_exactly_with_the_input(
    key: str, kernel_size: int, shape: tuple[int, int]
) -> None:
    layer = OrbitConv2d(3, 4, kernel_size, key).double()
    _integer_weights(layer, seed=kernel_size)
    x = torch.randint(-5, 6, (2, 3, *shape), generator=torch.Generator().manual_seed(1)).double()
    y = layer(x)
    assert y.shape == (2, 4, *shape)
    for letters, dims in FLIPS.items():
        if set(letters) <= set(key):
            assert torch.equal(layer(x.flip(dims)), y.flip(dims)), letters
    if key != "hv" and kernel_size > 1:
        # ...and only for its own flips (the property can fail)
        other = "v" if key == "h" else "h"
        assert not torch.equal(layer(x.flip(FLIPS[other])), y.flip(FLIPS[other]))


def test_it_pools_the_orbit_members_of_a_symmetric_convolution() -> None:
    layer = OrbitConv2d(2, 3, 3, "hv")
    assert layer.conv.out_channels == 3 * 4 and layer.conv.plan.n_free == 3
    # the parameters of the nn.Conv2d(2, 3, 3, bias=False) it replaces
    assert sum(p.numel() for p in layer.parameters()) == 3 * 2 * 3 * 3
    x = torch.randn(1, 2, 5, 5)
    members = layer.conv(x).unflatten(1, (3, 4))
    assert torch.equal(layer(x), members.amax(2))


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="kernel_size=2 must be odd"):
        OrbitConv2d(3, 5, 2)
    with pytest.raises(ValueError, match="key='z' is not allowed"):
        OrbitConv2d(3, 5, 3, "z")
    with pytest.raises(TypeError, match=r"kernel_size=3\.0 must be an int >= 1, got float"):
        OrbitConv2d(3, 5, 3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out_channels=0 is not allowed; it must be an int >= 1"):
        OrbitConv2d(3, 0, 3)
    with pytest.raises(TypeError, match="in_channels=True must be an int >= 1, got bool"):
        OrbitConv2d(True, 5, 3)  # type: ignore[arg-type]


def test_exported_beside_orbit_pool() -> None:
    import symconv
    import symconv.compare
    import symconv.nn
    from symconv.compare.config import INVARIANT_KEYS

    assert symconv.OrbitConv2d is symconv.nn.OrbitConv2d is OrbitConv2d
    assert symconv.compare.OrbitConv2d is OrbitConv2d  # where it used to live
    assert "OrbitConv2d" in symconv.__all__ and "OrbitConv2d" in symconv.nn.__all__
    assert INVARIANT_KEYS == ORBIT_KEYS  # compare's --invariant-to choices
