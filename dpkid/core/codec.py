"""Canonical msgpack encoding (msgspec) and the one decode error type.

Every object on the wire and in state is a msgspec Struct with
``array_like=True``: fields are a msgpack array in declaration order, so there
are no maps whose key order could vary. Integers use msgpack's shortest form,
floats are never declared, and bytes are msgpack ``bin``. Decoding checks the
declared types and bounds and then re-encodes: input that is not byte-for-byte
the canonical encoding is rejected, so one object has exactly one encoding and
one hash.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

# Upper bound on any single encoded object that arrives from outside.
MAX_OBJECT_BYTES = 1 << 20


class DecodeError(ValueError):
    """The only error raised when decoding untrusted bytes."""


_encoder = msgspec.msgpack.Encoder(order="sorted")
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def _decoder_for(typ: Any) -> msgspec.msgpack.Decoder[Any]:
    dec = _decoders.get(typ)
    if dec is None:
        dec = msgspec.msgpack.Decoder(typ)
        _decoders[typ] = dec
    return dec


def decode(data: bytes, typ: type[T], max_bytes: int = MAX_OBJECT_BYTES) -> T:
    """Decode canonical bytes into ``typ`` or raise :class:`DecodeError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > max_bytes:
        raise DecodeError(f"object is {len(raw)} bytes, limit is {max_bytes}")
    try:
        obj: T = _decoder_for(typ).decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(str(exc)) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # defensive
        raise DecodeError(f"malformed: {exc}") from None
    if _encoder.encode(obj) != raw:
        raise DecodeError("non-canonical encoding")
    return obj
