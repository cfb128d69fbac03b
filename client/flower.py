"""The fedrecon Flower `ClientApp`: learn a mission's classes as prototypes, return deltas, evaluate.

Messages carry a `config` ConfigRecord (task: data set, data dir, encoder, wire dtype; the mission or
evaluation slice; the sync versions) and a `prototypes` ArrayRecord (merged classes changed since this
client's last round). The client keeps the merged table it has seen in `context.state`, so each round
only the changes travel; each round its `Replica` syncs with the round as its merger (`RoundMerger`).
A supernode's `--node-config "data-dir='...'"` overrides the task's data dir.
It knows nothing of baselines: the experiments' app (`fedrecon.experiments.flower_app`) calls `register`
and adds its own handlers.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrecon.client.data import DEFAULT_SIZES, ImageSet, load_dataset
from fedrecon.client.data.registry import GLYPH_DEFAULTS
from fedrecon.client.encoder import Encoder, load_encoder_spec
from fedrecon.client.memory import PrototypeMemory
from fedrecon.client.replica import Replica
from fedrecon.proto.flower_records import Assignment, prototypes_record, read_prototypes
from fedrecon.proto.payloads import Deltas, PushAck, Snapshot

STATE_ARRAYS = "fedrecon-global"
STATE_META = "fedrecon-meta"
DEFAULT_CACHE = Path(".fedrecon-cache")
FLOWER_DATASETS = ("glyphs", "omniglot")
EVAL_CHUNK = 1024  # evaluation images embedded and classified at a time


# --------------------------------------------------------------------------------- data and encoder
def _data_dir(task: dict[str, Any], context: Context | None) -> str:
    node = dict(context.node_config) if context is not None else {}
    return str(node.get("data-dir") or task.get("data-dir") or "")


@functools.lru_cache(maxsize=4)
def load_data(dataset: str, data_dir: str, glyph_classes: int, glyph_drawings: int, data_seed: int) -> ImageSet:
    """The task's data set through the registry (cached per process): `glyphs` (generated), or Omniglot
    `images_evaluation`."""
    if dataset not in FLOWER_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected 'glyphs' or 'omniglot'")
    if dataset == "omniglot" and not data_dir:
        raise ValueError("dataset 'omniglot' needs data-dir (the folder with images_evaluation.zip)")
    if dataset == "glyphs":
        spec = {"name": "glyphs", "classes": glyph_classes, "drawings": glyph_drawings, "seed": data_seed,
                "cache_dir": data_dir or DEFAULT_CACHE}
    else:
        spec = {"name": "omniglot", "background": False, "cache_dir": DEFAULT_CACHE}
    return load_dataset(spec, data_dir or None, DEFAULT_SIZES[dataset][0])


@functools.lru_cache(maxsize=4)
def get_encoder(name: str, seed: int = 0, dataset: str = "glyphs") -> Encoder:
    """The frozen encoder (cached per process): a shipped name, a checkpoint path, or `random` (seeded)."""
    return load_encoder_spec(name, dataset, seed=seed, device="cpu")


def task_of(config: ConfigRecord) -> dict[str, Any]:
    """The task keys of a message config, with defaults."""
    return {"dataset": str(config.get("dataset", "glyphs")), "data-dir": str(config.get("data-dir", "")),
            "encoder": str(config.get("encoder", "glyphs")),
            "glyph-classes": int(config.get("glyph-classes", GLYPH_DEFAULTS["classes"])),
            "glyph-drawings": int(config.get("glyph-drawings", GLYPH_DEFAULTS["drawings"])),
            "data-seed": int(config.get("data-seed", GLYPH_DEFAULTS["seed"])),
            "encoder-seed": int(config.get("encoder-seed", 0))}


def data_for(task: dict[str, Any], context: Context | None = None) -> Any:
    """Load the data set a task names (honouring the node's data-dir)."""
    return load_data(task["dataset"], _data_dir(task, context), task["glyph-classes"], task["glyph-drawings"],
                     task["data-seed"])


def encoder_for(task: dict[str, Any]) -> Encoder:
    """Load the encoder a task names."""
    return get_encoder(task["encoder"], task["encoder-seed"], task["dataset"])


def assigned_images(data: Any, assignment: Assignment) -> tuple[np.ndarray, list[str]]:
    """The images an assignment names, stacked, with one class id per image."""
    images, labels = [], []
    for cid, idx in zip(assignment.classes, assignment.images, strict=True):
        pics = data.images(cid)
        if idx and max(idx) >= len(pics):
            raise ValueError(f"class {cid!r} has {len(pics)} images; the assignment asks for index {max(idx)}")
        images.append(pics[list(idx)])
        labels += [cid] * len(idx)
    if not images:
        return np.zeros((0, *data.image_shape), np.float32), []
    return np.concatenate(images), labels


def parts(assignment: Assignment, limit: int) -> list[Assignment]:
    """`assignment` cut between classes into parts of at most `limit` images (a class with more is a part alone)."""
    out: list[Assignment] = []
    start = size = 0
    for i, idx in enumerate(assignment.images):
        if size and size + len(idx) > limit:
            out.append(Assignment(assignment.classes[start:i], assignment.images[start:i]))
            start, size = i, 0
        size += len(idx)
    if start < len(assignment.classes):
        out.append(Assignment(assignment.classes[start:], assignment.images[start:]))
    return out


def score(data: Any, assignment: Assignment, encoder: Encoder, memory: PrototypeMemory,
          chunk: int = EVAL_CHUNK) -> tuple[int, int]:
    """(correct, queries) of an evaluation slice against every class `memory` knows, embedded and classified
    `chunk` images at a time, so memory stays flat however large the slice (10 clients evaluating 30,000
    classes get 15,000 images each)."""
    correct = queries = 0
    for part in parts(assignment, chunk):
        images, labels = assigned_images(data, part)
        if len(images):
            predicted = memory.classify(encoder.embed(images))
            correct += int(sum(p == t for p, t in zip(predicted, labels, strict=True)))
            queries += len(labels)
    return correct, queries


# --------------------------------------------------------------------------------- client state
def restore_memory(context: Context, space: str) -> PrototypeMemory:
    """The merged table this client holds (from `context.state`), empty on a first round."""
    memory = PrototypeMemory()
    if STATE_META in context.state:
        meta = context.state[STATE_META]
        if str(meta["space"]) == space:
            ids, counts, means = read_prototypes(context.state[STATE_ARRAYS], list(meta["class-ids"]))
            memory.apply_pull(ids, counts, means, int(meta["version"]))
    return memory


def save_memory(context: Context, memory: PrototypeMemory, space: str, dtype: str) -> None:
    """Keep the merged table in `context.state` for the next round (means in the wire dtype)."""
    table = memory.global_table
    rows = table.live_rows()
    context.state[STATE_ARRAYS] = prototypes_record(table.counts[rows], table.means(rows), dtype, table.dim or 0)
    context.state[STATE_META] = ConfigRecord({"space": space, "version": memory.global_version,
                                              "class-ids": [table.class_ids[r] for r in rows]})


class RoundMerger:
    """One Flower round as the client's `Merger`: the server's message is the pull (the merged classes changed
    since the version it names), and the reply carries the push (Flower is server-driven)."""

    def __init__(self, msg: Message, dtype: str, dim: int) -> None:
        self.msg, self.config = msg, msg.content["config"]
        self.dtype, self.dim = dtype, dim
        self.pushed: RecordDict | None = None

    @property
    def reply(self) -> RecordDict:
        """The round's reply: the pushed deltas, or an empty push when nothing was pending."""
        return self.pushed or self._reply([], np.zeros(0, np.int64), np.zeros((0, self.dim)))

    def _reply(self, ids: list[str], counts: np.ndarray, means: np.ndarray) -> RecordDict:
        return RecordDict({"prototypes": prototypes_record(counts, means, self.dtype, self.dim),
                           "config": _reply_config(self.config, **{"class-ids": ids}),
                           "metrics": MetricRecord({"num-examples": int(counts.sum()), "classes": len(ids)})})

    def push(self, client_id: str, seq: int, space: str, deltas: Deltas) -> PushAck:
        """The deltas go up as this round's reply (the server merges them like a gRPC push)."""
        self.pushed = self._reply(list(deltas.class_ids), deltas.counts, deltas.means)
        return PushAck(seq, 0, len(deltas.class_ids))

    def pull(self, space: str, since: int, epoch: str = "") -> Snapshot:
        """The merged prototypes the server sent; refuse a sync that skips versions this client lacks (since 0 is a
        full table that replaces what the client holds)."""
        sent = int(self.config["since"])
        if sent != since and sent != 0:
            raise RuntimeError(f"client {int(self.config['client'])}: server sent changes since version {sent}, but "
                               f"this client holds version {since} (client state lost or server restarted)")
        ids, counts, means = read_prototypes(self.msg.content["prototypes"], list(self.config["global-classes"]))
        return Snapshot(space, int(self.config["version"]), ids, counts, means, reset=sent == 0 and since != 0)


def _reply_config(config: ConfigRecord, **extra: Any) -> ConfigRecord:
    return ConfigRecord({"client": int(config["client"]), "space": str(config["space"]), **extra})


# --------------------------------------------------------------------------------- handlers
def query(msg: Message, context: Context) -> Message:
    """Describe the task's data set and encoder: space fingerprint, dim, class ids and images per class."""
    task = task_of(msg.content["config"])
    data = data_for(task, context)
    encoder = encoder_for(task)
    if tuple(data.image_shape) != (encoder.config["channels"], encoder.config["image_size"],
                                   encoder.config["image_size"]):
        raise ValueError(f"encoder {task['encoder']!r} expects images of {encoder.config['image_size']} px, "
                         f"data set {task['dataset']!r} has {data.image_shape}")
    reply = ConfigRecord({"space": encoder.fingerprint, "dim": encoder.dim, "class-ids": list(data.class_ids),
                          "sizes": [int(data.count(c)) for c in data.class_ids]})
    return Message(RecordDict({"config": reply}), reply_to=msg)


def train(msg: Message, context: Context) -> Message:
    """Learn the mission's classes, then `Replica.sync`: their deltas go up as the reply, the server's changes apply."""
    config = msg.content["config"]
    task, client, space, dtype = task_of(config), int(config["client"]), str(config["space"]), str(config["dtype"])
    encoder = encoder_for(task)
    if encoder.fingerprint != space:
        raise RuntimeError(f"client {client}: encoder space {encoder.fingerprint} != the federation's {space}")
    replica = Replica(f"flower-{client}", space, restore_memory(context, space))
    images, labels = assigned_images(data_for(task, context), Assignment.from_config(config, "mission"))
    if len(images):
        replica.memory.add_examples(labels, encoder.embed(images))
    merger = RoundMerger(msg, dtype, encoder.dim)
    replica.sync(merger)
    save_memory(context, replica.memory, space, dtype)
    return Message(merger.reply, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Apply the server's sync and classify the evaluation slice against every class this client knows."""
    config = msg.content["config"]
    task, client, space = task_of(config), int(config["client"]), str(config["space"])
    replica = Replica(f"flower-{client}", space, restore_memory(context, space))
    replica.sync(RoundMerger(msg, str(config["dtype"]), 0))
    save_memory(context, replica.memory, space, str(config["dtype"]))
    correct, queries = score(data_for(task, context), Assignment.from_config(config, "eval"), encoder_for(task),
                             replica.memory)
    reply = RecordDict({"config": _reply_config(config),
                        "metrics": MetricRecord({"correct": correct, "queries": queries, "num-examples": queries})})
    return Message(reply, reply_to=msg)


def register(client_app: ClientApp) -> ClientApp:
    """Add fedrecon's handlers (the default query, train and evaluate) to `client_app`; other apps add theirs."""
    client_app.query()(query)
    client_app.train()(train)
    client_app.evaluate()(evaluate)
    return client_app


app = register(ClientApp())
