"""One small adapter per llama.cpp engine: its command line, readiness probe and metrics path."""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from llamarig.shared.errors import LlamarigError
from llamarig.shared.rig import Engine, ModelConfig, Rig


@dataclass(frozen=True)
class EngineAdapter:
    name: str
    ready_path: str            # GET answers 200 only once the model is loaded
    metrics_path: str | None   # Prometheus text of the engine, if it has one

    def argv(self, rig: Rig, model: ModelConfig, on_gpu: bool, port: int) -> list[str]:
        raise NotImplementedError


class LlamaServer(EngineAdapter):
    def argv(self, rig: Rig, model: ModelConfig, on_gpu: bool, port: int) -> list[str]:
        binary = shutil.which(rig.engines.llama_server)
        if not binary:
            raise LlamarigError("engine_missing", f"llama-server not found as {rig.engines.llama_server!r}; "
                                "build it with runtime/build-llama-server.sh")
        argv = [binary, "--model", str(rig.resolve(model.path)), "--host", "127.0.0.1",
                "--port", str(port), "--ctx-size", str(model.context_size),
                "--n-gpu-layers", str(_gpu_layers(model, on_gpu)), "--parallel", str(model.parallel),
                "--metrics", "--no-webui"]
        if rig.engines.threads:
            argv += ["--threads", str(rig.engines.threads)]
        if on_gpu and model.tensor_split:
            argv += ["--tensor-split", ",".join(f"{s:g}" for s in model.tensor_split)]
        if model.embeddings:  # OpenAI's /v1/embeddings needs pooled vectors; llama models default to none
            argv += ["--embeddings", "--pooling", "mean"]
        return argv + model.extra_args


class LlamaCppPython(EngineAdapter):
    def argv(self, rig: Rig, model: ModelConfig, on_gpu: bool, port: int) -> list[str]:
        python = rig.engines.python or sys.executable
        argv = [python, "-m", "llama_cpp.server", "--model", str(rig.resolve(model.path)),
                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(model.context_size),
                "--n_gpu_layers", str(_gpu_layers(model, on_gpu)),
                # By default a new request cuts off a running stream; a proxy must not allow that.
                "--interrupt_requests", "False"]
        if rig.engines.threads:
            argv += ["--n_threads", str(rig.engines.threads)]
        if on_gpu and model.tensor_split:
            argv += ["--tensor_split", *[f"{s:g}" for s in model.tensor_split]]
        if model.embeddings:
            argv += ["--embedding", "True"]
        return argv + model.extra_args


def _gpu_layers(model: ModelConfig, on_gpu: bool) -> int:
    # The simulated inventory means no GPU: every layer stays on the CPU, and says so.
    if not on_gpu:
        return 0
    return 999 if model.gpu_layers == -1 else model.gpu_layers


ENGINES: dict[Engine, EngineAdapter] = {
    Engine.llama_server: LlamaServer("llama-server", "/health", "/metrics"),
    Engine.llama_cpp_python: LlamaCppPython("llama-cpp-python", "/v1/models", None),
}


def engine_for(model: ModelConfig) -> EngineAdapter:
    return ENGINES[model.engine]


def whisper_argv(rig_path: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "llamarig.backend.whisper", "--rig", str(rig_path), "--port", str(port)]
