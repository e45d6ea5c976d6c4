"""Turning next-token logits into a token: greedy, or temperature with top-k / top-p, seeded.

Sampling lives in the daemon, not the backend, so both backends pick tokens the same way and equal requests
(same prompt, same settings, same seed) give equal answers whatever backend or cache state served them.
"""
from __future__ import annotations

import numpy as np

# The settings are defined with the pipelines' view of the decoder (a pipeline sets them; only this module
# turns them into tokens).
from omnid.modalities.decoder import SamplingParams

__all__ = ["DEFAULT_SEED", "Sampler", "SamplingParams"]

#: The seed used when a request gives none: answers are reproducible by default.
DEFAULT_SEED = 0x6F6D6E69


class Sampler:
    """Picks tokens for one generation; holds the seeded random state of that generation."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed or DEFAULT_SEED)

    def sample(self, logits: np.ndarray) -> int:
        p = self.params
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / p.temperature
        candidates = np.arange(len(scaled))
        if p.top_k:
            k = min(p.top_k, len(scaled))
            candidates = np.argpartition(-scaled, k - 1)[:k]
        order = candidates[np.argsort(-scaled[candidates])]
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        if p.top_p and p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[self._rng.choice(len(order), p=probs)])
