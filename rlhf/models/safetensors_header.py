"""Whether a safetensors file is whole, from its header alone (standard library only, so that
the resume check of an earlier run's checkpoints loads no torch)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be whole (None when its header and size agree): the header
    says where every tensor's bytes end, so a truncated or overwritten file shows up without
    reading the tensors."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{path.name} is {size} bytes long, too short for a safetensors header"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return f"{path.name} is truncated ({size} bytes, its header alone claims {length})"
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"{path.name} has a corrupt header (not a safetensors file?)"
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"{path.name} is truncated ({size} bytes, its header describes {expected})"
    if size > expected:
        return f"{path.name} is corrupt ({size} bytes, its header describes {expected})"
    return None
