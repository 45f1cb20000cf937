"""`symconv flow`: presets move a picture as derived in symconv.viz.flow, frames are drawn.

Rates are checked on a Gaussian blob against formulas derived from the kernels:
``I + eps*A`` moves the centroid exactly ``-8 eps`` px per step along the width (the
kernel sums to 1, its first moment along ``j`` is ``8 eps``); the rotate preset moves the
centroid by the exact forward-Euler rotation (angle ``atan(d)`` per step, radius
``sqrt(1 + d^2)``, ``d = 16 eps / W``), since an odd kernel times a linear coordinate
maps first moments affinely.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from symconv.cli import main as run_cli
from symconv.viz import flow as flow_mod
from symconv.viz import images
from symconv.viz.flow import (
    GAUSSIAN,
    PRESETS,
    SOBEL_X,
    SOBEL_Y,
    flow_frames,
    flow_operator,
    frame_steps,
    load_kernel,
    save_gif,
    save_strip,
    strip_layout,
    validate_kernel,
)

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def blob(ci: float, cj: float, sigma: float, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    i, j = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    return np.exp(-((i - ci) ** 2 + (j - cj) ** 2) / (2 * sigma**2))


def moments(f: np.ndarray) -> tuple[float, float, float, float, float]:
    """Mass, centroid (row, column) and variances (row, column) of a picture."""
    i, j = np.mgrid[0 : f.shape[0], 0 : f.shape[1]].astype(np.float64)
    m0 = f.sum()
    ci, cj = (f * i).sum() / m0, (f * j).sum() / m0
    vi, vj = (f * (i - ci) ** 2).sum() / m0, (f * (j - cj) ** 2).sum() / m0
    return m0, ci, cj, vi, vj


def naive_conv(x: np.ndarray, kernel: np.ndarray, padding: str) -> np.ndarray:
    """Cross-correlation written from the formula, with numpy padding."""
    p = kernel.shape[0] // 2
    mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge"}[padding]
    xp = np.pad(x, p, mode=mode)
    out = np.zeros_like(x, dtype=np.float64)
    for a in range(kernel.shape[0]):
        for b in range(kernel.shape[1]):
            out += kernel[a, b] * xp[a : a + x.shape[0], b : b + x.shape[1]]
    return out


def naive_twist_step(x: np.ndarray, kx: np.ndarray, ky: np.ndarray, padding: str) -> np.ndarray:
    """One step of the post's formula: x + (X - cx) conv(x, Kx) + (Y - cy) conv(x, Ky)."""
    h, w = x.shape
    big_x = 2 * np.arange(w)[None, :] / w - (w - 1) / w
    big_y = 2 * np.arange(h)[:, None] / h - (h - 1) / h
    return x + big_x * naive_conv(x, kx, padding) + big_y * naive_conv(x, ky, padding)


# -- presets move the picture as claimed ----------------------------------------------------


@pytest.mark.parametrize("eps", [1.0, 0.5])
def test_blur_keeps_centroid_and_adds_variance(eps: float) -> None:
    f0 = blob(30.0, 34.0, 3.0)
    frames = flow_frames(f0, "blur", steps=10, every=5, eps=eps)
    m0, ci, cj, vi, vj = moments(frames[0])
    for k, frame in zip((5, 10), frames[1:], strict=True):
        m, ci_k, cj_k, vi_k, vj_k = moments(frame)
        assert m == pytest.approx(m0, rel=1e-9)
        assert (ci_k, cj_k) == pytest.approx((ci, cj), abs=1e-9)
        # The kernel's variance is eps/2 per axis; variances of independent steps add.
        assert vi_k - vi == pytest.approx(0.5 * eps * k, rel=1e-6)
        assert vj_k - vj == pytest.approx(0.5 * eps * k, rel=1e-6)


@pytest.mark.parametrize(
    ("preset", "direction"),
    [("translate-x", (0, -1)), ("translate-y", (1, 0)), ("translate-diag", (1, -1))],
)
@pytest.mark.parametrize("eps", [0.02, -0.015])
def test_translate_moves_centroid_at_8_eps_per_step(
    preset: str, direction: tuple[int, int], eps: float, device: str
) -> None:
    f0 = blob(31.5, 31.5, 3.0)
    steps = 50
    frames = flow_frames(f0, preset, steps=steps, every=steps, eps=eps, device=device)
    m0, ci0, cj0, _, _ = moments(frames[0])
    m1, ci1, cj1, _, _ = moments(frames[1])
    assert m1 == pytest.approx(m0, rel=1e-9)
    # (row, column) displacement: 8 eps px per step along the preset's axis.
    assert ci1 - ci0 == pytest.approx(8 * eps * steps * direction[0], abs=1e-7)
    assert cj1 - cj0 == pytest.approx(8 * eps * steps * direction[1], abs=1e-7)


@pytest.mark.parametrize("shape", [(64, 64), (48, 72)])
@pytest.mark.parametrize("eps", [0.01, -0.01])
def test_rotate_turns_centroid_about_center(shape: tuple[int, int], eps: float) -> None:
    h, w = shape
    ci, cj = (h - 1) / 2, (w - 1) / 2
    f0 = blob(ci - 4.0, cj + 8.0, 2.0, shape)
    steps = 240
    frames = flow_frames(f0, "rotate", steps=steps, every=steps, eps=eps)
    _, i0, j0, _, _ = moments(frames[0])
    m0 = frames[0].sum()
    _, i1, j1, _, _ = moments(frames[1])
    # Angle measured counterclockwise on screen (rows grow downwards).
    ang0, ang1 = math.atan2(-(i0 - ci), j0 - cj), math.atan2(-(i1 - ci), j1 - cj)
    r0, r1 = math.hypot(i0 - ci, j0 - cj), math.hypot(i1 - ci, j1 - cj)
    d = 16 * eps / w
    assert ang1 - ang0 == pytest.approx(steps * math.atan(d), rel=1e-7)
    assert math.copysign(1, ang1 - ang0) == math.copysign(1, eps)  # counterclockwise iff eps > 0
    assert abs(ang1 - ang0) > 0.3  # a visible turn, not a rounding error
    assert r1 == pytest.approx(r0 * (1 + d * d) ** (steps / 2), rel=1e-7)
    assert r1 == pytest.approx(r0, rel=1e-2)  # the distance to the center is kept
    assert frames[1].sum() == pytest.approx(m0, rel=1e-9)  # rotation keeps mass


@pytest.mark.parametrize(("eps", "grows"), [(0.01, True), (-0.01, False)])
def test_scale_changes_spread_about_center(eps: float, grows: bool) -> None:
    n = 64
    c = (n - 1) / 2
    f0 = blob(c, c, 5.0, (n, n))
    steps = 100
    frames = flow_frames(f0, "scale", steps=steps, every=steps, eps=eps)
    i, j = np.mgrid[0:n, 0:n]

    def spread(f: np.ndarray) -> float:
        return math.sqrt((f * ((i - c) ** 2 + (j - c) ** 2)).sum() / f.sum())

    _, ci, cj, _, _ = moments(frames[1])
    assert (ci, cj) == pytest.approx((c, c), abs=1e-9)  # the center stays put
    ratio = spread(frames[1]) / spread(frames[0])
    predicted = (1 - 16 * eps / n) ** -steps
    assert (ratio > 1.2) if grows else (ratio < 0.8)
    # Continuum prediction; the discrete generator is accurate to ~1% on this blob.
    assert ratio == pytest.approx(predicted, rel=0.025)


@pytest.mark.parametrize("preset", ["rotate", "scale"])
@pytest.mark.parametrize("padding", ["zeros", "reflect", "replicate"])
def test_twist_presets_match_the_formula(preset: str, padding: str) -> None:
    """ConvTwist wiring (centers, kernel signs, aspect factor) against the post's formula."""
    rng = np.random.default_rng(0)
    h, w, eps = 12, 16, 0.3
    x = rng.random((h, w))
    a, b = np.array(SOBEL_X), np.array(SOBEL_Y)
    if preset == "rotate":
        kx, ky = -eps * b, -eps * (h / w) * a
    else:
        kx, ky = -eps * a, eps * (h / w) * b
    expected = naive_twist_step(naive_twist_step(x, kx, ky, padding), kx, ky, padding)
    frames = flow_frames(x, preset, steps=2, every=2, eps=eps, padding=padding)
    np.testing.assert_allclose(frames[1], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", ["zeros", "reflect", "replicate"])
def test_custom_kernel_matches_naive_reference(padding: str, tmp_path) -> None:
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(5, 5)) * 0.1
    kernel[2, 2] += 1
    path = tmp_path / "k.json"
    path.write_text(json.dumps(kernel.tolist()))
    x = rng.random((9, 11))
    expected = x
    for _ in range(3):
        expected = naive_conv(expected, kernel, padding)
    frames = flow_frames(x, load_kernel(path), steps=3, every=1, padding=padding)
    assert frames.shape == (4, 9, 11)
    np.testing.assert_array_equal(frames[0], x)
    np.testing.assert_allclose(frames[3], expected, rtol=1e-12, atol=1e-12)


def test_shift_kernel_shows_what_enters_the_frame() -> None:
    """out[j] = x[j + 1]: the picture moves left one pixel per step; padding fills in."""
    shift = [[0, 0, 0], [0, 0, 1], [0, 0, 0]]
    x = np.arange(1.0, 7.0)[None].repeat(3, axis=0)  # columns 1..6
    zeros = flow_frames(x, shift, steps=2, every=2, padding="zeros")[1]
    replicate = flow_frames(x, shift, steps=2, every=2, padding="replicate")[1]
    reflect = flow_frames(x, shift, steps=1, every=1, padding="reflect")[1]
    np.testing.assert_array_equal(zeros[0], [3, 4, 5, 6, 0, 0])
    np.testing.assert_array_equal(replicate[0], [3, 4, 5, 6, 6, 6])
    np.testing.assert_array_equal(reflect[0], [2, 3, 4, 5, 6, 5])


def test_blur_preset_is_the_gaussian_kernel() -> None:
    op = flow_operator("blur", (8, 8))
    np.testing.assert_allclose(op.kernel[0, 0].numpy(), np.array(GAUSSIAN))


@given(steps=st.integers(0, 40), every=st.integers(1, 15))
def test_frame_steps(steps: int, every: int) -> None:
    kept = frame_steps(steps, every)
    assert kept[0] == 0 and kept[-1] == steps
    assert kept == sorted(set(kept))
    assert all(b - a == every for a, b in zip(kept[:-2], kept[1:-1], strict=True))
    assert kept[-1] - kept[-2] <= every if len(kept) > 1 else steps == 0


def test_flow_frames_returns_kept_frames_in_order() -> None:
    x = images.default_image(32)
    frames = flow_frames(x, "translate-x", steps=7, every=3)
    assert frames.shape == (4, 32, 32) and frames.dtype == np.float64
    one_by_one = flow_frames(x, "translate-x", steps=7, every=1)
    np.testing.assert_array_equal(frames, one_by_one[[0, 3, 6, 7]])
    np.testing.assert_array_equal(frames[0], x.astype(np.float64))


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_defaults_reach_their_total(name: str) -> None:
    preset = PRESETS[name]
    for shape in [(28, 28), (128, 128), (96, 160)]:
        eps, steps, every = preset.defaults(shape)
        assert steps == 6 * every  # 7 frames
        target = preset.total * shape[1] ** preset.width_power
        assert target <= preset.rate(eps, shape) * steps <= target + preset.rate(eps, shape) * 6
    x = images.default_image(24)
    frames = flow_frames(x, name)  # default run
    assert len(frames) == 7 and np.isfinite(frames).all()


# -- bad arguments --------------------------------------------------------------------------


def test_bad_flow_arguments() -> None:
    x = np.zeros((8, 8))
    with pytest.raises(ValueError, match="unknown preset 'spin'; choose one of blur"):
        flow_frames(x, "spin", 3, 1)
    with pytest.raises(ValueError, match="steps=-1 is not allowed"):
        flow_frames(x, "blur", -1, 1)
    with pytest.raises(ValueError, match="every=0 is not allowed"):
        flow_frames(x, "blur", 3, 0)
    with pytest.raises(TypeError, match=r"steps=2.5 must be an int >= 0, got float"):
        flow_frames(x, "blur", 2.5, 1)
    with pytest.raises(ValueError, match="padding='circular' is not allowed"):
        flow_frames(x, "blur", 3, 1, padding="circular")
    with pytest.raises(ValueError, match="eps applies to presets only"):
        flow_frames(x, np.eye(3), 3, 1, eps=0.1)
    with pytest.raises(ValueError, match="eps=nan is not allowed"):
        flow_frames(x, "blur", 3, 1, eps=float("nan"))
    with pytest.raises(ValueError, match="eps=inf is not allowed"):
        flow_frames(x, "rotate", eps=float("inf"))  # default steps need a finite eps
    with pytest.raises(ValueError, match=r"image must be a gray picture of shape \(H, W\)"):
        flow_frames(np.zeros((2, 8, 8)), "blur", 3, 1)
    with pytest.raises(ValueError, match="image contains NaN"):
        flow_frames(np.full((8, 8), np.nan), "blur", 3, 1)
    with pytest.raises(ValueError, match="steps must be given for a custom kernel"):
        flow_frames(x, np.eye(3))
    with pytest.raises(ValueError, match="moves the picture too little"):
        flow_frames(x, "rotate", eps=0.0)
    with pytest.raises(ValueError, match="reflect padding needs a picture larger than 2"):
        flow_frames(np.zeros((2, 8)), np.ones((5, 5)), 1, 1, padding="reflect")


def test_eps_is_checked_as_an_argument() -> None:
    """A huge eps is refused by name (was: 'kernel: entry [0][0] = -inf is not finite')."""
    x = np.zeros((8, 8))
    for name in ("translate-x", "blur", "rotate"):
        with pytest.raises(ValueError, match=r"eps=1e\+308 is not allowed; .* \|eps\| <= 1000"):
            flow_frames(x, name, 3, 1, eps=1e308)
    with pytest.raises(TypeError, match="eps must be a number, got str"):
        flow_frames(x, "blur", 3, 1, eps="0.1")
    # the largest eps accepted keeps the kernel finite
    op = flow_operator("translate-x", (8, 8), eps=-flow_mod.MAX_ABS_EPS)
    assert torch.isfinite(op.kernel).all()


def test_flow_frames_bounds_the_number_of_frames() -> None:
    x = np.zeros((8, 8))
    with pytest.raises(
        ValueError,
        match="steps=20000 with every=1 keeps 20001 frames, more than max_frames=1000; "
        "raise every to 21 or more, or raise max_frames",
    ):
        flow_frames(x, "blur", 20000, 1)
    with pytest.raises(ValueError, match="steps=20 with every=2 keeps 11 frames.*every to 3 "):
        flow_frames(x, "blur", 20, 2, max_frames=10)
    assert len(flow_frames(x, "blur", 20, 3, max_frames=10)) == 8  # the suggested every
    assert len(flow_frames(x, "blur", 4, 1, max_frames=None)) == 5
    with pytest.raises(ValueError, match="more than max_frames=4; raise every to 2"):
        flow_frames(x, "blur", 4, 1, max_frames=4)
    with pytest.raises(ValueError, match="more than max_frames=1; raise max_frames$"):
        flow_frames(x, "blur", 4, 4, max_frames=1)
    with pytest.raises(ValueError, match="max_frames=0 is not allowed"):
        flow_frames(x, "blur", 4, 1, max_frames=0)
    with pytest.raises(TypeError, match=r"max_frames=2.0 must be an int >= 1, got float"):
        flow_frames(x, "blur", 4, 1, max_frames=2.0)


@given(steps=st.integers(0, 10_000), max_frames=st.integers(1, 300))
def test_min_every_is_the_least_every_that_fits(steps: int, max_frames: int) -> None:
    least = flow_mod.min_every(steps, max_frames)
    if least is None:
        assert max_frames == 1 and steps > 0
        return
    assert flow_mod.count_frames(steps, least) <= max_frames
    if least > 1:
        assert flow_mod.count_frames(steps, least - 1) > max_frames


@given(steps=st.integers(0, 300), every=st.integers(1, 400))
def test_count_frames_is_len_of_frame_steps(steps: int, every: int) -> None:
    assert flow_mod.count_frames(steps, every) == len(frame_steps(steps, every))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dtype": torch.int64}, TypeError, "dtype must be a floating torch dtype"),
        ({"device": "foo"}, ValueError, "device='foo' is not a torch device"),
        pytest.param(
            {"device": "cuda"},
            ValueError,
            "device='cuda': CUDA is not available here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available"),
        ),
        ({"image": "abc"}, TypeError, "image must be an array of numbers, got str"),
        ({"image": np.zeros((0, 5))}, ValueError, r"gray picture of shape \(H, W\)"),
        ({"preset_or_kernel": "spin"}, ValueError, "unknown preset 'spin'"),
        ({"steps": 2**62, "every": 1}, ValueError, "more than max_frames=1000"),
    ],
)
def test_flow_frames_checks_before_computing(monkeypatch, kwargs, error, match) -> None:
    def refuse(self):  # noqa: ANN001, ANN202
        raise AssertionError("computed before checking the arguments")

    monkeypatch.setattr(flow_mod.FlowPlan, "run", refuse)
    args = {"image": np.zeros((8, 8)), "preset_or_kernel": "blur", "steps": 3, "every": 1}
    with pytest.raises(error, match=match):
        flow_frames(**{**args, **kwargs})


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[[1, 0], [0, 1]]", "kernel size 2 x 2 is even"),
        ("[[1, 0, 0], [0, 1], [0, 0, 1]]", "row 1 has 2 entries, expected 3"),
        ('[[1, 0, 0], [0, "a", 0], [0, 0, 1]]', r"entry \[1\]\[1\] = 'a' is not a number"),
        ("[[1, 0, 0], [0, NaN, 0], [0, 0, 1]]", r"entry \[1\]\[1\] = nan is not finite"),
        ("[[1, 0, 0], [0, Infinity, 0], [0, 0, 1]]", "is not finite"),
        ("[[1, 0, 0], [0, true, 0], [0, 0, 1]]", "is not a number"),
        ("[1, 2, 3]", "row 0 is 1, not a list of numbers"),
        ("[]", "a kernel must be a non-empty list of rows"),
        ('{"kernel": 1}', "a kernel must be a non-empty list of rows"),
        ("[[1, 0, 0], [0, 1, 0", "is not valid JSON"),
    ],
)
def test_malformed_kernel_files(tmp_path, content: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        load_kernel(path)
    assert "bad.json" in str(info.value)  # the message names the file


def test_missing_kernel_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="kernel file .*nope.json.* does not exist"):
        load_kernel(tmp_path / "nope.json")


def test_validate_kernel_accepts_arrays_and_tensors() -> None:
    np.testing.assert_array_equal(validate_kernel(torch.eye(3)), np.eye(3))
    np.testing.assert_array_equal(validate_kernel(np.ones((1, 1))), np.ones((1, 1)))
    with pytest.raises(ValueError, match="even"):
        validate_kernel(np.ones((4, 4)))


# -- drawing ----------------------------------------------------------------------------


def _expected_panel(frame: np.ndarray, zoom: int) -> np.ndarray:
    pix = np.round(np.clip(frame, 0, 1) * 255).astype(np.uint8)
    return pix.repeat(zoom, axis=0).repeat(zoom, axis=1)


def test_strip_png_has_one_panel_per_frame(tmp_path) -> None:
    x = images.default_image(40)
    steps = frame_steps(10, 4)
    frames = flow_frames(x, "rotate", 10, 4)
    out = tmp_path / "strip.png"
    layout = save_strip(frames, steps, out, title="rotate")
    assert layout == strip_layout(len(steps), (40, 40), title=True)
    assert layout.n_panels == 4 and layout.zoom == 4  # 40 px panels are enlarged to 160
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == (4 * 160 + 5 * layout.margin, layout.height)
        pixels = np.asarray(im.convert("L"))
    for k, frame in enumerate(frames):
        left, top, right, bottom = layout.panel_box(k)
        np.testing.assert_array_equal(pixels[top:bottom, left:right], _expected_panel(frame, 4))
    # Margins between panels are blank.
    _, top, right, bottom = layout.panel_box(0)
    assert (pixels[top:bottom, right : right + layout.margin] == 255).all()


def test_strip_normalize_stretches_each_frame(tmp_path) -> None:
    frames = np.stack([np.linspace(-1, 3, 64).reshape(8, 8)] * 2)
    layout = save_strip(frames, [0, 1], tmp_path / "n.png", zoom=1, normalize=True)
    with Image.open(tmp_path / "n.png") as im:
        pixels = np.asarray(im)
    left, top, right, bottom = layout.panel_box(1)
    panel = pixels[top:bottom, left:right]
    assert panel.min() == 0 and panel.max() == 255


def test_gif_has_one_frame_per_kept_step(tmp_path) -> None:
    x = images.default_image(32)
    steps = frame_steps(9, 2)
    frames = flow_frames(x, "blur", 9, 2)
    out = tmp_path / "a.gif"
    assert save_gif(frames, steps, out) == len(steps) == 6
    with Image.open(out) as im:
        assert im.n_frames == 6
        layout = strip_layout(1, (32, 32), title=False)
        im.seek(5)
        last = np.asarray(im.convert("L"))[layout.label_height :]
    np.testing.assert_array_equal(last, _expected_panel(frames[5], layout.zoom))


@pytest.mark.parametrize(("n", "columns"), [(1, 1), (7, 7), (10, 10), (11, 6), (21, 7), (100, 10)])
def test_default_columns(n: int, columns: int) -> None:
    assert flow_mod.default_columns(n) == columns


@given(n=st.integers(1, 500))
def test_default_columns_fill_rows_evenly(n: int) -> None:
    columns = flow_mod.default_columns(n)
    rows = -(-n // columns)
    assert columns <= 10 and rows == -(-n // 10)  # the fewest rows of at most 10
    assert (rows - 1) * columns < n <= rows * columns  # no empty row
    assert rows * columns - n < rows  # the last row is at most one panel per row short


def test_strip_wraps_into_rows(tmp_path) -> None:
    rng = np.random.default_rng(5)
    frames = rng.random((11, 6, 9))
    out = tmp_path / "rows.png"
    layout = save_strip(frames, list(range(11)), out, title="t", zoom=2)
    assert (layout.columns, layout.rows) == (6, 2)
    with Image.open(out) as im:
        assert im.size == (layout.width, layout.height)
        assert layout.width == 6 * 18 + 7 * layout.margin
        assert layout.height == 22 + layout.margin + 2 * (20 + 12 + layout.margin)
        pixels = np.asarray(im)
    for k, frame in enumerate(frames):
        left, top, right, bottom = layout.panel_box(k)
        assert (left, top) == (
            layout.margin + (k % 6) * (18 + layout.margin),
            layout.margin + 22 + (k // 6) * (20 + 12 + layout.margin) + 20,
        )
        np.testing.assert_array_equal(pixels[top:bottom, left:right], _expected_panel(frame, 2))
    # the unused sixth slot of the second row is blank
    left, top, right, bottom = layout.panel_box(11)
    assert (pixels[top:bottom, left:right] == 255).all()
    # asking for more columns than frames gives one row of them all
    assert strip_layout(3, (6, 9), columns=8).width == strip_layout(3, (6, 9)).width
    with pytest.raises(ValueError, match="columns=0 is not allowed"):
        strip_layout(3, (6, 9), columns=0)


def test_drawing_writes_the_format_of_the_extension(tmp_path) -> None:
    frames = np.zeros((2, 8, 8))
    for ext, fmt in flow_mod.STRIP_FORMATS.items():
        if fmt == "WEBP" and not PIL.features.check("webp"):
            continue
        save_strip(frames, [0, 1], tmp_path / f"s{ext}")
        with Image.open(tmp_path / f"s{ext}") as im:
            assert im.format == fmt
    with pytest.raises(ValueError, match=r"'.*s\.svg' has extension '\.svg'; .* \.png, \.jpg"):
        save_strip(frames, [0, 1], tmp_path / "s.svg")
    with pytest.raises(ValueError, match=r"'.*a\.png' has extension '\.png'; .* use one of \.gif$"):
        save_gif(frames, [0, 1], tmp_path / "a.png")
    assert sorted(p.suffix for p in tmp_path.iterdir()) == sorted(
        e for e, f in flow_mod.STRIP_FORMATS.items() if f != "WEBP" or PIL.features.check("webp")
    )


def test_check_output_path(tmp_path, monkeypatch) -> None:
    check = flow_mod.check_output_path
    assert check(tmp_path / "a.PNG") == "PNG" and check(tmp_path / "a.gif", animation=True) == "GIF"
    (tmp_path / "f").write_text("x")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        check(tmp_path / "no" / "a.png")
    assert info.value.filename == str(tmp_path / "no" / "a.png")
    assert info.value.strerror == f"the directory {tmp_path / 'no'} does not exist"
    with pytest.raises(NotADirectoryError):
        check(tmp_path / "f" / "a.png")
    with pytest.raises(IsADirectoryError):
        check(tmp_path / "d.png")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match="is not writable"):
        check(tmp_path / "a.png")


def test_drawing_rejects_mismatched_labels(tmp_path) -> None:
    with pytest.raises(ValueError, match="got 2 frames but 3 step labels"):
        save_strip(np.zeros((2, 4, 4)), [0, 1, 2], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"frames must have shape \(F, H, W\)"):
        save_gif(np.zeros((4, 4)), [0], tmp_path / "x.gif")


# -- pictures -------------------------------------------------------------------------------


def test_default_image_is_deterministic_and_asymmetric() -> None:
    a, b = images.default_image(64), images.default_image(64)
    assert a.shape == (64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert 0 <= a.min() and a.max() <= 1 and a.std() > 0.15
    for transformed in (a[:, ::-1], a[::-1], np.rot90(a), a.T):
        assert np.abs(transformed - a).mean() > 0.1  # flips and turns are visible
    assert images.default_image(48, height=32).shape == (32, 48)


def test_default_image_is_resolution_independent() -> None:
    big = images.default_image(128)
    small = images.default_image(64)
    down = big.reshape(64, 2, 64, 2).mean(axis=(1, 3))
    assert np.abs(down - small).mean() < 0.03


def test_picture_sizes_are_bounded() -> None:
    """Sizes beyond MAX_SIZE are refused by name (was: a numpy allocation traceback)."""
    with pytest.raises(ValueError, match="size=100000 is not allowed; it must be an int from 8 to"):
        images.default_image(100_000)
    with pytest.raises(ValueError, match="height=100000 is not allowed"):
        images.default_image(64, height=100_000)
    with pytest.raises(ValueError, match="size=100000 is not allowed"):
        images.resize_image(np.zeros((4, 4)), 100_000)
    with pytest.raises(TypeError, match="size=.* must be an int from 8 to .*, got float"):
        images.default_image(64.0)
    assert images.default_image(images.MIN_SIZE).shape == (8, 8)


def test_default_image_bands_do_not_change_it(monkeypatch) -> None:
    """The scene is drawn in bands of rows to bound memory; the band height is invisible."""
    whole = images.default_image(40, height=36)
    monkeypatch.setattr(images, "_BAND_ROWS", 7)
    np.testing.assert_array_equal(images.default_image(40, height=36), whole)


def test_load_image_converts_to_gray(tmp_path) -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    gray = images.load_image(tmp_path / "c.png")
    expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    assert gray.shape == (10, 14)
    np.testing.assert_array_equal(gray, expected)
    # Transparent pixels are composited over white.
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "t.png")
    np.testing.assert_array_equal(images.load_image(tmp_path / "t.png"), np.ones((4, 4)))
    # 16-bit gray keeps its full range.
    Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16)).save(tmp_path / "d.png")
    np.testing.assert_allclose(images.load_image(tmp_path / "d.png"), 1.0)


def test_unreadable_images(tmp_path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(ValueError, match="cannot read image .*notes.png"):
        images.load_image(bad)
    with pytest.raises(FileNotFoundError, match="image .*missing.png.* does not exist"):
        images.load_image(tmp_path / "missing.png")


def test_resize_image_keeps_aspect() -> None:
    x = np.random.default_rng(3).random((30, 60)).astype(np.float32)
    assert images.resize_image(x, 20).shape == (10, 20)
    assert images.resize_image(x, 120).shape == (60, 120)
    np.testing.assert_allclose(images.resize_image(np.full((30, 60), 0.5), 20), 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="size=4 is not allowed"):
        images.resize_image(x, 4)


def test_mnist_digit(monkeypatch, tmp_path) -> None:
    try:
        digit = images.mnist_digit(0)
    except FileNotFoundError:
        pytest.skip("bundled MNIST data not present")
    assert digit.shape == (28, 28) and digit.dtype == np.float32
    assert 0 <= digit.min() and digit.max() <= 1 and digit.max() > 0.5
    with pytest.raises(ValueError, match="digit index 10000000 is out of range"):
        images.mnist_digit(10_000_000)
    with pytest.raises(TypeError, match="digit index must be an int"):
        images.mnist_digit(1.5)
    monkeypatch.setattr(images, "_mnist_path", lambda: tmp_path / "none.npz")
    with pytest.raises(FileNotFoundError, match="bundled MNIST data .*none.npz.* is missing"):
        images.mnist_digit(0)


def test_mnist_digit_reads_both_layouts(monkeypatch, tmp_path) -> None:
    digits = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28)
    np.savez(tmp_path / "one.npz", images=digits, labels=np.arange(5))
    np.savez(tmp_path / "two.npz", train_images=digits[:3], test_images=digits[3:])
    for name in ("one.npz", "two.npz"):
        monkeypatch.setattr(images, "_mnist_path", lambda name=name: tmp_path / name)
        np.testing.assert_array_equal(images.mnist_digit(4), digits[4] / np.float32(255))


# -- command line ---------------------------------------------------------------------------


def test_cli_writes_png_and_gif(tmp_path, capsys) -> None:
    out = tmp_path / "rot.png"
    argv = ["flow", "--preset", "rotate", "--size", "24", "--steps", "12", "--every", "5"]
    assert run_cli([*argv, "--out", str(out), "--gif"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "rot.gif (4 frames)" in printed
    layout = strip_layout(4, (24, 24))
    with Image.open(out) as im:
        assert im.size == (layout.width, layout.height)
    with Image.open(tmp_path / "rot.gif") as im:
        assert im.n_frames == 4  # steps 0, 5, 10, 12


def test_cli_image_kernel_and_padding(tmp_path) -> None:
    Image.fromarray(np.full((20, 30), 200, dtype=np.uint8)).save(tmp_path / "in.png")
    (tmp_path / "k.json").write_text("[[0, 0, 0], [0, 0, 1], [0, 0, 0]]")
    out = tmp_path / "k.png"
    argv = ["flow", "--kernel", str(tmp_path / "k.json"), "--image", str(tmp_path / "in.png")]
    argv += ["--size", "30", "--steps", "3", "--every", "3", "--padding", "zeros"]
    assert run_cli([*argv, "--out", str(out)]) == 0
    layout = strip_layout(2, (20, 30))
    with Image.open(out) as im:
        pixels = np.asarray(im)
    left, top, right, bottom = layout.panel_box(1)
    panel = pixels[top : bottom : layout.zoom, left : right : layout.zoom]
    # Zero padding: three black columns entered from the right after three shifts left.
    assert (panel[:, -3:] == 0).all() and (panel[:, :-3] == 200).all()


def test_cli_digit(tmp_path) -> None:
    try:
        images.mnist_digit(3)
    except FileNotFoundError:
        pytest.skip("bundled MNIST data not present")
    out = tmp_path / "d.png"
    assert run_cli(["flow", "--preset", "scale", "--digit", "3", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == (strip_layout(7, (28, 28)).width, strip_layout(7, (28, 28)).height)


def test_cli_list_presets(capsys) -> None:
    assert run_cli(["flow", "--list-presets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in PRESETS)
    from symconv.viz.limits import PRESET_HELP  # torch-free, so --help imports no torch

    assert list(PRESET_HELP) == list(PRESETS)


def _bad_inputs(tmp: Path) -> None:
    (tmp / "bad.png").write_text("text")
    (tmp / "even.json").write_text("[[1, 0], [0, 1]]")
    (tmp / "nan.json").write_text("[[0, 0, 0], [0, NaN, 0], [0, 0, 0]]")
    Image.fromarray(np.zeros((10, 600), dtype=np.uint8)).save(tmp / "wide.png")
    Image.fromarray(np.zeros((1, 100), dtype=np.uint8)).save(tmp / "line.png")


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--preset", "spin"], "unknown preset 'spin'"),
        (["--steps", "5"], "give --preset NAME or --kernel FILE"),
        (["--preset", "blur", "--steps", "-1"], "--steps -1 is not allowed"),
        (["--preset", "blur", "--every", "0"], "--every 0 is not allowed"),
        (["--preset", "blur", "--image", "{tmp}/bad.png"], "cannot read image"),
        (["--kernel", "{tmp}/even.json"], "kernel size 2 x 2 is even"),
        (["--kernel", "{tmp}/nan.json"], "nan.json': entry [1][1] = nan is not finite"),
        (["--kernel", "{tmp}/even.json", "--eps", "0.1"], "--eps applies to presets only"),
        (["--preset", "blur", "--size", "3"], "--size 3 is not allowed"),
        (["--preset", "blur", "--device", "foo"], "--device 'foo' is not a torch device"),
        # the option at fault is named (was: a non-finite kernel entry / a numpy traceback)
        (["--preset", "translate-x", "--eps", "1e308"], "--eps 1e+308 is not allowed"),
        (["--preset", "blur", "--size", "100000"], "--size 100000 is not allowed; give 8 to"),
        # frames are bounded before anything is computed (was: >12 GB, killed)
        (
            ["--preset", "blur", "--steps", "20000", "--every", "1"],
            "20000 steps with a frame every 1 give 20001 frames, more than --max-frames 100; "
            "give --every 203 or more, or raise --max-frames",
        ),
        (
            ["--preset", "blur", "--steps", "5", "--max-frames", "1"],
            "more than --max-frames 1; raise --max-frames",
        ),
        (["--preset", "blur", "--max-frames", "0"], "--max-frames 0 is not allowed"),
        (["--preset", "blur", "--columns", "0"], "--columns 0 is not allowed"),
        (
            ["--preset", "rotate", "--image", "{tmp}/wide.png", "--size", "600"],
            "the default eps on a 600 px wide picture moves the picture too little for a "
            "default run of rotate (over 20000 steps); give --steps and --every",
        ),
        (["--preset", "rotate", "--eps", "0"], "--eps 0 moves the picture too little"),
        (
            ["--kernel", "{tmp}/even.json", "--image", "{tmp}/line.png", "--padding", "reflect"],
            "kernel size 2 x 2 is even",
        ),
        (
            ["--preset", "blur", "--image", "{tmp}/line.png", "--padding", "reflect"],
            "reflect padding needs a picture larger than 1 pixels on each side, got 1 x 128",
        ),
        (["--preset", "blur", "--image", "{tmp}/bad.png", "--digit", "1"], None),
    ],
)
def test_cli_bad_arguments(tmp_path, capsys, argv: list[str], match: str | None) -> None:
    _bad_inputs(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if match is None:  # argparse itself refuses (mutually exclusive options)
        with pytest.raises(SystemExit) as info:
            run_cli(["flow", *argv])
        assert info.value.code == 2
        assert "not allowed with argument" in capsys.readouterr().err
        return
    assert run_cli(["flow", *argv, "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("symconv flow: error:") and match in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--preset", "blur", "--image", "{tmp}/missing.png"], "missing.png' does not exist"),
        (["--kernel", "{tmp}/missing.json"], "missing.json' does not exist"),
    ],
)
def test_cli_missing_inputs_are_usage_errors(tmp_path, capsys, argv, match) -> None:
    """A named input that does not exist is the user's mistake, as in `symconv filters`:
    one line naming it, exit code 2."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert run_cli(["flow", *argv, "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("symconv flow: error:") and match in err
    assert len(err.splitlines()) == 1


@pytest.fixture
def no_computing(monkeypatch):
    """Make picture drawing and the flow fail loudly: the command must stop before them."""

    def refuse(*args, **kwargs):
        raise AssertionError("computed before checking the options")

    monkeypatch.setattr(images, "default_image", refuse)
    monkeypatch.setattr(flow_mod.FlowPlan, "run", refuse)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--out", "{tmp}/nodir/o.png"], "--out: {tmp}/nodir/o.png: the directory {tmp}/nodir "),
        (["--out", "{tmp}/file.txt/o.png"], "--out: {tmp}/file.txt/o.png: {tmp}/file.txt is not"),
        (["--out", "{tmp}/adir.png"], "--out: {tmp}/adir.png: is a directory"),
        (["--out", "{tmp}/o.txt"], "--out: '{tmp}/o.txt' has extension '.txt'; the format is"),
        (["--out", "{tmp}/o"], "--out: '{tmp}/o' has no extension"),
        (["--out", "{tmp}/o.png", "--gif", "{tmp}/o.png"], "--gif: '{tmp}/o.png' has extension"),
        (["--out", "{tmp}/o.png", "--gif", "{tmp}/nodir/o.gif"], "--gif: {tmp}/nodir/o.gif:"),
        (["--out", "{tmp}/o.gif", "--gif"], "--gif {tmp}/o.gif would overwrite --out"),
    ],
)
def test_cli_checks_outputs_before_computing(
    tmp_path, capsys, no_computing, extra: list[str], match: str
) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "adir.png").mkdir()
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert run_cli(["flow", "--preset", "blur", "--size", "16", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("symconv flow: error:")
    assert match.replace("{tmp}", str(tmp_path)) in err
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.png", "file.txt"]


def test_cli_checks_frame_memory_before_computing(tmp_path, capsys, no_computing) -> None:
    Image.fromarray(np.zeros((1024, 1024), dtype=np.uint8)).save(tmp_path / "big.png")
    argv = ["flow", "--preset", "blur", "--image", str(tmp_path / "big.png"), "--size", "1024"]
    argv += ["--steps", "400", "--every", "1", "--max-frames", "1000"]
    assert run_cli([*argv, "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    # 401 frames * 1024 * 1024 px * 8 bytes
    assert "401 frames of 1024x1024 px take 3.1 GiB, over the 2 GiB limit" in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(("ext", "fmt"), [("jpg", "JPEG"), ("bmp", "BMP"), ("tif", "TIFF")])
def test_cli_format_follows_extension(tmp_path, ext: str, fmt: str) -> None:
    out = tmp_path / f"o.{ext}"
    assert (
        run_cli(["flow", "--preset", "blur", "--size", "8", "--steps", "2", "--out", str(out)]) == 0
    )
    with Image.open(out) as im:
        assert im.format == fmt  # was: PNG bytes under any name
        assert im.size == (strip_layout(3, (8, 8)).width, strip_layout(3, (8, 8)).height)


def test_cli_wraps_frames_into_rows(tmp_path, capsys) -> None:
    out = tmp_path / "rows.png"
    argv = ["flow", "--preset", "translate-x", "--size", "8", "--every", "1"]
    assert run_cli([*argv, "--steps", "6", "--columns", "3", "--out", str(out)]) == 0
    assert "7 frames in 3 rows" in capsys.readouterr().out
    layout = strip_layout(7, (8, 8), columns=3)
    with Image.open(out) as im:
        assert im.size == (layout.width, layout.height)
    # 21 frames by default: 3 rows of 7 (at most 10 a row).
    assert run_cli([*argv, "--steps", "20", "--out", str(out)]) == 0
    assert "21 frames in 3 rows" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size == (strip_layout(21, (8, 8), columns=7).width, layout.height)


def test_cli_limits_mirror_the_library() -> None:
    """viz.cli takes the library's limits from the torch-free viz.limits: they agree."""
    from symconv.viz import cli as viz_cli

    assert (viz_cli.MIN_SIZE, viz_cli.MAX_SIZE) == (images.MIN_SIZE, images.MAX_SIZE)
    assert viz_cli.MAX_ABS_EPS == flow_mod.MAX_ABS_EPS
    assert set(viz_cli.STRIP_FORMATS) == set(flow_mod.STRIP_FORMATS)


def test_symconv_main_runs_flow(tmp_path) -> None:
    pytest.importorskip("symconv.compare.cli")
    from symconv.cli import main

    out = tmp_path / "b.png"
    assert main(["flow", "--preset", "blur", "--size", "16", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["flow", "--preset", "nope"]) == 2


def test_flow_module_imports_no_plotting_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys, symconv.viz, symconv.viz.cli;"
        "bad = [m for m in ('PIL', 'matplotlib') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.requires_cuda
def test_flow_on_cuda_matches_cpu() -> None:
    x = images.default_image(32)
    cpu = flow_frames(x, "rotate", 20, 10)
    gpu = flow_frames(x, "rotate", 20, 10, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-9, atol=1e-9)


def test_module_constants() -> None:
    assert flow_mod.PADDING_MODES == ("zeros", "reflect", "replicate")
    assert set(PRESETS) >= {"blur", "translate-x", "translate-y", "translate-diag", "rotate"}


def test_viz_exports_load_on_first_use() -> None:
    import symconv.viz as viz

    assert sorted(viz.__all__) == sorted(n for names in viz._EXPORTS.values() for n in names)
    assert viz.flow_frames is flow_frames and viz.default_image is images.default_image
    assert all(callable(getattr(viz, name)) or name == "PRESETS" for name in viz.__all__)


def test_a_kernel_file_that_fails_to_read_is_named(tmp_path, monkeypatch, capsys) -> None:
    """A read error (EIO) carries no file name; the one-line message must still name it."""
    import errno
    import json

    path = tmp_path / "k.json"
    path.write_text("[[0, 0, 0], [0, 1, 0], [0, 0, 0]]")

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(json, "load", fail)
    assert run_cli(["flow", "--kernel", str(path), "--out", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"symconv flow: error: {path}: cannot read kernel file (Input/output error)"
