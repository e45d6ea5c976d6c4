"""The core RPCs: Generate, Status, Prefill, Unpin, Unload, CreateLoginLink.

Client parts are decoded and checked here, in the gRPC handler's thread, before anything is queued: a bad
image or a sound for a model without ears is refused at once, and the decoder only ever sees valid segments.
"""
from __future__ import annotations

import os
import time
from typing import Iterator

import grpc

from omnid.daemon import inputs, jobs
from omnid.daemon.priorities import Priority
from omnid.daemon.rpc_base import RpcBase, progress_message, sampling_from
from omnid.daemon.scheduler import JobHandle
from omnid.daemon.web.auth import CODE_SECONDS, Logins
from omnid.models.base import InputError, Segment, require
from omnid.proto import omnid_pb2 as pb

VERSION = "0.1.0"


class CoreRpcs(RpcBase):
    def setup(self) -> None:
        super().setup()
        self.started_at = time.monotonic()
        #: The HTTP listener's base URL and its web page's logins, when the daemon has one (attach_web).
        self.http_url = ""
        self.logins: Logins | None = None

    def attach_web(self, url: str, logins: Logins) -> None:
        """The daemon serves the web page at `url`: Status says so and CreateLoginLink mints into `logins`."""
        self.http_url, self.logins = url, logins

    def CreateLoginLink(self, request: pb.LoginLinkRequest, context: grpc.ServicerContext) -> pb.LoginLinkReply:
        # Whoever reaches this RPC already holds the socket (0600) or the token: the link hands that on to a
        # browser once, without the token itself ever appearing in a URL.
        if self.logins is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "the daemon has no web page: start it with --http 127.0.0.1:PORT")
            raise AssertionError("unreachable")  # context.abort raises
        return pb.LoginLinkReply(url=f"{self.http_url}login?once={self.logins.mint()}",
                                 expires_in_seconds=CODE_SECONDS)

    # -- parts -> segments -----------------------------------------------------------------------------------

    def segments_from_parts(self, parts: list[pb.Part]) -> list[Segment]:
        if not parts:
            raise InputError("the request has no parts")
        segments: list[Segment] = []
        for part in parts:
            segments += self.resolve_part(part)
        return segments

    def resolve_part(self, part: pb.Part) -> list[Segment]:
        """One client part as the segments the decoder takes (a long sound may become several clips)."""
        kind = part.WhichOneof("kind")
        if kind == "text":
            return [inputs.text(self.info, part.text)]
        if kind == "image":
            return [inputs.image(self.info, part.image.data)]
        if kind == "audio":
            require(self.info, "audio")
            return self.audio_clips(part.audio)
        if kind == "document":
            return self.resolve_document_part(part.document)
        if kind == "screen":
            return self.resolve_screen_part(part.screen)
        raise InputError("a part has no content (set one of text, image, audio, document, screen)")

    def audio_clips(self, audio: pb.Audio) -> list[Segment]:
        """Decode, cut long sounds into clips at quiet points, and resample each clip to the encoder's rate.

        A sound too long for the context is refused from its length alone, before it is decoded; a long one is
        cut at its own rate and resampled clip by clip, so memory follows the clip, not the sound."""
        if audio.WhichOneof("source") == "pcm":
            pcm = audio.pcm
            # ByteSize, not len(pcm.f32le): reading the field copies its bytes (120 MB for an hour at 8 kHz).
            return inputs.pcm_audio(self.info, lambda: pcm.f32le, pcm.ByteSize(), pcm.sample_rate, pcm.channels)
        if audio.WhichOneof("source") == "encoded":
            return inputs.encoded_audio(self.info, audio.encoded)
        raise InputError("an audio part has neither encoded bytes nor PCM")

    def resolve_document_part(self, ref: pb.DocumentRef) -> list[Segment]:
        """Overridden by the documents mixin."""
        raise InputError("this daemon does not serve documents", unsupported=True)

    def resolve_screen_part(self, ref: pb.ScreenRef) -> list[Segment]:
        """Overridden by the screen mixin."""
        raise InputError("this daemon does not serve screen grabs", unsupported=True)

    # -- RPCs ------------------------------------------------------------------------------------------------

    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext) -> Iterator[pb.GenerateEvent]:
        segments = self.call(context, lambda: self.segments_from_parts(list(request.parts)))
        max_tokens, sampling = self.call(context, lambda: self.answer_limits(request.max_tokens,
                                                                             sampling_from(request.sampling)))
        job = jobs.generate(segments, request.system or None, max_tokens, sampling)
        yield from self.answer_stream(job, context, "generate", pb.GenerateEvent)

    def Prefill(self, request: pb.PrefillRequest, context: grpc.ServicerContext) -> pb.PrefillReply:
        segments = self.call(context, lambda: self.segments_from_parts(list(request.parts)))
        stats = self.unary_job(jobs.prefill(segments, request.system or None, request.pin), context, "prefill")
        return pb.PrefillReply(prefix_id=stats.prefix_key, prompt_tokens=stats.prompt_tokens,
                               cached_tokens=stats.cached_tokens, prefill_ms=stats.prefill_ms,
                               cache_restore_ms=stats.restore_ms)

    def Unpin(self, request: pb.UnpinRequest, context: grpc.ServicerContext) -> pb.UnpinReply:
        assert self.scheduler.cache is not None
        return pb.UnpinReply(was_pinned=self.scheduler.cache.unpin(request.prefix_id))

    def Unload(self, request: pb.UnloadRequest, context: grpc.ServicerContext) -> pb.UnloadReply:
        return pb.UnloadReply(was_loaded=self.call(context, self.scheduler.unload))

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        return self.status_reply()

    def status_reply(self) -> pb.StatusReply:
        """What Status answers (also the web page's GET /api/status)."""
        info = self.info
        assert self.scheduler.cache is not None
        return pb.StatusReply(
            model_name=info.name, model_path=info.path, mmproj_path=info.mmproj_path, backend=info.backend,
            capabilities=sorted(info.capabilities), context_length=info.context_length,
            memory_rss_bytes=resident_bytes(), queue_depth=self.scheduler.queue_depth,
            queue_capacity=self.scheduler.max_queue, busy=self.scheduler.busy,
            uptime_seconds=time.monotonic() - self.started_at, cache=self.cache_stats(),
            version=VERSION, endpoint=self.endpoint,
            audio_sample_rate=info.audio_sample_rate if "audio" in info.capabilities else 0,
            max_audio_clip_seconds=info.max_audio_clip_seconds or 0.0, note=info.note,
            model_loaded=self.scheduler.loaded, idle_unload_seconds=self.scheduler.idle_unload_seconds,
            **self.jobs_status(), **self.context_status(), **self.sequences_status(),
            prefill_tokens_per_second=self.scheduler.prefill_rate.tokens_per_second, http_url=self.http_url)

    def jobs_status(self) -> dict:
        """What runs on the decoder now and what waits for it (Status: running, waiting)."""
        running, waiting = self.scheduler.jobs()
        fields: dict = {"waiting": [job_state(h) for h in waiting], "active": [job_state(h) for h in running]}
        if running:
            fields["running"] = job_state(running[0])
        return fields

    def sequences_status(self) -> dict:
        """The decoder's sequences and batches (Status: sequences_*, queue_* per class, batch_*, decode_steps)."""
        s = self.scheduler
        batch_sequences, batch_tokens, steps = s.batch_stats()
        return {"sequences_total": s.n_sequences, "sequences_in_use": s.sequences_in_use,
                "queue_interactive": s.queue_depth_of(Priority.INTERACTIVE),
                "queue_background": s.queue_depth_of(Priority.BACKGROUND),
                "batch_sequences": batch_sequences, "batch_tokens": batch_tokens, "decode_steps": steps}

    def context_status(self) -> dict:
        """How the context was chosen (Status: trained_context_length, memory_context_length, context_source)."""
        plan = self.config.context_plan
        if plan is None:
            return {}
        return {"trained_context_length": plan.trained, "memory_context_length": plan.memory_limit,
                "context_source": plan.source}


    def cache_stats(self) -> pb.CacheStats:
        s = self.scheduler
        assert s.cache is not None
        return pb.CacheStats(**vars(s.cache.stats()), state_base_bytes=s.state_base_bytes,
                             state_bytes_per_token=s.state_bytes_per_token,
                             checkpoint_interval=0 if s.backend is None or s.backend.can_truncate
                             else s.checkpoint_interval)


def job_state(handle: JobHandle) -> pb.JobState:
    """A queued or running job as Status shows it."""
    running = time.perf_counter() - handle.started_at if handle.started_at is not None else 0.0
    state = pb.JobState(name=handle.name, queued_seconds=handle.queue_ms / 1000, running_seconds=running,
                        priority=handle.priority.name.lower(), sequence=handle.sequence)
    if handle.progress is not None:
        state.progress.CopyFrom(progress_message(handle.progress))
    return state


def resident_bytes() -> int:
    """Resident memory of this process now (not the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # no /proc (macOS): the peak is the best there is
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
