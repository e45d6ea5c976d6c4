"""What every `omni` command shares: sampling flags, printing a generating stream and its usage.

Its own module so that clients/cli.py and the area modules (cli_documents, cli_meetings, cli_screen) all
import it at the top, without importing each other.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Iterable

from omnid.clients.client import OmniClient, usage_dict
from omnid.proto import omnid_pb2 as pb

ClientFactory = Callable[[], OmniClient]


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-tokens", type=int, default=0, help="at most this many tokens (default 512)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=0.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")


def sampling_from_args(args: argparse.Namespace) -> pb.Sampling:
    return pb.Sampling(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                       stop=args.stop)


def print_stream(events: Iterable, as_json: bool, extra: dict | None = None) -> pb.Final:
    """Print deltas as they come (or one JSON object at the end); returns the final message."""
    final = pb.Final()
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "delta" and not as_json:
            print(event.delta, end="", flush=True)
        elif kind == "done":
            final = event.done
    if as_json:
        print(json.dumps({"text": final.text, "stop_reason": final.stop_reason,
                          "usage": usage_dict(final.usage), **(extra or {})}))
    else:
        print()
    return final


def print_usage(usage: pb.Usage) -> None:
    """One line of what an answer cost, on stderr (the -v flag)."""
    cached = f"{usage.cached_tokens} cached in {usage.cache_restore_ms:.1f} ms" if usage.cached_tokens else "0 cached"
    print(f"[{usage.prompt_tokens} prompt tokens, {cached}, {usage.generated_tokens} generated, "
          f"first token {usage.time_to_first_token_ms:.0f} ms, {usage.decode_tokens_per_second:.1f} tok/s]",
          file=sys.stderr)
