"""The high-water mark of a database: the last version this server acknowledged, in a file beside it.

SQLite alone cannot tell a lost write-ahead log (cut, damaged or deleted `-wal` file) or a backup
restored over the database from a clean older state: both open fine and serve fewer pushes, reusing
their versions. So after each commit the writer records its version in `<db>-version` (one small
write, no fsync: it lands after the commit it follows, so it is never ahead of a durable database
by itself), and start-up refuses a database that ends below it.
"""

from __future__ import annotations

import os
from pathlib import Path

WIDTH = 64  # bytes of the record: "<store id> <version>", padded, rewritten in place


class HighWaterMark:
    """`<db>-version`: the store id and last committed version, rewritten after every commit."""

    def __init__(self, db: Path) -> None:
        self.path = Path(f"{db}-version")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def read(self) -> tuple[str, int] | None:
        """The store id and version recorded (None if nothing readable is)."""
        parts = os.pread(self._fd, WIDTH, 0).decode(errors="replace").split()
        if len(parts) != 2 or not parts[1].isdigit():
            return None
        return parts[0], int(parts[1])

    def write(self, store_id: str, version: int) -> None:
        """Record the last committed version (after the commit)."""
        os.pwrite(self._fd, f"{store_id} {version}".ljust(WIDTH).encode(), 0)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)
