"""Generated models for the benchmarks, cached in bench/.models (git-ignored)."""
from __future__ import annotations

import os
from pathlib import Path

from common import ROOT
from llamarig.backend.models_make import GgufSize, _llama_tensors, make_gguf, write_llama_header_kv

CACHE = ROOT / "bench" / ".models"


def model(name: str, size: GgufSize, seed: int = 0) -> Path:
    path = CACHE / f"{name}.gguf"
    if not path.exists():
        make_gguf(path, size, seed)
    return path


def sparse_model(name: str, size: GgufSize, seed: int = 0) -> Path:
    """A cached sparse model of this shape (zero weights; `seed` only keeps model()'s call)."""
    path = CACHE / f"{name}-sparse.gguf"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        sparse_gguf(path, size.layers, size.width)
    return path


def sparse_gguf(path: Path, layers: int, width: int) -> Path:
    """A valid llama GGUF header whose tensor data is a hole: gigabytes on paper, nothing on disk.
    The verifier reads it like any other file (the hole reads as zeros)."""
    import gguf
    import numpy as np

    size = GgufSize(layers=layers, width=width, heads=16, kv_heads=8)
    w = gguf.GGUFWriter(str(path), "llama")
    vocab = write_llama_header_kv(w, size)
    total = 0
    for name, shape in _llama_tensors(size, vocab):
        nbytes = int(np.prod(shape)) * 4
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes)
        total += -(-nbytes // 32) * 32  # each tensor padded to the default alignment
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        start = -(-f.tell() // 32) * 32
        f.truncate(start + total)
    return path
