"""How many decoder sequences the daemon holds (--parallel) and the context each gets, sized from memory.

Sizes use the published shapes of NVIDIA Nemotron 3 Nano Omni (bench/_common.py), with its 18 GiB of weights,
on machines of several sizes: N sequences cost N x (the KV of the context + the recurrent state).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from _common import NEMOTRON_3_NANO  # noqa: E402

from omnid.daemon.cli import build_parser, config_from  # noqa: E402
from omnid.models.base import ModelLoadError  # noqa: E402
from omnid.models.context_size import (DEFAULT_SEQUENCES, SEQUENCE_CONTEXT_FLOOR, StateSize,  # noqa: E402
                                       plan_context, plan_sequences)

GIB = 1 << 30
TARGET = StateSize(262144, NEMOTRON_3_NANO.kv_bytes_per_token(), NEMOTRON_3_NANO.recurrent_bytes(), 18 * GIB)


def _plan(parallel: int, ctx: int, available: int, reserved: int = GIB // 2) -> tuple[int, int]:
    sequences = plan_sequences(parallel, ctx, TARGET, available, reserved)
    plan = plan_context(ctx, TARGET, available, reserved, sequences)
    assert plan.sequences == sequences
    used = sequences * (plan.tokens * TARGET.bytes_per_token + TARGET.fixed_bytes)
    assert used <= available - TARGET.weights_bytes - reserved or plan.source == "memory"
    return sequences, plan.tokens


def test_a_roomy_machine_holds_the_default_sequences_with_the_trained_context() -> None:
    assert _plan(0, 0, 64 * GIB, 8 * GIB) == (DEFAULT_SEQUENCES, 262144)


def test_a_tight_machine_holds_fewer_sequences_each_with_a_long_context() -> None:
    sequences, tokens = _plan(0, 0, 20 * GIB)
    assert sequences == DEFAULT_SEQUENCES and SEQUENCE_CONTEXT_FLOOR <= tokens < 262144
    sequences, tokens = _plan(0, 0, int(19.6 * GIB))
    assert 1 < sequences < DEFAULT_SEQUENCES and tokens >= SEQUENCE_CONTEXT_FLOOR
    assert _plan(0, 0, 19 * GIB)[0] == 1  # a tiny-memory machine: one sequence, as before


def test_a_long_ctx_leaves_room_for_fewer_sequences() -> None:
    assert _plan(0, 131072, 20 * GIB) == (1, 131072)
    assert _plan(0, 65536, 21 * GIB)[0] == 4


def test_an_asked_parallel_is_kept_or_refused_with_the_number_that_fits() -> None:
    assert _plan(8, 0, 64 * GIB)[0] == 8
    with pytest.raises(ModelLoadError, match=r"--parallel 16 .* at most \d+ fit"):
        plan_sequences(16, 0, TARGET, 20 * GIB, GIB // 2)
    assert plan_sequences(1, 0, TARGET, 10 * GIB, 0) == 1  # one is never refused here (the context plan says)
    assert plan_sequences(3, 0, None, 10 * GIB, 0) == 3 and plan_sequences(0, 0, None, 10 * GIB, 0) == 1


def test_the_parallel_flag() -> None:
    parser = build_parser()
    assert config_from(parser.parse_args(["serve", "--parallel", "3"])).parallel == 3
    assert config_from(parser.parse_args(["serve"])).parallel == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--parallel", "0"])
