"""What our llama.cpp patches (scripts/llama-cpp-patches) buy: a stock build and ours side by side, in one run.

Each build runs in its own subprocess on the same tiny test model: a long text sequence is evaluated once and
snapshotted, then restored again and again the way the prompt cache restores it (empty the cache, then
llama_state_seq_set_data), each restore followed by a 16-token question. Rounds alternate between the builds so
both see the same machine load. Prints each build's median restore and question ms and the ratios.

It needs a stock wheel of the llama-cpp-python version setup.sh builds (once, ~5-12 minutes):

    CMAKE_ARGS=-DGGML_NATIVE=OFF pip wheel --no-cache-dir --no-deps llama-cpp-python==0.3.36 -w /tmp/stock
    python bench/llama_patches.py --stock-wheel /tmp/stock/llama_cpp_python-0.3.36-*.whl [--tokens 16000]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StolenTime  # noqa: E402

QUESTION = "What does the text above say about the lighthouse?"


def measure(model: str, tokens: int, runs: int, threads: int) -> dict:
    """In this process (whichever llama_cpp it imports): median restore and question ms over `runs`."""
    import llama_cpp

    from omnid.models.base import TextSegment
    from omnid.models.llama_cpp_backend import LlamaCppBackend

    backend = LlamaCppBackend(model, None, n_ctx=tokens + 512, n_threads=threads)
    words = "the keeper climbs the stairs and lights the lamp before the storm".split()
    text = " ".join(words[i % len(words)] for i in range(tokens))
    while backend.count_tokens(TextSegment(text)) > tokens:
        text = text[: int(len(text) * 0.9)]
    backend.append(TextSegment(text))
    snapshot = backend.snapshot()
    restore, question = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.restore(snapshot)
        t1 = time.perf_counter()
        backend.append(TextSegment(QUESTION))
        t2 = time.perf_counter()
        restore.append((t1 - t0) * 1000)
        question.append((t2 - t1) * 1000)
    return {"llama_cpp": llama_cpp.__file__, "tokens": snapshot.n_tokens, "restore": restore, "question": question}


def run_build(python_path: str | None, args: argparse.Namespace, model: str) -> dict:
    env = dict(os.environ)
    if python_path:
        env["PYTHONPATH"] = python_path + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, __file__, "--worker", "--model", model, "--tokens", str(args.tokens),
                          "--runs", str(args.runs), "--threads", str(args.threads)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stock-wheel", type=Path, help="an unpatched llama-cpp-python wheel (see above)")
    parser.add_argument("--tokens", type=int, default=16000)
    parser.add_argument("--runs", type=int, default=15, help="restores per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per build, alternating")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.model, args.tokens, args.runs, args.threads)))
        return 0
    if not args.stock_wheel or not args.stock_wheel.is_file():
        print(__doc__.split("\n\n", 2)[2], file=sys.stderr)
        return 2
    stolen = StolenTime()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        from omnid.models.gguf_test_model import write_test_model
        model = str(write_test_model(tmp / "model", vision=False, audio=False).text)
        with zipfile.ZipFile(args.stock_wheel) as wheel:
            wheel.extractall(tmp / "stock")
        builds = {"stock": str(tmp / "stock"), "patched": None}
        results: dict[str, dict] = {name: {"restore": [], "question": []} for name in builds}
        for _ in range(args.rounds):
            for name, path in builds.items():
                got = run_build(path, args, model)
                results[name]["llama_cpp"], results[name]["tokens"] = got["llama_cpp"], got["tokens"]
                results[name]["restore"] += got["restore"]
                results[name]["question"] += got["question"]
    print(stolen.describe())
    for name, r in results.items():
        print(f"{name:8} llama_cpp from {r['llama_cpp']}")
    tokens = results["patched"]["tokens"]
    print(f"restore a {tokens}-token sequence, then evaluate a {len(QUESTION.split())}-word question; "
          f"median ms of {args.rounds} x {args.runs}")
    print(f"{'':10}{'stock':>10}{'patched':>10}{'stock/patched':>15}")
    for what in ("restore", "question"):
        stock, patched = (statistics.median(results[b][what]) for b in ("stock", "patched"))
        print(f"{what:10}{stock:10.2f}{patched:10.2f}{stock / patched:15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
