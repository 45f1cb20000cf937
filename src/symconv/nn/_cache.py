"""When a layer may cache kernels derived from its parameters, and the key that says stale;
what tracers, exporters and TorchScript get from the layers.

Layers that build their convolution kernels from free parameters (symmetric expansion,
ConvTwist's odd kernels) rebuild them every training step, but when no gradient can reach
the parameters they serve a cached copy. The key holds each parameter's identity, storage
and autograd version counter, so in-place optimizer steps, ``load_state_dict``, ``.to()``
and ``torch.nn.init`` all make it stale; writes through ``param.data`` bypass the version
counter (the layers' ``clear_cache()`` covers those).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.fx import _symbolic_trace

# FX symbolic tracing only (``is_fx_tracing`` is also true under torch.export, and warns).
_fx_flag = getattr(_symbolic_trace, "is_fx_symbolic_tracing", None)


def is_fx_tracing() -> bool:
    """Whether ``torch.fx`` symbolic tracing (not torch.export) is recording."""
    if _fx_flag is not None:
        return _fx_flag()
    return _symbolic_trace._is_fx_tracing_flag and not torch.compiler.is_compiling()


def tracing() -> bool:
    """Whether a compiler, tracer or exporter is recording: traced graphs must compute derived
    tensors themselves (no caches)."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or is_fx_tracing()
        or torch.onnx.is_in_onnx_export()
    )


def caching_allowed(params: Iterable[Tensor | None]) -> bool:
    """True when no gradient can reach ``params`` and nothing is tracing the module.

    Checked before any parameter attribute is read: under FX symbolic tracing the
    parameters are proxies, whose ``requires_grad`` cannot steer Python control flow.
    """
    if tracing():
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(p is not None and p.requires_grad for p in params)


def version_key(params: Iterable[Tensor | None]) -> tuple[object, ...]:
    """Changes whenever any of ``params`` is replaced, moved or modified in place.

    Includes whether inference mode is on: a tensor made in inference mode must not be
    served to autograd later.
    """
    key: list[object] = [torch.is_inference_mode_enabled()]
    for p in params:
        if p is not None:
            key += [id(p), p.data_ptr(), p._version, p.dtype, p.device]
    return tuple(key)


def not_scriptable(module: object) -> TypeError:
    """The error a layer's ``__prepare_scriptable__`` raises: ``torch.jit.script`` would
    otherwise fail deep inside the TorchScript compiler with an internal message."""
    name = type(module).__name__
    return TypeError(
        f"torch.jit.script does not support {name}; use torch.compile, torch.jit.trace "
        f"(a traced model saves with torch.jit.save) or torch.export instead"
    )
