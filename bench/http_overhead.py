"""What the HTTP API costs over gRPC: decode tokens/s and time to first token, side by side, from one daemon.

One `omnid serve --http` subprocess answers the same one-turn conversation (thinking off, greedy, the prompt
cache off so every run prefills cold), alternately over gRPC (the Chat RPC, on its Unix socket) and over HTTP
(/v1/chat/completions with the official `openai` package, streaming, as an app would call it), so both see the
same machine load. Both are the very same conversation job; only the front end differs (the prompt token counts
are printed to show it, and the server's own time to first token, so what each front end adds is shown apart
from the prefill). `--completions` compares /v1/completions with Generate instead (the same decode loop, but
Generate's prompt holds the chat template's tokens around the turn). A model without a chat template (the
embedded default) has no Chat RPC: use --completions.

Goal: HTTP >= 0.95x gRPC's decode tokens/s and < +5 ms on time to first token.

    python bench/http_overhead.py                    # the tiny test model (written to a temp folder)
    python bench/http_overhead.py --model M.gguf [--mmproj P.gguf] [--completions]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StolenTime, add_model_flags, start_daemon, test_model_args  # noqa: E402

from openai import OpenAI  # noqa: E402

from omnid.clients.client import OmniClient, text  # noqa: E402
from omnid.proto import omnid_pb2 as pb  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a map."


class Run:
    """One answer as its client saw it."""

    def __init__(self, ttft_ms: float, tokens_per_s: float, server_ttft_ms: float, prompt_tokens: int,
                 tokens: int, server_tokens_per_s: float) -> None:
        self.server_tokens_per_s = server_tokens_per_s
        self.ttft_ms = ttft_ms
        self.tokens_per_s = tokens_per_s
        self.server_ttft_ms = server_ttft_ms
        self.prompt_tokens = prompt_tokens
        self.tokens = tokens


def over_grpc(client: OmniClient, max_tokens: int, chat: bool) -> Run:
    t0 = time.perf_counter()
    first = 0.0
    done: Any = None
    if chat:
        events = client.chat(pb.ChatRequest(messages=[pb.ChatMessage(role="user", parts=[text(PROMPT)])],
                                            thinking=False, max_tokens=max_tokens))
    else:
        events = client.generate(text(PROMPT), max_tokens=max_tokens)
    for event in events:
        if event.WhichOneof("event") == "delta":
            first = first or time.perf_counter()
        elif event.WhichOneof("event") == "done":
            done = event.done
    t_end = time.perf_counter()
    u = done.usage
    return Run((first - t0) * 1000, (u.generated_tokens - 1) / (t_end - first), u.time_to_first_token_ms,
               u.prompt_tokens, u.generated_tokens, u.decode_tokens_per_second)


def over_http(client: OpenAI, max_tokens: int, chat: bool) -> Run:
    options: dict[str, Any] = {"model": "omnid", "max_tokens": max_tokens, "stream": True,
                               "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = 0.0
    usage: Any = None
    timings: dict[str, float] = {}
    if chat:
        stream: Any = client.chat.completions.create(messages=[{"role": "user", "content": PROMPT}],
                                                     reasoning_effort="none", **options)
    else:
        stream = client.completions.create(prompt=PROMPT, **options)
    for chunk in stream:
        if chunk.choices and (chunk.choices[0].delta.content if chat else chunk.choices[0].text):
            first = first or time.perf_counter()
        if chunk.usage is not None:
            usage, timings = chunk.usage, (chunk.model_extra or {}).get("timings", {})
    t_end = time.perf_counter()
    return Run((first - t0) * 1000, (usage.completion_tokens - 1) / (t_end - first),
               timings.get("time_to_first_token_ms", 0.0), usage.prompt_tokens, usage.completion_tokens,
               timings.get("decode_tokens_per_second", 0.0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(parser)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--completions", action="store_true",
                        help="/v1/completions vs Generate instead of /v1/chat/completions vs Chat")
    args = parser.parse_args()
    stolen = StolenTime()

    with tempfile.TemporaryDirectory() as tmp:
        model_args = test_model_args(Path(tmp), args.model, args.mmproj, args.backend, args.decoder)
        port = free_port()
        token_file = Path(tmp) / "token"
        daemon = start_daemon(Path(tmp), model_args, ["--threads", str(args.threads), "--ctx", "4096",
                                                       "--cache-ram", "0", "--cache-disk", "off",
                                                       "--http", f"127.0.0.1:{port}", "--token-file",
                                                       str(token_file)])
        try:
            http = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token_file.read_text().strip(),
                          max_retries=0)
            with OmniClient(f"unix:{daemon.socket}") as grpc_client:
                chat = not args.completions
                over_grpc(grpc_client, 8, chat), over_http(http, 8, chat)  # warm both up
                g_runs, h_runs = [], []
                for _ in range(args.runs):
                    g_runs.append(over_grpc(grpc_client, args.tokens, chat))
                    h_runs.append(over_http(http, args.tokens, chat))
                name = grpc_client.status().model_name
        finally:
            daemon.stop()

    def median(runs: list[Run], field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    g_tps, h_tps = median(g_runs, "tokens_per_s"), median(h_runs, "tokens_per_s")
    g_ttft, h_ttft = median(g_runs, "ttft_ms"), median(h_runs, "ttft_ms")
    g_added = statistics.median(r.ttft_ms - r.server_ttft_ms for r in g_runs)
    h_added = statistics.median(r.ttft_ms - r.server_ttft_ms for r in h_runs)
    pair = "/v1/completions vs gRPC Generate" if args.completions else "/v1/chat/completions vs gRPC Chat"
    print(stolen.describe())
    print(f"model: {name}, {args.tokens} tokens asked, {args.runs} runs, threads {args.threads}, "
          f"cpu count {os.cpu_count()}; HTTP {pair} (openai package, streaming)")
    print(f"{'':24}{'gRPC':>12}{'HTTP':>12}{'HTTP vs gRPC':>16}")
    print(f"{'decode tokens/s':24}{g_tps:12.1f}{h_tps:12.1f}{h_tps / g_tps:15.3f}x   (goal >= 0.95x)")
    g_srv, h_srv = median(g_runs, "server_tokens_per_s"), median(h_runs, "server_tokens_per_s")
    print(f"{'  as the server decoded':24}{g_srv:12.1f}{h_srv:12.1f}{h_srv / g_srv:15.3f}x")
    print(f"{'time to first token ms':24}{g_ttft:12.2f}{h_ttft:12.2f}{h_ttft - g_ttft:+14.2f}ms   (goal < +5 ms)")
    print(f"{'  added by the front end':24}{g_added:12.2f}{h_added:12.2f}{h_added - g_added:+14.2f}ms"
          "   (client TTFT - the server's own)")
    print(f"{'prompt tokens':24}{median(g_runs, 'prompt_tokens'):12.0f}{median(h_runs, 'prompt_tokens'):12.0f}")
    print(f"{'generated tokens':24}{median(g_runs, 'tokens'):12.0f}{median(h_runs, 'tokens'):12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
