"""Read a GGUF file's header, metadata and tensor table without touching tensor data.

Every count and length read from the file is bounded before it is trusted, so a corrupt or
hostile file gives a `GgufError` with a code, never a huge allocation. Array values are kept
as their length only (a vocabulary is not needed to verify or size a model). Tensor sizes
come from the `gguf` package's quantisation table.
"""
from __future__ import annotations

import importlib.util
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from llamarig.shared.errors import LlamarigError


def _gguf_constants():
    """The `gguf` package's constants module on its own. Importing the package imports numpy
    and its readers and writers (0.1 s of CPU), which every launch gate and the compute API
    would pay at boot for one table; the module itself imports only enum and typing."""
    package = importlib.util.find_spec("gguf")  # finds it without importing it
    spec = importlib.util.spec_from_file_location(
        "llamarig._gguf_constants", Path(package.submodule_search_locations[0]) / "constants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CONSTANTS = _gguf_constants()
GGML_QUANT_SIZES, GGMLQuantizationType = _CONSTANTS.GGML_QUANT_SIZES, _CONSTANTS.GGMLQuantizationType

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_TENSORS = 1_000_000
MAX_KV = 100_000
MAX_STRING = 16 * 1024 * 1024
MAX_ARRAY = 64 * 1024 * 1024
MAX_DIMS = 4

# GGUF value types -> struct format of one scalar.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GgufError(LlamarigError):
    """The file is not a usable GGUF: code is gguf_bad_magic, gguf_bad_version,
    gguf_truncated or gguf_bad_header."""


@dataclass(frozen=True)
class ArrayValue:
    item_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int


@dataclass
class GgufHeader:
    version: int
    tensor_count: int
    kv_count: int
    metadata: dict[str, object] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: object = None) -> object:
        """Metadata value `<architecture>.<key>`, e.g. arch_value('block_count')."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def data_size(self) -> int:
        return max((t.offset + t.nbytes for t in self.tensors), default=0)


class _Reader:
    def __init__(self, f: BinaryIO):
        self.f = f
        self.pos = 0

    def take(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise GgufError("gguf_truncated", f"header ends early at byte {self.pos + len(b)}")
        self.pos += n
        return b

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self, limit: int, what: str) -> int:
        n = self.scalar("<Q")
        if n > limit:
            raise GgufError("gguf_bad_header", f"{what} is {n}, more than the limit {limit}")
        return n

    def string(self) -> str:
        raw = self.take(self.count(MAX_STRING, "a string length"))
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.scalar("<I")
            length = self.count(MAX_ARRAY, "an array length")
            self.skip_items(item_type, length)
            return ArrayValue(item_type, length)
        raise GgufError("gguf_bad_header", f"unknown value type {vtype} at byte {self.pos}")

    def skip_items(self, item_type: int, length: int) -> None:
        if item_type in _SCALARS:
            self.take(struct.calcsize(_SCALARS[item_type]) * length)
        elif item_type == _STRING:
            for _ in range(length):
                self.take(self.count(MAX_STRING, "a string length"))
        else:
            raise GgufError("gguf_bad_header", f"unsupported array item type {item_type}")


def _tensor_nbytes(name: str, shape: tuple[int, ...], ggml_type: int) -> int:
    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise GgufError("gguf_bad_header", f"tensor {name!r} has unknown type {ggml_type}") from None
    elements = 1
    for d in shape:
        elements *= d
    if shape and shape[0] % block:
        raise GgufError("gguf_bad_header", f"tensor {name!r} row {shape[0]} is not a multiple of {block}")
    return elements // block * type_size


def _read_tensor(r: _Reader) -> TensorInfo:
    name = r.string()
    n_dims = r.scalar("<I")
    if not 1 <= n_dims <= MAX_DIMS:
        raise GgufError("gguf_bad_header", f"tensor {name!r} has {n_dims} dimensions")
    shape = tuple(r.scalar("<Q") for _ in range(n_dims))
    if any(d <= 0 or d > 2**40 for d in shape):
        raise GgufError("gguf_bad_header", f"tensor {name!r} has shape {shape}")
    ggml_type = r.scalar("<I")
    offset = r.scalar("<Q")
    return TensorInfo(name, shape, ggml_type, offset, _tensor_nbytes(name, shape, ggml_type))


def read_header(path: str | Path) -> GgufHeader:
    """Parse header, metadata and tensor table; check the tensor data fits in the file."""
    path = Path(path)
    with path.open("rb") as f:
        r = _Reader(f)
        magic = r.take(4)
        if magic != MAGIC:
            raise GgufError("gguf_bad_magic", f"magic is {magic!r}, not {MAGIC!r}")
        version = r.scalar("<I")
        if version not in SUPPORTED_VERSIONS:
            raise GgufError("gguf_bad_version", f"version {version}, supported {SUPPORTED_VERSIONS}")
        header = GgufHeader(version, r.count(MAX_TENSORS, "tensor count"), r.count(MAX_KV, "metadata count"))
        for _ in range(header.kv_count):
            key = r.string()
            header.metadata[key] = r.value(r.scalar("<I"))
        header.tensors = [_read_tensor(r) for _ in range(header.tensor_count)]
        alignment = int(header.metadata.get("general.alignment", 32) or 32)
        header.data_offset = -(-r.pos // alignment) * alignment
    header.file_size = path.stat().st_size
    _check_complete(header)
    return header


def _check_complete(header: GgufHeader) -> None:
    if not header.architecture:
        raise GgufError("gguf_bad_header", "no general.architecture in the metadata")
    needed = header.data_offset + header.data_size
    if needed > header.file_size:
        raise GgufError("gguf_truncated", f"tensor data needs {needed} bytes, the file has {header.file_size}")
