"""What the validator needs of each model: its context size (the rig), its vocabulary size (the
GGUF header, read once per file version) and whether it serves embeddings."""
from __future__ import annotations

import os

from llamarig.api.compute.validate import ModelLimits
from llamarig.shared.gguf_header import ArrayValue, GgufError, read_header
from llamarig.shared.rig import Engine, Rig

TOKENS_KEY = "tokenizer.ggml.tokens"


def vocab_size(path) -> int | None:
    try:
        tokens = read_header(path).metadata.get(TOKENS_KEY)
    except (OSError, GgufError):
        return None  # not there yet, or refused: the verifier says why when the model starts
    return tokens.length if isinstance(tokens, ArrayValue) else None


class ModelLimitsCache:
    def __init__(self):
        self._by_model: dict[str, tuple[tuple, ModelLimits]] = {}

    def get(self, rig: Rig, name: str) -> ModelLimits:
        m = rig.models[name]
        path = rig.resolve(m.path)
        try:
            st = os.stat(path)
            version = (str(path), st.st_size, st.st_mtime_ns, m.context_size, m.embeddings, m.engine)
        except OSError:
            version = None
        cached = self._by_model.get(name)
        if cached and version and cached[0] == version:
            return cached[1]
        limits = ModelLimits(m.context_size, vocab_size(path) if version else None, m.embeddings,
                             one_text_prompt=m.engine == Engine.llama_cpp_python)
        if version and limits.vocab is not None:
            self._by_model[name] = (version, limits)
        return limits

    def smallest_vocab(self, rig: Rig) -> int | None:
        sizes = [self.get(rig, n).vocab for n in rig.models]
        return min(sizes) if sizes and None not in sizes else None
