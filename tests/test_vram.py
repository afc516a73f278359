"""Memory estimates from a GGUF header: layers split by the tensor split, KV cache scales."""
from llamarig.backend.models_make import GgufSize, make_gguf
from llamarig.shared.gguf_header import read_header
from llamarig.shared.vram import CUDA_CONTEXT_BYTES, estimate


def test_split_and_kv_cache(tmp_path):
    header = read_header(make_gguf(tmp_path / "m.gguf", GgufSize(layers=4, width=128, heads=4, kv_heads=2)))
    one = estimate(header, (0,), (1.0,), 1024, -1, simulated=False)
    two = estimate(header, (0, 3), (0.5, 0.5), 1024, -1, simulated=False)
    assert set(two.per_gpu) == {0, 3}
    assert two.per_gpu[0] > CUDA_CONTEXT_BYTES and two.per_gpu[3] > CUDA_CONTEXT_BYTES
    # Splitting adds one more per-GPU context overhead and moves nothing else.
    assert two.total == one.total + CUDA_CONTEXT_BYTES
    bigger_ctx = estimate(header, (0,), (1.0,), 2048, -1, simulated=False)
    kv_per_token = 4 * 2 * (128 // 4) * 2 * 2  # layers x kv heads x (k+v) head size x f16
    assert bigger_ctx.total - one.total == 1024 * kv_per_token


def test_cpu_only_layers_cost_no_weights(tmp_path):
    header = read_header(make_gguf(tmp_path / "m.gguf", GgufSize(layers=4, width=128)))
    none = estimate(header, (0,), (1.0,), 512, 0, simulated=False)
    full = estimate(header, (0,), (1.0,), 512, -1, simulated=False)
    assert none.total < full.total
