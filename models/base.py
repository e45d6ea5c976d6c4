"""The backend interface: what the daemon needs from a model runtime, and nothing more.

The daemon never calls llama.cpp or mlx-vlm directly. It talks to one `Backend`, which owns one or more decoder
sequences (see `select`) and lets the daemon, on the selected sequence,

  * append prompt segments to that sequence (text through the tokenizer, images and audio through the
    model's own encoders),
  * snapshot the sequence at a segment boundary and restore it later (the shared prompt cache),
  * read the next-token logits and append a sampled token (generation; sampling is the daemon's job).

Why segments: a prompt is a chain of segments, and the prompt cache is keyed on the content hashes of that
chain, never on token ids (media positions carry placeholder ids that say nothing about the pixels or the
sound). Why whole-sequence snapshots: restoring a snapshot taken exactly at a boundary is correct for
attention, sliding-window and recurrent/hybrid decoders alike, where trimming a sequence is not.

Errors: a backend raises `InputError` (bad media, unsupported modality) or `ContextOverflow` (the sequence
would not fit) BEFORE touching the C library with anything that could abort it, and leaves the sequence as it
was before the failing call. The checks every backend needs are written once, below (`require`,
`check_media`, `check_room`), as is the weights fingerprint (`weights_fingerprint`); each backend passes its
own limits. tests/test_backend_conformance.py holds every registered backend (models/registry.py) to this.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence, Union

import numpy as np
import xxhash

Modality = Literal["text", "image", "audio"]

# The rate every AudioSegment is sampled at unless the backend reports otherwise (ModelInfo.audio_sample_rate).
DEFAULT_AUDIO_SAMPLE_RATE = 16_000


class InputError(ValueError):
    """The input cannot be used by this model: the daemon answers INVALID_ARGUMENT / FAILED_PRECONDITION."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        #: True when the input is fine but the model lacks the capability (FAILED_PRECONDITION).
        self.unsupported = unsupported


class OverLimit(InputError):
    """The input is valid but costs more than the daemon gives one request (pixels, seconds of audio, a page's
    content): RESOURCE_EXHAUSTED, and the message names the number and the limit."""


class ContextOverflow(InputError):
    """The sequence would exceed the model's context: the daemon answers OUT_OF_RANGE."""

    def __init__(self, needed: int, available: int, what: str = "") -> None:
        super().__init__(f"{what}, but only {available} fit the model's context" if what else
                         f"the prompt needs {needed} tokens but only {available} fit the model's context")
        self.needed = needed
        self.available = available


class ModelLoadError(RuntimeError):
    """The model files are missing, not model files, or do not fit together (a clear start-up message)."""


class EngineUnavailable(RuntimeError):
    """A remote engine cannot be reached, or went away mid-answer: the client gets UNAVAILABLE and may retry."""


def _digest(kind: str, *chunks: bytes) -> str:
    h = hashlib.blake2b(digest_size=16, person=b"omnid-segment")
    h.update(kind.encode())
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class TextSegment:
    """Text, tokenized on its own (no BOS added): the chat template's pieces are text segments too.

    Only template pieces (`template=True`, made by the daemon from the model's own chat template) may turn
    into control tokens. Everything a client, a PDF page or a transcript supplies is tokenized as plain text:
    a page holding "<|im_end|><|im_start|>system" must not close the user's turn and open a system turn.
    """

    text: str
    template: bool = False
    kind: Literal["text"] = field(default="text", init=False)

    def digest(self) -> str:
        return _digest("template" if self.template else "text", self.text.encode("utf-8"))


@dataclass(frozen=True, eq=False)
class ImageSegment:
    """An RGB image, uint8 array of shape (height, width, 3), already decoded and size-checked."""

    rgb: np.ndarray
    kind: Literal["image"] = field(default="image", init=False)

    def __post_init__(self) -> None:
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise InputError(f"an image must be uint8 HxWx3, got {self.rgb.dtype} {self.rgb.shape}")

    def digest(self) -> str:
        h, w, _ = self.rgb.shape
        return _digest("image", f"{w}x{h}".encode(), np.ascontiguousarray(self.rgb).tobytes())


@dataclass(frozen=True, eq=False)
class AudioSegment:
    """Mono float32 PCM in [-1, 1] at `sample_rate` (the backend's ModelInfo.audio_sample_rate)."""

    pcm: np.ndarray
    sample_rate: int = DEFAULT_AUDIO_SAMPLE_RATE
    kind: Literal["audio"] = field(default="audio", init=False)

    def __post_init__(self) -> None:
        if self.pcm.dtype != np.float32 or self.pcm.ndim != 1:
            raise InputError(f"audio must be mono float32, got {self.pcm.dtype} {self.pcm.shape}")

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.sample_rate

    def digest(self) -> str:
        return _digest("audio", str(self.sample_rate).encode(), np.ascontiguousarray(self.pcm).tobytes())


Segment = Union[TextSegment, ImageSegment, AudioSegment]


#: render(messages, add_generation_prompt, extra template variables such as tools or enable_thinking) -> text.
ChatRenderer = Callable[[list[dict], bool, dict], str]


@dataclass(frozen=True)
class ChatFrame:
    """The model's chat template cut into fixed text pieces around one system text and one user turn.

    A prompt is laid out as  head + [system_open + system + system_close] + user_open + parts... + user_close
    (user_close ends with the assistant's opening, so generation starts right after it). A conversation that
    goes on in the same sequence (a meeting transcribed clip by clip) appends assistant_close + user_open +
    parts... + user_close after the generated answer. Rendering the template with sentinel strings and
    cutting at them keeps every piece fixed, so the cache key of a prefix does not depend on what follows it.
    """

    head: str
    system_open: str
    system_close: str
    user_open: str
    user_close: str
    assistant_close: str
    template_digest: str


@dataclass(frozen=True)
class ModelInfo:
    """What the daemon reports and plans with (Status, capability checks, audio clip sizes)."""

    name: str
    path: str
    #: The registered name of the backend serving it (models/registry.py).
    backend: str
    capabilities: frozenset[Modality]
    context_length: int
    #: Identifies the weights AND the settings that change logits; cache entries from another fingerprint are refused.
    fingerprint: str
    mmproj_path: str = ""
    audio_sample_rate: int = DEFAULT_AUDIO_SAMPLE_RATE
    #: Longest audio clip the encoder takes in one piece, in seconds (None = no limit of its own).
    max_audio_clip_seconds: float | None = None
    #: Longest image side the vision encoder is fed; larger images are downscaled by the daemon.
    max_image_side: int = 1024
    #: Audio encoder tokens per second of sound (for planning; 0 when unknown).
    audio_tokens_per_second: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class Snapshot:
    """The decoder sequence's state at a segment boundary, as opaque bytes the same backend can restore."""

    n_tokens: int
    #: Immutable bytes: `bytes`, or a read-only view of a mapped cache file (the disk tier).
    payload: bytes | memoryview
    #: The payload is known to match its checksum (the backend just made it, or the disk tier just checked the
    #: file): a restore skips checking it again, which every RAM hit would otherwise pay.
    checked: bool = field(default=False, compare=False)

    @property
    def nbytes(self) -> int:
        return len(self.payload)


#: Size of `payload_checksum`'s digest in bytes.
CHECKSUM_SIZE = 16


def payload_checksum(data: bytes | memoryview) -> bytes:
    """The checksum of snapshot payloads and cache files: XXH3-128, ~25 GB/s.

    Why not SHA-256: it costs ~5 ms per 8 MB (a 16k-token prefix of the test model) on every disk hit, and the
    threat is a torn or corrupted file in the user's own 0700 directory, not an adversary.
    """
    return xxhash.xxh3_128_digest(data)


# -- the checks every backend makes, once ----------------------------------------------------------------------

#: What users call the encoder of each modality.
_ENCODER = {"text": "text", "image": "vision", "audio": "audio"}


def require(info: ModelInfo, modality: str, purpose: str = "") -> None:
    """InputError(unsupported) unless the model takes `modality`; `purpose` says what the caller wanted."""
    if modality not in info.capabilities:
        have = ", ".join(sorted(info.capabilities))
        wanted = f", so it cannot {purpose}" if purpose else ""
        raise InputError(f"the model {info.name!r} has no {_ENCODER.get(modality, modality)} encoder{wanted} "
                         f"(it takes: {have}; start omnid with an omni model, or its mmproj, for more)",
                         unsupported=True)


def check_media(info: ModelInfo, segment: "ImageSegment | AudioSegment", *, min_image_side: int = 1,
                min_audio_samples: int = 1, max_audio_seconds: float | None = None) -> None:
    """The checks before any media reaches an encoder (whose C code may abort on bad input): the model has
    the encoder, the image is not degenerate, the sound is at the encoder's rate, finite, long enough and
    (where the encoder has a limit it cannot split at) short enough. The limits are the backend's own."""
    require(info, segment.kind)
    if isinstance(segment, ImageSegment):
        h, w, _ = segment.rgb.shape
        if min(h, w) < min_image_side:
            raise InputError(f"a {w}x{h} image is too small to encode (at least {min_image_side} pixels a side)")
        return
    if segment.sample_rate != info.audio_sample_rate:
        raise InputError(f"audio must be sampled at {info.audio_sample_rate} Hz, got {segment.sample_rate}")
    if len(segment.pcm) < min_audio_samples:
        raise InputError(f"the audio clip is too short ({segment.seconds:.3f} s < "
                         f"{min_audio_samples / segment.sample_rate:.3f} s)")
    if not np.isfinite(segment.pcm).all():
        raise InputError("the audio contains NaN or infinite samples")
    if max_audio_seconds is not None and segment.seconds > max_audio_seconds:
        raise InputError(f"audio clips are limited to {max_audio_seconds:.2f} s by the encoder; "
                         f"got {segment.seconds:.2f} s")


#: Fewer audio tokens than a sound's length promises, at most, for `check_fits` (a margin for how encoders round).
AUDIO_TOKEN_MARGIN = 0.9
#: More characters than any one token holds: a text longer than this many times the context cannot fit it.
MAX_CHARS_PER_TOKEN = 64


def check_fits(info: ModelInfo, *, audio_seconds: float = 0.0, text_chars: int = 0) -> None:
    """ContextOverflow when an input certainly cannot fit the context, judged from its size alone: before a sound
    is decoded, resampled or encoded (230 MB of 8 kHz PCM took 4.1 GB and 30 s to be refused after resampling),
    or a text is tokenized. Only what is certain is refused; the exact check comes later (check_room)."""
    if audio_seconds and info.audio_tokens_per_second > 0:
        needed = int(audio_seconds * info.audio_tokens_per_second * AUDIO_TOKEN_MARGIN)
        if needed > info.context_length:
            raise ContextOverflow(needed, info.context_length,
                                  f"{audio_seconds:.1f} s of audio needs at least {needed} tokens")
    if text_chars > MAX_CHARS_PER_TOKEN * info.context_length:
        needed = text_chars // MAX_CHARS_PER_TOKEN
        raise ContextOverflow(needed, info.context_length, f"a text of {text_chars} characters needs at least "
                                                           f"{needed} tokens")


def check_room(n_tokens: int, n_new: int, context_length: int) -> None:
    """ContextOverflow unless n_new more tokens fit after n_tokens."""
    if n_tokens + n_new > context_length:
        raise ContextOverflow(n_tokens + n_new, context_length)


#: Bytes read from each end of a weights file for its fingerprint.
FINGERPRINT_EDGE_BYTES = 1 << 20


def weights_fingerprint(person: bytes, files: Sequence[Path], *, head: Sequence[bytes] = (), tail: bytes = b"",
                        named: bool = False) -> str:
    """Identify weights cheaply: each file's size (and name, if `named`) and its first and last MiB, after
    `head` and before `tail` (the backend's versions and logit-affecting settings).

    Hashing whole multi-GB weight files would cost seconds at every start; sizes and edges change whenever
    the weights do in practice. A snapshot or cache entry made under another fingerprint is refused."""
    h = hashlib.blake2b(digest_size=16, person=person)
    for chunk in head:
        h.update(chunk)
    for path in files:
        size = path.stat().st_size
        h.update((path.name.encode() if named else b"") + size.to_bytes(8, "little"))
        with path.open("rb") as f:
            h.update(f.read(FINGERPRINT_EDGE_BYTES))
            f.seek(max(0, size - FINGERPRINT_EDGE_BYTES))
            h.update(f.read(FINGERPRINT_EDGE_BYTES))
    h.update(tail)
    return h.hexdigest()


class Backend(ABC):
    """One loaded model with one or more decoder sequences (see `select`). Not thread-safe: one daemon thread is
    its only caller."""

    info: ModelInfo

    @abstractmethod
    def chat_frame(self) -> ChatFrame:
        """The model's chat template as fixed pieces (see ChatFrame)."""

    def chat_renderer(self) -> ChatRenderer | None:
        """The model's chat template as a function, for whole conversations (None: the model has no template).

        Why besides the frame: a conversation (assistant turns, tool calls and results, declared tools, the
        thinking switch) is laid out the way the template itself says, rendered per request with sentinels in
        place of the contents (daemon/chat_layout.py); the frame's fixed pieces cover one system and user turn.
        """
        return None

    @property
    @abstractmethod
    def n_tokens(self) -> int:
        """Tokens in the sequence now."""

    @abstractmethod
    def reset(self) -> None:
        """Empty the sequence."""

    @abstractmethod
    def count_tokens(self, segment: Segment) -> int:
        """Tokens the segment would add, without evaluating it (exact for text, the encoder's count for media)."""

    @abstractmethod
    def tokenize(self, segment: TextSegment) -> list[int]:
        """The token ids of a text segment, as `append` would evaluate them (control tokens only if template).

        Why: the prompt cache compares prompts token by token, so a request that shares 9,000 of 9,416 tokens
        with an earlier one reuses those 9,000 tokens even where both are one long text segment.
        """

    @abstractmethod
    def append_tokens(self, tokens: Sequence[int], should_stop: Callable[[], bool] | None = None) -> None:
        """Evaluate token ids (from `tokenize`, or sampled) at the end of the sequence, in one call.

        Errors and `should_stop` behave as in `append`. A prefill resumed in the middle of a text segment
        (after a cut or a checkpoint) evaluates the rest of that segment's tokens through here.
        """

    @abstractmethod
    def append(self, segment: Segment, should_stop: Callable[[], bool] | None = None) -> int:
        """Evaluate the segment at the end of the sequence and return how many tokens it added.

        Raises InputError / ContextOverflow before evaluating anything when the segment cannot be used, leaving
        the sequence unchanged. `should_stop` is polled between batches of a long prefill; when it returns
        True the backend stops early and the sequence is left in an unspecified state (the caller resets).
        """

    @property
    def can_truncate(self) -> bool:
        """Whether `truncate` works on this decoder (attention-only caches; never recurrent or hybrid ones)."""
        return False

    def truncate(self, n_tokens: int) -> bool:
        """Cut the sequence back to its first n_tokens, where the decoder can; False leaves it unchanged.

        Why: cutting the live sequence (or a restored snapshot) back to the tokens it shares with the next
        prompt costs nothing whatever the prefix length, where evaluating them again costs a prefill. Only
        attention caches can be cut (a recurrent state cannot be rewound; a sliding-window cache may have
        dropped tokens the shorter sequence needs), and never inside an image or a sound (the caller cuts
        between tokens or at the end of a media segment). The default refuses: restoring a checkpoint is
        always correct.
        """
        return False

    @abstractmethod
    def logits(self) -> np.ndarray:
        """Next-token logits (float32, shape (n_vocab,)) after the last appended segment or token."""

    @abstractmethod
    def append_token(self, token: int) -> None:
        """Append one sampled token to the sequence (one decode step)."""

    @abstractmethod
    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (may be part of a UTF-8 character)."""

    @abstractmethod
    def is_end_of_generation(self, token: int) -> bool:
        """True for end-of-sequence / end-of-turn tokens."""

    @abstractmethod
    def snapshot(self) -> Snapshot:
        """The sequence's state now, restorable by `restore` in this or a later process of the same model."""

    @abstractmethod
    def restore(self, snapshot: Snapshot) -> None:
        """Replace the sequence by a snapshot's state (raises InputError if the payload is unusable)."""

    def close(self) -> None:
        """Free the model (the daemon calls it once, at shutdown)."""

    # -- several sequences at once (issue 16) -------------------------------------------------------------------
    #
    # A backend may hold several decoder sequences (llama.cpp: one context, n_seq_max sequences, each its own KV
    # cells and recurrent state; mlx: one list of cache objects per sequence). Every single-sequence method above
    # acts on the SELECTED sequence, so a job's DecoderSession drives "its" sequence through the same API it always
    # used, and the daemon's batching engine (one thread, the only caller) selects before each call. The defaults
    # below are those of a one-sequence backend.

    @property
    def n_sequences(self) -> int:
        """How many sequences this backend holds at once (each with the full context_length)."""
        return 1

    def select(self, seq: int) -> None:
        """Make `seq` (0 <= seq < n_sequences) the sequence every single-sequence method acts on."""
        if seq != 0:
            raise ValueError(f"this backend holds one sequence, not sequence {seq}")

    @property
    def any_thread(self) -> bool:
        """Whether calls may come from any thread (one at a time). Why: the batching engine then lets the job
        thread that waits run the step itself instead of handing every token to one engine thread and back
        (daemon/batch_engine.py). False where the runtime is thread-affine (mlx keeps its streams per thread)."""
        return False

    @property
    def batch_capacity(self) -> int:
        """The most tokens one `decode_batch` call takes, all sequences together (llama.cpp: n_batch)."""
        return 512

    def decode_batch(self, work: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray]:
        """Evaluate each sequence's tokens at its end and return each sequence's next-token logits.

        Why: decoding is memory-bound, so the next token of every generating sequence, and a chunk of another
        sequence's prefill, cost little more in one forward pass than one token alone (llama.cpp: one
        llama_decode over a batch whose tokens carry their own seq_id). At most `batch_capacity` tokens in all;
        every sequence is checked (vocabulary, room) before anything is evaluated, and an error leaves them all
        as they were. The selected sequence afterwards is unspecified. The default evaluates one after another.
        """
        out: dict[int, np.ndarray] = {}
        for seq, tokens in work.items():
            self.select(seq)
            self.append_tokens(tokens)
            out[seq] = self.logits()
        return out

    def copy_sequence(self, src: int, dst: int) -> None:
        """Make sequence `dst` hold exactly what `src` holds (src unchanged), without evaluating anything again
        where the runtime can copy in place (llama.cpp: llama_memory_seq_cp). Default: snapshot and restore."""
        self.select(src)
        snapshot = self.snapshot()
        self.select(dst)
        self.restore(snapshot)


@dataclass(frozen=True)
class RemoteAnswer:
    """How a remotely generated answer ended, with the engine's own counts where it returned them."""

    stop_reason: str  # "eos", "max_tokens", "stop" (the caller's on_text asked to stop)
    generated_tokens: int
    prompt_tokens: int | None = None
    #: usage.prompt_tokens_details.cached_tokens: what the engine's own prefix cache reused.
    cached_tokens: int | None = None


@dataclass(frozen=True)
class RemoteCall:
    """A tool call the engine made, as it wrote it (the daemon checks the arguments and the name)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class RemoteFeatures:
    """What the engine was found to honour at start-up (probed: engines ignore what they do not know)."""

    #: How a JSON Schema reaches it: "json_schema" (OpenAI's response_format), "json_object" (llama-cpp-python's
    #: {"type": "json_object", "schema": ...}), or "" (it holds no answer to a schema).
    schema_format: str = ""
    #: It answers tool calls as structured tool_calls.
    tools: bool = False
    #: chat_template_kwargs.enable_thinking changes its answer (the template has the switch and the engine passes
    #: it on).
    thinking_switch: bool = False


@dataclass(frozen=True)
class RemoteChat:
    """A conversation turn as an engine's /v1/chat/completions takes it: the messages are OpenAI's (media parts
    from RemoteGeneration.encoded), the rest is put into the request by the backend in the form it takes."""

    messages: tuple[dict, ...]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    seed: int = 0
    #: OpenAI function tools: {"type": "function", "function": {"name", "description", "parameters"}}.
    tools: tuple[dict, ...] = ()
    tool_choice: str = "auto"  # "auto" | "none" | "required" | a tool's name
    response_schema: dict | None = None
    thinking: bool | None = None  # chat_template_kwargs.enable_thinking; None = the engine's default
    #: The routing key (remote_router): conversations sharing it go to the same engine.
    affinity: str = ""


@dataclass(frozen=True)
class RemoteListener:
    """Where an engine's streamed answer goes: text (True back ends the answer), thinking, complete tool calls."""

    text: Callable[[str], bool]
    should_stop: Callable[[], bool]
    reasoning: Callable[[str], None] = lambda _: None
    call: Callable[[RemoteCall], None] = lambda _: None


class RemoteGeneration(ABC):
    """A Backend whose engine generates (an OpenAI-compatible server): no logits, no snapshots, its own template.

    The daemon's DecoderSession takes one branch for such a backend: its prefill `hold`s the prompt's segments
    (nothing is evaluated here), its generate `stream`s the answer from the engine. The prompt cache is the
    engine's own prefix cache; what omnid does for it is send byte-identical prompts for shared prefixes.
    """

    @abstractmethod
    def hold(self, segments: Sequence[Segment], affinity: int) -> tuple[int, str]:
        """Make `segments` the prompt `stream` answers next; (its estimated tokens, its key).

        The first `affinity` segments are the prefix others share (the prompt's last cache point): requests
        with the same such prefix go to the same engine, whose prefix cache holds it."""

    @abstractmethod
    def stream(self, max_tokens: int, *, temperature: float, top_p: float, top_k: int, seed: int,
               on_text: Callable[[str], bool], should_stop: Callable[[], bool]) -> RemoteAnswer:
        """Generate from the held prompt, calling on_text with each piece (True from it ends the answer).

        should_stop is polled while waiting; when it turns True the HTTP stream is closed at once and the
        answer returned as it is. EngineUnavailable when the engine cannot be reached or goes away."""

    @abstractmethod
    def warm(self) -> None:
        """Have the engine evaluate the held prompt (one token generated), so its prefix cache holds it."""

    @abstractmethod
    def on_sequence(self, seq: int) -> "Backend":
        """This backend bound to sequence `seq`: what one job thread streams through while others stream through
        theirs (the engine batches concurrent requests; nothing here waits for another sequence's answer)."""

    #: What the engine honours beyond text and media (set at start-up).
    features: RemoteFeatures = RemoteFeatures()

    @abstractmethod
    def chat(self, request: RemoteChat, listener: RemoteListener) -> RemoteAnswer:
        """Answer a conversation with the engine's own chat template, streamed to `listener` (errors as stream's)."""

    @abstractmethod
    def encoded(self, segment: ImageSegment | AudioSegment) -> dict:
        """The OpenAI content part for a medium (image_url / input_audio data URI), checked against the
        capabilities (InputError) and byte-identical for equal content."""
