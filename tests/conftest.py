"""Shared fixtures: generated models made once per session, and real bundles."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import Bundle, model_entry, start_bundle, write_rig
from llamarig.backend.models_make import make_gguf, make_whisper


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {"gguf": make_gguf(folder / "tiny.gguf"), "gguf_b": make_gguf(folder / "tiny-b.gguf", seed=1),
            "whisper": make_whisper(folder / "whisper")}


@pytest.fixture(scope="session")
def wav(tmp_path_factory):
    """Three seconds of a 440 Hz tone, 16 kHz mono PCM."""
    import wave

    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    t = np.arange(16000 * 3) / 16000
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return path


@pytest.fixture
def bundle_factory(tmp_path):
    """Start bundles from rig files; each is shut down (or killed) at the end."""
    started: list[Bundle] = []

    def start(rig_path) -> Bundle:
        b = start_bundle(tmp_path, rig_path)
        started.append(b)
        return b

    yield start
    for b in started:
        if b.proc.poll() is None:
            b.ctl("shutdown")
            try:
                b.proc.wait(timeout=30)
            except Exception:
                b.kill()


@pytest.fixture
def one_model(tmp_path, models, bundle_factory):
    """Start a bundle of one llama-server model `m` on GPU 0, ready unless ready=False.
    `entry`: the model's settings; `sections`: other rig sections (lifecycle=..., engines=...)."""
    def start(ready: bool = True, sections: dict | None = None, **entry) -> Bundle:
        b = bundle_factory(write_rig(tmp_path, {"m": model_entry(models["gguf"], [0], **entry)}, **(sections or {})))
        if ready:
            b.wait_ready()
        return b
    return start


MEASURED: list[str] = []


@pytest.fixture(scope="session")
def report():
    """Keep a measured line for the run's summary (pytest captures print)."""
    return MEASURED.append


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("measured")
        for line in MEASURED:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def docker():
    """A real dockerd for this session (root and Debian's docker.io), stopped at its end."""
    from dockerd import start_dockerd, stop_dockerd

    d = start_dockerd()
    yield d
    stop_dockerd(d)


@pytest.fixture(scope="session")
def image(docker):
    """The CPU image, built as the README says (runtime/docker-base.sh, runtime/image-prebuilt.sh)."""
    from dockerd import build_cpu_image

    return build_cpu_image(docker, "llamarig:test")
