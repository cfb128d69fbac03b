"""`fedrecon encoder info NAME|PATH`: what an encoder is (fingerprint, dim, preprocessing, how it was trained)."""

from __future__ import annotations

import argparse
import json


def register(parser: argparse.ArgumentParser) -> None:
    """Add the encoder subcommands."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="print an encoder's fingerprint, dim, preprocessing and training as JSON")
    info.add_argument("encoder", metavar="NAME|PATH", help="shipped name (omniglot, glyphs) or checkpoint path")


def training_summary(extra: dict) -> dict:
    """The JSON-able training record a checkpoint carries (commands, episodes, accuracy...), if any."""
    training = extra.get("training", extra)
    return json.loads(json.dumps(training, default=str)) if isinstance(training, dict) else {"note": str(training)}


def run(args: argparse.Namespace) -> int:
    """Print the encoder's description."""
    from fedrecon.client.encoder import load_encoder, read_checkpoint

    blob = read_checkpoint(args.encoder)
    encoder = load_encoder(args.encoder, device="cpu")
    print(json.dumps({"path": blob["path"], **encoder.describe(), "training": training_summary(blob["extra"])},
                     indent=2))
    return 0
