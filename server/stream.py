"""The window of one PushStream call: pushes read but not yet answered, bounded in count and in bytes.

A reader thread puts each push as it arrives and the call's handler takes them in order. Neither side
ever blocks for good: a put waits only while the call is alive and the window full, a take waits at
most `timeout`, and the end of the reader (the client closed its side, cancelled, or a refusal) is
always delivered (`close`), so a handler never outlives its call.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

EMPTY = object()  # `take`: nothing arrived within the timeout
END = object()  # `take`: the reader finished (no more pushes will come)


class StreamWindow:
    """At most `max_items` pushes and `max_bytes` bytes (besides one push of any size) read and unanswered."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max(1, max_items)
        self.max_bytes = max(1, max_bytes)
        self._items: deque[tuple[object, int]] = deque()
        self._bytes = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: object, nbytes: int, alive: Callable[[], bool]) -> bool:
        """Add an item once there is room; False (not added) if `alive()` turns false while waiting."""
        with self._cond:
            while self._items and (len(self._items) >= self.max_items or self._bytes + nbytes > self.max_bytes):
                if not alive():
                    return False
                self._cond.wait(0.5)
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._cond.notify_all()
            return True

    def close(self, final: object | None = None) -> None:
        """The reader is done: `final` (a refusal, or None) is taken after the items before it, then END."""
        with self._cond:
            if final is not None:
                self._items.append((final, 0))
            self._closed = True
            self._cond.notify_all()

    def take(self, timeout: float) -> object:
        """The next item, END once the reader is done and every item was taken, or EMPTY after `timeout`."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                item, nbytes = self._items.popleft()
                self._bytes -= nbytes
                self._cond.notify_all()
                return item
            return END if self._closed else EMPTY

    def peek_ready(self, ready: Callable[[object], bool]) -> object:
        """The next item if `ready(item)`, removed; else EMPTY (left in place) or END."""
        with self._cond:
            if not self._items:
                return END if self._closed else EMPTY
            if not ready(self._items[0][0]):
                return EMPTY
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._cond.notify_all()
            return item
