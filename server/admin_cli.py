"""`fedrecon admin revoke|stats|export|token`: administer a merge server and its token file; JSON output.

`token add` creates a token, stores only its hash in the token file and prints the token once;
`revoke`, `stats` and `export` call the server's Admin service with an admin token.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import grpc
import numpy as np

from fedrecon.proto import codec
from fedrecon.proto.channel import add_tls_arguments, open_channel, security_from_args
from fedrecon.proto.v1 import admin_pb2 as apb
from fedrecon.proto.v1 import admin_pb2_grpc as arpc
from fedrecon.server.auth import ROLES, add_token, read_entries, remove_tokens


def register(parser: argparse.ArgumentParser) -> None:
    """Add the admin subcommands."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def remote(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", required=True, help="host:port of the merge server (replicas: several, comma-sep.)")
        p.add_argument("--token", default=os.environ.get("FEDRECON_ADMIN_TOKEN"),
                       help="admin bearer token ($FEDRECON_ADMIN_TOKEN)")
        p.add_argument("--timeout", type=float, default=30.0)
        add_tls_arguments(p)

    revoke = sub.add_parser("revoke", help="remove one client's contributions from every class (exact unlearning)")
    remote(revoke)
    revoke.add_argument("--client-id", required=True)
    revoke.add_argument("--disable-token", action="store_true", help="also remove the client's tokens on the server")

    stats = sub.add_parser("stats", help="store version, spaces, per-client statistics and the audit trail")
    remote(stats)

    export = sub.add_parser("export", help="merged prototypes of a space (or per-client contributions) to .npz")
    remote(export)
    export.add_argument("--space", required=True)
    export.add_argument("--out", type=Path, required=True, help=".npz file to write")
    export.add_argument("--per-client", action="store_true", help="one table per client instead of the merged one")

    token = sub.add_parser("token", help="manage the token file (hashes only; the token is printed once)")
    token_sub = token.add_subparsers(dest="token_action", metavar="TOKEN_ACTION", required=True)
    add = token_sub.add_parser("add", help="create a token and print it once")
    add.add_argument("--tokens", type=Path, required=True, help="token file (created if missing)")
    add.add_argument("--client-id", required=True)
    add.add_argument("--role", choices=ROLES, default="client")
    listing = token_sub.add_parser("list", help="client ids and roles in the token file (no tokens)")
    listing.add_argument("--tokens", type=Path, required=True)
    remove = token_sub.add_parser("remove", help="remove every token of a client")
    remove.add_argument("--tokens", type=Path, required=True)
    remove.add_argument("--client-id", required=True)


def _stub(args: argparse.Namespace) -> tuple[grpc.Channel, arpc.AdminStub, tuple]:
    security = security_from_args(args)
    channel = open_channel(args.server, security)
    return channel, arpc.AdminStub(channel), security.metadata()


def _token_action(args: argparse.Namespace) -> int:
    if args.token_action == "add":
        token = add_token(args.tokens, args.client_id, args.role)
        print(json.dumps({"client_id": args.client_id, "role": args.role, "token": token,
                          "tokens": str(args.tokens), "note": "shown once; only its hash is stored"}))
    elif args.token_action == "list":
        entries = read_entries(args.tokens)
        print(json.dumps([{"client_id": e["client_id"], "role": e["role"], "created": e.get("created")}
                          for e in entries], indent=2))
    else:
        print(json.dumps({"client_id": args.client_id, "removed": remove_tokens(args.tokens, args.client_id)}))
    return 0


def _remote_action(args: argparse.Namespace) -> int:
    channel, stub, metadata = _stub(args)
    with channel:
        if args.action == "revoke":
            reply = stub.RevokeClient(apb.RevokeClientRequest(client_id=args.client_id,
                                                              disable_tokens=args.disable_token),
                                      timeout=args.timeout, metadata=metadata)
            print(json.dumps({"client_id": args.client_id, "version": reply.version, "classes": reply.classes,
                              "tokens_disabled": reply.tokens_disabled, "actor": reply.actor}))
        elif args.action == "stats":
            reply = stub.Stats(apb.StatsRequest(), timeout=args.timeout, metadata=metadata)
            print(json.dumps({
                "store_id": reply.store_id, "version": reply.version, "robust_spaces": list(reply.robust_spaces),
                "spaces": [{"space": s.space, "dim": s.dim, "classes": s.classes, "examples": s.examples,
                            "version": s.version} for s in reply.spaces],
                "clients": [{"client_id": c.client_id, "last_seq": c.last_seq, "classes": c.classes,
                             "examples": c.examples} for c in reply.clients],
                "audit": [{"version": a.version, "kind": a.kind, "client_id": a.client_id, "actor": a.actor,
                           "at": a.at} for a in reply.audit]}, indent=2))
        else:
            reply = stub.Export(apb.ExportRequest(space=args.space, per_client=args.per_client),
                                timeout=args.timeout, metadata=metadata)
            arrays: dict[str, np.ndarray] = {"version": np.int64(reply.version)}
            summary = []
            for i, table in enumerate(reply.tables):
                deltas = codec.decode_deltas(table.classes, allow_zero_counts=True)
                prefix = f"t{i}_" if args.per_client else ""
                arrays.update({f"{prefix}class_ids": np.array(deltas.class_ids, dtype=str),
                               f"{prefix}counts": deltas.counts, f"{prefix}means": deltas.means})
                if args.per_client:
                    arrays[f"{prefix}client_id"] = np.array(table.client_id)
                summary.append({"client_id": table.client_id, "classes": len(deltas.class_ids)})
            np.savez(args.out, **arrays)
            print(json.dumps({"space": reply.space, "version": reply.version, "tables": summary,
                              "out": str(args.out)}))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run one admin action; errors print one line and exit non-zero."""
    try:
        if args.action == "token":
            return _token_action(args)
        return _remote_action(args)
    except grpc.RpcError as error:  # worded here: its str() is several lines; the dispatcher prints the rest
        raise SystemExit(f"{error.code().name}: {error.details()}") from None
