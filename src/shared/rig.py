"""The rig: one pydantic tree loaded from one YAML file (`runtime/rig.yaml`).

Every field says its unit and its edge values. Unknown keys are errors. `load_rig` returns a
`Rig` or raises `RigError` with one line per bad field, each naming the field's path
(`models.brain.port: ...`), so that nothing starts on a half-valid file.
"""
from __future__ import annotations

import hashlib
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from llamarig.shared.errors import RigError

from llamarig.shared.tls_config import TlsConfig
from llamarig.shared.rig_types import NAME_PATTERN, EnvName, Port, Strict
from llamarig.shared.thermal_config import ThermalConfig
from llamarig.shared.work_config import WorkConfig


class GpuSource(str, Enum):
    auto = "auto"
    nvml = "nvml"
    simulated = "simulated"


class Engine(str, Enum):
    llama_server = "llama-server"
    llama_cpp_python = "llama-cpp-python"


class WhisperDevice(str, Enum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


class SimulatedGpu(Strict):
    index: int = Field(ge=0, le=63, description="GPU index as NVML and CUDA_VISIBLE_DEVICES number it.")
    name: str = Field(min_length=1, description="Product name shown in status tables and metrics.")
    memory_mib: int = Field(gt=0, description="Total memory in MiB (1 MiB = 1048576 bytes); > 0.")


class GpusConfig(Strict):
    source: GpuSource = Field(
        GpuSource.auto,
        description="auto: NVML when it finds a device, else the simulated inventory (servers then "
        "run on the CPU with 0 GPU layers). nvml: NVML or nothing starts. simulated: always simulated.",
    )
    simulated: list[SimulatedGpu] = Field(
        default_factory=list,
        description="The declared inventory with the real rig's topology; used when NVML has no "
        "device (or source is simulated). Indexes must be unique. Empty: no fallback.",
    )

    @model_validator(mode="after")
    def _unique_indexes(self) -> GpusConfig:
        indexes = [g.index for g in self.simulated]
        if len(indexes) != len(set(indexes)):
            raise ValueError(f"simulated GPU indexes repeat: {indexes}")
        return self


class ModelConfig(Strict):
    path: str = Field(description="GGUF file, relative to paths.root or absolute.")
    engine: Engine = Field(Engine.llama_server, description="llama-server (native) or llama-cpp-python.")
    gpus: list[int] = Field(min_length=1, description="GPU indexes it is pinned to (CUDA_VISIBLE_DEVICES); 1 or more.")
    tensor_split: list[float] | None = Field(
        None, description="Share of the model per GPU, same length as gpus, each >= 0, sum > 0. "
        "Only for models on 2+ GPUs; null: llama.cpp's default split.")
    context_size: int = Field(2048, ge=64, le=1048576, description="Context length in tokens (-c).")
    gpu_layers: int = Field(-1, ge=-1, description="Layers offloaded to the GPU (-ngl); -1: all; 0: CPU only.")
    port: Port = Field(description="Loopback TCP port of its server; unique in the rig.")
    swap_port: Port | None = Field(
        None, description="Loopback TCP port of a second server used for a blue-green reload: the new "
        "server starts here beside the old one, routing switches when it is ready, then the old one "
        "drains. null: a reload drains first, then starts. Unique in the rig.")
    priority: int = Field(100, ge=0, le=1000, description="Load order: lower loads first (0 = first wave).")
    required: bool = Field(True, description="true: /ready is 503 until this model is ready.")
    keep_alive_s: float = Field(
        -1, ge=-1, description="Seconds idle before it is unloaded. -1: never unload; 0: unload right after use.")
    warm: bool = Field(True, description="true: loaded at start-up and never evicted for another model.")
    parallel: int = Field(1, ge=1, le=256, description="Request slots of the server (-np); 1 or more.")
    extra_args: list[str] = Field(default_factory=list, description="Extra server flags, passed as they are.")
    embeddings: bool = Field(False, description="true: an embeddings model; it serves /v1/embeddings only (its "
                             "server starts with mean pooling). false: it serves chat and completions.")
    placements: list[int] | None = Field(
        None, min_length=1, description="An embeddings model only: GPUs it may be placed on, like whisper.gpus: one "
        "program llama-NAME@G each, on port + its position in the list, started by the planner when requests "
        "wait and stopped after lifecycle.script_idle_s idle; `gpus` must then be its first entry. null: pinned "
        "to gpus and loaded at boot.")
    switchable: bool | None = Field(None, description="Whether the planner may stop it to give its GPU to script "
                                    "work (whisper.gpus). null: true for a model on one GPU, false for one split "
                                    "across several (the brain).")

    def port_on(self, gpu: int) -> int:
        """Port of its placement on `gpu` (its only port when not placed)."""
        return self.port + (self.placements.index(gpu) if self.placements else 0)

    @property
    def may_switch(self) -> bool:
        return self.switchable if self.switchable is not None else len(self.gpus) == 1

    @model_validator(mode="after")
    def _placed_embeddings(self) -> ModelConfig:
        if self.placements is None:
            return self
        if not self.embeddings:
            raise ValueError("placements are for an embeddings model (embeddings: true)")
        if self.gpus != self.placements[:1] or len(set(self.placements)) != len(self.placements):
            raise ValueError(f"with placements {self.placements}, gpus must be [{self.placements[0]}] and "
                             "placements must not repeat")
        if self.swap_port is not None:
            raise ValueError("a placed model has no swap_port (each placement is loaded afresh)")
        return self

    @model_validator(mode="after")
    def _split_matches_gpus(self) -> ModelConfig:
        if len(set(self.gpus)) != len(self.gpus):
            raise ValueError(f"gpus repeat: {self.gpus}")
        if self.tensor_split is None:
            return self
        if len(self.gpus) < 2:
            raise ValueError("tensor_split is only for models on 2 or more GPUs")
        if len(self.tensor_split) != len(self.gpus):
            raise ValueError(f"tensor_split has {len(self.tensor_split)} entries for {len(self.gpus)} GPUs")
        if any(s < 0 for s in self.tensor_split) or sum(self.tensor_split) <= 0:
            raise ValueError("tensor_split entries must be >= 0 with a sum > 0")
        return self


class WhisperConfig(Strict):
    model_dir: str = Field(description="CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json).")
    gpu: int | None = Field(None, ge=0, description="GPU index it is pinned to; it loads at boot like a model. "
                            "Set gpu or gpus, not both.")
    gpus: list[int] | None = Field(
        None, min_length=1, description="GPUs it may be placed on, in order of preference: one supervisord "
        "program each (whisper@G, on port + its position in the list), started by the planner when "
        "transcriptions wait, on a GPU with room or one it switches from its LLM, and stopped after "
        "lifecycle.script_idle_s idle. Set gpu or gpus, not both.")
    device: WhisperDevice = Field(WhisperDevice.auto, description="auto: CUDA when CTranslate2 sees one, else CPU.")
    compute_type: str = Field("default", description="CTranslate2 compute type: default, int8, float16, ...")
    port: Port = Field(description="Loopback TCP port of the transcription service.")
    max_audio_mib: int = Field(100, ge=1, le=4096, description="Largest upload accepted, in MiB.")
    required: bool = Field(True, description="true: /ready is 503 until Whisper is ready.")
    max_new_tokens: int | None = Field(None, ge=1, le=448, description="Cap on tokens decoded per "
                                       "30 s window; null: the model's own limit (448).")

    @model_validator(mode="after")
    def _one_placement_kind(self) -> WhisperConfig:
        if (self.gpu is None) == (self.gpus is None):
            raise ValueError("set gpu (pinned, loaded at boot) or gpus (placed by the planner), not both")
        if self.gpus and len(set(self.gpus)) != len(self.gpus):
            raise ValueError(f"gpus repeat: {self.gpus}")
        return self

    @property
    def placements(self) -> list[int]:
        """The GPUs it may run on (one for a pinned Whisper)."""
        return self.gpus if self.gpus is not None else [self.gpu]

    def port_on(self, gpu: int) -> int:
        return self.port + self.placements.index(gpu)


class KeysConfig(Strict):
    client_file: str | None = Field(
        None, description="File of client keys, one per line ('#' starts a comment): inference, the /v1/* "
        "routes. null: none from a file.")
    client_env: EnvName = Field("LLAMARIG_CLIENT_KEYS", description="Environment "
                            "variable of client keys, comma-separated; NAME_FILE may name a file of keys instead "
                            "(one per line). Read too when set; only the compute API's program sees it.")
    operator_file: str | None = Field(
        None, description="File holding the operator key: /admin/* and every route that changes the "
        "rig's state; it also works on client routes. null: none from a file.")
    operator_env: EnvName = Field("LLAMARIG_OPERATOR_KEY", description="Environment "
                              "variable of the operator key; NAME_FILE may name a file holding it instead. Read too "
                              "when set; only the compute API's program sees it.")
    open_routes: list[Literal["health", "ready", "metrics"]] = Field(
        ["health", "ready", "metrics"], description="Routes answered without a key even when keys are set "
        "(metrics includes /metrics/engines/*). []: every route needs a key.")


class ApiConfig(Strict):
    host: str = Field("127.0.0.1", description="Address the compute API binds; 0.0.0.0 to expose it. Beyond "
                      "loopback, at least one client key is required or nothing starts.")
    port: Port = Field(8000, description="TCP port of the compute API.")
    keys: KeysConfig = Field(default_factory=KeysConfig, description="Bearer keys. No key at all: every route "
                             "is open (loopback use only).")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="HTTPS for the compute API (tls.py): its "
                           "certificate and key, the CA its own clients trust, and whether it is required.")
    max_body_mib: float = Field(16, gt=0, le=1024, description="Largest JSON body of chat, completions and "
                                "embeddings, in MiB, enforced while it arrives: over it, 413 and the "
                                "connection closed. Audio uploads have whisper.max_audio_mib instead.")
    header_timeout_s: float = Field(10, gt=0, le=3600, description="Seconds a client may take to send a "
                                    "request's headers (from connecting, or from the end of its last answer); "
                                    "then the connection is closed.")
    body_timeout_s: float = Field(60, gt=0, le=86400, description="Seconds a JSON body may take to arrive "
                                  "whole, and an audio upload between two of its pieces; then 408.")
    max_connections: int = Field(1024, ge=1, le=1000000, description="Connections (and requests in progress) "
                                 "at once; past it, new requests are answered 503.")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mib * 1024 * 1024)


class TimeoutsConfig(Strict):
    model_wait_s: float = Field(30, ge=0, le=86400, description="Seconds the launch gate waits for a model "
                                "file to appear and settle before refusing; 0: check once.")
    settle_s: float = Field(1.0, ge=0, le=600, description="Seconds a file's size and mtime must stay "
                            "unchanged to count as settled; 0: no settle check.")
    start_s: float = Field(120, gt=0, le=86400, description="Seconds from start to ready before a start fails.")
    stop_s: float = Field(30, gt=0, le=3600, description="Seconds a server gets after SIGTERM before SIGKILL "
                          "(supervisord stopwaitsecs); long enough to free a GPU.")
    drain_s: float = Field(60, ge=0, le=3600, description="Seconds in-flight requests get to finish before a stop.")

    # Budgets (not fields): how long a whole step may take, its parts plus slack for the process
    # and the checks around them; past one, whoever waits gives up and says so.
    @property
    def verify_budget_s(self) -> float:
        return self.model_wait_s + self.settle_s + 30

    @property
    def load_budget_s(self) -> float:
        return self.model_wait_s + self.start_s + 60

    @property
    def stop_budget_s(self) -> float:
        return self.drain_s + self.stop_s + 30

    @property
    def kill_budget_s(self) -> float:
        return self.stop_s + 15


class LifecycleConfig(Strict):
    health_interval_s: float = Field(2.0, gt=0, le=3600, description="Seconds between liveness probes.")
    probe_timeout_s: float = Field(5.0, gt=0, le=600, description="Seconds one probe may take; generous, a busy "
                                   "server answers slowly.")
    failure_threshold: int = Field(3, ge=1, le=100, description="Consecutive failed probes that mean dead.")
    deep_probe_interval_s: float = Field(0, ge=0, le=86400, description="Seconds between one-token "
                                         "completions that prove generation works; 0: off.")
    backoff_initial_s: float = Field(1.0, ge=0, le=3600, description="Delay before the first restart.")
    backoff_max_s: float = Field(60, ge=0, le=86400, description="Cap of the doubling restart delay.")
    circuit_restarts: int = Field(5, ge=1, le=1000, description="Restarts within circuit_window_s that open the "
                                  "circuit (no more restarts until it half-opens or an operator resets it).")
    circuit_window_s: float = Field(600, gt=0, le=86400, description="Window for circuit_restarts, seconds.")
    circuit_cooldown_s: float = Field(300, ge=0, le=86400, description="Seconds an open circuit waits before it "
                                      "tries one start (half-open): success closes it, failure opens it for "
                                      "another cooldown. 0: it stays open until `llamarig reset`.")
    vram_margin_mib: int = Field(256, ge=0, description="MiB kept free on every GPU when planning waves.")
    vram_settle_s: float = Field(5, ge=0, le=600, description="Most seconds to wait for GPU memory readings "
                                 "to settle between waves.")
    queue_size: int = Field(64, ge=0, le=100000, description="Requests that may wait for a loading model; "
                            "0: none wait, 503 at once.")
    queue_timeout_s: float = Field(120, ge=0, le=86400, description="Seconds a waiting request waits.")
    script_idle_s: float = Field(60, ge=0, le=86400, description="Seconds a placed script service (whisper.gpus) "
                                 "stays loaded with no request before the planner stops it and gives its GPU "
                                 "back to the GPU's LLM; 0: right after its last request.")
    llm_wait_max_s: float = Field(30, ge=0, le=86400, description="Seconds requests for an LLM whose GPU holds "
                                  "script work wait for that work to end before the planner drains it and "
                                  "gives the GPU back; 0: at once.")
    switch_hold_s: float = Field(30, ge=0, le=86400, description="Seconds a GPU given back to its LLMs stays "
                                 "theirs before a script service may scale out onto it again (a backlog takes "
                                 "such a GPU only once every placement it could use serves, idle LLMs first): "
                                 "steady traffic on both sides does not switch a GPU back and forth. 0: no hold.")


class EnginesConfig(Strict):
    llama_server: str = Field("llama-server", description="llama-server binary: a name looked up on PATH "
                              "or a path (runtime/build-llama-server.sh builds it).")
    python: str = Field("", description="Python that runs llama_cpp.server; empty: the one running llamarig.")
    threads: int = Field(0, ge=0, le=1024, description="CPU threads per server (-t); 0: the engine's default.")


class PathsConfig(Strict):
    root: str = Field(".", description="Folder that relative paths start from, itself relative to the rig file's folder.")
    run_dir: str = Field("run", description="Sockets, logs, verdicts and caches of a running bundle.")
    manifest: str | None = Field(None, description="sha256sum-format file ('HEX  PATH' lines); a model listed "
                                 "there must match its hash. null: no hash check.")


class Rig(Strict):
    gpus: GpusConfig = Field(default_factory=GpusConfig, description="Where the GPU inventory comes from.")
    models: dict[Annotated[str, Field(pattern=NAME_PATTERN)], ModelConfig] = Field(
        min_length=1, description="The llama.cpp models by name (1 to 40 of a-z, 0-9, '-'; starts with a "
        "letter or digit); at least one. The name is what clients send as `model`.")
    whisper: WhisperConfig | None = Field(None, description="The transcription service; null: none.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="The compute API.")
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig, description="Time limits of verifying, "
                                     "starting, stopping and draining.")
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig, description="Health checks, restarts, "
                                       "VRAM planning and the queue of requests for a loading model.")
    engines: EnginesConfig = Field(default_factory=EnginesConfig, description="How the servers are run.")
    paths: PathsConfig = Field(default_factory=PathsConfig, description="Where files are.")
    thermal: ThermalConfig = Field(default_factory=ThermalConfig, description="When a GPU is too hot for more work.")
    work: WorkConfig | None = Field(None, description="The work layer: Temporal and the GPU and CPU workers that "
                                    "run plans (llamarig submit); null: none (no Temporal, no workers).")
    source: str = Field("", exclude=True, description="Path of the file this rig was loaded from.")
    source_sha256: str = Field("", exclude=True, description="sha256 of that file's bytes as loaded; empty "
                               "for a rig not loaded from a file. Launch plans carry it (backend/gate.py).")

    @property
    def root(self) -> Path:
        return (Path(self.source).resolve().parent / self.paths.root).resolve()

    def resolve(self, path: str) -> Path:
        """Absolute path of a rig path (relative ones start at paths.root)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def run_dir(self) -> Path:
        return self.resolve(self.paths.run_dir)

    def model(self, name: str) -> ModelConfig:
        return self.models[name]


def claimed_ports(rig: Rig) -> list[tuple[int, str]]:
    """Every TCP port the rig's programs listen on, with the field that names it (a placement's
    as its model's or Whisper's port + its position)."""
    claims = [(rig.api.port, "api.port")]
    for name, m in rig.models.items():
        claims += [(m.port_on(gpu), _placed(f"models.{name}.port", m.placements, gpu))
                   for gpu in m.placements or [None]]
        if m.swap_port is not None:
            claims.append((m.swap_port, f"models.{name}.swap_port"))
    if rig.whisper:
        claims += [(rig.whisper.port_on(gpu), _placed("whisper.port", rig.whisper.gpus, gpu))
                   for gpu in rig.whisper.placements]
    return claims + [(port, where) for port, where in (rig.work.ports().items() if rig.work else ())]


def _placed(field: str, placements: list[int] | None, gpu: int | None) -> str:
    at = placements.index(gpu) if placements and gpu in placements else 0
    return f"{field} (+{at}, the placement on GPU {gpu})" if at else field


def _cross_check(rig: Rig) -> list[str]:
    """Faults that span fields: ports, GPU references."""
    problems = []
    known_gpus = {g.index for g in rig.gpus.simulated}
    ports: dict[int, str] = {}
    for port, where in claimed_ports(rig):
        _claim_port(ports, port, where, problems)
    for name, m in rig.models.items():
        for gpu in m.placements or []:
            if known_gpus and gpu not in known_gpus:
                problems.append(f"models.{name}.placements: GPU {gpu} not in gpus.simulated {sorted(known_gpus)}")
        if m.embeddings and m.engine == Engine.llama_cpp_python:
            problems.append(f"models.{name}.embeddings: llama-cpp-python's server cannot be told to pool "
                            "(it would answer per-token vectors); use engine llama-server")
        missing = [g for g in m.gpus if known_gpus and g not in known_gpus]
        if missing:
            problems.append(f"models.{name}.gpus: GPU {missing} not in gpus.simulated {sorted(known_gpus)}")
    if rig.whisper:
        field = "whisper.gpu" if rig.whisper.gpus is None else "whisper.gpus"
        for gpu in rig.whisper.placements:
            if known_gpus and gpu not in known_gpus:
                problems.append(f"{field}: GPU {gpu} not in gpus.simulated {sorted(known_gpus)}")
    if rig.gpus.source != GpuSource.nvml and not known_gpus:
        problems.append("gpus.simulated: empty, but source is not 'nvml' so it may be needed")
    return problems


def _claim_port(ports: dict[int, str], port: int, where: str, problems: list[str]) -> None:
    if port in ports:
        problems.append(f"{where}: port {port} already used by {ports[port]}")
    ports[port] = where


def _format_error(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top)"
    msg = re.sub(r"^(Value error|Assertion failed), ", "", err["msg"])
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{loc}: {msg}"


def parse_rig(data: object, source: str, source_sha256: str = "") -> Rig:
    """Validate already-parsed YAML; raise RigError naming every bad field."""
    if not isinstance(data, dict):
        raise RigError(source, ["(top): the rig file must be a mapping"])
    try:
        rig = Rig.model_validate({**data, "source": source, "source_sha256": source_sha256})
    except ValidationError as e:
        raise RigError(source, [_format_error(err) for err in e.errors()]) from None
    problems = _cross_check(rig)
    if problems:
        raise RigError(source, problems)
    return rig


def load_rig(path: str | Path) -> Rig:
    """Load and validate a rig file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = yaml.safe_load(raw.decode())
    except OSError as e:
        raise RigError(str(path), [f"(file): cannot read: {e.strerror}"]) from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RigError(str(path), [f"(yaml): {e}"]) from None
    return parse_rig(data, str(path), hashlib.sha256(raw).hexdigest())


def field_docs(model: type[BaseModel] = Rig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(path, default, description) of every field a rig file may set, depth first; a field
    holding a mapping or list of models is shown with `<name>` or `[]` in its path."""
    rows = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue  # set by the loader, not by the file
        path = f"{prefix}{name}"
        default = "required" if field.is_required() else (
            "(empty)" if field.default_factory else repr(getattr(field.default, "value", field.default)))
        rows.append((path, default, field.description or ""))
        inner = _inner_model(field.annotation)
        if inner is not None:
            rows += field_docs(inner[0], f"{path}{inner[1]}.")
    return rows


def _inner_model(annotation) -> tuple[type[BaseModel], str] | None:
    """The model a field holds, alone, in a list ([]) or as mapping values (.<name>)."""
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    if origin is dict and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
        return args[-1], ".<name>"
    if origin is list and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    if len(args) == 1:  # Optional[Model]
        return _inner_model(args[0])
    return None
