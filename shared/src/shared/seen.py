"""The event ids one partition has applied, as :class:`shared.consumer.ProcessedEvents` keeps them in memory.

The ids of the window (20,000 per partition) were a dict of strings with their offsets: each id a
string and an int made while a fetch was decoded, among the fetch's short-lived objects. Kept for
minutes, they pinned the allocator's arenas, and the metrics process stayed ~50 MB larger than with
a window of 2,000 (docs/adr/0005, eighth pass). Here only the ids of the last few fetches are
objects; older ones are folded, by hash, into two sorted arrays that hold no object per id. A hash
is not an id: a match at another offset is a copy only once the stored id at that offset is read
and compared (:meth:`candidates` says where to look; the caller reads).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable

# Ids of a partition kept as objects before they are folded into the arrays: a fold sorts the whole
# window (~10 ms for 20,000 ids), so it runs about once per this many new ids.
SEAL_AT = 4_096


class PartitionIds:
    """First offsets of event ids on one partition, inside the window ``offset >= keep_from``."""

    def __init__(self, *, seal_at: int = SEAL_AT, id_hash: Callable[[str], int] = hash) -> None:
        self._hash = id_hash
        self._seal_at = seal_at
        # Folded ids: their hashes, sorted, and the offset of each (same position).
        self._keys = array("q")
        self._offsets = array("q")
        # Ids not folded yet, by id: every id taken since the last fold, stored or not.
        self._recent: dict[str, int] = {}
        self._stored_through = -1
        self._keep_from = 0

    def __len__(self) -> int:
        """Ids inside the window. Memory may hold up to ``seal_at`` more, out of the window since the
        last fold and left out by the next."""
        keep = self._keep_from
        return sum(o >= keep for o in self._offsets) + sum(o >= keep for o in self._recent.values())

    def exact(self, event_id: str) -> int | None:
        """The first offset of ``event_id`` among the ids not folded yet."""
        offset = self._recent.get(event_id)
        return offset if offset is not None and offset >= self._keep_from else None

    def candidates(self, event_id: str) -> list[int]:
        """Offsets of folded ids whose hash is ``event_id``'s: each may be this id or another."""
        key = self._hash(event_id)
        at = bisect_left(self._keys, key)
        out = []
        while at < len(self._keys) and self._keys[at] == key:
            if self._offsets[at] >= self._keep_from:
                out.append(self._offsets[at])
            at += 1
        return out

    def add(self, event_id: str, offset: int) -> None:
        """``event_id`` was first seen at ``offset`` (the caller checked it is not known)."""
        self._recent[event_id] = offset

    def drop(self, event_id: str, offset: int) -> None:
        """Forget ``event_id`` if it was first seen at ``offset`` and is not folded yet."""
        if self._recent.get(event_id) == offset:
            del self._recent[event_id]

    def stored(self, through: int, keep_from: int) -> None:
        """Ids up to offset ``through`` are in the database, whose window starts at ``keep_from``."""
        self._stored_through = max(self._stored_through, through)
        self._keep_from = max(self._keep_from, keep_from)
        if len(self._recent) >= self._seal_at:
            self.seal()

    def load(self, pairs: list[tuple[str, int]], keep_from: int) -> None:
        """Start from what the database holds: ``(id, offset)`` pairs, oldest first."""
        first: dict[str, int] = {}
        for event_id, offset in pairs:
            first.setdefault(event_id, offset)
        self._fold([(self._hash(i), o) for i, o in first.items()])
        self._recent = {}
        self._keep_from = keep_from
        self._stored_through = max(first.values(), default=-1)

    def seal(self) -> None:
        """Fold the stored ids into the arrays and leave out those past the window."""
        moving = [(self._hash(i), o) for i, o in self._recent.items() if self._keep_from <= o <= self._stored_through]
        self._recent = {i: o for i, o in self._recent.items() if o > self._stored_through}
        kept = [(k, o) for k, o in zip(self._keys, self._offsets, strict=True) if o >= self._keep_from]
        self._fold(kept + moving)

    def _fold(self, pairs: list[tuple[int, int]]) -> None:
        pairs.sort()
        self._keys = array("q", [k for k, _ in pairs])
        self._offsets = array("q", [o for _, o in pairs])
