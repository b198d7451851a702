"""A process gives back to the system the heap a burst of work freed (shared.memory)."""

from __future__ import annotations

import os
import sys

import pytest

from shared import memory


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._TRIM is None, reason="glibc only")
def test_after_a_burst_the_freed_heap_goes_back_once_and_not_again_until_more_work() -> None:
    heap = memory.AfterBursts(min_interval=3600)
    heap.idle()  # nothing happened yet: nothing to give back
    # A burst: 120 MB of blocks the C allocator serves from its heap (over CPython's 512-byte
    # limit, under glibc's mmap threshold), then one block after them that stays, so the freed
    # space is not at the heap's top and glibc does not give it back on its own.
    burst = [bytes(2000) + i.to_bytes(4, "little") for i in range(60_000)]
    keeper = bytes(2000) + b"keep"
    heap.worked()
    del burst
    before = rss_mb()
    heap.idle()
    given_back = before - rss_mb()
    assert given_back > 60, f"only {given_back:.1f} MB given back"
    # Rate-limited, and only after more work.
    heap.worked()
    again = rss_mb()
    heap.idle()
    assert abs(rss_mb() - again) < 5
    assert keeper.endswith(b"keep")
