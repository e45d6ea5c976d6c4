"""A request's inputs made ready for a job, the same for every front end: media decoded and checked, the
answer's length and sampling with the daemon's defaults filled in.

The gRPC mixins (rpc_core, rpc_documents, rpc_screen) and the HTTP API call these in their own threads,
before anything is queued: a bad image or a sound for a model without ears is refused at once, whichever
protocol carried it, and the decoder only ever sees valid segments.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from omnid.daemon.sampling import SamplingParams
from omnid.modalities.audio_clips import MAX_CLIP_TOKENS, clip_seconds, cut_stream, padded
from omnid.modalities.audio_io import AudioStream, audio_segment, pcm_blocks, pcm_from_f32le, pcm_seconds
from omnid.modalities.images import decode_image
from omnid.models.base import (ChatFrame, ImageSegment, InputError, ModelInfo, Segment, TextSegment, check_fits,
                               require)

#: Longest audio clip of a prompt's sound (shorter where the encoder or the clip token budget says so).
PROMPT_CLIP_SECONDS = 60.0
#: A base model (no chat template) continues text and has no end of turn to stop at: unless asked otherwise it
#: gets this many tokens and stops at the end of a paragraph (gemma-3-270m otherwise repeated one line ~40
#: times until the 512-token default).
BASE_MODEL_MAX_TOKENS = 128
PARAGRAPH_END = "\n\n"


def image(info: ModelInfo, data: bytes) -> ImageSegment:
    """Encoded image bytes (PNG, JPEG, WebP...) as a segment, downscaled to what the vision encoder takes."""
    require(info, "image")
    return decode_image(data, info.max_image_side)


def encoded_audio(info: ModelInfo, data: bytes) -> list[Segment]:
    """Encoded sound (WAV, FLAC, OGG, MP3) as the clips a prompt holds (see `audio`). A sound too long for the
    context is refused from its header's length, before it is decoded."""
    require(info, "audio")
    stream = AudioStream(data)
    check_fits(info, audio_seconds=stream.seconds)
    return audio(info, np.concatenate(list(stream.blocks())), stream.rate)


def pcm_audio(info: ModelInfo, f32le: Callable[[], bytes], byte_size: int, sample_rate: int,
              channels: int) -> list[Segment]:
    """Raw float32 PCM as the clips a prompt holds; refused from its size alone (`byte_size`) when it cannot fit,
    before `f32le` is called for the bytes (reading a protobuf field copies them: 120 MB for an hour at 8 kHz)."""
    require(info, "audio")
    check_fits(info, audio_seconds=pcm_seconds(byte_size, sample_rate, channels))
    return audio(info, pcm_from_f32le(f32le(), sample_rate, channels), sample_rate)


def audio(info: ModelInfo, samples: np.ndarray, rate: int) -> list[Segment]:
    """Samples cut into clips at quiet points when long, each clip resampled to the encoder's rate (so memory
    follows the clip, not the sound)."""
    require(info, "audio")
    target = info.audio_sample_rate
    limit = clip_seconds(PROMPT_CLIP_SECONDS, info.max_audio_clip_seconds, info.audio_tokens_per_second,
                         MAX_CLIP_TOKENS)
    if len(samples) <= limit * rate:
        return [audio_segment(samples, rate, target)]
    return [audio_segment(padded(clip.pcm, rate), rate, target)
            for clip in cut_stream(pcm_blocks(samples), rate, limit)]


def text(info: ModelInfo, value: str) -> TextSegment:
    """Client text; one that certainly cannot fit the context is refused before it is tokenized."""
    check_fits(info, text_chars=len(value))
    return TextSegment(value)


def is_base_model(frame: ChatFrame | None) -> bool:
    """The model has no chat template (a base model that continues text; see models/chat_frame.py)."""
    return frame is not None and not (frame.user_open or frame.user_close)


def answer_limits(info: ModelInfo, frame: ChatFrame | None, default_max_tokens: int, max_tokens: int,
                  sampling: SamplingParams) -> tuple[int, SamplingParams]:
    """A request's max_tokens (0 = the default) and sampling, with the defaults filled in; a max_tokens
    beyond the whole context is refused rather than silently cut short. A base model's default is
    BASE_MODEL_MAX_TOKENS and, unless the request has stop strings, a stop at the end of a paragraph."""
    context = info.context_length
    if max_tokens < 0:
        raise InputError(f"max_tokens must be positive, got {max_tokens}")
    if max_tokens > context:
        raise InputError(f"max_tokens {max_tokens} is more than the model's whole context ({context} tokens)")
    if max_tokens:
        return max_tokens, sampling
    if is_base_model(frame):  # both defaults together: a client that names a length gets that length
        if not sampling.stop:
            sampling = dataclasses.replace(sampling, stop=(PARAGRAPH_END,))
        return BASE_MODEL_MAX_TOKENS, sampling
    return default_max_tokens, sampling
