"""Mission schedules: which client learns which drawings of which class in which round, and what is tested.

A `Schedule` is plain data built from a data set's class ids and per-class image counts plus a seeded
generator, so every method of a run sees exactly the same missions. Builders:
- `class_incremental`: one client, classes in random order, evaluated at given class counts
  (Omniglot CIL / ANML protocol; mini-ImageNet 20-class test-split protocol).
- `federated`: classes dealt to K clients in missions, a merge after each round; optional non-IID
  dealing (unequal client shares and shots), overlapping classes and revisits.
- `fed_recon_benchmark`: the paper's mini-ImageNet benchmark (base classes known to the server first,
  then field missions of 5 classes x 30 images sampled without replacement).
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Visit:
    """One client learning some drawings of one class: indices into that class's images."""

    client: int
    class_id: str
    train: np.ndarray


@dataclass
class Round:
    """Missions learned before one merge."""

    visits: list[Visit]

    def clients(self) -> list[int]:
        """Clients with a mission this round, in order."""
        return sorted({v.client for v in self.visits})

    def classes(self) -> list[str]:
        """Classes learned this round (first-seen order)."""
        return list(dict.fromkeys(v.class_id for v in self.visits))


@dataclass
class Schedule:
    """Rounds of missions, the held-out test drawings per class, and how to report."""

    name: str
    clients: int
    rounds: list[Round]
    test: dict[str, np.ndarray]
    groups: dict[str, list[str]] = field(default_factory=dict)  # reported separately (e.g. base / field)
    eval_clients: list[int] = field(default_factory=list)  # clients scored after each merge
    eval_local: bool = False  # also score each client right after its own update (before the merge)
    base_rounds: int = 0  # leading rounds that load base knowledge (not field missions)

    def seen_after(self, r: int) -> list[str]:
        """Every class some client has learned in rounds 0..r (the superset evaluated after merge r)."""
        return list(dict.fromkeys(v.class_id for rd in self.rounds[: r + 1] for v in rd.visits))

    def summary(self) -> dict[str, Any]:
        """Counts that describe the schedule (for results.json)."""
        visits = [v for r in self.rounds for v in r.visits]
        return {"rounds": len(self.rounds), "classes": len(self.test), "visits": len(visits),
                "train_images": int(sum(len(v.train) for v in visits)),
                "test_images": int(sum(len(t) for t in self.test.values())), "clients": self.clients}


def _split(rng: np.random.Generator, n_images: int, train: int, test: int, class_id: str) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
    if n_images < train + test:
        raise ValueError(f"class {class_id!r} has {n_images} images; the protocol needs {train} train + {test} test")
    perm = rng.permutation(n_images)
    return perm[:train], perm[train : train + test]


def _pick_classes(rng: np.random.Generator, class_ids: Sequence[str], n: int) -> list[str]:
    if n > len(class_ids):
        raise ValueError(f"the protocol needs {n} classes; the data set has {len(class_ids)}")
    return [class_ids[i] for i in rng.permutation(len(class_ids))[:n]]


def class_incremental(class_ids: Sequence[str], counts: dict[str, int], rng: np.random.Generator, *, classes: int,
                      train_shots: int, test_shots: int, checkpoints: Sequence[int] | None = None,
                      classes_per_mission: int = 0, name: str = "class-incremental") -> Schedule:
    """One client learns `classes` random classes in random order; scored when it has seen each checkpoint."""
    order = _pick_classes(rng, class_ids, classes)
    if checkpoints:
        points = [c for c in checkpoints if c <= classes]
        if not points or points[-1] != classes:
            points.append(classes)
    else:
        step = classes_per_mission or classes
        points = list(range(step, classes, step)) + [classes]
    rounds, test, start = [], {}, 0
    for end in points:
        visits = []
        for cid in order[start:end]:
            train, test[cid] = _split(rng, counts[cid], train_shots, test_shots, cid)
            visits.append(Visit(0, cid, train))
        rounds.append(Round(visits))
        start = end
    return Schedule(name, 1, rounds, test, eval_clients=[0])


def federated(class_ids: Sequence[str], counts: dict[str, int], rng: np.random.Generator, *, classes: int,
              clients: int, classes_per_mission: int, train_shots: int, test_shots: int, non_iid: bool = False,
              overlap: float = 0.0, revisit: float = 0.0, min_shots: int = 1, alpha: float = 1.0,
              name: str = "federated") -> Schedule:
    """Classes dealt to `clients` in missions of `classes_per_mission`; one merge per round of missions.

    non_iid: clients get unequal shares (Dirichlet(alpha) per run) and each class unequal shots
    (`min_shots`..`train_shots`). overlap: share of classes also learned by a second client in the same
    round (the drawings split between them). revisit: share of classes seen again in a later round
    (with drawings not used before).
    """
    if clients < 1 or classes_per_mission < 1:
        raise ValueError("federated: clients and classes_per_mission must be >= 1")
    if not (0 <= overlap <= 1 and 0 <= revisit <= 1):
        raise ValueError("federated: overlap and revisit are fractions in [0, 1]")
    order = _pick_classes(rng, class_ids, classes)
    per_round = clients * classes_per_mission
    n_rounds = math.ceil(classes / per_round)
    share = rng.dirichlet([alpha] * clients) if non_iid else None
    rounds = [Round([]) for _ in range(n_rounds)]
    test: dict[str, np.ndarray] = {}
    for i, cid in enumerate(order):
        r = i // per_round
        owner = int(rng.choice(clients, p=share)) if share is not None else (i % per_round) // classes_per_mission
        train, test[cid] = _split(rng, counts[cid], train_shots, test_shots, cid)
        if non_iid:
            train = train[: int(rng.integers(min(min_shots, train_shots), train_shots + 1))]
        places = [(r, owner)]
        if clients > 1 and rng.random() < overlap:
            places.append((r, (owner + 1 + int(rng.integers(clients - 1))) % clients))
        if r + 1 < n_rounds and rng.random() < revisit:
            places.append((int(rng.integers(r + 1, n_rounds)), int(rng.integers(clients))))
        places = places[: len(train)]
        for (rr, client), part in zip(places, np.array_split(train, len(places)), strict=True):
            rounds[rr].visits.append(Visit(client, cid, part))
    rounds = [rd for rd in rounds if rd.visits]
    return Schedule(name, clients, rounds, test, eval_clients=list(range(clients)))


def fed_recon_benchmark(class_order: Sequence[str], counts: dict[str, int], rng: np.random.Generator, *,
                        base_classes: int = 50, field_classes: int = 50, train_per_class: int = 500,
                        test_per_class: int = 100, clients: int = 5, classes_per_mission: int = 5,
                        shots: int = 30, max_rounds: int | None = None,
                        name: str = "fed-recon-benchmark") -> Schedule:
    """The paper's mini-ImageNet benchmark: the first half of `class_order` is base, the second half field.

    Round 0: base knowledge (every base training image) pushed by a pseudo-client (index `clients`).
    Then each round every client samples `classes_per_mission` field classes with images left and takes
    up to `shots` unused training images of each, until all field training images are used.
    """
    half = len(class_order) // 2
    base, fieldc = list(class_order[:half])[:base_classes], list(class_order[half:])[:field_classes]
    if len(base) < base_classes or len(fieldc) < field_classes:
        raise ValueError(f"fed-recon benchmark: class order has {len(class_order)} classes; need 2 x "
                         f"max({base_classes}, {field_classes})")
    test: dict[str, np.ndarray] = {}
    left: dict[str, list[int]] = {}
    base_visits = []
    for cid in base + fieldc:
        train, test[cid] = _split(rng, counts[cid], train_per_class, test_per_class, cid)
        if cid in fieldc:
            left[cid] = train.tolist()
        else:
            base_visits.append(Visit(clients, cid, train))
    rounds = [Round(base_visits)]
    while any(left.values()) and (max_rounds is None or len(rounds) - 1 < max_rounds):
        visits = []
        for client in range(clients):
            avail = [c for c in fieldc if left[c]]
            if not avail:
                break
            for k in rng.permutation(len(avail))[:classes_per_mission]:
                cid = avail[int(k)]
                visits.append(Visit(client, cid, np.array(left[cid][:shots])))
                left[cid] = left[cid][shots:]
        rounds.append(Round(visits))
    return Schedule(name, clients, rounds, test, groups={"base": base, "field": fieldc},
                    eval_clients=list(range(clients)), eval_local=True, base_rounds=1)


BUILDERS = {"class-incremental": class_incremental, "federated": federated, "fed-recon-benchmark": fed_recon_benchmark}


def parameters(protocol: str) -> tuple[list[str], list[str]]:
    """(required, optional) parameter names a protocol's builder takes from the config's [protocol] table."""
    if protocol not in BUILDERS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(sorted(BUILDERS))}")
    params = list(inspect.signature(BUILDERS[protocol]).parameters.values())[3:]  # after class ids, counts, rng
    params = [p for p in params if p.name != "name"]
    return ([p.name for p in params if p.default is inspect.Parameter.empty],
            [p.name for p in params if p.default is not inspect.Parameter.empty])


def check_parameters(protocol: str, params: dict[str, Any]) -> None:
    """Refuse unknown or missing protocol parameters in one line that names them and lists the valid ones."""
    required, optional = parameters(protocol)
    valid = required + optional
    unknown = [k for k in params if k not in valid]
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, valid, 1)) else repr(k)
                 for k in unknown]
        raise ValueError(f"protocol {protocol!r}: unknown parameter {', '.join(hints)}; valid: {', '.join(valid)}")
    missing = [k for k in required if k not in params]
    if missing:
        raise ValueError(f"protocol {protocol!r}: missing parameter {', '.join(missing)}; valid: {', '.join(valid)}")


def build(protocol: str, class_ids: Sequence[str], counts: dict[str, int], seed: int, params: dict[str, Any],
          name: str) -> Schedule:
    """Build a named protocol's schedule for one run (`seed` fixes classes, order and drawings)."""
    check_parameters(protocol, params)
    rng = np.random.default_rng(seed)
    return BUILDERS[protocol](class_ids, counts, rng, name=name, **params)
