"""What the daemon costs over decoding in-process: tokens/s and time to first token, side by side.

The same model and prompt are decoded (a) in this process, through the same DecoderSession the daemon uses,
and (b) through a real `omnid serve` subprocess over its Unix socket, alternating runs so both see the same
machine load. The prompt cache is off for both (every run prefills cold), so the comparison is decoder vs
decoder. Prints the medians and the ratios; the goal is >= 95% of in-process decode speed and < 5 ms added
to the time to first token. The defaults (1024 tokens, 11 runs) are long enough that one scheduling hiccup on
a shared machine does not move the ratio: the tiny model decodes 256 tokens in ~25 ms, where a 5 ms stall was
a 20% swing.

    python bench/daemon_overhead.py                      # the tiny test model (written to a temp folder)
    python bench/daemon_overhead.py --model M.gguf [--mmproj P.gguf] [--backend mlx]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StolenTime, add_model_flags, start_daemon, test_model_args  # noqa: E402

from omnid.clients.client import OmniClient, text  # noqa: E402
from omnid.daemon.prompt_cache import PromptCache  # noqa: E402
from omnid.daemon.sampling import SamplingParams  # noqa: E402
from omnid.daemon.session import DecoderSession  # noqa: E402
from omnid.models.base import TextSegment  # noqa: E402
from omnid.models.loader import load_backend  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a map."


def in_process(backend, max_tokens: int) -> tuple[float, float]:
    """(time to first token ms, decode tokens/s) of one cold run in this process."""
    cache = PromptCache(backend.info.fingerprint, ram_budget_bytes=0)  # nothing is kept: always cold
    t0 = time.perf_counter()
    session = DecoderSession(backend, cache, lambda: False)
    first: list[float] = []
    session.prefill(session.build_prompt([TextSegment(PROMPT)]))
    result = session.generate(max_tokens, SamplingParams(),
                              lambda _: first or first.append(time.perf_counter()))
    t_end = time.perf_counter()
    n = result.generated_tokens
    return (first[0] - t0) * 1000, (n - 1) / (t_end - first[0])


def through_daemon(client: OmniClient, max_tokens: int) -> tuple[float, float]:
    """(time to first token ms, decode tokens/s) of one run as the client sees it."""
    t0 = time.perf_counter()
    first = 0.0
    n = 0
    for event in client.generate(text(PROMPT), max_tokens=max_tokens):
        if event.WhichOneof("event") == "delta":
            first = first or time.perf_counter()
        else:
            n = event.done.usage.generated_tokens
    t_end = time.perf_counter()
    return (first - t0) * 1000, (n - 1) / (t_end - first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(parser)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    stolen = StolenTime()

    with tempfile.TemporaryDirectory() as tmp:
        model_args = test_model_args(Path(tmp), args.model, args.mmproj, args.backend, args.decoder)
        backend = load_backend(model_args["model"], model_args["mmproj"], model_args["backend"],
                               context_length=4096, threads=args.threads)
        daemon = start_daemon(Path(tmp), model_args, ["--threads", str(args.threads), "--ctx", "4096",
                                                       "--cache-ram", "0", "--cache-disk", "off"])
        try:
            with OmniClient(f"unix:{daemon.socket}") as client:
                in_process(backend, 8), through_daemon(client, 8)  # warm both up
                local, remote = [], []
                for _ in range(args.runs):
                    local.append(in_process(backend, args.tokens))
                    remote.append(through_daemon(client, args.tokens))
        finally:
            daemon.stop()
            backend.close()

    ttft_l, tps_l = (statistics.median(x) for x in zip(*local))
    ttft_r, tps_r = (statistics.median(x) for x in zip(*remote))
    print(stolen.describe())
    print(f"model: {backend.info.name} ({backend.info.backend}), {args.tokens} tokens, {args.runs} runs, "
          f"threads {args.threads}, cpu count {os.cpu_count()}")
    print(f"{'':12}{'in-process':>14}{'daemon':>14}{'ratio':>10}")
    print(f"{'tokens/s':12}{tps_l:14.1f}{tps_r:14.1f}{tps_r / tps_l:10.3f}   (goal >= 0.95)")
    print(f"{'TTFT ms':12}{ttft_l:14.2f}{ttft_r:14.2f}{ttft_r - ttft_l:+10.2f}   (goal < +5 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
