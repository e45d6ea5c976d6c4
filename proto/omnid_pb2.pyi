from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Part(_message.Message):
    __slots__ = ("text", "image", "audio", "document", "screen")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    SCREEN_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: Image
    audio: Audio
    document: DocumentRef
    screen: ScreenRef
    def __init__(self, text: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., audio: _Optional[_Union[Audio, _Mapping]] = ..., document: _Optional[_Union[DocumentRef, _Mapping]] = ..., screen: _Optional[_Union[ScreenRef, _Mapping]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class Audio(_message.Message):
    __slots__ = ("encoded", "pcm")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    pcm: Pcm
    def __init__(self, encoded: _Optional[bytes] = ..., pcm: _Optional[_Union[Pcm, _Mapping]] = ...) -> None: ...

class Pcm(_message.Message):
    __slots__ = ("f32le", "sample_rate", "channels")
    F32LE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    f32le: bytes
    sample_rate: int
    channels: int
    def __init__(self, f32le: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class DocumentRef(_message.Message):
    __slots__ = ("document_id", "first_page", "last_page")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_PAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_PAGE_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    first_page: int
    last_page: int
    def __init__(self, document_id: _Optional[str] = ..., first_page: _Optional[int] = ..., last_page: _Optional[int] = ...) -> None: ...

class ScreenRef(_message.Message):
    __slots__ = ("monitor",)
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    monitor: int
    def __init__(self, monitor: _Optional[int] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "seed", "stop")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("system", "parts", "sampling", "max_tokens")
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    system: str
    parts: _containers.RepeatedCompositeFieldContainer[Part]
    sampling: Sampling
    max_tokens: int
    def __init__(self, system: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[Part, _Mapping]]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "cached_tokens", "generated_tokens", "time_to_first_token_ms", "decode_tokens_per_second", "queue_ms", "prefill_ms", "total_ms", "cache_restore_ms")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    CACHE_RESTORE_MS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    cached_tokens: int
    generated_tokens: int
    time_to_first_token_ms: float
    decode_tokens_per_second: float
    queue_ms: float
    prefill_ms: float
    total_ms: float
    cache_restore_ms: float
    def __init__(self, prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., time_to_first_token_ms: _Optional[float] = ..., decode_tokens_per_second: _Optional[float] = ..., queue_ms: _Optional[float] = ..., prefill_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., cache_restore_ms: _Optional[float] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("delta", "done", "progress")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    delta: str
    done: Final
    progress: Progress
    def __init__(self, delta: _Optional[str] = ..., done: _Optional[_Union[Final, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "done", "total", "unit", "per_second", "eta_seconds", "elapsed_seconds", "cached")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    unit: str
    per_second: float
    eta_seconds: float
    elapsed_seconds: float
    cached: int
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., unit: _Optional[str] = ..., per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., cached: _Optional[int] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("text", "usage", "stop_reason")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    text: str
    usage: Usage
    stop_reason: str
    def __init__(self, text: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., stop_reason: _Optional[str] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "parts", "reasoning", "tool_calls", "tool_call_id")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    role: str
    parts: _containers.RepeatedCompositeFieldContainer[Part]
    reasoning: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    tool_call_id: str
    def __init__(self, role: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[Part, _Mapping]]] = ..., reasoning: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., tool_call_id: _Optional[str] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("id", "name", "arguments")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    arguments: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...

class ToolSpec(_message.Message):
    __slots__ = ("name", "description", "parameters_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_json: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_json: _Optional[str] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("messages", "tools", "tool_choice", "response_schema_json", "thinking", "thinking_budget", "sampling", "max_tokens")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    THINKING_FIELD_NUMBER: _ClassVar[int]
    THINKING_BUDGET_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    tools: _containers.RepeatedCompositeFieldContainer[ToolSpec]
    tool_choice: str
    response_schema_json: str
    thinking: bool
    thinking_budget: int
    sampling: Sampling
    max_tokens: int
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., tools: _Optional[_Iterable[_Union[ToolSpec, _Mapping]]] = ..., tool_choice: _Optional[str] = ..., response_schema_json: _Optional[str] = ..., thinking: _Optional[bool] = ..., thinking_budget: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class ChatEvent(_message.Message):
    __slots__ = ("delta", "reasoning_delta", "tool_call", "done", "progress")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    REASONING_DELTA_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    delta: str
    reasoning_delta: str
    tool_call: ToolCall
    done: ChatFinal
    progress: Progress
    def __init__(self, delta: _Optional[str] = ..., reasoning_delta: _Optional[str] = ..., tool_call: _Optional[_Union[ToolCall, _Mapping]] = ..., done: _Optional[_Union[ChatFinal, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ...) -> None: ...

class ChatFinal(_message.Message):
    __slots__ = ("text", "reasoning", "tool_calls", "usage", "stop_reason")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    text: str
    reasoning: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    usage: Usage
    stop_reason: str
    def __init__(self, text: _Optional[str] = ..., reasoning: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., stop_reason: _Optional[str] = ...) -> None: ...

class PrefillRequest(_message.Message):
    __slots__ = ("system", "parts", "pin")
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    system: str
    parts: _containers.RepeatedCompositeFieldContainer[Part]
    pin: bool
    def __init__(self, system: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[Part, _Mapping]]] = ..., pin: _Optional[bool] = ...) -> None: ...

class PrefillReply(_message.Message):
    __slots__ = ("prefix_id", "prompt_tokens", "cached_tokens", "prefill_ms", "cache_restore_ms")
    PREFIX_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    CACHE_RESTORE_MS_FIELD_NUMBER: _ClassVar[int]
    prefix_id: str
    prompt_tokens: int
    cached_tokens: int
    prefill_ms: float
    cache_restore_ms: float
    def __init__(self, prefix_id: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., prefill_ms: _Optional[float] = ..., cache_restore_ms: _Optional[float] = ...) -> None: ...

class UnpinRequest(_message.Message):
    __slots__ = ("prefix_id",)
    PREFIX_ID_FIELD_NUMBER: _ClassVar[int]
    prefix_id: str
    def __init__(self, prefix_id: _Optional[str] = ...) -> None: ...

class UnpinReply(_message.Message):
    __slots__ = ("was_pinned",)
    WAS_PINNED_FIELD_NUMBER: _ClassVar[int]
    was_pinned: bool
    def __init__(self, was_pinned: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoginLinkRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoginLinkReply(_message.Message):
    __slots__ = ("url", "expires_in_seconds")
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    url: str
    expires_in_seconds: float
    def __init__(self, url: _Optional[str] = ..., expires_in_seconds: _Optional[float] = ...) -> None: ...

class CacheStats(_message.Message):
    __slots__ = ("hits", "misses", "tokens_reused", "ram_bytes", "ram_budget_bytes", "disk_bytes", "disk_budget_bytes", "entries", "evictions", "pinned", "disk_hits", "rejected", "live_hits", "snapshot_hits", "checkpoint_hits", "checkpoint_bytes", "checkpoint_interval", "state_base_bytes", "state_bytes_per_token")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_REUSED_FIELD_NUMBER: _ClassVar[int]
    RAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    RAM_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    DISK_HITS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    LIVE_HITS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_HITS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_HITS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    STATE_BASE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hits: int
    misses: int
    tokens_reused: int
    ram_bytes: int
    ram_budget_bytes: int
    disk_bytes: int
    disk_budget_bytes: int
    entries: int
    evictions: int
    pinned: int
    disk_hits: int
    rejected: int
    live_hits: int
    snapshot_hits: int
    checkpoint_hits: int
    checkpoint_bytes: int
    checkpoint_interval: int
    state_base_bytes: int
    state_bytes_per_token: float
    def __init__(self, hits: _Optional[int] = ..., misses: _Optional[int] = ..., tokens_reused: _Optional[int] = ..., ram_bytes: _Optional[int] = ..., ram_budget_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., disk_budget_bytes: _Optional[int] = ..., entries: _Optional[int] = ..., evictions: _Optional[int] = ..., pinned: _Optional[int] = ..., disk_hits: _Optional[int] = ..., rejected: _Optional[int] = ..., live_hits: _Optional[int] = ..., snapshot_hits: _Optional[int] = ..., checkpoint_hits: _Optional[int] = ..., checkpoint_bytes: _Optional[int] = ..., checkpoint_interval: _Optional[int] = ..., state_base_bytes: _Optional[int] = ..., state_bytes_per_token: _Optional[float] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("model_name", "model_path", "mmproj_path", "backend", "capabilities", "context_length", "memory_rss_bytes", "queue_depth", "queue_capacity", "busy", "uptime_seconds", "cache", "version", "endpoint", "audio_sample_rate", "max_audio_clip_seconds", "note", "model_loaded", "idle_unload_seconds", "running", "waiting", "trained_context_length", "memory_context_length", "context_source", "prefill_tokens_per_second", "sequences_total", "sequences_in_use", "queue_interactive", "queue_background", "active", "batch_sequences", "batch_tokens", "decode_steps", "http_url")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    MMPROJ_PATH_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_AUDIO_CLIP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    MODEL_LOADED_FIELD_NUMBER: _ClassVar[int]
    IDLE_UNLOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    TRAINED_CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SOURCE_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_IN_USE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_INTERACTIVE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEPS_FIELD_NUMBER: _ClassVar[int]
    HTTP_URL_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_path: str
    mmproj_path: str
    backend: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    context_length: int
    memory_rss_bytes: int
    queue_depth: int
    queue_capacity: int
    busy: bool
    uptime_seconds: float
    cache: CacheStats
    version: str
    endpoint: str
    audio_sample_rate: int
    max_audio_clip_seconds: float
    note: str
    model_loaded: bool
    idle_unload_seconds: float
    running: JobState
    waiting: _containers.RepeatedCompositeFieldContainer[JobState]
    trained_context_length: int
    memory_context_length: int
    context_source: str
    prefill_tokens_per_second: float
    sequences_total: int
    sequences_in_use: int
    queue_interactive: int
    queue_background: int
    active: _containers.RepeatedCompositeFieldContainer[JobState]
    batch_sequences: float
    batch_tokens: float
    decode_steps: int
    http_url: str
    def __init__(self, model_name: _Optional[str] = ..., model_path: _Optional[str] = ..., mmproj_path: _Optional[str] = ..., backend: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., context_length: _Optional[int] = ..., memory_rss_bytes: _Optional[int] = ..., queue_depth: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., busy: _Optional[bool] = ..., uptime_seconds: _Optional[float] = ..., cache: _Optional[_Union[CacheStats, _Mapping]] = ..., version: _Optional[str] = ..., endpoint: _Optional[str] = ..., audio_sample_rate: _Optional[int] = ..., max_audio_clip_seconds: _Optional[float] = ..., note: _Optional[str] = ..., model_loaded: _Optional[bool] = ..., idle_unload_seconds: _Optional[float] = ..., running: _Optional[_Union[JobState, _Mapping]] = ..., waiting: _Optional[_Iterable[_Union[JobState, _Mapping]]] = ..., trained_context_length: _Optional[int] = ..., memory_context_length: _Optional[int] = ..., context_source: _Optional[str] = ..., prefill_tokens_per_second: _Optional[float] = ..., sequences_total: _Optional[int] = ..., sequences_in_use: _Optional[int] = ..., queue_interactive: _Optional[int] = ..., queue_background: _Optional[int] = ..., active: _Optional[_Iterable[_Union[JobState, _Mapping]]] = ..., batch_sequences: _Optional[float] = ..., batch_tokens: _Optional[float] = ..., decode_steps: _Optional[int] = ..., http_url: _Optional[str] = ...) -> None: ...

class JobState(_message.Message):
    __slots__ = ("name", "queued_seconds", "running_seconds", "progress", "priority", "sequence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUEUED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    queued_seconds: float
    running_seconds: float
    progress: Progress
    priority: str
    sequence: int
    def __init__(self, name: _Optional[str] = ..., queued_seconds: _Optional[float] = ..., running_seconds: _Optional[float] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., priority: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class UnloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnloadReply(_message.Message):
    __slots__ = ("was_loaded",)
    WAS_LOADED_FIELD_NUMBER: _ClassVar[int]
    was_loaded: bool
    def __init__(self, was_loaded: _Optional[bool] = ...) -> None: ...

class IngestDocumentRequest(_message.Message):
    __slots__ = ("data", "path", "password", "name")
    DATA_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    path: str
    password: str
    name: str
    def __init__(self, data: _Optional[bytes] = ..., path: _Optional[str] = ..., password: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class IngestEvent(_message.Message):
    __slots__ = ("progress", "done")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    progress: IngestProgress
    done: DocumentInfo
    def __init__(self, progress: _Optional[_Union[IngestProgress, _Mapping]] = ..., done: _Optional[_Union[DocumentInfo, _Mapping]] = ...) -> None: ...

class IngestProgress(_message.Message):
    __slots__ = ("pages_done", "pages_total", "tokens", "elapsed_ms", "stage", "prefill")
    PAGES_DONE_FIELD_NUMBER: _ClassVar[int]
    PAGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PREFILL_FIELD_NUMBER: _ClassVar[int]
    pages_done: int
    pages_total: int
    tokens: int
    elapsed_ms: float
    stage: str
    prefill: Progress
    def __init__(self, pages_done: _Optional[int] = ..., pages_total: _Optional[int] = ..., tokens: _Optional[int] = ..., elapsed_ms: _Optional[float] = ..., stage: _Optional[str] = ..., prefill: _Optional[_Union[Progress, _Mapping]] = ...) -> None: ...

class PageInfo(_message.Message):
    __slots__ = ("page", "kind", "tokens")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    page: int
    kind: str
    tokens: int
    def __init__(self, page: _Optional[int] = ..., kind: _Optional[str] = ..., tokens: _Optional[int] = ...) -> None: ...

class DocumentInfo(_message.Message):
    __slots__ = ("document_id", "name", "page_count", "total_tokens", "pages", "unread_pages", "fits_context", "ingest_ms", "cached", "question_pages", "question_tokens", "cold_question_seconds", "context_length")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    UNREAD_PAGES_FIELD_NUMBER: _ClassVar[int]
    FITS_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    INGEST_MS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    QUESTION_PAGES_FIELD_NUMBER: _ClassVar[int]
    QUESTION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COLD_QUESTION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    name: str
    page_count: int
    total_tokens: int
    pages: _containers.RepeatedCompositeFieldContainer[PageInfo]
    unread_pages: _containers.RepeatedScalarFieldContainer[int]
    fits_context: bool
    ingest_ms: float
    cached: bool
    question_pages: int
    question_tokens: int
    cold_question_seconds: float
    context_length: int
    def __init__(self, document_id: _Optional[str] = ..., name: _Optional[str] = ..., page_count: _Optional[int] = ..., total_tokens: _Optional[int] = ..., pages: _Optional[_Iterable[_Union[PageInfo, _Mapping]]] = ..., unread_pages: _Optional[_Iterable[int]] = ..., fits_context: _Optional[bool] = ..., ingest_ms: _Optional[float] = ..., cached: _Optional[bool] = ..., question_pages: _Optional[int] = ..., question_tokens: _Optional[int] = ..., cold_question_seconds: _Optional[float] = ..., context_length: _Optional[int] = ...) -> None: ...

class AskDocumentRequest(_message.Message):
    __slots__ = ("document_id", "question", "first_page", "last_page", "sampling", "max_tokens")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    FIRST_PAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_PAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    question: str
    first_page: int
    last_page: int
    sampling: Sampling
    max_tokens: int
    def __init__(self, document_id: _Optional[str] = ..., question: _Optional[str] = ..., first_page: _Optional[int] = ..., last_page: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class AskDocumentEvent(_message.Message):
    __slots__ = ("delta", "done", "pages", "progress")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    delta: str
    done: Final
    pages: PagesUsed
    progress: Progress
    def __init__(self, delta: _Optional[str] = ..., done: _Optional[_Union[Final, _Mapping]] = ..., pages: _Optional[_Union[PagesUsed, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ...) -> None: ...

class PagesUsed(_message.Message):
    __slots__ = ("pages", "reason")
    PAGES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    pages: _containers.RepeatedScalarFieldContainer[int]
    reason: str
    def __init__(self, pages: _Optional[_Iterable[int]] = ..., reason: _Optional[str] = ...) -> None: ...

class ListDocumentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDocumentsReply(_message.Message):
    __slots__ = ("documents",)
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[DocumentInfo]
    def __init__(self, documents: _Optional[_Iterable[_Union[DocumentInfo, _Mapping]]] = ...) -> None: ...

class TranscribeRequest(_message.Message):
    __slots__ = ("audio", "path", "summary", "language", "title", "no_store")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    NO_STORE_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    path: str
    summary: bool
    language: str
    title: str
    no_store: bool
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ..., path: _Optional[str] = ..., summary: _Optional[bool] = ..., language: _Optional[str] = ..., title: _Optional[str] = ..., no_store: _Optional[bool] = ...) -> None: ...

class TranscriptSegment(_message.Message):
    __slots__ = ("start_seconds", "end_seconds", "text")
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    END_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    start_seconds: float
    end_seconds: float
    text: str
    def __init__(self, start_seconds: _Optional[float] = ..., end_seconds: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class TranscriptEvent(_message.Message):
    __slots__ = ("segment", "progress", "done")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    segment: TranscriptSegment
    progress: TranscriptProgress
    done: TranscriptFinal
    def __init__(self, segment: _Optional[_Union[TranscriptSegment, _Mapping]] = ..., progress: _Optional[_Union[TranscriptProgress, _Mapping]] = ..., done: _Optional[_Union[TranscriptFinal, _Mapping]] = ...) -> None: ...

class TranscriptProgress(_message.Message):
    __slots__ = ("audio_seconds_done", "audio_seconds_total", "state")
    AUDIO_SECONDS_DONE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    audio_seconds_done: float
    audio_seconds_total: float
    state: str
    def __init__(self, audio_seconds_done: _Optional[float] = ..., audio_seconds_total: _Optional[float] = ..., state: _Optional[str] = ...) -> None: ...

class TranscriptFinal(_message.Message):
    __slots__ = ("meeting_id", "segments", "text", "summary", "usage", "audio_path", "duration_seconds")
    MEETING_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_PATH_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    meeting_id: str
    segments: _containers.RepeatedCompositeFieldContainer[TranscriptSegment]
    text: str
    summary: str
    usage: Usage
    audio_path: str
    duration_seconds: float
    def __init__(self, meeting_id: _Optional[str] = ..., segments: _Optional[_Iterable[_Union[TranscriptSegment, _Mapping]]] = ..., text: _Optional[str] = ..., summary: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., audio_path: _Optional[str] = ..., duration_seconds: _Optional[float] = ...) -> None: ...

class RecordMeetingRequest(_message.Message):
    __slots__ = ("device", "title", "summary", "max_seconds")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    device: str
    title: str
    summary: bool
    max_seconds: float
    def __init__(self, device: _Optional[str] = ..., title: _Optional[str] = ..., summary: _Optional[bool] = ..., max_seconds: _Optional[float] = ...) -> None: ...

class MeetingControlRequest(_message.Message):
    __slots__ = ("meeting_id", "action")
    MEETING_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    meeting_id: str
    action: str
    def __init__(self, meeting_id: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class MeetingState(_message.Message):
    __slots__ = ("meeting_id", "state", "recorded_seconds", "audio_path")
    MEETING_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_PATH_FIELD_NUMBER: _ClassVar[int]
    meeting_id: str
    state: str
    recorded_seconds: float
    audio_path: str
    def __init__(self, meeting_id: _Optional[str] = ..., state: _Optional[str] = ..., recorded_seconds: _Optional[float] = ..., audio_path: _Optional[str] = ...) -> None: ...

class AudioDevice(_message.Message):
    __slots__ = ("index", "name", "max_input_channels", "default_sample_rate", "is_default")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    max_input_channels: int
    default_sample_rate: float
    is_default: bool
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., max_input_channels: _Optional[int] = ..., default_sample_rate: _Optional[float] = ..., is_default: _Optional[bool] = ...) -> None: ...

class ListAudioDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAudioDevicesReply(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[AudioDevice]
    def __init__(self, devices: _Optional[_Iterable[_Union[AudioDevice, _Mapping]]] = ...) -> None: ...

class MeetingSummary(_message.Message):
    __slots__ = ("meeting_id", "title", "created_unix", "duration_seconds", "audio_path", "snippet")
    MEETING_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_PATH_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    meeting_id: str
    title: str
    created_unix: float
    duration_seconds: float
    audio_path: str
    snippet: str
    def __init__(self, meeting_id: _Optional[str] = ..., title: _Optional[str] = ..., created_unix: _Optional[float] = ..., duration_seconds: _Optional[float] = ..., audio_path: _Optional[str] = ..., snippet: _Optional[str] = ...) -> None: ...

class ListMeetingsRequest(_message.Message):
    __slots__ = ("query", "limit")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    query: str
    limit: int
    def __init__(self, query: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListMeetingsReply(_message.Message):
    __slots__ = ("meetings",)
    MEETINGS_FIELD_NUMBER: _ClassVar[int]
    meetings: _containers.RepeatedCompositeFieldContainer[MeetingSummary]
    def __init__(self, meetings: _Optional[_Iterable[_Union[MeetingSummary, _Mapping]]] = ...) -> None: ...

class GetMeetingRequest(_message.Message):
    __slots__ = ("meeting_id",)
    MEETING_ID_FIELD_NUMBER: _ClassVar[int]
    meeting_id: str
    def __init__(self, meeting_id: _Optional[str] = ...) -> None: ...

class ScreenWatchRequest(_message.Message):
    __slots__ = ("interval_seconds", "monitor", "prompt", "exclude", "change_threshold")
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: float
    monitor: int
    prompt: str
    exclude: _containers.RepeatedScalarFieldContainer[str]
    change_threshold: float
    def __init__(self, interval_seconds: _Optional[float] = ..., monitor: _Optional[int] = ..., prompt: _Optional[str] = ..., exclude: _Optional[_Iterable[str]] = ..., change_threshold: _Optional[float] = ...) -> None: ...

class ScreenWatchState(_message.Message):
    __slots__ = ("watching", "paused", "interval_seconds", "monitor", "frames_grabbed", "frames_unchanged", "frames_excluded", "frames_sent", "exclusions")
    WATCHING_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    FRAMES_GRABBED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SENT_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIONS_FIELD_NUMBER: _ClassVar[int]
    watching: bool
    paused: bool
    interval_seconds: float
    monitor: int
    frames_grabbed: int
    frames_unchanged: int
    frames_excluded: int
    frames_sent: int
    exclusions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, watching: _Optional[bool] = ..., paused: _Optional[bool] = ..., interval_seconds: _Optional[float] = ..., monitor: _Optional[int] = ..., frames_grabbed: _Optional[int] = ..., frames_unchanged: _Optional[int] = ..., frames_excluded: _Optional[int] = ..., frames_sent: _Optional[int] = ..., exclusions: _Optional[_Iterable[str]] = ...) -> None: ...

class ScreenControlRequest(_message.Message):
    __slots__ = ("action",)
    ACTION_FIELD_NUMBER: _ClassVar[int]
    action: str
    def __init__(self, action: _Optional[str] = ...) -> None: ...

class WatchScreenRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ScreenObservation(_message.Message):
    __slots__ = ("time_unix", "monitor", "app", "window", "text", "id")
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    time_unix: float
    monitor: int
    app: str
    window: str
    text: str
    id: str
    def __init__(self, time_unix: _Optional[float] = ..., monitor: _Optional[int] = ..., app: _Optional[str] = ..., window: _Optional[str] = ..., text: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class ScreenEvent(_message.Message):
    __slots__ = ("observation", "state")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    observation: ScreenObservation
    state: ScreenWatchState
    def __init__(self, observation: _Optional[_Union[ScreenObservation, _Mapping]] = ..., state: _Optional[_Union[ScreenWatchState, _Mapping]] = ...) -> None: ...

class ScreenOnceRequest(_message.Message):
    __slots__ = ("monitor", "prompt", "max_tokens")
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    monitor: int
    prompt: str
    max_tokens: int
    def __init__(self, monitor: _Optional[int] = ..., prompt: _Optional[str] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class SearchScreenRequest(_message.Message):
    __slots__ = ("query", "limit", "since_unix", "until_unix")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_FIELD_NUMBER: _ClassVar[int]
    query: str
    limit: int
    since_unix: float
    until_unix: float
    def __init__(self, query: _Optional[str] = ..., limit: _Optional[int] = ..., since_unix: _Optional[float] = ..., until_unix: _Optional[float] = ...) -> None: ...

class SearchScreenReply(_message.Message):
    __slots__ = ("observations",)
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    observations: _containers.RepeatedCompositeFieldContainer[ScreenObservation]
    def __init__(self, observations: _Optional[_Iterable[_Union[ScreenObservation, _Mapping]]] = ...) -> None: ...

class AskScreenRequest(_message.Message):
    __slots__ = ("question", "since_unix", "until_unix", "max_tokens")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    question: str
    since_unix: float
    until_unix: float
    max_tokens: int
    def __init__(self, question: _Optional[str] = ..., since_unix: _Optional[float] = ..., until_unix: _Optional[float] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("ids", "since_unix", "until_unix", "all")
    IDS_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    since_unix: float
    until_unix: float
    all: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., since_unix: _Optional[float] = ..., until_unix: _Optional[float] = ..., all: _Optional[bool] = ...) -> None: ...

class DeleteReply(_message.Message):
    __slots__ = ("deleted_ids", "deleted", "cache_entries_removed", "bytes_removed")
    DELETED_IDS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    CACHE_ENTRIES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    deleted_ids: _containers.RepeatedScalarFieldContainer[str]
    deleted: int
    cache_entries_removed: int
    bytes_removed: int
    def __init__(self, deleted_ids: _Optional[_Iterable[str]] = ..., deleted: _Optional[int] = ..., cache_entries_removed: _Optional[int] = ..., bytes_removed: _Optional[int] = ...) -> None: ...
