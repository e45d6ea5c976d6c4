"""The backends omnid knows, by name: how to recognise a model that is theirs and how to load it.

Adding a backend is one module implementing models/base.Backend plus one entry in BACKENDS below (and one
fixture entry in tests/test_backend_conformance.py, the suite every backend must pass). Everything else
(`omnid serve --backend`, automatic choice, Status) reads this table. The backend modules themselves are
imported only when a model is loaded, so omnid runs where only one runtime is installed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omnid.models.base import Backend, ModelLoadError

GGUF_MAGIC = b"GGUF"
#: A model hub repository id, "owner/name" (anything path-like is a local path that must exist).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_hub_id(model: str) -> bool:
    """'owner/name' names a hub repository; './x', '/x/y' or 'x/y/z' are paths."""
    return _HUB_ID.fullmatch(model) is not None


@dataclass(frozen=True)
class BackendSpec:
    name: str
    #: Whether a model path (or hub id) is this backend's (for --backend auto).
    claims: Callable[[Path, str], bool]
    #: load(model, mmproj, context_length=, threads=, flash_attn=, verbose=, sequences=) -> Backend;
    #: ModelLoadError when it cannot. sequences: decoder sequences held at once (--parallel); verbose: the
    #: backend's own logs on stderr (`omnid serve -v`). The remote backend also takes remote=
    #: (models/remote_backend.RemoteSettings).
    load: Callable[..., Backend]
    aliases: tuple[str, ...] = ()


def _is_gguf(path: Path, model: str) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def _load_llama_cpp(model: str, mmproj: str = "", *, context_length: int, threads: int | None = None,
                    flash_attn: bool = False, verbose: bool = False, sequences: int = 1) -> Backend:
    try:
        from omnid.models.llama_cpp_backend import LlamaCppBackend, _read_gguf_fields
    except ImportError as exc:
        raise ModelLoadError(f"llama-cpp-python is not installed ({exc}); "
                             "install it with: pip install 'omnid[llama]'") from None
    try:  # said in the command line's words (the backend's own message names its mmproj_path parameter)
        architecture = str(_read_gguf_fields(Path(model).expanduser()).get("general.architecture", ""))
    except ModelLoadError:
        architecture = ""  # unreadable: the backend says why
    if architecture == "clip":
        raise ModelLoadError(f"{model} is a multimodal projector (mmproj) file: pass it with --mmproj, and the "
                             "language model with --model")
    return LlamaCppBackend(model, mmproj or None, n_ctx=context_length, n_threads=threads, flash_attn=flash_attn,
                           verbose=verbose, n_sequences=sequences)


def _is_mlx(path: Path, model: str) -> bool:
    if path.is_dir():
        return (path / "config.json").is_file()
    # A hub repo id: mlx-vlm resolves (and, where a hub is reachable, downloads) it.
    return not path.exists() and path.suffix != ".gguf" and looks_like_hub_id(model)


def _load_mlx(model: str, mmproj: str = "", *, context_length: int, threads: int | None = None,
              flash_attn: bool = False, verbose: bool = False, sequences: int = 1) -> Backend:
    if mmproj:
        raise ModelLoadError("--mmproj is for GGUF models; an MLX model folder carries its own encoders")
    from omnid.models.mlx_backend import MlxBackend
    return MlxBackend(model, n_ctx=context_length, verbose=verbose, n_sequences=sequences)


def _never(path: Path, model: str) -> bool:
    return False  # a remote engine is named with --backend remote --remote-url, never guessed from --model


def _load_remote(model: str, mmproj: str = "", *, context_length: int, threads: int | None = None,
                 flash_attn: bool = False, verbose: bool = False, remote: object = None,
                 sequences: int = 1) -> Backend:
    """`sequences`: requests sent to the engine at once (it batches them itself)."""
    from omnid.models.remote_backend import RemoteSettings, connect
    if model or mmproj:
        raise ModelLoadError("--backend remote runs the engine's model: pass --remote-model NAME, not --model or "
                             "--mmproj")
    if not isinstance(remote, RemoteSettings):
        raise ModelLoadError("--backend remote needs --remote-url http(s)://HOST:PORT/v1")
    return connect(remote, context_length, sequences)


#: In the order --backend auto tries them.
BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec("llama.cpp", _is_gguf, _load_llama_cpp, aliases=("llama",)),
    BackendSpec("mlx", _is_mlx, _load_mlx),
    BackendSpec("remote", _never, _load_remote),
)


def backend_names() -> list[str]:
    return [spec.name for spec in BACKENDS]


def backend_spec(name: str) -> BackendSpec:
    """The backend registered under a name or an alias; ModelLoadError naming the choices otherwise."""
    for spec in BACKENDS:
        if name == spec.name or name in spec.aliases:
            return spec
    raise ModelLoadError(f"unknown backend {name!r} (choose auto, {', '.join(backend_names())})")
