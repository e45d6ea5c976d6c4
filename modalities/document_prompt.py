"""A stored document as prompt segments, and the choice of pages when it does not fit the context.

Layout: every page starts with a marker the model can cite ("[Page 12]"); consecutive text pages are joined
into ONE text segment and each scanned page is one image segment after its marker. Few, large segments keep
the prompt cache's key chain short: AskDocument snapshots only the end of the document (the question comes
after it), so the second question on a document restores that one snapshot and pays only for the question.

Page choice: when the pages do not fit, they are ranked by BM25 (a plain, explainable lexical score of the
question's words against each page's text) and taken best first until the token budget is spent, then put back
in page order. Pages without text (scans) score 0: they are used only when there is room after the matches.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from omnid.models.base import ImageSegment, Segment, TextSegment
from omnid.modalities.document_store import StoredPage

SYSTEM = ("You answer questions about the document below. Each page begins with a marker such as [Page 12]. "
          "Answer only from the document and cite the pages you used as (p. 12). If the document does not "
          "say, answer that it does not say.")

_WORD = re.compile(r"\w+")


def marker(page: StoredPage, vision: bool) -> str:
    """The text that stands for the page (the whole page for text; the label before the image for scans)."""
    if page.kind == "image":
        if vision:
            return f"[Page {page.number}: scanned page, shown as an image]\n"
        return f"[Page {page.number}: a scanned page this model cannot see]\n\n"
    return f"[Page {page.number}]\n{page.text}\n\n" if page.text else f"[Page {page.number}: blank]\n\n"


def page_segments(page: StoredPage, vision: bool) -> list[Segment]:
    """One page alone (for counting its tokens): its marker/text, then its image for a scan seen by the model."""
    segments: list[Segment] = [TextSegment(marker(page, vision))]
    if page.kind == "image" and vision:
        assert page.rgb is not None
        segments += [ImageSegment(page.rgb), TextSegment("\n\n")]
    return segments


def layout(pages: Iterable[StoredPage], vision: bool) -> list[Segment]:
    """The pages as few segments: runs of text joined, each seen scan an image segment between them."""
    segments: list[Segment] = []
    run: list[str] = []
    for page in pages:
        for segment in page_segments(page, vision):
            if isinstance(segment, TextSegment):
                run.append(segment.text)
            else:
                segments.append(TextSegment("".join(run)))
                segments.append(segment)
                run = []
    if run:
        segments.append(TextSegment("".join(run)))
    return [s for s in segments if not (isinstance(s, TextSegment) and not s.text)]


def question_segment(question: str) -> TextSegment:
    return TextSegment(f"Question: {question}")


@dataclass(frozen=True)
class PageChoice:
    pages: list[int]
    reason: str


def choose_pages(pages: Sequence[StoredPage], question: str, budget: int, *, whole: bool) -> PageChoice:
    """Pages (in page order) whose tokens fit `budget`, the best BM25 matches for the question first.

    `whole` says whether `pages` is the whole document (for the explanation); the reason names the budget.
    """
    needed = sum(p.tokens for p in pages)
    scores = bm25(question, [p.text for p in pages])
    ranked = sorted(range(len(pages)), key=lambda i: (-scores[i], pages[i].number))
    chosen, used = [], 0
    for i in ranked:
        if used + pages[i].tokens <= budget:
            chosen.append(pages[i].number)
            used += pages[i].tokens
    chosen.sort()
    matched = sum(1 for i in range(len(pages)) if scores[i] > 0)
    scope = "the document" if whole else f"pages {pages[0].number}-{pages[-1].number}"
    reason = (f"{scope} needs {needed} tokens but {budget} fit beside the question and the answer; "
              f"used {len(chosen)} of {len(pages)} pages ({used} tokens), those matching the question best first "
              f"(BM25 over page text; {matched} pages share words with the question)")
    return PageChoice(chosen, reason)


def bm25(query: str, texts: Sequence[str], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 score of each text for the query's words (lower-cased \\w+ words)."""
    docs = [Counter(_WORD.findall(t.lower())) for t in texts]
    terms = set(_WORD.findall(query.lower()))
    if not docs or not terms:
        return [0.0] * len(docs)
    lengths = [sum(d.values()) for d in docs]
    avg = sum(lengths) / len(docs) or 1.0
    n = len(docs)
    idf = {t: math.log(1 + (n - df + 0.5) / (df + 0.5)) for t in terms if (df := sum(1 for d in docs if t in d))}
    scores = []
    for d, length in zip(docs, lengths):
        s = 0.0
        for t, w in idf.items():
            f = d.get(t, 0)
            if f:
                s += w * f * (k1 + 1) / (f + k1 * (1 - b + b * length / avg))
        scores.append(s)
    return scores
