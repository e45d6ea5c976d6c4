"""The llama.cpp backend: one GGUF text model (+ optional mmproj) behind the `Backend` interface.

Why the low-level API: llama-cpp-python's chat handlers take images only and clear the KV cache on every request,
and `Llama.save_state` copies the whole n_batch x n_vocab scores array. The daemon needs audio, a prompt cache
keyed on segment hashes and cheap per-sequence snapshots, so this module uses `Llama` only to load the model,
the context and the tokenizer, and drives everything else itself: its own llama_batch + llama_decode for text,
libmtmd (`llama_cpp.mtmd_cpp`) for images and audio, and llama_state_seq_* for per-sequence snapshots.

Several sequences (issue 16): one context with n_seq_max = n_sequences and a KV cache that is NOT unified, so each
sequence owns a stream of the full n_ctx cells (total n_ctx = n_sequences x n_ctx) and its attention reads only
its own cells: a long prompt in one sequence does not slow the others' decode steps, and no sequence can crowd
another out of the cache. The recurrent layers of a hybrid decoder keep one state per sequence anyway.
Measured against a unified cache (bench/kv_streams.py, 4 sequences of 3k tokens on the tiny models): a batched
step 1.9x, one sequence's step 3.5-3.9x and a restore 1.2-2.5x slower unified.
`select` picks the sequence the single-sequence methods act on; `decode_batch` evaluates several in one
llama_decode.

Rule: anything that could GGML_ABORT (SIGABRT, the whole daemon gone) is validated in Python first: file kinds
before loading, media sizes before tokenizing, context room before evaluating, snapshot payloads before
restoring.

Not thread-safe (see Backend): one caller at a time.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .base import (
    CHECKSUM_SIZE,
    AudioSegment,
    Backend,
    ChatFrame,
    ChatRenderer,
    ImageSegment,
    InputError,
    ModelInfo,
    ModelLoadError,
    Segment,
    Snapshot,
    TextSegment,
    check_media,
    check_room,
    payload_checksum,
    weights_fingerprint,
)
from .chat_frame import completion_frame, fallback_template, frame_from_renderer, jinja_renderer

# Shortest audio clip accepted. The parakeet preprocessor normalises each mel bin by its standard deviation over
# n_samples // 160 frames, divided by (frames - 1): below 2 frames it yields NaN logits; mtmd itself asserts on
# one sample. 0.05 s = 5 frames keeps a margin for every audio projector in this llama.cpp version.
MIN_AUDIO_SECONDS = 0.05
# Whisper-style encoders pad every clip to 30 s; longer clips are split by mtmd, so the daemon plans with 30 s.
_WHISPER_STYLE_AUDIO = {"qwen2a", "qwen3a", "ultravox", "voxtral", "glma", "musicflamingo", "meralion", "whisper"}
# Vision projectors whose preprocessor resizes every image to clip.vision.image_size (larger input is wasted).
_FIXED_SIZE_VISION = {"nemotron_v2_vl", "gemma3", "mlp", "mlp_norm", "ldp", "ldpv2"}

_GGUF_MAGIC = b"GGUF"
_SNAPSHOT_MAGIC = b"OMNIDLC4"
# magic, fingerprint (32 hex chars), n_tokens, n_pos, n_vocab, has_logits, media spans, state length; then the
# logits (n_vocab float32), the spans (int64 start, end, end position each) and the state.
_SNAPSHOT_HEADER = struct.Struct("<8s32sqqqBqq")
# A payload ends with payload_checksum(everything before it): damage is caught before llama.cpp reads a byte.


def _llama() -> Any:
    """Import llama_cpp lazily: the package imports without the llama extra installed (mlx-only machines)."""
    try:
        import llama_cpp
        import llama_cpp.mtmd_cpp
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ModelLoadError(f"llama-cpp-python is not installed ({exc}); install omnid[llama]") from exc
    return llama_cpp


def _silent_log_callback() -> Any:
    """One process-wide no-op log callback. The C side keeps the pointer forever, so it must never be freed."""
    global _SILENT_LOG
    if _SILENT_LOG is None:
        llama_cpp = _llama()
        _SILENT_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    return _SILENT_LOG


_SILENT_LOG: Any = None


# ------------------------------------------------------------------------------------------ file validation


# GGUF value types -> struct formats of the fixed-size ones (8 = string, 9 = array).
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _GGUFHeader:
    """A minimal GGUF metadata reader: scalars, strings and tensor shapes, arrays skipped.

    Why not gguf.GGUFReader: it decodes every array, which takes ~10 s for a 262k-token vocabulary; this reads the
    same header in a fraction of a second and never touches tensor data.
    """

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self._data = data
        self._pos = 0

    def _unpack(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self._data, self._pos)[0]
        self._pos += struct.calcsize("<" + fmt)
        return value

    def _string(self) -> str:
        n = self._unpack("Q")
        raw = bytes(self._data[self._pos : self._pos + n])
        if len(raw) != n:
            raise ValueError("truncated string")
        self._pos += n
        return raw.decode("utf-8", "replace")

    def _value(self, kind: int) -> Any:
        if kind in _GGUF_SCALARS:
            return self._unpack(_GGUF_SCALARS[kind])
        if kind == 8:
            return self._string()
        if kind == 9:
            elem, count = self._unpack("I"), self._unpack("Q")
            if elem in _GGUF_SCALARS:
                self._pos += count * struct.calcsize("<" + _GGUF_SCALARS[elem])
            else:
                for _ in range(count):
                    self._value(elem)
            return None
        raise ValueError(f"unknown GGUF value type {kind}")

    def read(self) -> dict[str, Any]:
        magic, _version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", self._data, 0)
        self._pos = 24
        fields: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            value = self._value(self._unpack("I"))
            if value is not None:
                fields[key] = value
        shapes = {}
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._unpack("I")
            shapes[name] = tuple(self._unpack("Q") for _ in range(n_dims))
            self._pos += 12  # type (u32) + offset (u64)
        fields["__tensor_shapes__"] = shapes
        return fields


def _read_gguf_fields(path: Path) -> dict[str, Any]:
    """Scalar/string metadata and tensor shapes (ggml ne order) of a GGUF file, or ModelLoadError."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    with path.open("rb") as f:
        if f.read(4) != _GGUF_MAGIC:
            raise ModelLoadError(f"not a GGUF file (bad magic): {path}")
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return _GGUFHeader(mapped).read()
        except (ValueError, struct.error, UnicodeError, OverflowError) as exc:
            raise ModelLoadError(f"unreadable GGUF file {path}: {exc}") from exc


def _projector_width(fields: dict[str, Any]) -> int | None:
    """The width the projector feeds the text model, when the file says so cheaply."""
    shapes = fields["__tensor_shapes__"]
    for tensor in ("mm.model.mlp.3.weight", "mm.a.mlp.2.weight", "mm.2.weight"):
        if tensor in shapes and len(shapes[tensor]) == 2:
            return shapes[tensor][1]  # ggml ne order: (n_in, n_out)
    for key in ("clip.vision.projection_dim", "clip.audio.projection_dim"):
        if key in fields:
            return int(fields[key])
    return None


def _validate_files(model: Path, mmproj: Path | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    text_fields = _read_gguf_fields(model)
    arch = str(text_fields.get("general.architecture", ""))
    if arch == "clip":
        raise ModelLoadError(f"{model} is a multimodal projector (mmproj) file: "
                             "pass it as mmproj_path, not as the model")
    if not arch:
        raise ModelLoadError(f"{model} has no general.architecture: not a llama.cpp model file")
    if mmproj is None:
        return text_fields, None
    proj_fields = _read_gguf_fields(mmproj)
    if proj_fields.get("general.architecture") != "clip":
        raise ModelLoadError(f"{mmproj} is a text model ({proj_fields.get('general.architecture')}), "
                             "not an mmproj file")
    n_embd = text_fields.get(f"{arch}.embedding_length")
    width = _projector_width(proj_fields)
    if n_embd is not None and width is not None and int(n_embd) != width:
        raise ModelLoadError(f"{mmproj} projects to width {width} but {model} has n_embd {int(n_embd)}: not a pair")
    return text_fields, proj_fields


def _physical_cores() -> int:
    """Physical cores (llama.cpp gets slower on hyper-threads); logical / 2 when the topology is unknown."""
    cores: set[tuple[str, str]] = set()
    package = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    package = value.strip()
                elif key.strip() == "core id":
                    cores.add((package, value.strip()))
    except OSError:
        pass
    return len(cores) or max(1, (os.cpu_count() or 2) // 2)


# ------------------------------------------------------------------------------------------------- backend


class _MediaChunks:
    """mtmd input chunks for one media segment (cached between count_tokens and append); call free() once done."""

    def __init__(self, mtmd: Any, handle: Any) -> None:
        self._mtmd = mtmd
        self.handle = handle
        self.chunks = [mtmd.mtmd_input_chunks_get(handle, i) for i in range(mtmd.mtmd_input_chunks_size(handle))]
        self.n_tokens = sum(mtmd.mtmd_input_chunk_get_n_tokens(c) for c in self.chunks)

    def free(self) -> None:
        if self.handle is not None:
            self._mtmd.mtmd_input_chunks_free(self.handle)
            self.handle = None


@dataclass
class _Sequence:
    """What the backend tracks of one llama.cpp sequence beside its cells (llama.cpp keeps no such record)."""

    n_tokens: int = 0
    #: The position after the last token: M-RoPE models advance fewer positions than tokens over media.
    n_pos: int = 0
    #: (first token, end token, position after it) of every image or sound in the sequence: where a cut may not
    #: fall, and how positions run on after media.
    media_spans: list[tuple[int, int, int]] = field(default_factory=list)
    logits: np.ndarray | None = None


class LlamaCppBackend(Backend):
    """A GGUF model (+ mmproj) through llama.cpp, with `n_sequences` decoder sequences in one context."""

    #: One KV stream per sequence (see the module docstring); bench/kv_streams.py measures the other way.
    _KV_UNIFIED = False

    def __init__(
        self,
        model_path: str | Path,
        mmproj_path: str | Path | None = None,
        *,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        n_batch: int = 512,
        flash_attn: bool = False,
        verbose: bool = False,
        n_sequences: int = 1,
    ) -> None:
        model_path = Path(model_path)
        mmproj = Path(mmproj_path) if mmproj_path else None
        text_fields, proj_fields = _validate_files(model_path, mmproj)
        self._lc = _llama()
        self._mtmd_api = self._lc.mtmd_cpp
        if not verbose:
            self._lc.llama_log_set(_silent_log_callback(), None)
            self._mtmd_api.mtmd_log_set(_silent_log_callback(), None)
            self._mtmd_api.mtmd_helper_log_set(_silent_log_callback(), None)
        threads = n_threads or _physical_cores()
        gpu = bool(self._lc.llama_supports_gpu_offload())
        self._llm = self._load_llama(model_path, n_ctx, threads, n_batch, flash_attn, gpu, verbose)
        if n_sequences != 1:
            self._widen_context(n_sequences, verbose)
        self._ctx = self._llm._ctx.ctx
        self._memory = self._lc.llama_get_memory(self._ctx)
        self._n_ctx = int(self._lc.llama_n_ctx_seq(self._ctx))
        # llama.cpp lowers n_batch to a small n_ctx; a batch larger than the one it kept aborts the process.
        self._n_batch = min(n_batch, int(self._lc.llama_n_batch(self._ctx)),
                            int(self._lc.llama_n_ubatch(self._ctx)))
        self._vocab = self._lc.llama_model_get_vocab(self._llm._model.model)
        self._n_vocab = int(self._lc.llama_vocab_n_tokens(self._vocab))
        self._mtmd = self._load_mtmd(mmproj, threads, flash_attn, gpu) if mmproj else None
        self._batch = self._lc.llama_batch_init(n_batch, 0, 1)
        self._seqs = [_Sequence() for _ in range(n_sequences)]
        self._seq = 0  # the selected sequence
        model = self._llm._model.model
        self._can_truncate = not (self._lc.llama_model_is_recurrent(model) or self._lc.llama_model_is_hybrid(model)
                                  or self._lc.llama_model_n_swa(model) > 0)
        self._media_cache: tuple[str, _MediaChunks] | None = None
        self._arch = str(text_fields["general.architecture"])
        self._frame: ChatFrame | None = None
        self.info = self._make_info(model_path, mmproj, text_fields, proj_fields, flash_attn, gpu)

    # ---- loading

    def _load_llama(
        self, path: Path, n_ctx: int, threads: int, n_batch: int, flash_attn: bool, gpu: bool, verbose: bool
    ) -> Any:
        try:
            return self._lc.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,  # non-causal projectors need a whole image in one ubatch
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=-1 if gpu else 0,
                flash_attn=flash_attn,
                verbose=verbose,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"llama.cpp could not load {path}: {exc}") from exc

    def _widen_context(self, n_sequences: int, verbose: bool) -> None:
        """Replace the one-sequence context `Llama` made by one holding `n_sequences` streams of its size.

        Why this way: `Llama()` takes no n_seq_max. Its own context is freed first, so the two never coexist in
        memory; `Llama` keeps using the new one (it only tokenizes here, through the model)."""
        limit = int(self._lc.llama_max_parallel_sequences())
        if not 1 <= n_sequences <= limit:
            self._llm.close()
            raise ModelLoadError(f"n_sequences must be 1..{limit}, not {n_sequences}")
        params = self._llm.context_params
        n_ctx = int(self._lc.llama_n_ctx(self._llm._ctx.ctx))
        self._llm._ctx.close()
        params.n_ctx = n_ctx * n_sequences
        params.n_seq_max = n_sequences
        params.kv_unified = self._KV_UNIFIED
        try:
            self._llm._ctx = self._lc._internals.LlamaContext(model=self._llm._model, params=params, verbose=verbose)
        except ValueError as exc:
            self._llm.close()
            raise ModelLoadError(f"llama.cpp could not make a context of {n_sequences} x {n_ctx} tokens") from exc

    def _load_mtmd(self, mmproj: Path, threads: int, flash_attn: bool, gpu: bool) -> Any:
        api = self._mtmd_api
        params = api.mtmd_context_params_default()
        params.use_gpu = gpu
        params.n_threads = threads
        params.print_timings = False
        params.flash_attn_type = self._lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else 0
        ctx = api.mtmd_init_from_file(str(mmproj).encode(), self._llm._model.model, params)
        if not ctx:
            raise ModelLoadError(f"libmtmd could not load the projector {mmproj} with this model (run verbose for why)")
        return ctx

    def _make_info(
        self,
        model: Path,
        mmproj: Path | None,
        text_fields: dict[str, Any],
        proj_fields: dict[str, Any] | None,
        flash_attn: bool,
        gpu: bool,
    ) -> ModelInfo:
        api = self._mtmd_api
        caps: set[str] = {"text"}
        vision = bool(self._mtmd and api.mtmd_support_vision(self._mtmd))
        audio = bool(self._mtmd and api.mtmd_support_audio(self._mtmd))
        caps |= {"image"} if vision else set()
        caps |= {"audio"} if audio else set()
        proj_fields = proj_fields or {}
        a_type = str(proj_fields.get("clip.audio.projector_type", proj_fields.get("clip.projector_type", "")))
        v_type = str(proj_fields.get("clip.vision.projector_type", proj_fields.get("clip.projector_type", "")))
        rate = int(api.mtmd_get_audio_sample_rate(self._mtmd)) if audio else 16_000
        image_size = int(proj_fields.get("clip.vision.image_size", 0))
        max_side = image_size if vision and v_type in _FIXED_SIZE_VISION and image_size > 0 else 1024
        settings = f"flash_attn={flash_attn};gpu={gpu};n_batch={self._n_batch}"
        if len(self._seqs) > 1:  # llama.cpp writes its stream count into a sequence's state and refuses another
            settings += f";n_sequences={len(self._seqs)}"
        note = (f"llama.cpp {self._arch}" + (f"; vision {v_type}" if vision else "")
                + (f"; audio {a_type}" if audio else ""))
        return ModelInfo(
            name=str(text_fields.get("general.name") or model.stem),
            path=str(model),
            backend="llama.cpp",
            capabilities=frozenset(caps),  # type: ignore[arg-type]
            context_length=self._n_ctx,
            fingerprint=weights_fingerprint(b"omnid-llamacpp", [model] + ([mmproj] if mmproj else []),
                                            tail=settings.encode()),
            mmproj_path=str(mmproj or ""),
            audio_sample_rate=rate,
            max_audio_clip_seconds=30.0 if a_type in _WHISPER_STYLE_AUDIO else None,
            max_image_side=max_side,
            audio_tokens_per_second=self._measure_audio_rate(rate) if audio else 0.0,
            note=note,
        )

    def _measure_audio_rate(self, rate: int) -> float:
        """Encoder tokens per second of sound, from the encoder's own count for a 30 s clip (no evaluation)."""
        chunks = self._tokenize_media(AudioSegment(np.zeros(30 * rate, np.float32), rate))
        try:
            return chunks.n_tokens / 30.0
        finally:
            chunks.free()

    # ---- Backend API

    def chat_frame(self) -> ChatFrame:
        if self._frame is None:
            self._frame = self._build_frame()
        return self._frame

    def _build_frame(self) -> ChatFrame:
        template = self._llm.metadata.get("tokenizer.chat_template")
        bos = self._special_text(self._lc.llama_vocab_bos(self._vocab))
        eos = self._special_text(self._lc.llama_vocab_eos(self._vocab))
        if not template:
            return completion_frame(bos)
        render = jinja_renderer(template, bos, eos)
        try:  # a single turn answers without thinking (a conversation switches it per request)
            return frame_from_renderer(lambda m, g: render(m, g, {"enable_thinking": False}), template)
        except ValueError:
            # A template too dynamic to cut into fixed pieces: use the family's plain format instead.
            fallback = fallback_template(self._arch)
            return frame_from_renderer(jinja_renderer(fallback, bos, eos), fallback)

    def chat_renderer(self) -> ChatRenderer | None:
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        bos = self._special_text(self._lc.llama_vocab_bos(self._vocab))
        eos = self._special_text(self._lc.llama_vocab_eos(self._vocab))
        return jinja_renderer(template, bos, eos)

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", "replace")

    @property
    def n_tokens(self) -> int:
        return self._s.n_tokens

    def reset(self) -> None:
        self._lc.llama_memory_seq_rm(self._memory, self._seq, -1, -1)
        self._seqs[self._seq] = _Sequence()

    @property
    def can_truncate(self) -> bool:
        return self._can_truncate

    def truncate(self, n_tokens: int) -> bool:
        n_pos = self._position_at(n_tokens)
        if not self._can_truncate or n_pos is None:
            return False
        if n_tokens == self._s.n_tokens:
            return True
        if not self._lc.llama_memory_seq_rm(self._memory, self._seq, n_pos, -1):
            return False
        self._s.n_tokens, self._s.n_pos, self._s.logits = n_tokens, n_pos, None
        self._s.media_spans = [span for span in self._s.media_spans if span[1] <= n_tokens]
        return True

    def _position_at(self, n_tokens: int) -> int | None:
        """The position after the first n_tokens, or None where that is no place to cut (inside media)."""
        if not 0 <= n_tokens <= self._s.n_tokens:
            return None
        end_tokens = end_pos = 0
        for start, end, pos in self._s.media_spans:
            if start < n_tokens < end:
                return None
            if end <= n_tokens:
                end_tokens, end_pos = end, pos
        return end_pos + n_tokens - end_tokens

    def count_tokens(self, segment: Segment) -> int:
        if isinstance(segment, TextSegment):
            return len(self.tokenize(segment))
        return self._media_chunks(segment).n_tokens

    def tokenize(self, segment: TextSegment) -> list[int]:
        return self._llm.tokenize(segment.text.encode("utf-8"), add_bos=False, special=segment.template)

    def append(self, segment: Segment, should_stop: Callable[[], bool] | None = None) -> int:
        stop = should_stop or (lambda: False)
        if isinstance(segment, TextSegment):
            tokens = self.tokenize(segment)
            self.append_tokens(tokens, stop)
            return len(tokens)
        chunks = self._media_chunks(segment)
        self._check_room(chunks.n_tokens)
        self._media_cache = None  # evaluated once: the cache entry now belongs to this call
        start = self._s.n_tokens
        try:
            self._eval_media(chunks, stop)
        finally:
            chunks.free()
        self._s.media_spans.append((start, self._s.n_tokens, self._s.n_pos))
        return chunks.n_tokens

    def append_tokens(self, tokens: Sequence[int], should_stop: Callable[[], bool] | None = None) -> None:
        if tokens and not (0 <= min(tokens) and max(tokens) < self._n_vocab):
            raise InputError(f"a token is outside the vocabulary (0..{self._n_vocab - 1})")
        self._check_room(len(tokens))
        self._decode_tokens(list(tokens), should_stop or (lambda: False))

    def logits(self) -> np.ndarray:
        if self._s.logits is None:
            raise RuntimeError("no next-token logits: the sequence is empty or ends with an image/audio segment")
        return self._s.logits.copy()

    def append_token(self, token: int) -> None:
        self.append_tokens([token])

    def token_bytes(self, token: int) -> bytes:
        self._check_token(token)
        return self._piece(token, special=False)

    def is_end_of_generation(self, token: int) -> bool:
        self._check_token(token)
        return bool(self._lc.llama_vocab_is_eog(self._vocab, token))

    def snapshot(self) -> Snapshot:
        """header + last logits + the selected sequence's state + checksum, the state written in place (one
        copy in all: snapshots are taken on the request path, and the state of a long prompt is many megabytes)."""
        size = int(self._lc.llama_state_seq_get_size(self._ctx, self._seq))
        logits = b"" if self._s.logits is None else self._s.logits.astype(np.float32).tobytes()
        spans = np.array(self._s.media_spans, np.int64).tobytes()
        header = _SNAPSHOT_HEADER.pack(
            _SNAPSHOT_MAGIC, self.info.fingerprint.encode(), self._s.n_tokens, self._s.n_pos, self._n_vocab,
            1 if logits else 0, len(self._s.media_spans), size,
        )
        start = len(header) + len(logits) + len(spans)
        out = bytearray(start + size + CHECKSUM_SIZE)
        out[:start] = header + logits + spans
        state = (ctypes.c_uint8 * size).from_buffer(out, start)
        written = int(self._lc.llama_state_seq_get_data(self._ctx, state, size, self._seq))
        del state  # release the export of `out` before resizing views of it
        if written != size:
            raise RuntimeError(f"llama_state_seq_get_data wrote {written} of {size} bytes")
        out[-CHECKSUM_SIZE:] = payload_checksum(memoryview(out)[:-CHECKSUM_SIZE])
        return Snapshot(n_tokens=self._s.n_tokens, payload=bytes(out), checked=True)

    def restore(self, snapshot: Snapshot) -> None:
        n_tokens, n_pos, logits, spans, offset, size = self._parse_snapshot(snapshot.payload,
                                                                            check_sum=not snapshot.checked)
        # llama.cpp only reads the state: point it into the immutable payload instead of copying megabytes.
        payload = np.frombuffer(snapshot.payload, np.uint8)
        state = ctypes.cast(payload.ctypes.data + offset, ctypes.POINTER(ctypes.c_uint8))
        self._empty_selected()
        read = int(self._lc.llama_state_seq_set_data(self._ctx, state, size, self._seq))
        if read != size:
            self.reset()
            raise InputError("llama.cpp rejected the snapshot's sequence state")
        self._seqs[self._seq] = _Sequence(n_tokens, n_pos, spans, logits)

    def _empty_selected(self) -> None:
        """Drop the selected sequence's cells before a restore, without zeroing buffers as reset() does.

        With one sequence, clearing the whole memory drops llama.cpp's per-cell bookkeeping at once, where
        removing seq 0 cell by cell rebalances its trees: at 16k tokens on two cores, 0.7 ms against 1.9 ms
        (set_data itself: ~3 ms with scripts/llama-cpp-patches, ~5 ms without). With several, only the selected
        sequence's stream may go; letting set_data empty it is slower still."""
        if len(self._seqs) == 1:
            self._lc.llama_memory_clear(self._memory, False)
        else:
            self._lc.llama_memory_seq_rm(self._memory, self._seq, -1, -1)

    def close(self) -> None:
        if self._media_cache is not None:
            self._media_cache[1].free()
            self._media_cache = None
        if self._mtmd is not None:
            self._mtmd_api.mtmd_free(self._mtmd)
            self._mtmd = None
        if self._batch is not None:
            self._lc.llama_batch_free(self._batch)
            self._batch = None
        self._llm.close()

    # ---- several sequences

    @property
    def n_sequences(self) -> int:
        return len(self._seqs)

    def select(self, seq: int) -> None:
        self._check_seq(seq)
        self._seq = seq

    @property
    def _s(self) -> _Sequence:
        """The selected sequence's record."""
        return self._seqs[self._seq]

    @property
    def any_thread(self) -> bool:
        return True  # llama.cpp contexts are not bound to a thread; the engine calls them one at a time

    @property
    def batch_capacity(self) -> int:
        return self._n_batch

    def decode_batch(self, work: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray]:
        """One llama_decode per n_batch tokens over every sequence's tokens (a sequence with none is left out).

        Everything is checked before the first token reaches llama.cpp, so a bad token or a full sequence
        anywhere raises with every sequence as it was."""
        parts = [(seq, list(tokens)) for seq, tokens in work.items() if len(tokens)]
        for seq, tokens in parts:
            self._check_seq(seq)
            if not (0 <= min(tokens) and max(tokens) < self._n_vocab):
                raise InputError(f"sequence {seq}: a token is outside the vocabulary (0..{self._n_vocab - 1})")
            check_room(self._seqs[seq].n_tokens, len(tokens), self._n_ctx)
        out: dict[int, np.ndarray] = {}
        for piece in self._cut_into_pieces(parts):
            wanted = self._decode_piece(piece)
            ends = [seq for seq, _, last in piece if last >= 0]
            for seq, index in zip(ends, wanted):
                out[seq] = self._read_logits(index)
        for seq, logits in out.items():
            self._seqs[seq].logits = logits
        return {seq: logits.copy() for seq, logits in out.items()}

    def _cut_into_pieces(self, parts: list[tuple[int, list[int]]]) -> list[list[tuple[int, list[int], int]]]:
        """Cut (seq, tokens) parts into llama_decode calls of at most n_batch tokens; each part marks its very
        last token (index, else -1) for logits."""
        pieces: list[list[tuple[int, list[int], int]]] = [[]]
        room = self._n_batch
        for seq, tokens in parts:
            start = 0
            while start < len(tokens):
                if room == 0:
                    pieces.append([])
                    room = self._n_batch
                chunk = tokens[start : start + room]
                start += len(chunk)
                pieces[-1].append((seq, chunk, len(chunk) - 1 if start == len(tokens) else -1))
                room -= len(chunk)
        return [piece for piece in pieces if piece]

    def copy_sequence(self, src: int, dst: int) -> None:
        """The state of `src` written into `dst` through one host buffer (llama_state_seq_get/set_data).

        Why not llama_memory_seq_cp: between the streams of a non-unified cache it only schedules the buffer
        copy for the next llama_decode, so a snapshot of dst taken before that reads dst's old cells, and a
        restore into dst is overwritten by the pending copy (measured on both test decoders: logits off by 13).
        The state copy costs what a snapshot and a restore cost without the payload's header and checksum."""
        self._check_seq(src)
        self._check_seq(dst)
        if src == dst:
            return
        size = int(self._lc.llama_state_seq_get_size(self._ctx, src))
        state = (ctypes.c_uint8 * size)()
        if int(self._lc.llama_state_seq_get_data(self._ctx, state, size, src)) != size:
            raise RuntimeError(f"llama_state_seq_get_data could not read sequence {src}")
        self._lc.llama_memory_seq_rm(self._memory, dst, -1, -1)
        if int(self._lc.llama_state_seq_set_data(self._ctx, state, size, dst)) != size:
            self._lc.llama_memory_seq_rm(self._memory, dst, -1, -1)
            self._seqs[dst] = _Sequence()
            raise RuntimeError(f"llama.cpp could not write sequence {src}'s state into sequence {dst}")
        copied = self._seqs[src]
        self._seqs[dst] = _Sequence(copied.n_tokens, copied.n_pos, list(copied.media_spans),
                                    None if copied.logits is None else copied.logits.copy())

    def _check_seq(self, seq: int) -> None:
        if not 0 <= seq < len(self._seqs):
            raise InputError(f"no sequence {seq}: this backend holds {len(self._seqs)} (0..{len(self._seqs) - 1})")

    # ---- text

    def _check_room(self, n_new: int) -> None:
        check_room(self._s.n_tokens, n_new, self._n_ctx)

    def _check_token(self, token: int) -> None:
        if not 0 <= token < self._n_vocab:
            raise InputError(f"token {token} is outside the vocabulary (0..{self._n_vocab - 1})")

    def _decode_tokens(self, tokens: list[int], stop: Callable[[], bool]) -> None:
        """Decode in n_batch pieces, logits only for the very last token; poll `stop` between pieces."""
        for start in range(0, len(tokens), self._n_batch):
            if start and stop():
                self._s.logits = None
                return
            piece = tokens[start : start + self._n_batch]
            last = len(piece) - 1 if start + len(piece) == len(tokens) else -1
            self._decode_piece([(self._seq, piece, last)])
        if tokens:
            self._s.logits = self._read_logits()

    def _decode_piece(self, parts: list[tuple[int, list[int], int]]) -> list[int]:
        """One llama_decode over (seq, tokens, index of the token that wants logits or -1) parts, each at its
        sequence's end (at most n_batch tokens in all); advances those sequences and returns the batch indices
        of the logits asked for, in order."""
        batch, i, wanted = self._batch, 0, []
        for seq, tokens, last in parts:
            n_pos = self._seqs[seq].n_pos
            for j, token in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, n_pos + j, 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = j == last
                if j == last:
                    wanted.append(i)
                i += 1
        batch.n_tokens = i
        rc = self._lc.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with status {rc}")
        for seq, tokens, _ in parts:
            self._seqs[seq].n_tokens += len(tokens)
            self._seqs[seq].n_pos += len(tokens)
        return wanted

    def _read_logits(self, index: int = -1) -> np.ndarray:
        ptr = self._lc.llama_get_logits_ith(self._ctx, index)
        if not ptr:
            raise RuntimeError("llama.cpp returned no logits for the last position")
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()

    def _piece(self, token: int, *, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    # ---- media

    def _media_chunks(self, segment: ImageSegment | AudioSegment) -> _MediaChunks:
        """Tokenized media for `segment`, reusing the last count_tokens result for the same content."""
        digest = segment.digest()
        if self._media_cache is not None and self._media_cache[0] == digest:
            return self._media_cache[1]
        self._check_media(segment)
        chunks = self._tokenize_media(segment)
        if self._media_cache is not None:
            self._media_cache[1].free()
        self._media_cache = (digest, chunks)
        return chunks

    def _check_media(self, segment: ImageSegment | AudioSegment) -> None:
        check_media(self.info, segment, min_audio_samples=round(MIN_AUDIO_SECONDS * self.info.audio_sample_rate))

    def _tokenize_media(self, segment: ImageSegment | AudioSegment) -> _MediaChunks:
        """mtmd_tokenize one already-checked media segment (the text is just the media marker)."""
        api = self._mtmd_api
        if isinstance(segment, ImageSegment):
            rgb = np.ascontiguousarray(segment.rgb)
            h, w, _ = rgb.shape
            bitmap = api.mtmd_bitmap_init(w, h, rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        else:
            pcm = np.ascontiguousarray(segment.pcm, dtype=np.float32)
            bitmap = api.mtmd_bitmap_init_from_audio(len(pcm), pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        if not bitmap:
            raise InputError(f"libmtmd could not take this {segment.kind}")
        handle = api.mtmd_input_chunks_init()
        try:
            marker = api.mtmd_default_marker()
            text = api.mtmd_input_text()
            text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
            bitmaps = (api.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = api.mtmd_tokenize(self._mtmd, handle, ctypes.byref(text), bitmaps, 1)
        finally:
            api.mtmd_bitmap_free(bitmap)
        if rc != 0:
            api.mtmd_input_chunks_free(handle)
            raise InputError(f"libmtmd could not tokenize this {segment.kind} (status {rc})")
        chunks = _MediaChunks(api, handle)
        self._check_non_causal_fits(chunks)
        return chunks

    def _check_non_causal_fits(self, chunks: _MediaChunks) -> None:
        """Non-causal projectors (gemma3...) abort unless a whole image fits one ubatch (= n_batch here)."""
        for chunk in chunks.chunks:
            n = self._mtmd_api.mtmd_input_chunk_get_n_tokens(chunk)
            if self._mtmd_api.mtmd_decode_use_non_causal(self._mtmd, chunk) and n > self._n_batch:
                chunks.free()
                raise InputError(f"this image needs {n} tokens in one batch but n_batch is {self._n_batch}")

    def _eval_media(self, chunks: _MediaChunks, stop: Callable[[], bool]) -> None:
        api = self._mtmd_api
        for i, chunk in enumerate(chunks.chunks):
            if i and stop():
                self._s.logits = None
                return
            is_last = i == len(chunks.chunks) - 1
            is_text = api.mtmd_input_chunk_get_type(chunk) == api.MTMD_INPUT_CHUNK_TYPE_TEXT
            new_pos = self._lc.llama_pos(0)
            rc = api.mtmd_helper_eval_chunk_single(
                self._mtmd, self._ctx, chunk, self._s.n_pos, self._seq, self._n_batch, is_last, ctypes.byref(new_pos)
            )
            if rc != 0:
                raise RuntimeError(f"libmtmd failed to evaluate a media chunk (status {rc})")
            self._s.n_tokens += api.mtmd_input_chunk_get_n_tokens(chunk)
            self._s.n_pos = int(new_pos.value)
            # Media embeddings are decoded without logits; only a trailing text chunk (e.g. an end marker) has them.
            self._s.logits = self._read_logits() if is_last and is_text else None

    # ---- snapshots

    def _parse_snapshot(self, payload: bytes | memoryview, *,
                        check_sum: bool = True,
                        ) -> tuple[int, int, np.ndarray | None, list[tuple[int, int, int]], int, int]:
        """Check a payload completely before any of it reaches llama.cpp (a bad state could abort it).

        Returns n_tokens, n_pos, the logits, the media spans, and where the sequence state lies in the payload
        (offset, size).
        """
        if not isinstance(payload, (bytes, memoryview)) or len(payload) < _SNAPSHOT_HEADER.size + CHECKSUM_SIZE:
            raise InputError("snapshot payload is too short")
        body, checksum = memoryview(payload)[:-CHECKSUM_SIZE], bytes(payload[-CHECKSUM_SIZE:])
        if check_sum and payload_checksum(body) != checksum:
            raise InputError("snapshot payload is corrupt (checksum mismatch)")
        magic, fingerprint, n_tokens, n_pos, n_vocab, has_logits, n_spans, size = _SNAPSHOT_HEADER.unpack_from(body)
        if magic != _SNAPSHOT_MAGIC or fingerprint.decode("ascii", "replace") != self.info.fingerprint:
            raise InputError("snapshot was taken with another model or other settings")
        n_logit_bytes = n_vocab * 4 if has_logits else 0
        n_span_bytes = n_spans * 24
        if n_vocab != self._n_vocab or n_spans < 0 or \
                len(body) != _SNAPSHOT_HEADER.size + n_logit_bytes + n_span_bytes + size:
            raise InputError("snapshot payload has inconsistent sizes")
        if not 0 <= n_tokens <= self.info.context_length:
            raise InputError("snapshot holds more tokens than this context")
        offset = _SNAPSHOT_HEADER.size
        logits = np.frombuffer(body, np.float32, n_vocab, offset).copy() if has_logits else None
        offset += n_logit_bytes
        spans = [(int(a), int(b), int(c)) for a, b, c in
                 np.frombuffer(body, np.int64, n_spans * 3, offset).reshape(n_spans, 3)]
        return n_tokens, n_pos, logits, spans, offset + n_span_bytes, size


