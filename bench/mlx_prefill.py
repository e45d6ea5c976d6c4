"""mlx prefill: what the mlx backend changes in mlx-vlm's forward pass, each against mlx-vlm's own way, side by
side in one run, on the tiny mlx test model built with Nemotron's 131,072-token vocabulary (or --model, an mlx-vlm
folder):
  attention  mlx's fused kernel vs the softmax on numpy (models/mlx_cpu_attention.py; mlx's CPU device only)
  head       the output layer over every position of a chunk vs over the last one (mlx_backend._head_on_last_position)
Two timings for each, the median of --runs, the two ways taking turns:
  turn   a conversation's new turn: --turn-tokens tokens evaluated after a --history-tokens history
  cold   a cold prefill of the history itself (in 512-token chunks, as the backend evaluates it)
and the largest logit difference between the two ways, against the logits' scale (rounding level is expected).

    python bench/mlx_prefill.py [--model FOLDER] [--vocab 131072] [--history-tokens 2700] [--turn-tokens 49]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StolenTime  # noqa: E402

from omnid.models.mlx_backend import MlxBackend  # noqa: E402
from omnid.models.mlx_test_model import write_mlx_test_model  # noqa: E402

#: A way of computing, as (name, put it in place): the backend's own way is the second of each pair.
Way = tuple[str, Callable[[], None]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="an mlx-vlm model folder (default: the tiny test model)")
    parser.add_argument("--vocab", type=int, default=131072, help="the test model's vocabulary (default Nemotron's)")
    parser.add_argument("--history-tokens", type=int, default=2700)
    parser.add_argument("--turn-tokens", type=int, default=49)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    stolen = StolenTime()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or write_mlx_test_model(Path(tmp) / "tiny-mlx", vocab_size=args.vocab)
        backend = MlxBackend(folder, n_ctx=8192)
        print(f"vocabulary {backend._vocab_size}; turn: {args.turn_tokens} tokens after {args.history_tokens}; "
              f"cold: {args.history_tokens} tokens; median of {args.runs}")
        rows = {name: compare(backend, ways, args) for name, ways in comparisons(backend)}
    print(stolen.describe())
    print(f"{'':18} {'mlx-vlm':>10} {'omnid':>10} {'speed-up':>9}")
    for name, timings in rows.items():
        for what, (theirs, ours) in timings.items():
            print(f"{name + ' ' + what:18} {theirs:>8.1f}ms {ours:>8.1f}ms {theirs / ours:>8.2f}x")
    return 0


def comparisons(backend: MlxBackend) -> Iterator[tuple[str, tuple[Way, Way]]]:
    """(name, (mlx-vlm's way, the backend's way)) for each change the backend made to this model."""
    from mlx_vlm.models import base

    namespaces = routed_namespaces(backend)
    if namespaces:
        routed = namespaces[0]["scaled_dot_product_attention"]

        def attention(function: Callable) -> Callable[[], None]:
            def put_in_place() -> None:
                for namespace in namespaces:
                    namespace["scaled_dot_product_attention"] = function
            return put_in_place
        yield "attention", (("fused", attention(base.scaled_dot_product_attention)), ("numpy", attention(routed)))
    else:
        print(f"attention: mlx computes on {backend._mx.default_device()}, its fused kernel is used")
    head = getattr(backend._lm, "lm_head", None)
    if head is not None and type(head).__name__.startswith("LastPosition"):
        last_position, every_position = type(head), type(head).__bases__[0]

        def head_class(cls: type) -> Callable[[], None]:
            return lambda: setattr(head, "__class__", cls)
        yield "head", (("every position", head_class(every_position)), ("last", head_class(last_position)))


def compare(backend: MlxBackend, ways: tuple[Way, Way], args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Median times of a turn and of a cold prefill each way; prints the logits' difference."""
    rng = np.random.default_rng(0)
    tokenizer_ids = min(backend._vocab_size, 268)  # ids the byte tokenizer of the test model makes
    history = rng.integers(16, tokenizer_ids, args.history_tokens).tolist()
    turn = rng.integers(16, tokenizer_ids, args.turn_tokens).tolist()
    times: dict[str, dict[str, list[float]]] = {"turn": {}, "cold": {}}
    logits: dict[str, np.ndarray] = {}

    def timed(tokens: list[int]) -> float:
        started = time.perf_counter()
        for start in range(0, len(tokens), 512):
            backend.append_tokens(tokens[start:start + 512])
        backend.logits()
        return (time.perf_counter() - started) * 1e3

    try:
        for _ in range(args.runs):
            for name, put_in_place in ways:
                put_in_place()
                backend.reset()
                times["cold"].setdefault(name, []).append(timed(history))
                times["turn"].setdefault(name, []).append(timed(turn))
                logits[name] = backend.logits()
    finally:
        ways[1][1]()  # the backend's own way again
    theirs, ours = (logits[name] for name, _ in ways)
    print(f"{ways[0][0]} vs {ways[1][0]}: largest logit difference {np.abs(theirs - ours).max():.2e} "
          f"(logits up to {np.abs(theirs).max():.2f})")
    return {what: (statistics.median(t[ways[0][0]]), statistics.median(t[ways[1][0]])) for what, t in times.items()}


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
