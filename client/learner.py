"""The client a user runs: an encoder, a durable local prototype memory and, optionally, a merge server.

Learning a class adds its embeddings to running float64 sums and counts (`PrototypeMemory`); `sync`
pushes what was learned exactly once and pulls what other clients merged; `classify` answers with
the nearest prototype over every class the client knows (pulled, local, or in a push in flight).
The CLI (`fedrecon client learn|sync|classify`), the demo and the README's Python example use this class.

    encoder = load_encoder("omniglot")
    with Learner.open(encoder, "alice", server="127.0.0.1:50051", state_dir="state") as learner:
        learner.learn_files("my-images")         # ROOT/<class>/<image files>
        learner.sync()
        print(learner.classify(["query.png"])[0].label)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from fedrecon.client.data.folder import ignored_entries, labelled_files
from fedrecon.client.grpc_merger import GrpcMerger
from fedrecon.client.intake import Intake, chunks
from fedrecon.client.memory import Prediction, PrototypeMemory, rank
from fedrecon.client.recon_client import ReconClient
from fedrecon.client.replica import Replica
from fedrecon.client.state import ClientState
from fedrecon.client.state_dir import state_path
from fedrecon.client.unknown import auto_threshold, with_unknown
from fedrecon.proto import codec
from fedrecon.proto.payloads import Deltas, PushAck, Snapshot
from fedrecon.proto.prototypes import ClassRows, PrototypeTable
from fedrecon.proto.v1 import recon_pb2 as pb

if TYPE_CHECKING:
    from fedrecon.client.embedding import ImageEncoder as Encoder

ImageInput = str | Path | Image.Image


class Learner:
    """Encoder + prototype memory (+ durable state + server): learn, sync, classify."""

    def __init__(self, encoder: Encoder, memory: PrototypeMemory | None = None, *, batch_size: int = 256,
                 state: ClientState | None = None, server: ReconClient | None = None) -> None:
        self.encoder = encoder
        self.state = state if state is not None else (server.state if server is not None else None)
        client_id = self.state.client_id if self.state is not None else ""
        self.replica = Replica(client_id, encoder.fingerprint, memory, self.state)
        if self.memory.dim not in (None, encoder.dim):
            raise ValueError(f"memory dim {self.memory.dim} does not match the encoder's {encoder.dim}")
        self.batch_size = batch_size
        self.server = server
        self._learned: set[tuple[str, str]] = set()  # (content hash, class) learned by a learner without a state

    @classmethod
    def open(cls, encoder: Encoder, client_id: str, server: str | None = None, *,
             state_dir: str | Path | None = None, **client_options: Any) -> Learner:
        """A learner whose state lives in `state_dir/<client_id>.db`, talking to `server` (None: offline)."""
        state = ClientState(state_path(state_dir, client_id), client_id)
        try:
            client = ReconClient(server, client_id, state=state, **client_options) if server else None
            return cls(encoder, state=state, server=client)
        except BaseException:
            state.close()
            raise

    def close(self) -> None:
        """Close the server connection and the state."""
        if self.server is not None:
            self.server.close()
        if self.state is not None:
            self.state.close()

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def memory(self) -> PrototypeMemory:
        """The local and pulled prototypes (the replica's)."""
        return self.replica.memory

    @property
    def space(self) -> str:
        """The embedding space (encoder fingerprint) every push from this learner names."""
        return self.encoder.fingerprint

    # ------------------------------------------------------------------ learning
    def embed(self, images: np.ndarray | Sequence[ImageInput]) -> np.ndarray:
        """Embed preprocessed arrays (N, C, S, S), or raw image files / PIL images (the encoder preprocesses them)."""
        if isinstance(images, np.ndarray):
            return self.encoder.embed(images, self.batch_size)
        return self.encoder.embed_images(list(images), self.batch_size, progress=True)

    def learn(self, images: np.ndarray | Sequence[ImageInput], class_ids: Sequence[str]) -> dict[str, int]:
        """Add labelled images to their classes' local sums (persisted); returns counts of classes and examples."""
        if len(images) != len(class_ids):
            raise ValueError(f"learn: {len(images)} images but {len(class_ids)} class ids")
        return self.add_embeddings(self.embed(images) if len(images) else np.zeros((0, self.encoder.dim)), class_ids)

    def add_embeddings(self, embeddings: np.ndarray, class_ids: Sequence[str]) -> dict[str, int]:
        """Add already embedded examples (one class id per row) to the local sums (persisted)."""
        if len(embeddings):
            self.memory.add_examples(list(class_ids), embeddings)
            if self.state is not None:
                self.state.save_local(self.space, self.memory)
        return {"classes": len(set(class_ids)), "examples": len(class_ids)}

    def learn_files(self, paths: str | Path | Sequence[str | Path], label: str | None = None, *,
                    allow_duplicates: bool = False, skip_bad: bool = False) -> dict[str, Any]:
        """Learn ImageFolder roots (`ROOT/<class>/<images>`), or image files/folders of class `label`.

        An image this client learned before for the same class and space (same file content) is skipped, counted in
        `skipped_duplicates`, unless `allow_duplicates`. A file that is no image is refused, naming it, or with
        `skip_bad` skipped and listed. Returns the counts (`Intake.report`).
        """
        paths = [paths] if isinstance(paths, str | Path) else list(paths)
        pairs = labelled_files(paths, label)
        intake = Intake(ignored=ignored_entries(paths))
        state = self.state

        def known(hashes: list[str]) -> set[tuple[str, str]]:
            if state is not None:
                return state.learned_hashes(self.space, hashes)
            wanted = set(hashes)
            return {pair for pair in self._learned if pair[0] in wanted}

        embeddings, class_ids = [], []
        with tqdm(total=len(pairs), desc="learning", unit="img", disable=len(pairs) < 500, leave=False) as bar:
            for items in chunks(pairs, intake, skip_bad, known, allow_duplicates):
                names = [str(i.path) for i in items]
                embeddings.append(self.encoder.embed_images([i.image for i in items], self.batch_size, names=names))
                class_ids += [i.class_id for i in items]
                intake.learned += [(i.digest, i.class_id) for i in items]
                bar.update(len(items))
        if class_ids:
            self.memory.add_examples(class_ids, np.concatenate(embeddings))
            if state is not None:
                state.save_learned(self.space, self.memory, intake.learned)
            self._learned |= set(intake.learned)
        return intake.report()


    # ------------------------------------------------------------------ sync
    def _client(self) -> ReconClient:
        if self.server is None:
            raise RuntimeError("this learner is offline (no server); give a server address to sync")
        return self.server

    def _merger(self) -> GrpcMerger:
        """The server's stateless merger (the replica numbers and delivers its own outbox over it)."""
        return self._client().merger

    def push(self) -> list[PushAck]:
        """Push every un-pushed delta (and a push left pending by an earlier run) exactly once."""
        return self.replica.push(self._merger())

    def pull(self) -> Snapshot:
        """Pull the classes merged since this client's last pull into the memory (persisted); returns what came."""
        self._client().bind()
        return self.replica.pull(self._merger())

    def sync(self) -> dict[str, Any]:
        """Push what is pending, then pull what changed (`Replica.sync`); returns a JSON-ready summary."""
        resumed = len(self.state.all_pending) if self.state is not None else 0
        synced = self.replica.sync(self._merger())
        acks, pulled = synced.acks, synced.pulled
        return {"pushes": len(acks), "classes_pushed": sum(a.classes for a in acks), "resumed_pushes": resumed,
                "seq": acks[-1].seq if acks else (self.state.last_seq if self.state else 0),
                "pulled": len(pulled.class_ids), "version": self.memory.global_version,
                "pulled_all_again": pulled.reset, "known_classes": len(self.class_ids())}

    # ------------------------------------------------------------------ answering
    def _in_flight(self) -> list[PrototypeTable]:
        """The deltas of pushes recorded but not yet acknowledged (they count until the server has them)."""
        tables = []
        for pending in self.state.all_pending if self.state is not None else []:
            if pending.space != self.space:
                continue
            deltas = codec.decode_deltas(pb.PushRequest.FromString(pending.request).deltas)
            table = PrototypeTable(deltas.dim)
            table.add(deltas.class_ids, deltas.counts, deltas.means)
            tables.append(table)
        return tables

    def prototypes(self) -> ClassRows:
        """Every class this client knows: the pulled global table plus local and in-flight deltas."""
        return self.memory.union(*self._in_flight())

    def class_ids(self) -> list[str]:
        """Names of every class this client can recognise."""
        table = self.prototypes()
        return [table.class_ids[r] for r in table.live_rows()]

    def classify(self, images: np.ndarray | Sequence[ImageInput], top_k: int = 2,
                 unknown: str | float | None = None) -> list[Prediction]:
        """Nearest class of each image (with its squared distance and the next `top_k - 1` classes).

        With `unknown` (`"auto"` or a squared distance), an image farther than the threshold from every
        prototype is answered `unknown` (its nearest classes follow as alternatives); see `client.unknown`.
        """
        table = self.prototypes()
        if len(table.live_rows()) == 0 and self.state is not None:
            self._refuse_if_classes_are_in_another_space()
        threshold = self.unknown_threshold(unknown, table)
        predictions = rank(table, self.embed(images), top_k)
        return predictions if threshold is None else with_unknown(predictions, threshold)

    def unknown_threshold(self, unknown: str | float | None, table: ClassRows | None = None) -> float | None:
        """The squared distance beyond which `classify` answers unknown: `auto` calibrates it from the prototypes."""
        if unknown is None:
            return None
        return auto_threshold(table or self.prototypes()) if unknown == "auto" else float(unknown)

    def _refuse_if_classes_are_in_another_space(self) -> None:
        """This encoder's space is empty but the state has classes in another (e.g. the default encoder changed)."""
        others = {s: n for s, n in self.state.classes_per_space().items() if s != self.space}
        if not others:
            return
        space, n = max(others.items(), key=lambda kv: kv[1])
        from fedrecon.client.encoder import shipped_name

        name = shipped_name(space)
        use = f"--encoder {name}" if name else "the encoder that made it"
        raise ValueError(f"classify: this client knows no classes in space {self.space} yet, but its state holds {n} "
                         f"in space {space}: classify with {use}, or learn (and sync) again with this encoder")

    def predict(self, images: np.ndarray | Sequence[ImageInput]) -> list[str]:
        """Nearest-prototype class id of each image over every known class."""
        return [p.label for p in self.classify(images, top_k=1)]

    def accuracy(self, images: np.ndarray | Sequence[ImageInput], class_ids: Sequence[str]) -> float:
        """Fraction of `images` predicted as their `class_ids`."""
        if len(images) == 0:
            raise ValueError("accuracy: no images")
        return float(np.mean([p == t for p, t in zip(self.predict(images), class_ids, strict=True)]))

    def pending(self) -> Deltas:
        """Deltas not yet pushed (unpacks as class_ids, counts, means)."""
        return self.memory.pending()

