"""What omnid's remote backend adds to the time to first token: the same requests straight to an engine vs
through `omnid serve --backend remote` against that same engine.

The engine is llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) on the tiny test
model (or --model X.gguf), or any running engine given with --url. Each run sends the same chat request (a
system text, a question, streamed, greedy, --max-tokens tokens): (a) with http.client straight to the
engine's /chat/completions, timing the first content chunk, and (b) as a Generate over omnid's Unix socket,
timing the first delta. Runs alternate, so both see the same machine load and the same engine cache state.
Prints the medians and the difference; the goal is < 5 ms added.

    python bench/remote_overhead.py                         # the tiny test model in a llama_cpp.server
    python bench/remote_overhead.py --url http://127.0.0.1:8000/v1 --model-name NAME
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import start_daemon  # noqa: E402

from omnid.clients.client import OmniClient, text  # noqa: E402

SYSTEM = "You are a helpful assistant who answers briefly."
QUESTION = "Write one sentence about a lighthouse keeper."


def start_engine(model: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
                                "--port", str(port), "--n_ctx", "4096", "--n_threads", "1", "--verbose", "false"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).read()
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise TimeoutError("llama_cpp.server did not start")


def direct(url: str, model: str, max_tokens: int) -> float:
    """Time to the first content chunk (ms), straight to the engine."""
    parts = urlsplit(url)
    body = json.dumps({"model": model, "messages": [{"role": "system", "content": SYSTEM},
                                                    {"role": "user", "content": QUESTION}],
                       "stream": True, "max_tokens": max_tokens, "temperature": 0.0}).encode()
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("POST", parts.path + "/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    first = 0.0
    for line in response:
        if line.startswith(b"data:") and b'"content"' in line and not first:
            first = time.perf_counter()
        if line.strip() == b"data: [DONE]":
            break
    conn.close()
    return (first - t0) * 1000


def through_omnid(client: OmniClient, max_tokens: int) -> float:
    """Time to the first delta (ms), through omnid's remote backend."""
    t0 = time.perf_counter()
    first = 0.0
    for event in client.generate(text(QUESTION), system=SYSTEM, max_tokens=max_tokens):
        if event.WhichOneof("event") == "delta" and not first:
            first = time.perf_counter()
    return (first - t0) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="", help="a running engine's base URL (default: start llama_cpp.server)")
    parser.add_argument("--model", default="", help="the GGUF the started engine serves (default: the test model)")
    parser.add_argument("--model-name", default="", help="the model name at --url (default: the first listed)")
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        engine = None
        url = args.url
        if not url:
            from omnid.models.gguf_test_model import write_test_model
            model = args.model or str(write_test_model(tmp / "model").text)
            with __import__("socket").socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            engine = start_engine(model, port)
            url = f"http://127.0.0.1:{port}/v1"
        try:
            name = args.model_name or json.loads(urllib.request.urlopen(url + "/models").read())["data"][0]["id"]
            extra = ["--remote-url", url, "--remote-model", name, "--cache-disk", "off", "--ctx", "4096"]
            daemon = start_daemon(tmp, {"model": "", "mmproj": "", "backend": "remote"}, extra)
            try:
                with OmniClient(f"unix:{daemon.socket}") as client:
                    direct(url, name, args.max_tokens), through_omnid(client, args.max_tokens)  # warm both paths
                    straight, omnid = [], []
                    for _ in range(args.runs):
                        straight.append(direct(url, name, args.max_tokens))
                        omnid.append(through_omnid(client, args.max_tokens))
            finally:
                daemon.stop()
        finally:
            if engine is not None:
                engine.kill()
                engine.wait(10)
    a, b = statistics.median(straight), statistics.median(omnid)
    print(f"time to first token, median of {args.runs} alternating runs against {url}:")
    print(f"  straight to the engine          {a:8.2f} ms")
    print(f"  through omnid --backend remote  {b:8.2f} ms")
    print(f"  omnid adds                      {b - a:8.2f} ms  (goal < 5 ms; ratio {b / a:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
