"""Which encoder a name means: a file (`.onnx`, a checkpoint), a shipped Conv4, or an imported backbone.

Resolving never imports torch unless the encoder needs it (a Conv4 checkpoint or a TorchScript model), so
client commands with an ONNX encoder run where torch is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrecon.client.embedding import ImageEncoder
from fedrecon.client.imported import OnnxEncoder, TorchScriptEncoder, encoder_dir, imported_path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_names() -> list[str]:
    """Names of the Conv4 encoders shipped in client/weights/."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def imported_names() -> list[str]:
    """Names of the encoders imported into the user's encoder directory."""
    folder = encoder_dir()
    return sorted({p.stem for p in folder.glob("*.onnx")} | {p.stem for p in folder.glob("*.json")}) \
        if folder.is_dir() else []


def _existing_file(spec: str) -> Path | None:
    p = Path(spec).expanduser()
    for candidate in (p, p.with_name(p.name + ".pt")):
        if candidate.is_file():
            return candidate
    return None


def open_encoder(spec: str | Path, device: str | None = None) -> ImageEncoder:
    """The encoder `spec` names: an `.onnx` file, a checkpoint file, a shipped name or an imported name."""
    spec = str(spec)
    path = _existing_file(spec)
    if path is not None and path.suffix == ".onnx":
        return OnnxEncoder(path)
    if path is None and spec not in shipped_names():
        imported = imported_path(spec)
        if imported is not None:
            return OnnxEncoder(imported) if imported.suffix == ".onnx" else TorchScriptEncoder(imported)
        raise FileNotFoundError(f"{spec}: no such checkpoint or .onnx file, shipped encoder "
                                f"({', '.join(shipped_names())}) or imported encoder "
                                f"({', '.join(imported_names()) or 'none'} in {encoder_dir()})")
    from fedrecon.client.encoder import load_encoder

    return load_encoder(spec, device=device)


def describe_encoder(spec: str | Path, full: bool = False) -> dict[str, Any]:
    """What `fedrecon encoder info` prints: the summary first, preprocessing, then training (short unless `full`)."""
    encoder = open_encoder(spec, device="cpu")
    if not hasattr(encoder, "save"):  # an ONNX or TorchScript model file
        return encoder.describe()
    from fedrecon.client.encoder import read_checkpoint
    from fedrecon.client.encoder_cli import short_training, training_summary

    blob = read_checkpoint(spec)
    training = training_summary(blob["extra"])
    return {**encoder.describe(), "path": blob["path"], "training": training if full else short_training(training)}
