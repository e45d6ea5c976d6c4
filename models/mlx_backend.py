"""The mlx-vlm backend: one omni model (Nemotron-H Nano Omni style) and its decoder sequences on MLX.

Why not mlx-vlm's generate / PromptCacheState: its prompt cache matches token ids only, so a different image
behind the same placeholder ids silently reuses the WRONG state. Here the sequence is a list of the language
model's own cache objects (make_prompt_cache(model.language_model)); every segment is turned into input
embeddings by mlx-vlm's processor and encoders and run through the language model with that cache, so the
daemon can snapshot the whole sequence at a segment boundary and key the snapshot on content hashes. Whole-state
snapshots are also the only correct reuse for the hybrid Mamba + attention decoder, whose recurrent state cannot
be trimmed back.

Several sequences (issue 16): each is its own cache list, token count and last logits; `select` parks the
selected one's and brings another's in, so every single-sequence method works on whichever is selected.
`decode_batch` runs the sequences one after another: mlx-vlm's batched generation takes whole prompts at once
and has no per-sequence caches a daemon could step, snapshot and restore one by one.

mlx and mlx-vlm are imported lazily so the rest of omnid works without the [mlx] extra.
"""
from __future__ import annotations

import io
import json
import logging
import re
import time
from dataclasses import dataclass
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
    Modality,
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
from . import mlx_blas, mlx_cpu_attention
from .registry import looks_like_hub_id

_log = logging.getLogger(__name__)
_INSTALL_HINT = "install with: pip install 'omnid[mlx]'"
# Tokens per forward pass of a long prefill: bounds peak memory and sets how often should_stop is polled.
_PREFILL_BATCH = 512
_SNAPSHOT_MAGIC = b"OMNIDMLX\x02"
# Smallest image side the vision processor resizes sensibly; below it the "image" carries no content.
_MIN_IMAGE_SIDE = 2


def _import_mlx() -> tuple[Any, Any]:
    """mlx.core and mlx_vlm, or a ModelLoadError that tells the user which extra to install."""
    mlx_blas.choose()
    try:
        import mlx.core as mx
        import mlx_vlm
    except ImportError as exc:  # missing package, or mlx without its Linux [cpu] runtime
        raise ModelLoadError(f"the MLX backend needs mlx and mlx-vlm ({exc}); {_INSTALL_HINT}") from exc
    return mx, mlx_vlm


def _fingerprint(folder: Path, extra: str) -> str:
    """config.json and every weight file (see weights_fingerprint); `extra` carries versions that change the
    numerics of cached states."""
    return weights_fingerprint(b"omnid-mlx-fp", sorted(folder.glob("*.safetensors")),
                               head=(extra.encode(), (folder / "config.json").read_bytes()), named=True)


def _eos_ids(folder: Path, config: dict, tokenizer: Any) -> frozenset[int]:
    """Every id the model's files declare as end of generation (config, text config, generation config, tokenizer)."""
    sources: list[Any] = [config.get("eos_token_id"), config.get("text_config", {}).get("eos_token_id"),
                          getattr(tokenizer, "eos_token_id", None)]
    generation_config = folder / "generation_config.json"
    if generation_config.exists():
        sources.append(json.loads(generation_config.read_text()).get("eos_token_id"))
    ids: set[int] = set()
    for source in sources:
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(i for i in source if isinstance(i, int))
    return frozenset(ids)


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE's character -> byte table (the inverse of its bytes_to_unicode)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


@dataclass(frozen=True)
class _Prepared:
    """A segment turned into placeholder-expanded token ids plus the encoder inputs mlx-vlm expects."""

    input_ids: Any  # mx.array, shape (1, n)
    encoder_kwargs: dict[str, Any]

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])


@dataclass
class _Parked:
    """A sequence that is not selected: what the backend's _cache, _n and _last_logits hold while it is."""

    cache: list[Any]
    n: int = 0
    last_logits: Any = None


class MlxBackend(Backend):
    """A loaded mlx-vlm omni model with n_sequences decoder sequences (see module docstring). Single-threaded."""

    def __init__(self, model: str | Path, *, n_ctx: int = 8192, verbose: bool = False, n_sequences: int = 1) -> None:
        if n_sequences < 1:
            raise ModelLoadError(f"n_sequences must be 1 or more, not {n_sequences}")
        self._mx, mlx_vlm = _import_mlx()
        from mlx_vlm.models.cache import make_prompt_cache
        from mlx_vlm.utils import get_model_path

        self._make_cache = make_prompt_cache
        # verbose: load and per-segment timings at INFO (the daemon's --verbose), otherwise at DEBUG.
        self._log_level = logging.INFO if verbose else logging.DEBUG
        started = time.perf_counter()
        folder = self._resolve(str(model), get_model_path)
        try:
            self._model, self._processor = mlx_vlm.load(str(folder))
        except Exception as exc:  # mlx-vlm raises FileNotFoundError, ValueError, KeyError... for bad folders
            raise ModelLoadError(f"mlx-vlm could not load {folder}: {exc}") from exc
        self._lm = self._model.language_model
        self._attention = mlx_cpu_attention.install(self._model)
        _head_on_last_position(self._lm)
        self._vocab_size = int(self._model.config.text_config.vocab_size)
        self._tokenizer = getattr(self._processor, "tokenizer", self._processor)
        config = json.loads((folder / "config.json").read_text())
        self._sound_config = getattr(self._model.config, "sound_config", None)
        self._eos = _eos_ids(folder, config, self._tokenizer)
        self._byte_level = "ByteLevel" in self._tokenizer.backend_tokenizer.to_str()
        self._special_ids = frozenset(self._tokenizer.all_special_ids) | frozenset(
            i for i, added in self._tokenizer.added_tokens_decoder.items() if added.special)
        self.info = self._make_info(str(model), folder, n_ctx, mlx_vlm)
        self._piece_bytes: dict[int, bytes] = {}
        self._cache: list[Any] = []
        self._n = 0
        self._last_logits: Any = None
        self.reset()
        #: Every sequence but the selected one (whose slot is None: its state is in _cache, _n, _last_logits).
        self._parked: list[_Parked | None] = [None] + [_Parked(make_prompt_cache(self._lm))
                                                       for _ in range(n_sequences - 1)]
        self._seq = 0
        _log.log(self._log_level, "loaded %s in %.2f s: %s", folder, time.perf_counter() - started,
                 sorted(self.info.capabilities))

    # ----- loading -----------------------------------------------------------------------------------------

    @staticmethod
    def _resolve(model: str, get_model_path: Callable[[str], Path]) -> Path:
        """A local folder as is; a hub id through mlx-vlm's own download code (which users of real models need)."""
        path = Path(model).expanduser()
        if path.is_dir():
            if not (path / "config.json").exists():
                raise ModelLoadError(f"{path} is not an mlx-vlm model folder (no config.json)")
            return path
        if path.exists() or not looks_like_hub_id(model):
            raise ModelLoadError(f"model folder {path} does not exist")
        try:
            return Path(get_model_path(model))
        except Exception as exc:  # network, auth and not-found errors from huggingface_hub
            raise ModelLoadError(f"could not fetch {model!r} from the model hub: {exc}") from exc

    def _make_info(self, name: str, folder: Path, n_ctx: int, mlx_vlm: Any) -> ModelInfo:
        config = self._model.config
        capabilities: set[Modality] = {"text"}
        if getattr(config, "vision_config", None) is not None and hasattr(self._model, "vision_model"):
            capabilities.add("image")
        sample_rate = getattr(self._processor, "audio_sampling_rate", 16_000)
        max_clip: float | None = None
        tokens_per_second = 0.0
        if self._sound_config is not None and getattr(self._model, "sound_encoder", None) is not None:
            capabilities.add("audio")
            sound = self._sound_config
            frames_per_token = sound.subsampling_factor * sound.hop_length
            # The encoder rejects more than max_position_embeddings subsampled frames; stay one frame under it.
            max_clip = (sound.max_position_embeddings * sound.subsampling_factor - 1) * sound.hop_length / sample_rate
            tokens_per_second = sample_rate / frames_per_token
        versions = (f"mlx={self._mx.__version__};mlx_vlm={getattr(mlx_vlm, '__version__', '?')};"
                    f"blas={mlx_blas.choose()};attention={self._attention}")
        return ModelInfo(
            name=name, path=str(folder), backend="mlx", capabilities=frozenset(capabilities),
            context_length=n_ctx, fingerprint=_fingerprint(folder, versions),
            audio_sample_rate=sample_rate, max_audio_clip_seconds=max_clip,
            audio_tokens_per_second=tokens_per_second, note=f"mlx-vlm {config.model_type}",
        )

    # ----- chat template -----------------------------------------------------------------------------------

    def chat_frame(self) -> ChatFrame:
        from .chat_frame import frame_from_renderer

        template = getattr(self._tokenizer, "chat_template", None) or ""
        if not template:
            raise ModelLoadError(f"{self.info.path} has no chat template; media placeholders would be dropped")

        def render(messages: list[dict], add_generation_prompt: bool) -> str:
            # a single turn answers without thinking (a conversation switches it per request)
            return self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=False)

        try:
            return frame_from_renderer(render, template)
        except ValueError as exc:  # a template that cannot be cut into fixed pieces is a model problem
            raise ModelLoadError(f"the chat template of {self.info.path} cannot be used: {exc}") from exc

    def chat_renderer(self) -> ChatRenderer | None:
        if not getattr(self._tokenizer, "chat_template", None):
            return None

        def render(messages: list[dict], add_generation_prompt: bool, extra: dict) -> str:
            return self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)
        return render

    # ----- the sequence ------------------------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        return self._n

    def reset(self) -> None:
        self._cache = self._make_cache(self._lm)
        self._n = 0
        self._last_logits = None

    def count_tokens(self, segment: Segment) -> int:
        return self._prepare(segment).n_tokens

    def tokenize(self, segment: TextSegment) -> list[int]:
        # split_special_tokens: text that spells a control token ("<|im_end|>") stays plain text unless it is a
        # piece of the chat template.
        return list(self._tokenizer.encode(segment.text, add_special_tokens=False,
                                           split_special_tokens=not segment.template))

    def append_tokens(self, tokens: Sequence[int], should_stop: Callable[[], bool] | None = None) -> None:
        if not tokens:
            return
        if not (0 <= min(tokens) and max(tokens) < self._vocab_size):
            raise InputError("a token is outside the vocabulary")
        self._check_fits(len(tokens))
        ids = self._mx.array([list(tokens)], dtype=self._mx.int32)
        self._forward(ids, self._lm.get_input_embeddings(ids), should_stop)

    def append(self, segment: Segment, should_stop: Callable[[], bool] | None = None) -> int:
        started = time.perf_counter()
        if isinstance(segment, TextSegment):  # the same path as tokens resumed mid-segment or sampled
            tokens = self.tokenize(segment)
            self.append_tokens(tokens, should_stop)
            return len(tokens)
        prepared = self._prepare(segment)
        if prepared.n_tokens == 0:  # a chat-frame piece that is "" for this template
            return 0
        self._check_fits(prepared.n_tokens)
        try:
            embeddings = self._model.get_input_embeddings(prepared.input_ids, **prepared.encoder_kwargs).inputs_embeds
            self._mx.eval(embeddings)
        except ValueError as exc:  # the encoders' own size checks (e.g. placeholder/feature count mismatch)
            raise InputError(f"the model's {segment.kind} encoder rejected the input: {exc}") from exc
        self._forward(prepared.input_ids, embeddings, should_stop)
        _log.log(self._log_level, "%s segment: %d tokens in %.1f ms", segment.kind, prepared.n_tokens,
                 (time.perf_counter() - started) * 1e3)
        return prepared.n_tokens

    def append_token(self, token: int) -> None:
        self.append_tokens([token])

    def logits(self) -> np.ndarray:
        if self._last_logits is None:
            raise RuntimeError("no next-token logits: the sequence is empty")  # a caller bug, not bad input
        return np.array(self._last_logits.astype(self._mx.float32), copy=True)

    def _check_fits(self, n_new: int) -> None:
        check_room(self._n, n_new, self.info.context_length)

    def _forward(self, input_ids: Any, embeddings: Any, should_stop: Callable[[], bool] | None) -> None:
        """Run the decoder over the embeddings in batches, growing the cache and keeping the last logits."""
        total = embeddings.shape[1]
        for start in range(0, total, _PREFILL_BATCH):
            if should_stop is not None and start > 0 and should_stop():
                return
            end = min(start + _PREFILL_BATCH, total)
            out = self._lm(input_ids[:, start:end], inputs_embeds=embeddings[:, start:end], cache=self._cache)
            self._last_logits = out.logits[0, -1]
            self._mx.eval(self._last_logits, [a for c in self._cache for a in c.state if a is not None])
            self._n += end - start

    # ----- segments -> token ids + encoder inputs ---------------------------------------------------------

    def _prepare(self, segment: Segment) -> _Prepared:
        if isinstance(segment, TextSegment):
            ids = self.tokenize(segment)
            return _Prepared(self._mx.array([ids], dtype=self._mx.int32), {})
        if isinstance(segment, ImageSegment):
            return self._prepare_image(segment)
        if isinstance(segment, AudioSegment):
            return self._prepare_audio(segment)
        raise InputError(f"unknown segment type {type(segment).__name__}")

    def _prepare_image(self, segment: ImageSegment) -> _Prepared:
        from PIL import Image

        check_media(self.info, segment, min_image_side=_MIN_IMAGE_SIDE)
        inputs = self._processor(text=[self._processor.image_token], images=[Image.fromarray(segment.rgb)],
                                 add_special_tokens=False)
        return _Prepared(inputs["input_ids"].astype(self._mx.int32), {"pixel_values": inputs["pixel_values"]})

    def _prepare_audio(self, segment: AudioSegment) -> _Prepared:
        # The encoder takes at least one window, and rejects clips over its position limit (it cannot split).
        check_media(self.info, segment, min_audio_samples=self._sound_config.win_length if self._sound_config else 1,
                    max_audio_seconds=self.info.max_audio_clip_seconds)
        inputs = self._processor(text=[self._processor.audio_token], audio=[segment.pcm], add_special_tokens=False)
        return _Prepared(inputs["input_ids"].astype(self._mx.int32), {"sound_clips": inputs["sound_clips"]})

    # ----- tokens ------------------------------------------------------------------------------------------

    def token_bytes(self, token: int) -> bytes:
        if token not in self._piece_bytes:
            self._piece_bytes[token] = self._token_bytes(token)
        return self._piece_bytes[token]

    def _token_bytes(self, token: int) -> bytes:
        """Raw bytes of a token: byte-level BPE pieces mapped back to bytes, SentencePiece <0xNN> and '▁' handled.

        Special (control) tokens have no text: they yield b"", as llama.cpp does without special rendering.
        """
        if token in self._special_ids:
            return b""
        piece = self._tokenizer.convert_ids_to_tokens(token)
        if piece is None:
            raise InputError(f"token {token} is outside the vocabulary")
        byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
        if byte:
            return bytes([int(byte.group(1), 16)])
        table = _BYTE_DECODER
        if self._byte_level and all(ch in table for ch in piece):
            return bytes(table[ch] for ch in piece)
        return piece.replace("\u2581", " ").encode("utf-8")

    def is_end_of_generation(self, token: int) -> bool:
        return token in self._eos

    # ----- snapshots ---------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Every cache object's state/meta_state and the last logits, as safetensors bytes behind a checksum."""
        arrays: dict[str, Any] = {}
        layout = []
        for i, cache in enumerate(self._cache):
            present = []
            for j, array in enumerate(cache.state):
                if array is not None:
                    arrays[f"c{i}.{j}"] = array
                present.append(array is not None)
            layout.append({"cls": type(cache).__name__, "present": present, "meta": list(_as_tuple(cache.meta_state))})
        if self._last_logits is not None:
            arrays["logits"] = self._last_logits
        header = {"fingerprint": self.info.fingerprint, "n_tokens": self._n, "layout": layout}
        buffer = io.BytesIO()
        self._mx.save_safetensors(buffer, arrays, metadata={"omnid": json.dumps(header)})
        body = buffer.getvalue()
        return Snapshot(n_tokens=self._n, payload=_SNAPSHOT_MAGIC + payload_checksum(body) + body, checked=True)

    def restore(self, snapshot: Snapshot) -> None:
        """Rebuild the cache objects from a snapshot; the sequence is untouched unless the whole payload is good."""
        arrays, header = self._read_payload(snapshot.payload, check_sum=not snapshot.checked)
        if header.get("fingerprint") != self.info.fingerprint:
            raise InputError("the snapshot was taken with other model weights or library versions")
        caches = self._make_cache(self._lm)
        layout = header.get("layout", [])
        if len(layout) != len(caches) or header.get("n_tokens") != snapshot.n_tokens:
            raise InputError("the snapshot does not match this model's cache layout")
        try:
            for i, (cache, entry) in enumerate(zip(caches, layout)):
                if entry["cls"] != type(cache).__name__:
                    raise InputError("the snapshot does not match this model's cache layout")
                cache.state = [arrays[f"c{i}.{j}"] if present else None for j, present in enumerate(entry["present"])]
                if entry["meta"]:
                    cache.meta_state = tuple(entry["meta"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the snapshot payload is unusable: {exc}") from exc
        self._cache, self._n, self._last_logits = caches, snapshot.n_tokens, arrays.get("logits")

    def _read_payload(self, payload: bytes | memoryview, *, check_sum: bool = True) -> tuple[dict[str, Any], dict]:
        """Check magic and checksum BEFORE handing bytes to MLX's parser, which must never see garbage."""
        head = len(_SNAPSHOT_MAGIC)
        body = memoryview(payload)[head + CHECKSUM_SIZE:]
        if bytes(payload[:head]) != _SNAPSHOT_MAGIC or \
                check_sum and payload_checksum(body) != bytes(payload[head:head + CHECKSUM_SIZE]):
            raise InputError("the snapshot payload is corrupt or not an MLX snapshot")
        try:
            arrays, metadata = self._mx.load(io.BytesIO(body), format="safetensors", return_metadata=True)
            return arrays, json.loads(metadata["omnid"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise InputError(f"the snapshot payload is unusable: {exc}") from exc

    # ----- several sequences -----------------------------------------------------------------------------

    @property
    def n_sequences(self) -> int:
        return len(self._parked)

    def select(self, seq: int) -> None:
        self._check_seq(seq)
        if seq == self._seq:
            return
        self._parked[self._seq] = _Parked(self._cache, self._n, self._last_logits)
        chosen = self._parked[seq]
        assert chosen is not None
        self._cache, self._n, self._last_logits = chosen.cache, chosen.n, chosen.last_logits
        self._parked[seq], self._seq = None, seq

    def decode_batch(self, work: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray]:
        """One sequence after another (see the module docstring), every one checked before any is evaluated."""
        for seq, tokens in work.items():
            self._check_seq(seq)
            if len(tokens) and not (0 <= min(tokens) and max(tokens) < self._vocab_size):
                raise InputError(f"sequence {seq}: a token is outside the vocabulary")
            check_room(self._n_of(seq), len(tokens), self.info.context_length)
        out: dict[int, np.ndarray] = {}
        for seq, tokens in work.items():
            if len(tokens):
                self.select(seq)
                self.append_tokens(tokens)
                out[seq] = self.logits()
        return out

    def _n_of(self, seq: int) -> int:
        parked = self._parked[seq]
        return self._n if parked is None else parked.n

    def _check_seq(self, seq: int) -> None:
        if not 0 <= seq < len(self._parked):
            raise InputError(f"no sequence {seq}: this backend holds {len(self._parked)} (0..{len(self._parked) - 1})")

    def close(self) -> None:
        self._parked = [None]
        self._cache = []
        self._last_logits = None
        del self._model, self._lm
        self._mx.clear_cache()


def _head_on_last_position(language_model: Any) -> None:
    """Make the language model's output layer compute the last position's logits only (where it has its own
    `lm_head`; a head tied to the embeddings is left as it is).

    Why: the backend reads no other logits, and mlx computes the whole product before a slice of it is taken: for
    each 512-token chunk of a prefill a 512 x vocabulary matrix (Nemotron's 131k: 67M logits, 134 MB in bf16,
    360 GFLOP at a 2688-wide hidden state), all of it thrown away."""
    import mlx.nn as nn

    head = getattr(language_model, "lm_head", None)
    if not isinstance(head, nn.Module):
        return
    own_call = type(head).__call__

    def last_position(self: Any, hidden: Any) -> Any:
        return own_call(self, hidden[:, -1:])
    # Its own class with __call__ replaced: the weights (and what reads them, e.g. lm_head.weight.dtype) stay.
    head.__class__ = type(f"LastPosition{type(head).__name__}", (type(head),), {"__call__": last_position})


def _as_tuple(meta_state: Any) -> tuple[str, ...]:
    """Cache meta_state is "" (nothing) or a tuple of strings, depending on the cache class."""
    if not meta_state:
        return ()
    return (meta_state,) if isinstance(meta_state, str) else tuple(str(m) for m in meta_state)


_BYTE_DECODER = _byte_decoder()
