"""Tiny real models for tests and the demo rig: nothing can be downloaded here.

`make_gguf` writes a llama-architecture GGUF with a SentencePiece-style byte tokenizer and
random weights; llama.cpp loads it and generates (random text). `make_whisper` writes a
CTranslate2 Whisper model with a byte-level tokenizer.json that faster-whisper loads and runs.
Sizes are parameters so that load time and VRAM estimates can be made non-trivial.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GgufSize:
    layers: int = 2
    width: int = 64
    heads: int = 4
    kv_heads: int = 2
    context: int = 4096

    @property
    def ffn(self) -> int:
        return self.width * 2


def _llama_vocab() -> tuple[list[bytes], list[float], list[int]]:
    import gguf

    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)] + ["\u2581".encode()]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL]
    return tokens, [0.0] * len(tokens), [int(t) for t in types]


def make_gguf(path: str | Path, size: GgufSize = GgufSize(), seed: int = 0) -> Path:
    """Write a llama GGUF (F32, random weights); written beside then renamed into place."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(tmp), "llama")
    vocab = write_llama_header_kv(w, size)
    for name, shape in _llama_tensors(size, vocab):
        # float32 straight from the generator: four times faster than normal()'s float64 (a 2.3 GB model
        # took half a minute)
        data = np.ones(shape, np.float32) if name.endswith("norm.weight") else \
            rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def write_llama_header_kv(w, size: GgufSize) -> int:
    """The llama architecture and byte-level tokenizer keys; returns the vocabulary size."""
    tokens, scores, types = _llama_vocab()
    _write_llama_metadata(w, size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    return len(tokens)


def _write_llama_metadata(w, size: GgufSize) -> None:
    import gguf

    w.add_context_length(size.context)
    w.add_embedding_length(size.width)
    w.add_block_count(size.layers)
    w.add_feed_forward_length(size.ffn)
    w.add_head_count(size.heads)
    w.add_head_count_kv(size.kv_heads)
    w.add_rope_dimension_count(size.width // size.heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)


def _llama_tensors(size: GgufSize, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    d, ff = size.width, size.ffn
    kv = d // size.heads * size.kv_heads
    shapes = [("token_embd.weight", (vocab, d)), ("output_norm.weight", (d,)), ("output.weight", (vocab, d))]
    for i in range(size.layers):
        shapes += [(f"blk.{i}.{n}.weight", s) for n, s in [
            ("attn_norm", (d,)), ("attn_q", (d, d)), ("attn_k", (kv, d)), ("attn_v", (kv, d)),
            ("attn_output", (d, d)), ("ffn_norm", (d,)), ("ffn_gate", (ff, d)), ("ffn_up", (ff, d)),
            ("ffn_down", (d, ff))]]
    return shapes


WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                    "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]


def _whisper_tokens() -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    stamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    return alphabet + WHISPER_SPECIALS + stamps


def _write_whisper_tokenizer(folder: Path, tokens: list[str]) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens[:256])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in tokens[256:]])
    tok.save(str(folder / "tokenizer.json"))


def _whisper_shape(name: str, d: int, vocab: int) -> tuple[int, ...]:
    rules = [("conv1/", (d, 80, 3)), ("conv2/", (d, d, 3)), ("self_attention/linear_0", (3 * d, d)),
             ("self_attention/linear_1", (d, d)), ("attention/linear_1", (2 * d, d)),
             ("attention/linear_", (d, d)), ("ffn/linear_0", (4 * d, d)), ("ffn/linear_1", (d, 4 * d)),
             ("embeddings/", (vocab, d)), ("projection/", (vocab, d))]
    for key, shape in rules:
        if key in name:
            return shape
    return (d,)


def _fill_spec(spec, d: int, vocab: int, rng) -> None:
    for name, value in spec.variables().items():
        if value is not None:
            continue
        shape = _whisper_shape(name, d, vocab)
        if name.endswith("gamma"):
            data = np.ones(shape, np.float32)
        elif name.endswith("beta"):
            data = np.zeros(shape, np.float32)
        else:
            data = rng.normal(0, 0.02, shape).astype(np.float32)
        _set_path(spec, name, data)
    # Optional in the spec, required by the loader: set both explicitly.
    spec.encoder.position_encodings.encodings = rng.normal(0, 0.02, (1500, d)).astype(np.float32)
    spec.decoder.position_encodings.encodings = rng.normal(0, 0.02, (448, d)).astype(np.float32)


def _set_path(spec, name: str, data) -> None:
    node = spec
    parts = name.split("/")
    for part in parts[:-1]:
        base, _, index = part.rpartition("_")
        # Spec paths name list items as "layer_0", "linear_1": the list is the attribute.
        if index.isdigit() and hasattr(node, base):
            node = getattr(node, base)[int(index)]
        else:
            node = getattr(node, part)
    setattr(node, parts[-1], data)


def make_whisper(folder: str | Path, layers: int = 2, heads: int = 2, width: int = 64, seed: int = 0) -> Path:
    """Write a faster-whisper (CTranslate2) model folder with its tokenizer.json."""
    from ctranslate2.specs import whisper_spec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = _whisper_tokens()
    spec = whisper_spec.WhisperSpec(layers, heads, layers, heads)
    _fill_spec(spec, width, len(tokens), np.random.default_rng(seed))
    spec.config.suppress_ids = []
    spec.config.suppress_ids_begin = []
    spec.config.lang_ids = [tokens.index("<|en|>")]
    spec.config.alignment_heads = [[0, 0]]
    spec.register_vocabulary(tokens)
    spec.validate()
    spec.save(str(folder))
    _write_whisper_tokenizer(folder, tokens)
    (folder / "preprocessor_config.json").write_text(json.dumps({"feature_size": 80, "sampling_rate": 16000}))
    return folder
