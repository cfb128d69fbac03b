"""`fedrecon server`: run the merge server as a process; the first stdout line is the bound address."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from fedrecon.proto.limits import Limits
from fedrecon.server.logs import setup_logging
from fedrecon.server.ratelimit import RateLimits
from fedrecon.server.robust import RobustConfig
from fedrecon.server.serve import ServerConfig, TlsConfig, serve

log = logging.getLogger("fedrecon.server")


def register(parser: argparse.ArgumentParser) -> None:
    """Add the server's options."""
    _address_and_store(parser)
    _limits(parser)
    _security(parser)
    _robust(parser)
    _operations(parser)


def _address_and_store(parser: argparse.ArgumentParser) -> None:
    """Where the server listens and the database it serves."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=50051, help="port; 0 picks a free one")
    parser.add_argument("--db", default="fedrecon.db", help="SQLite database file, or a PostgreSQL URL "
                        "postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME")
    parser.add_argument("--memory", action="store_true", help="keep everything in memory (no database; tests)")
    parser.add_argument("--repair", action="store_true",
                        help="serve a database that fails its start-up checks as it is: log what was lost, rebuild "
                        "classes from their contributions (e.g. after restoring a backup)")
    parser.add_argument("--synchronous", default="FULL", choices=["OFF", "NORMAL", "FULL", "EXTRA"],
                        help="SQLite synchronous level: FULL survives power loss, NORMAL only process crashes "
                        "(PostgreSQL: OFF sets synchronous_commit off, the others keep it on)")
    parser.add_argument("--workers", type=int, default=16,
                        help="gRPC threads for unary calls (open streams get threads of their own)")


def _limits(parser: argparse.ArgumentParser) -> None:
    """The --max-* limits of one request, stream and space."""
    parser.add_argument("--max-classes-per-push", type=int, default=Limits.max_classes_per_push,
                        help="classes one push may carry (more: INVALID_ARGUMENT)")
    parser.add_argument("--max-message-bytes", type=int, default=Limits.max_message_bytes,
                        help="largest request in bytes (more: RESOURCE_EXHAUSTED)")
    parser.add_argument("--max-class-id-bytes", type=int, default=Limits.max_class_id_bytes,
                        help="longest class id or space name, UTF-8 bytes")
    parser.add_argument("--max-dim", type=int, default=Limits.max_dim, help="widest embedding a push may carry")
    parser.add_argument("--max-watch-streams", type=int, default=Limits.max_watch_streams,
                        help="Watch streams open at once on this server")
    parser.add_argument("--max-push-streams", type=int, default=Limits.max_push_streams,
                        help="PushStream calls served at once; more are refused RESOURCE_EXHAUSTED (retry later)")
    parser.add_argument("--max-stream-window-bytes", type=int, default=Limits.max_stream_window_bytes,
                        help="bytes of unanswered pushes one PushStream call may have in flight")
    parser.add_argument("--stream-idle-seconds", type=float, default=Limits.stream_idle_seconds,
                        help="a PushStream call with no push for this long is closed")
    parser.add_argument("--max-queued-bytes", type=int, default=Limits.max_queued_bytes,
                        help="bytes of pushes waiting to be written, all calls together; more: RESOURCE_EXHAUSTED")
    parser.add_argument("--max-space-classes", type=int, default=Limits.max_space_classes,
                        help="classes one space may hold (0: no quota)")
    parser.add_argument("--max-client-classes", type=int, default=Limits.max_client_classes,
                        help="classes one client may contribute to in one space (0: no quota)")


def _security(parser: argparse.ArgumentParser) -> None:
    """TLS, tokens or open mode, checkpoints (listed here in --help) and per-client rate limits."""
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="CA that signs client certificates (mutual TLS)")
    parser.add_argument("--tokens", type=Path, help="token file (hashed bearer tokens -> client id, role); "
                        "create with `fedrecon admin token add`")
    parser.add_argument("--insecure", action="store_true",
                        help="run without authentication (local experiments only; logged loudly)")
    parser.add_argument("--checkpoint-every", type=int, default=20_000,
                        help="checkpoint the tables after this many operations (tiny values: crash tests)")
    parser.add_argument("--max-pushes-per-second", type=float, default=0.0,
                        help="per-client push rate limit (0: off); excess pushes get RESOURCE_EXHAUSTED")
    parser.add_argument("--push-burst", type=int, default=0, help="pushes a client may save up (default: the rate)")
    parser.add_argument("--max-streams-per-client", type=int, default=0,
                        help="concurrent watch streams per client (0: off)")


def _robust(parser: argparse.ArgumentParser) -> None:
    """The robust merge of chosen spaces."""
    parser.add_argument("--robust", action="append", default=[], metavar="SPACE",
                        help="merge this space robustly (repeatable; '*' for every space)")
    parser.add_argument("--robust-estimator", default="trimmed", choices=["trimmed", "median", "mean"],
                        help="how --robust spaces combine clients per coordinate")
    parser.add_argument("--robust-trim", type=float, default=0.2, help="fraction trimmed at each end per coordinate")
    parser.add_argument("--robust-count-cap", type=int, default=0, help="per-client count cap per class (0: off)")
    parser.add_argument("--robust-norm-ratio", type=float, default=3.0,
                        help="drop client means whose norm is this many times off the median norm")
    parser.add_argument("--robust-outlier", type=float, default=3.0,
                        help="drop client means farther than this many median distances from the median")


def _operations(parser: argparse.ArgumentParser) -> None:
    """Metrics, shutdown grace and logging."""
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port; default off)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get at shutdown")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="least severe log lines written to stderr")
    parser.add_argument("--log-format", default="json", choices=["json", "text"],
                        help="stderr log lines as JSON objects or text with key=value fields")


def tls_from_args(args: argparse.Namespace) -> TlsConfig | None:
    """TLS settings from --tls-* options (both cert and key, or neither)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        if args.tls_client_ca is not None:
            raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    client_ca = args.tls_client_ca.read_bytes() if args.tls_client_ca else None
    return TlsConfig(args.tls_cert.read_bytes(), args.tls_key.read_bytes(), client_ca)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The `ServerConfig` that the options describe."""
    limits = Limits(args.max_classes_per_push, args.max_message_bytes, args.max_class_id_bytes, args.max_dim,
                    args.max_watch_streams, max_push_streams=args.max_push_streams,
                    max_stream_window_bytes=args.max_stream_window_bytes,
                    stream_idle_seconds=args.stream_idle_seconds, max_queued_bytes=args.max_queued_bytes,
                    max_space_classes=args.max_space_classes, max_client_classes=args.max_client_classes)
    config = ServerConfig(  # checks --tokens/--insecure first; the robust and TLS options after that
        host=args.host, port=args.port, db=None if args.memory else args.db, synchronous=args.synchronous,
        checkpoint_every=args.checkpoint_every, repair=args.repair, limits=limits, tokens=args.tokens,
        insecure=args.insecure,
        rate_limits=RateLimits(args.max_pushes_per_second, args.push_burst, args.max_streams_per_client),
        workers=args.workers, metrics_port=args.metrics_port, grace=args.grace)
    robust = RobustConfig(args.robust_estimator, args.robust_trim, args.robust_count_cap, args.robust_norm_ratio,
                          args.robust_outlier)
    return replace(config, robust={space: robust for space in args.robust}, tls=tls_from_args(args))


def run(args: argparse.Namespace) -> int:
    """Start the server, print its address, serve until SIGTERM/SIGINT, then shut down cleanly."""
    setup_logging(args.log_level, args.log_format)
    server = serve(config_from_args(args))
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal received; shutting down", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)  # before the address is printed: whoever read it may stop us at once
    signal.signal(signal.SIGINT, on_signal)
    print(server.address, flush=True)
    while not stop.wait(1.0):
        pass
    server.stop()
    sys.stdout.flush()
    return 0
