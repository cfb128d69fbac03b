"""Structured logging: one JSON object per line on stderr (or plain text), for the server process."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """Format a record as a JSON line: time, level, logger, message, and any `extra=` fields."""

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Plain text: time, level, logger, message, then any `extra=` fields as key=value (the address included)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in JsonFormatter._standard}  # noqa: SLF001
        return text + "".join(f" {k}={v}" for k, v in extra.items())


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    """Send fedrecon's logs to stderr as JSON lines (`fmt="json"`) or text (`fmt="text"`)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("fedrecon")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
