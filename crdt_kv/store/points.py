"""The point read of :class:`~crdt_kv.store.Store`: ``get``, its hottest read (issue 13).

A base class of the store (so the store module stays small). ``get`` is kept flat, with
no call per read but the backend's and cbor2's: the utf-8 key encoding, the slice of a
format-1 record (:func:`~crdt_kv.layout.live_value`) and the first fast path of
:func:`~crdt_kv.codec.decode_cbor` are inlined, and each falls back to the function it
inlines, so results and errors are the functions' own.

With the compiled speedups built, an ``lww`` store with utf-8 keys and ``cbor`` values
replaces ``get`` on the instance by its compiled twin (:func:`crdt_kv.accel.bind_get`):
a plain str key is read in one C call, with no Python frame; anything else is handed to
the method below.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

from cbor2 import loads

from crdt_kv.accel import COMPILED, bind_get
from crdt_kv.backends.base import Backend
from crdt_kv.codec import CBOR_BREAK, CBOR_CLOSE_LIST, CBOR_OPEN_LIST, SHORT_KEY_CHARS, Decoder
from crdt_kv.errors import CorruptionError, EncodingError
from crdt_kv.layout import (
    DATA,
    FLAG_DELETED,
    FORMAT_VERSION,
    MIN_RECORD,
    RECORD_HEAD,
    SEQ_SIZE,
    live_value,
)
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

    def _enc_key(self, key: Any) -> bytes:
        raise NotImplementedError

    def _bind_get(self, lww: bool) -> None:
        """Give this instance the compiled ``get`` (:func:`crdt_kv.accel.bind_get` of the
        method below) when the speedups are built, the store is ``lww`` (the C reads
        format-1 records only), keys are utf-8 and values ``cbor``; never when a subclass
        overrides ``get``. Call once, with ``_w`` and ``_backend`` set."""
        if COMPILED is None or not (lww and self._str_keys and self._cbor_values):
            return
        if type(self).get is PointReads.get:
            fallback = MethodType(PointReads.get, self)
            self.get = bind_get(self._w, self._backend, fallback)  # type: ignore[method-assign]

    def get(self, key: Any, default: Any = None) -> Any:
        """The live value of ``key``, or ``default`` if absent or deleted."""
        if self._w.closed:
            self._w.check()
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
        if blob[0] != FORMAT_VERSION or len(blob) < MIN_RECORD:
            v = live_value(blob, key)
        elif blob[1] & FLAG_DELETED:
            v = None
        else:
            v = blob[RECORD_HEAD + blob[RECORD_HEAD - 1] : -SEQ_SIZE]
        if v is None:
            return default
        if self._cbor_values and CBOR_BREAK not in v:
            try:
                (value,) = loads(CBOR_OPEN_LIST + v + CBOR_CLOSE_LIST)
                return value
            except Exception:  # decode_cbor's other paths decide
                pass
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
