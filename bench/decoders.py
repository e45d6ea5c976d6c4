"""The two tiny test decoders side by side: what a snapshot of their sequence holds, and how fast they run.

The hybrid one (nemotron_h_moe: Mamba2 + attention + MoE, the target model's kind) keeps a fixed recurrent state
per Mamba layer plus KV for its one attention layer; the attention-only llama one keeps KV in both its layers.
For each, in-process on the real llama.cpp path: llama_state_seq_get_size of the sequence at 0, N and 2N
tokens (the difference gives the bytes per token, the rest is the fixed recurrent state), the snapshot payload
at N tokens, prefill speed and decode speed after an N-token prefix (median of --runs), then the hybrid / llama
ratios. Last, the same sizes from the layer shapes (llama.cpp keeps the Mamba2 conv window and SSM state in f32,
attention K and V in f16), checked against the measured ones: the formula bench/prompt_cache.py applies to
Nemotron 3 Nano's published shapes to read the figures for the target model.

    python bench/decoders.py [--tokens 1000] [--runs 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Shapes, StolenTime  # noqa: E402

import omnid.models.gguf_test_model as tiny  # noqa: E402
from omnid.models.base import TextSegment  # noqa: E402
from omnid.models.gguf_test_model import DECODERS, write_test_model  # noqa: E402
from omnid.models.llama_cpp_backend import LlamaCppBackend  # noqa: E402

DECODE_TOKENS = 256


SHAPES = {
    "nemotron_h_moe": Shapes(tiny.HYBRID_PATTERN.count("M"), tiny.SSM_CONV, tiny.SSM_INNER, tiny.SSM_GROUPS,
                             tiny.SSM_STATE, tiny.HYBRID_PATTERN.count("*"), tiny.H_HEAD_KV, tiny.H_HEAD_DIM),
    "llama": Shapes(attention_layers=tiny.N_LAYER, kv_heads=tiny.N_HEAD, head_dim=tiny.N_EMBD // tiny.N_HEAD),
}


def measure(model: Path, n_tokens: int, runs: int, threads: int) -> dict[str, float]:
    b = LlamaCppBackend(model, None, n_ctx=2 * n_tokens + DECODE_TOKENS + 256, n_threads=threads)
    try:
        state_size = lambda: int(b._lc.llama_state_seq_get_size(b._ctx, 0))  # noqa: E731
        prefix = TextSegment("hello world " * (n_tokens // 2))
        b.reset()
        empty = state_size()
        b.append(prefix)
        b.append(prefix)
        double, n_double = state_size(), b.n_tokens
        prefill, decode = [], []
        for _ in range(runs):
            b.reset()
            t0 = time.perf_counter()
            b.append(prefix)
            prefill.append(b.n_tokens / (time.perf_counter() - t0))
            full, n = state_size(), b.n_tokens
            snapshot = len(b.snapshot().payload)
            t0 = time.perf_counter()
            for _ in range(DECODE_TOKENS):
                b.append_token(int(b.logits().argmax()))
            decode.append(DECODE_TOKENS / (time.perf_counter() - t0))
        per_token = (double - full) / (n_double - n)
        return {"tokens": n, "empty": empty, "recurrent": full - per_token * n - empty, "per_token": per_token,
                "state": full, "snapshot": snapshot, "prefill": statistics.median(prefill),
                "decode": statistics.median(decode)}
    finally:
        b.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    stolen = StolenTime()
    with tempfile.TemporaryDirectory() as tmp:
        results = {d: measure(write_test_model(Path(tmp) / d, decoder=d, vision=False, audio=False).text,
                              args.tokens, args.runs, args.threads) for d in DECODERS}
    print(stolen.describe())
    print(f"threads {args.threads}, {args.runs} runs, decode {DECODE_TOKENS} tokens after the prefix")
    rows = [("sequence state at 0 tokens, bytes", "empty", "{:.0f}"),
            ("fixed part: recurrent state + headers, bytes", "recurrent", "{:.0f}"),
            ("state per token (attention KV), bytes", "per_token", "{:.1f}"),
            ("sequence state at N tokens, bytes", "state", "{:.0f}"),
            ("snapshot payload at N tokens, bytes", "snapshot", "{:.0f}"),
            ("prefill, tokens/s (median)", "prefill", "{:.0f}"),
            ("decode after N tokens, tokens/s (median)", "decode", "{:.0f}")]
    hybrid, llama = (results[d] for d in DECODERS)
    print(f"N = {hybrid['tokens']:.0f} tokens (hybrid), {llama['tokens']:.0f} (llama)")
    print(f"{'':44}{DECODERS[0]:>16}{DECODERS[1]:>12}{'ratio':>9}")
    for label, key, fmt in rows:
        ratio = f"{hybrid[key] / llama[key]:9.2f}" if llama[key] else f"{'':>9}"
        print(f"{label:44}{fmt.format(hybrid[key]):>16}{fmt.format(llama[key]):>12}{ratio}")
    print("from the layer shapes (measured above: the rest is llama.cpp's headers and 12 B per token of cell data)")
    for name in DECODERS:
        shape, got = SHAPES[name], results[name]
        print(f"  {name:15} recurrent {shape.recurrent_bytes():>9,} B (measured fixed part {got['recurrent']:,.0f}), "
              f"KV {shape.kv_bytes_per_token()} B/token (measured {got['per_token']:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
