"""JSON views of wire and state objects for humans and scripts: structs become
objects with named fields, bytes become lowercase hex. Pure."""

from __future__ import annotations

from typing import Any

import msgspec


def to_json(obj: Any) -> Any:
    if isinstance(obj, msgspec.Struct):
        out: dict[str, Any] = {}
        tag = type(obj).__struct_config__.tag
        if isinstance(tag, str):
            out["type"] = tag
        for name in obj.__struct_fields__:
            out[name] = to_json(getattr(obj, name))
        return out
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if isinstance(obj, (list, tuple)):
        return [to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {str(to_json(k)): to_json(v) for k, v in obj.items()}
    return obj
