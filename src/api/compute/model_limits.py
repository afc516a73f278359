"""What the validator needs of each model: its context size (the rig), its vocabulary size (the
GGUF header, read once per file version) and what its engine takes."""
from __future__ import annotations

import os
import time
from pathlib import Path

from llamarig.api.compute.validate import ModelLimits
from llamarig.shared.gguf_header import ArrayValue, GgufError, read_header
from llamarig.shared.rig import Engine, Rig

TOKENS_KEY = "tokenizer.ggml.tokens"
RESTAT_S = 1.0  # a model file replaced in place is seen within this (a reload brings a new rig at once)


def vocab_size(path) -> int | None:
    try:
        tokens = read_header(path).metadata.get(TOKENS_KEY)
    except (OSError, GgufError):
        return None  # not there yet, or refused: the verifier says why when the model starts
    return tokens.length if isinstance(tokens, ArrayValue) else None


class ModelLimitsCache:
    """At most one stat of the model file per second (a stat and the asyncio turns around the
    request were most of what the profile showed of llamarig's own path); the rig's path resolution (33 µs,
    measured) happens once per rig and model."""

    def __init__(self):
        self._paths: dict[str, tuple[Rig, Path]] = {}
        self._limits: dict[str, tuple[tuple, ModelLimits, float]] = {}  # name -> (version, limits, checked at)

    def _path(self, rig: Rig, name: str) -> Path:
        known = self._paths.get(name)
        if known is None or known[0] is not rig:  # a reload brings a new rig
            known = self._paths[name] = (rig, rig.resolve(rig.models[name].path))
        return known[1]

    def get(self, rig: Rig, name: str) -> ModelLimits:
        cached = self._limits.get(name)
        now = time.monotonic()
        if cached and cached[0][0] is rig and now - cached[2] < RESTAT_S:
            return cached[1]
        path = self._path(rig, name)
        try:
            st = os.stat(path)
        except OSError:
            st = None
        version = (rig, st.st_size, st.st_mtime_ns) if st else None
        if cached and version and cached[0] == version:
            self._limits[name] = (version, cached[1], now)
            return cached[1]
        m = rig.models[name]
        limits = ModelLimits(m.context_size, vocab_size(path) if st else None, m.embeddings,
                             one_text_prompt=m.engine == Engine.llama_cpp_python)
        if version and limits.vocab is not None:
            self._limits[name] = (version, limits, now)
        return limits

    def smallest_vocab(self, rig: Rig) -> int | None:
        sizes = [self.get(rig, n).vocab for n in rig.models]
        return min(sizes) if sizes and None not in sizes else None
