"""A document larger than the context, asked three ways: cold, reworded, another page; the ingest estimate
of a cold question against the measured one, side by side.

One run, on a 100-page reportlab PDF of ~2,000-token text pages (tables and scans between them) through a real
`omnid serve` whose context holds only a few pages:
  1. ingest: what it says a question reads (pages, tokens) and how long a cold one takes (measured rate);
  2. the first question (cold: its whole page set is prefilled), with the prefill progress events it streamed;
  3. the same question reworded (the same page set: only the question is read);
  4. a question about the next page (a page set that starts like the first: it resumes after the page groups
     the two share).

    python bench/documents_over_context.py                     # tiny test model, 4096-token context
    python bench/documents_over_context.py --model M.gguf --mmproj P.gguf --ctx 32768
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import StolenTime, add_model_flags, start_daemon, test_model_args  # noqa: E402
from documents_pdfs import make_report  # noqa: E402

from omnid.clients.client import OmniClient  # noqa: E402

QUESTIONS = (("cold", "What is the code of page 37?"), ("reworded", "Page 37: which code does it give?"),
             ("next page", "Which code does page 38 give?"))


def ask(client: OmniClient, doc_id: str, question: str, max_tokens: int) -> dict[str, float]:
    """Client-side time to the first answer event, usage, and how many progress events came first."""
    t0 = time.perf_counter()
    first, progress = 0.0, 0
    for event in client.ask_document(doc_id, question, max_tokens=max_tokens):
        kind = event.WhichOneof("event")
        progress += kind == "progress"
        if kind in ("delta", "done") and not first:
            first = time.perf_counter()
        if kind == "done":
            u = event.done.usage
            return {"ttft_s": first - t0, "prefill_s": u.prefill_ms / 1000, "prompt": u.prompt_tokens,
                    "cached": u.cached_tokens, "progress": progress}
    raise RuntimeError("no final message")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_flags(parser)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=4)
    args = parser.parse_args()
    stolen = StolenTime()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pdf = tmp / "report.pdf"
        pdf.write_bytes(make_report(args.pages, lines=30))
        model_args = test_model_args(tmp, args.model, args.mmproj, args.backend, args.decoder)
        daemon = start_daemon(tmp, model_args, ["--threads", str(args.threads), "--ctx", str(args.ctx),
                                                "--cache-disk", "off", "--data-dir", str(tmp / "data")])
        try:
            with OmniClient(f"unix:{daemon.socket}") as client:
                info = client.ingest_document(pdf)
                rows = [(name, ask(client, info.document_id, q, args.max_tokens)) for name, q in QUESTIONS]
                model = client.status().model_name
        finally:
            daemon.stop()
    print(stolen.describe())
    print(f"model: {model}; context {args.ctx}; threads {args.threads}; cpu count {os.cpu_count()}")
    print(f"document: {info.page_count} pages, {info.total_tokens} tokens; ingest says: each question reads about "
          f"{info.question_pages} pages ({info.question_tokens} tokens), a cold one about "
          f"{info.cold_question_seconds:.2f} s")
    print()
    print(f"{'question':12}{'ttft s':>10}{'prefill s':>11}{'prompt':>9}{'cached':>9}{'progress events':>17}")
    for name, r in rows:
        print(f"{name:12}{r['ttft_s']:10.3f}{r['prefill_s']:11.3f}{r['prompt']:9d}{r['cached']:9d}{r['progress']:17d}")
    cold = rows[0][1]
    print(f"estimate vs measured cold prefill: {info.cold_question_seconds:.2f} s vs {cold['prefill_s']:.2f} s "
          f"({info.cold_question_seconds / cold['prefill_s']:.2f}x)")
    for name, r in rows[1:]:
        print(f"{name} vs cold: {cold['ttft_s'] / r['ttft_s']:.1f}x faster to the first token, "
              f"{r['cached'] / r['prompt']:.0%} of its prompt reused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
