"""The conformance suite: every layer family of ``symconv.registry`` passes the same checks
in every framework it exists in.

Per family: the spec describes the real parameters; the torch layer equals a naive
reference (float64); torch <-> Keras parity both ways; ``state_dict`` and ``.keras`` round
trips; ``torch.compile`` (forward and gradients); ONNX through onnxruntime; DDP equals one
process; channels_last; CPU autocast. Where a GPU exists (``benchmarks/gpu_check.sh``): a
layer built on the device equals the CPU's in float64 (output, gradients, statistics), also
after ``meta`` + ``to_empty``; channels_last, bf16 autocast, bitwise-repeatable gradients
under deterministic algorithms, and inductor for the 2-D group families. A new family gets
all of this from its registry line and a reference in ``_references.py``.
"""

from __future__ import annotations

import copy
import inspect
import io

import numpy as np
import pytest
import torch
from _references import REFERENCES
from torch import nn

from _gloo import finish_gloo_worker, start_gloo_worker
from symconv.registry import FAMILIES, Family

PARAMS = [pytest.param(f, id=f.name) for f in FAMILIES]
TWINS = [pytest.param(f, id=f.name) for f in FAMILIES if f.keras is not None]


def _statistics(layer: nn.Module) -> dict[str, torch.Tensor]:
    """The kept statistics the spec lists (running means and variances), by torch name."""
    return {
        p.torch_name: getattr(layer, p.torch_name)
        for p in layer.spec.params()
        if p.present and not p.trainable
    }


def _torch_layer(family: Family, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    layer = family.torch_class.from_spec(family.example(), dtype=dtype)
    with torch.no_grad():  # nonzero everywhere, so every parameter shows in the output
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for s in _statistics(layer).values():  # and every statistic (positive variances)
            s.copy_(torch.rand_like(s) + 0.5)
    if hasattr(layer, "clear_cache"):
        layer.clear_cache()
    return layer


def _input(family: Family, dtype: torch.dtype = torch.float32, seed: int = 1) -> torch.Tensor:
    shape = family.example().example_input_shape()
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _params_np(layer: nn.Module) -> dict[str, np.ndarray]:
    return {n: p.detach().double().numpy() for n, p in layer.named_parameters()}


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# -- the registry ----------------------------------------------------------------------------
def test_every_family_has_a_reference_and_unique_classes():
    assert set(REFERENCES) == {f.name for f in FAMILIES}
    torch_classes = [f.torch for f in FAMILIES]
    assert len(torch_classes) == len(set(torch_classes))
    # A Keras class may serve several ranks (as keras.layers.BatchNormalization does).
    keras_classes = [(f.keras, f.ndim) for f in FAMILIES if f.keras]
    assert len(keras_classes) == len(set(keras_classes))


@pytest.mark.parametrize("family", PARAMS)
def test_spec_lists_exactly_the_torch_parameters(family):
    layer = _torch_layer(family)
    listed = {p.torch_name: p.torch_shape for p in layer.spec.params() if p.present}
    actual = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    actual |= {n: tuple(s.shape) for n, s in _statistics(layer).items()}
    assert listed == actual
    trainable = {p.torch_name for p in layer.spec.params() if p.present and p.trainable}
    assert trainable == {n for n, _ in layer.named_parameters()}
    assert set(_statistics(layer)) <= {n for n, _ in layer.named_buffers()}
    assert layer.spec == family.example()


# -- numerics --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", PARAMS)
def test_matches_naive_reference(family):
    layer = _torch_layer(family, torch.float64)
    x = _input(family, torch.float64)
    expected = REFERENCES[family.name](layer.spec, _params_np(layer), x.numpy())
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", PARAMS)
def test_gradcheck_float64(family):
    layer = _torch_layer(family, torch.float64)
    x = _input(family, torch.float64).requires_grad_()
    params = tuple(layer.parameters())

    def fn(x, *ps):
        names = [n for n, _ in layer.named_parameters()]
        return torch.func.functional_call(layer, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("family", PARAMS)
def test_state_dict_round_trip(family):
    layer = _torch_layer(family)
    twin = family.torch_class.from_spec(family.example())
    twin.load_state_dict(copy.deepcopy(layer.state_dict()))
    x = _input(family)
    _close(twin(x), layer(x), 0)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    _close(twin(x), layer(x), 0)


@pytest.mark.parametrize("family", PARAMS)
def test_meta_device_then_to_empty_and_load(family):
    """Deferred initialization (``device='meta'``, ``to_empty``, ``load_state_dict``), as
    large-model and FSDP code does: derived tensors must become real too."""
    layer = _torch_layer(family)
    deferred = family.torch_class.from_spec(family.example(), device="meta")
    assert all(p.is_meta for p in deferred.parameters())
    deferred.to_empty(device="cpu")
    deferred.load_state_dict(layer.state_dict())
    x = _input(family)
    _close(deferred(x), layer(x), 0)


@pytest.mark.parametrize("family", PARAMS)
def test_torch_compile_forward_and_gradients(family):
    torch._dynamo.reset()  # families share forward code: keep each under the recompile limit
    layer = _torch_layer(family)
    x = _input(family)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    _close(compiled(x), layer(x))
    params = [p for p in layer.parameters()]
    if params:
        want = torch.autograd.grad(layer(x).square().sum(), params)
        got = torch.autograd.grad(compiled(x).square().sum(), params)
        for g, w in zip(got, want, strict=True):
            _close(g, w)
    with torch.no_grad():
        _close(compiled(x), layer(x))


@pytest.mark.parametrize("family", PARAMS)
def test_onnx_matches_torch(family, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    layer = _torch_layer(family).eval()
    x = _input(family)
    path = tmp_path / f"{family.name}.onnx"
    torch.onnx.export(layer, (x,), str(path), dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, layer(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", PARAMS)
def test_channels_last_matches_contiguous(family):
    x = _input(family)
    if x.dim() not in (4, 5):
        pytest.skip("channels_last is a layout of 4-D and 5-D tensors")
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    layer = _torch_layer(family)
    want = layer(x)
    layer = layer.to(memory_format=fmt)
    got = layer(x.to(memory_format=fmt))
    _close(got, want)
    assert got.is_contiguous(memory_format=fmt)  # kept for the next layer, as nn.Conv2d does


@pytest.mark.parametrize("family", PARAMS)
def test_fx_symbolic_trace_matches_eager(family):
    """torch.fx (quantization and graph tools): shape checks are leaves of the graph."""
    layer = _torch_layer(family)
    # An optional mask is a graph input unless fixed, as for any FX-traced module.
    masked = "mask" in inspect.signature(layer.forward).parameters
    graph = torch.fx.symbolic_trace(layer, concrete_args={"mask": None} if masked else None)
    x = _input(family)
    _close(graph(x), layer(x))
    if x.dim() in (4, 5):  # the layout helpers run at call time, not at trace time
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        _close(graph(x.to(memory_format=fmt)), layer(x))


@pytest.mark.parametrize("family", PARAMS)
def test_torch_jit_script_works_or_says_what_to_use(family):
    layer = _torch_layer(family)
    try:
        scripted = torch.jit.script(layer)
    except TypeError as error:
        assert str(error).startswith(f"torch.jit.script does not support {type(layer).__name__};")
    else:
        x = _input(family)
        _close(scripted(x), layer(x))


@pytest.mark.parametrize("family", PARAMS)
@pytest.mark.parametrize(
    "bad", [[1.0, 2.0], np.zeros((2, 16, 4, 4), np.float32)], ids=["list", "ndarray"]
)
def test_a_non_tensor_input_is_a_type_error(family, bad):
    """Named by the layer (torch's own error for a convolution names conv2d())."""
    layer = _torch_layer(family)
    match = rf"^{type(layer).__name__} expects a torch\.Tensor input, got (list|ndarray)$"
    with pytest.raises(TypeError, match=match):
        layer(bad)


@pytest.mark.parametrize("family", PARAMS)
def test_cpu_autocast_bfloat16(family):
    layer = _torch_layer(family)
    x = _input(family)
    want = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    scale = want.abs().max()
    assert torch.isfinite(got).all()
    assert ((got.float() - want).abs().max() / scale) < 0.05


# -- CUDA (run by benchmarks/gpu_check.sh on a lent GPU; skipped without one) -------------------
# float64 where the result must equal the CPU's: cuDNN runs float32 convolutions in TF32 by
# default on Ampere and later, which is a precision choice, not an error of the layer.
def _forward_backward(layer: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output, the input's and every parameter's gradient, and the kept statistics,
    on the CPU, by name."""
    module = getattr(layer, "_orig_mod", layer)  # a compiled layer's names are its module's
    x = x.detach().requires_grad_()
    out = layer(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
    names = ["output", "input.grad", *(f"{n}.grad" for n, _ in module.named_parameters())]
    result = dict(zip(names, [out.detach(), *grads], strict=True))
    result |= {n: s.detach() for n, s in _statistics(module).items()}
    return {n: t.cpu() for n, t in result.items()}


def _assert_all_close(got: dict, want: dict, tol: float) -> None:
    assert list(got) == list(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=tol, atol=tol, msg=name)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("family", PARAMS)
def test_cuda_float64_equals_cpu_forward_backward_and_statistics(family):
    """Built on the device (not moved there), so every derived tensor (gather indices,
    cosets) must be made on it too."""
    layer = _torch_layer(family, torch.float64)
    x = _input(family, torch.float64)
    gpu = family.torch_class.from_spec(family.example(), device="cuda", dtype=torch.float64)
    gpu.load_state_dict(layer.state_dict())
    _assert_all_close(_forward_backward(gpu, x.cuda()), _forward_backward(layer, x), 1e-10)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("family", PARAMS)
def test_cuda_float32_matches_cpu(family):
    layer = _torch_layer(family)
    x = _input(family)
    gpu = copy.deepcopy(layer).cuda()
    _close(gpu(x.cuda()).cpu(), layer(x), 1e-2)  # TF32


@pytest.mark.requires_cuda
@pytest.mark.parametrize("family", PARAMS)
def test_cuda_meta_device_then_to_empty_and_load(family):
    layer = _torch_layer(family, torch.float64)
    deferred = family.torch_class.from_spec(family.example(), device="meta", dtype=torch.float64)
    deferred.to_empty(device="cuda")
    deferred.load_state_dict(layer.state_dict())
    x = _input(family, torch.float64)
    _close(deferred(x.cuda()).cpu(), layer(x), 1e-10)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("family", PARAMS)
def test_cuda_channels_last_matches_contiguous(family):
    x = _input(family, torch.float64).cuda()
    if x.dim() not in (4, 5):
        pytest.skip("channels_last is a layout of 4-D and 5-D tensors")
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    layer = _torch_layer(family, torch.float64).cuda()
    want = _forward_backward(layer, x)
    layer = _torch_layer(family, torch.float64).cuda().to(memory_format=fmt)
    _assert_all_close(_forward_backward(layer, x.to(memory_format=fmt)), want, 1e-10)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("family", PARAMS)
def test_cuda_autocast_bfloat16(family):
    layer = _torch_layer(family).cuda()
    x = _input(family).cuda().requires_grad_()
    want = layer(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = layer(x)
        got.float().square().sum().backward()
    assert torch.isfinite(got).all()
    assert ((got.float() - want).abs().max() / want.abs().max()) < 0.05
    grads = [x.grad, *(p.grad for p in layer.parameters())]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad.dtype == p.dtype for p in layer.parameters())  # master weights stay


@pytest.mark.requires_cuda
@pytest.mark.parametrize("family", PARAMS)
def test_cuda_deterministic_gradients_are_bitwise_repeatable(family, monkeypatch):
    """With deterministic algorithms on, the expansion's backward (an ``index_add``) and
    everything else must run (no 'does not have a deterministic implementation' error)
    and give the same bits twice."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            layer = _torch_layer(family).cuda()
            runs.append(_forward_backward(layer, _input(family).cuda()))
    finally:
        torch.use_deterministic_algorithms(before)
    _assert_all_close(runs[1], runs[0], 0)


_COMPILED_ON_CUDA = ("symmetric2d", "group_conv2d", "group_batch_norm2d", "group_pool")


@pytest.mark.slow
@pytest.mark.requires_cuda
@pytest.mark.parametrize("family", [f for f in PARAMS if f.values[0].name in _COMPILED_ON_CUDA])
def test_cuda_inductor_compile_matches_eager(family):
    """The default backend on the GPU (Triton kernels), forward and gradients: the 2-D
    gathered and group families (each compile costs seconds of a lent GPU's minutes)."""
    torch._dynamo.reset()
    layer = _torch_layer(family, torch.float64).cuda()
    x = _input(family, torch.float64).cuda()
    compiled = torch.compile(layer, fullgraph=True)
    _assert_all_close(_forward_backward(compiled, x), _forward_backward(layer, x), 1e-10)


# -- DDP: one harness for every family ---------------------------------------------------------
def _ddp_mode(layer: nn.Module) -> nn.Module:
    """Eval mode for layers with batch statistics (each process normalizes its own shard
    in training, so only their kept statistics make DDP equal one process), else train."""
    return layer.eval() if _statistics(layer) else layer


def _ddp_worker(rank: int, world: int, init_file: str, name: str, out_file: str) -> None:
    torch.set_num_threads(1)
    start_gloo_worker(rank, world, init_file)
    family = next(f for f in FAMILIES if f.name == name)
    layer = _ddp_mode(_torch_layer(family, torch.float64))
    ddp = nn.parallel.DistributedDataParallel(layer)
    x = _input(family, torch.float64)
    shard = slice(rank * (x.shape[0] // world), (rank + 1) * (x.shape[0] // world))
    ddp(x[shard]).square().mean().backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in layer.named_parameters()}, out_file)
    finish_gloo_worker()


@pytest.mark.timeout(300)
@pytest.mark.requires_gloo
@pytest.mark.parametrize("family", [f for f in PARAMS if f.values[0].example().params()])
def test_ddp_gradients_equal_one_process(family, tmp_path):
    import torch.multiprocessing as mp

    out_file = str(tmp_path / "grads.pt")
    args = (2, str(tmp_path / "init"), family.name, out_file)
    mp.spawn(_ddp_worker, args=args, nprocs=2, join=True)
    layer = _ddp_mode(_torch_layer(family, torch.float64))
    layer(_input(family, torch.float64)).square().mean().backward()  # mean of shard means
    ddp_grads = torch.load(out_file, weights_only=True)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-10, atol=1e-12)


# -- torch <-> Keras ----------------------------------------------------------------------------
def _keras_input(x: torch.Tensor, data_format: str) -> np.ndarray:
    return x.numpy() if data_format == "channels_first" else np.moveaxis(x.numpy(), 1, -1)


def _torch_output(y, data_format: str) -> np.ndarray:
    from keras import ops

    y = np.asarray(ops.convert_to_numpy(y))
    return y if data_format == "channels_first" else np.moveaxis(y, -1, 1)


def _data_formats(family: Family) -> list[str]:
    # The set layers take (batch, n, channels) only.
    return (
        ["channels_last", "channels_first"]
        if family.example().spatial_rank > 1 or (family.name.startswith("symmetric"))
        else ["channels_last"]
    )


@pytest.mark.parametrize("family", TWINS)
def test_torch_keras_parity_both_ways(family):
    pytest.importorskip("keras")
    from symconv.keras import keras_to_torch, torch_to_keras

    for data_format in _data_formats(family):
        layer = _torch_layer(family).eval()
        x = _input(family)
        twin = torch_to_keras(layer, data_format=data_format)
        assert twin.spec.pair_fields() == layer.spec.pair_fields()
        got = _torch_output(twin(_keras_input(x, data_format)), data_format)  # inference
        np.testing.assert_allclose(got, layer(x).detach().numpy(), rtol=1e-4, atol=1e-4)
        back = keras_to_torch(twin)
        assert type(back) is family.torch_class
        for (name, p), q in zip(layer.named_parameters(), back.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)
        for name, s in _statistics(layer).items():
            torch.testing.assert_close(getattr(back, name), s, rtol=0, atol=0, msg=name)
        # Training mode (batch statistics where the layer has them); it updates them.
        got = _torch_output(twin(_keras_input(x, data_format), training=True), data_format)
        want = layer.train()(x).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", TWINS)
def test_keras_file_round_trip(family, tmp_path):
    keras = pytest.importorskip("keras")
    from symconv.keras import torch_to_keras

    layer = _torch_layer(family)
    x = _keras_input(_input(family), "channels_last")
    twin = torch_to_keras(layer)
    model = keras.Sequential([keras.Input(x.shape[1:]), twin])
    path = tmp_path / f"{family.name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )
    assert loaded.layers[-1].spec == twin.spec
