"""A demo client process: its own data and encoder, a `ReconClient` to the server, driven by JSON lines on stdin.

Commands (one JSON object per line; one JSON reply per line on stdout):
- `{"cmd": "learn", "visits": [[class_id, [idx, ...]], ...], "test": [[class_id, [idx, ...]], ...]}`:
  embed and learn the mission, score the client's own knowledge on `test` (before merging), push.
- `{"cmd": "sync", "test": [...]}`: pull what the server merged, score on `test`.
- `{"cmd": "quit"}`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from fedrecon.client.data import load_dataset
from fedrecon.client.encoder import load_encoder_spec
from fedrecon.client.learner import Learner
from fedrecon.client.recon_client import ReconClient
from fedrecon.experiments.datasets import take
from fedrecon.experiments.transports import pull_reply_size, push_request_size


def gather(data: object, pairs: list[list]) -> tuple[np.ndarray, list[str]]:
    """Images and labels of `[[class_id, [idx...]], ...]`."""
    images = np.concatenate([take(data, cid, np.asarray(idx)) for cid, idx in pairs])
    return images, [cid for cid, idx in pairs for _ in idx]


def score(learner: Learner, images: np.ndarray, labels: list[str]) -> float:
    """Accuracy (%) of the learner's nearest-prototype answers over every class it knows."""
    if not learner.class_ids():
        return 0.0
    return 100.0 * learner.accuracy(images, labels)


def main(argv: list[str] | None = None) -> int:
    """Serve the coordinator's commands until `quit` or end of input."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--address", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--dataset", required=True, help="JSON dataset spec (as in the experiment configs)")
    p.add_argument("--data-dir")
    p.add_argument("--encoder", required=True)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (several clients share the cores)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = json.loads(args.dataset)
    encoder = load_encoder_spec(args.encoder, spec["name"])
    data = load_dataset(spec, args.data_dir, encoder.config["image_size"])
    learner = Learner(encoder, server=ReconClient(args.address, args.client_id, timeout=30.0))
    space = learner.space
    print(json.dumps({"ready": args.client_id, "space": space}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        reply: dict = {}
        if msg["cmd"] == "learn":
            images, labels = gather(data, msg["visits"])
            t0 = time.perf_counter()
            embeddings = learner.embed(images)
            embed_s = time.perf_counter() - t0
            learner.add_embeddings(embeddings, labels)
            learn_s = time.perf_counter() - t0
            # what this client alone answers on the merged superset, before it pulls the others' classes
            test_images, test_labels = gather(data, msg["test"])
            reply["before"] = score(learner, test_images, test_labels)
            t1 = time.perf_counter()
            pending = learner.pending()
            acks = learner.push()
            n = len({cid for cid, _ in msg["visits"]})
            reply["update_ms_per_class"] = 1000.0 * (learn_s + time.perf_counter() - t1) / max(1, n)
            reply["embed_ms_per_class"] = 1000.0 * embed_s / max(1, n)
            reply["bytes_up"] = push_request_size(args.client_id, space, acks[-1].seq, pending,
                                                  learner.server.merger.dtype) if acks else 0
            reply["classes_pushed"] = len(pending.class_ids)
        elif msg["cmd"] == "sync":
            pulled = learner.replica.sync(learner.server.merger).pulled  # nothing left to push: the pull
            reply["bytes_down"] = pull_reply_size(pulled, learner.server.merger.dtype)
            reply["classes_known"] = len(learner.class_ids())
            test_images, test_labels = gather(data, msg["test"])
            reply["after"] = score(learner, test_images, test_labels)
        print(json.dumps(reply), flush=True)
    learner.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
