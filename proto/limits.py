"""The limits of the wire contract: per-request limits a server announces (Info) and the bounds of a count."""

from __future__ import annotations

from dataclasses import dataclass

MAX_COUNT = 2**40  # per delta; keeps int64 totals and float64 sums exact for any realistic fleet
MAX_ABS_SUM = 1e30  # refuse deltas whose count * mean could overflow float64 sums over time
MAX_SPACE_EXAMPLES = 2**62  # total count of a space: every per-class, per-client and per-space sum fits int64/uint64


@dataclass(frozen=True)
class Limits:
    """Per-request limits. The store checks the push limits itself, so gRPC, Flower and in-process callers
    get the same rules; the server adds the transport ones (message size, watch streams)."""

    max_classes_per_push: int = 65_536
    max_message_bytes: int = 64 * 1024 * 1024
    max_class_id_bytes: int = 256
    max_dim: int = 16_384
    max_watch_streams: int = 8
    max_reply_bytes: int = 1024 * 1024  # page budget of pulls and watches: well under gRPC's default 4 MiB
    max_stream_window: int = 64  # unanswered pushes one PushStream call may have in flight
    max_stream_window_bytes: int = 16 * 1024 * 1024  # and their wire bytes (besides one push of any size)
    max_push_streams: int = 8  # PushStream calls at once (each holds a thread while open)
    stream_idle_seconds: float = 60.0  # a PushStream with no push for this long is closed
    max_queued_bytes: int = 256 * 1024 * 1024  # pushes waiting for the writer, all calls together
    max_space_classes: int = 2_000_000  # classes one space may hold (0: no quota); each costs ~16 * dim bytes
    max_client_classes: int = 1_000_000  # classes one client may contribute to in one space (0: no quota)
