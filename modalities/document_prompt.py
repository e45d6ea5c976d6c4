"""A stored document as prompt segments, and the choice of pages when it does not fit the context.

Layout: a header naming the document, then the pages in document order, each starting with a marker the model
can cite ("[Page 12]"), then the question. The pages are gathered into groups of consecutive pages (about as
many tokens as the session's checkpoint interval, so that the snapshots fit the cache's RAM budget); within a
group consecutive text pages are ONE text segment and each scanned page is one image segment after its
marker, and every group ends at a cache point. Why groups and document order: two questions whose page sets
start alike resume at the last group boundary they share, and a page set is reused whatever the question (it
comes last). Grouping from the first page on is prefix-stable: the same leading pages make the same groups.
The header makes every prompt of one document start alike and unlike any other document's, which is how
deleting a document finds the cache entries of all its page sets.

Page choice: when the pages do not fit, they are ranked by BM25 (a plain, explainable lexical score of the
question's words against each page's text) and taken best first until the token budget is spent, then put back
in page order. Pages without text (scans) score 0: they are used only when there is room after the matches.
A question whose best matches (`best_matches`) all lie in the page set of an earlier question that is still in
the prompt cache is answered from that set (the daemon checks the cache): a reworded question then reads only
itself, where its own ranking would have filled the rest of the budget with other pages.
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


def header(name: str, document_id: str) -> TextSegment:
    """The line before a document's pages: its name, and its id (so no two documents' prompts start alike)."""
    return TextSegment(f"[Document: {name} ({document_id[:16]})]\n")


def page_groups(pages: Sequence[StoredPage], min_tokens: int) -> list[list[StoredPage]]:
    """Consecutive pages gathered until a group holds at least `min_tokens` tokens (the last may hold fewer)."""
    groups: list[list[StoredPage]] = []
    current: list[StoredPage] = []
    tokens = 0
    for page in pages:
        current.append(page)
        tokens += page.tokens
        if tokens >= min_tokens:
            groups.append(current)
            current, tokens = [], 0
    if current:
        groups.append(current)
    return groups


def grouped_layout(pages: Sequence[StoredPage], vision: bool, group_tokens: int) -> list[list[Segment]]:
    """The pages' segments, group by group (see page_groups): each group ends at a cache point."""
    return [layout(group, vision) for group in page_groups(pages, group_tokens)]


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


def pages_per_question(page_tokens: Sequence[int], budget: int) -> tuple[int, int]:
    """About how many pages of a document a question reads when `budget` tokens fit beside it, and how many
    tokens those are (a page set is filled up to the budget; pages of average size)."""
    total = sum(page_tokens)
    if not total or total <= budget:
        return len(page_tokens), total
    return max(1, int(budget * len(page_tokens) / total)), budget


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


#: A page is one of a question's best matches when it scores at least this share of the best page's score.
BEST_MATCH_SHARE = 0.5


def best_matches(pages: Sequence[StoredPage], question: str) -> set[int]:
    """The numbers of the pages matching the question best (empty when no page shares a word with it)."""
    scores = bm25(question, [p.text for p in pages])
    best = max(scores, default=0.0)
    return {p.number for p, s in zip(pages, scores) if best > 0 and s >= BEST_MATCH_SHARE * best}


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
