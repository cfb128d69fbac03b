"""A client's durable sequence state: the last acknowledged push number and the push not yet acknowledged.

Written atomically (temp file, fsync, rename) before a push is sent and after it is acknowledged,
so a client process that dies mid-push retries the same numbered push when it restarts instead of
sending it again as new (the server answers a retry with its first reply).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ClientState:
    """last_seq: last acknowledged push; pending: the serialized push sent but not yet acknowledged."""

    client_id: str
    last_seq: int = 0
    pending_seq: int = 0
    pending: bytes | None = None
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path | None, client_id: str) -> ClientState:
        """Read the state file (a fresh state when there is none or `path` is None)."""
        if path is None:
            return cls(client_id)
        path = Path(path)
        if not path.exists():
            return cls(client_id, path=path)
        try:
            data = json.loads(path.read_text())
            pending = base64.b64decode(data["pending"]) if data.get("pending") else None
            state = cls(data["client_id"], int(data["last_seq"]), int(data.get("pending_seq", 0)), pending, path)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"client state file {path} is corrupt ({error}); expected fedrecon client state JSON") \
                from error
        if state.client_id != client_id:
            raise ValueError(f"client state file {path} belongs to client {state.client_id!r}, not {client_id!r}")
        return state

    def save(self) -> None:
        """Atomically and durably write the state (no-op without a path)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"client_id": self.client_id, "last_seq": self.last_seq, "pending_seq": self.pending_seq,
                "pending": base64.b64encode(self.pending).decode() if self.pending else None}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def begin(self, request_bytes: bytes) -> int:
        """Record a new push as pending under the next number; returns that number."""
        if self.pending is not None:
            raise RuntimeError("a push is still pending; resume it first")
        self.pending_seq = self.last_seq + 1
        self.pending = request_bytes
        self.save()
        return self.pending_seq

    def acknowledge(self, seq: int) -> None:
        """The server acknowledged push `seq`: it is no longer pending."""
        self.last_seq = seq
        self.pending_seq = 0
        self.pending = None
        self.save()
