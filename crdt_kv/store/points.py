"""The point read of :class:`~crdt_kv.store.Store`: ``get``, its hottest read (issue 13).

A base class of the store (so the store module stays small). With utf-8 keys, ``cbor``
values and the compiled speedups built, a ``get`` of a plain str key is one call,
:func:`crdt_kv.accel.point_value`: the key's encoding, the backend read and the decoding
in C. Otherwise ``get`` is kept flat: the utf-8 key encoding is inlined (falling back to
the store's encoder) and a record of a ``cbor`` store is decoded by
:func:`crdt_kv.accel.lww_value`. The references of both are in
:mod:`crdt_kv.layout_reads`, and the compiled twins call them for every case they leave,
so results and errors are the functions' own.
"""

from __future__ import annotations

from typing import Any

from crdt_kv.accel import lww_value, point_value
from crdt_kv.backends.base import Backend
from crdt_kv.codec import SHORT_KEY_CHARS, Decoder
from crdt_kv.errors import CorruptionError, EncodingError
from crdt_kv.layout import DATA, live_value
from crdt_kv.layout_reads import UNHANDLED
from crdt_kv.store.writes import Writer

__all__ = ["PointReads"]


class PointReads:
    """``get`` and ``[]`` for the store."""

    _w: Writer
    _backend: Backend
    _vdec: Decoder
    _str_keys: bool
    """The key encoding is ``utf-8``."""
    _cbor_values: bool
    """The value decoder is :func:`~crdt_kv.codec.decode_cbor`."""
    _one_call_get: bool
    """``get`` starts with :func:`~crdt_kv.accel.point_value` (utf-8 keys, ``cbor``
    values, the compiled twin: the pure one would only add a call)."""

    def _enc_key(self, key: Any) -> bytes:
        raise NotImplementedError

    def get(self, key: Any, default: Any = None) -> Any:
        """The live value of ``key``, or ``default`` if absent or deleted."""
        if self._w.closed:
            self._w.check()
        if self._one_call_get:
            v = point_value(self._backend.point_get, key, default)
            if v is not UNHANDLED:
                return v
        if type(key) is str and self._str_keys and len(key) <= SHORT_KEY_CHARS:
            try:
                k = key.encode()
            except UnicodeEncodeError:
                k = self._enc_key(key)
        else:
            k = self._enc_key(key)
        blob = self._backend.point_get(DATA + k)
        if blob is None:
            return default
        if self._cbor_values:
            return lww_value(blob, key, default)
        v = live_value(blob, key)
        if v is None:
            return default
        try:
            return self._vdec(v)
        except EncodingError as exc:
            raise CorruptionError(f"stored value of key {key!r} does not decode: {exc}") from exc

    def __getitem__(self, key: Any) -> Any:
        v = self.get(key, _MISSING)
        if v is _MISSING:
            raise KeyError(key)
        return v


_MISSING = object()
