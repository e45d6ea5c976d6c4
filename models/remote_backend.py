"""The remote backend: an OpenAI-compatible engine (vLLM, SGLang, llama-server, llama-cpp-python) runs the model.

omnid keeps every pipeline (documents, meetings, the screen, the stores, priorities) and the engine does the
model: its own chat template, batching, parallelism and prefix cache. The daemon lays prompts out as always;
this backend's ChatFrame pieces are markers that say where turns open and close, so the held segments turn
back into chat messages: system text, user content (text merged, images as PNG data URIs in `image_url`
parts, sound as WAV in `input_audio` parts), earlier answers as assistant messages.

The prompt cache is the engine's. What omnid does for it: a prompt that shares a prefix with an earlier one is
sent byte-identical over that prefix (the same system text, the same JSON layout, the same media encoding:
PNG and WAV are deterministic, and an encoding is reused by content digest), and it goes to the same engine
(remote_router). The engine's cached tokens come back in Usage where it reports them.

Conversations (`chat`) go to the engine as its own message list (daemon/remote_chat.py builds it): thinking,
tool calls and JSON-schema answers are the engine's, asked for in the forms it was found to honour at start-up
(RemoteFeatures, probed in `connect`). Not here: logits, snapshots and truncation (the engine has them, the API
does not give them).
"""
from __future__ import annotations

import base64
import copy
import hashlib
import http.client
import io
import json
import math
import threading
import wave
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from omnid.models.base import (AudioSegment, Backend, ChatFrame, EngineUnavailable, ImageSegment,
                               InputError, ModelInfo, ModelLoadError, Modality, RemoteAnswer, RemoteCall, RemoteChat,
                               RemoteFeatures, RemoteGeneration, RemoteListener, Segment, Snapshot, TextSegment,
                               check_media, check_room)
from omnid.models.remote_http import Engine, HttpError, NotConnected, Timeouts, refused_request, unreachable
from omnid.models.remote_router import Router

# The frame's pieces: never sent anywhere, only compared (template=True segments come from the daemon alone).
_SYSTEM_OPEN, _SYSTEM_CLOSE = "\x00omnid:system\x00", "\x00omnid:/system\x00"
_USER_OPEN, _USER_CLOSE = "\x00omnid:user\x00", "\x00omnid:/user\x00"
_ASSISTANT_CLOSE = "\x00omnid:/assistant\x00"

#: Planning estimates where the engine does not count for us (the engine's usage gives the real numbers).
BYTES_PER_TOKEN_ESTIMATE = 3
IMAGE_TOKENS_ESTIMATE = 256
AUDIO_TOKENS_PER_SECOND_ESTIMATE = 25.0
#: Requests sent to the engines at once without --parallel: an engine batches more than one machine's apps
#: send at once, and each costs omnid only a thread and a connection while it streams.
DEFAULT_SEQUENCES = 8
#: Token counts and media encodings remembered by content digest.
COUNT_CACHE = 8192
ENCODING_CACHE = 64

_NO_LOGITS = ("a remote engine returns text, not logits or token-level state: omnid's DecoderSession streams "
              "its answers instead")


@dataclass(frozen=True)
class RemoteSettings:
    """What `omnid serve --backend remote` was given."""

    urls: tuple[str, ...]
    model: str = ""
    token: str = field(default="", repr=False)
    insecure: bool = False
    timeouts: Timeouts = Timeouts()
    #: Seconds a failed engine is skipped before it is tried again.
    retry_after: float = 5.0


class _Lru:
    """A bounded map, the least recently put entry evicted first. Locked: the job threads of every sequence
    share the backend's token counts and media encodings."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            return self._items.get(key)

    def put(self, key: Any, value: Any) -> Any:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


@dataclass
class _Held:
    """The prompt one sequence holds: what its next `stream` answers (its segments, their estimated tokens, the
    routing key of their shared prefix)."""

    segments: list[Segment] = field(default_factory=list)
    n_tokens: int = 0
    key: str | None = None

    def clear(self) -> None:
        self.segments, self.n_tokens, self.key = [], 0, None


@dataclass(frozen=True)
class _Tokenizer:
    """How this engine counts tokens: an endpoint (under the server's root) and how to read its answer."""

    name: str
    path: str
    body: Callable[[str, str], dict]
    baseline: int  # tokens the endpoint adds to any text (a BOS), subtracted


_TOKENIZERS = (  # tried in order at start-up; the first that answers is kept
    ("vllm", "/tokenize", lambda model, text: {"model": model, "prompt": text, "add_special_tokens": False}),
    ("llama-server", "/tokenize", lambda model, text: {"content": text}),
    ("llama-cpp-python", "/extras/tokenize", lambda model, text: {"input": text}),
)


class RemoteBackend(RemoteGeneration, Backend):
    """One model served by one or more engines, with `sequences` prompts held at once.

    Why sequences here: the engine batches concurrent requests itself (continuous batching), so omnid only has
    to send several at once; which jobs get a sequence is still omnid's scheduler (its priorities, per-client
    cap and queue limits). Each sequence holds one prompt; `on_sequence(seq)` is this backend bound to one of
    them, which a job thread streams through directly (every HTTP call opens its own connection, and what the
    sequences share, the router and the caches, is locked), so no stream waits for another's.
    """

    def __init__(self, settings: RemoteSettings, info: ModelInfo, router: Router, tokenizer: _Tokenizer | None,
                 sequences: int = 1):
        self.settings = settings
        self.info = info
        self.router = router
        self._tokenizer = tokenizer
        self._frame = ChatFrame(head="", system_open=_SYSTEM_OPEN, system_close=_SYSTEM_CLOSE, user_open=_USER_OPEN,
                                user_close=_USER_CLOSE, assistant_close=_ASSISTANT_CLOSE,
                                template_digest=_digest(b"remote-template:" + info.name.encode()))
        self._sequences = [_Held() for _ in range(max(1, sequences))]
        self._held = self._sequences[0]
        self._counts: _Lru = _Lru(COUNT_CACHE)
        self._encodings: _Lru = _Lru(ENCODING_CACHE)

    # -- the prompt ------------------------------------------------------------------------------------------

    def chat_frame(self) -> ChatFrame:
        return self._frame

    @property
    def n_tokens(self) -> int:
        return self._held.n_tokens

    def reset(self) -> None:
        self._held.clear()

    # -- sequences -------------------------------------------------------------------------------------------

    @property
    def n_sequences(self) -> int:
        return len(self._sequences)

    def select(self, seq: int) -> None:
        self._held = self._sequences[self._checked(seq)]

    def on_sequence(self, seq: int) -> "RemoteBackend":
        """This backend bound to sequence `seq` (its own selection; the engines, router and caches shared): what
        one job thread uses while others stream through their own sequences."""
        view = copy.copy(self)
        view._held = self._sequences[self._checked(seq)]
        return view

    def _checked(self, seq: int) -> int:
        if not 0 <= seq < len(self._sequences):
            raise InputError(f"sequence {seq} is not one of this backend's {len(self._sequences)}")
        return seq

    def count_tokens(self, segment: Segment) -> int:
        if isinstance(segment, TextSegment):
            return len(self.tokenize(segment))
        check_media(self.info, segment)
        if isinstance(segment, ImageSegment):
            return IMAGE_TOKENS_ESTIMATE
        return max(1, math.ceil(segment.seconds * AUDIO_TOKENS_PER_SECOND_ESTIMATE))

    def tokenize(self, segment: TextSegment) -> list[int]:
        """The engine's token ids for the text (remembered by digest); without a tokenize endpoint, one pseudo
        id per few bytes (an estimate: the engine's usage has the real count)."""
        digest = segment.digest()
        known = self._counts.get(digest)
        if known is not None:
            return known
        if self._tokenizer is None:
            raw = segment.text.encode("utf-8")
            ids = [int.from_bytes(raw[i:i + BYTES_PER_TOKEN_ESTIMATE].ljust(4, b"\0")[:4], "little")
                   for i in range(0, len(raw), BYTES_PER_TOKEN_ESTIMATE)]
        else:
            ids = self._engine_tokens(self._tokenizer, segment.text)
        return self._counts.put(digest, ids)

    def _engine_tokens(self, tokenizer: _Tokenizer, text: str) -> list[int]:
        """Tokenize on the engines (an idempotent call: retried on the next engine when one fails)."""
        last: BaseException | None = None
        for engine in self.router.order(None):
            try:
                answer = engine.call("POST", tokenizer.path, tokenizer.body(self.info.name, text), root=True)
            except HttpError as exc:
                if exc.status < 500:
                    raise InputError(f"the remote engine could not tokenize the text: {exc.message}") from None
                last = exc
            except (OSError, http.client.HTTPException) as exc:
                last = exc
            else:
                self.router.ok(engine, None)
                return [int(t) for t in answer["tokens"]][tokenizer.baseline:]
            self.router.failed(engine)
        assert last is not None
        raise unreachable(self.router.engines[0].url, last)

    def append(self, segment: Segment, should_stop: Callable[[], bool] | None = None) -> int:
        count = self.count_tokens(segment)
        check_room(self._held.n_tokens, count, self.info.context_length)
        self._held.segments.append(segment)
        self._held.n_tokens += count
        return count

    def hold(self, segments: Sequence[Segment], affinity: int) -> tuple[int, str]:
        """Keep the prompt, checking only what needs no engine (media against the capabilities): counting
        its text on the engine would add a round trip to every request's time to first token."""
        total = 0
        for segment in segments:
            if isinstance(segment, TextSegment):
                known = self._counts.get(segment.digest())
                total += len(known) if known is not None else _estimate(segment.text)
            else:
                total += self.count_tokens(segment)
        self._held.segments, self._held.n_tokens = list(segments), total
        self._held.key = _digest(b"".join(s.digest().encode() for s in segments[:affinity])) if affinity else None
        return total, _digest(b"".join(s.digest().encode() for s in segments))

    # -- generation ------------------------------------------------------------------------------------------

    def messages(self) -> list[dict]:
        """The held segments as chat messages (see the module docstring)."""
        out: list[dict] = []
        role: str | None = None
        content: list[dict] = []

        def close() -> None:
            nonlocal content
            if role is not None and (content or role != "assistant"):
                out.append({"role": role, "content": _content(content)})
            content = []
        for segment in self._held.segments:
            if isinstance(segment, TextSegment) and segment.template:
                close()
                role = {_SYSTEM_OPEN: "system", _USER_OPEN: "user", _USER_CLOSE: "assistant"}.get(segment.text)
                continue
            if role is None:
                role = "user"
            if isinstance(segment, TextSegment):
                if content and content[-1]["type"] == "text":
                    content[-1] = {"type": "text", "text": content[-1]["text"] + segment.text}
                else:
                    content.append({"type": "text", "text": segment.text})
            else:
                content.append(self._encoded(segment))
        close()
        return out

    def encoded(self, segment: ImageSegment | AudioSegment) -> dict:
        check_media(self.info, segment)
        return self._encoded(segment)

    def _encoded(self, segment: ImageSegment | AudioSegment) -> dict:
        digest = segment.digest()
        known = self._encodings.get(digest)
        if known is not None:
            return known
        if isinstance(segment, ImageSegment):
            part: dict = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _png(segment.rgb)}}
        else:
            part = {"type": "input_audio", "input_audio": {"data": _wav(segment), "format": "wav"}}
        return self._encodings.put(digest, part)

    def request(self, max_tokens: int, *, temperature: float = 0.0, top_p: float = 0.0, top_k: int = 0,
                seed: int = 0) -> dict:
        """The chat completion request for the held prompt: without thinking where the engine has the switch,
        as a single turn is answered on a local model (a conversation switches it per request)."""
        return self.body(RemoteChat(tuple(self.messages()), max_tokens, temperature, top_p, top_k, seed,
                                    thinking=False if self.features.thinking_switch else None))

    def body(self, chat: RemoteChat) -> dict:
        """The request body (messages first: the engine hashes the prompt it renders from them, and equal
        prefixes render to equal tokens); tools, the schema and the thinking switch in the forms the engine
        was found to take at start-up."""
        body: dict = {"model": self.info.name, "messages": list(chat.messages), "stream": True,
                      "stream_options": {"include_usage": True}, "max_tokens": chat.max_tokens,
                      "temperature": chat.temperature, "seed": chat.seed}
        if chat.top_p:
            body["top_p"] = chat.top_p
        if chat.top_k:
            body["top_k"] = chat.top_k
        if chat.tools:
            body["tools"] = list(chat.tools)
            body["tool_choice"] = chat.tool_choice if chat.tool_choice in ("auto", "none", "required") else \
                {"type": "function", "function": {"name": chat.tool_choice}}
        if chat.response_schema is not None:
            body["response_format"] = response_format(self.features.schema_format, chat.response_schema)
        if chat.thinking is not None:
            body["chat_template_kwargs"] = {"enable_thinking": chat.thinking}
        return body

    def stream(self, max_tokens: int, *, temperature: float, top_p: float, top_k: int, seed: int,
               on_text: Callable[[str], bool], should_stop: Callable[[], bool]) -> RemoteAnswer:
        body = self.request(max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        return self._answer(body, self._held.key, RemoteListener(on_text, should_stop))

    def chat(self, request: RemoteChat, listener: RemoteListener) -> RemoteAnswer:
        return self._answer(self.body(request), request.affinity or None, listener)

    def _answer(self, body: dict, key: str | None, listener: RemoteListener) -> RemoteAnswer:
        """Stream the answer from the engine the router picks; on to the next only when nothing reached one."""
        last: BaseException | None = None
        for engine in self.router.order(key):
            with self.router.lease(engine):
                try:
                    answer = self._stream_on(engine, body, listener)
                except NotConnected as exc:  # nothing reached this engine: the next one may take it
                    self.router.failed(engine)
                    last = exc
                    continue
                except HttpError as exc:
                    if exc.status >= 500:
                        self.router.failed(engine)
                        raise unreachable(engine.url, exc) from None
                    raise refused_request(exc, self.info.context_length, self._held.n_tokens) from None
                except (EngineUnavailable, OSError, http.client.HTTPException) as exc:
                    self.router.failed(engine)
                    raise exc if isinstance(exc, EngineUnavailable) else unreachable(engine.url, exc) from None
            self.router.ok(engine, key)
            return answer
        assert last is not None
        raise unreachable(", ".join(e.url for e in self.router.engines), last)

    def _stream_on(self, engine: Engine, body: dict, listener: RemoteListener) -> RemoteAnswer:
        """The answer's deltas to the listener: content, reasoning ("reasoning_content", or vLLM's newer
        "reasoning"), and tool calls, whose fragments are joined and handed on once complete."""
        pieces, reason = 0, "eos"
        usage: dict = {}
        calls = _Calls(listener.call)
        events = engine.stream_chat(body, listener.should_stop)
        try:
            for event in events:
                usage = event.get("usage") or usage
                for choice in event.get("choices") or ():
                    delta = choice.get("delta") or {}
                    thought = delta.get("reasoning_content") or delta.get("reasoning")
                    if isinstance(thought, str) and thought:
                        pieces += 1
                        listener.reasoning(thought)
                    for fragment in delta.get("tool_calls") or ():
                        calls.add(fragment)
                    text = delta.get("content")
                    if isinstance(text, str):  # a token's piece, maybe "" (part of a character)
                        pieces += 1
                        if text and listener.text(text):
                            return RemoteAnswer("stop", pieces, *_usage_counts(usage))
                    if choice.get("finish_reason") == "length":
                        reason = "max_tokens"
        finally:
            events.close()
        calls.finish()
        generated = usage.get("completion_tokens")
        return RemoteAnswer(reason, generated if isinstance(generated, int) else pieces, *_usage_counts(usage))

    def warm(self) -> None:
        self.stream(1, temperature=0.0, top_p=0.0, top_k=0, seed=0, on_text=lambda _: False,
                    should_stop=lambda: False)

    # -- what a remote engine does not give ------------------------------------------------------------------

    def append_tokens(self, tokens: Sequence[int], should_stop: Callable[[], bool] | None = None) -> None:
        raise InputError("a remote engine takes text, not token ids", unsupported=True)

    def logits(self) -> np.ndarray:
        raise InputError(_NO_LOGITS, unsupported=True)

    def append_token(self, token: int) -> None:
        raise InputError(_NO_LOGITS, unsupported=True)

    def token_bytes(self, token: int) -> bytes:
        raise InputError(_NO_LOGITS, unsupported=True)

    def is_end_of_generation(self, token: int) -> bool:
        raise InputError(_NO_LOGITS, unsupported=True)

    def snapshot(self) -> Snapshot:
        raise InputError("a remote engine keeps its own prefix cache: omnid takes no snapshots of it",
                         unsupported=True)

    def restore(self, snapshot: Snapshot) -> None:
        raise InputError("a remote engine keeps its own prefix cache: omnid restores no snapshots into it",
                         unsupported=True)


class _Calls:
    """Streamed tool-call fragments joined into calls: a call is complete when the next index begins or the
    stream ends. The first fragment has the id and the name; the arguments come in pieces (an engine that
    repeats the name in every fragment, as llama-cpp-python's does, is read the same)."""

    def __init__(self, out: Callable[[RemoteCall], None]) -> None:
        self._out = out
        self._index: object = None
        self._id, self._name, self._arguments = "", "", ""

    def add(self, fragment: Any) -> None:
        if not isinstance(fragment, dict):
            return
        index = fragment.get("index", 0)
        if index != self._index:
            self.finish()
            self._index = index
        function = fragment.get("function") or {}
        self._id = self._id or str(fragment.get("id") or "")
        self._name = self._name or str(function.get("name") or "")
        arguments = function.get("arguments")
        self._arguments += arguments if isinstance(arguments, str) else json.dumps(arguments) if arguments else ""

    def finish(self) -> None:
        if self._name:
            self._out(RemoteCall(self._id, self._name, self._arguments or "{}"))
        self._index, self._id, self._name, self._arguments = None, "", "", ""


def response_format(schema_format: str, schema: dict) -> dict:
    """The response_format holding the answer to `schema`, in the engine's form (RemoteFeatures.schema_format)."""
    if schema_format == "json_object":  # llama-cpp-python's own: json_object with a schema beside it
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


def _usage_counts(usage: dict) -> tuple[int | None, int | None]:
    prompt = usage.get("prompt_tokens")
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    return (prompt if isinstance(prompt, int) else None), (cached if isinstance(cached, int) else None)


def _content(parts: list[dict]) -> str | list[dict]:
    """Text alone as a plain string (every engine and template takes that), else the parts."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts if parts else ""


def _estimate(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN_ESTIMATE)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16, person=b"omnid-remote").hexdigest()


def _png(rgb: np.ndarray) -> str:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, "PNG", compress_level=1)  # deterministic: same pixels, same bytes
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _wav(segment: AudioSegment) -> str:
    pcm = (np.clip(segment.pcm, -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(segment.sample_rate)
        out.writeframes(pcm.tobytes())
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- start-up: what the engines serve, and what they can do -----------------------------------------------------


def connect(settings: RemoteSettings, context_length: int, sequences: int = 1) -> RemoteBackend:
    """Reach every engine, agree on the model, read (or probe) its context length, modalities and tokenizer;
    `sequences` requests are sent at once (--parallel, see RemoteBackend).

    ModelLoadError, one line, for an engine that cannot be reached, refuses the token, does not serve the
    model, or does not speak the OpenAI API."""
    if not settings.urls:
        raise ModelLoadError("--backend remote needs --remote-url http(s)://HOST:PORT/v1 (repeatable)")
    engines = [Engine(url, settings.token, insecure=settings.insecure, timeouts=settings.timeouts)
               for url in settings.urls]
    name = settings.model
    contexts: list[tuple[int, str]] = []
    modalities: set[Modality] | None = None
    for engine in engines:
        entries = _served_models(engine)
        ids = [str(m.get("id", "")) for m in entries]
        name = name or ids[0]
        if name not in ids:
            raise ModelLoadError(f"the remote engine at {engine.url} does not serve {name!r} "
                                 f"(it serves: {', '.join(ids) or 'nothing'}); pass --remote-model")
        entry = entries[ids.index(name)]
        props = _props(engine)
        found = _context_of(entry, props)
        if found:
            contexts.append(found)
        said = _modalities_of(props)
        if said is not None:
            modalities = said if modalities is None else modalities & said
    router = Router(engines, settings.retry_after)
    tokenizer = _find_tokenizer(engines[0], name)
    if contexts:
        context, source = min(contexts)
    elif context_length:
        context, source = context_length, "--ctx (the engine does not say its own)"
    else:
        raise ModelLoadError(f"the remote engine at {engines[0].url} does not say its context length: pass --ctx "
                             "with the context it was started with")
    info = ModelInfo(name=name, path=", ".join(e.url for e in engines), backend="remote",
                     capabilities=frozenset({"text"}), context_length=context,
                     fingerprint=_digest(b"remote:" + name.encode()), max_image_side=1024)
    backend = RemoteBackend(settings, info, router, tokenizer, sequences)
    probed = "" if modalities is not None else " (probed)"
    if modalities is None:
        modalities = {"text", *_probe_media(backend)}
    backend.features = _probe_features(backend)
    note = (f"remote engine{'s' if len(engines) > 1 else ''} {info.path}: {'+'.join(sorted(modalities))}{probed}; "
            f"context {context} from {source}; tokens counted by "
            f"{tokenizer.name + ' ' + tokenizer.path if tokenizer else 'an estimate (no tokenize endpoint)'}; "
            f"chat: {_describe(backend.features)}")
    backend.info = ModelInfo(**{**info.__dict__, "capabilities": frozenset(modalities), "note": note})
    return backend


def _start_up_call(engine: Engine, method: str, path: str, body: Any = None, *, root: bool = False) -> Any:
    """An idempotent start-up call, tried twice; ModelLoadError saying why it failed."""
    for attempt in (1, 2):
        try:
            return engine.call(method, path, body, root=root)
        except HttpError as exc:
            if exc.status in (401, 403):
                raise ModelLoadError(f"the remote engine at {engine.url} refused the token (HTTP {exc.status}); "
                                     "check --remote-token-file") from None
            if exc.status < 500 or attempt == 2:
                raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if attempt == 2:
                raise ModelLoadError(f"{unreachable(engine.url, exc)}: is it running?") from None
    raise AssertionError("unreachable")


def _served_models(engine: Engine) -> list[dict]:
    try:
        answer = _start_up_call(engine, "GET", "/models")
    except HttpError as exc:
        raise ModelLoadError(f"{engine.url} does not look like an OpenAI-compatible API (GET /models: "
                             f"{exc}); the URL should end in /v1") from None
    entries = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(entries, list) or not entries or not all(isinstance(m, dict) for m in entries):
        raise ModelLoadError(f"{engine.url} does not look like an OpenAI-compatible API (GET /models listed no "
                             "models); the URL should end in /v1")
    return entries


def _props(engine: Engine) -> dict:
    """llama-server's /props (context and modalities); {} where the engine has none."""
    try:
        answer = _start_up_call(engine, "GET", "/props", root=True)
    except HttpError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _context_of(entry: dict, props: dict) -> tuple[int, str] | None:
    for key in ("max_model_len", "context_length", "context_window", "max_context_length"):  # vLLM, SGLang, ...
        if isinstance(entry.get(key), int) and entry[key] > 0:
            return entry[key], f"the engine's /models ({key})"
    settings = props.get("default_generation_settings") or {}
    n_ctx = settings.get("n_ctx", props.get("n_ctx"))
    if isinstance(n_ctx, int) and n_ctx > 0:
        return n_ctx, "the engine's /props (n_ctx)"
    return None


def _modalities_of(props: dict) -> set[Modality] | None:
    said = props.get("modalities")
    if not isinstance(said, dict):
        return None
    found: set[Modality] = {"text"}
    if said.get("vision"):
        found.add("image")
    if said.get("audio"):
        found.add("audio")
    return found


def _find_tokenizer(engine: Engine, model: str) -> _Tokenizer | None:
    for name, path, body in _TOKENIZERS:
        try:
            plain = engine.call("POST", path, body(model, ""), root=True)
            probe = engine.call("POST", path, body(model, "hello"), root=True)
        except (HttpError, OSError, http.client.HTTPException, ValueError):
            continue
        if not (isinstance(plain, dict) and isinstance(probe, dict) and isinstance(probe.get("tokens"), list)
                and isinstance(plain.get("tokens"), list) and len(probe["tokens"]) > len(plain["tokens"])):
            continue
        return _Tokenizer(name, path, body, len(plain["tokens"]))
    return None


def _probe_media(backend: RemoteBackend) -> set[Modality]:
    """Which media the engine takes, where it does not say: one-token requests with a tiny image and a short
    sound, each sent twice, flat and noisy. Taken only when the engine accepts the part, counts more prompt
    tokens for it, AND counts the same for both: an encoder's token count follows the size (pixels, seconds),
    while an engine that pastes the part into the prompt as text (a template printing the content list) counts
    the noisy one's longer data URI as more tokens, and must not be believed."""
    text_only = _probe_prompt_tokens(backend, None)
    noise = np.random.default_rng(0)
    probes: tuple[tuple[Modality, ImageSegment | AudioSegment, ImageSegment | AudioSegment], ...] = (
        ("image", ImageSegment(np.full((28, 28, 3), 128, np.uint8)),
         ImageSegment(noise.integers(0, 256, (28, 28, 3), dtype=np.uint8))),
        ("audio", AudioSegment(np.zeros(16000, np.float32)),
         AudioSegment(noise.uniform(-0.5, 0.5, 16000).astype(np.float32))))
    found: set[Modality] = set()
    for kind, flat, noisy in probes:
        tokens = _probe_prompt_tokens(backend, flat)
        if tokens is not None and text_only is not None and tokens > text_only \
                and _probe_prompt_tokens(backend, noisy) == tokens:
            found.add(kind)
    return found


def _probe_prompt_tokens(backend: RemoteBackend, media: ImageSegment | AudioSegment | None) -> int | None:
    parts: list[dict] = [{"type": "text", "text": "probe"}]
    if media is not None:
        parts.append(backend._encoded(media))
    answer = _probe_call(backend, {"messages": [{"role": "user", "content": parts}], "max_tokens": 1})
    tokens = (answer.get("usage") or {}).get("prompt_tokens") if answer is not None else None
    return tokens if isinstance(tokens, int) else None


def _probe_call(backend: RemoteBackend, body: dict) -> dict | None:
    """One short greedy request to the first engine; its answer, or None when it refused or failed."""
    body = {"model": backend.info.name, "messages": [{"role": "user", "content": "probe"}], "temperature": 0.0,
            "seed": 1, **body}
    try:
        answer = backend.router.engines[0].call("POST", "/chat/completions", body)
    except (HttpError, OSError, http.client.HTTPException, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


#: What the probes ask for: an answer a grammar fixes to one value, and a call of a tool without arguments.
_SCHEMA_PROBE = {"type": "string", "enum": ["omnid"]}
_TOOL_PROBE = {"type": "function", "function": {"name": "omnid_probe", "description": "Says it was called.",
                                                "parameters": {"type": "object", "properties": {},
                                                               "additionalProperties": False}}}


def _probe_features(backend: RemoteBackend) -> RemoteFeatures:
    """What the engine honours, found by asking (an engine ignores a field it does not know, so its docs or its
    version would not tell): a schema that allows one answer only, in OpenAI's form then llama-cpp-python's; a
    call forced to a tool; the template's thinking switch, on and off (an engine that ignores it answers both
    the same, greedy). Random weights pass these like real ones: the grammar, not the model, writes the answer."""
    off = {"chat_template_kwargs": {"enable_thinking": False}}
    schema_format = ""
    for form in ("json_schema", "json_object"):
        answer = _probe_call(backend, {**off, "max_tokens": 24,
                                       "response_format": response_format(form, _SCHEMA_PROBE)})
        if _json_or_none(_message(answer).get("content")) == "omnid":
            schema_format = form
            break
    called = _message(_probe_call(backend, {**off, "max_tokens": 64, "tools": [_TOOL_PROBE], "tool_choice": {
        "type": "function", "function": {"name": "omnid_probe"}}})).get("tool_calls")
    tools = isinstance(called, list) and bool(called) and isinstance(called[0], dict) \
        and (called[0].get("function") or {}).get("name") == "omnid_probe"
    on, no = ({"chat_template_kwargs": {"enable_thinking": flag}, "max_tokens": 4} for flag in (True, False))
    switched = [_message(_probe_call(backend, body)) for body in (on, no)]
    return RemoteFeatures(schema_format=schema_format, tools=tools,
                          thinking_switch=bool(switched[0] or switched[1]) and switched[0] != switched[1])


def _message(answer: dict | None) -> dict:
    choices = (answer or {}).get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        return message if isinstance(message, dict) else {}
    return {}


def _json_or_none(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _describe(features: RemoteFeatures) -> str:
    said = [f"JSON schema ({features.schema_format})" if features.schema_format else "no JSON schema",
            "tools" if features.tools else "no tools",
            "thinking switch" if features.thinking_switch else "no thinking switch"]
    return ", ".join(said)

