"""Deciding, for almost nothing, whether a grabbed frame differs from the last one worth looking at.

The fingerprint is a sampled grid of whole pixels: every `step`-th pixel in both directions (step chosen so
the grid is about 480 samples wide), each pixel read as one uint32 (B, G, R and X bytes at once), so a
1920x1080 frame costs one strided copy of ~130k words (~0.2 ms) instead of a hash of 8 MB (~4 ms) or a
block average (~6 ms).

Two decisions use it:
  * identical: the grid equals the previous grab's grid, so nothing needs a second look (no window list, no
    conversion, nothing for the model);
  * near-identical: fewer than `threshold` of the grid's samples differ from the frame last sent to the
    model (a blinking caret, a clock's seconds, a few typed characters). Comparing with the last SENT frame
    rather than the previous grab means slow changes accumulate and are eventually seen.

A change that falls entirely between samples (under `step` pixels in both directions, e.g. a 1-px caret) is
invisible to the fingerprint, on purpose.
"""
from __future__ import annotations

import numpy as np

#: Default fraction of fingerprint samples that must differ for a frame to count as changed.
DEFAULT_THRESHOLD = 0.002
GRID_WIDTH = 480


def grid_step(width: int, grid_width: int = GRID_WIDTH) -> int:
    return max(1, width // grid_width)


def fingerprint(bgrx: np.ndarray, step: int | None = None) -> np.ndarray:
    """The sampled grid of a BGRX frame (H x W x 4 uint8) as a uint32 array."""
    h, w, _ = bgrx.shape
    step = step or grid_step(w)
    packed = bgrx.view(np.uint32).reshape(h, w) if bgrx.flags.c_contiguous else \
        np.ascontiguousarray(bgrx).view(np.uint32).reshape(h, w)
    off = step // 2
    return packed[off::step, off::step].copy()


def changed_fraction(a: np.ndarray, b: np.ndarray | None) -> float:
    """Fraction of samples that differ (1.0 when there is nothing to compare with or the shapes differ)."""
    if b is None or a.shape != b.shape:
        return 1.0
    return float(np.count_nonzero(a != b)) / a.size


def mask_cells(fp: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The fingerprint with the samples under `mask` (same shape, True = excluded) zeroed, as a new array."""
    out = fp.copy()
    out[mask] = 0
    return out


class ChangeDetector:
    """Remembers the previous grab and the last frame sent, and classifies each new fingerprint."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"the change threshold is a fraction between 0 and 1, got {threshold}")
        self.threshold = threshold or DEFAULT_THRESHOLD
        self._previous: np.ndarray | None = None
        self._sent: np.ndarray | None = None

    def identical(self, fp: np.ndarray) -> bool:
        """True when the grab equals the previous one; remembers this grab either way."""
        same = self._previous is not None and self._previous.shape == fp.shape and np.array_equal(self._previous, fp)
        self._previous = fp
        return same

    def worth_sending(self, masked_fp: np.ndarray) -> bool:
        """True when the (exclusion-masked) fingerprint differs enough from the last frame sent."""
        return changed_fraction(masked_fp, self._sent) >= self.threshold

    def mark_sent(self, masked_fp: np.ndarray) -> None:
        self._sent = masked_fp

    def forget_previous(self) -> None:
        """Make the next grab count as new (after a pause, or when a frame could not be sent)."""
        self._previous = None
