"""The daemon's settings and where it keeps things on disk.

Everything stays on this machine, under the user's own directories:
  socket        $XDG_RUNTIME_DIR/omnid/omnid.sock (or /tmp/omnid-$UID/omnid.sock), in a 0700 directory
  data          $XDG_DATA_HOME/omnid (~/.local/share/omnid): documents, meetings, screen history (SQLite)
  cache         $XDG_CACHE_HOME/omnid (~/.cache/omnid): the prompt cache's disk tier, the default model
  token         $XDG_CONFIG_HOME/omnid/token (~/.config/omnid/token): the TCP and HTTP endpoints' token (0600)
Clients find the socket the same way (or through OMNID_SOCKET), so `omnid serve` and `omni ask` agree
without flags.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from omnid.common.paths import default_socket_path, default_token_path, private_dir, runtime_dir
from omnid.models.context_size import ContextPlan

__all__ = ["DaemonConfig", "cache_dir", "data_dir", "default_ram_budget", "default_socket_path",
           "default_token_path", "private_dir", "runtime_dir"]


def data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "omnid"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "omnid"


def default_ram_budget() -> int:
    """A quarter of the memory available now, between 256 MiB and 16 GiB."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (ValueError, OSError):
            available = 4 << 30
    return max(256 << 20, min(16 << 30, available // 4))


@dataclass
class DaemonConfig:
    model: str = ""                      # empty: the embedded default model
    mmproj: str = ""
    backend: str = "auto"                # "auto" or a registered name (models/registry.py)
    #: Tokens of context; 0 = the model's trained context, capped by what memory holds (models/context_size.py).
    context_length: int = 0
    #: How the context was chosen (set at start-up, when the model's shapes are read).
    context_plan: ContextPlan | None = None
    #: Decoder sequences held at once (--parallel); 0 = as many as memory holds, up to 4 (context_size.py).
    parallel: int = 0
    threads: int | None = None
    flash_attn: bool = False
    socket_path: Path = field(default_factory=default_socket_path)
    tcp: str = ""                        # "127.0.0.1:PORT", loopback only, token required
    http: str = ""                       # "127.0.0.1:PORT": the OpenAI-compatible HTTP API, loopback, same token
    token_file: Path | None = None
    max_queue: int = 16
    #: Long-lived streams (WatchScreen, RecordMeeting) open at once; more get RESOURCE_EXHAUSTED (admission.py).
    max_streams: int = 8
    default_max_tokens: int = 512
    cache_ram_bytes: int = field(default_factory=default_ram_budget)
    cache_disk_dir: Path | None = field(default_factory=lambda: cache_dir() / "prompt-cache")
    cache_disk_bytes: int = 8 << 30
    data_dir: Path = field(default_factory=data_dir)
    #: Size of the screen history (SQLite); the oldest observations go first once it is full.
    screen_history_bytes: int = 256 << 20
    #: Folders whose files a client may name by path (IngestDocument, Transcribe); the data dir is not implied.
    allow_read: list[Path] = field(default_factory=list)
    #: IngestDocument refuses PDFs with more pages (RESOURCE_EXHAUSTED).
    max_document_pages: int = 500
    #: Stop once this process (the one that started the daemon) is gone, so a crashed app or test run leaves no model
    #: loaded. The CLI records it before loading anything: a parent that dies during a slow load is still noticed.
    parent_pid: int | None = None
    #: Free the model after this many seconds without requests; the next request loads it again (0 = never:
    #: the point of omnid is a warm model).
    idle_unload_seconds: float = 0.0
    #: Backend logs (llama.cpp's, mlx-vlm's timings) on stderr.
    verbose: bool = False
    #: --backend remote: the engines' base URLs (".../v1"), the model they serve (empty: the first listed), the
    #: file holding their API token, and whether plain http may leave this machine.
    remote_urls: list[str] = field(default_factory=list)
    remote_model: str = ""
    remote_token_file: Path | None = None
    remote_insecure: bool = False
