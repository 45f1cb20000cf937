"""Building blocks of ``symconv compare``: transforms, pooling, variants, invariance, data."""

from __future__ import annotations

import gzip
import math
import pickle
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from symconv.compare.data import load_data, stratified_subset
from symconv.compare.models import HalvingPool2d, ResNet, SmallCNN, build_model
from symconv.compare.transforms import TRANSFORMS, affine, hflip, parse_transforms, rot90, vflip
from symconv.compare.variants import OrbitConv2d, build_variant, count_parameters, parse_variants

# These tests check numbers, not speed (see the one_thread fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# -- transforms --------------------------------------------------------------------------


def _naive_rot90(x: np.ndarray) -> np.ndarray:
    """Counter-clockwise quarter turn, straight from out[i, j] = in[j, W - 1 - i]."""
    h, w = x.shape[-2:]
    out = np.empty(x.shape[:-2] + (w, h), dtype=x.dtype)
    for i in range(w):
        for j in range(h):
            out[..., i, j] = x[..., j, w - 1 - i]
    return out


@given(
    n=st.integers(0, 2),
    c=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
)
def test_flips_and_rot90_are_exact(n: int, c: int, h: int, w: int) -> None:
    x = torch.rand(n, c, h, w)
    ref = x.numpy()
    assert torch.equal(hflip(x), torch.from_numpy(ref[..., ::-1].copy()))
    assert torch.equal(vflip(x), torch.from_numpy(ref[..., ::-1, :].copy()))
    assert torch.equal(rot90(x), torch.from_numpy(_naive_rot90(ref)))
    assert torch.equal(rot90(rot90(rot90(rot90(x)))), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (1, 3, 9, 9), (2, 2, 6, 10)])
def test_affine_identity(dtype: torch.dtype, shape: tuple[int, ...], device: str) -> None:
    x = torch.rand(shape, dtype=dtype, device=device)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(affine(x, 0.0, 1.0), x, atol=tol, rtol=0)
    torch.testing.assert_close(TRANSFORMS["clean"](x), x, atol=0, rtol=0)


@given(side=st.integers(2, 12), c=st.integers(1, 2))
def test_affine_quarter_turns_match_rot90(side: int, c: int) -> None:
    x = torch.rand(2, c, side, side, dtype=torch.float64)
    torch.testing.assert_close(affine(x, 90.0), rot90(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(affine(x, -90.0), rot90(x, -1), atol=1e-12, rtol=0)
    torch.testing.assert_close(affine(x, 180.0), rot90(x, 2), atol=1e-12, rtol=0)


def test_affine_rotation_is_a_true_rotation_on_non_square_images() -> None:
    # A pixel 5.5 px right of the center of a 20x40 image goes 5.5 px above it.
    x = torch.zeros(1, 1, 20, 40, dtype=torch.float64)
    x[0, 0, 10, 25] = 1.0
    y = affine(x, 90.0)
    assert torch.nonzero(y > 0.5).tolist() == [[0, 0, 4, 20]]
    torch.testing.assert_close(affine(x, 180.0), x.flip(-1).flip(-2), atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", [0.8, 1.2])
def test_affine_scale_scales_a_blob(scale: float) -> None:
    # A centered Gaussian of std s becomes (up to resampling) one of std s * scale.
    side, s = 41, 4.0
    r = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
    blob = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * s**2))[None, None]
    out = affine(blob, scale=scale)[0, 0]
    var = (out * r[None, :] ** 2).sum() / out.sum()
    assert abs(var.sqrt().item() / s - scale) < 0.03
    assert TRANSFORMS[f"scale{scale}"].fn(blob).shape == blob.shape


@pytest.mark.parametrize("name,degrees", [("rot+15", 15.0), ("rot-15", -15.0)])
def test_small_rotations_move_a_blob_about_the_center(name: str, degrees: float) -> None:
    side = 33
    r = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
    x0, y0 = -5.0, 3.0  # (right, down) from the center
    blob = torch.exp(-((r[:, None] - y0) ** 2 + (r[None, :] - x0) ** 2) / 8)[None, None]
    out = TRANSFORMS[name](blob)[0, 0]
    cx = (out * r[None, :]).sum() / out.sum()
    cy = (out * r[:, None]).sum() / out.sum()
    # counter-clockwise on screen, with y pointing down
    t = np.radians(degrees)
    ex, ey = x0 * np.cos(t) + y0 * np.sin(t), -x0 * np.sin(t) + y0 * np.cos(t)
    assert abs(cx.item() - ex) < 0.02 and abs(cy.item() - ey) < 0.02
    # and the opposite rotation brings it back (mass and center, up to resampling blur)
    back = TRANSFORMS["rot-15" if degrees > 0 else "rot+15"](out[None, None])[0, 0]
    assert abs((back * r[None, :]).sum() / back.sum() - x0) < 0.03
    assert abs((back * r[:, None]).sum() / back.sum() - y0) < 0.03
    assert abs(back.sum() / blob.sum() - 1) < 0.01


def test_transform_arguments() -> None:
    assert parse_transforms("all") == list(TRANSFORMS)
    assert parse_transforms("hflip, rot90,hflip") == ["clean", "hflip", "rot90"]
    with pytest.raises(ValueError, match="unknown transform 'rot45'.*allowed: clean"):
        parse_transforms("hflip,rot45")
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\)"):
        affine(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="scale=0.0 must be positive"):
        affine(torch.zeros(1, 1, 4, 4), scale=0.0)


# -- pooling and models ------------------------------------------------------------------


@given(h=st.integers(1, 11), w=st.integers(1, 11), mode=st.sampled_from(["max", "avg"]))
def test_halving_pool_commutes_with_flips(h: int, w: int, mode: str) -> None:
    pool = HalvingPool2d(mode)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    y = pool(x)
    assert y.shape == (2, 3, (h + 1) // 2, (w + 1) // 2)
    for dims in ([-1], [-2], [-2, -1]):
        torch.testing.assert_close(pool(x.flip(dims)), y.flip(dims), atol=1e-12, rtol=0)


def test_halving_pool_reference_even() -> None:
    x = torch.randn(1, 2, 6, 4)
    ref = x.reshape(1, 2, 3, 2, 2, 2).amax((3, 5))
    assert torch.equal(HalvingPool2d("max")(x), ref)
    with pytest.raises(ValueError, match="mode='min' is not allowed"):
        HalvingPool2d("min")


@pytest.mark.parametrize("name", ["cnn", "resnet"])
@pytest.mark.parametrize("batch", [0, 3])
def test_models_shapes(name: str, batch: int) -> None:
    model = build_model(name, 3, 7, size=28, width=4)
    assert model(torch.randn(batch, 3, 28, 28)).shape == (batch, 7)


def test_model_arguments() -> None:
    with pytest.raises(ValueError, match="model='vgg' is not allowed"):
        build_model("vgg", 1, 10)
    with pytest.raises(ValueError, match="width=0 is not allowed; it must be an int >= 1"):
        SmallCNN(1, 10, width=0)
    with pytest.raises(ValueError, match="num_classes=1 is not allowed; it must be an int >= 2"):
        SmallCNN(1, 1)
    with pytest.raises(ValueError, match="layers=.* positive integers"):
        ResNet(1, 10, layers=(2, 0))
    assert isinstance(build_model("resnet", 1, 10, size=64, width=4).stem[-1], HalvingPool2d)


# -- variants and exact invariance -------------------------------------------------------


def test_parse_variants() -> None:
    assert parse_variants("plain, sym-inv") == ["plain", "sym-inv"]
    with pytest.raises(ValueError, match="unknown variant 'sym2'.*allowed: plain, sym"):
        parse_variants("plain,sym2")
    with pytest.raises(ValueError, match="repeats a variant"):
        parse_variants("plain,plain")
    with pytest.raises(ValueError, match="names no variant"):
        parse_variants(" , ")


def _randomize_norms(model: nn.Module) -> None:
    # Non-trivial batch-norm statistics and affine terms, so eval mode is a real test.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


_FLIPS = {"h": [-1], "v": [-2], "hv": [-2, -1]}


@pytest.mark.parametrize(
    "model,size", [("cnn", 28), ("cnn", 27), ("resnet", 28), ("resnet", 30), ("resnet", 64)]
)
def test_sym_inv_is_exactly_flip_invariant(model: str, size: int) -> None:
    torch.manual_seed(0)
    net = build_variant("sym-inv", model, 2, 5, size=size, width=2, invariant_key="hv").model
    _randomize_norms(net)
    net = net.double().eval()
    x = torch.randn(3, 2, size, size, dtype=torch.float64)
    with torch.no_grad():
        logits = net(x)
        for dims in _FLIPS.values():
            torch.testing.assert_close(net(x.flip(dims)), logits, atol=1e-10, rtol=1e-10)
        # hv invariance is invariance under the half turn
        torch.testing.assert_close(net(torch.rot90(x, 2, (-2, -1))), logits, atol=1e-10, rtol=0)
        # ...but not under a quarter turn (the test can fail)
        assert (net(torch.rot90(x, 1, (-2, -1))) - logits).abs().max() > 1e-4


def test_sym_inv_h_only_and_plain_are_not_invariant() -> None:
    torch.manual_seed(0)
    net = build_variant("sym-inv", "cnn", 1, 4, width=4, invariant_key="h").model.double().eval()
    plain = build_variant("plain", "cnn", 1, 4, width=4).model.double().eval()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x.flip(-1)), net(x), atol=1e-10, rtol=1e-10)
        assert (net(x.flip(-2)) - net(x)).abs().max() > 1e-4
        assert (plain(x.flip(-1)) - plain(x)).abs().max() > 1e-4


@pytest.mark.parametrize("key", ["h", "v", "hv"])
def test_orbit_conv_maps_flipped_images_to_flipped_images(key: str) -> None:
    torch.manual_seed(0)
    layer = OrbitConv2d(3, 5, 3, key).double()
    assert layer.conv.out_channels == 5 * 2 ** len(key)
    # same parameters as the plain convolution it replaces
    assert count_parameters(layer) == 5 * 3 * 3 * 3
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64)
    for letter, dims in _FLIPS.items():
        if set(letter) <= set(key):
            torch.testing.assert_close(layer(x.flip(dims)), layer(x).flip(dims), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="kernel_size=2 must be odd"):
        OrbitConv2d(3, 5, 2, key)
    with pytest.raises(ValueError, match="key='z' is not allowed"):
        OrbitConv2d(3, 5, 3, "z")


def test_sym_inv_gradcheck() -> None:
    torch.manual_seed(0)
    net = build_variant("sym-inv", "cnn", 1, 3, size=6, width=1).model.double().eval()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,))


def test_variants_share_the_base_initialization() -> None:
    pytest.importorskip("symconv.conversion")
    torch.manual_seed(3)
    plain = build_variant("plain", "cnn", 1, 10, width=8).model
    torch.manual_seed(3)
    twist = build_variant("twist", "cnn", 1, 10, width=8).model.eval()
    torch.manual_seed(3)
    sym = build_variant("sym", "cnn", 1, 10, width=8, symmetry="hv:50%").model
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        # twist terms start at zero: the converted net computes the plain one
        torch.testing.assert_close(twist(x), plain.eval()(x), atol=1e-5, rtol=1e-5)
    assert count_parameters(sym) < count_parameters(plain) < count_parameters(twist)
    # exactly: each converted k x k conv keeps only the free filters of its hv:50% plan
    from symconv.symmetry import make_plan

    shared = 0
    for conv in (m for m in plain.modules() if isinstance(m, nn.Conv2d)):
        if conv.kernel_size != (1, 1):
            n_free = make_plan("hv:50%", conv.out_channels, 2).n_free
            shared += (conv.out_channels - n_free) * conv.weight[0].numel()
    assert shared > 0 and count_parameters(sym) == count_parameters(plain) - shared


# -- data --------------------------------------------------------------------------------


def test_bundled_mnist() -> None:
    d = load_data("mnist")
    assert d.train_images.shape == (4000, 1, 28, 28) and d.test_images.shape == (1000, 1, 28, 28)
    assert d.train_images.dtype == torch.uint8
    assert torch.bincount(d.train_labels).tolist() == [400] * 10
    assert torch.bincount(d.test_labels).tolist() == [100] * 10
    assert d.train_images.max() == 255 and d.train_images.float().mean() > 20
    # the two splits are disjoint images
    train = {bytes(x) for x in d.train_images.numpy()}
    assert not any(bytes(x) in train for x in d.test_images.numpy())


def test_limit_is_stratified_and_deterministic() -> None:
    d = load_data("mnist", limit=250)
    assert len(d.train_labels) == len(d.test_labels) == 250
    assert torch.bincount(d.train_labels).tolist() == [25] * 10
    assert torch.equal(load_data("mnist", limit=250).train_images, d.train_images)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    assert stratified_subset(labels, 3).tolist() == [0, 3, 5]


def test_builtin_resizing_and_rgb() -> None:
    d = load_data("mnist", size=16, color="rgb", limit=20)
    assert d.train_images.shape == (20, 3, 16, 16)
    assert torch.equal(d.train_images[:, 0], d.train_images[:, 2])


def test_digits() -> None:
    pytest.importorskip("sklearn")
    d = load_data("digits")
    assert d.size == (8, 8) and d.num_classes == 10
    assert len(d.train_labels) + len(d.test_labels) == 1797
    assert d.train_images.max() == 255


def test_animals() -> None:
    pytest.importorskip("animal_shape_mnist")
    d = load_data("animals")
    assert d.train_images.shape == (8000, 1, 28, 28) and d.test_images.shape == (2000, 1, 28, 28)
    assert torch.bincount(d.test_labels).tolist() == [200] * 10


def test_missing_optional_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ValueError, match="--data digits needs scikit-learn"):
        load_data("digits")
    monkeypatch.setitem(sys.modules, "animal_shape_mnist", None)
    with pytest.raises(ValueError, match="--data animals needs the animal-shape-mnist"):
        load_data("animals")


def test_pickled_data_may_hold_arrays_only(tmp_path) -> None:
    from symconv.compare.data import _read_pickled_array

    good = tmp_path / "good.gz"
    with gzip.open(good, "wb") as fh:
        pickle.dump(np.arange(6, dtype=np.uint8).reshape(2, 3), fh)
    assert _read_pickled_array(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        pickle.dump(print, fh)  # any callable would run on unpickling
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        _read_pickled_array(bad)


def _write_png(path, size=(10, 6), value=128, mode="L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_image_folder(tmp_path) -> None:
    pytest.importorskip("PIL")
    for split, n in (("train", 3), ("val", 2)):
        for c, value in (("cat", 50), ("dog", 200)):
            for i in range(n):
                _write_png(tmp_path / split / c / f"{i}.png", value=value)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    d = load_data(str(tmp_path), size=8)
    assert d.classes == ["cat", "dog"]
    assert d.train_images.shape == (6, 3, 8, 8) and d.test_images.shape == (4, 3, 8, 8)
    assert d.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.train_images[0].unique().tolist() == [50] and d.train_images[5].unique().tolist() == [
        200
    ]
    g = load_data(str(tmp_path), size=5, color="gray")
    assert g.train_images.shape == (6, 1, 5, 5)


def test_image_folder_errors(tmp_path) -> None:
    pytest.importorskip("PIL")
    with pytest.raises(FileNotFoundError, match="neither a built-in dataset"):
        load_data(str(tmp_path / "nope"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        load_data(str(tmp_path / "file.txt"))
    root = tmp_path / "ds"
    _write_png(root / "train" / "a" / "0.png")
    with pytest.raises(FileNotFoundError, match="val does not exist"):
        load_data(str(root))
    _write_png(root / "val" / "b" / "0.png")
    with pytest.raises(ValueError, match=r"only in train/: \['a'\]; only in val/: \['b'\]"):
        load_data(str(root))
    _write_png(root / "val" / "a" / "0.png")
    _write_png(root / "train" / "b" / "0.png")
    (root / "train" / "c").mkdir()
    (root / "val" / "c").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*train/c holds no images"):
        load_data(str(root))
    (root / "train" / "c" / "broken.png").write_bytes(b"not a png")
    _write_png(root / "val" / "c" / "0.png")
    with pytest.raises(ValueError, match=r"cannot read image .*train/c/broken.png"):
        load_data(str(root))


def test_data_arguments() -> None:
    with pytest.raises(ValueError, match="size=2 is not allowed; it must be an int >= 4"):
        load_data("mnist", size=2)
    with pytest.raises(ValueError, match="color='cmyk' is not allowed"):
        load_data("mnist", color="cmyk")
    with pytest.raises(ValueError, match="limit=1 is not allowed; it must be an int >= 2"):
        load_data("mnist", limit=1)
    with pytest.raises(ValueError, match="workers=-1"):
        load_data("mnist", workers=-1)


@pytest.mark.parametrize(
    "load,processes,expected", [(0.0, 1, 2), (0.9, 1, 1), (5.0, 1, 1), (0.0, 2, 1), (0.4, 1, 2)]
)
def test_auto_threads_leaves_busy_cores_alone(
    monkeypatch: pytest.MonkeyPatch, load: float, processes: int, expected: int
) -> None:
    import os

    from symconv.compare.runner import auto_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert auto_threads(processes) == expected


def test_throughput_is_the_median_after_the_first_epoch() -> None:
    from symconv.compare.train import steady_images_per_s

    history = [{"images_per_s": v} for v in (100.0, 900.0, 1000.0, 2000.0)]
    assert steady_images_per_s(history) == 1000.0  # not the warm-up epoch, not the mean
    assert steady_images_per_s(history[:1]) == 100.0
    assert math.isnan(steady_images_per_s([]))


# -- training pieces against hand computations -------------------------------------------


def test_one_cycle_factors() -> None:
    from symconv.compare.optim import one_cycle

    f = one_cycle(8)  # 2 warm-up steps, then a cosine over 6
    assert f(0) == 1 / 25 and f(1) == pytest.approx((1 / 25 + 1) / 2, abs=1e-15)
    assert f(2) == 1.0  # the peak
    assert f(5) == pytest.approx(1e-4 + (1 - 1e-4) * 0.5, abs=1e-15)  # half-way down
    assert f(8) == pytest.approx(1e-4, abs=1e-15) and f(100) == f(8)


def test_a_training_step_is_the_hand_computed_adamw_update() -> None:
    """One step of make_optimizer + the one-cycle schedule, as the loop takes it: AdamW's
    first step is ``p (1 - lr wd) - lr g / (|g| + eps)`` at the schedule's first lr, and
    1-D parameters (biases) are not decayed."""
    from symconv.compare.config import TrainSettings
    from symconv.compare.optim import make_optimizer, one_cycle

    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    s = TrainSettings(lr=0.1, weight_decay=0.5)
    optimizer = make_optimizer(model, s)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle(8))
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    loss = (model(x) * torch.tensor([[2.0, -1.0]], dtype=torch.float64)).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    # d loss / d W[i, j] = c_i x_j, d loss / d b_i = c_i
    c = torch.tensor([2.0, -1.0], dtype=torch.float64)
    gw, gb = c[:, None] * x, c
    lr, eps = 0.1 / 25, 1e-8

    def adam(g: torch.Tensor) -> torch.Tensor:
        # first step: m = 0.1 g, v = 0.001 g^2, both divided by their bias corrections
        return g / ((g * g).sqrt() + eps)

    torch.testing.assert_close(
        model.weight, w0 * (1 - lr * 0.5) - lr * adam(gw), rtol=0, atol=1e-15
    )
    torch.testing.assert_close(model.bias, b0 - lr * adam(gb), rtol=0, atol=1e-15)
    assert scheduler.get_last_lr()[0] == pytest.approx(0.1 * (1 / 25 + 1) / 2)


def test_normalizer_standardizes_with_the_training_statistics() -> None:
    from symconv.compare.train import Normalizer

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 2, 5, 4), generator=g, dtype=torch.uint8)
    norm = Normalizer(images)
    x = norm.standardize(norm.to_unit(images, torch.device("cpu")))
    ref = images.numpy().astype(np.float64) / 255
    mean = ref.mean(axis=(0, 2, 3), keepdims=True)
    std = ref.std(axis=(0, 2, 3), ddof=1, keepdims=True)
    np.testing.assert_allclose(x.numpy(), (ref - mean) / std, rtol=0, atol=1e-5)
    # a constant channel is not divided by zero
    flat = torch.full((2, 1, 3, 3), 7, dtype=torch.uint8)
    assert torch.isfinite(Normalizer(flat).standardize(torch.zeros(1, 1, 3, 3))).all()
