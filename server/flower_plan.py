"""Mission planning for a Flower run: ask a node what its data set holds, then deal the missions (seeded).

`describe` sends one QUERY message; `plan_missions` deals distinct classes into per-client missions and
holds out query images for each; `ReconPlan` is the result the `PrototypeAveraging` strategy runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrecon.proto.flower_records import Assignment


@dataclass(frozen=True)
class ReconPlan:
    """Who learns what: `missions[round][client]`, and the held-out image indices of every class."""

    missions: tuple[tuple[Assignment, ...], ...]
    queries: dict[str, tuple[int, ...]]

    @property
    def rounds(self) -> int:
        """Number of mission rounds."""
        return len(self.missions)

    @property
    def clients(self) -> int:
        """Number of clients (missions per round)."""
        return len(self.missions[0]) if self.missions else 0

    def superset(self, through_round: int) -> list[str]:
        """Every class learned by any client in rounds 1..through_round, in plan order."""
        seen: dict[str, None] = {}
        for missions in self.missions[:through_round]:
            for mission in missions:
                seen.update(dict.fromkeys(mission.classes))
        return list(seen)

    def slices(self, classes: Sequence[str], parts: int) -> list[Assignment]:
        """The held-out images of `classes` split into `parts` contiguous slices."""
        chunks = np.array_split(np.arange(len(classes)), max(1, parts))
        return [Assignment(tuple(classes[i] for i in chunk), tuple(self.queries[classes[i]] for i in chunk))
                for chunk in chunks]

    def key(self, space: str) -> str:
        """Short fingerprint of the missions and the space: the idempotency key of this plan's merges."""
        text = repr((space, self.missions, sorted(self.queries.items())))
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def plan_missions(
    class_ids: Sequence[str], sizes: Sequence[int], *, clients: int, rounds: int, ways: int, shots: int,
    queries: int, seed: int,
) -> ReconPlan:
    """Deal `clients * rounds * ways` distinct classes (seeded order) into missions of `ways` classes.

    Each class's images are shuffled (seeded); the first `shots` are learned, the next `queries` held out.
    """
    if min(clients, rounds, ways, shots, queries) < 1:
        raise ValueError("plan_missions: clients, rounds, ways, shots and queries must all be >= 1")
    if len(sizes) != len(class_ids):
        raise ValueError(f"plan_missions: {len(class_ids)} class ids but {len(sizes)} sizes")
    needed = clients * rounds * ways
    if needed > len(class_ids):
        raise ValueError(f"plan_missions: {clients} clients x {rounds} missions x {ways} ways = {needed} classes, "
                         f"but the data set has only {len(class_ids)}")
    small = [c for c, n in zip(class_ids, sizes, strict=True) if n < shots + queries]
    if small:
        raise ValueError(f"plan_missions: {len(small)} classes have fewer than shots+queries={shots + queries} "
                         f"images (e.g. {small[0]!r})")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(class_ids))[:needed]
    learn: dict[str, tuple[int, ...]] = {}
    held: dict[str, tuple[int, ...]] = {}
    for i in order:
        perm = rng.permutation(int(sizes[i]))
        learn[class_ids[i]] = tuple(int(v) for v in perm[:shots])
        held[class_ids[i]] = tuple(int(v) for v in perm[shots : shots + queries])
    chosen = [class_ids[i] for i in order]
    missions = []
    for r in range(rounds):
        row = []
        for k in range(clients):
            start = (r * clients + k) * ways
            classes = tuple(chosen[start : start + ways])
            row.append(Assignment(classes, tuple(learn[c] for c in classes)))
        missions.append(tuple(row))
    return ReconPlan(tuple(missions), held)


@dataclass
class Described:
    """What a client's query answer says about the data set and encoder it will use."""

    space: str
    dim: int
    class_ids: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)


def describe(grid: Grid, task: dict, timeout: float = 600.0) -> Described:
    """Ask the first connected node (a QUERY message) for its encoder space and its data set's classes."""
    nodes = sorted(int(n) for n in grid.get_node_ids())
    if not nodes:
        raise RuntimeError("no Flower nodes connected")
    msg = Message(content=RecordDict({"config": ConfigRecord({**task, "what": "describe"})}),
                  message_type=MessageType.QUERY, dst_node_id=nodes[0])
    replies = list(grid.send_and_receive([msg], timeout=timeout))
    if not replies or replies[0].has_error():
        reason = replies[0].error.reason if replies else "no reply"
        raise RuntimeError(f"node {nodes[0]} could not describe its data set: {reason}")
    config = replies[0].content["config"]
    return Described(str(config["space"]), int(config["dim"]), [str(c) for c in config["class-ids"]],
                     [int(n) for n in config["sizes"]])
