"""Wire efficiency: bytes per class update against the raw `dim x 4` bytes, and what float16/bfloat16 cost.

Sizes are serialized `PushRequest`s (what gRPC frames), for d=64 and d=1600 and batches of 1, 16 and
256 classes; one case is also counted at the socket through a byte-counting loopback proxy (HTTP/2
framing and headers included). With `data_dir` and the shipped Omniglot weights, the accuracy change
of 600-way Omniglot classification when prototypes travel as float16/bfloat16 is measured too.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np

from fedrecon.benchmarks.common import ratio
from fedrecon.proto import codec
from fedrecon.proto.payloads import Deltas
from fedrecon.proto.v1 import recon_pb2 as pb

DTYPES = ("float32", "float16", "bfloat16")
SPACE = "conv4-0123456789abcdef"  # the length of a real encoder fingerprint


def class_ids(n: int, style: str = "omniglot") -> list[str]:
    """Class ids of realistic length: Omniglot-style `Alphabet/characterNN` (23 bytes), or short `c-NNNNNN`."""
    if style == "omniglot":
        return [f"Alphabet_{i // 40:02d}/character{i % 40 + 1:02d}" for i in range(n)]
    return [f"c-{i:06d}" for i in range(n)]


def push_bytes(dim: int, batch: int, dtype: str, style: str, seed: int = 0) -> int:
    """Serialized size of one push of `batch` classes of width `dim` in the given wire dtype."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((batch, dim)).astype(np.float32)
    counts = rng.integers(1, 20, size=batch)
    request = pb.PushRequest(client_id="client-0001", space=SPACE, seq=12345,
                             deltas=codec.encode_deltas(Deltas(class_ids(batch, style), counts, means), dtype))
    return request.ByteSize()


def size_table(styles: tuple[str, ...] = ("omniglot", "short")) -> dict:
    """Bytes per class and ratio to raw float32 for every (dim, batch, dtype, id style)."""
    out = {}
    for style in styles:
        for dim in (64, 1600):
            for batch in (1, 16, 256):
                for dtype in DTYPES:
                    size = push_bytes(dim, batch, dtype, style)
                    out[f"{style}_d{dim}_b{batch}_{dtype}"] = {
                        "bytes_per_class": size / batch, "raw_fp32_bytes_per_class": dim * 4,
                        "ratio": size / (batch * dim * 4)}
    return out


class CountingProxy:
    """A loopback TCP proxy that forwards to `target` and counts the bytes in each direction."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.up = 0
        self.down = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, "down"), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop accepting connections."""
        self.listener.close()


def socket_bytes(dim: int = 64, batch: int = 16, pushes: int = 200, style: str = "omniglot",
                 gzip: bool = False, dtype: str = "float32") -> dict:
    """Bytes counted at the socket per class update for `pushes` pushes of `batch` classes (float32).

    `gzip` turns on gRPC message compression for the channel (it mostly shrinks the class ids).
    """
    from fedrecon.server.serve import ServerConfig, serve
    from fedrecon.server.store import PrototypeStore

    store = PrototypeStore(None)
    server = serve(ServerConfig(insecure=True), store)
    proxy = CountingProxy(server.address)
    try:
        import grpc

        from fedrecon.proto.v1 import recon_pb2_grpc as rpc

        rng = np.random.default_rng(0)
        ids = class_ids(batch, style)
        compression = grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression
        with grpc.insecure_channel(proxy.address, compression=compression) as channel:
            stub = rpc.ReconnaissanceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=10)
            stub.Info(pb.InfoRequest(), timeout=10)  # connection set-up and first headers before counting
            up0, down0 = proxy.up, proxy.down
            message = 0
            for seq in range(1, pushes + 1):
                means = rng.standard_normal((batch, dim)).astype(np.float32)
                deltas = codec.encode_deltas(Deltas(ids, rng.integers(1, 20, size=batch), means), dtype)
                request = pb.PushRequest(client_id="client-0001", space=SPACE, seq=seq, deltas=deltas)
                message += request.ByteSize()
                stub.Push(request, timeout=10)
            up, down = proxy.up - up0, proxy.down - down0
    finally:
        proxy.close()
        server.stop(0)
    updates = pushes * batch
    return {"dim": dim, "batch": batch, "pushes": pushes, "gzip": gzip, "dtype": dtype,
            "socket_bytes_up_per_class": up / updates,
            "socket_bytes_down_per_class": down / updates, "message_bytes_per_class": message / updates,
            "socket_ratio_fp32": up / (updates * dim * 4), "framing_overhead_ratio": ratio(up, message)}


def accuracy_change(data_dir: Path, encoder_name: str = "omniglot", n_classes: int = 600, shots: int = 15,
                    queries: int = 5, seed: int = 0, cache_dir: Path | None = None) -> dict:
    """600-way Omniglot (evaluation alphabets) accuracy with prototypes sent as float32 / float16 / bfloat16."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine more threads spin against each other
    try:
        return _accuracy_change(data_dir, encoder_name, n_classes, shots, queries, seed, cache_dir)
    finally:
        torch.set_num_threads(previous)


def _accuracy_change(data_dir: Path, encoder_name: str, n_classes: int, shots: int, queries: int, seed: int,
                     cache_dir: Path | None) -> dict:
    from tqdm import tqdm

    from fedrecon.client.data.omniglot import load_omniglot
    from fedrecon.client.encoder import load_encoder
    from fedrecon.proto.prototypes import nearest

    encoder = load_encoder(encoder_name)
    data = load_omniglot(data_dir, background=False, image_size=encoder.config["image_size"], cache_dir=cache_dir)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(data.class_ids), size=min(n_classes, len(data.class_ids)), replace=False))
    protos, query_emb, query_lab = [], [], []
    for label, k in enumerate(tqdm(chosen, desc="wire accuracy: embedding", leave=False)):
        images = data.images(data.class_ids[k])
        order = rng.permutation(len(images))
        emb = encoder.embed(images[order[: shots + queries]])
        protos.append(emb[:shots].astype(np.float64).mean(0))
        query_emb.append(emb[shots:])
        query_lab += [label] * (len(emb) - shots)
    protos_arr, queries_arr, labels = np.stack(protos), np.concatenate(query_emb), np.array(query_lab)
    out: dict = {"classes": len(chosen), "shots": shots, "queries_per_class": queries, "encoder": encoder_name}
    for dtype in DTYPES:
        sent = codec.decode_matrix(codec.encode_matrix(protos_arr, dtype)).astype(np.float64)
        out[f"accuracy_{dtype}"] = float((nearest(queries_arr, sent).rows[:, 0] == labels).mean())
    for dtype in ("float16", "bfloat16"):
        out[f"change_pp_{dtype}"] = 100.0 * (out[f"accuracy_{dtype}"] - out["accuracy_float32"])
    return out


def run(quick: bool = False, data_dir: Path | None = None, encoder: str = "omniglot",
        cache_dir: Path | None = None) -> dict:
    """All wire figures (keys `wire.*` in bench.json); `encoder` (shipped name or path) for the accuracy check."""
    table = size_table()
    out: dict = {
        "ratio_fp32_d64_b16": table["omniglot_d64_b16_float32"]["ratio"],
        "ratio_fp16_d64_b16": table["omniglot_d64_b16_float16"]["ratio"],
        "ratio_bf16_d64_b16": table["omniglot_d64_b16_bfloat16"]["ratio"],
        "ratio_fp32_d64_b256": table["omniglot_d64_b256_float32"]["ratio"],
        "ratio_fp32_d1600_b16": table["omniglot_d1600_b16_float32"]["ratio"],
        "ratio_fp32_d64_b16_short_ids": table["short_d64_b16_float32"]["ratio"],
        "ratio_fp16_d64_b16_short_ids": table["short_d64_b16_float16"]["ratio"],
        "bytes_per_class_fp32_d64_b16": table["omniglot_d64_b16_float32"]["bytes_per_class"],
        "raw_bytes_per_class_d64": 64 * 4,
        "class_id_example": class_ids(1)[0],
        "sizes": table,
    }
    out["socket"] = socket_bytes(pushes=30 if quick else 200)
    out["socket_ratio_fp32_d64_b16"] = out["socket"]["socket_ratio_fp32"]
    out["socket_gzip"] = socket_bytes(pushes=30 if quick else 200, gzip=True)
    out["socket_ratio_fp32_d64_b16_gzip"] = out["socket_gzip"]["socket_ratio_fp32"]
    out["socket_gzip_fp16"] = socket_bytes(pushes=30 if quick else 200, gzip=True, dtype="float16")
    out["socket_ratio_fp16_d64_b16_gzip"] = out["socket_gzip_fp16"]["socket_ratio_fp32"]
    if data_dir is None:
        out["accuracy"] = {"skipped": "no --data-dir given (needs Omniglot images_evaluation and shipped weights)"}
    else:
        try:
            out["accuracy"] = accuracy_change(Path(data_dir), encoder, n_classes=100 if quick else 600,
                                              cache_dir=cache_dir)
        except (FileNotFoundError, OSError, ValueError, KeyError) as error:
            out["accuracy"] = {"skipped": f"could not run: {error}"}
    return out
