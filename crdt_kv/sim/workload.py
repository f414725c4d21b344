"""Client workload: puts, deletes, batches and reads over a Zipf-popular key space.

Popularity is skewed (Zipf with exponent ``zipf_s``), so a few hot keys take most writes
and concurrent writes race on the same keys, which is where merge bugs live. Values are
small CBOR-encodable objects that name the writer and the operation number, so every
acknowledged write is distinguishable, except in ``ties`` where a tiny value domain also
makes equal values from different peers common.

In ``siblings`` mode (``Workload(siblings=True)``) a share of the operations, drawn
before the usual mix so that the mix itself is untouched, read every sibling of a key
(``get_all``) and most of them resolve what they read with ``merge``: all of it, a subset
of it, or all or a subset of it some time after the read, so that siblings arriving in
between must survive the merge.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["SIBLING_OPS", "Op", "Workload", "WorkloadMix", "key_names"]

SIBLING_OPS = 0.3
"""Share of the operations that read siblings (and mostly merge them) in ``siblings`` mode."""
STALE_MS = (20.0, 1000.0)
"""How long a stale merge waits after its read (virtual ms, uniform)."""


def key_names(keys: int) -> list[str]:
    """The key space's names, hottest first: ``k0 .. k{keys-1}``, zero-padded to sort."""
    width = len(str(keys - 1))
    return [f"k{i:0{width}d}" for i in range(keys)]


@dataclass(frozen=True, slots=True)
class WorkloadMix:
    """Relative weights of the operation kinds (normalised; need not sum to 1)."""

    put: float = 0.70
    delete: float = 0.12
    batch: float = 0.08
    read: float = 0.10
    batch_max: int = 6

    def __post_init__(self) -> None:
        weights = (self.put, self.delete, self.batch, self.read)
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"workload weights must be >= 0 and not all 0, got {weights}")
        if self.put + self.delete + self.batch <= 0:
            raise ValueError("a workload needs some writes (put, delete or batch)")
        if self.batch_max < 1:
            raise ValueError("batch_max must be >= 1")


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation.

    ``kind`` is ``"put"``, ``"delete"``, ``"batch"``, ``"read"`` (``get``), or, in
    ``siblings`` mode, ``"read_all"`` (``get_all``) or ``"merge"``. ``writes`` holds
    ``(key, value, deleted)`` triples (distinct keys; one for put/delete/merge, several
    for a batch); ``key`` is the key of a read or merge. A merge passes the siblings it
    read: all of them when ``pick`` is -1, else those whose position is a set bit of
    ``pick``; with ``delay_ms`` > 0 it writes that long after its read.
    """

    kind: str
    writes: tuple[tuple[str, Any, bool], ...] = ()
    key: str = ""
    pick: int = -1
    delay_ms: float = 0.0


class Workload:
    """Draws operations from its own random generator.

    ``keys`` is the key-space size, ``zipf_s`` the skew (0 = uniform; about 1 is typical
    web traffic), ``value_domain`` limits values to that many distinct ones (``None``:
    every value unique), ``siblings`` adds the sibling reads and merges (module doc).
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        keys: int,
        zipf_s: float = 1.0,
        mix: WorkloadMix | None = None,
        value_domain: int | None = None,
        siblings: bool = False,
    ) -> None:
        if keys < 1:
            raise ValueError(f"the key space needs at least 1 key, got {keys}")
        self.rng = rng
        self.mix = mix or WorkloadMix()
        self.value_domain = value_domain
        self.keys = key_names(keys)
        weights = [1.0 / (r**zipf_s) for r in range(1, keys + 1)]
        self._cum = list(itertools.accumulate(weights))
        m = self.mix
        self._kinds = ("put", "delete", "batch", "read")
        self._kcum = list(itertools.accumulate((m.put, m.delete, m.batch, m.read)))
        self._counter = 0
        self.siblings = siblings

    def key(self) -> str:
        """A key drawn by Zipf popularity."""
        cum = self._cum
        return self.keys[bisect.bisect_right(cum, self.rng.random() * cum[-1])]

    def value(self, writer: int) -> Any:
        """A fresh value written by node ``writer``."""
        self._counter += 1
        if self.value_domain is not None:
            return self.rng.randrange(self.value_domain)
        n = self._counter
        shape = n % 4
        if shape == 0:
            return n
        if shape == 1:
            return f"v{writer}-{n}"
        if shape == 2:
            return [writer, n]
        return {"w": writer, "n": n}

    def next(self, writer: int) -> Op:
        """The next operation, for node ``writer``."""
        rng = self.rng
        if self.siblings and rng.random() < SIBLING_OPS:
            return self._sibling_op(writer)
        kcum = self._kcum
        kind = self._kinds[bisect.bisect_right(kcum, rng.random() * kcum[-1])]
        if kind == "read":
            return Op("read", key=self.key())
        if kind == "batch":
            n = rng.randint(1, self.mix.batch_max)
            chosen: dict[str, None] = {}
            for _ in range(n * 3):
                chosen[self.key()] = None
                if len(chosen) >= n:
                    break
            writes = tuple(
                (k, None, True) if rng.random() < 0.2 else (k, self.value(writer), False)
                for k in chosen
            )
            return Op("batch", writes)
        k = self.key()
        if kind == "delete":
            return Op("delete", ((k, None, True),))
        return Op("put", ((k, self.value(writer), False),))

    def _sibling_op(self, writer: int) -> Op:
        """A ``get_all`` (30%) or a merge of what it reads: all of it (35%), a random
        subset (20%), or either some time after the read (15%)."""
        rng = self.rng
        k = self.key()
        r = rng.random()
        if r < 0.30:
            return Op("read_all", key=k)
        stale = r >= 0.85
        subset = rng.random() < 0.5 if stale else r >= 0.65
        pick = rng.getrandbits(16) if subset else -1
        delay = rng.uniform(*STALE_MS) if stale else 0.0
        return Op("merge", ((k, self.value(writer), False),), key=k, pick=pick, delay_ms=delay)
