"""convert(model, 'group', ...): lifting, group convolutions, group batch norm and an
invariant head, checked member by member with equivariance_error in float64."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from _models import BasicBlock
from symconv import SymmetricConv2d, convert
from symconv.compare.models import build_model
from symconv.conversion_group import group_width
from symconv.core.groups import group as make_group
from symconv.equivariance import equivariance_error
from symconv.nn.group_conv import GroupConv2d
from symconv.nn.group_norm import GroupBatchNorm2d
from symconv.nn.group_pool import GroupPool

TOL = 1e-9


class StridedNet(nn.Module):
    """A 7x7 stride-2 stem, a 3/2/1 max pool, two blocks (one downsampling), avgpool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(12, 12, 1)
        self.layer2 = BasicBlock(12, 20, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(20, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.layer2(self.layer1(x))), 1))


def _errors_ok(report, model, size) -> None:
    for train in (True, False):
        check = report.check_invariance(model.train(train), size, tol=TOL)
        assert check.promised, check.reasons
        assert len(check.errors) == make_group(report.group).order
        assert check.max_error < TOL, check.errors


@pytest.mark.parametrize("key", ["r", "hr", "hv"])
@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_compare_models_become_exactly_invariant(name: str, key: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 1, 10, width=8 if name == "resnet" else 16)
    report = convert(model, "group", group=key)
    assert report.invariant and not report.skipped and not report.breaks
    kinds = {type(m) for m in model.modules()}
    assert {SymmetricConv2d, GroupConv2d, GroupBatchNorm2d, GroupPool} <= kinds
    assert nn.BatchNorm2d not in kinds and type(model.modules().__next__()) is type(model)
    _errors_ok(report, model, (2, 1, 15, 15))  # odd sides
    _errors_ok(report, model, (2, 1, 12, 12))  # even sides (HalvingPool2d is exact there)


def test_lift_layout_is_group_conv_layout() -> None:
    """The lifting layer's channels transform like GroupConv2d's fields (field-major,
    member-minor), so lift -> GroupConv2d is equivariant as group fields."""
    torch.manual_seed(1)
    for key in ("r", "hr"):
        n = make_group(key).order
        lift = SymmetricConv2d(2, 3 * n, 3, padding=1, symmetry={key: 3 * n}).double()
        gconv = GroupConv2d(3 * n, 2 * n, 3, padding=1, group=key).double()
        x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
        assert max(equivariance_error(lift, x, key, output="group").values()) < 1e-12
        stack = nn.Sequential(lift, gconv)
        assert max(equivariance_error(stack, x, key, output="group").values()) < 1e-12


@pytest.mark.parametrize("key", ["r", "hr"])
def test_width_options_parameter_counts(key: str) -> None:
    order = make_group(key).order
    plain = build_model("cnn", 1, 10, width=16)
    before = sum(p.numel() for p in plain.parameters())
    narrow, wide = copy.deepcopy(plain), copy.deepcopy(plain)
    r1 = convert(narrow, "group", group=key, width="channels")
    r2 = convert(wide, "group", group=key, width="params")
    assert r1.params_before == r2.params_before == before
    assert 0.9 / order < r1.params_after / before < 1.1 / order
    assert 0.9 < r2.params_after / before < 1.02
    # channel counts: kept (whole fields) vs widened by about sqrt(|G|), rounded to fields
    convs = [m for m in narrow.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [16, 32, 64]
    convs = [m for m in wide.modules() if isinstance(m, nn.Conv2d)]
    expect = [order * round(c * math.sqrt(order) / order) for c in (16, 32, 64)]
    assert [m.out_channels for m in convs] == expect
    assert [m.in_channels for m in convs] == [1, *expect[:2]]
    assert wide.head[1].in_features == expect[-1] // order
    _errors_ok(r2, wide, (2, 1, 11, 11))


def test_group_width_rounds_to_whole_fields() -> None:
    assert group_width(16, 8, "channels") == 16 and group_width(6, 8, "channels") == 8
    assert group_width(20, 4, "channels") == 20 and group_width(3, 4, "channels") == 4
    assert group_width(64, 4, "params") == 128 and group_width(64, 8, "params") == 184


def test_copy_weights_projects_kept_shapes() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 3))  # fmt: skip
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    ref = copy.deepcopy(model)
    convert(model, "group", group="r")
    conv, bn, head = model[3], model[1], model[6][1]
    torch.testing.assert_close(
        conv.weight, torch.from_numpy(conv.spec.project(ref[3].weight.detach().numpy()))
    )
    torch.testing.assert_close(conv.bias, ref[3].bias.reshape(-1, 4).mean(1))
    m, v = ref[1].running_mean.reshape(-1, 4), ref[1].running_var.reshape(-1, 4)
    torch.testing.assert_close(bn.running_mean, m.mean(1))
    torch.testing.assert_close(bn.running_var, v.mean(1) + m.var(1, unbiased=False))
    torch.testing.assert_close(head.weight, ref[6].weight.reshape(3, 4, 4).sum(-1))


def test_strides_decide_exactness() -> None:
    torch.manual_seed(4)
    model = StridedNet()
    report = convert(model, "group", group="hr")
    assert report.invariant
    _errors_ok(report, model, (2, 3, 33, 33))  # 33 -> 17 -> 9 -> 5: every strided side odd
    check = report.check_invariance(model.eval(), (2, 3, 32, 32))
    assert not check.promised and not check.exact
    assert any(r.startswith("conv1 (GroupConv2d)") or r.startswith("conv1 (SymmetricConv2d)")
               for r in check.reasons), check.reasons  # fmt: skip
    assert "stride 2 on an input of side 32" in check.reasons[0]


def test_refused_layers_are_reported_with_reasons() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, (1, 3), padding=(0, 1)),  # non-square: cannot turn
        nn.GroupNorm(2, 8),                        # per-channel affine: no group counterpart
        nn.PReLU(),                                # one shared slope: commutes
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip
    report = convert(model, "group", group="r")
    assert not report.invariant
    skipped = dict(report.skipped)
    assert "square for group 'r'" in skipped["2"] and "kernel_size=(1, 3)" in skipped["2"]
    assert "GroupNorm has parameters of its own (weight, bias)" in skipped["3"]
    assert [n for n, _ in report.breaks] == ["2", "3"] and "4" not in skipped
    assert isinstance(model[2], nn.Conv2d) and type(model[2]) is nn.Conv2d
    check = report.check_invariance(model.double(), (2, 1, 9, 9))
    assert not check.promised and check.max_error > 1e-3
    assert "NOT invariant" in str(report)


def test_layers_that_cannot_follow_a_width_change_raise_before_changing_anything() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, (1, 3)),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))  # fmt: skip
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"cannot change the channels consistently: 1 \("):
        convert(model, "group", group="r", width="params")
    assert model.state_dict().keys() == state.keys() and type(model[0]) is nn.Conv2d


def test_head_that_flattens_a_map_is_not_invariant() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 5 * 5, 3))  # fmt: skip
    report = convert(model, "group", group="hv")
    assert dict(report.breaks)["3"].startswith("head takes 200 features, not the 8 pooled")
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
    report = convert(model, "group", group="hv")
    assert "no nn.Linear after the last convolution" in dict(report.breaks)[""]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({}, ValueError, "to='group' needs a group key"),
        ({"group": "q"}, ValueError, "group='q' is not allowed"),
        ({"group": "hvz"}, ValueError, "group='hvz' is not allowed"),
        ({"group": 4}, TypeError, "group=4 must be a str"),
        ({"group": "r", "width": "double"}, ValueError, "width='double' is not allowed"),
        ({"group": "r", "symmetry": {"h": 2}}, ValueError, "only used with to='symmetric'"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, match: str) -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3))
    with pytest.raises(exc, match=match):
        convert(model, "group", **kwargs)
    with pytest.raises(ValueError, match="group='r' is only used with to='group'"):
        convert(model, "twist", group="r")
    with pytest.raises(ValueError, match="width='params' is only used with to='group'"):
        convert(model, "symmetric", symmetry={"h": 2}, width="params")


def test_first_convolution_that_cannot_lift_raises() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, (3, 5)), nn.Conv2d(8, 8, 3))
    with pytest.raises(ValueError, match="the first convolution '0' cannot lift"):
        convert(model, "group", group="r")
    model = nn.Sequential(nn.Conv1d(1, 8, 3))
    with pytest.raises(ValueError, match="group conversion is 2-D only"):
        convert(model, "group", group="h")
    convert(model := nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3)), "group", group="h")
    with pytest.raises(ValueError, match="already a SymmetricConv2d"):
        convert(model, "group", group="h")


@pytest.mark.parametrize(
    ("kwargs", "name", "value"),
    [
        ({"padding": (1, 0)}, "padding", "(1, 0)"),
        ({"stride": (1, 2)}, "stride", "(1, 2)"),
        ({"dilation": (1, 2)}, "dilation", "(1, 2)"),
    ],
)
def test_a_grid_that_a_quarter_turn_changes_is_refused_or_reported(kwargs, name, value) -> None:
    """Uneven stride, padding or dilation on height and width cannot be exact under turns
    at any input size: the lift refuses it, a later convolution is left as it is and
    breaks invariance in the report (reflection groups keep their axes and accept it)."""
    why = rf"{name}={re.escape(value)} is not allowed; it must be the same on height and width"
    first = nn.Sequential(nn.Conv2d(3, 16, 3, **kwargs), nn.ReLU(), nn.Conv2d(16, 16, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))  # fmt: skip
    with pytest.raises(ValueError, match=rf"the first convolution '0' cannot lift .*{why}"):
        convert(copy.deepcopy(first), "group", group="r")
    assert convert(first, "group", group="hv").invariant
    later = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, **kwargs),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))  # fmt: skip
    report = convert(later, "group", group="hr")
    assert not report.invariant and re.search(why, dict(report.breaks)["2"])
    assert type(later[2]) is nn.Conv2d


def test_torchvision_resnet18() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(6)
    model = torchvision.models.resnet18(num_classes=10)
    report = convert(model, "group", group="r")
    # 20 convolutions, 20 batch norms, the fc head
    assert len(report) == 41 and report.invariant and not report.skipped
    check = report.check_invariance(model.eval(), (1, 3, 33, 33))
    assert check.promised and check.max_error < TOL, check


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((torch.randn(1, 3, 9, 9),), {}, TypeError, r"input_size=<torch.Tensor of shape \(1, 3"),
        (((1, 3, 9.0, 9),), {}, TypeError, r"input_size=\(1, 3, 9.0, 9\) must be a .*got float$"),
        (((1, 3, 9),), {}, ValueError, r"input_size=\(1, 3, 9\) is not allowed; it must be a"),
        (((1, 3, 0, 9),), {}, ValueError, r"input_size=\(1, 3, 0, 9\) is not allowed"),
        (((1, 3, 9, 9),), {"tol": -1}, ValueError, r"tol=-1 is not allowed"),
        (((1, 3, 9, 9),), {"tol": "small"}, TypeError, r"tol='small' must be"),
        (((1, 3, 9, 9),), {"seed": -1}, ValueError, r"seed=-1 is not allowed"),
    ],
)
def test_check_invariance_checks_its_arguments_up_front(args, kwargs, exc, match) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 2))  # fmt: skip
    report = convert(model, "group", group="r")
    with pytest.raises(exc, match=match):
        report.check_invariance(model, *args, **kwargs)
    assert report.check_invariance(model, (1, 3, np.int64(9), 9)).max_error < 1e-9


def test_check_invariance_refuses_a_model_the_report_did_not_convert() -> None:
    def cnn():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 2))  # fmt: skip

    model, other = cnn(), cnn()
    report = convert(model, "group", group="r")
    with pytest.raises(ValueError, match=r"layer '0' is Conv2d\(3, 8, .*where the conversion made"):
        report.check_invariance(other, (1, 3, 9, 9))
    convert(other, "group", group="hv")  # converted too, but not by this report
    with pytest.raises(ValueError, match=r"symmetry=\{'hv': 8\}.*where the conversion made .*'r'"):
        report.check_invariance(other, (1, 3, 9, 9))
    with pytest.raises(ValueError, match=r"input_size has 4 channels; the model's first converted"):
        report.check_invariance(model, (1, 4, 9, 9))
    with pytest.raises(TypeError, match=r"model=5 must be the nn.Module this report"):
        report.check_invariance(5, (1, 3, 9, 9))
    assert report.check_invariance(model, (1, 3, 9, 9)).max_error < 1e-9
