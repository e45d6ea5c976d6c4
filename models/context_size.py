"""How large a context this model can have on this machine: its trained context, capped by memory.

Why before loading: llama.cpp allocates the whole context's KV cache when the model loads, so a context the
memory cannot hold either fails deep inside the library or pushes the machine into swap; the daemon refuses it
at start-up instead, with the number that would fit. The sequence state is estimated from the model's own
shapes, as bench/_common.Shapes does for the target: every attention layer keeps K and V per token (f16, what
llama.cpp allocates by default), every Mamba2 layer a fixed recurrent state (its last conv-1 inputs and the
SSM state, f32). Weights are mapped from their files and count in full.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omnid.models.base import ModelLoadError

#: What the daemon needs beside the weights and the context: compute buffers, the encoders' activations, Python.
OVERHEAD_BYTES = 512 << 20
#: The context is a multiple of this (llama.cpp pads it anyway).
CONTEXT_STEP = 256
#: A model that does not say how long a context it was trained on gets this (the embedded default's).
FALLBACK_CONTEXT = 32768
#: The default context is not cut below this by the memory estimate (only an explicit --ctx is refused).
SMALLEST_DEFAULT = 4096
#: Sequences held at once by default (--parallel), where memory has room for them.
DEFAULT_SEQUENCES = 4
#: A default extra sequence must leave every sequence this much context (or the trained context, if shorter):
#: a 20-minute meeting is ~16k tokens, so one long context is worth more than a second short one.
SEQUENCE_CONTEXT_FLOOR = 32768
#: The most sequences asked for where the model's state size is unknown or free (llama.cpp allows 256).
MAX_SEQUENCES = 64


@dataclass(frozen=True)
class StateSize:
    """What a model needs in memory besides its context, and what each token of context adds."""

    trained_context: int     # tokens; 0 = the model does not say
    bytes_per_token: int     # the attention layers' K and V
    fixed_bytes: int         # the recurrent layers' state (independent of the context length)
    weights_bytes: int       # the model's files


@dataclass(frozen=True)
class ContextPlan:
    """The context the daemon runs with, and why."""

    tokens: int
    source: str              # "model" (the trained context), "memory" (capped by it), "--ctx"
    trained: int             # 0 = unknown
    memory_limit: int        # the most tokens memory holds per sequence (0 = unknown)
    sequences: int = 1       # decoder sequences held at once, each with `tokens` of context


def plan_sequences(requested: int, context: int, size: StateSize | None, available: int, reserved: int) -> int:
    """How many sequences to hold (`requested`, 0 = choose): DEFAULT_SEQUENCES where that many fit in memory
    with `context` tokens each (0 = not asked: SEQUENCE_CONTEXT_FLOOR, or the trained context if shorter),
    fewer where not, one at least. More than fit is refused (ModelLoadError) with the number that fits.

    Why N x the whole state: every sequence has its own KV cells for the full context and its own recurrent
    state (llama.cpp's non-unified cache; one cache list per sequence on mlx). The weights are there once."""
    if size is None:  # shapes unknown: what was asked, else one
        return min(requested, MAX_SEQUENCES) if requested else 1
    tokens = context or min(size.trained_context or FALLBACK_CONTEXT, SEQUENCE_CONTEXT_FLOOR)
    fits = _sequences_that_fit(size, tokens, available, reserved)
    if requested > max(1, fits):
        one = size.bytes_per_token * tokens + size.fixed_bytes
        raise ModelLoadError(
            f"--parallel {requested} needs {_gib(one * requested)} for {requested} sequences of {tokens} tokens, "
            f"but this machine has {_gib(available)} available ({_gib(size.weights_bytes)} for the model's "
            f"weights, {_gib(reserved)} for the prompt cache): at most {max(1, fits)} fit (pass a smaller "
            "--parallel or --ctx)")
    return requested or max(1, min(DEFAULT_SEQUENCES, fits))


def _sequences_that_fit(size: StateSize, tokens: int, available: int, reserved: int) -> int:
    one = size.bytes_per_token * tokens + size.fixed_bytes
    room = available - size.weights_bytes - reserved - OVERHEAD_BYTES
    return MAX_SEQUENCES if one <= 0 else max(0, min(MAX_SEQUENCES, room // one))


def for_sequences(size: StateSize, sequences: int) -> StateSize:
    """The state of `sequences` sequences, as plan_context sizes one: the KV and the recurrent state n times."""
    return replace(size, bytes_per_token=size.bytes_per_token * sequences, fixed_bytes=size.fixed_bytes * sequences)


def plan_context(requested: int, size: StateSize | None, available: int, reserved: int,
                 sequences: int = 1) -> ContextPlan:
    """The context for `requested` tokens (0 = choose) in each of `sequences` sequences: the model's trained
    context unless memory holds less (then what it holds, SMALLEST_DEFAULT at least); a request memory cannot
    hold is refused (ModelLoadError) with the number that fits. `reserved`: bytes other parts of the daemon may
    use (the prompt cache's RAM budget)."""
    if size is None:  # a model whose shapes are unknown: what was asked, or the fallback
        return ContextPlan(requested or FALLBACK_CONTEXT, "--ctx" if requested else "model", 0, 0, sequences)
    plan = _plan_one_context(requested, for_sequences(size, sequences), available, reserved, sequences)
    return replace(plan, sequences=sequences)


def _plan_one_context(requested: int, size: StateSize, available: int, reserved: int,
                      sequences: int) -> ContextPlan:
    limit = tokens_that_fit(size, available, reserved)
    if requested:
        if size.bytes_per_token and requested > limit:
            need = size.bytes_per_token * requested
            each = f" in each of --parallel {sequences} sequences" if sequences > 1 else ""
            raise ModelLoadError(
                f"--ctx {requested}{each} needs {_gib(need)} for its KV cache, but this machine has "
                f"{_gib(available)} available ({_gib(size.weights_bytes)} for the model's weights, "
                f"{_gib(reserved)} for the prompt cache): at most {limit} tokens fit (pass --ctx {limit} or less, "
                "or a smaller --cache-ram" + (" or --parallel)" if sequences > 1 else ")"))
        return ContextPlan(requested, "--ctx", size.trained_context, limit)
    trained = size.trained_context or FALLBACK_CONTEXT
    if size.bytes_per_token and limit < trained:  # never below SMALLEST_DEFAULT unasked: the weights are
        tokens = max(limit, min(trained, SMALLEST_DEFAULT))  # mapped, and the cache budget is a ceiling
        return ContextPlan(tokens, "memory", size.trained_context, limit)
    return ContextPlan(trained, "model", size.trained_context, limit)


def tokens_that_fit(size: StateSize, available: int, reserved: int) -> int:
    """The most tokens of context (a multiple of CONTEXT_STEP) whose state fits beside everything else."""
    if not size.bytes_per_token:
        return 0
    room = available - size.weights_bytes - size.fixed_bytes - reserved - OVERHEAD_BYTES
    return max(0, room // size.bytes_per_token // CONTEXT_STEP * CONTEXT_STEP)


def available_memory() -> int:
    """Memory available to this process now (Linux MemAvailable; half the physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (ValueError, OSError):
            return 0


def gguf_state_size(model: Path, mmproj: Path | None = None) -> StateSize:
    """The state size of a GGUF model, from its header (tensor shapes and the ssm.* keys)."""
    from omnid.models.llama_cpp_backend import _read_gguf_fields

    fields = _read_gguf_fields(model)
    arch = str(fields.get("general.architecture", ""))
    shapes: dict[str, tuple[int, ...]] = fields["__tensor_shapes__"]
    layers = int(fields.get(f"{arch}.block_count", 0))
    kv = fixed = 0
    for i in range(layers):
        k, v = shapes.get(f"blk.{i}.attn_k.weight"), shapes.get(f"blk.{i}.attn_v.weight")
        if k and v:
            kv += (k[-1] + v[-1]) * 2  # ggml ne order: (n_embd, n_kv_heads * head_dim); f16
        elif f"blk.{i}.attn_qkv.weight" in shapes:
            kv += 2 * _int(fields, f"{arch}.attention.head_count_kv") * _head_dim(fields, arch) * 2
        conv = shapes.get(f"blk.{i}.ssm_conv1d.weight")
        if conv:  # (d_conv, channels): the last d_conv-1 inputs, and a d_state x d_inner SSM state, f32
            d_state, d_inner = _int(fields, f"{arch}.ssm.state_size"), _int(fields, f"{arch}.ssm.inner_size")
            fixed += ((conv[0] - 1) * conv[-1] + d_state * d_inner) * 4
    weights = model.stat().st_size + (mmproj.stat().st_size if mmproj else 0)
    return StateSize(_int(fields, f"{arch}.context_length"), kv, fixed, weights)


def mlx_state_size(folder: Path) -> StateSize | None:
    """The state size of an MLX model folder from its config.json (attention layers only; None: no config)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text: dict[str, Any] = config.get("text_config", config)
    layers = int(text.get("num_hidden_layers", 0))
    heads = int(text.get("num_attention_heads", 0) or 1)
    kv_heads = int(text.get("num_key_value_heads", heads))
    head_dim = int(text.get("head_dim", 0) or int(text.get("hidden_size", 0)) // heads)
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    trained = int(text.get("max_position_embeddings", 0) or config.get("max_position_embeddings", 0) or 0)
    return StateSize(trained, layers * kv_heads * head_dim * 2 * 2, 0, weights)


def _int(fields: dict[str, Any], key: str) -> int:
    value = fields.get(key, 0)
    return int(value) if isinstance(value, (int, float)) else 0


def _head_dim(fields: dict[str, Any], arch: str) -> int:
    return _int(fields, f"{arch}.attention.key_length") or (
        _int(fields, f"{arch}.embedding_length") // max(1, _int(fields, f"{arch}.attention.head_count")))


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
