"""`fedrecon client ...`: learn classes from image folders, sync with a merge server, classify images.

`learn`, `sync` and `classify` keep the client's memory and push numbers in `--state-dir`
(`<client-id>.db`, bound to the server's store). `push`, `pull`, `watch` and `info` are the
low-level calls for scripts (.npz files and JSON output). Errors are one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from fedrecon.client.recon_client import ReconClient
from fedrecon.client.state_dir import default_state_dir, state_path
from fedrecon.proto.channel import add_tls_arguments, security_from_args

if TYPE_CHECKING:
    from fedrecon.client.learner import Learner

DTYPES = ["float32", "float16", "bfloat16", "float64"]
T = TypeVar("T")


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def register(parser: argparse.ArgumentParser) -> None:
    """Add the client subcommands."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _learner_parsers(sub)
    _status_parser(sub)
    _push_parser(sub)
    _pull_watch_info_parsers(sub)


def _common(p: argparse.ArgumentParser) -> None:
    """--server, --timeout, --connect-timeout, --token and TLS: how every action reaches the server."""
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


def _learner_options(p: argparse.ArgumentParser) -> None:
    """The common options plus who the client is: --client-id, --encoder, --state-dir, --device."""
    _common(p)
    p.add_argument("--client-id", required=True, help="this client's name (its state is <state-dir>/<id>.db)")
    p.add_argument("--encoder", required=True,
                   help="shipped encoder (omniglot, omniglot-paper, glyphs: handwriting), an imported encoder's "
                   "name (fedrecon encoder import), an exported .onnx file or a checkpoint path")
    p.add_argument("--state-dir", type=Path, default=default_state_dir(),
                   help="where client state lives ($FEDRECON_STATE_DIR)")
    p.add_argument("--device", default="cpu", help="torch device for embedding: cpu, cuda, auto")


def _learner_parsers(sub: Any) -> None:
    """`learn`, `sync` and `classify`: the actions that keep a client's memory in its state."""
    learn = sub.add_parser("learn", help="learn classes from images and push them (exactly once)")
    _learner_options(learn)
    learn.add_argument("--label", help="class of every image given (files or folders); default: PATH is an "
                       "ImageFolder root, ROOT/<class>/<images>")
    _learn_options(learn)
    learn.add_argument("paths", nargs="+", metavar="PATH", type=Path)

    sync = sub.add_parser("sync", help="push what is pending, pull what other clients merged")
    _learner_options(sync)

    classify = sub.add_parser("classify", help="pull what changed, then print each image's nearest class")
    _learner_options(classify)
    _classify_options(classify)


def _push_parser(sub: Any) -> None:
    """`push`: per-class deltas from an .npz, numbered by a client state."""
    push = sub.add_parser("push", help="push per-class deltas from an .npz (class_ids, counts, means)")
    _common(push)
    push.add_argument("--client-id", required=True)
    push.add_argument("--space", required=True, help="embedding space (encoder fingerprint)")
    push.add_argument("--npz", type=Path, required=True, help="arrays class_ids (str), counts (int), means (N x d)")
    push.add_argument("--dtype", default="float32", choices=DTYPES)
    push.add_argument("--state", type=Path, help="client state file (default: <state-dir>/<client-id>.db)")
    push.add_argument("--again", action="store_true", help="push the file even if this client state already "
                      "pushed the same contents (a re-run after a kill never pushes it twice without this)")


def _pull_watch_info_parsers(sub: Any) -> None:
    """`pull`, `watch` and `info`: the read-only calls for scripts."""
    pull = sub.add_parser("pull", help="pull merged prototypes into an .npz (class_ids, counts, means, version)")
    _common(pull)
    pull.add_argument("--space", required=True)
    pull.add_argument("--since", type=int, default=0, help="only classes changed after this version")
    pull.add_argument("--out", type=Path, required=True)
    pull.add_argument("--dtype", default="float32", choices=DTYPES)

    watch = sub.add_parser("watch", help="print one JSON line per merged change of a space")
    _common(watch)
    watch.add_argument("--space", required=True)
    watch.add_argument("--since", type=int, default=0)
    watch.add_argument("--updates", type=int, default=0, help="stop after this many updates (0: forever)")

    info = sub.add_parser("info", help="print the server's version, spaces and limits as JSON")
    _common(info)


def _learn_options(learn: argparse.ArgumentParser) -> None:
    """--offline, --allow-duplicates, --skip-bad of `client learn`."""
    learn.add_argument("--offline", action="store_true", help="only record locally; the next sync pushes "
                       "(without it, a learn that cannot reach its server records nothing)")
    learn.add_argument("--allow-duplicates", action="store_true",
                       help="learn images this client already learned (same file content) again")
    learn.add_argument("--skip-bad", action="store_true",
                       help="skip files that are not readable images (each is reported) instead of refusing all")


def _classify_options(classify: argparse.ArgumentParser) -> None:
    """--top-k, --json, --offline, --unknown and the paths of `client classify`."""
    classify.add_argument("--top-k", type=int, default=2, help="classes listed per image (best first)")
    classify.add_argument("--json", action="store_true", help="one JSON object per image and line")
    classify.add_argument("--offline", action="store_true", help="do not pull first; use what is stored")
    classify.add_argument("--unknown", metavar="auto|DIST", type=_threshold,
                          help="answer 'unknown' for images whose squared distance to every prototype exceeds DIST; "
                          "auto: 1.06 x the median squared distance between each class and its nearest other class")
    classify.add_argument("paths", nargs="+", metavar="PATH", type=Path, help="image files or folders of images")


def _status_parser(sub: Any) -> None:
    """`client status`: reads the state only, so it takes no server options."""
    status = sub.add_parser("status", help="print what this client's state holds: per class learned, local, "
                            "pending and merged counts (reads the state only)")
    status.add_argument("--client-id", required=True, help="this client's name (its state is <state-dir>/<id>.db)")
    status.add_argument("--state-dir", type=Path, default=default_state_dir(),
                        help="where client state lives ($FEDRECON_STATE_DIR)")
    status.add_argument("--json", action="store_true", help="one JSON object instead of a table")


def _threshold(text: str) -> str | float:
    from fedrecon.client.unknown import parse_threshold

    try:
        return parse_threshold(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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


def npz_source(space: str, dtype: str, class_ids: list[str], counts: np.ndarray, means: np.ndarray) -> str:
    """What identifies a pushed file: a digest of its contents (and the space and dtype it was pushed in)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (space.encode(), dtype.encode(), json.dumps(class_ids).encode(),
                 np.ascontiguousarray(counts, "<i8").tobytes(), np.ascontiguousarray(means, "<f8").tobytes()):
        h.update(len(part).to_bytes(8, "little") + part)
    return "npz:" + h.hexdigest()


def pending_note(learner: Learner) -> str:
    """What this client has not yet pushed, and the one command that sends it."""
    pending, local = learner.state.all_pending, learner.pending()[0]
    parts = [f"{len(pending)} pushes (seq {pending[0].seq}..{pending[-1].seq}) recorded and not yet acknowledged"] \
        if pending else []
    parts += [f"{len(local)} learned classes not yet pushed"] if len(local) else []
    if not parts:
        return "nothing is pending"
    return (f"{' and '.join(parts)} in {learner.state.path}; `fedrecon client sync` with the same --server, "
            "--client-id and --state-dir sends them exactly once (do not learn the same images again)")


def _push_npz(args: argparse.Namespace) -> dict[str, Any]:
    """`client push`: a file whose push was left pending is resumed, one already pushed is not pushed again."""
    class_ids, counts, means = read_npz(args.npz)
    source = npz_source(args.space, args.dtype, class_ids, counts, means)
    with _client(args, args.client_id, args.state or state_path(default_state_dir(), args.client_id)) as client:
        before = client.state.find_source(source)
        try:
            ack = client.push(args.space, class_ids, counts, means, dtype=args.dtype, source=source, again=args.again)
        except (grpc.RpcError, ConnectionError, RuntimeError) as error:
            pending = client.state.all_pending
            if not pending:
                raise
            text = f"{error.code().name}: {error.details()}" if isinstance(error, grpc.RpcError) else str(error)
            raise CommandError(f"server {args.server}: {text}. {len(pending)} pushes (seq {pending[0].seq}.."
                               f"{pending[-1].seq}) stay pending in {client.state.path}: run the same command again "
                               "(it resumes them and never pushes the file twice)") from error
    out = ack.to_dict()
    if before is not None and ack.seq == before.seq:
        out["note"] = (f"{args.npz} was already pushed as push {before.seq} by this client state; nothing was "
                       "sent (--again pushes it once more)")
    return out


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"timeout": args.timeout, "deadline": args.timeout, "connect_timeout": args.connect_timeout,
            "security": security_from_args(args)}


def _client(args: argparse.Namespace, client_id: str = "", state: Path | None = None) -> ReconClient:
    return ReconClient(args.server, client_id, state_path=state, **_client_options(args))


def _learner(args: argparse.Namespace, offline: bool = False) -> Learner:
    from fedrecon.client.learner import Learner
    from fedrecon.client.spaces import open_encoder

    encoder = open_encoder(args.encoder, device=args.device)
    return Learner.open(encoder, args.client_id, None if offline else args.server, state_dir=args.state_dir,
                        **_client_options(args))


def _reach(learner: Learner, address: str) -> None:
    """Contact the server and check the state's store before anything is recorded; refuse in one line if not."""
    from fedrecon.client.grpc_merger import ServerUnreachable
    from fedrecon.client.state import StoreMismatch

    try:
        learner.server.bind()
    except (ServerUnreachable, StoreMismatch) as error:
        raise CommandError(f"{error}; nothing was learned or recorded (learn --offline records without a server, "
                           "and the next sync pushes)") from error
    except grpc.RpcError as error:
        raise CommandError(f"server {address}: {error.code().name}: {error.details()}; nothing was learned or "
                           "recorded") from error


def _status(args: argparse.Namespace) -> None:
    from fedrecon.client.state import ClientState
    from fedrecon.client.status import summary, table

    path = state_path(args.state_dir, args.client_id)
    if not path.exists():
        raise CommandError(f"no state for client {args.client_id!r} in {args.state_dir} (nothing learned yet?)")
    with ClientState(path, args.client_id) as state:
        data = summary(state)
    print(json.dumps(data, ensure_ascii=False) if args.json else table(data))


def _image_files(paths: list[Path]) -> list[Path]:
    """The image files to classify: the files given, and every image below the folders given."""
    from fedrecon.client.data.folder import labelled_files

    return [f for f, _ in labelled_files(paths, label="")]  # any label: files and folders are read as one class


def _print_predictions(files: list[Path], predictions: list, as_json: bool, threshold: float | None = None) -> None:
    extra = {} if threshold is None else {"unknown_threshold": threshold}
    for path, p in zip(files, predictions, strict=True):
        if as_json:
            print(json.dumps({"path": str(path), **p.to_dict(), **extra}, ensure_ascii=False))
        else:
            runner = "  ".join(f"{c} ({d:.4g})" for c, d in p.alternatives)
            print(f"{path}\t{p.label}\t{p.distance:.4g}" + (f"\trunner-up: {runner}" if runner else ""))


def _run(args: argparse.Namespace) -> None:
    if args.action == "learn":
        with _learner(args, offline=args.offline) as learner:
            if not args.offline:
                _reach(learner, args.server)
            learned = learner.learn_files(args.paths, args.label, allow_duplicates=args.allow_duplicates,
                                          skip_bad=args.skip_bad)
            for path in learned["skipped_bad_files"]:
                print(f"fedrecon client learn: skipped {path}: not a readable image", file=sys.stderr)
            out: dict[str, Any] = {**learned, "space": learner.space}
            if args.offline:
                out.update(seq=None, version=learner.memory.global_version, pending_classes=len(learner.pending()[0]))
            else:
                resumed = len(learner.state.all_pending)
                acks = _telling_what_is_pending(learner, learner.push)
                out.update(seq=acks[-1].seq if acks else learner.state.last_seq, resumed_pushes=resumed,
                           version=acks[-1].version if acks else learner.memory.global_version, pushes=len(acks))
        print(json.dumps(out, ensure_ascii=False))
    elif args.action == "sync":
        with _learner(args) as learner:
            print(json.dumps(_telling_what_is_pending(learner, learner.sync)))
    elif args.action == "classify":
        files = _image_files(args.paths)
        with _learner(args, offline=args.offline) as learner:
            if not args.offline:
                learner.pull()
            threshold = learner.unknown_threshold(args.unknown)
            predictions = learner.classify(files, top_k=args.top_k, unknown=threshold)
        _print_predictions(files, predictions, args.json, threshold)
    elif args.action == "status":
        _status(args)
    elif args.action == "push":
        print(json.dumps(_push_npz(args)))
    elif args.action == "pull":
        with _client(args) as client:
            pulled = client.pull(args.space, since=args.since, dtype=args.dtype)
        np.savez(args.out, class_ids=np.array(pulled.class_ids, dtype=str), counts=pulled.counts,
                 means=pulled.means, version=np.int64(pulled.version))
        print(json.dumps({"space": pulled.space, "version": pulled.version, "classes": len(pulled.class_ids),
                          "out": str(args.out), "pulled_all_again": pulled.reset}))
    elif args.action == "watch":
        with _client(args) as client:
            for n, pulled in enumerate(client.watch(args.space, since=args.since), start=1):
                print(json.dumps({"version": pulled.version, "classes": len(pulled.class_ids),
                                  "class_ids": pulled.class_ids[:20]}, ensure_ascii=False), flush=True)
                if args.updates and n >= args.updates:
                    break
    elif args.action == "info":
        with _client(args) as client:
            print(json.dumps(client.info(), indent=2))


def _telling_what_is_pending(learner: Learner, call: Callable[[], T]) -> T:
    """Run a learner's push or sync; a failure becomes one line that also says what is pending and what to run."""
    try:
        return call()
    except (grpc.RpcError, ConnectionError, RuntimeError, ValueError) as error:
        text = f"{error.code().name}: {error.details()}" if isinstance(error, grpc.RpcError) else str(error)
        raise CommandError(f"server {learner.server.address if learner.server else '-'}: {text}. "
                           f"{pending_note(learner)}") from error


def run(args: argparse.Namespace) -> int:
    """Run one client action; a gRPC refusal becomes one line naming the server (exit 2 via the dispatcher)."""
    from fedrecon.client.address import check_address

    try:
        if getattr(args, "server", None) is not None:
            args.server = check_address(args.server)
    except ValueError as error:
        raise CommandError(str(error)) from None
    try:
        _run(args)
    except grpc.RpcError as error:
        raise CommandError(f"server {args.server}: {error.code().name}: {error.details()}") from error
    except BrokenPipeError:  # output piped into `head`
        sys.stderr.close()
    return 0
