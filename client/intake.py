"""What a `learn` takes in: each file read once, its content hash, and the files it skips (bad or seen before).

A client remembers the content hash (sha256 of the file bytes) of every image it learned, per space and class,
so the same image given again for a class (a re-run, a copy under another name) is skipped and reported: no
class ever counts an image twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from fedrecon.client.data.images import DataError, decode_image, read_bytes

CHUNK = 256


@dataclass
class Intake:
    """The tally of one learn: what was learned, skipped as a duplicate, skipped as bad, or ignored."""

    learned: list[tuple[str, str]] = field(default_factory=list)  # (content hash, class id)
    duplicates: int = 0
    bad: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)
    ignored: list[Path] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """The JSON-ready counts (`skipped_bad_files` names each bad file skipped)."""
        return {"classes": len({c for _, c in self.learned}), "examples": len(self.learned),
                "skipped_duplicates": self.duplicates, "skipped_bad": len(self.bad),
                "skipped_bad_files": [str(p) for p, _ in self.bad], "ignored_files": len(self.ignored)}


@dataclass
class Item:
    """One readable image file: where it is, its class, its content hash and the decoded image."""

    path: Path
    class_id: str
    digest: str
    image: Image.Image


def read_item(path: Path, class_id: str) -> Item:
    """Read and decode one file (DataError naming it if it is no image)."""
    data = read_bytes(path)
    return Item(path, class_id, hashlib.sha256(data).hexdigest(), decode_image(data, str(path)))


def chunks(pairs: Sequence[tuple[Path, str]], intake: Intake, skip_bad: bool,
           known: Callable[[list[str]], set[tuple[str, str]]], allow_duplicates: bool) -> Iterator[list[Item]]:
    """The files to learn, CHUNK at a time: bad files skipped (with `skip_bad`) or refused, duplicates skipped.

    `known(hashes)` gives the (hash, class id) pairs learned before; a pair seen earlier in this learn is a
    duplicate too.
    """
    seen: set[tuple[str, str]] = set()
    for start in range(0, len(pairs), CHUNK):
        items = []
        for path, class_id in pairs[start : start + CHUNK]:
            try:
                items.append(read_item(path, class_id))
            except DataError as error:
                if not skip_bad:
                    raise DataError(f"{error} (--skip-bad learns the other files)") from error
                intake.bad.append((path, str(error)))
        before = set() if allow_duplicates else known([i.digest for i in items])
        fresh = []
        for item in items:
            key = (item.digest, item.class_id)
            if not allow_duplicates and (key in before or key in seen):
                intake.duplicates += 1
                continue
            seen.add(key)
            fresh.append(item)
        if fresh:
            yield fresh
