"""Bearer-token authentication: a token file of hashed tokens -> (client id, role), and a gRPC interceptor.

Tokens are random strings shown once when created; the file keeps only their SHA-256 (a token has
256 bits of entropy, so a fast hash is enough). Every call must carry `authorization: Bearer <token>`
except health checks and reflection: a missing or unknown token is UNAUTHENTICATED, a token whose
role may not call the method is PERMISSION_DENIED. The client id of a push is the token's owner,
never the message's `client_id` (a different non-empty one is refused as impersonation).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("fedrecon.auth")

ROLES = ("client", "admin")
TOKEN_PREFIX = "frt_"
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
ADMIN_SERVICE = "/fedrecon.v1.Admin/"
PUSH_METHOD = "/fedrecon.v1.Reconnaissance/Push"
PUSH_STREAM_METHOD = "/fedrecon.v1.Reconnaissance/PushStream"
PRINCIPAL_KEY = "fedrecon-principal"


class TokenFileError(ValueError):
    """The token file is unreadable or malformed; the text names the file and what was expected."""


@dataclass(frozen=True)
class Principal:
    """Who a token belongs to: a client id and a role (`client` pushes and pulls, `admin` also administers)."""

    client_id: str
    role: str


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token, the only form in which tokens are stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def read_entries(path: Path, content: bytes | None = None) -> list[dict[str, Any]]:
    """The token file's entries (`content`: its bytes, already read; an empty list when it does not exist yet)."""
    if content is None and not path.exists():
        return []
    try:
        data = json.loads(path.read_bytes() if content is None else content)
        entries = data["tokens"]
        for entry in entries:
            if entry["role"] not in ROLES or not entry["client_id"] or len(entry["sha256"]) != 64:
                raise ValueError(f"bad entry {entry!r}")
    except (ValueError, KeyError, TypeError) as error:
        raise TokenFileError(f"token file {path} is malformed ({error}); expected "
                             '{"tokens": [{"sha256": ..., "client_id": ..., "role": "client"|"admin"}]}') from error
    return entries


def write_entries(path: Path, entries: list[dict[str, Any]]) -> None:
    """Atomically replace the token file (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"tokens": entries}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_token(path: str | Path, client_id: str, role: str = "client") -> str:
    """Create a token for `client_id` with `role`, store its hash in the file, and return it (shown once)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if not client_id:
        raise ValueError("client_id must not be empty")
    path = Path(path)
    entries = read_entries(path)
    token = new_token()
    entries.append({"sha256": hash_token(token), "client_id": client_id, "role": role, "created": time.time()})
    write_entries(path, entries)
    return token


def remove_tokens(path: str | Path, client_id: str) -> int:
    """Remove every token of a client from the file; returns how many were removed."""
    path = Path(path)
    entries = read_entries(path)
    kept = [e for e in entries if e["client_id"] != client_id]
    if len(kept) != len(entries):
        write_entries(path, kept)
    return len(entries) - len(kept)


RECHECK_SECONDS = 2.0  # the token file's content is hashed again at least this often


class TokenStore:
    """The token file, reloaded when it changes on disk, so added and removed tokens take effect at once.

    A file that disappears or stops parsing admits no one (fail closed) until it is readable again.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise TokenFileError(f"token file {self.path} does not exist; create one with "
                                 "`fedrecon admin token add --tokens FILE --client-id ID --role client|admin`")
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._digest = b""
        self._read_at = 0.0
        self._by_hash: dict[str, Principal] = {}
        self._reload()

    def _reload(self) -> None:
        """Reread the file when its metadata changed (ctime too: `cp -p` keeps the mtime) or every
        `RECHECK_SECONDS` (coarse clocks); the tokens change only when its content (SHA-256) did."""
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino)
        if stamp == self._stamp and time.monotonic() - self._read_at < RECHECK_SECONDS:
            return
        content = self.path.read_bytes()
        self._stamp, self._read_at = stamp, time.monotonic()
        digest = hashlib.sha256(content).digest()
        if digest == self._digest:
            return
        entries = read_entries(self.path, content)
        self._by_hash = {e["sha256"]: Principal(e["client_id"], e["role"]) for e in entries}
        self._digest = digest

    def lookup(self, token: str) -> Principal | None:
        """The owner of a token, or None when the token is unknown (or was removed)."""
        with self._lock:
            try:
                self._reload()
            except (OSError, TokenFileError):  # fail closed: a deleted or broken file admits no one
                log.exception("token file %s could not be read; refusing every token until it can", self.path)
                self._by_hash, self._stamp, self._digest = {}, None, b""
            return self._by_hash.get(hash_token(token))  # keyed by a hash of a 256-bit secret

    def remove_client(self, client_id: str) -> int:
        """Disable every token of a client (used when an admin revokes it)."""
        with self._lock:
            removed = remove_tokens(self.path, client_id)
            self._stamp, self._digest = None, b""
            self._reload()
            return removed


def bearer_token(metadata: Any) -> str | None:
    """The token of an `authorization: Bearer <token>` metadata entry, or None."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return None


def allowed(method: str, role: str) -> bool:
    """Whether a role may call a method: Admin needs `admin`; a push needs `client`; pulls and info either."""
    if method.startswith(ADMIN_SERVICE):
        return role == "admin"
    if method in (PUSH_METHOD, PUSH_STREAM_METHOD):
        return role == "client"
    return True


def _denying_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    def deny(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    def deny_stream(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)
        yield  # pragma: no cover - abort raises

    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuse calls without a known token (UNAUTHENTICATED) or with the wrong role (PERMISSION_DENIED)."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        """Check the caller's token before the method runs."""
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if not token:
            return _denying_handler(handler, grpc.StatusCode.UNAUTHENTICATED,
                                    "missing bearer token (metadata 'authorization: Bearer <token>')")
        principal = self.tokens.lookup(token)
        if principal is None:
            log.warning("unknown token refused", extra={"method": method})
            return _denying_handler(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token")
        if not allowed(method, principal.role):
            log.warning("role refused", extra={"method": method, "client_id": principal.client_id,
                                               "role": principal.role})
            return _denying_handler(handler, grpc.StatusCode.PERMISSION_DENIED,
                                    f"role {principal.role!r} may not call {method}")
        return handler


class TokenIdentity:
    """The service's `identify` hook with auth: the pushing client is the token's owner."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

    def principal(self, context: grpc.ServicerContext) -> Principal:
        """The caller's principal (aborts UNAUTHENTICATED without a valid token)."""
        token = bearer_token(context.invocation_metadata())
        principal = self.tokens.lookup(token) if token else None
        if principal is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing, unknown or revoked token")
        return principal

    def __call__(self, request: Any, context: grpc.ServicerContext) -> str:
        """Client id of a push: the token's owner; a different `client_id` in the message is impersonation."""
        principal = self.principal(context)
        claimed = getattr(request, "client_id", "")
        if claimed and claimed != principal.client_id:
            log.warning("impersonation refused", extra={"client_id": principal.client_id, "claimed": claimed})
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"token belongs to {principal.client_id!r}; the push claims {claimed!r}")
        return principal.client_id
