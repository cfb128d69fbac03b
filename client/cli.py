"""`fedrecon client push|pull|watch|info`: use a merge server from scripts, with .npz files and JSON output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc
import numpy as np

from fedrecon.client.recon_client import ReconClient, SequenceError
from fedrecon.proto.channel import add_tls_arguments, security_from_args

DEFAULT_STATE_DIR = Path(os.environ.get("FEDRECON_STATE_DIR", Path.home() / ".local" / "state" / "fedrecon"))


def register(parser: argparse.ArgumentParser) -> None:
    """Add the client subcommands."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", required=True, help="host:port of the merge server")
        p.add_argument("--timeout", type=float, default=10.0, help="deadline per call in seconds")
        p.add_argument("--token", default=os.environ.get("FEDRECON_TOKEN"), help="bearer token ($FEDRECON_TOKEN)")
        add_tls_arguments(p)

    push = sub.add_parser("push", help="push per-class deltas from an .npz (class_ids, counts, means)")
    common(push)
    push.add_argument("--client-id", required=True)
    push.add_argument("--space", required=True, help="embedding space (encoder fingerprint)")
    push.add_argument("--npz", type=Path, required=True, help="arrays class_ids (str), counts (int), means (N x d)")
    push.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    push.add_argument("--state", type=Path, help=f"sequence state file (default {DEFAULT_STATE_DIR}/<client-id>.json)")

    pull = sub.add_parser("pull", help="pull merged prototypes into an .npz (class_ids, counts, means, version)")
    common(pull)
    pull.add_argument("--space", required=True)
    pull.add_argument("--since", type=int, default=0, help="only classes changed after this version")
    pull.add_argument("--out", type=Path, required=True)
    pull.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])

    watch = sub.add_parser("watch", help="print one JSON line per merged change of a space")
    common(watch)
    watch.add_argument("--space", required=True)
    watch.add_argument("--since", type=int, default=0)
    watch.add_argument("--updates", type=int, default=0, help="stop after this many updates (0: forever)")

    info = sub.add_parser("info", help="print the server's version, spaces and limits as JSON")
    common(info)


def read_npz(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """class_ids, counts, means from an .npz, with clear errors for a wrong file."""
    if not path.exists():
        raise SystemExit(f"fedrecon client push: {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"class_ids", "counts", "means"} - set(data.files)
            if missing:
                raise SystemExit(f"fedrecon client push: {path} lacks arrays {sorted(missing)}; "
                                 "expected class_ids (strings), counts (ints), means (N x d)")
            class_ids, counts, means = data["class_ids"], data["counts"], data["means"]
    except (ValueError, OSError) as error:
        raise SystemExit(f"fedrecon client push: {path} is not a readable .npz ({error})") from error
    if class_ids.dtype.kind not in "US":
        raise SystemExit(f"fedrecon client push: class_ids in {path} must be strings, got {class_ids.dtype}")
    return [str(c) for c in class_ids], counts, means


def _client(args: argparse.Namespace, client_id: str = "", state: Path | None = None) -> ReconClient:
    security = security_from_args(args)
    return ReconClient(args.server, client_id, state_path=state, timeout=args.timeout, security=security)


def run(args: argparse.Namespace) -> int:
    """Run one client action; errors print a one-line message and exit non-zero."""
    try:
        if args.action == "push":
            class_ids, counts, means = read_npz(args.npz)
            state = args.state or DEFAULT_STATE_DIR / f"{args.client_id}.json"
            with _client(args, args.client_id, state) as client:
                ack = client.push(args.space, class_ids, counts, means, dtype=args.dtype)
            print(json.dumps(ack.to_dict()))
        elif args.action == "pull":
            with _client(args) as client:
                pulled = client.pull(args.space, since=args.since, dtype=args.dtype)
            np.savez(args.out, class_ids=np.array(pulled.class_ids, dtype=str), counts=pulled.counts,
                     means=pulled.means, version=np.int64(pulled.version))
            print(json.dumps({"space": pulled.space, "version": pulled.version, "classes": len(pulled.class_ids),
                              "out": str(args.out)}))
        elif args.action == "watch":
            with _client(args) as client:
                for n, pulled in enumerate(client.watch(args.space, since=args.since), start=1):
                    print(json.dumps({"version": pulled.version, "classes": len(pulled.class_ids),
                                      "class_ids": pulled.class_ids[:20]}), flush=True)
                    if args.updates and n >= args.updates:
                        break
        elif args.action == "info":
            with _client(args) as client:
                print(json.dumps(client.info(), indent=2))
    except SequenceError as error:
        print(f"fedrecon client: {error} (server expects seq {error.expected}; "
              "is the --state file from another server or lost?)", file=sys.stderr)
        return 3
    except grpc.RpcError as error:
        print(f"fedrecon client: {error.code().name}: {error.details()}", file=sys.stderr)
        return 2
    return 0
