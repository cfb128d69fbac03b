"""Paged pulls: which rows of a prototype table the next page holds, under a byte budget, and the token to go on.

Rows are sent in order of (version at which the class last changed, row). The token names the key of
the last row sent; the next page holds the rows whose key is greater. A class that changes while a
client pages gets a version above every key sent so far, so it comes again, with its new value, in a
later page; when a page finds nothing after its rows, every class the pull covers has been sent at its
value as of that page's version. The server keeps no state per pull: the token carries it all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrecon.proto.prototypes import PrototypeTable

ROW_OVERHEAD = 16  # bytes per class on the wire besides id and vector: tags, lengths, the count varint
REPLY_OVERHEAD = 1024  # space name, version, token, message framing
LAST_ROW = 2**62  # "every row of this version": the key of a first page's cursor


class BadPageToken(ValueError):
    """A page token that this server did not write (or that belongs to another space or store)."""


@dataclass(frozen=True)
class Cursor:
    """Where a paged pull stands: rows with key (version, row) <= (after_version, after_row) were sent.

    `full` marks a pull of every live class (since = 0): it skips removed classes (count 0) unless they
    changed after `started`, the store version of its first page (a class removed while paging).
    """

    after_version: int
    after_row: int
    full: bool
    started: int

    @classmethod
    def first(cls, since: int, version: int) -> Cursor:
        """The cursor of a pull's first page."""
        return cls(since, LAST_ROW, since == 0, version)

    def token(self) -> str:
        """The opaque page token of this cursor."""
        return f"p1.{self.after_version}.{self.after_row}.{int(self.full)}.{self.started}"

    @classmethod
    def parse(cls, token: str, since: int, version: int) -> Cursor:
        """A cursor from a token; BadPageToken if malformed, for another `since`, or from a later store."""
        parts = token.split(".")
        try:
            if len(parts) != 5 or parts[0] != "p1":
                raise ValueError(token)
            after_version, after_row, full, started = (int(p) for p in parts[1:])
        except ValueError:
            raise BadPageToken(f"page_token {token[:80]!r} is not one this server wrote; start again without "
                               "a page_token") from None
        if full not in (0, 1) or (full == 1) != (since == 0) or after_version < since or \
                max(after_version, started) > version or after_row < 0:
            raise BadPageToken(f"page_token {token[:80]!r} does not continue a pull with since={since} on this "
                               f"store (version {version}); start again without a page_token")
        return cls(after_version, after_row, bool(full), started)


def page_rows(table: PrototypeTable, cursor: Cursor, max_bytes: int, itemsize: int) -> tuple[np.ndarray, str]:
    """Rows of the next page (in key order) and the token for the page after it ("" when this is the last)."""
    versions, n = table.versions, len(table)
    rows = np.arange(n)
    after = (versions > cursor.after_version) | ((versions == cursor.after_version) & (rows > cursor.after_row))
    if cursor.full:
        after &= (table.counts > 0) | (versions > cursor.started)
    candidates = np.nonzero(after)[0]
    if not len(candidates):
        return candidates, ""
    candidates = candidates[np.argsort(versions[candidates], kind="stable")]  # rows ascend: (version, row) order
    per_row = (table.dim or 0) * itemsize + ROW_OVERHEAD
    budget = max(0, max_bytes - REPLY_OVERHEAD)
    head = candidates[: budget // per_row + 1]  # the id bytes only shrink what fits
    sizes = table.id_bytes[head] + per_row
    take = max(1, int(np.searchsorted(np.cumsum(sizes), budget, side="right")))  # at least one row per page
    page = candidates[:take]
    if take >= len(candidates):
        return page, ""
    last = int(page[-1])
    return page, Cursor(int(versions[last]), last, cursor.full, cursor.started).token()
