"""Where a client's durable state file lives: one SQLite file per client id inside a state directory."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """`$FEDRECON_STATE_DIR`, else `$XDG_STATE_HOME/fedrecon`, else `~/.local/state/fedrecon`."""
    if os.environ.get("FEDRECON_STATE_DIR"):
        return Path(os.environ["FEDRECON_STATE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "fedrecon"


def state_path(state_dir: str | Path | None, client_id: str) -> Path:
    """Where one client id's state lives inside a state directory."""
    if not client_id or "/" in client_id or client_id in (".", ".."):
        raise ValueError(f"client id {client_id!r} must be a non-empty name without '/'")
    return Path(state_dir or default_state_dir()).expanduser() / f"{client_id}.db"
