"""Giving the heap that a burst of work freed back to the operating system.

CPython hands blocks over 512 bytes (record values, dict tables, decoded documents) to the C
allocator, and glibc keeps what a burst freed inside its heap: a process that drained a backlog
stays at its peak RSS long after the burst. ``malloc_trim(0)`` returns every whole free page of
every arena. Elsewhere than glibc it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_TRIM = _malloc_trim()


class AfterBursts:
    """Trims the heap once a burst of work has ended, at most once per ``min_interval`` seconds."""

    def __init__(self, min_interval: float = 10.0) -> None:
        self._min_interval = min_interval
        self._busy = False
        self._last = 0.0

    def worked(self) -> None:
        self._busy = True

    def idle(self) -> None:
        if not self._busy or _TRIM is None:
            return
        now = time.monotonic()
        if now - self._last < self._min_interval:
            return
        self._busy, self._last = False, now
        _TRIM(0)
