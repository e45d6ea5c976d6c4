"""Which BLAS mlx's CPU matrix products run on: the system's OpenBLAS where there is one (Linux).

Why: the Linux mlx[cpu] wheel links the netlib reference BLAS, whose sgemm is ~10x slower than OpenBLAS's. It
dominates a prefill's attention over a long history: a conversation's new turn costs ~0.3 ms a token per 2k
tokens of history on the test model (bench/conversation.py). The dynamic linker resolves libmlx's cblas_sgemm
in the global symbol scope first, so OpenBLAS loaded there BEFORE mlx is first imported takes those calls (once
mlx is loaded it is too late: its symbols are bound). The products are the same in another summation order, so
logits move at float rounding level: the choice is part of the mlx backend's fingerprint.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_chosen: str | None = None


def choose() -> str:
    """Call before the first `import mlx.core` of the process; returns the BLAS mlx uses ("openblas", "bundled",
    or "system" on macOS, where mlx uses Accelerate)."""
    global _chosen
    if _chosen is None:
        _chosen = "bundled" if "mlx.core" in sys.modules else _load_openblas()
    return _chosen


def _load_openblas() -> str:
    if not sys.platform.startswith("linux"):
        return "system"
    name = ctypes.util.find_library("openblas")
    if name is None:
        return "bundled"
    try:
        lib = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return "bundled"
    return "openblas" if hasattr(lib, "cblas_sgemm") else "bundled"
