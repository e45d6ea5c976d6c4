"""Real speech for audio tests, made with espeak-ng + sox (../shared/notes/headless-ci.md), cached per session."""
from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

WORDS = ("the meeting will review budget numbers and the team agreed to ship the release next week while alice "
         "owns testing and bob writes documentation for customers").split()


def speech_wav(folder: Path, seconds: float, rate: int = 16_000, channels: int = 1, name: str = "") -> Path:
    """`seconds` of English speech (espeak-ng at 175 wpm: ~3 words/s) as a WAV file at `rate`."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install espeak-ng sox)")
    out = folder / (name or f"speech-{int(seconds)}s-{rate}-{channels}.wav")
    if out.exists():
        return out
    rng = random.Random(int(seconds))
    words = [rng.choice(WORDS) + ("." if rng.random() < 0.1 else "") for _ in range(int(seconds * 3.3) + 20)]
    text = folder / f"{out.stem}.txt"
    text.write_text(" ".join(words))
    espeak = subprocess.Popen(["espeak-ng", "-v", "en-us", "-s", "175", "-f", str(text), "--stdout"],
                              stdout=subprocess.PIPE)
    sox = subprocess.Popen(["sox", "-q", "-t", "wav", "-", "-r", str(rate), "-c", str(channels), "-b", "16",
                            str(out), "trim", "0", str(seconds)], stdin=espeak.stdout)
    espeak.stdout.close()  # sox alone holds the pipe: espeak ends (SIGPIPE) when sox has what it needs
    if sox.wait() != 0:
        raise RuntimeError(f"sox failed with {sox.returncode}")
    espeak.wait()
    return out
