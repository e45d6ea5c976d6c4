"""A bounded mixed load on a real daemon for N minutes: does it keep serving, and do its memory and files stay flat?

Clients (threads, one channel each) loop until the time is up, each request picking at random among: questions,
questions about an image, document ingests (new and known PDFs, some with scanned pages) and questions about
them, transcriptions, screen frames (ScreenOnce on an Xvfb screen, when Xvfb is installed), WatchScreen streams
opened and dropped, answers cancelled after their first words, and bad inputs (undecodable images and audio,
a corrupt PDF, an empty request, a too-long prompt, a decompression bomb). Every request has a deadline, so
the load ends by itself. A sampler reads the daemon's resident memory and open descriptors every second; a
health check is timed alongside.

Prints requests served, statuses by kind (the bad inputs' refusals are expected; anything INTERNAL, UNKNOWN or
DEADLINE_EXCEEDED is not), peak RSS, whether RSS and open files are flat (the last quarter of the run against
the second: RSS within 10% or 64 MB, descriptors within 4), and how long SIGTERM took to stop the daemon.

    python bench/soak.py --minutes 2                      # the tiny test model (written to a temp folder)
    python bench/soak.py --minutes 30 --clients 6 --model M.gguf --mmproj P.gguf
"""
from __future__ import annotations

import argparse
import collections
import io
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import StolenTime, add_model_flags, start_daemon, test_model_args  # noqa: E402
from documents_pdfs import make_report  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import soundfile  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from PIL import Image  # noqa: E402

from omnid.clients.client import OmniClient, text  # noqa: E402
from omnid.proto import omnid_pb2 as pb  # noqa: E402

#: Statuses that mean the daemon failed, whatever was asked.
BAD = ("INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED", "DATA_LOSS")
REQUEST_SECONDS = 120.0


def png(rng: random.Random, side: int = 48) -> bytes:
    pixels = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def wav(rng: random.Random, seconds: float) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 800) * t).astype(np.float32)
    out = io.BytesIO()
    soundfile.write(out, tone, 16000, format="WAV")
    return out.getvalue()


def bomb() -> bytes:
    out = io.BytesIO()
    Image.new("L", (12000, 10000)).save(out, format="PNG")
    return out.getvalue()


class Load:
    """The request kinds, each a function of (client, rng) that raises grpc.RpcError when refused."""

    def __init__(self, screen: bool) -> None:
        self.pdfs = [make_report(pages, lines=8) for pages in (2, 3, 5)]  # known after the first ingest of each
        self.bomb = bomb()
        self.documents: list[str] = []
        self.kinds: list[tuple[str, Callable[[OmniClient, random.Random], object], int]] = [
            ("question", self.question, 6), ("image", self.image, 3), ("ingest", self.ingest, 2),
            ("ask-document", self.ask_document, 2), ("transcribe", self.transcribe, 2),
            ("watch-stream", self.watch, 2), ("cancel", self.cancel, 2), ("bad-input", self.bad_input, 3)]
        if screen:
            self.kinds.append(("screen-frame", self.screen_frame, 2))

    def pick(self, rng: random.Random) -> tuple[str, Callable[[OmniClient, random.Random], object]]:
        name, fn, _ = rng.choices(self.kinds, weights=[w for *_, w in self.kinds])[0]
        return name, fn

    def question(self, c: OmniClient, rng: random.Random) -> object:
        return c.ask(text(f"question {rng.randrange(10**6)}: what next?"), max_tokens=rng.randint(1, 16))

    def image(self, c: OmniClient, rng: random.Random) -> object:
        return c.ask(pb.Part(image=pb.Image(data=png(rng))), text("what is this?"), max_tokens=4)

    def ingest(self, c: OmniClient, rng: random.Random) -> object:
        data = rng.choice(self.pdfs) if rng.random() < 0.6 else make_report(rng.randint(1, 4), lines=rng.randint(1, 9))
        info = c.ingest_document(data, name="soak.pdf")
        self.documents.append(info.document_id)
        return info

    def ask_document(self, c: OmniClient, rng: random.Random) -> object:
        if not self.documents:
            return self.ingest(c, rng)
        return list(c.ask_document(rng.choice(self.documents[-20:]), "what does it say?", max_tokens=8))

    def transcribe(self, c: OmniClient, rng: random.Random) -> object:
        return list(c.transcribe(wav(rng, rng.uniform(1.0, 8.0)), no_store=rng.random() < 0.5))

    def watch(self, c: OmniClient, rng: random.Random) -> object:
        stream = c.watch_screen()
        try:
            return next(iter(stream))
        finally:
            stream.cancel()

    def cancel(self, c: OmniClient, rng: random.Random) -> object:
        stream = c.generate(text("tell a long story"), max_tokens=256)
        try:
            return next(iter(stream))
        finally:
            stream.cancel()

    def screen_frame(self, c: OmniClient, rng: random.Random) -> object:
        return list(c.screen_once("what is on the screen?", max_tokens=4))

    def bad_input(self, c: OmniClient, rng: random.Random) -> object:
        choice = rng.randrange(6)
        if choice == 0:
            return c.ask(pb.Part(image=pb.Image(data=os.urandom(512))), text("x"))
        if choice == 1:
            return list(c.transcribe(b"RIFF" + os.urandom(300)))
        if choice == 2:
            return c.ingest_document(b"%PDF-1.7\n" + os.urandom(2000))
        if choice == 3:
            return c.ask()
        if choice == 4:
            return c.ask(text("word " * 6000))
        return c.ask(pb.Part(image=pb.Image(data=self.bomb)), text("x"))


class Sampler:
    """The daemon's resident memory and open descriptors, once a second (Linux /proc)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))
            except (OSError, StopIteration):
                continue
            self.samples.append((time.monotonic(), rss, fds))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def flat(self) -> tuple[int, bool, bool, str]:
        """Peak RSS, whether RSS and descriptors are flat, and the numbers behind it."""
        n = len(self.samples)
        if n < 8:
            return max((s[1] for s in self.samples), default=0), False, False, "too few samples"
        second = self.samples[n // 4:n // 2]   # after the warm-up: every kind has run, the caches filled
        last = self.samples[3 * n // 4:]
        rss_a, rss_b = statistics.median(s[1] for s in second), statistics.median(s[1] for s in last)
        fds_a, fds_b = max(s[2] for s in second), max(s[2] for s in last)
        rss_flat = rss_b - rss_a <= max(0.10 * rss_a, 64 << 20)
        fds_flat = fds_b - fds_a <= 4
        detail = (f"RSS median {rss_a / 2**20:.0f} MB (2nd quarter) -> {rss_b / 2**20:.0f} MB (last quarter); "
                  f"open files max {fds_a} -> {fds_b}")
        return max(s[1] for s in self.samples), rss_flat, fds_flat, detail


def xvfb() -> tuple[subprocess.Popen | None, str]:
    """An Xvfb screen for ScreenOnce (its display), or (None, why not)."""
    if shutil.which("Xvfb") is None:
        return None, "Xvfb is not installed: no screen frames"
    read, write = os.pipe()
    # -noreset: otherwise the server resets, refusing connections, each time its last client leaves.
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "640x480x24", "-nolisten", "tcp",
                               "-noreset"], pass_fds=(write,), stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    if not number:
        server.kill()
        return None, "Xvfb did not start: no screen frames"
    return server, f":{number}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    add_model_flags(parser)
    args = parser.parse_args()
    stolen = StolenTime()
    tmp = Path(tempfile.mkdtemp(prefix="omnid-soak-"))
    screen, display = xvfb()
    if screen is not None:
        os.environ["DISPLAY"] = display
    model = test_model_args(tmp, args.model, args.mmproj, args.backend, args.decoder)
    daemon = start_daemon(tmp, model, ["--threads", str(args.threads), "--ctx", "4096", "--max-queue", "8",
                                       "--cache-ram", "256M", "--cache-disk", str(tmp / "prompt-cache")])
    load = Load(screen is not None)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    examples: dict[tuple[str, str], str] = {}  # the first message of each refusal, to read what was said
    lock = threading.Lock()
    health_ms: list[float] = []
    sampler = Sampler(daemon.process.pid)
    deadline = time.monotonic() + args.minutes * 60

    def client_loop(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        with OmniClient(f"unix:{daemon.socket}") as c:
            while time.monotonic() < deadline:
                name, fn = load.pick(rng)
                outcome = "OK"
                try:
                    fn(c, rng)
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                    examples.setdefault((name, outcome), exc.details() or "")
                with lock:
                    counts[name, outcome] += 1

    def health_loop() -> None:
        with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                    health_ms.append((time.perf_counter() - t0) * 1000)
                except grpc.RpcError as exc:
                    with lock:
                        counts["health", exc.code().name] += 1
                time.sleep(0.5)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(args.clients)]
    threads.append(threading.Thread(target=health_loop, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.minutes * 60 + REQUEST_SECONDS)
    sampler.stop()
    t0 = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    try:
        code = daemon.process.wait(30)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        code = None
    stop_seconds = time.monotonic() - t0
    if screen is not None:
        screen.kill()
    shutil.rmtree(tmp, ignore_errors=True)

    print(stolen.describe())
    print(f"soak: {args.minutes:g} min, {args.clients} clients, {'with' if screen else 'without'} screen frames "
          f"({display})")
    served = sum(n for (_, outcome), n in counts.items() if outcome == "OK")
    print(f"requests served: {served} of {sum(counts.values())}")
    print(f"{'kind':<14}" + "".join(f"{o:>20}" for o in sorted({o for _, o in counts})))
    for kind in sorted({k for k, _ in counts}):
        print(f"{kind:<14}" + "".join(f"{counts[kind, o]:>20}" for o in sorted({o for _, o in counts})))
    for (kind, outcome), message in sorted(examples.items()):
        print(f"  {kind} {outcome}: {message[:110]}")
    failures = {f"{k}/{o}": n for (k, o), n in counts.items() if o in BAD or (k == "health" and o != "OK")}
    print(f"daemon failures (INTERNAL, UNKNOWN, DEADLINE_EXCEEDED, health errors): {failures or 'none'}")
    if health_ms:
        print(f"health check: median {statistics.median(health_ms):.1f} ms, max {max(health_ms):.1f} ms "
              f"({len(health_ms)} checks)")
    peak, rss_flat, fds_flat, detail = sampler.flat()
    print(f"peak RSS: {peak / 2**20:.0f} MB; RSS flat: {'yes' if rss_flat else 'NO'}; open files flat: "
          f"{'yes' if fds_flat else 'NO'} ({detail})")
    print(f"SIGTERM: exit status {code} after {stop_seconds:.1f} s")
    return 0 if not failures and rss_flat and fds_flat and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
