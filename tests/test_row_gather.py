"""RowGather (core) and the torch gather over it: the rows-times-smaller index gathers
exactly what the flat index does, forward and backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from symconv import GroupConv2d, GroupConv3d, SymmetricConv2d
from symconv.core.row_gather import RowGather
from symconv.nn._gather import gather


@st.composite
def factored(draw):
    """A flat index built as ``rows`` blocks of one row index, and its source size."""
    rows = draw(st.integers(1, 6))
    row_size = draw(st.integers(1, 12))
    lead = draw(st.integers(1, 3))  # leading-axis entries per row
    width = draw(st.integers(1, 5))
    index = draw(hnp.arrays(np.int64, lead * width, elements=st.integers(0, row_size - 1)))
    flat = np.arange(rows)[:, None] * row_size + index[None, :]
    return flat.reshape(rows * lead, width), rows, rows * row_size


@given(factored())
def test_a_factored_index_round_trips_with_at_least_its_rows(case):
    flat, rows, size = case
    plan = RowGather.of(flat, size)
    assert plan.rows >= rows and plan.rows * plan.row_size == size
    assert plan.size == flat.size and len(plan.index) * plan.rows == flat.size
    np.testing.assert_array_equal(plan.flat(), flat)


@given(
    hnp.arrays(
        np.int64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), elements=st.integers(0, 9)
    )
)
def test_any_index_round_trips(flat):
    plan = RowGather.of(flat, 10)
    np.testing.assert_array_equal(plan.flat(), flat)
    # No split is claimed that the index does not have: every row reads its own block.
    blocks = flat.reshape(plan.rows, -1)
    assert np.all(blocks // plan.row_size == np.arange(plan.rows)[:, None])


def test_an_unstructured_index_is_one_row():
    flat = np.array([[3, 0], [1, 2]])  # row 1 reads the first half of the source
    plan = RowGather.of(flat, 4)
    assert plan.rows == 1 and plan.row_size == 4
    np.testing.assert_array_equal(plan.index, flat.reshape(-1))


@pytest.mark.parametrize(
    ("flat", "size", "exc", "match"),
    [
        (np.array([0, 1]), 0, ValueError, r"source_size=0 is not allowed"),
        (np.array([0, 1]), True, TypeError, r"source_size=True must be an int"),
        (
            np.array([0, 2]),
            2,
            ValueError,
            r"flat='\[0, 2\]' is not allowed; it must be positions in \[0, 2\)",
        ),
        (np.array([-1, 0]), 2, ValueError, r"positions in \[0, 2\)"),
        (np.array([0.0, 1.0]), 2, ValueError, r"an integer array"),
        (np.array(1), 2, ValueError, r"with at least one axis"),
    ],
)
def test_invalid_arguments(flat, size, exc, match):
    with pytest.raises(exc, match=match):
        RowGather.of(flat, size)


@given(factored(), st.sampled_from([torch.float32, torch.float64]))
def test_torch_gather_equals_flat_indexing_forward_and_backward(case, dtype):
    flat, _, size = case
    plan = RowGather.of(flat, size)
    source = torch.randn(size, dtype=dtype, requires_grad=True)
    got = gather(source, torch.from_numpy(plan.index), plan.rows, plan.shape)
    want = source[torch.from_numpy(flat)]
    assert torch.equal(got, want)
    grad = torch.randn(flat.shape, dtype=dtype)
    (g_got,) = torch.autograd.grad(got, source, grad)
    (g_want,) = torch.autograd.grad(want, source, grad)
    torch.testing.assert_close(g_got, g_want)


def test_torch_gather_second_derivatives():
    flat = np.arange(3)[:, None] * 4 + np.array([[3, 1, 1, 0, 2]])
    plan = RowGather.of(flat, 12)
    index = torch.from_numpy(plan.index)
    source = torch.randn(12, dtype=torch.float64, requires_grad=True)

    def fn(s: torch.Tensor) -> torch.Tensor:
        return gather(s, index, plan.rows, plan.shape).square()

    assert torch.autograd.gradcheck(fn, (source,))
    assert torch.autograd.gradgradcheck(fn, (source,))


@pytest.mark.parametrize(
    ("layer", "rows"),
    [
        (GroupConv2d(16, 32, 3, group="hr"), 4),  # one row per output field
        (GroupConv2d(16, 32, 3, group="r"), 8),
        (GroupConv3d(16, 16, 3, group="hvz"), 2),
        (SymmetricConv2d(4, 12, 3, symmetry={"hv": 12}), 3),  # one row per orbit
    ],
)
def test_layers_keep_one_row_index_per_field(layer, rows):
    # The memory the layer keeps for its gather: the full index divided by the fields.
    full = layer.gather_index()
    assert layer._index.numel() * rows == full.numel()
    torch.testing.assert_close(layer.expanded_weight, layer.weight.reshape(-1)[full])
    if full.dim() == 4:  # the channels_last path gathers storage to storage, also in rows
        layer.to(memory_format=torch.channels_last)
        torch.testing.assert_close(layer.expanded_weight, layer.weight.reshape(-1)[full])
        assert layer._channels_last_gather[0].rows == rows


@given(st.data())
def test_group_conv_spec_builds_the_rows_of_its_gather_index(data):
    from symconv.core.group_conv import GroupConvSpec
    from symconv.core.groups import GROUP_KEYS, group, minimal_ndim

    nd = data.draw(st.sampled_from([1, 2, 3]))
    keys = [k for k in GROUP_KEYS if minimal_ndim(k) <= nd and ("r" not in k or nd == 2)]
    key = data.draw(st.sampled_from(keys))
    order = group(key, nd).order
    groups = data.draw(st.sampled_from([1, 2]))
    spec = GroupConvSpec.from_torch(
        nd,
        group=key,
        in_channels=order * groups * data.draw(st.integers(1, 2)),
        out_channels=order * groups * data.draw(st.integers(1, 3)),
        kernel_size=data.draw(st.sampled_from([1, 2, 3])),
        groups=groups,
    )
    rows = spec.row_gather()
    np.testing.assert_array_equal(rows.flat(), spec.gather_index())
    assert rows.rows == spec.out_fields


def _column_gather(source: np.ndarray, rows: RowGather, shape: tuple[int, ...]) -> np.ndarray:
    """What symconv.keras._common.gather_columns computes, in numpy."""
    columns = source.shape[-1]
    taken = source.reshape(-1, columns)[rows.index]  # (m * K, columns)
    return taken.reshape(shape[-1] // columns, -1, columns).transpose(1, 2, 0).reshape(shape)


@pytest.mark.parametrize(
    "spec_of",
    [
        lambda: GroupConv2d(16, 24, 3, group="hr").spec,
        lambda: GroupConv2d(8, 8, (3, 3), group="r", groups=2).spec,
        lambda: GroupConv3d(8, 16, (1, 2, 3), group="hz").spec,
    ],
)
def test_column_rows_of_keras_group_kernels_gather_what_the_flat_index_does(spec_of):
    from symconv.core.row_gather import column_rows

    spec = spec_of()
    flat = spec.gather_index(layout="keras")  # (*k, in/groups, out)
    free = np.random.default_rng(0).standard_normal(spec.params()[0].keras_shape)
    rows = column_rows(flat, free.shape[-1])
    assert rows is not None and rows.rows == free.shape[-1]  # one row per free filter
    assert rows.index.size == flat.size // rows.rows  # |G| * K entries, not flat.size
    np.testing.assert_array_equal(_column_gather(free, rows, flat.shape), free.reshape(-1)[flat])


def test_column_rows_is_none_when_channels_mix_free_filters():
    from symconv.core.row_gather import column_rows

    plan = SymmetricConv2d(3, 16, 3, symmetry={"h": 2, "hv": 8}).plan
    flat = plan.gather_index(3, (3, 3), layout="keras")
    assert column_rows(flat, plan.n_free) is None
    single = SymmetricConv2d(3, 16, 3, symmetry={"hr": 16}).plan
    flat = single.gather_index(3, (3, 3), layout="keras")
    rows = column_rows(flat, single.n_free)
    free = np.arange(9 * 3 * single.n_free, dtype=np.float64).reshape(3, 3, 3, single.n_free)
    np.testing.assert_array_equal(_column_gather(free, rows, flat.shape), free.reshape(-1)[flat])
