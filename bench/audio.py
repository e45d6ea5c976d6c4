"""20 minutes of speech through the meetings pipeline on the tiny test model.

    .venv/bin/python bench/audio.py [--minutes 20] [--rate 44100]

Prints, side by side, the real-time factor (seconds of work per second of audio) of
  * the pipeline outside the model: file decode, resample to the encoder's rate, cutting at quiet points,
    and spooling to a WAV file as a live recording would (write + header rewrite + fsync every second);
  * the whole path: the same plus the decoder (tiny random-weight model, llama.cpp, 1 thread, flash attention);
and the peak RSS after each, plus the Python heap peak of the pipeline alone (it must not grow with length).
Goal: the pipeline costs < 1% of real time and its memory does not grow with the length of the meeting.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from audio_fixtures import speech_wav  # noqa: E402
from omnid.daemon.prompt_cache import PromptCache  # noqa: E402
from omnid.daemon.session import DecoderSession  # noqa: E402
from omnid.modalities import meetings  # noqa: E402
from omnid.modalities.audio_clips import cut_stream, padded  # noqa: E402
from omnid.modalities.audio_io import AudioStream, resample  # noqa: E402
from omnid.modalities.recorder import WavSpool  # noqa: E402
from omnid.models.gguf_test_model import write_test_model  # noqa: E402
from omnid.models.llama_cpp_backend import LlamaCppBackend  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pipeline(path: Path, spool_dir: Path, trace: bool = False) -> tuple[float, int, float]:
    """Decode + cut + resample + spool, no model: (seconds, clips, Python heap peak MB when traced: tracing
    slows allocation, so timed runs are not traced)."""
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    stream = AudioStream(path)
    spool = WavSpool(spool_dir / "spool.wav", stream.rate)
    spooled_since_sync = 0

    def spooled(blocks):
        nonlocal spooled_since_sync
        for block in blocks:
            spool.write(block)
            spooled_since_sync += len(block)
            if spooled_since_sync >= stream.rate:          # as the recorder does: at least every second
                spool.sync()
                spooled_since_sync = 0
            yield block

    n = 0
    for clip in cut_stream(spooled(stream.blocks()), stream.rate, 30.0):
        resample(padded(clip.pcm, clip.rate), clip.rate, 16_000)
        n += 1
    spool.close()
    elapsed = time.perf_counter() - t0
    if not trace:
        return elapsed, n, 0.0
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, n, heap_peak / 2**20


def whole(path: Path, model_dir: Path) -> tuple[float, meetings.Transcript]:
    paths = write_test_model(model_dir)
    backend = LlamaCppBackend(paths.text, paths.mmproj, n_ctx=20_480, n_threads=1, flash_attn=True)
    cache = PromptCache(backend.info.fingerprint, 1 << 30)
    transcript = meetings.Transcript(meetings.TranscribeSettings(max_tokens_per_clip=16, summary=True,
                                                                 summary_max_tokens=64))
    run = lambda fn: fn(DecoderSession(backend, cache, lambda: False))  # noqa: E731
    t0 = time.perf_counter()
    stream = AudioStream(path)
    for _ in meetings.transcribe(cut_stream(stream.blocks(), stream.rate, 30.0), run, transcript):
        pass
    run(lambda s: meetings.summarise(s, transcript))
    meetings.finish(cache, transcript)
    elapsed = time.perf_counter() - t0
    backend.close()
    return elapsed, transcript


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--rate", type=int, default=44_100, help="the file's sample rate (resampled to 16 kHz)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        wav = speech_wav(folder, args.minutes * 60, rate=args.rate)
        seconds = AudioStream(wav).seconds
        print(f"speech: {seconds / 60:.1f} min at {args.rate} Hz made in {time.perf_counter() - t0:.1f} s "
              f"(espeak-ng + sox)")
        short = speech_wav(folder, args.minutes * 60 / 4, rate=args.rate, name="quarter.wav")
        p_time, clips, _ = pipeline(wav, folder)
        heap_short = pipeline(short, folder, trace=True)[2]
        heap = pipeline(wav, folder, trace=True)[2]
        rss_pipeline = peak_rss_mb()
        w_time, transcript = whole(wav, folder / "model")
        rss_whole = peak_rss_mb()
    u = transcript.usage
    print(f"{'':34}{'seconds':>10}{'real-time factor':>18}{'peak RSS MB':>13}")
    print(f"{'pipeline (decode/resample/cut/spool)':34}{p_time:>10.2f}{p_time / seconds:>18.5f}{rss_pipeline:>13.0f}")
    print(f"{'whole path (+ tiny model)':34}{w_time:>10.2f}{w_time / seconds:>18.5f}{rss_whole:>13.0f}")
    print(f"pipeline share of real time: {100 * p_time / seconds:.3f}% (goal < 1%); {clips} clips")
    print(f"pipeline Python heap peak: {heap_short:.1f} MB for {seconds / 240:.1f} min, {heap:.1f} MB for "
          f"{seconds / 60:.1f} min (flat = does not grow with length)")
    print(f"model: {transcript.windows} window(s), {len(transcript.segments)} segments, {u.prompt_tokens} prompt "
          f"tokens, {u.generated_tokens} generated, prefill {u.prefill_ms / 1000:.1f} s, "
          f"decode {u.decode_ms / 1000:.1f} s")


if __name__ == "__main__":
    main()
