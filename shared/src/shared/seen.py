"""The event ids one partition has applied, as :class:`shared.consumer.ProcessedEvents` keeps them in memory.

The ids of the window (20,000 per partition) were a dict of strings with their offsets: each id a
string and an int made while a fetch was decoded, among the fetch's short-lived objects. Kept for
minutes, they pinned the allocator's arenas, and the metrics process stayed ~50 MB larger than with
a window of 2,000 (docs/adr/0005, eighth pass). Here only the ids of the last few fetches are
objects; older ones are folded, by hash, into sorted arrays that hold no object per id. A hash is
not an id: a match at another offset is a copy only once the stored id at that offset is read and
compared (:meth:`PartitionIds.candidates` says where to look; the caller reads).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence

# Ids of a partition kept as objects before they are folded into an array: about once per this many.
SEAL_AT = 1_024
# One bit per hash value modulo this, set for every folded id: most fresh ids find their bit clear
# and are never looked up in the arrays (with 20,000 folded ids about 2% find it set).
FILTER_BITS = 1 << 20


class PartitionIds:
    """First offsets of event ids on one partition, inside the window ``offset >= keep_from``.

    Folded ids live in segments, one per fold, each its ids' hashes sorted with their offsets; a
    segment leaves once all its offsets are past the window. A fold sorts only its own ids.
    """

    def __init__(self, *, seal_at: int = SEAL_AT, id_hash: Callable[[str], int] = hash) -> None:
        self._hash = id_hash
        self._seal_at = seal_at
        self._segments: list[tuple[array[int], array[int], int]] = []  # keys, offsets, newest offset
        self._filter = bytearray(FILTER_BITS // 8)
        self._stale_bits = 0  # ids of segments let go whose bits are still set
        # Ids not folded yet, by id: every id taken since the last fold, stored or not.
        self._recent: dict[str, int] = {}
        self._stored_through = -1
        self._keep_from = 0

    def __len__(self) -> int:
        """Ids inside the window. Memory may hold up to ``seal_at`` more, out of the window since the
        last fold and left out by the next."""
        keep = self._keep_from
        folded = sum(o >= keep for _, offsets, _ in self._segments for o in offsets)
        return folded + sum(o >= keep for o in self._recent.values())

    def exact(self, event_id: str) -> int | None:
        """The first offset of ``event_id`` among the ids not folded yet."""
        offset = self._recent.get(event_id)
        return offset if offset is not None and offset >= self._keep_from else None

    def candidates(self, event_id: str) -> Sequence[int]:
        """Offsets of folded ids whose hash is ``event_id``'s: each may be this id or another."""
        key = self._hash(event_id)
        bit = key & (FILTER_BITS - 1)
        if not self._filter[bit >> 3] & (1 << (bit & 7)):  # nearly every fresh event: no more work
            return ()
        out = []
        for keys, offsets, _ in self._segments:
            at = bisect_left(keys, key)
            while at < len(keys) and keys[at] == key:
                if offsets[at] >= self._keep_from:
                    out.append(offsets[at])
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
        self._segments, self._recent = [], {}
        self._filter, self._stale_bits = bytearray(FILTER_BITS // 8), 0
        self._keep_from = keep_from
        self._stored_through = max(first.values(), default=-1)
        self._add_segment([(self._hash(i), o) for i, o in first.items()])

    def seal(self) -> None:
        """Fold the stored ids into a segment, and let go of segments past the window."""
        keep, through = self._keep_from, self._stored_through
        moving = [(self._hash(i), o) for i, o in self._recent.items() if keep <= o <= through]
        self._recent = {i: o for i, o in self._recent.items() if o > through}
        kept = [s for s in self._segments if s[2] >= keep]
        live = sum(len(s[0]) for s in kept)
        self._stale_bits += sum(len(s[0]) for s in self._segments) - live
        self._segments = kept
        if self._stale_bits > live:
            # Bits of ids let go only cost a needless look; past as many as are live, start again.
            self._filter, self._stale_bits = bytearray(FILTER_BITS // 8), 0
            for keys, _, _ in kept:
                self._mark(keys)
        self._add_segment(moving)

    def _add_segment(self, pairs: list[tuple[int, int]]) -> None:
        if not pairs:
            return
        pairs.sort()
        keys = array("q", [k for k, _ in pairs])
        offsets = array("q", [o for _, o in pairs])
        self._segments.append((keys, offsets, max(offsets)))
        self._mark(keys)

    def _mark(self, keys: array[int]) -> None:
        f, mask = self._filter, FILTER_BITS - 1
        for key in keys:
            bit = key & mask
            f[bit >> 3] |= 1 << (bit & 7)
