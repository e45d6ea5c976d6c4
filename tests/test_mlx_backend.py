"""The MLX backend through mlx-vlm's real loading, processors, encoders and caches, on a tiny random model.

What matters most is what the shared prompt cache relies on: a sequence restored from a snapshot continues
exactly like a cold run, and the snapshot of a prefix with one image is never mistaken for another image's.
Assertions are on logits (greedy text from random weights means nothing) and never on message wording.
"""
from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

os.environ.setdefault("MLX_DISABLE_COMPILE", "1")  # no g++ kernel compile (5-8 s) on the shared CI cores

import numpy as np
import pytest

pytest.importorskip("mlx_vlm")

from omnid.models.base import (  # noqa: E402
    AudioSegment,
    ContextOverflow,
    ImageSegment,
    InputError,
    ModelLoadError,
    Snapshot,
    TextSegment,
)
from omnid.models.mlx_backend import MlxBackend  # noqa: E402
from omnid.models.mlx_test_model import write_mlx_test_model  # noqa: E402

# Measured: restored and cold logits agree bit for bit on CPU (max |diff| 0.0); allow float noise only.
ATOL = 1e-5
# Media must move the logits by far more than that (measured 2.7 .. 3.4 on the tiny model).
MIN_MEDIA_EFFECT = 1e-2

PREFIX = TextSegment("<|im_start|>user\nLook: ", template=True)
QUESTION = TextSegment(" What is it?<|im_end|>\n<|im_start|>assistant\n", template=True)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return write_mlx_test_model(tmp_path_factory.mktemp("mlx") / "tiny-omni")


@pytest.fixture(scope="module")
def backend(model_dir) -> MlxBackend:
    b = MlxBackend(model_dir)
    yield b
    b.close()


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    if "backend" in request.fixturenames:
        request.getfixturevalue("backend").reset()


def _image(seed: int) -> ImageSegment:
    return ImageSegment(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def _audio(seed: int, seconds: float = 1.0) -> AudioSegment:
    n = int(seconds * 16_000)
    return AudioSegment((np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32))


def _run(backend: MlxBackend, *segments) -> np.ndarray:
    backend.reset()
    for segment in segments:
        backend.append(segment)
    return backend.logits()


def _differ(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).max()) > MIN_MEDIA_EFFECT


def test_info_reports_capabilities_and_audio_limits(backend: MlxBackend) -> None:
    info = backend.info
    assert info.backend == "mlx"
    assert info.capabilities == {"text", "image", "audio"}
    assert info.audio_sample_rate == 16_000
    assert 0 < info.max_audio_clip_seconds < 4  # the tiny encoder takes 40 positions = 3.2 s
    assert info.audio_tokens_per_second == pytest.approx(12.5)


def test_fingerprint_is_deterministic_and_tracks_weights(model_dir, tmp_path, backend: MlxBackend) -> None:
    again = write_mlx_test_model(tmp_path / "same")
    other = write_mlx_test_model(tmp_path / "other", seed=1)
    assert (again / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    assert MlxBackend(again).info.fingerprint == backend.info.fingerprint
    assert MlxBackend(other).info.fingerprint != backend.info.fingerprint


def test_text_logits(backend: MlxBackend) -> None:
    expected = backend.count_tokens(PREFIX)
    assert backend.append(PREFIX) == expected == backend.n_tokens
    logits = backend.logits()
    assert logits.shape == (backend._vocab_size,) and logits.dtype == np.float32
    assert np.isfinite(logits).all()


def test_image_changes_logits(backend: MlxBackend) -> None:
    assert _differ(_run(backend, PREFIX, _image(1), QUESTION), _run(backend, PREFIX, _image(2), QUESTION))


def test_audio_changes_logits(backend: MlxBackend) -> None:
    assert _differ(_run(backend, PREFIX, _audio(1), QUESTION), _run(backend, PREFIX, _audio(2), QUESTION))


def test_image_and_audio_in_one_sequence(backend: MlxBackend) -> None:
    segments = [PREFIX, _image(1), _audio(1), QUESTION]
    first = _run(backend, *segments)
    assert backend.n_tokens == sum(backend.count_tokens(s) for s in segments)
    assert _differ(first, _run(backend, PREFIX, _image(1), _audio(2), QUESTION))
    assert _differ(first, _run(backend, PREFIX, _image(2), _audio(1), QUESTION))


@pytest.mark.parametrize("media", [None, _image(1), _audio(1)], ids=["text", "image", "audio"])
def test_restore_continues_exactly_like_a_cold_run(backend: MlxBackend, media) -> None:
    prefix = [PREFIX] if media is None else [PREFIX, media]
    cold = _run(backend, *prefix, QUESTION)
    _run(backend, *prefix)
    snapshot = backend.snapshot()
    assert snapshot.n_tokens == backend.n_tokens
    backend.reset()
    backend.restore(snapshot)
    assert backend.n_tokens == snapshot.n_tokens
    backend.append(QUESTION)
    np.testing.assert_allclose(backend.logits(), cold, rtol=0, atol=ATOL)


def test_restored_logits_at_the_boundary_and_after_a_token(backend: MlxBackend) -> None:
    at_boundary = _run(backend, PREFIX, _image(1))
    snapshot = backend.snapshot()
    backend.append_token(42)
    after_token = backend.logits()
    backend.restore(snapshot)
    np.testing.assert_allclose(backend.logits(), at_boundary, rtol=0, atol=ATOL)
    backend.append_token(42)
    np.testing.assert_allclose(backend.logits(), after_token, rtol=0, atol=ATOL)


def test_a_different_earlier_image_gives_different_logits_after_restore(backend: MlxBackend) -> None:
    snapshots = []
    for seed in (1, 2):
        _run(backend, PREFIX, _image(seed))
        snapshots.append(backend.snapshot())
    results = []
    for snapshot in snapshots:
        backend.restore(snapshot)
        backend.append(QUESTION)
        results.append(backend.logits())
    assert _differ(results[0], results[1])
    np.testing.assert_allclose(results[1], _run(backend, PREFIX, _image(2), QUESTION), rtol=0, atol=ATOL)


def test_snapshot_restores_in_another_instance(model_dir, backend: MlxBackend) -> None:
    cold = _run(backend, PREFIX, _audio(3), QUESTION)
    _run(backend, PREFIX, _audio(3))
    snapshot = Snapshot(backend.n_tokens, bytes(backend.snapshot().payload))
    other = MlxBackend(model_dir)
    other.restore(snapshot)
    other.append(QUESTION)
    np.testing.assert_allclose(other.logits(), cold, rtol=0, atol=ATOL)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_corrupt_snapshot_raises_input_error_and_keeps_the_sequence(backend: MlxBackend, damage: str) -> None:
    before = _run(backend, PREFIX, _image(1))
    good = backend.snapshot()
    payload = bytearray(good.payload)
    if damage == "flip":
        payload[len(payload) // 2] ^= 0xFF
    elif damage == "truncate":
        payload = payload[: len(payload) - 10]
    elif damage == "garbage":
        payload = bytearray(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        payload = bytearray()
    with pytest.raises(InputError):
        backend.restore(Snapshot(good.n_tokens, bytes(payload)))
    assert backend.n_tokens == good.n_tokens
    np.testing.assert_array_equal(backend.logits(), before)


def test_snapshot_from_other_weights_is_refused(tmp_path, backend: MlxBackend) -> None:
    other = MlxBackend(write_mlx_test_model(tmp_path / "other", seed=1))
    other.append(PREFIX)
    with pytest.raises(InputError):
        backend.restore(other.snapshot())


def test_context_overflow_is_raised_before_evaluating(model_dir) -> None:
    small = MlxBackend(model_dir, n_ctx=15)  # 10 text tokens + 6 image tokens do not fit
    small.append(TextSegment("0123456789"))
    before = small.logits()
    with pytest.raises(ContextOverflow):
        small.append(_image(1))
    with pytest.raises(ContextOverflow):
        small.append(TextSegment("0123456789"))
    assert small.n_tokens == 10
    np.testing.assert_array_equal(small.logits(), before)
    for _ in range(5):
        small.append_token(50)
    with pytest.raises(ContextOverflow):
        small.append_token(50)


def test_missing_folder_is_a_load_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError):
        MlxBackend(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError):
        MlxBackend(tmp_path)  # a folder, but no model in it


def test_missing_mlx_is_a_load_error_naming_the_extra(model_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlx_vlm", None)  # makes `import mlx_vlm` raise ImportError
    with pytest.raises(ModelLoadError):
        MlxBackend(model_dir)


def test_importing_the_backend_module_does_not_import_mlx() -> None:
    code = "import sys, omnid.models.mlx_backend; sys.exit('mlx' in sys.modules or 'mlx_vlm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.skipif(ctypes.util.find_library("openblas") is None, reason="no system OpenBLAS (libopenblas0-pthread)")
def test_mlx_matrix_products_run_on_openblas_unless_mlx_was_loaded_first() -> None:
    """The fast BLAS binds only when chosen before mlx is first loaded; a product on it is still right."""
    product = ("import numpy as np, mlx.core as mx; a = np.random.default_rng(0).normal(size=(50, 16)).astype('f4');"
               "b = a.T @ a; assert np.allclose(np.array(mx.array(a.T) @ mx.array(a)), b, atol=1e-4)")
    before = f"from omnid.models import mlx_blas; print(mlx_blas.choose()); {product}"
    after = f"{product}; from omnid.models import mlx_blas; print(mlx_blas.choose())"
    for code, chosen in ((before, "openblas"), (after, "bundled")):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and run.stdout.split() == [chosen], run.stderr


def test_should_stop_ends_a_long_prefill_between_batches(backend: MlxBackend) -> None:
    calls = []
    backend.append(TextSegment("x" * 1200), should_stop=lambda: calls.append(1) or True)
    assert calls and 0 < backend.n_tokens < 1200


def test_model_without_audio_refuses_audio_as_unsupported(tmp_path) -> None:
    vision_only = MlxBackend(write_mlx_test_model(tmp_path / "vision-only", with_audio=False))
    assert "audio" not in vision_only.info.capabilities
    assert vision_only.info.max_audio_clip_seconds is None
    with pytest.raises(InputError) as raised:
        vision_only.append(_audio(1))
    assert raised.value.unsupported


def test_audio_over_the_encoder_limit_is_refused(backend: MlxBackend) -> None:
    limit = backend.info.max_audio_clip_seconds
    assert backend.append(_audio(1, seconds=limit)) == backend.n_tokens  # exactly at the limit still encodes
    backend.reset()
    with pytest.raises(InputError) as raised:
        backend.append(_audio(1, seconds=limit + 0.05))
    assert not raised.value.unsupported
    assert backend.n_tokens == 0


@pytest.mark.parametrize("segment", [
    ImageSegment(np.zeros((1, 40, 3), np.uint8)),
    ImageSegment(np.zeros((0, 0, 3), np.uint8)),
    AudioSegment(np.zeros(10, np.float32)),
    AudioSegment(np.full(16_000, np.nan, np.float32)),
    AudioSegment(np.zeros(16_000, np.float32), sample_rate=44_100),
], ids=["thin-image", "empty-image", "short-audio", "nan-audio", "wrong-rate"])
def test_degenerate_inputs_are_input_errors(backend: MlxBackend, segment) -> None:
    with pytest.raises(InputError) as raised:
        backend.append(segment)
    assert not raised.value.unsupported
    assert backend.n_tokens == 0


def test_empty_text_adds_nothing(backend: MlxBackend) -> None:
    before = _run(backend, PREFIX)
    assert backend.count_tokens(TextSegment("")) == backend.append(TextSegment("")) == 0
    assert backend.n_tokens == backend.count_tokens(PREFIX)
    np.testing.assert_array_equal(backend.logits(), before)


def test_tokens_bytes_and_end_of_generation(backend: MlxBackend) -> None:
    text = "héllo wörld ✓"
    ids = backend._tokenizer.encode(text, add_special_tokens=False)
    assert b"".join(backend.token_bytes(i) for i in ids) == text.encode("utf-8")
    end = backend._tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert backend.is_end_of_generation(end)
    assert not backend.is_end_of_generation(ids[0])
    assert backend.token_bytes(end) == b""


def test_chat_frame_pieces_come_from_the_template(backend: MlxBackend) -> None:
    frame = backend.chat_frame()
    assert frame.user_open.endswith("user\n")
    assert frame.user_close.endswith("assistant\n<think></think>")  # a single turn answers without thinking
    assert frame.system_open and frame.template_digest
    for piece in (frame.user_open, frame.user_close):
        assert backend.count_tokens(TextSegment(piece)) > 0


# -- attention on the CPU (models/mlx_cpu_attention.py) ----------------------------------------------------------

@pytest.mark.parametrize("n, s, hq, hkv, causal", [
    (1, 300, 4, 2, False),     # a decoding step
    (37, 300, 4, 2, True),     # a turn's new tokens over a history
    (64, 64, 4, 4, True),      # a cold prefill (no grouping)
    (50, 50, 8, 2, False),     # an encoder's full attention
])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_attention_equals_mlx_fused_attention(monkeypatch, n, s, hq, hkv, causal, dtype) -> None:
    import mlx.core as mx
    from omnid.models import mlx_cpu_attention
    rng = np.random.default_rng(n * s)
    q, k, v = (mx.array(rng.normal(size=shape).astype(np.float32)).astype(getattr(mx, dtype))
               for shape in ((1, hq, n, 16), (1, hkv, s, 16), (1, hkv, s, 16)))
    mask = "causal" if causal else None
    want = np.array(mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask).astype(mx.float32))
    for max_scores in (1 << 24, hq * s * 5):  # one block of queries, and blocks of 5 queries
        monkeypatch.setattr(mlx_cpu_attention, "_MAX_SCORES", max_scores)
        got = mlx_cpu_attention._attention(mx, q, k, v, 0.25, causal=causal)
        assert got.dtype == q.dtype and got.shape == (1, hq, n, 16)
        tolerance = 1e-5 if dtype == "float32" else 2e-2
        np.testing.assert_allclose(np.array(got.astype(mx.float32)), want, atol=tolerance, rtol=tolerance)


def test_the_backend_on_the_cpu_computes_attention_through_numpy_with_the_same_logits(backend) -> None:
    """The routed function is the one the model calls, and its logits are mlx's own within float rounding."""
    import mlx_vlm.models.nemotron_h.language as nemotron_h
    from mlx_vlm.models import base
    assert backend._attention == "numpy"
    routed = nemotron_h.scaled_dot_product_attention
    assert routed is not base.scaled_dot_product_attention
    tokens = list(range(20, 120))

    def logits_after_a_history_and_a_turn() -> np.ndarray:
        backend.reset()
        backend.append_tokens(tokens * 3)
        backend.append_tokens(tokens[:37])
        return backend.logits()

    ours = logits_after_a_history_and_a_turn()
    nemotron_h.scaled_dot_product_attention = base.scaled_dot_product_attention
    try:
        theirs = logits_after_a_history_and_a_turn()
    finally:
        nemotron_h.scaled_dot_product_attention = routed
    assert np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max()


def test_the_output_layer_computes_the_last_position_only_with_the_same_logits(backend) -> None:
    import mlx.core as mx
    head = backend._lm.lm_head
    hidden = mx.array(np.random.default_rng(0).normal(size=(1, 40, head.weight.shape[1])).astype(np.float32))
    assert head(hidden).shape == (1, 1, head.weight.shape[0])  # not 40 rows of a vocabulary each
    every_position = type(head).__bases__[0]
    tokens = list(range(20, 120)) * 3
    backend.append_tokens(tokens)
    ours = backend.logits()
    head.__class__, last_position = every_position, type(head)
    try:
        assert head(hidden).shape == (1, 40, head.weight.shape[0])
        backend.reset()
        backend.append_tokens(tokens)
        theirs = backend.logits()
    finally:
        head.__class__ = last_position
    np.testing.assert_array_equal(ours, theirs)
