"""What `gc.freeze()` at daemon start-up saves: a full garbage collection over a started daemon's objects, before
and after freezing them, side by side in one run.

The daemon (daemon/server.py) collects and freezes once it is ready, so the collector never again re-scans
the modules and model objects that live as long as the process. A full collection that lands inside a request
adds its whole pause to that request's time to first token. This starts the same daemon in this process, on
the tiny test model (or --model), runs a few requests through it, and times gc.collect() unfrozen and then
frozen.

    python bench/gc_freeze.py [--model M.gguf] [--backend mlx] [--runs 5]
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StolenTime, add_model_flags, test_model_args  # noqa: E402

from omnid.clients.client import OmniClient, text  # noqa: E402
from omnid.daemon.config import DaemonConfig  # noqa: E402
from omnid.daemon.server import Daemon  # noqa: E402


def full_collection_ms(runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(parser)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    stolen = StolenTime()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = test_model_args(tmp, args.model, args.mmproj, args.backend, args.decoder)
        config = DaemonConfig(model=model["model"], mmproj=model["mmproj"], backend=model["backend"],
                              context_length=4096, threads=args.threads, cache_disk_dir=None,
                              data_dir=tmp / "data")
        config.socket_path = tmp / "run" / "omnid.sock"
        daemon = Daemon(config)
        daemon.start()
        try:
            with OmniClient(f"unix:{config.socket_path}") as client:
                for i in range(5):
                    client.ask(text(f"Request {i}: tell me about lighthouses."), max_tokens=8)
            tracked = len(gc.get_objects())
            unfrozen = full_collection_ms(args.runs)
            gc.freeze()
            frozen = full_collection_ms(args.runs)
            gc.unfreeze()
        finally:
            daemon.stop()
    print(stolen.describe())
    print(f"a started daemon ({model['backend']}), {tracked:,} objects tracked by the collector")
    print(f"full collection, median of {args.runs}: {unfrozen:.1f} ms unfrozen, {frozen:.3f} ms frozen: "
          f"{unfrozen - frozen:.1f} ms less for any request that a collection lands in")
    return 0


if __name__ == "__main__":
    sys.exit(main())
