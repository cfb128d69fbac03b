"""The `Log` seam: what the prototype store needs of durable storage, and the choice of backend by `--db`.

The store keeps its state in memory and makes it durable through a Log: one group commit per batch
(`append`), checkpoints of the changed table rows (`checkpoint`), and the loading of both at start-up.
`SqliteLog` (a file, the embedded default) and `PostgresLog` (a `postgresql://` libpq URL) implement it.
A replicated backend (`replicated` True: PostgreSQL) has every batch open with `batch(version)`, which locks
the version counter row and returns what other replicas committed meanwhile; the store applies that, then
stages and appends inside the same transaction, so exactly-once and commit-ordered versions are decided on
the database's state. `read_after` is the followers' catch-up read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from fedrecon.server.durable import Operation, SqliteLog, TableRow

URL_SCHEMES = ("postgresql://", "postgres://")

ClientRow = tuple[str, int, int, int, str]  # client_id, last_seq, last_version, last_classes, last_digest
AuditRow = tuple[int, str, str, str, float]  # version, kind, client_id, actor, at


@runtime_checkable
class Log(Protocol):
    """Durable storage of one store: an operation log group-committed before any acknowledgement, plus
    checkpointed tables; a restart loads the tables and replays the log after `meta("checkpoint_version")`."""

    replicated: bool  # other servers may append to the same storage (the store then follows the log)

    def meta(self, key: str) -> str | None:
        """A metadata value (`store_id`, `checkpoint_version`, `schema`), or None."""

    def batch(self, version: int) -> AbstractContextManager[list[Operation]]:
        """A writer's turn, yielding the operations others committed after `version`; an `append` inside it
        commits when it ends (raises, writing nothing, if it cannot)."""

    def read_after(self, version: int) -> list[Operation]:
        """Operations committed after `version` (by other replicas), in version order."""

    def snapshot(self) -> AbstractContextManager[None]:
        """Around a load: everything read inside it is as of one moment."""

    def append(self, operations: Iterable[Operation], new_spaces: dict[str, int]) -> None:
        """Durably append operations (versions consecutive, after every earlier one) and new spaces, in one
        transaction; raises (and writes nothing) if it cannot."""

    def checkpoint(self, version: int, classes: list[TableRow], contributions: list[TableRow],
                   clients: list[ClientRow]) -> None:
        """Write changed table rows and drop the log up to `version`, atomically."""

    def load_spaces(self) -> dict[str, int]:
        """space -> dim."""

    def load_rows(self, table: str, damaged: list[TableRow] | None = None) -> Iterator[TableRow]:
        """Checkpointed rows of `classes` or `contributions`; a row found damaged is refused (DatabaseDamaged),
        or with `damaged` given set aside there (`--repair`)."""

    def load_clients(self) -> list[ClientRow]:
        """Checkpointed client records."""

    def load_log(self, after: int) -> Iterator[Operation]:
        """Logged operations after a version, in version order."""

    def read_audit(self) -> list[AuditRow]:
        """The audit trail (administrative operations), over a connection of its own: any thread may call it."""

    def check_high_water(self, version: int, repair: bool = False) -> bool:
        """After loading up to `version`: refuse (DatabaseDamaged) storage that lost operations this server
        acknowledged, or with `repair` log it and go on; True when the history is known to be continuous."""

    def epochs(self, version: int, fork: bool) -> list[tuple[int, str]]:
        """The store's epochs (start version, id), a new one starting at `version` when `fork` or there is none."""

    def close(self) -> None:
        """Close the storage (SQLite: and release its one-writer lock)."""


def is_url(target: str | Path) -> bool:
    """Whether a `--db` value names a PostgreSQL database (a libpq URL) rather than an SQLite file."""
    return isinstance(target, str) and target.lower().startswith(URL_SCHEMES)


def redact(url: str) -> str:
    """A libpq URL without its password, for logs and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
    except ValueError:
        return url.split("://", 1)[0] + "://(unparsable URL)"


def location(target: str | Path) -> str | Path:
    """What a store reports as its database: the SQLite path, or the URL without its password."""
    return redact(target) if is_url(target) else Path(target)


def open_log(target: str | Path, synchronous: str = "FULL") -> Log:
    """The Log of a `--db` value: `PostgresLog` for a `postgresql://` (or `postgres://`) URL, else `SqliteLog`.

    `synchronous` FULL/EXTRA/NORMAL commit durably; OFF may lose the last commits on a crash (SQLite: a power
    loss; PostgreSQL: `synchronous_commit = off`, a server crash)."""
    if is_url(target):
        from fedrecon.server.pglog import PostgresLog  # psycopg is only imported where PostgreSQL is used

        return PostgresLog(str(target), synchronous)
    return SqliteLog(target, synchronous)
