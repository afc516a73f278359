"""Memory a model needs on each GPU, estimated from its GGUF header and its settings.

Per GPU: the weights of the layers placed there (by the tensor split), their KV cache
(2 x context x KV heads x head size x cache bytes per layer), a compute buffer, and a fixed
per-process context overhead. The output layer sits with the last GPU; llama.cpp keeps the
token embeddings in host memory. These are estimates: the manager records the actual figure
after each load and exports the error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from llamarig.shared.gguf_header import GgufHeader

MIB = 1024 * 1024
# CUDA context and cuBLAS workspace per process per GPU. Measured on an H100 (CUDA 13, driver
# 580): NVML's count for a llama-server process less the buffers it reports = 588 MiB.
CUDA_CONTEXT_BYTES = 600 * MIB
CPU_PROCESS_BYTES = 20 * MIB        # a server process's own resident memory, simulated GPUs
KV_BYTES = 2                        # f16 cache, llama.cpp's default
UBATCH = 512                        # llama.cpp's default physical batch
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class Estimate:
    per_gpu: dict[int, int]  # GPU index -> bytes

    @property
    def total(self) -> int:
        return sum(self.per_gpu.values())


def _layer_weights(header: GgufHeader, layers: int) -> list[int]:
    sizes = [0] * layers
    for t in header.tensors:
        m = _LAYER.match(t.name)
        if m and int(m.group(1)) < layers:
            sizes[int(m.group(1))] += t.nbytes
    return sizes


def _kv_per_layer(header: GgufHeader, context: int) -> int:
    heads = int(header.arch_value("attention.head_count", 1) or 1)
    kv_heads = int(header.arch_value("attention.head_count_kv", heads) or heads)
    width = int(header.arch_value("embedding_length", 0) or 0)
    head_k = int(header.arch_value("attention.key_length", width // heads) or 0)
    head_v = int(header.arch_value("attention.value_length", head_k) or 0)
    return context * kv_heads * (head_k + head_v) * KV_BYTES


def _compute_buffer(header: GgufHeader) -> int:
    vocab = next((t.shape[1] for t in header.tensors if t.name == "token_embd.weight" and len(t.shape) > 1), 32000)
    width = int(header.arch_value("embedding_length", 4096) or 4096)
    return UBATCH * (vocab + 8 * width) * 4


def _assign_layers(layers: int, split: tuple[float, ...]) -> list[int]:
    """GPU slot of each layer, as llama.cpp's layer split does: by cumulative share."""
    bounds, acc = [], 0.0
    for share in split:
        acc += share
        bounds.append(acc * layers)
    return [next(j for j, b in enumerate(bounds) if i < b - 1e-9) for i in range(layers)]


def estimate(header: GgufHeader, gpus: tuple[int, ...], split: tuple[float, ...], context: int,
             gpu_layers: int, simulated: bool) -> Estimate:
    total_layers = int(header.arch_value("block_count", 0) or 0)
    offloaded = total_layers if gpu_layers < 0 else min(gpu_layers, total_layers)
    weights = _layer_weights(header, offloaded)
    kv = _kv_per_layer(header, context)
    per_gpu = {g: (CPU_PROCESS_BYTES if simulated else CUDA_CONTEXT_BYTES) for g in gpus}
    for layer, slot in enumerate(_assign_layers(offloaded, split)):
        per_gpu[gpus[slot]] += weights[layer] + kv
    if offloaded == total_layers:
        per_gpu[gpus[-1]] += sum(t.nbytes for t in header.tensors if t.name.startswith("output"))
    per_gpu[gpus[0]] += _compute_buffer(header)
    return Estimate(per_gpu)


def estimate_folder(model_bytes: int, gpu: int, simulated: bool) -> Estimate:
    """A Whisper (CTranslate2) model: its weights plus a working set of the same order."""
    return Estimate({gpu: model_bytes * 2 + (CPU_PROCESS_BYTES if simulated else CUDA_CONTEXT_BYTES)})
