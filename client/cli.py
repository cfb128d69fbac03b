"""`fedrecon client ...`: learn classes from image folders, sync with a merge server, classify images.

`learn`, `sync` and `classify` keep the client's memory and push numbers in `--state-dir`
(`<client-id>.db`, bound to the server's store). `push`, `pull`, `watch` and `info` are the
low-level calls for scripts (.npz files and JSON output). Errors are one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from fedrecon.client.recon_client import ReconClient
from fedrecon.client.state import default_state_dir, state_path
from fedrecon.proto.channel import add_tls_arguments, security_from_args

if TYPE_CHECKING:
    from fedrecon.client.learner import Learner

DTYPES = ["float32", "float16", "bfloat16", "float64"]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def register(parser: argparse.ArgumentParser) -> None:
    """Add the client subcommands."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", required=True,
                       help="host:port of the merge server; several replicas on one database as host1:port1,"
                       "host2:port2 (or a DNS name with several records): calls are balanced over them and go on "
                       "on another when one dies, with the same push numbers")
        p.add_argument("--timeout", type=float, default=30.0,
                       help="seconds one operation may take, retries of transient failures included")
        p.add_argument("--connect-timeout", type=float, default=5.0,
                       help="seconds to wait for the server to accept a connection")
        p.add_argument("--token", default=os.environ.get("FEDRECON_TOKEN"), help="bearer token ($FEDRECON_TOKEN)")
        add_tls_arguments(p)

    def learner_options(p: argparse.ArgumentParser) -> None:
        common(p)
        p.add_argument("--client-id", required=True, help="this client's name (its state is <state-dir>/<id>.db)")
        p.add_argument("--encoder", required=True,
                       help="shipped encoder name (omniglot, omniglot-paper, glyphs) or checkpoint path")
        p.add_argument("--state-dir", type=Path, default=default_state_dir(),
                       help="where client state lives ($FEDRECON_STATE_DIR)")
        p.add_argument("--device", default="cpu", help="torch device for embedding: cpu, cuda, auto")

    learn = sub.add_parser("learn", help="learn classes from images and push them (exactly once)")
    learner_options(learn)
    learn.add_argument("--label", help="class of every image given (files or folders); default: PATH is an "
                       "ImageFolder root, ROOT/<class>/<images>")
    learn.add_argument("--offline", action="store_true", help="only record locally; the next sync pushes")
    learn.add_argument("paths", nargs="+", metavar="PATH", type=Path)

    sync = sub.add_parser("sync", help="push what is pending, pull what other clients merged")
    learner_options(sync)

    classify = sub.add_parser("classify", help="pull what changed, then print each image's nearest class")
    learner_options(classify)
    classify.add_argument("--top-k", type=int, default=2, help="classes listed per image (best first)")
    classify.add_argument("--json", action="store_true", help="one JSON object per image and line")
    classify.add_argument("--offline", action="store_true", help="do not pull first; use what is stored")
    classify.add_argument("paths", nargs="+", metavar="PATH", type=Path, help="image files or folders of images")

    push = sub.add_parser("push", help="push per-class deltas from an .npz (class_ids, counts, means)")
    common(push)
    push.add_argument("--client-id", required=True)
    push.add_argument("--space", required=True, help="embedding space (encoder fingerprint)")
    push.add_argument("--npz", type=Path, required=True, help="arrays class_ids (str), counts (int), means (N x d)")
    push.add_argument("--dtype", default="float32", choices=DTYPES)
    push.add_argument("--state", type=Path, help="client state file (default: <state-dir>/<client-id>.db)")

    pull = sub.add_parser("pull", help="pull merged prototypes into an .npz (class_ids, counts, means, version)")
    common(pull)
    pull.add_argument("--space", required=True)
    pull.add_argument("--since", type=int, default=0, help="only classes changed after this version")
    pull.add_argument("--out", type=Path, required=True)
    pull.add_argument("--dtype", default="float32", choices=DTYPES)

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
        raise CommandError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"class_ids", "counts", "means"} - set(data.files)
            if missing:
                raise CommandError(f"{path} lacks arrays {sorted(missing)}; "
                                   "expected class_ids (strings), counts (ints), means (N x d)")
            class_ids, counts, means = data["class_ids"], data["counts"], data["means"]
    except (ValueError, OSError, EOFError) as error:
        raise CommandError(f"{path} is not a readable .npz ({error})") from error
    if class_ids.dtype.kind not in "US":
        raise CommandError(f"class_ids in {path} must be strings, got {class_ids.dtype}")
    if means.dtype.kind != "f" or means.ndim != 2 or counts.dtype.kind not in "iu":
        raise CommandError(f"{path}: means must be a float (N x d) array and counts integers, got "
                           f"{means.dtype} {means.shape} and {counts.dtype}")
    if not np.isfinite(means).all():
        bad = int((~np.isfinite(means)).any(axis=1).sum())
        raise CommandError(f"{path}: {bad} rows of means hold NaN or infinite values")
    return [str(c) for c in class_ids], counts, means


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"timeout": args.timeout, "deadline": args.timeout, "connect_timeout": args.connect_timeout,
            "security": security_from_args(args)}


def _client(args: argparse.Namespace, client_id: str = "", state: Path | None = None) -> ReconClient:
    return ReconClient(args.server, client_id, state_path=state, **_client_options(args))


def _learner(args: argparse.Namespace, offline: bool = False) -> Learner:
    from fedrecon.client.encoder import load_encoder
    from fedrecon.client.learner import Learner

    encoder = load_encoder(args.encoder, device=args.device)
    return Learner.open(encoder, args.client_id, None if offline else args.server, state_dir=args.state_dir,
                        **_client_options(args))


def _image_files(paths: list[Path]) -> list[Path]:
    """The image files to classify: the files given, and every image below the folders given."""
    from fedrecon.client.data.folder import labelled_files

    return [f for f, _ in labelled_files(paths, label="")]  # any label: files and folders are read as one class


def _print_predictions(files: list[Path], predictions: list, as_json: bool) -> None:
    for path, p in zip(files, predictions, strict=True):
        if as_json:
            print(json.dumps({"path": str(path), **p.to_dict()}))
        else:
            runner = "  ".join(f"{c} ({d:.4g})" for c, d in p.alternatives)
            print(f"{path}\t{p.label}\t{p.distance:.4g}" + (f"\trunner-up: {runner}" if runner else ""))


def _run(args: argparse.Namespace) -> None:
    if args.action == "learn":
        with _learner(args, offline=args.offline) as learner:
            learned = learner.learn_files(args.paths, args.label)
            out: dict[str, Any] = {**learned, "space": learner.space}
            if args.offline:
                out.update(seq=None, version=learner.memory.global_version, pending_classes=len(learner.pending()[0]))
            else:
                acks = learner.push()
                out.update(seq=acks[-1].seq if acks else learner.state.last_seq,
                           version=acks[-1].version if acks else learner.memory.global_version, pushes=len(acks))
        print(json.dumps(out))
    elif args.action == "sync":
        with _learner(args) as learner:
            print(json.dumps(learner.sync()))
    elif args.action == "classify":
        files = _image_files(args.paths)
        with _learner(args, offline=args.offline) as learner:
            if not args.offline:
                learner.pull()
            predictions = learner.classify(files, top_k=args.top_k)
        _print_predictions(files, predictions, args.json)
    elif args.action == "push":
        class_ids, counts, means = read_npz(args.npz)
        with _client(args, args.client_id, args.state or state_path(default_state_dir(), args.client_id)) as client:
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


def run(args: argparse.Namespace) -> int:
    """Run one client action; a gRPC refusal becomes one line naming the server (exit 2 via the dispatcher)."""
    try:
        _run(args)
    except grpc.RpcError as error:
        raise CommandError(f"server {args.server}: {error.code().name}: {error.details()}") from error
    except BrokenPipeError:  # output piped into `head`
        sys.stderr.close()
    return 0
