"""The backend contract (models/base.py), held against every registered backend on its tiny real model.

A new backend passes this suite before the daemon may use it: add its module, its line in
models/registry.py, and its entry in FIXTURES below (how to build a small model of it here). Every test
runs on every backend that is installed on this machine (mlx is skipped where mlx-vlm is missing).

Random weights: assertions compare logits and token counts, never text.

A remote engine (models/remote_backend.py: an OpenAI-compatible server, here llama-cpp-python's own on the
tiny model) is held to the parts of the contract that mean something for it: counting and appending segments,
refusing bad media, a modality it lacks and an overflowing context before anything is sent, the sequence left
unchanged. It skips, by design, what the OpenAI API does not give: logits (the engine samples; DecoderSession
streams its answer), token ids in (append_tokens, append_token), snapshots and truncation (the engine keeps its
own prefix cache, which omnid feeds byte-identical prefixes instead), and a long prefill stopped part-way (its
prefill evaluates nothing; a stream closed on cancellation is tested in tests/test_remote_backend.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from omnid.models.base import (AudioSegment, Backend, ContextOverflow, ImageSegment, InputError, RemoteGeneration,
                               Segment, TextSegment)
from omnid.models.registry import backend_names

CONTEXT = 2048
#: Sequences of the `parallel` backend of each model.
PARALLEL = 3
#: How far a sequence's logits may move when decoded in one batch with others instead of alone: batched matrix
#: products sum in another order. Measured over 20 greedy steps of 3 sequences on the tiny models (whose logits
#: span ~50): 1.7e-2 (llama.cpp hybrid), 8e-3 (attention); the greedy tokens are the same.
BATCH_TOLERANCE = 5e-2
A = TextSegment("Once upon a time, in a small town by the sea, there lived")
B = TextSegment(" an old sailor who told stories")
C = TextSegment(" nothing at all, and the story ends here.")
OTHER = TextSegment("A completely different sequence of words that fills the context with something else. " * 3)


@dataclass
class Models:
    """A backend on its tiny model with image and audio, and one on a model that lacks audio."""

    full: Backend
    without_audio: Backend
    #: The same model with PARALLEL sequences (None: the backend holds one, a remote engine).
    parallel: Backend | None = None
    #: Ends what the models run in besides this process (a remote engine's server).
    stop: Callable[[], None] = lambda: None


def _llama_cpp(decoder: str) -> Callable[[Callable[[str], Path]], Models]:
    def load(tmp: Callable[[str], Path]) -> Models:
        pytest.importorskip("llama_cpp")
        from omnid.models.gguf_test_model import write_test_model
        from omnid.models.llama_cpp_backend import LlamaCppBackend
        paths = write_test_model(tmp("gguf"), decoder=decoder)
        return Models(LlamaCppBackend(paths.text, paths.mmproj, n_ctx=CONTEXT, n_threads=1),
                      LlamaCppBackend(paths.text, None, n_ctx=CONTEXT, n_threads=1),
                      LlamaCppBackend(paths.text, paths.mmproj, n_ctx=CONTEXT, n_threads=1, n_sequences=PARALLEL))
    return load


def _mlx(tmp: Callable[[str], Path]) -> Models:
    pytest.importorskip("mlx_vlm")
    from omnid.models.mlx_backend import MlxBackend
    from omnid.models.mlx_test_model import write_mlx_test_model
    folder = write_mlx_test_model(tmp("mlx"))
    return Models(MlxBackend(folder, n_ctx=CONTEXT),
                  MlxBackend(write_mlx_test_model(tmp("mlx-no-audio"), with_audio=False), n_ctx=CONTEXT),
                  MlxBackend(folder, n_ctx=CONTEXT, n_sequences=PARALLEL))


def _remote(tmp: Callable[[str], Path]) -> Models:
    """llama-cpp-python's OpenAI-compatible server on the tiny hybrid model with its projector (it takes images;
    its server refuses input_audio, so this engine lacks audio: it is both models of the pair)."""
    from remote_engine import LlamaServer
    from omnid.models.gguf_test_model import write_test_model
    from omnid.models.remote_backend import RemoteSettings, connect
    paths = write_test_model(tmp("remote"))
    server = LlamaServer(paths.text, mmproj=paths.mmproj, n_ctx=CONTEXT).start()
    backend = connect(RemoteSettings((server.url,)), CONTEXT)
    return Models(backend, backend, stop=server.kill)


#: Why a test does not apply to a remote engine (see the module docstring).
REMOTE_SKIP = "a remote engine gives no logits, token-level input, snapshots or truncation (see the module docstring)"


def token_level(backend: Backend) -> bool:
    """Whether the backend has logits, token input, snapshots: every backend but a remote engine."""
    return not isinstance(backend, RemoteGeneration)


def needs_token_level(backend: Backend) -> None:
    if not token_level(backend):
        pytest.skip(REMOTE_SKIP)


#: (registered backend name, model variant) -> how to load it on a tiny model written here. llama.cpp runs
#: on both test decoders: the hybrid one like the target (never cut back) and an attention-only one (cut back).
FIXTURES: dict[tuple[str, str], Callable[[Callable[[str], Path]], Models]] = {
    ("llama.cpp", "hybrid"): _llama_cpp("nemotron_h_moe"),
    ("llama.cpp", "attention"): _llama_cpp("llama"),
    ("mlx", "hybrid"): _mlx,
    ("remote", "llama-cpp-server"): _remote,
}


def test_every_registered_backend_has_a_fixture() -> None:
    assert sorted({name for name, _ in FIXTURES}) == sorted(backend_names())


@pytest.fixture(scope="module", params=sorted(FIXTURES), ids=lambda key: "-".join(key))
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    loaded = FIXTURES[request.param](tmp_path_factory.mktemp)
    yield loaded
    loaded.full.close()
    loaded.without_audio.close()
    if loaded.parallel is not None:
        loaded.parallel.close()
    loaded.stop()


@pytest.fixture()
def backend(models: Models) -> Backend:
    models.full.reset()
    return models.full


def image(seed: int) -> ImageSegment:
    return ImageSegment(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def tone(backend: Backend, seconds: float = 1.0, freq: float = 440.0) -> AudioSegment:
    rate = backend.info.audio_sample_rate
    t = np.arange(int(seconds * rate)) / rate
    return AudioSegment((0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def fill(backend: Backend, *segments: Segment) -> None:
    """The sequence holds exactly `segments` (a sequence ending in media has no logits on every backend)."""
    backend.reset()
    for segment in segments:
        backend.append(segment)


def cold(backend: Backend, *segments: Segment) -> np.ndarray:
    fill(backend, *segments)
    return backend.logits()


def same(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def differ(a: np.ndarray, b: np.ndarray) -> None:
    assert np.abs(a - b).max() > 1e-3, "different inputs gave the same logits: the comparison proves nothing"


# -- append and logits ---------------------------------------------------------------------------------------


def test_append_adds_what_count_tokens_said_and_logits_are_deterministic(backend: Backend) -> None:
    assert backend.n_tokens == 0
    n = backend.count_tokens(A)
    assert n > 0 and backend.append(A) == n and backend.n_tokens == n
    m = backend.count_tokens(B)
    assert backend.append(B) == m and backend.n_tokens == n + m
    if not token_level(backend):
        return
    first = cold(backend, A)
    assert first.dtype == np.float32 and first.ndim == 1 and np.isfinite(first).all()
    same(cold(backend, A), first)
    differ(cold(backend, A, B), first)


def test_tokenize_then_append_tokens_is_append(backend: Backend) -> None:
    needs_token_level(backend)
    reference = cold(backend, A, B)
    tokens = backend.tokenize(B)
    assert len(tokens) == backend.count_tokens(B) and all(isinstance(t, int) for t in tokens)
    fill(backend, A)
    backend.append_tokens(tokens)
    assert backend.n_tokens == backend.count_tokens(A) + len(tokens)
    same(backend.logits(), reference)


def test_append_token_extends_the_sequence_by_one(backend: Backend) -> None:
    needs_token_level(backend)
    logits = cold(backend, A)
    token = int(np.argmax(logits))
    before = backend.n_tokens
    backend.append_token(token)
    assert backend.n_tokens == before + 1
    assert isinstance(backend.token_bytes(token), bytes)
    assert isinstance(backend.is_end_of_generation(token), bool)
    differ(backend.logits(), logits)


def test_media_segments_change_the_logits(backend: Backend) -> None:
    fill(backend, A, image(1), B)
    assert backend.n_tokens == sum(backend.count_tokens(s) for s in (A, image(1), B))
    needs_token_level(backend)
    a = cold(backend, A, image(1), B)
    differ(a, cold(backend, A, image(2), B))
    if "audio" in backend.info.capabilities:
        with_sound = cold(backend, A, tone(backend), B)
        differ(with_sound, cold(backend, A, tone(backend, freq=1500.0), B))


# -- snapshot and restore ------------------------------------------------------------------------------------


def test_a_restored_snapshot_gives_the_same_logits_as_a_cold_prefill(backend: Backend) -> None:
    needs_token_level(backend)
    cold_a, cold_ab = cold(backend, A), cold(backend, A, B)
    backend.reset()
    backend.append(A)
    snap = backend.snapshot()
    assert snap.n_tokens == backend.n_tokens
    backend.append(C)
    backend.restore(snap)
    assert backend.n_tokens == snap.n_tokens
    same(backend.logits(), cold_a)
    backend.append(B)
    same(backend.logits(), cold_ab)


def test_restore_into_a_sequence_that_held_something_else(backend: Backend) -> None:
    needs_token_level(backend)
    cold_ab = cold(backend, A, B)
    backend.reset()
    backend.append(A)
    snap = backend.snapshot()
    fill(backend, OTHER, C)  # a longer, unrelated sequence in between
    backend.restore(snap)
    backend.append(B)
    same(backend.logits(), cold_ab)
    backend.reset()  # and after an empty one
    backend.restore(snap)
    backend.append(B)
    same(backend.logits(), cold_ab)


def test_a_snapshot_after_media_restores_the_media(backend: Backend) -> None:
    needs_token_level(backend)
    reference = cold(backend, A, image(3), B)
    backend.reset()
    backend.append(A)
    backend.append(image(3))
    snap = backend.snapshot()
    fill(backend, A, image(4))
    backend.restore(snap)
    backend.append(B)
    same(backend.logits(), reference)


def test_a_damaged_snapshot_is_refused_and_changes_nothing(backend: Backend) -> None:
    needs_token_level(backend)
    from omnid.models.base import Snapshot
    backend.append(A)
    snap = backend.snapshot()
    backend.append(B)
    logits, n = backend.logits(), backend.n_tokens
    payload = bytearray(snap.payload)
    payload[len(payload) // 2] ^= 0xFF
    with pytest.raises(InputError):
        backend.restore(Snapshot(snap.n_tokens, bytes(payload)))
    # Refused before anything was read into the sequence, or (llama.cpp rejecting the state) emptied:
    # never a half-restored sequence.
    assert backend.n_tokens in (n, 0)
    if backend.n_tokens == n:
        same(backend.logits(), logits)


# -- truncate ------------------------------------------------------------------------------------------------


def test_truncate_cuts_back_between_tokens_where_the_backend_can(backend: Backend) -> None:
    needs_token_level(backend)
    cold_ac, cold_ab = cold(backend, A, C), cold(backend, A, B)
    n_a, tokens_b = backend.count_tokens(A), backend.tokenize(B)
    fill(backend, A, B)
    if not backend.can_truncate:  # a decoder that cannot be cut (recurrent, hybrid): refused, unchanged
        assert not backend.truncate(n_a)
        assert backend.n_tokens == n_a + len(tokens_b)
        same(backend.logits(), cold_ab)
        return
    assert backend.truncate(n_a + 1)  # inside a text segment: any token boundary will do
    assert backend.n_tokens == n_a + 1
    backend.append_tokens(tokens_b[1:])
    same(backend.logits(), cold_ab)
    assert backend.truncate(n_a)
    backend.append(C)
    same(backend.logits(), cold_ac)
    assert not backend.truncate(backend.n_tokens + 1)  # past the end: refused


def test_truncate_never_cuts_inside_media(backend: Backend) -> None:
    needs_token_level(backend)
    n_a, n_image = backend.count_tokens(A), backend.count_tokens(image(5))
    reference = cold(backend, A, image(5), B)
    fill(backend, A, image(5), B)
    if not backend.can_truncate:
        pytest.skip("this decoder is never cut (test_truncate_cuts_back_... checks that it refuses)")
    assert not backend.truncate(n_a + n_image // 2)
    assert backend.n_tokens == n_a + n_image + backend.count_tokens(B)
    same(backend.logits(), reference)
    assert backend.truncate(n_a + n_image)  # the end of the image is a place to cut
    backend.append(B)
    same(backend.logits(), reference)


# -- bad input: refused before the runtime sees it, the sequence unchanged -----------------------------------


def bad_inputs(backend: Backend) -> dict[str, Segment]:
    rate = backend.info.audio_sample_rate
    nan = tone(backend).pcm.copy()
    nan[100] = np.nan
    inf = tone(backend).pcm.copy()
    inf[5] = np.inf
    return {
        "empty image": ImageSegment(np.zeros((0, 0, 3), np.uint8)),
        "zero-height image": ImageSegment(np.zeros((0, 64, 3), np.uint8)),
        "wrong sample rate": AudioSegment(tone(backend).pcm, rate // 2),
        "NaN audio": AudioSegment(nan, rate),
        "infinite audio": AudioSegment(inf, rate),
        "one sample of audio": AudioSegment(np.zeros(1, np.float32), rate),
        "no audio at all": AudioSegment(np.zeros(0, np.float32), rate),
    }


BAD_CASES = ["empty image", "zero-height image", "wrong sample rate", "NaN audio", "infinite audio",
             "one sample of audio", "no audio at all"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_media_is_refused_and_the_sequence_is_unchanged(backend: Backend, case: str) -> None:
    segment = bad_inputs(backend)[case]
    fill(backend, A)
    logits = backend.logits() if token_level(backend) else None
    with pytest.raises(InputError):
        backend.count_tokens(segment)
    with pytest.raises(InputError):
        backend.append(segment)
    assert backend.n_tokens == backend.count_tokens(A)
    if logits is None:
        return
    same(backend.logits(), logits)
    backend.append(B)  # and the backend goes on as if nothing happened
    same(backend.logits(), cold(backend, A, B))


def test_a_modality_the_model_lacks_is_refused_as_unsupported(models: Models) -> None:
    lacking = models.without_audio
    lacking.reset()
    assert "audio" not in lacking.info.capabilities
    lacking.append(A)
    logits = lacking.logits() if token_level(lacking) else None
    for call in (lacking.count_tokens, lacking.append):
        with pytest.raises(InputError) as err:
            call(tone(models.full))
        assert err.value.unsupported and "audio" in str(err.value)
    assert lacking.n_tokens == lacking.count_tokens(A)
    if logits is not None:
        same(lacking.logits(), logits)


def test_context_overflow_is_refused_and_leaves_the_sequence_unchanged(backend: Backend) -> None:
    fill(backend, A)
    logits = backend.logits() if token_level(backend) else None
    n = backend.n_tokens
    room = backend.info.context_length - n
    long_text = TextSegment("word " * (room + 8))
    assert backend.count_tokens(long_text) > room
    with pytest.raises(ContextOverflow) as err:
        backend.append(long_text)
    assert err.value.available == backend.info.context_length and err.value.needed > err.value.available
    assert backend.n_tokens == n
    if logits is None:
        return
    with pytest.raises(ContextOverflow):
        backend.append_tokens(backend.tokenize(long_text))
    assert backend.n_tokens == n
    same(backend.logits(), logits)


# -- cancellation --------------------------------------------------------------------------------------------


def test_should_stop_ends_a_long_prefill_early_and_reset_recovers(backend: Backend) -> None:
    needs_token_level(backend)
    cold_a = cold(backend, A)
    unit = "many words in a row "
    long_text = TextSegment(unit * (1200 // backend.count_tokens(TextSegment(unit))))  # several prefill batches
    total = backend.count_tokens(long_text)
    assert total < backend.info.context_length - backend.n_tokens
    polls: list[int] = []

    def stop() -> bool:
        polls.append(backend.n_tokens)
        return True
    backend.reset()
    backend.append(A)
    start = backend.n_tokens
    backend.append(long_text, should_stop=stop)
    assert polls, "should_stop was never polled during a long prefill"
    assert backend.n_tokens < start + total  # stopped before the end
    same(cold(backend, A), cold_a)  # the caller resets, and the backend is as good as new


# -- several sequences (issue 16) ----------------------------------------------------------------------------

PROMPTS = (A, OTHER, TextSegment("Short."))


@pytest.fixture()
def parallel(models: Models) -> Backend:
    """The model's backend with PARALLEL sequences, all of them empty."""
    if models.parallel is None:
        pytest.skip("this backend holds one sequence")
    for seq in range(models.parallel.n_sequences):
        models.parallel.select(seq)
        models.parallel.reset()
    return models.parallel


def solo_run(backend: Backend, prompt: Segment, steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens and the logits before each (and after the last) from a one-sequence backend."""
    logits = [cold(backend, prompt)]
    tokens = []
    for _ in range(steps):
        tokens.append(int(np.argmax(logits[-1])))
        backend.append_token(tokens[-1])
        logits.append(backend.logits())
    return tokens, logits


def fill_seq(backend: Backend, seq: int, *segments: Segment) -> np.ndarray:
    backend.select(seq)
    return cold(backend, *segments)


def test_a_sequence_alone_in_a_parallel_backend_is_a_one_sequence_backend(models: Models, parallel: Backend) -> None:
    assert parallel.n_sequences == PARALLEL and parallel.batch_capacity > 0
    assert parallel.info.context_length == models.full.info.context_length
    for seq, prompt in enumerate(PROMPTS):
        same(fill_seq(parallel, seq, prompt), cold(models.full, prompt))
    with pytest.raises(ValueError):
        parallel.select(PARALLEL)


def test_sequences_decoded_together_give_the_tokens_of_each_alone(models: Models, parallel: Backend) -> None:
    steps = 6
    alone = [solo_run(models.full, prompt, steps) for prompt in PROMPTS]
    current = {seq: fill_seq(parallel, seq, prompt) for seq, prompt in enumerate(PROMPTS)}
    tokens: dict[int, list[int]] = {seq: [] for seq in current}
    worst = 0.0
    for step in range(steps):
        work = {seq: [int(np.argmax(logits))] for seq, logits in current.items()}
        for seq, [token] in work.items():
            tokens[seq].append(token)
        current = parallel.decode_batch(work)
        assert sorted(current) == sorted(work)
        for seq, logits in current.items():
            worst = max(worst, float(np.abs(logits - alone[seq][1][step + 1]).max()))
    assert [tokens[seq] for seq in sorted(tokens)] == [run[0] for run in alone]
    assert worst < BATCH_TOLERANCE
    for seq, prompt in enumerate(PROMPTS):  # and the single-sequence view agrees
        parallel.select(seq)
        assert parallel.n_tokens == models.full.count_tokens(prompt) + steps
        np.testing.assert_array_equal(parallel.logits(), current[seq])


def test_a_prefill_chunk_decodes_beside_other_sequences_steps(models: Models, parallel: Backend) -> None:
    """What the daemon's engine sends: one sequence's next token and another's whole prompt in one batch."""
    cold_ab = cold(models.full, A, B)
    tokens_b = parallel.tokenize(B)
    fill_seq(parallel, 0, A)
    fill_seq(parallel, 1, A)
    parallel.select(2)
    parallel.reset()
    out = parallel.decode_batch({0: tokens_b, 1: tokens_b[:1], 2: parallel.tokenize(A) + tokens_b})
    np.testing.assert_allclose(out[0], cold_ab, atol=BATCH_TOLERANCE)
    np.testing.assert_allclose(out[2], cold_ab, atol=BATCH_TOLERANCE)
    parallel.select(1)
    parallel.append_tokens(tokens_b[1:])
    np.testing.assert_allclose(parallel.logits(), cold_ab, atol=BATCH_TOLERANCE)


def test_a_snapshot_restored_into_one_sequence_leaves_another_going_on(models: Models, parallel: Backend) -> None:
    """Seq 2 gets the cold logits of the snapshot's prompt while seq 1, mid-answer, goes on as if alone."""
    steps = 3
    tokens, alone = solo_run(models.full, OTHER, 2 * steps)
    cold_ab = cold(models.full, A, B)
    fill_seq(parallel, 0, A)
    snap = parallel.snapshot()
    fill_seq(parallel, 1, OTHER)
    parallel.select(2)
    fill(parallel, C, image(1))  # other content in seq 2 first
    parallel.select(1)
    for token in tokens[:steps]:
        parallel.append_token(token)
    parallel.select(2)
    parallel.restore(snap)
    same(parallel.logits(), cold(models.full, A))
    parallel.append(B)
    same(parallel.logits(), cold_ab)
    parallel.select(1)
    same(parallel.logits(), alone[steps])
    for token in tokens[steps:]:
        parallel.append_token(token)
    same(parallel.logits(), alone[-1])


def test_reset_truncate_and_restore_of_one_sequence_leave_the_others(models: Models, parallel: Backend) -> None:
    cold_a, cold_ab, cold_other = cold(models.full, A), cold(models.full, A, B), cold(models.full, OTHER)
    fill_seq(parallel, 0, A)
    snap = parallel.snapshot()
    fill_seq(parallel, 2, OTHER)
    fill_seq(parallel, 1, A, B)
    if parallel.can_truncate:
        assert parallel.truncate(parallel.count_tokens(A))
        parallel.append(C)
    parallel.reset()
    parallel.restore(snap)
    parallel.append(C)
    parallel.reset()
    for seq, expected in ((0, cold_a), (2, cold_other)):
        parallel.select(seq)
        same(parallel.logits(), expected)
    parallel.select(0)
    parallel.append(B)
    same(parallel.logits(), cold_ab)
    parallel.select(1)  # and the reset one starts clean
    assert parallel.n_tokens == 0
    parallel.append(A)
    same(parallel.logits(), cold_a)


def test_copy_sequence_gives_what_a_restore_gives(models: Models, parallel: Backend) -> None:
    """Copied with media, then at once snapshotted, restored over, and decoded on: src and dst both as cold."""
    reference = cold(models.full, A, image(2), B, C)
    before = fill_seq(parallel, 0, A, image(2), B)
    n = parallel.n_tokens
    fill_seq(parallel, 2, OTHER)
    parallel.copy_sequence(0, 2)
    parallel.select(2)
    assert parallel.n_tokens == n
    same(parallel.logits(), before)
    copied = parallel.snapshot()  # straight after the copy, no decode in between
    parallel.select(1)
    parallel.restore(copied)
    parallel.append(C)
    same(parallel.logits(), reference)
    for seq in (2, 0):
        parallel.select(seq)
        parallel.append(C)
        same(parallel.logits(), reference)
    parallel.copy_sequence(1, 2)  # and a restore straight after a copy is not undone by it
    parallel.select(2)
    parallel.restore(copied)
    parallel.append(C)
    same(parallel.logits(), reference)


def test_a_bad_batch_leaves_every_sequence_unchanged(models: Models, parallel: Backend) -> None:
    logits = {seq: fill_seq(parallel, seq, prompt) for seq, prompt in enumerate(PROMPTS)}
    counts = {seq: models.full.count_tokens(prompt) for seq, prompt in enumerate(PROMPTS)}
    n_vocab = len(logits[0])
    room = parallel.info.context_length - counts[1]
    bad = {"a token outside the vocabulary": {0: [1], 1: [2], 2: [n_vocab]},
           "a negative token": {0: [1], 2: [-1]},
           "a sequence that does not exist": {0: [1], PARALLEL: [1]},
           "more than one sequence's context": {0: [1], 1: [1] * (room + 1)}}
    for case, work in bad.items():
        with pytest.raises(ValueError):
            parallel.decode_batch(work)
        for seq in logits:
            parallel.select(seq)
            assert parallel.n_tokens == counts[seq], case
            same(parallel.logits(), logits[seq])
    out = parallel.decode_batch({0: parallel.tokenize(B)})  # and the batch after it decodes as usual
    np.testing.assert_allclose(out[0], cold(models.full, A, B), atol=BATCH_TOLERANCE)
