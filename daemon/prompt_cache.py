"""The shared prompt cache: decoder snapshots at segment boundaries, shared by every client of the daemon.

A prompt is a chain of segments (template pieces, system text, images, audio clips, document pages, the
question). The key of a prefix is a hash chain over the model fingerprint, the chat template and the content
digests of its segments in order, so two prompts share a key exactly when they share that prefix, whatever
tokens the media turned into. The value is a `Snapshot` of the whole decoder sequence at that boundary:
restoring it is correct for attention, sliding-window and recurrent/hybrid decoders alike.

Two tiers:
  * RAM: an LRU bounded in bytes; pinned entries are never evicted (Prefill with pin).
  * disk (optional): one file per entry, surviving restarts, LRU-bounded in bytes too. Files are written whole
    and swapped in (os.replace), never truncated, so a hit maps the file instead of reading it. Each carries
    the model fingerprint and a checksum of its payload (`payload_checksum`); a file with the wrong
    fingerprint, a bad checksum or a torn write is deleted and counts as a miss, never as an answer.

Thread-safe: the scheduler's worker writes, gRPC threads read statistics.
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from omnid.daemon.file_map import map_file
from omnid.models.base import CHECKSUM_SIZE, Snapshot, payload_checksum

log = logging.getLogger(__name__)

_MAGIC = b"OMNIDPC2"
# magic, fingerprint length, n_tokens, payload length, payload_checksum of the payload
_HEADER = struct.Struct(f"<8sHQQ{CHECKSUM_SIZE}s")


def chain_keys(root: str, digests: Iterable[str]) -> list[str]:
    """Keys of every prefix of a segment chain: keys[i] is the key of the first i+1 segments."""
    keys, key = [], root
    for digest in digests:
        key = hashlib.blake2b(f"{key}|{digest}".encode(), digest_size=20).hexdigest()
        keys.append(key)
    return keys


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    tokens_reused: int = 0
    ram_bytes: int = 0
    ram_budget_bytes: int = 0
    disk_bytes: int = 0
    disk_budget_bytes: int = 0
    entries: int = 0
    evictions: int = 0
    pinned: int = 0
    disk_hits: int = 0
    rejected: int = 0


class PromptCache:
    """Snapshots by prefix key, in RAM (LRU by bytes) and optionally on disk."""

    def __init__(self, fingerprint: str, ram_budget_bytes: int, disk_dir: Path | None = None,
                 disk_budget_bytes: int = 0) -> None:
        self.fingerprint = fingerprint
        self.ram_budget_bytes = ram_budget_bytes
        self.disk_dir = disk_dir
        self.disk_budget_bytes = disk_budget_bytes if disk_dir else 0
        self._ram: OrderedDict[str, Snapshot] = OrderedDict()
        self._ram_bytes = 0
        self._pinned: set[str] = set()
        self._lock = threading.Lock()
        self._stats = CacheStats()
        self._pending: dict[str, Snapshot] = {}
        self._writes: queue.Queue[str | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        if disk_dir:
            disk_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._writer = threading.Thread(target=self._write_loop, name="omnid-cache-writer", daemon=True)
            self._writer.start()

    # -- lookups ---------------------------------------------------------------------------------------------

    def longest_prefix(self, keys: list[str], limit: int) -> tuple[int, Snapshot | None]:
        """The longest cached prefix among keys[:limit]: (number of segments, snapshot), or (0, None)."""
        for i in range(limit, 0, -1):
            snapshot = self.get(keys[i - 1])
            if snapshot is not None:
                return i, snapshot
        return 0, None

    def get(self, key: str) -> Snapshot | None:
        with self._lock:
            snapshot = self._ram.get(key)
            if snapshot is not None:
                self._ram.move_to_end(key)
                return snapshot
            snapshot = self._pending.get(key)
            if snapshot is not None:
                return snapshot
        snapshot = self._read_disk(key)
        if snapshot is not None:
            with self._lock:
                self._stats.disk_hits += 1
            self._put_ram(key, snapshot)
        return snapshot

    def record_lookup(self, reused_tokens: int) -> None:
        """Count one request's outcome: a hit when it reused any tokens."""
        with self._lock:
            if reused_tokens:
                self._stats.hits += 1
                self._stats.tokens_reused += reused_tokens
            else:
                self._stats.misses += 1

    # -- insertion and pinning -------------------------------------------------------------------------------

    def put(self, key: str, snapshot: Snapshot) -> None:
        """Keep a snapshot in RAM and, with a disk tier, queue it for the disk writer.

        The write happens on the writer thread so the decoder never waits for the disk; until it lands, the
        RAM tier (or the pending queue) answers for the key.
        """
        self._put_ram(key, snapshot)
        if self.disk_dir:
            with self._lock:
                self._pending[key] = snapshot
            self._writes.put(key)

    def flush(self) -> None:
        """Wait until every queued disk write has landed."""
        self._writes.join()

    def close(self) -> None:
        """Finish the disk writes and stop the writer (the daemon calls it at shutdown)."""
        if self._writer is not None:
            self._writes.put(None)
            self._writer.join()
            self._writer = None

    def contains(self, key: str) -> bool:
        with self._lock:
            if key in self._ram or key in self._pending:
                return True
        return bool(self.disk_dir and self._disk_path(key).exists())

    def pin(self, key: str) -> None:
        with self._lock:
            self._pinned.add(key)

    def unpin(self, key: str) -> bool:
        with self._lock:
            was = key in self._pinned
            self._pinned.discard(key)
            self._evict_ram()
            return was

    def drop(self, key: str) -> None:
        """Forget an entry that turned out unusable (its restore failed)."""
        with self._lock:
            self._pending.pop(key, None)
            snapshot = self._ram.pop(key, None)
            if snapshot is not None:
                self._ram_bytes -= snapshot.nbytes
        if self.disk_dir:
            self._disk_path(key).unlink(missing_ok=True)

    def stats(self) -> CacheStats:
        with self._lock:
            s = CacheStats(**vars(self._stats))
            s.ram_bytes, s.entries, s.pinned = self._ram_bytes, len(self._ram), len(self._pinned)
            s.ram_budget_bytes, s.disk_budget_bytes = self.ram_budget_bytes, self.disk_budget_bytes
        s.disk_bytes = self._disk_usage()[0]
        return s

    # -- RAM tier --------------------------------------------------------------------------------------------

    def _put_ram(self, key: str, snapshot: Snapshot) -> None:
        with self._lock:
            old = self._ram.pop(key, None)
            if old is not None:
                self._ram_bytes -= old.nbytes
            if snapshot.nbytes > self.ram_budget_bytes and key not in self._pinned:
                return  # larger than the whole budget: the disk tier may still hold it
            self._ram[key] = snapshot
            self._ram_bytes += snapshot.nbytes
            self._evict_ram()

    def _evict_ram(self) -> None:
        """Drop least recently used unpinned entries until the budget holds (caller holds the lock)."""
        for key in list(self._ram):
            if self._ram_bytes <= self.ram_budget_bytes:
                break
            if key in self._pinned:
                continue
            self._ram_bytes -= self._ram.pop(key).nbytes
            self._stats.evictions += 1

    # -- disk tier -------------------------------------------------------------------------------------------

    def _disk_path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / f"{key}.snap"

    def _write_loop(self) -> None:
        while True:
            key = self._writes.get()
            try:
                if key is None:
                    return
                with self._lock:
                    snapshot = self._pending.get(key)
                if snapshot is not None:
                    self._write_disk(key, snapshot)
                    with self._lock:
                        if self._pending.get(key) is snapshot:
                            del self._pending[key]
            finally:
                self._writes.task_done()

    def _write_disk(self, key: str, snapshot: Snapshot) -> None:
        if snapshot.nbytes > self.disk_budget_bytes:
            return
        path = self._disk_path(key)
        fp = self.fingerprint.encode()
        header = _HEADER.pack(_MAGIC, len(fp), snapshot.n_tokens, snapshot.nbytes,
                              payload_checksum(snapshot.payload))
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(header + fp)
                f.write(snapshot.payload)
            os.replace(tmp, path)  # readers never see a half-written entry
        except OSError as exc:
            log.warning("prompt cache: could not write %s: %s", path, exc)
            tmp.unlink(missing_ok=True)
            return
        self._evict_disk()

    def _read_disk(self, key: str) -> Snapshot | None:
        if not self.disk_dir:
            return None
        path = self._disk_path(key)
        try:
            with open(path, "rb") as f:
                snapshot = self._parse(map_file(f))
        except OSError:
            return None
        if snapshot is None:
            log.warning("prompt cache: refusing %s (other model, corrupt or truncated)", path.name)
            with self._lock:
                self._stats.rejected += 1
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # the disk tier's LRU order is the files' modification times
        return snapshot

    def _parse(self, data: memoryview) -> Snapshot | None:
        """Check one entry: header, fingerprint, then the payload against its length and checksum."""
        if len(data) < _HEADER.size:
            return None
        magic, fp_len, n_tokens, n_payload, checksum = _HEADER.unpack_from(data)
        start = _HEADER.size + fp_len
        if magic != _MAGIC or bytes(data[_HEADER.size:start]) != self.fingerprint.encode():
            return None
        payload = data[start:]
        if len(payload) != n_payload or payload_checksum(payload) != checksum:
            return None  # torn, longer than written (as wrong), or damaged
        return Snapshot(n_tokens=n_tokens, payload=payload, checked=True)

    def _disk_usage(self) -> tuple[int, list[tuple[float, int, Path]]]:
        if not self.disk_dir:
            return 0, []
        files = []
        for path in self.disk_dir.glob("*.snap"):
            try:
                st = path.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        return sum(size for _, size, _ in files), files

    def _evict_disk(self) -> None:
        total, files = self._disk_usage()
        with self._lock:
            pinned = {self._disk_path(k) for k in self._pinned}
        for _, size, path in sorted(files):
            if total <= self.disk_budget_bytes:
                break
            if path in pinned:
                continue
            path.unlink(missing_ok=True)
            total -= size
            with self._lock:
                self._stats.evictions += 1
