"""Time to first token, turn by turn, in a 10-turn conversation over the Chat RPC: cached vs cold, side by side.

Turn 1 is an image and a long text (--first-tokens, 2k by default); every later turn a short question. Each
request re-sends the whole history (the answers as the daemon returned them), as a chat app does. In one run:
  cached  the conversation as it goes: each turn reuses the turns before it from the prompt cache;
  cold    the same history afterwards, with a nonce in the system text, so nothing but the template's first
          tokens is found in the cache: everything is prefilled.
Turn 1's cached time is turn 1 sent again at once (its whole prompt cached). Time to first token is the
daemon's own (usage.time_to_first_token_ms). Goal: every turn after the first within 2x of turn 1's cached time,
whatever the history length.

    python bench/conversation.py [--model M --mmproj P] [--backend mlx] [--decoder llama] [--turns 10]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StolenTime, add_model_flags, start_daemon, test_model_args  # noqa: E402

from omnid.clients.client import OmniClient, image, text  # noqa: E402
from omnid.proto import omnid_pb2 as pb  # noqa: E402

WORDS = ("the a of to and in is it you that was for on are with as his they be at one have this from or had by "
         "hello world what image sound describe say see color red green blue yes no please thank").split()
SYSTEM = "You answer questions about what the user shows you."


def picture(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def filler(words: int, seed: int) -> str:
    return " ".join(np.random.default_rng(seed).choice(WORDS, size=words))


def turn(client: OmniClient, system: str, messages: list[pb.ChatMessage], max_tokens: int) -> pb.ChatFinal:
    request = pb.ChatRequest(messages=[pb.ChatMessage(role="system", parts=[text(system)]), *messages],
                             thinking=False, max_tokens=max_tokens)
    finals = [e.done for e in client.chat(request) if e.WhichOneof("event") == "done"]
    return finals[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(parser, threads=2)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--first-tokens", type=int, default=2000, help="tokens of text in turn 1")
    parser.add_argument("--answer-tokens", type=int, default=32)
    args = parser.parse_args()
    stolen = StolenTime()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_args = test_model_args(tmp, args.model, args.mmproj, args.backend, args.decoder)
        daemon = start_daemon(tmp, model_args, ["--threads", str(args.threads), "--ctx", "8192",
                                                "--cache-ram", "4G"])
        try:
            with OmniClient(f"unix:{daemon.socket}") as client:
                rows = run(client, args)
        finally:
            daemon.stop()
    print(stolen.describe())
    print(f"backend {model_args['backend']}{'' if args.model else f' (test model, {args.decoder})'}; "
          f"turn 1: an image + {args.first_tokens} tokens of text; answers of {args.answer_tokens} tokens")
    print(f"{'turn':>4} {'prompt':>7} {'cached':>7} {'TTFT cached':>12} {'TTFT cold':>10} {'cold/cached':>12} "
          f"{'vs turn 1':>10}")
    first = rows[0][2]
    for i, (prompt, cached, warm, cold) in enumerate(rows, start=1):
        print(f"{i:>4} {prompt:>7} {cached:>7} {warm:>10.1f}ms {cold:>8.1f}ms {cold / warm:>11.1f}x "
              f"{warm / first:>9.2f}x")
    worst = max(r[2] / first for r in rows[1:])
    print(f"goal: every turn after the first within 2x of turn 1's cached TTFT: worst {worst:.2f}x "
          f"{'MET' if worst <= 2 else 'NOT MET'}")
    return 0


def run(client: OmniClient, args: argparse.Namespace) -> list[tuple[int, int, float, float]]:
    """(prompt tokens, cached tokens, cached TTFT ms, cold TTFT ms) per turn."""
    probe = client.ask(text(filler(400, 3)), max_tokens=1).usage.prompt_tokens  # words per token, about
    words = int(args.first_tokens * 400 / max(probe, 1))
    opening = pb.ChatMessage(role="user", parts=[image(picture(1)), text(filler(words, 2))])
    history: list[pb.ChatMessage] = []
    finals: list[pb.ChatFinal] = []
    for k in range(args.turns):
        history.append(opening if k == 0 else pb.ChatMessage(role="user", parts=[text(f"And question {k}?")]))
        final = turn(client, SYSTEM, history, args.answer_tokens)
        if k == 0:  # turn 1 again, its whole prompt cached (the answer comes out the same, greedy)
            final = turn(client, SYSTEM, history, args.answer_tokens)
        finals.append(final)
        history.append(pb.ChatMessage(role="assistant", parts=[text(final.text)] if final.text else []))
    rows = []
    for k, final in enumerate(finals):
        cold = turn(client, f"[{k}-{np.random.default_rng().integers(1 << 30)}] {SYSTEM}", history[: 2 * k + 1],
                    args.answer_tokens)
        u = final.usage
        rows.append((u.prompt_tokens, u.cached_tokens, u.time_to_first_token_ms, cold.usage.time_to_first_token_ms))
    return rows


if __name__ == "__main__":
    sys.exit(main())
