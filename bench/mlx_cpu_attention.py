"""mlx on the CPU: attention through mlx's fused kernel vs models/mlx_cpu_attention.py (softmax on numpy), side by
side in one run, on the tiny mlx test model (or --model, an mlx-vlm folder).

Two timings, each the median of --runs, the two attentions taking turns:
  turn   a conversation's new turn: --turn-tokens tokens evaluated after a --history-tokens history
  cold   a cold prefill of the history itself
and the largest logit difference between the two, against the logits' scale (rounding level is expected).

    python bench/mlx_cpu_attention.py [--model FOLDER] [--history-tokens 2700] [--turn-tokens 49] [--runs 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StolenTime  # noqa: E402

from omnid.models.mlx_backend import MlxBackend  # noqa: E402
from omnid.models.mlx_test_model import write_mlx_test_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="an mlx-vlm model folder (default: the tiny test model)")
    parser.add_argument("--history-tokens", type=int, default=2700)
    parser.add_argument("--turn-tokens", type=int, default=49)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    stolen = StolenTime()
    with tempfile.TemporaryDirectory() as tmp:
        backend = MlxBackend(args.model or write_mlx_test_model(Path(tmp) / "tiny-mlx"), n_ctx=8192)
        if backend._attention != "numpy":
            print(f"mlx computes on {backend._mx.default_device()}: its fused attention is used, nothing to compare")
            return 0
        rows = compare(backend, args)
    print(stolen.describe())
    print(f"{'':6} {'mlx fused':>10} {'numpy softmax':>14} {'speed-up':>9}")
    for name, (fused, ours) in rows.items():
        print(f"{name:6} {fused:>8.1f}ms {ours:>12.1f}ms {fused / ours:>8.2f}x")
    return 0


def compare(backend: MlxBackend, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Median times of a turn and of a cold prefill with each attention, and the logits' difference printed."""
    from mlx_vlm.models import base

    rng = np.random.default_rng(0)
    vocab = backend._vocab_size
    history = rng.integers(16, vocab, args.history_tokens).tolist()
    turn = rng.integers(16, vocab, args.turn_tokens).tolist()
    namespaces = routed_namespaces(backend)
    routed = namespaces[0]["scaled_dot_product_attention"]
    attentions = {"fused": base.scaled_dot_product_attention, "numpy": routed}
    times: dict[str, dict[str, list[float]]] = {"turn": {"fused": [], "numpy": []}, "cold": {"fused": [], "numpy": []}}
    logits: dict[str, np.ndarray] = {}

    def timed(call: Callable[[], None]) -> float:
        started = time.perf_counter()
        call()
        backend.logits()
        return (time.perf_counter() - started) * 1e3

    try:
        for _ in range(args.runs):
            for name, attention in attentions.items():
                for namespace in namespaces:
                    namespace["scaled_dot_product_attention"] = attention
                backend.reset()
                times["cold"][name].append(timed(lambda: backend.append_tokens(history)))
                times["turn"][name].append(timed(lambda: backend.append_tokens(turn)))
                logits[name] = backend.logits()
    finally:
        for namespace in namespaces:
            namespace["scaled_dot_product_attention"] = routed
    scale = float(np.abs(logits["fused"]).max())
    print(f"largest logit difference {np.abs(logits['fused'] - logits['numpy']).max():.2e} (logits up to {scale:.2f})")
    print(f"turn: {args.turn_tokens} tokens after {args.history_tokens}; cold: {args.history_tokens} tokens; "
          f"median of {args.runs}")
    return {what: (statistics.median(t["fused"]), statistics.median(t["numpy"])) for what, t in times.items()}


def routed_namespaces(backend: MlxBackend) -> list[dict]:
    """The globals of the model's modules whose attention function mlx_cpu_attention.install replaced."""
    from mlx_vlm.models import base

    found: dict[str, dict] = {}
    for module in backend._model.modules():
        name = type(module).__module__
        namespace = vars(sys.modules[name])
        attention = namespace.get("scaled_dot_product_attention")
        if attention is not None and attention is not base.scaled_dot_product_attention:
            found[name] = namespace
    return list(found.values())


if __name__ == "__main__":
    sys.exit(main())
