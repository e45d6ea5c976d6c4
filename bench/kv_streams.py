"""Why LlamaCppBackend gives each sequence its own KV stream: non-unified vs unified cache, side by side.

On each tiny test decoder (hybrid and attention-only), N sequences each hold a long prompt; then, alternating
between the two layouts so both see the same machine load: a batched decode step of every sequence
(decode_batch, one token each), one sequence's step alone, and a restore into another sequence. A unified
cache lets every sequence's attention span every sequence's cells; streams keep each to its own.

    python bench/kv_streams.py [--sequences 4] [--tokens 3000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from omnid.models.base import TextSegment
from omnid.models.gguf_test_model import write_test_model
from omnid.models.llama_cpp_backend import LlamaCppBackend


class _Unified(LlamaCppBackend):
    _KV_UNIFIED = True


def _ms(call: Callable[[], object], repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - started) * 1e3 / repeat


def _measure(kind: type[LlamaCppBackend], model: Path, sequences: int, tokens: int) -> dict[str, float]:
    backend = kind(model, None, n_ctx=max(2048, tokens + 512), n_threads=1, n_sequences=sequences)
    try:
        text = TextSegment("hello world " * (tokens // 2))
        for seq in range(sequences):
            backend.select(seq)
            backend.append(text)
        step = {seq: [5] for seq in range(sequences)}
        backend.decode_batch(step)
        batched = _ms(lambda: backend.decode_batch(step), 40)
        backend.select(0)
        alone = _ms(lambda: backend.append_token(5), 20)
        snap = backend.snapshot()
        backend.select(sequences - 1)
        restore = _ms(lambda: backend.restore(snap), 10)
        return {"batched step": batched, "one sequence's step": alone, "restore": restore}
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=3000, help="prompt tokens in each sequence")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for decoder in ("nemotron_h_moe", "llama"):
            model = write_test_model(Path(tmp) / decoder, decoder=decoder).text
            runs: dict[str, list[dict[str, float]]] = {"streams": [], "unified": []}
            for _ in range(args.rounds):
                runs["streams"].append(_measure(LlamaCppBackend, model, args.sequences, args.tokens))
                runs["unified"].append(_measure(_Unified, model, args.sequences, args.tokens))
            print(f"{decoder}, {args.sequences} sequences of ~{args.tokens} tokens (median of {args.rounds}, ms):")
            for what in runs["streams"][0]:
                streams = statistics.median(r[what] for r in runs["streams"])
                unified = statistics.median(r[what] for r in runs["unified"])
                print(f"  {what:22s} streams {streams:6.2f}  unified {unified:6.2f}  "
                      f"unified/streams {unified / streams:.2f}x")


if __name__ == "__main__":
    main()
