"""`fedrecon encoder info|import|export|combine`: what an encoder is, bring your own backbone, export one for
devices, put trained ones side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(parser: argparse.ArgumentParser) -> None:
    """Add the encoder subcommands."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="print an encoder's domain, fingerprint, dim, preprocessing and training "
                          "summary as JSON")
    info.add_argument("encoder", metavar="NAME|PATH",
                      help="shipped name (omniglot, glyphs), an imported name, a checkpoint or an .onnx file")
    info.add_argument("--full", action="store_true", help="also print every training phase and history entry")
    imp = sub.add_parser("import", help="make an ONNX or TorchScript image model (one vector per image) a space, "
                         "usable as --encoder NAME")
    imp.add_argument("model", type=Path, metavar="MODEL.onnx|MODEL.pt")
    imp.add_argument("--name", required=True, help="the encoder's name (kept in $FEDRECON_ENCODER_DIR)")
    imp.add_argument("--size", type=int, required=True, help="square input size in pixels")
    imp.add_argument("--mode", choices=["RGB", "L"], default="RGB", help="colour mode the model takes")
    imp.add_argument("--mean", type=floats, default=None, help="per-channel mean, e.g. 0.485,0.456,0.406 "
                     "(default 0 per channel)")
    imp.add_argument("--std", type=floats, default=None, help="per-channel std, e.g. 0.229,0.224,0.225 "
                     "(default 1 per channel)")
    imp.add_argument("--resample", choices=["bilinear", "lanczos", "nearest"], default="bilinear",
                     help="resize filter")
    imp.add_argument("--invert", action="store_true", help="invert pixels (dark ink -> bright ink)")
    imp.add_argument("--domain", choices=["natural", "handwriting"], default="natural",
                     help="what the model was trained on; handwriting encoders refuse photos")
    exp = sub.add_parser("export", help="export an encoder (the shipped Conv4 included) as one ONNX file, same space")
    exp.add_argument("encoder", metavar="NAME|PATH")
    exp.add_argument("--format", choices=["onnx"], default="onnx", help="file format")
    exp.add_argument("--out", type=Path, required=True, help="the file to write (e.g. omniglot.onnx)")
    comb = sub.add_parser("combine", help="put trained Conv4 checkpoints side by side as one encoder (their "
                          "embeddings concatenated; one new space)")
    comb.add_argument("members", nargs="+", metavar="NAME|PATH", help="two or more checkpoints of one shape")
    comb.add_argument("--out", type=Path, required=True, help="the checkpoint to write")


def floats(text: str) -> tuple[float, ...]:
    """`0.5,0.5,0.5` -> (0.5, 0.5, 0.5); a clear error for anything else."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def training_summary(extra: dict) -> dict:
    """The JSON-able training record a checkpoint carries (commands, episodes, accuracy...), if any."""
    training = extra.get("training", extra)
    return json.loads(json.dumps(training, default=str)) if isinstance(training, dict) else {"note": str(training)}


def short_training(training: dict) -> dict[str, Any]:
    """A few lines of a training record: data, steps, time and scores; no per-phase or per-step history."""
    phases = training.get("phases") or []
    keep = {k: v for k, v in training.items() if not isinstance(v, list | dict) and k != "command"}
    if phases:
        keep["phases"] = len(phases)
        keep["wall_s"] = round(sum(float(p.get("wall_s") or 0) for p in phases), 1)
    for key in ("kept", "val", "best", "result", "fewshot"):
        if isinstance(training.get(key), dict):
            keep[key] = training[key]
    if isinstance(training.get("members"), list):  # a combined encoder: one line per member (--full: everything)
        keep["members"] = [member_line(m) for m in training["members"]]
    return keep


def member_line(member: dict) -> str:
    """One combined-encoder member in a line: fingerprint, steps, the kept step's validation, training time."""
    summary = short_training(member.get("training") or {})
    kept = summary.get("kept") or {}
    parts = [f"{summary['step']} steps" if "step" in summary else "",
             f"kept step {kept['step']} (val {kept['val']})" if {"step", "val"} <= set(kept) else "",
             f"{summary['phases']} phase{'' if summary['phases'] == 1 else 's'}, {summary['wall_s']} s"
             if "phases" in summary else ""]
    return f"{member.get('fingerprint')}: " + ", ".join(p for p in parts if p)


def run(args: argparse.Namespace) -> int:
    """info: the encoder's summary (with `--full`, its whole training record); import; export."""
    from fedrecon.client.spaces import describe_encoder, open_encoder

    if args.action == "info":
        print(json.dumps(describe_encoder(args.encoder, full=args.full), indent=2))
    elif args.action == "import":
        from fedrecon.client.imported import import_model
        from fedrecon.client.preprocess import MODES, Preprocessing

        channels = MODES[args.mode]
        pre = Preprocessing(args.mode, args.invert, args.size, args.resample, args.mean or (0.0,) * channels,
                            args.std or (1.0,) * channels)
        encoder = import_model(args.model, args.name, pre, args.domain)
        print(json.dumps({**encoder.summary(), "path": str(encoder.path)}))
    elif args.action == "combine":
        from fedrecon.client.combine import combine

        command = f"fedrecon encoder combine {' '.join(args.members)} --out {args.out}"
        print(json.dumps(combine(args.members, args.out, command)))
    else:
        from fedrecon.client.export import export_onnx

        print(json.dumps(export_onnx(open_encoder(args.encoder, device="cpu"), args.out)))
    return 0
