"""What the HTTP API costs over gRPC: decode tokens/s and time to first token, side by side, from one daemon.

One `omnid serve --http` subprocess answers the same one-turn conversation (thinking off, greedy, the prompt
cache off so every run prefills cold), alternately over gRPC (the Chat RPC, on its Unix socket) and over HTTP
(/v1/chat/completions with the official `openai` package, streaming, as an app would call it), so both see the
same machine load. Both are the very same conversation job; only the front end differs (the prompt token counts
are printed to show it, and the server's own time to first token, so what each front end adds is shown apart
from the prefill). A third column sends the same HTTP request with the standard library's http.client on a
kept-alive connection: what the daemon's HTTP front end costs without the openai package's own client work.
`--completions` compares /v1/completions with Generate instead (the same decode loop, but
Generate's prompt holds the chat template's tokens around the turn). A model without a chat template (the
embedded default) has no Chat RPC: use --completions.

Goal: HTTP >= 0.95x gRPC's decode tokens/s and < +5 ms on time to first token.

    python bench/http_overhead.py                    # the tiny test model (written to a temp folder)
    python bench/http_overhead.py --model M.gguf [--mmproj P.gguf] [--completions]
"""
from __future__ import annotations

import argparse
import http.client
import json
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


class RawHttp:
    """The same streaming request with http.client (no SDK), on one kept-alive connection."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def run(self, max_tokens: int, chat: bool) -> Run:
        request: dict[str, Any] = {"model": "omnid", "max_tokens": max_tokens, "stream": True,
                                   "stream_options": {"include_usage": True}}
        if chat:
            request.update(messages=[{"role": "user", "content": PROMPT}], reasoning_effort="none")
        else:
            request.update(prompt=PROMPT)
        t0 = time.perf_counter()
        first = 0.0
        final: dict[str, Any] = {}
        self.conn.request("POST", "/v1/chat/completions" if chat else "/v1/completions", json.dumps(request),
                          self.headers)
        response = self.conn.getresponse()
        for line in response:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                choice = chunk["choices"][0] if chunk["choices"] else {}
                if not first and (choice.get("delta", {}).get("content") if chat else choice.get("text")):
                    first = time.perf_counter()
                if chunk.get("usage"):
                    final = chunk
        t_end = time.perf_counter()
        usage, timings = final["usage"], final.get("timings", {})
        return Run((first - t0) * 1000, (usage["completion_tokens"] - 1) / (t_end - first),
                   timings.get("time_to_first_token_ms", 0.0), usage["prompt_tokens"], usage["completion_tokens"],
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
            raw = RawHttp(port, token_file.read_text().strip())
            with OmniClient(f"unix:{daemon.socket}") as grpc_client:
                chat = not args.completions
                over_grpc(grpc_client, 8, chat), over_http(http, 8, chat), raw.run(8, chat)  # warm them up
                g_runs, h_runs, r_runs = [], [], []
                for _ in range(args.runs):
                    g_runs.append(over_grpc(grpc_client, args.tokens, chat))
                    h_runs.append(over_http(http, args.tokens, chat))
                    r_runs.append(raw.run(args.tokens, chat))
                name = grpc_client.status().model_name
        finally:
            daemon.stop()

    def median(runs: list[Run], field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    def added(runs: list[Run]) -> float:
        return statistics.median(r.ttft_ms - r.server_ttft_ms for r in runs)

    def row(label: str, values: list[float], fmt: str, vs: str) -> None:
        print(f"{label:24}" + "".join(f"{v:12{fmt}}" for v in values) + vs)

    runs = (g_runs, h_runs, r_runs)
    pair = "/v1/completions vs gRPC Generate" if args.completions else "/v1/chat/completions vs gRPC Chat"
    print(stolen.describe())
    print(f"model: {name}, {args.tokens} tokens asked, {args.runs} runs, threads {args.threads}, "
          f"cpu count {os.cpu_count()}; HTTP {pair} (openai package, streaming; and http.client)")
    print(f"{'':24}{'gRPC':>12}{'HTTP':>12}{'http.client':>12}{'HTTP vs gRPC':>16}")
    tps = [median(r, "tokens_per_s") for r in runs]
    row("decode tokens/s", tps, ".1f", f"{tps[1] / tps[0]:15.3f}x   (goal >= 0.95x)")
    served = [median(r, "server_tokens_per_s") for r in runs]
    row("  as the server decoded", served, ".1f", f"{served[1] / served[0]:15.3f}x")
    ttft = [median(r, "ttft_ms") for r in runs]
    row("time to first token ms", ttft, ".2f", f"{ttft[1] - ttft[0]:+14.2f}ms   (goal < +5 ms)")
    front = [added(r) for r in runs]
    row("  added by the front end", front, ".2f",
        f"{front[1] - front[0]:+14.2f}ms   (client TTFT - the server's own)")
    row("prompt tokens", [median(r, "prompt_tokens") for r in runs], ".0f", "")
    row("generated tokens", [median(r, "tokens") for r in runs], ".0f", "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
