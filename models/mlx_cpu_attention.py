"""Attention for mlx-vlm models on mlx's CPU device: the softmax on numpy's vectorised exp.

Why: mlx's CPU kernels for transcendental functions are scalar (measured on the Linux mlx[cpu] wheel: mx.exp
16 ns an element, numpy's 0.5 ns), and mx.fast.scaled_dot_product_attention on the CPU takes an exp for every
query x key score. A conversation's new turn (about 50 tokens over a 2.7k-token history) spent 16.6 of its 24 ms
in the one attention layer of the test model, and a cold prefill pays it for every pair of tokens. Here the two
products stay on mlx (its BLAS, see mlx_blas) and only the softmax goes through numpy, in query blocks that bound
the scores' memory. Not numpy's products: its own OpenBLAS thread pool, spinning beside mlx's, made every turn
slower, not faster. Metal and CUDA devices keep mlx's fused kernel: `install` changes nothing there.

Only the plain case is taken over (no mask, or mlx-vlm's "causal" string, no attention sinks, an unquantized
cache); anything else goes to mlx-vlm's own function. The summation order differs from mlx's, so logits move at
float rounding level: the choice is part of the mlx backend's fingerprint (`install` returns its name).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np

#: Scores held at once, per block of queries (float32): 16M = 64 MB, whatever the context and head count.
_MAX_SCORES = 1 << 24


def install(model: Any) -> str:
    """Route the attention of `model`'s layers through `_attention` when mlx computes on the CPU; returns what
    computes the attention ("numpy" or "mlx"), for the fingerprint."""
    import mlx.core as mx
    from mlx_vlm.models import base

    if mx.default_device() != mx.cpu:
        return "mlx"
    original = base.scaled_dot_product_attention
    routed = _router(original, mx)
    for module in model.modules():
        namespace = vars(sys.modules[type(module).__module__])
        if namespace.get("scaled_dot_product_attention") is original:
            namespace["scaled_dot_product_attention"] = routed
    return "numpy"


def _router(original: Callable[..., Any], mx: Any) -> Callable[..., Any]:
    """mlx-vlm's scaled_dot_product_attention signature; the plain case on numpy, the rest to `original`."""
    from mlx_vlm.models.cache import KVCache

    def scaled_dot_product_attention(queries: Any, keys: Any, values: Any, cache: Any, scale: float,
                                     mask: Any, sinks: Any = None) -> Any:
        plain_mask = mask is None or (isinstance(mask, str) and mask == "causal")
        if sinks is not None or not plain_mask or not (cache is None or type(cache) is KVCache):
            return original(queries, keys, values, cache, scale=scale, mask=mask, sinks=sinks)
        return _attention(mx, queries, keys, values, scale, causal=mask is not None)

    return scaled_dot_product_attention


def _attention(mx: Any, queries: Any, keys: Any, values: Any, scale: float, *, causal: bool) -> Any:
    """softmax(q k^T * scale) v with grouped KV heads: queries (b, hq, n, d), keys and values (b, hkv, s, dv), hq a
    multiple of hkv. Causal: query i is the (s - n + i)-th position and sees the keys up to it (mlx's bottom-right
    "causal"). The products stay on mlx (its BLAS); only the softmax goes through numpy."""
    b, hq, n, d = queries.shape
    hkv, s = keys.shape[1], keys.shape[2]
    group = hq // hkv
    q = (queries.astype(mx.float32) * scale).reshape(b, hkv, group, n, d)
    keys_t = keys.astype(mx.float32).swapaxes(-1, -2)[:, :, None]  # (b, hkv, 1, d, s)
    vals = values.astype(mx.float32)[:, :, None]
    block = max(1, _MAX_SCORES // max(1, b * hq * s))
    outs = []
    for start in range(0, n, block):
        end = min(n, start + block)
        scores = np.array(q[:, :, :, start:end] @ keys_t)  # (b, hkv, group, block, s), a writable copy
        if causal and n > 1:
            later = np.arange(s)[None, :] > (s - n + np.arange(start, end))[:, None]
            scores += np.where(later, np.float32(-np.inf), np.float32(0))
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        outs.append(mx.array(scores) @ vals)
    out = outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=3)
    return out.reshape(b, hq, n, values.shape[-1]).astype(queries.dtype)
