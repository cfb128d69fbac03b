"""The `Admin` gRPC service: exact revocation of a client, store statistics with the audit trail, export.

Revocation goes through `PrototypeStore.revoke(client_id, actor)`: it is logged durably with the
acting admin in the `audit` table and raises the global version, so pulls and watches see the
changed classes. Under auth only `admin` tokens reach this service (see `auth.AuthInterceptor`).
"""

from __future__ import annotations

import logging

import grpc

from fedrecon.proto import codec
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import admin_pb2 as apb
from fedrecon.proto.v1 import admin_pb2_grpc as arpc
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.server.auth import TokenIdentity, TokenStore
from fedrecon.server.errors import StoreError, UnknownClient
from fedrecon.server.service import status_of
from fedrecon.server.store import PrototypeStore

log = logging.getLogger("fedrecon.admin")

UINT64_MAX = 2**64 - 1
SERVICE_NAME = apb.DESCRIPTOR.services_by_name["Admin"].full_name


class AdminService(arpc.AdminServicer):
    """RevokeClient / Stats / Export over a store; `tokens` lets a revocation also disable the client's tokens."""

    def __init__(self, store: PrototypeStore, tokens: TokenStore | None = None) -> None:
        self.store = store
        self.tokens = tokens
        self.identity = TokenIdentity(tokens) if tokens is not None else None

    def _actor(self, context: grpc.ServicerContext) -> str:
        if self.identity is not None:
            return self.identity.principal(context).client_id
        return f"insecure:{context.peer()}"

    def RevokeClient(self, request: apb.RevokeClientRequest, context: grpc.ServicerContext  # noqa: N802
                     ) -> apb.RevokeClientReply:
        """Remove one client's contributions from every class, exactly, and record who did it."""
        actor = self._actor(context)
        if not request.client_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "client_id must not be empty")
        classes = self.store.live_classes(request.client_id)
        try:
            version = self.store.revoke(request.client_id, actor).version
        except UnknownClient as error:  # never pushed: nothing to remove, but its tokens can still be disabled
            if not request.disable_tokens:
                context.abort(status_of(error), str(error))
            version = self.store.version
        except StoreError as error:
            context.abort(status_of(error), str(error))
        disabled = 0
        if request.disable_tokens:
            if self.tokens is None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"contributions of {request.client_id!r} were revoked at version {version}, "
                              "but this server has no token file (--insecure), so there are no tokens to disable")
            disabled = self.tokens.remove_client(request.client_id)
        log.warning("client revoked", extra={"client_id": request.client_id, "actor": actor,
                                             "version": version, "classes": classes,
                                             "tokens_disabled": disabled})
        return apb.RevokeClientReply(version=version, classes=classes, tokens_disabled=disabled, actor=actor)

    def Stats(self, request: apb.StatsRequest, context: grpc.ServicerContext) -> apb.StatsReply:  # noqa: N802
        """Version, spaces, per-client seq/classes/examples and the audit trail."""
        self._actor(context)
        info = self.store.info()
        clients = [apb.ClientStats(client_id=c.client_id, last_seq=c.last_seq, classes=c.classes,
                                   examples=min(c.examples, UINT64_MAX)) for c in self.store.client_stats()]
        audit = self.store.audit()
        robust = sorted(self.store.merge_rule.spaces)
        return apb.StatsReply(
            store_id=info["store_id"], version=info["version"], spaces=[pb.SpaceInfo(**s) for s in info["spaces"]],
            clients=clients, robust_spaces=robust,
            audit=[apb.AuditEntry(version=v, kind=k, client_id=c, actor=a, at=t) for v, k, c, a, t in audit])

    def Export(self, request: apb.ExportRequest, context: grpc.ServicerContext) -> apb.ExportReply:  # noqa: N802
        """The merged table of a space as pulls see it, or each client's contribution (float64 by default)."""
        self._actor(context)
        if not request.space:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "space must not be empty")
        try:
            dtype = codec.dtype_code(request.dtype or pb.FLOAT64)
        except codec.InvalidMessage as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            return self._export(request.space, dtype, request.per_client)
        except codec.InvalidMessage as error:  # e.g. means beyond float16's range: ask for a wider dtype
            context.abort(status_of(error), f"export of space {request.space!r}: {error}")

    def _export(self, space: str, dtype: int, per_client: bool) -> apb.ExportReply:
        """The Export reply (raises codec.InvalidMessage where a mean does not fit `dtype`)."""
        tables = []
        if per_client:
            with self.store.consistent():
                version = self.store.version
                clients = self.store.client_ids()
            for client_id in clients:
                table = self.store.contribution(client_id, space)
                rows = table.live_rows()
                if len(rows):
                    tables.append(apb.ExportTable(client_id=client_id, classes=codec.encode_deltas(
                        Deltas([table.class_ids[r] for r in rows], table.counts[rows], table.means(rows)), dtype)))
        else:
            pulled = self.store.pull(space)  # as the store's merge rule answers it
            version = pulled.version
            tables.append(apb.ExportTable(classes=codec.encode_deltas(pulled.deltas,
                                                                      dtype)))
        return apb.ExportReply(space=space, version=version, tables=tables)
