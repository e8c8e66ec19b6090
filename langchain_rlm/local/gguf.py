"""Read the header of a GGUF file (llama.cpp's model format) to check what a file is.

Only what verification needs: the magic, the format version, the tensor count and the scalar
metadata entries up to the keys asked for (``general.architecture``, ``general.name`` come first
in files written by llama.cpp's converters). Arrays (the tokenizer's vocabulary) are skipped, not
read. Every length is bounded, so a corrupt or hostile file gives :class:`GGUFError`, never a huge
allocation. Format reference: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = ["GGUF_MAGIC", "GGUFError", "GGUFHeader", "read_gguf_header"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = frozenset({2, 3})
MAX_METADATA_ENTRIES = 1 << 16
MAX_STRING_BYTES = 1 << 20
"""Longest metadata string read (a chat template is a few KB)."""
MAX_ARRAY_ITEMS = 1 << 24

_STRING = 8
_ARRAY = 9
_SCALAR_FORMATS = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}

MetadataValue = int | float | bool | str


class GGUFError(ValueError):
    """The bytes are not a (supported, well-formed) GGUF header."""


@dataclass(frozen=True)
class GGUFHeader:
    """The start of a GGUF file: version, tensor count and the scalar metadata read."""

    version: int
    tensor_count: int
    metadata_count: int
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


class _Reader:
    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle

    def exact(self, size: int) -> bytes:
        data = self.handle.read(size)
        if len(data) != size:
            raise GGUFError("the GGUF header is truncated")
        return data

    def unpack(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack(fmt, self.exact(struct.calcsize(fmt)))[0]
        return value

    def count(self, limit: int, what: str) -> int:
        value = int(self.unpack("<Q"))
        if value > limit:
            raise GGUFError(f"the GGUF header claims {value:,} {what} (limit {limit:,})")
        return value

    def string(self) -> str:
        return self.exact(self.count(MAX_STRING_BYTES, "string bytes")).decode("utf-8", "replace")

    def value(self, kind: int) -> MetadataValue | None:
        """A scalar or string value; arrays are skipped and give None."""
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            self.skip_array()
            return None
        fmt = _SCALAR_FORMATS.get(kind)
        if fmt is None:
            raise GGUFError(f"unknown GGUF metadata type {kind}")
        return self.unpack(fmt)

    def skip_array(self) -> None:
        kind = int(self.unpack("<I"))
        items = self.count(MAX_ARRAY_ITEMS, "array items")
        fmt = _SCALAR_FORMATS.get(kind)
        if fmt is not None:
            self.handle.seek(items * struct.calcsize(fmt), 1)
            return
        for _ in range(items):
            self.value(kind)


def read_gguf_header(
    source: Path | str | IO[bytes], *, keys: Collection[str] | None = None
) -> GGUFHeader:
    """Read the header of a GGUF file (a path or a binary handle positioned at its start).

    Args:
        source: the file.
        keys: stop reading metadata once these keys are found; default: read every entry
            (array values are skipped and not returned).

    Raises:
        GGUFError: wrong magic, unsupported version, or a truncated or malformed header.
    """
    if isinstance(source, Path | str):
        with Path(source).open("rb") as handle:
            return read_gguf_header(handle, keys=keys)
    reader = _Reader(source)
    magic = source.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise GGUFError(f"not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}")
    version = int(reader.unpack("<I"))
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(
            f"unsupported GGUF version {version} (supported: {sorted(SUPPORTED_VERSIONS)})"
        )
    tensor_count = int(reader.unpack("<Q"))
    metadata_count = reader.count(MAX_METADATA_ENTRIES, "metadata entries")
    wanted = set(keys) if keys is not None else None
    metadata: dict[str, MetadataValue] = {}
    for _ in range(metadata_count):
        if wanted is not None and wanted <= metadata.keys():
            break
        key = reader.string()
        value = reader.value(int(reader.unpack("<I")))
        if value is not None:
            metadata[key] = value
    return GGUFHeader(version, tensor_count, metadata_count, metadata)
