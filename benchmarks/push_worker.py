"""One benchmark client process: pushes pre-encoded 64-class deltas over gRPC as fast as acks come back.

Kept separate and light (grpc, numpy, the stubs) so that spawning 32 of them is cheap. The request
bodies are encoded once, so the client's own cost is the gRPC call and nothing else; every push is a
real, numbered, acknowledged (durable when the server is) push.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event

import grpc
import numpy as np

from fedrecon.proto import codec
from fedrecon.proto.channel import open_channel
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import recon_pb2 as pb
from fedrecon.proto.v1 import recon_pb2_grpc as rpc
from fedrecon.server.auth import PUSH_STREAM_METHOD


def requests_for(client_id: str, space: str, dim: int, batch: int, universe: int, variants: int = 8,
                 seed: int = 0) -> list[pb.PushRequest]:
    """`variants` pushes of `batch` classes each (blocks of a shared class universe, so classes overlap)."""
    rng = np.random.default_rng(seed)
    out = []
    for v in range(variants):
        start = (seed * 7919 + v * batch) % universe
        ids = [f"class-{(start + i) % universe:06d}" for i in range(batch)]
        counts = rng.integers(1, 20, size=batch)
        means = rng.standard_normal((batch, dim)).astype(np.float32)
        out.append(pb.PushRequest(client_id=client_id, space=space,
                                  deltas=codec.encode_deltas(Deltas(ids, counts, means))))
    return out


def run_worker(address: str, client_id: str, space: str, dim: int, batch: int, universe: int, duration: float,
               seed: int, ready: Event, go: Event, results, window: int = 0) -> None:  # noqa: ANN001 - mp queue
    """Push until `duration` seconds after `go`; put (id, pushes, start, end, latencies, error, cpu s) on `results`.

    `window` 0: one unary Push at a time; N > 0: one PushStream call with up to N pushes unanswered.
    """
    requests = requests_for(client_id, space, dim, batch, universe, seed=seed)
    channel = open_channel(address)  # one server, or replicas: "h1:p1,h2:p2" (round robin)
    stub = rpc.ReconnaissanceStub(channel)
    grpc.channel_ready_future(channel).result(timeout=30)
    ready.set()
    go.wait()
    latencies: list[float] = []
    seq = 0
    cpu = time.process_time()
    start = time.perf_counter()
    now = start
    try:
        if window:
            seq, now = _stream_pushes(channel, requests, start + duration, window, latencies)
        else:
            while now < start + duration:
                request = requests[seq % len(requests)]
                seq += 1
                request.seq = seq
                reply = stub.Push(request, timeout=60)
                _check(reply, seq, client_id)
                after = time.perf_counter()
                latencies.append(after - now)
                now = after
        results.put((client_id, seq, start, now, latencies, None, time.process_time() - cpu))
    except Exception as error:  # noqa: BLE001 - report to the parent instead of dying silently
        results.put((client_id, seq, start, time.perf_counter(), latencies, repr(error), time.process_time() - cpu))
    finally:
        channel.close()


def _check(reply: pb.PushReply, seq: int, client_id: str) -> None:
    if reply.seq != seq or reply.duplicate:
        raise RuntimeError(f"push {seq} of {client_id} was not applied as new: {reply}")


def _stream_pushes(channel: grpc.Channel, requests: list[pb.PushRequest], deadline: float, window: int,
                   latencies: list[float]) -> tuple[int, float]:
    """Pushes on one PushStream call, `window` unanswered at most, until `deadline`; (pushes answered, end time).

    Each request is its variant's bytes (encoded once) followed by its seq field: protobuf merges the two,
    so a push costs one bytes concatenation, like the unary loop's one serialization.
    """
    slots = threading.Semaphore(window)
    bodies = [r.SerializeToString() for r in requests]
    sent: list[float] = []

    def outgoing() -> Iterator[bytes]:
        while True:
            slots.acquire()
            if time.perf_counter() >= deadline:
                return
            seq = len(sent) + 1
            sent.append(time.perf_counter())
            yield bodies[seq % len(bodies)] + pb.PushRequest(seq=seq).SerializeToString()

    call = channel.stream_stream(PUSH_STREAM_METHOD, request_serializer=None,
                                 response_deserializer=pb.PushStreamReply.FromString)  # requests are bytes already
    answered, now = 0, time.perf_counter()
    for message in call(outgoing(), timeout=120):
        now = time.perf_counter()
        for reply in message.replies:
            answered += 1
            _check(reply, answered, requests[0].client_id)
            latencies.append(now - sent[answered - 1])
            slots.release()
    return answered, now
