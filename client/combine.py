"""`fedrecon encoder combine A B --out F`: several trained Conv4 side by side as one encoder (one space).

Each image is embedded by every member and the embeddings are concatenated, so prototypes stay means of
embeddings and the merge stays exact; squared distances are the sum of the members'. The members must
take the same input (network shape and preprocessing); their weights are kept unchanged, and their
training records travel in the new checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrecon.client.encoder import build_model, load_encoder, members, read_checkpoint, save_checkpoint
from fedrecon.client.preprocess import domain_of

SAME_INPUT = ("arch", "hidden", "depth", "image_size", "channels", "dataset", "preprocessing")


def combined_config(blobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The config of the members side by side; ValueError in one line if they cannot share one input."""
    if len(blobs) < 2:
        raise ValueError("combine needs at least two encoders")
    first = blobs[0]
    seen: set[str] = set()
    for blob in blobs:
        if members(blob["config"]) != 1:
            raise ValueError(f"{blob['path']}: already a combined encoder; combine its members instead")
        if blob["fingerprint"] in seen:
            raise ValueError(f"{blob['path']}: the same encoder ({blob['fingerprint']}) is named twice")
        seen.add(blob["fingerprint"])
        differ = [k for k in SAME_INPUT if blob["config"].get(k) != first["config"].get(k)]
        differ += ["domain"] if domain_of(blob["config"]) != domain_of(first["config"]) else []
        if differ:
            raise ValueError(f"{blob['path']} differs from {first['path']} in {', '.join(differ)}; "
                             "only encoders of one network shape and preprocessing can be combined")
    return {**first["config"], "domain": domain_of(first["config"]), "members": len(blobs)}


def combine(sources: list[str], out: str | Path, command: str) -> dict[str, Any]:
    """Write the combined checkpoint to `out`; returns a JSON-ready summary (fingerprint, dim, members)."""
    blobs = [read_checkpoint(source) for source in sources]
    config = combined_config(blobs)
    model = build_model(config)
    model.load_state_dict({f"members.{i}.{key}": value for i, blob in enumerate(blobs)
                           for key, value in blob["state_dict"].items()})
    record = [{"fingerprint": blob["fingerprint"], "file": Path(blob["path"]).name,
               "training": blob.get("extra", {}).get("training", {})} for blob in blobs]
    save_checkpoint(out, model, config, training={"command": command, "members": record})
    encoder = load_encoder(out, device="cpu")
    return {"out": str(out), "fingerprint": encoder.fingerprint, "dim": encoder.dim,
            "bytes_per_class": 4 * encoder.dim, "members": [m["fingerprint"] for m in record]}
