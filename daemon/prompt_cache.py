"""The shared prompt cache: decoder snapshots of prompt prefixes, shared by every client of the daemon.

An entry is a `Snapshot` of the whole decoder sequence after some prefix, with that prefix's `TokenChain`
(one code per text token or media item; see token_chain.py) and its key (a hash of the chain). Two kinds:
  * "snapshot": taken where a prompt asks for it (after a system text, a document, an image; a prompt's end);
  * "checkpoint": taken inside long runs of text during a prefill, on a token grid and just before a long
    prompt's end, so decoders that cannot be cut back (recurrent and hybrid ones: Nemotron-H) can resume near
    where a new prompt stops matching an old one.
`longest_prefix` finds the entry sharing the most units with a new prompt: every entry is indexed under the
anchor keys its chain passes (one per `ANCHOR` units), so a lookup hashes the prompt once and compares token
arrays only for entries that already share its deepest anchor.

Two tiers:
  * RAM: an LRU bounded in bytes; pinned entries are never evicted (Prefill with pin). A lookup refreshes
    every entry that is a prefix of the prompt, so eviction takes the ones no recent prompt passed through.
  * disk (optional): one file per entry, surviving restarts, LRU-bounded in bytes too. A file carries the
    model fingerprint, its own chain (so it is refused under another entry's name) and a checksum; a hit reads
    the file into memory and checks that copy, so nothing another process does to the file afterwards (a
    truncation, flipped bytes) can reach the decoder. Files are written whole and swapped in (os.replace);
    temporary files a crashed daemon left behind are removed at start-up.

Thread-safe: the scheduler's worker writes, gRPC threads read statistics.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import xxhash

from omnid.daemon.token_chain import ANCHOR, ChainHasher, TokenChain
from omnid.models.base import CHECKSUM_SIZE, Snapshot

log = logging.getLogger(__name__)

EntryKind = Literal["snapshot", "checkpoint"]
_KINDS: tuple[EntryKind, ...] = ("snapshot", "checkpoint")

_MAGIC = b"OMNIDPC3"
# magic, fingerprint length, kind, units, media units, n_tokens, payload length, checksum of all that follows
_HEADER = struct.Struct(f"<8sHBQQQQ{CHECKSUM_SIZE}s")
_TMP = re.compile(r"\.tmp(\d+)$")


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
    #: How hits came: the live sequence as it was or cut back, a snapshot, a checkpoint.
    live_hits: int = 0
    snapshot_hits: int = 0
    checkpoint_hits: int = 0
    #: RAM bytes held by checkpoints (part of ram_bytes).
    checkpoint_bytes: int = 0


@dataclass(frozen=True)
class Entry:
    key: str
    chain: TokenChain
    kind: EntryKind


@dataclass(frozen=True)
class Match:
    """The best cached entry for a prompt: `shared` units of its chain equal the prompt's first units."""

    entry: Entry
    shared: int


class PromptCache:
    """Snapshots by prefix, in RAM (LRU by bytes) and optionally on disk."""

    def __init__(self, fingerprint: str, ram_budget_bytes: int, disk_dir: Path | None = None,
                 disk_budget_bytes: int = 0) -> None:
        self.fingerprint = fingerprint
        self.ram_budget_bytes = ram_budget_bytes
        self.disk_dir = disk_dir
        self.disk_budget_bytes = disk_budget_bytes if disk_dir else 0
        #: Every entry known, in RAM or on disk, and the anchors it is indexed under.
        self._entries: dict[str, Entry] = {}
        self._anchors_of: dict[str, list[str]] = {}
        self._by_anchor: dict[str, set[str]] = {}
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
            self._load_disk_index()
            self._writer = threading.Thread(target=self._write_loop, name="omnid-cache-writer", daemon=True)
            self._writer.start()

    # -- keys --------------------------------------------------------------------------------------------------

    def hasher(self, chain: TokenChain) -> ChainHasher:
        """Prefix and anchor keys of a chain under this model."""
        return ChainHasher(self.fingerprint, chain.codes)

    def key_of(self, chain: TokenChain) -> str:
        return self.hasher(chain).key(len(chain))

    # -- lookups ---------------------------------------------------------------------------------------------

    def longest_prefix(self, chain: TokenChain, *, whole_entries_only: bool,
                       hasher: ChainHasher | None = None) -> Match | None:
        """The entry sharing the most leading units with `chain`.

        whole_entries_only: the entry must be a prefix of `chain` (a decoder that cannot be cut back resumes
        only from where an entry ends); otherwise any entry counts for the units it shares (the caller restores
        it and cuts it back). Ties go to the shorter entry: it is cheaper to restore.
        """
        anchors = (hasher or self.hasher(chain)).anchors()
        best: Match | None = None
        seen: set[str] = set()
        with self._lock:
            for j in range(len(anchors) - 1, -1, -1):
                if best is not None and best.shared >= (j + 1) * ANCHOR:
                    break  # entries found only under shallower anchors share fewer units
                for key in self._by_anchor.get(anchors[j], ()):
                    if key in seen:
                        continue
                    seen.add(key)
                    entry = self._entries[key]
                    shared = entry.chain.common_prefix(chain)
                    if shared == 0 or whole_entries_only and shared < len(entry.chain):
                        continue
                    if best is None or (shared, -len(entry.chain)) > (best.shared, -len(best.entry.chain)):
                        best = Match(entry, shared)
                    if whole_entries_only or shared == len(entry.chain):
                        self._touch(key)  # on this prompt's path: keep it
        return best

    def get(self, key: str) -> Snapshot | None:
        with self._lock:
            snapshot = self._ram.get(key)
            if snapshot is not None:
                self._ram.move_to_end(key)
                return snapshot
            snapshot = self._pending.get(key)
            if snapshot is not None:
                return snapshot
            entry = self._entries.get(key)
        if entry is None:
            return None
        snapshot = self._read_disk(entry)
        if snapshot is not None:
            with self._lock:
                self._stats.disk_hits += 1
            self._put_ram(entry, snapshot)
        return snapshot

    def record_lookup(self, reused_tokens: int, source: str = "") -> None:
        """Count one request's outcome: a hit when it reused any tokens, by where they came from."""
        with self._lock:
            if reused_tokens:
                self._stats.hits += 1
                self._stats.tokens_reused += reused_tokens
                if source in ("live", "snapshot", "checkpoint"):
                    setattr(self._stats, f"{source}_hits", getattr(self._stats, f"{source}_hits") + 1)
            else:
                self._stats.misses += 1

    # -- insertion and pinning -------------------------------------------------------------------------------

    def put(self, chain: TokenChain, snapshot: Snapshot, kind: EntryKind = "snapshot",
            hasher: ChainHasher | None = None) -> str:
        """Keep a snapshot of `chain` in RAM and, with a disk tier, queue it for the disk writer; returns its key.

        The write happens on the writer thread so the decoder never waits for the disk; until it lands, the
        RAM tier (or the pending queue) answers for the key.
        """
        chain_hasher = hasher or self.hasher(chain)
        key = chain_hasher.key(len(chain))
        entry = Entry(key, chain, kind)
        with self._lock:
            self._index(entry, chain_hasher.anchors(within=len(chain)))
        self._put_ram(entry, snapshot)
        if self.disk_dir:
            with self._lock:
                self._pending[key] = snapshot
            self._writes.put(key)
        return key

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
            return key in self._entries

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
        """Forget an entry: it turned out unusable (its restore failed), or nothing will resume from it."""
        with self._lock:
            self._pending.pop(key, None)
            self._forget_ram(key)
            self._forget_entry(key)
        if self.disk_dir:
            self._disk_path(key).unlink(missing_ok=True)

    def drop_sharing(self, chain: TokenChain, beyond: int) -> int:
        """Drop (and unpin) every entry sharing more than `beyond` leading units with `chain`: all that was made
        from the content after those units (deleting a document). Returns how many entries went."""
        with self._lock:
            keys = [k for k, e in self._entries.items() if e.chain.common_prefix(chain) > beyond]
            self._pinned.difference_update(keys)
        for key in keys:
            self.drop(key)
        return len(keys)

    def stats(self) -> CacheStats:
        with self._lock:
            s = CacheStats(**vars(self._stats))
            s.ram_bytes, s.entries, s.pinned = self._ram_bytes, len(self._ram), len(self._pinned)
            s.ram_budget_bytes, s.disk_budget_bytes = self.ram_budget_bytes, self.disk_budget_bytes
            s.checkpoint_bytes = sum(snap.nbytes + self._entries[k].chain.nbytes()
                                     for k, snap in self._ram.items() if self._entries[k].kind == "checkpoint")
        s.disk_bytes = self._disk_usage()[0]
        return s

    # -- index (caller holds the lock) ---------------------------------------------------------------------

    def _index(self, entry: Entry, anchors: list[str]) -> None:
        old = self._entries.get(entry.key)
        if old is not None:
            self._unindex(old)
        self._entries[entry.key] = entry
        self._anchors_of[entry.key] = anchors
        for anchor in anchors:
            self._by_anchor.setdefault(anchor, set()).add(entry.key)

    def _unindex(self, entry: Entry) -> None:
        for anchor in self._anchors_of.pop(entry.key, []):
            members = self._by_anchor.get(anchor)
            if members is not None:
                members.discard(entry.key)
                if not members:
                    del self._by_anchor[anchor]

    def _touch(self, key: str) -> None:
        if key in self._ram:
            self._ram.move_to_end(key)
        elif self.disk_dir and key not in self._pending:
            try:
                os.utime(self._disk_path(key))
            except OSError:
                pass

    def _forget_entry(self, key: str) -> None:
        """An entry left both tiers: it can no longer be found."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._unindex(entry)

    # -- RAM tier --------------------------------------------------------------------------------------------

    def _put_ram(self, entry: Entry, snapshot: Snapshot) -> None:
        with self._lock:
            self._forget_ram(entry.key)
            size = snapshot.nbytes + entry.chain.nbytes()
            if size > self.ram_budget_bytes and entry.key not in self._pinned:
                if not self.disk_dir:
                    self._forget_entry(entry.key)
                return  # larger than the whole budget: the disk tier may still hold it
            self._ram[entry.key] = snapshot
            self._ram_bytes += size
            self._evict_ram()

    def _forget_ram(self, key: str) -> None:
        snapshot = self._ram.pop(key, None)
        if snapshot is not None:
            self._ram_bytes -= snapshot.nbytes + self._entries[key].chain.nbytes()

    def _evict_ram(self) -> None:
        """Drop least recently used unpinned entries until the budget holds (caller holds the lock)."""
        for key in list(self._ram):
            if self._ram_bytes <= self.ram_budget_bytes:
                break
            if key in self._pinned:
                continue
            self._forget_ram(key)
            self._stats.evictions += 1
            if not self.disk_dir:
                self._forget_entry(key)

    # -- disk tier -------------------------------------------------------------------------------------------

    def _disk_path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / f"{key}.snap"

    def _load_disk_index(self) -> None:
        """Index the entries a previous run left, refuse files that are not what their name says, and remove
        temporary files of daemons that died while writing."""
        assert self.disk_dir is not None
        for path in self.disk_dir.iterdir():
            tmp = _TMP.search(path.name)
            if tmp is not None:
                if not _process_alive(int(tmp.group(1))):
                    path.unlink(missing_ok=True)
                continue
            if path.suffix != ".snap":
                continue
            entry = self._read_disk_header(path)
            if entry is None:
                self._stats.rejected += 1
                path.unlink(missing_ok=True)
                continue
            self._index(entry, self.hasher(entry.chain).anchors(within=len(entry.chain)))

    def _encode_meta(self, entry: Entry, snapshot: Snapshot) -> tuple[bytes, bytes]:
        """The file's header and everything between it and the payload (fingerprint, codes, media)."""
        media = np.array(entry.chain.media, np.int64).reshape(-1, 2)
        meta = self.fingerprint.encode() + entry.chain.codes.astype("<i8").tobytes() + media.astype("<i8").tobytes()
        checksum = _checksum(meta, snapshot.payload)
        header = _HEADER.pack(_MAGIC, len(self.fingerprint.encode()), _KINDS.index(entry.kind), len(entry.chain),
                              len(media), snapshot.n_tokens, snapshot.nbytes, checksum)
        return header, meta

    def _write_loop(self) -> None:
        while True:
            key = self._writes.get()
            try:
                if key is None:
                    return
                with self._lock:
                    snapshot = self._pending.get(key)
                    entry = self._entries.get(key)
                if snapshot is not None and entry is not None:
                    self._write_disk(entry, snapshot)
                with self._lock:
                    if snapshot is not None and self._pending.get(key) is snapshot:
                        del self._pending[key]
                        if key not in self._ram and not self._disk_path(key).exists():
                            self._forget_entry(key)  # in neither tier (too large, or the write failed)
            finally:
                self._writes.task_done()

    def _write_disk(self, entry: Entry, snapshot: Snapshot) -> None:
        header, meta = self._encode_meta(entry, snapshot)
        if len(header) + len(meta) + snapshot.nbytes > self.disk_budget_bytes:
            return
        path = self._disk_path(entry.key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(header + meta)
                f.write(snapshot.payload)
            os.replace(tmp, path)  # readers never see a half-written entry
        except OSError as exc:
            log.warning("prompt cache: could not write %s: %s", path, exc)
            tmp.unlink(missing_ok=True)
            return
        self._evict_disk()

    def _read_disk_header(self, path: Path) -> Entry | None:
        """An entry's chain from its file, or None when the file is not a usable entry under that name."""
        try:
            with open(path, "rb") as f:
                head = f.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    return None
                magic, fp_len, kind, n_units, n_media, _, n_payload, _ = _HEADER.unpack(head)
                if magic != _MAGIC or kind >= len(_KINDS):
                    return None
                meta = f.read(fp_len + 8 * n_units + 16 * n_media)
                size = os.fstat(f.fileno()).st_size
        except OSError:
            return None
        if len(meta) != fp_len + 8 * n_units + 16 * n_media or size != _HEADER.size + len(meta) + n_payload:
            return None
        if meta[:fp_len] != self.fingerprint.encode():
            return None
        codes = np.frombuffer(meta, "<i8", n_units, fp_len).astype(np.int64)
        media = np.frombuffer(meta, "<i8", 2 * n_media, fp_len + 8 * n_units).reshape(-1, 2)
        chain = TokenChain(codes, tuple((int(a), int(n)) for a, n in media))
        if self.key_of(chain) != path.stem:
            return None  # a file copied over another entry's: its chain is not what its name says
        return Entry(path.stem, chain, _KINDS[kind])

    def _read_disk(self, entry: Entry) -> Snapshot | None:
        """The entry's snapshot, read into memory and checked there (the file may change after this)."""
        if not self.disk_dir:
            return None
        path = self._disk_path(entry.key)
        data = _read_whole(path)
        snapshot = None if data is None else self._parse(memoryview(data), entry)
        if snapshot is None:
            log.warning("prompt cache: refusing %s (other model, corrupt or truncated)", path.name)
            with self._lock:
                self._stats.rejected += 1
                self._forget_entry(entry.key)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # the disk tier's LRU order is the files' modification times
        return snapshot

    def _parse(self, data: memoryview, entry: Entry) -> Snapshot | None:
        """Check one file's bytes against the indexed entry: header, chain, payload length and checksum."""
        if len(data) < _HEADER.size:
            return None
        magic, fp_len, kind, n_units, n_media, n_tokens, n_payload, checksum = _HEADER.unpack_from(data)
        start = _HEADER.size + fp_len + 8 * n_units + 16 * n_media
        if magic != _MAGIC or len(data) != start + n_payload or n_units != len(entry.chain):
            return None
        if bytes(data[_HEADER.size:_HEADER.size + fp_len]) != self.fingerprint.encode():
            return None
        codes = np.frombuffer(data, "<i8", n_units, _HEADER.size + fp_len)
        if not np.array_equal(codes, entry.chain.codes) or _checksum(data[_HEADER.size:]) != checksum:
            return None
        return Snapshot(n_tokens=n_tokens, payload=data[start:], checked=True)

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
                if path.stem not in self._ram and path.stem not in self._pending:
                    self._forget_entry(path.stem)


def _checksum(*parts: bytes | memoryview) -> bytes:
    """XXH3-128 over the parts in order, as `payload_checksum` of their concatenation, without joining them."""
    h = xxhash.xxh3_128()
    for part in parts:
        h.update(part)
    return h.digest()


def _read_whole(path: Path) -> bytearray | None:
    """A file's bytes, read in one go into one buffer (no mapping: a later truncation cannot hurt)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        data = bytearray(size)
        view, done = memoryview(data), 0
        while done < size:
            n = os.readv(fd, [view[done:]])
            if n == 0:
                return None  # shrank while read
            done += n
        return data
    except OSError:
        return None
    finally:
        os.close(fd)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True
