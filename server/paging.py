"""Paged pulls: which rows of a prototype table the next page holds, under a byte budget, and the token to go on.

Rows are sent in order of (version at which the class last changed, class id). The token names the key
of the last row sent; the next page holds the rows whose key is greater. The key depends on nothing but
the data (not on where a row sits in memory), so a token stays valid across a server restart and on any
server that holds the same data. A class that changes while a client pages gets a version above every
key sent so far, so it comes again, with its new value, in a later page; when a page finds nothing after
its rows, every class the pull covers has been sent at its value as of that page's version. The server
keeps no state per pull: the token carries it all.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np

from fedrecon.proto.prototypes import PrototypeTable

ROW_OVERHEAD = 16  # bytes per class on the wire besides id and vector: tags, lengths, the count varint
REPLY_OVERHEAD = 1024  # space name, version, token, message framing
TOKEN_KIND = "p2"


class BadPageToken(ValueError):
    """A page token that this server did not write (or that belongs to another space or store)."""


@dataclass(frozen=True)
class Cursor:
    """Where a paged pull stands: rows with key (version, class id) <= (after_version, after_id) were sent
    (`after_id` None: every row of `after_version`).

    `full` marks a pull of every live class (since = 0): it skips removed classes (count 0) unless they
    changed after `started`, the store version of its first page (a class removed while paging).
    """

    after_version: int
    after_id: str | None
    full: bool
    started: int

    @classmethod
    def first(cls, since: int, version: int) -> Cursor:
        """The cursor of a pull's first page."""
        return cls(since, None, since == 0, version)

    def token(self) -> str:
        """The opaque page token of this cursor."""
        assert self.after_id is not None
        name = base64.urlsafe_b64encode(self.after_id.encode()).decode()
        return f"{TOKEN_KIND}.{self.after_version}.{int(self.full)}.{self.started}.{name}"

    @classmethod
    def parse(cls, token: str, since: int, version: int) -> Cursor:
        """A cursor from a token; BadPageToken if malformed, for another `since`, or from a later store."""
        parts = token.split(".")
        try:
            if len(parts) != 5 or parts[0] != TOKEN_KIND:
                raise ValueError(token)
            after_version, full, started = (int(p) for p in parts[1:4])
            after_id = base64.urlsafe_b64decode(parts[4].encode()).decode()
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise BadPageToken(f"page_token {token[:80]!r} is not one this server wrote; start again without "
                               "a page_token") from None
        if full not in (0, 1) or (full == 1) != (since == 0) or after_version < since or \
                max(after_version, started) > version or not after_id:
            raise BadPageToken(f"page_token {token[:80]!r} does not continue a pull with since={since} on this "
                               f"store (version {version}); start again without a page_token")
        return cls(after_version, after_id, bool(full), started)


def _ids(table: PrototypeTable, rows: np.ndarray) -> np.ndarray:
    """The class ids of some rows as a numpy string array (compared and sorted in C; ids never hold NUL, which
    numpy would drop at the end of a string)."""
    ids = table.class_ids
    return np.array([ids[r] for r in rows.tolist()], dtype=str)


def _after(table: PrototypeTable, cursor: Cursor) -> np.ndarray:
    """Rows whose key is greater than the cursor's (and live, or changed while paging, for a full pull)."""
    versions = table.versions
    after = versions > cursor.after_version
    if cursor.after_id is not None:
        tied = np.nonzero(versions == cursor.after_version)[0]
        if len(tied):
            after[tied[_ids(table, tied) > cursor.after_id]] = True
    if cursor.full:
        after &= (table.counts > 0) | (versions > cursor.started)
    return np.nonzero(after)[0]


def _in_key_order(table: PrototypeTable, candidates: np.ndarray, limit: int) -> np.ndarray:
    """The first rows of `candidates` in key order: at least `limit` of them (all, if fewer), whole version groups."""
    versions = table.versions[candidates]
    by_version = np.argsort(versions, kind="stable")
    candidates, versions = candidates[by_version], versions[by_version]
    if limit < len(candidates):  # only the head is sent: order it, with every row tied with its last version
        candidates = candidates[: int(np.searchsorted(versions, versions[limit - 1], side="right"))]
        versions = versions[: len(candidates)]
    return candidates[np.lexsort((_ids(table, candidates), versions))]


def page_rows(table: PrototypeTable, cursor: Cursor, max_bytes: int, itemsize: int) -> tuple[np.ndarray, str]:
    """Rows of the next page (in key order) and the token for the page after it ("" when this is the last)."""
    candidates = _after(table, cursor)
    if not len(candidates):
        return candidates, ""
    per_row = (table.dim or 0) * itemsize + ROW_OVERHEAD
    budget = max(0, max_bytes - REPLY_OVERHEAD)
    head = _in_key_order(table, candidates, budget // per_row + 1)  # the id bytes only shrink what fits
    sizes = table.id_bytes[head] + per_row
    take = max(1, int(np.searchsorted(np.cumsum(sizes), budget, side="right")))  # at least one row per page
    page = head[:take]
    if take >= len(candidates):
        return page, ""
    last = int(page[-1])
    return page, Cursor(int(table.versions[last]), table.class_ids[last], cursor.full, cursor.started).token()
