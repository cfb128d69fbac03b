"""A server address is `HOST:PORT` (IPv6 as `[::1]:PORT`, or `unix:PATH`), checked before any connection."""

from __future__ import annotations

import re

HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def check_address(text: str) -> str:
    """`text` if it is a usable gRPC target; ValueError in one line saying what is wrong and what is expected."""
    if text.startswith("unix:") and len(text) > 5:
        return text
    if "://" in text:
        scheme, rest = text.split("://", 1)
        example = rest.rstrip("/") or "HOST:PORT"
        raise ValueError(f"--server {text!r}: give HOST:PORT without {scheme}:// (e.g. {example})")
    match = HOST_PORT.match(text)
    if match is None:
        hint = f" (e.g. {text}:50051)" if re.match(r"^[A-Za-z0-9_.-]+$", text) else ""
        raise ValueError(f"--server {text!r}: expected HOST:PORT{hint}")
    if not 1 <= int(match.group(2)) <= 65535:
        raise ValueError(f"--server {text!r}: port must be 1-65535")
    return text
