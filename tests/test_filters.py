"""`symconv filters`: every orbit of a symmetric layer drawn in one row, weights as stored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from symconv import ConvTwist, SymmetricConv2d
from symconv.cli import main as run_cli
from symconv.viz import filters as filters_mod
from symconv.viz.filters import FilterFigure, layers_of, load_checkpoint, plot_filters

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

SPEC = {"h": 2, "v": 2, "hv": 4}


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        SymmetricConv2d(2, 11, 3, padding=1, symmetry=SPEC),  # 3 orbits + 3 plain filters
        nn.ReLU(),
        nn.Conv2d(11, 4, 3),
    )


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def tile(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    left, top, right, bottom = box
    return pixels[top:bottom, left:right]


def expected_tile(kernel: np.ndarray, fig: FilterFigure) -> np.ndarray:
    return filters_mod._kernel_pixels(kernel, fig.zoom, fig.scale)


def check_orbit_rows(fig: FilterFigure, layer: SymmetricConv2d, pixels: np.ndarray) -> None:
    """Each orbit is one row, in member order, and its tiles are the reflected free filter."""
    plan = layer.plan
    weight = layer.expanded_weight.detach().double().numpy()
    orbit_rows = [r for r in fig.rows if r.label.startswith("orbit")]
    assert len(orbit_rows) == sum(b.n_orbits for b in plan.blocks)
    for f, row in enumerate(orbit_rows):
        assert row.channels == tuple(np.flatnonzero(plan.free_index == f))
        block = plan.block_for_channel(row.channels[0])
        assert row.label == f"orbit {f} ({block.key})"
        assert (
            row.tiles
            == {"h": ("id", "h"), "v": ("id", "v"), "hv": ("id", "h", "v", "hv")}[block.key]
        )
        first = tile(pixels, row.boxes[0][0])
        for channel, name, boxes in zip(row.channels, row.tiles, row.boxes, strict=True):
            for i, box in enumerate(boxes):
                drawn = tile(pixels, box)
                np.testing.assert_array_equal(drawn, expected_tile(weight[channel, i], fig))
            # The weight sharing, read off the picture: member = reflected free filter.
            reflected = tile(pixels, boxes[0])
            if "h" in name:
                reflected = reflected[:, ::-1]
            if "v" in name:
                reflected = reflected[::-1]
            np.testing.assert_array_equal(reflected, first)
    plain = [c for r in fig.rows if r.label.startswith("plain") for c in r.channels]
    assert plain == list(range(plan.n_symmetric, plan.out_channels))


def test_plot_filters_module(tmp_path) -> None:
    model = tiny_model()
    fig = plot_filters(model, tmp_path / "f.png")
    pixels = read_png(tmp_path / "f.png")
    assert pixels.shape[:2] == (fig.height, fig.width)
    assert fig.layer == "0" and fig.info.kind == "symmetric"
    assert [r.label for r in fig.rows] == [
        "orbit 0 (h)",
        "orbit 1 (v)",
        "orbit 2 (hv)",
        "plain 8-10",
    ]
    check_orbit_rows(fig, model[0], pixels)
    assert fig.scale == pytest.approx(float(model[0].expanded_weight.detach().abs().max()))


def test_plot_filters_plain_and_twist_layers(tmp_path) -> None:
    model = tiny_model()
    fig = plot_filters(model, tmp_path / "c.png", layer="2", max_in=3)
    pixels = read_png(tmp_path / "c.png")
    assert fig.info.kind == "conv" and fig.n_in_shown == 3
    assert [r.channels for r in fig.rows] == [(0, 1, 2, 3)]
    w = model[2].weight.detach().double().numpy()
    for channel, boxes in zip(fig.rows[0].channels, fig.rows[0].boxes, strict=True):
        assert len(boxes) == 3
        for i, box in enumerate(boxes):
            np.testing.assert_array_equal(tile(pixels, box), expected_tile(w[channel, i], fig))

    torch.manual_seed(1)
    twist = ConvTwist(1, 3)
    fig = plot_filters(nn.Sequential(twist), tmp_path / "t.png")
    pixels = read_png(tmp_path / "t.png")
    assert [r.tiles for r in fig.rows] == [("W", "Wx", "Wy")] * 3
    for c, row in enumerate(fig.rows):
        for kernel, boxes in zip(
            (twist.weight, twist.weight_x, twist.weight_y), row.boxes, strict=True
        ):
            expected = expected_tile(kernel[c, 0].detach().double().numpy(), fig)
            np.testing.assert_array_equal(tile(pixels, boxes[0]), expected)


def test_state_dict_with_symmetry(tmp_path) -> None:
    model = tiny_model()
    fig = plot_filters(model.state_dict(), tmp_path / "s.png", symmetry={"0": SPEC})
    check_orbit_rows(fig, model[0], read_png(tmp_path / "s.png"))
    # Without the spec a state_dict cannot say which filters are shared: drawn as stored.
    fig = plot_filters(model.state_dict(), tmp_path / "p.png")
    assert fig.info.kind == "conv" and fig.info.weight.shape[0] == model[0].plan.n_free


def test_out_channels_inferred_or_required() -> None:
    weight = torch.zeros(10, 1, 3, 3)  # hv:50% gives 10 free filters for 13 or 16 channels
    with pytest.raises(ValueError, match=r"fits 2 channel counts \(13, 16\)"):
        layers_of({"c.weight": weight}, symmetry={"c": {"hv": "50%"}})
    layers = layers_of({"c.weight": weight}, symmetry={"c": {"hv": "50%"}}, out_channels={"c": 16})
    assert layers["c"].plan.out_channels == 16 and layers["c"].weight.shape == (16, 1, 3, 3)
    layers = layers_of({"c.weight": torch.zeros(5, 1, 3, 3)}, symmetry={"c": {"hv": 4}})
    assert layers["c"].plan.out_channels == 8
    with pytest.raises(ValueError, match="has 5 free filters but the weight has 10"):
        layers_of({"c.weight": weight}, symmetry={"c": {"hv": 4}}, out_channels={"c": 8})
    with pytest.raises(ValueError, match="no channel count gives symmetry"):
        layers_of({"c.weight": torch.zeros(1, 1, 3, 3)}, symmetry={"c": {"hv": 8}})
    with pytest.raises(ValueError, match="symmetry names layers not in the state_dict: 'x'"):
        layers_of({"c.weight": weight}, symmetry={"x": {"h": 2}})


def test_checkpoint_formats(tmp_path) -> None:
    model = tiny_model()
    torch.save(model, tmp_path / "module.pt")
    with pytest.raises(ValueError, match="pass trust=True"):
        load_checkpoint(tmp_path / "module.pt")
    loaded = load_checkpoint(tmp_path / "module.pt", trust=True)
    assert isinstance(loaded, nn.Module)

    torch.save({"model": model.state_dict(), "symmetry": {"0": SPEC}}, tmp_path / "sd.pt")
    layers = load_checkpoint(tmp_path / "sd.pt")
    assert layers["0"].plan.n_free == model[0].plan.n_free
    np.testing.assert_array_equal(
        layers["0"].weight, model[0].expanded_weight.detach().double().numpy()
    )
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    assert set(load_checkpoint(tmp_path / "bare.pt")) == {"0", "2"}


def test_compare_checkpoint_is_rebuilt(tmp_path) -> None:
    """A compare checkpoint records how its network was built: drawn right wherever it
    lies, with no config.json beside it and whatever a config.json there says."""
    pytest.importorskip("symconv.compare.train")
    import shutil

    args = ["--limit", "40", "--width", "8", "--batch-size", "20", "--epochs", "1"]
    args += ["--variants", "sym", "--symmetry", "v:50%", "--no-progress", "--no-plots"]
    args += ["--device", "cpu", "--threads", "1", "--out", str(tmp_path / "run")]
    assert run_cli(["compare", *args]) == 0
    saved = torch.load(tmp_path / "run" / "checkpoints" / "sym-run0.pt", weights_only=True)

    # moved away from its run folder: no config.json two folders up
    (tmp_path / "moved").mkdir()
    path = tmp_path / "moved" / "sym.pt"
    shutil.copy(tmp_path / "run" / "checkpoints" / "sym-run0.pt", path)
    model = load_checkpoint(path)
    torch.testing.assert_close(model.state_dict(), saved["model"], rtol=0, atol=0)
    first = next(m for m in model.modules() if isinstance(m, SymmetricConv2d))
    assert [b.key for b in first.plan.blocks] == ["v"]
    fig = plot_filters(model, tmp_path / "cmp.png", layer="features.4")
    check_orbit_rows(fig, model.features[4], read_png(tmp_path / "cmp.png"))
    assert {r.tiles for r in fig.rows if r.label.startswith("orbit")} == {("id", "v")}

    # copied into another run whose config.json says 'h:50%': still drawn as 'v' orbits
    (tmp_path / "other" / "checkpoints").mkdir(parents=True)
    config = {"config": {"size": None, "settings": {"model": "cnn", "width": 8}}}
    config["config"]["settings"]["symmetry"] = "h:50%"
    (tmp_path / "other" / "config.json").write_text(json.dumps(config))
    shutil.copy(path, tmp_path / "other" / "checkpoints" / "sym-run0.pt")
    fig = plot_filters(
        load_checkpoint(tmp_path / "other" / "checkpoints" / "sym-run0.pt"),
        tmp_path / "o.png",
        layer="features.4",
    )
    assert {r.tiles for r in fig.rows if r.label.startswith("orbit")} == {("id", "v")}

    # a compare checkpoint that does not record its network is refused, not guessed
    del saved["build"]
    torch.save(saved, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="does not record the settings its network"):
        load_checkpoint(tmp_path / "old.pt")


def test_bad_filter_arguments(tmp_path) -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="layer 'nope' is not a 2-D convolution here"):
        plot_filters(model, tmp_path / "x.png", layer="nope")
    with pytest.raises(ValueError, match="max_rows=0 is not allowed"):
        plot_filters(model, tmp_path / "x.png", max_rows=0)
    with pytest.raises(ValueError, match="found no 2-D convolution"):
        plot_filters(nn.Linear(2, 2), tmp_path / "x.png")
    with pytest.raises(TypeError, match="must be an nn.Module or a state_dict"):
        plot_filters([1, 2], tmp_path / "x.png")
    with pytest.raises(ValueError, match="symmetry/out_channels apply to state_dicts"):
        plot_filters(model, tmp_path / "x.png", symmetry={"0": SPEC})
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pt.* does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(ValueError, match="cannot read checkpoint .*junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list; expected an nn.Module"):
        load_checkpoint(tmp_path / "list.pt")
    assert not (tmp_path / "x.png").exists()


def test_damaged_or_foreign_files_are_named_and_not_blamed_on_pickling(tmp_path, capsys) -> None:
    """A cut-off or non-torch file says so, with its path; only a sound pickle of Python
    objects suggests --trust (which would let the file run code)."""
    torch.save({"w": torch.randn(100_000), "b": torch.randn(50_000)}, tmp_path / "big.pt")
    data = (tmp_path / "big.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:50_000])  # torch's reader: OSError(EINVAL)
    (tmp_path / "stub.pt").write_bytes(data[:400])  # RuntimeError: no central directory
    (tmp_path / "junk.pt").write_text("garbage\n")  # weights_only: unsupported operand
    for name in ("cut.pt", "stub.pt", "junk.pt"):
        for trust in (False, True):
            with pytest.raises(ValueError, match=rf"^cannot read checkpoint .*{name}: not a "
                               r"torch checkpoint, or a damaged one \(.+\)$") as info:  # fmt: skip
                load_checkpoint(tmp_path / name, trust=trust)
            assert "trust" not in str(info.value)
        assert run_cli(["filters", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{name}: not a torch checkpoint" in err


def test_filters_are_written_in_the_format_the_extension_names(tmp_path) -> None:
    from PIL import Image

    plot_filters(tiny_model(), tmp_path / "f.jpg")
    assert Image.open(tmp_path / "f.jpg").format == "JPEG"
    with pytest.raises(ValueError, match=r"has extension '.txt'"):
        plot_filters(tiny_model(), tmp_path / "f.txt")
    assert not (tmp_path / "f.txt").exists()


def test_group_convolutions_are_drawn_one_field_per_row(tmp_path) -> None:
    """A GroupConv2d is an nn.Conv2d whose ``weight`` is the free kernel: the figure shows
    the full kernel, a field's |G| members in a row, member r the quarter turn of e with
    the input fields' members moved along."""
    from symconv import GroupConv2d

    torch.manual_seed(0)
    layer = GroupConv2d(4, 8, 3, group="r")
    info = layers_of(nn.Sequential(layer))["0"]
    assert info.describe() == "group, 8 filters of 4 x 3 x 3, 2 fields of |G|=4 (group 'r')"
    fig = plot_filters(nn.Sequential(layer), tmp_path / "g.png")
    pixels = read_png(tmp_path / "g.png")
    weight = layer.expanded_weight.detach().double().numpy()
    assert [r.label for r in fig.rows] == ["field 0 (r)", "field 1 (r)"]
    for f, row in enumerate(fig.rows):
        assert row.channels == tuple(range(4 * f, 4 * f + 4))
        assert row.tiles == ("e", "r", "r2", "r3")
        for channel, boxes in zip(row.channels, row.boxes, strict=True):
            for i, box in enumerate(boxes):
                expected = expected_tile(weight[channel, i], fig)
                np.testing.assert_array_equal(tile(pixels, box), expected)
        # Read off the picture: member r's input member 1 is member e's input member 0
        # turned a quarter (counterclockwise, as torch.rot90 on (H, W)).
        e_in0, r_in1 = tile(pixels, row.boxes[0][0]), tile(pixels, row.boxes[1][1])
        np.testing.assert_array_equal(np.rot90(e_in0), r_in1)


def test_row_limits_are_noted(tmp_path) -> None:
    torch.manual_seed(0)
    layer = SymmetricConv2d(12, 40, 3, symmetry={"h": 20})
    fig = plot_filters(nn.Sequential(layer), tmp_path / "l.png", max_rows=4, max_in=2)
    assert len(fig.rows) == 4 and fig.n_in_shown == 2
    assert all(len(boxes) == 2 for r in fig.rows for boxes in r.boxes)


# -- command line ---------------------------------------------------------------------------


def test_cli_filters(tmp_path, capsys) -> None:
    model = tiny_model()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "symmetry": {"0": SPEC}}, ckpt)
    out = tmp_path / "filters.png"
    assert run_cli(["filters", str(ckpt), "--out", str(out)]) == 0
    assert "layer 0: symmetric, 11 filters" in capsys.readouterr().out
    fig = plot_filters(model, tmp_path / "same.png")
    np.testing.assert_array_equal(read_png(out), read_png(tmp_path / "same.png"))
    check_orbit_rows(fig, model[0], read_png(out))

    assert run_cli(["filters", str(ckpt), "--list-layers"]) == 0
    listed = capsys.readouterr().out
    assert "0: symmetric, 11 filters of 2 x 3 x 3, 6 orbits" in listed and "2: conv" in listed

    torch.save(model, tmp_path / "module.pt")
    assert run_cli(["filters", str(tmp_path / "module.pt"), "--out", str(out)]) == 2
    assert "--trust" in capsys.readouterr().err
    assert run_cli(["filters", str(tmp_path / "module.pt"), "--trust", "--out", str(out)]) == 0


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["{tmp}/missing.pt"], "does not exist"),
        (["{tmp}/ckpt.pt", "--layer", "9"], "layer '9' is not a 2-D convolution"),
        (["{tmp}/ckpt.pt", "--max-rows", "0"], "--max-rows 0 is not allowed; give 1 or more"),
        (["{tmp}/ckpt.pt", "--max-in", "0"], "--max-in 0 is not allowed; give 1 or more"),
        (["{tmp}/ckpt.pt", "--out", "{tmp}/o.txt"], "o.txt' has extension '.txt'; the format"),
        (["{tmp}/ckpt.pt", "--out", "{tmp}/no/o.png"], "/no does not exist"),
    ],
)
def test_cli_filters_bad_arguments(tmp_path, capsys, argv: list[str], match: str) -> None:
    torch.save(tiny_model().state_dict(), tmp_path / "ckpt.pt")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o.png")]
    assert run_cli(["filters", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("symconv filters: error:") and match in err
    assert len(err.splitlines()) == 1


def test_a_checkpoint_the_device_cannot_read_is_an_os_error_naming_it(
    tmp_path, monkeypatch, capsys
) -> None:
    """EIO carries no file name; it is the system's failure, not a damaged file (exit 1)."""
    import errno

    path = tmp_path / "ckpt.pt"
    torch.save(tiny_model().state_dict(), path)

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "load", fail)
    assert run_cli(["filters", str(path), "--out", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"symconv filters: error: {path}: Input/output error"
