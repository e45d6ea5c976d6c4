"""The generation loop (stop strings, every stop reason, streaming) and the sampler (top-k, top-p, seeds).

The loop is DecoderSession.generate itself, driven by FakeBackendForSchedulerTests, whose scripted reply
lets a test know the exact text the loop sees; the sampler is tested on hand-made logits. What real models
do is tested on the real backends (test_backend_conformance.py, test_daemon.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from fake_backend import FakeBackendForSchedulerTests
from omnid.daemon import jobs
from omnid.daemon.events import Done, TextDelta
from omnid.daemon.prompt_cache import PromptCache
from omnid.daemon.sampling import Sampler, SamplingParams
from omnid.daemon.scheduler import Scheduler
from omnid.daemon.session import DecoderSession
from omnid.models.base import TextSegment


def generate(reply: bytes, max_tokens: int = 64, stop: tuple[str, ...] = (), context_length: int = 4096):
    backend = FakeBackendForSchedulerTests(reply, context_length=context_length)
    session = DecoderSession(backend, PromptCache(backend.info.fingerprint, 1 << 20), lambda: False)
    session.prefill(session.build_prompt([TextSegment("question")]))
    deltas: list[str] = []
    result = session.generate(max_tokens, SamplingParams(stop=stop), deltas.append)
    return result, deltas, backend


def test_the_end_of_generation_token_ends_the_answer() -> None:
    result, deltas, _ = generate(b"hello")
    assert (result.text, result.stop_reason, result.generated_tokens) == ("hello", "eos", 5)
    assert "".join(deltas) == "hello"


def test_max_tokens_ends_the_answer() -> None:
    result, deltas, _ = generate(b"hello", max_tokens=3)
    assert (result.text, result.stop_reason, result.generated_tokens) == ("hel", "max_tokens", 3)
    assert "".join(deltas) == "hel"


def test_a_stop_string_ends_the_answer_before_it_and_is_never_streamed() -> None:
    result, deltas, _ = generate(b"hello world", stop=("lo w",))
    assert (result.text, result.stop_reason) == ("hel", "stop")
    # "l", "o", " " were held back while they could still become the stop string, and never went out.
    assert "".join(deltas) == "hel"
    assert result.generated_tokens == len("hello w")


def test_text_held_back_for_a_stop_string_that_never_completes_goes_out_at_the_end() -> None:
    result, deltas, _ = generate(b"hello", stop=("lox", "zzz"))
    assert (result.text, result.stop_reason) == ("hello", "eos")
    assert "".join(deltas) == "hello"
    assert deltas[-1].endswith("lo")  # the held-back tail, flushed once generation ended


def test_the_first_of_several_stop_strings_to_complete_wins() -> None:
    result, _, _ = generate(b"abcdef", stop=("de", "bc"))
    assert (result.text, result.stop_reason) == ("a", "stop")


def test_a_full_context_ends_the_answer() -> None:
    _, _, backend = generate(b"")
    prompt_tokens = backend.n_tokens
    result, deltas, backend = generate(b"hello world", context_length=prompt_tokens + 2)
    assert result.stop_reason == "context_full"
    assert backend.n_tokens == prompt_tokens + 2  # filled exactly, never past the context
    assert result.text == "hel" and "".join(deltas) == "hel"


def test_deltas_are_whole_characters() -> None:
    result, deltas, _ = generate("héllo wörld".encode())
    assert result.text == "héllo wörld"
    assert "".join(deltas) == result.text
    assert len(deltas) == len(result.text)  # each two-byte character went out once, whole


def test_the_generate_job_streams_deltas_then_returns_done_through_the_scheduler() -> None:
    fake = FakeBackendForSchedulerTests(b"streamed answer")
    scheduler = Scheduler(lambda: fake, lambda b: PromptCache(b.info.fingerprint, 1 << 20))
    scheduler.start()
    try:
        handle = scheduler.submit(jobs.generate([TextSegment("question")], "be brief", 64, SamplingParams()))
        events = list(handle.events())
        done = handle.result(10)
    finally:
        scheduler.stop()
    assert all(isinstance(e, TextDelta) for e in events)
    assert isinstance(done, Done) and done.text == "streamed answer" == "".join(e.text for e in events)
    assert done.stop_reason == "eos" and done.usage.generated_tokens == len(b"streamed answer")
    prompt = "<sys>be brief</sys><user>question</user><bot>"
    assert done.usage.prompt_tokens == len(prompt)
    assert done.usage.total_ms >= done.usage.prefill_ms


# -- the sampler ---------------------------------------------------------------------------------------------


def probs_logits(*probs: float) -> np.ndarray:
    """Logits whose softmax (at temperature 1) is `probs`."""
    return np.log(np.array(probs, dtype=np.float64)).astype(np.float32)


def draws(params: SamplingParams, logits: np.ndarray, n: int = 300) -> list[int]:
    sampler = Sampler(params)
    return [sampler.sample(logits) for _ in range(n)]


def test_temperature_zero_is_greedy_whatever_top_k_and_top_p_say() -> None:
    logits = probs_logits(0.2, 0.5, 0.3)
    assert set(draws(SamplingParams(temperature=0.0, top_k=3, top_p=0.9), logits, 20)) == {1}


def test_top_k_keeps_only_the_k_most_likely_tokens() -> None:
    logits = probs_logits(0.3, 0.05, 0.25, 0.4)
    assert set(draws(SamplingParams(temperature=1.0), logits)) == {0, 1, 2, 3}
    assert set(draws(SamplingParams(temperature=1.0, top_k=2), logits)) == {3, 0}
    assert set(draws(SamplingParams(temperature=1.0, top_k=1), logits)) == {3}


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = probs_logits(0.6, 0.3, 0.1)
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.5), logits)) == {0}
    assert set(draws(SamplingParams(temperature=1.0, top_p=0.8), logits)) == {0, 1}
    assert set(draws(SamplingParams(temperature=1.0, top_p=1.0), logits)) == {0, 1, 2}


def test_top_k_and_top_p_together() -> None:
    logits = probs_logits(0.35, 0.3, 0.2, 0.15)
    # top_k=3 leaves (0.35, 0.3, 0.2) -> renormalised 0.41, 0.35, 0.24; top_p=0.7 then keeps the first two.
    assert set(draws(SamplingParams(temperature=1.0, top_k=3, top_p=0.7), logits)) == {0, 1}


def test_the_same_seed_gives_the_same_tokens_and_another_seed_other_ones() -> None:
    logits = probs_logits(*([1 / 16] * 16))
    a = draws(SamplingParams(temperature=1.0, seed=7), logits, 50)
    assert a == draws(SamplingParams(temperature=1.0, seed=7), logits, 50)
    assert a != draws(SamplingParams(temperature=1.0, seed=8), logits, 50)


@pytest.mark.parametrize("params", [dict(temperature=-1.0), dict(temperature=11.0), dict(top_p=1.5),
                                    dict(top_p=-0.1), dict(top_k=-1)])
def test_out_of_range_settings_are_refused(params: dict) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**params)
