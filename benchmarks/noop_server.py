"""The transport ceiling: a Python gRPC server whose Push does nothing but answer, fed like the real one.

`python -m fedrecon.benchmarks.noop_server` binds 127.0.0.1 on a free port, prints the address as its
first line (like `fedrecon server`) and serves until SIGTERM. Push (and each push of PushStream) replies
`seq` (so the benchmark clients' checks pass) without decoding the deltas beyond what gRPC itself parses.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc

from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc


class NoopService(rpc.ReconnaissanceServicer):
    """Push answers at once; nothing is merged, stored or checked."""

    def Push(self, request: pb.PushRequest, context: grpc.ServicerContext) -> pb.PushReply:  # noqa: N802
        """Acknowledge the push's number without doing anything."""
        return pb.PushReply(seq=request.seq, version=request.seq)

    def PushStream(self, requests: Iterator[pb.PushRequest],  # noqa: N802
                   context: grpc.ServicerContext) -> Iterator[pb.PushStreamReply]:
        """Acknowledge each push of the stream at once, in order (one message each: nothing waits here)."""
        for request in requests:
            yield pb.PushStreamReply(replies=[pb.PushReply(seq=request.seq, version=request.seq)])


def main() -> int:
    """Serve until SIGTERM or SIGINT."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.so_reuseport", 0)])
    rpc.add_ReconnaissanceServicer_to_server(NoopService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"127.0.0.1:{port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
