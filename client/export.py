"""`fedrecon encoder export NAME --format onnx`: any encoder as one self-contained ONNX file for devices.

The file holds the network (BatchNorm folded, dynamic batch, normalised (N, C, S, S) input) and, as metadata,
the preprocessing, the domain and the source's space fingerprint, so torch and ONNX clients share one space.
It embeds as the torch encoder does (within 1e-5, tested) and is accepted by `--encoder FILE.onnx` and
`fedrecon encoder info FILE.onnx`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fedrecon.client.embedding import ImageEncoder
from fedrecon.client.imported import OnnxEncoder, TorchScriptEncoder, base_config, onnx_runner, probe_config, write_onnx

FORMATS = ("onnx",)


def torch_to_onnx(module: Any, channels: int, size: int) -> bytes:
    """A torch module on (N, C, S, S) float32 inputs as ONNX bytes with a dynamic batch dimension.

    nn.Modules go through torch.export; TorchScript modules through the TorchScript exporter (which reads them).
    """
    import torch

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed" notes
    example = (torch.rand(2, channels, size, size),)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if isinstance(module, torch.jit.ScriptModule):
            buffer = io.BytesIO()
            torch.onnx.export(module, example, buffer, input_names=["pixels"], output_names=["embedding"],
                              dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}}, dynamo=False)
            return buffer.getvalue()
        program = torch.onnx.export(module, example, input_names=["pixels"], output_names=["embedding"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
    return program.model_proto.SerializeToString()


def _network(encoder: ImageEncoder) -> Any:
    """The torch module that maps normalised inputs to vectors (the folded Conv4, or a TorchScript model)."""
    import torch

    if isinstance(encoder, TorchScriptEncoder):
        return encoder.model
    return encoder._inference.to(memory_format=torch.contiguous_format)  # noqa: SLF001 - the folded snapshot


def export_onnx(encoder: ImageEncoder, out: str | Path) -> dict[str, Any]:
    """Write `encoder` as ONNX to `out`, keeping its fingerprint; returns a JSON-ready summary with the check."""
    import onnx

    out = Path(out).expanduser()
    if isinstance(encoder, OnnxEncoder):  # already one file with its metadata
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(encoder.path.read_bytes())
        return {"out": str(out), "fingerprint": encoder.fingerprint, "max_abs_difference": 0.0}
    pre = encoder.preprocessing
    data = torch_to_onnx(_network(encoder), pre.channels, pre.size)
    config = base_config(encoder.name, "onnx", pre, encoder.domain, encoder.fingerprint)
    config = {**config, "exported_from": {k: v for k, v in encoder.config.items()
                                          if k not in ("preprocessing", "probe", "format")}}
    config = probe_config(config, onnx_runner(data), str(out))
    write_onnx(onnx.load_from_string(data), config, out)
    exported = OnnxEncoder(out)
    rng = np.random.default_rng(0)
    sample = (rng.random((64, pre.channels, pre.size, pre.size)) * 255).astype(np.uint8)
    if encoder.domain == "handwriting":  # a plausible handwriting input: mostly dark, some bright strokes
        sample = np.where(sample > 200, sample, 0).astype(np.uint8)
    difference = float(np.abs(exported.embed(sample) - encoder.embed(sample)).max())
    if difference > 1e-4:
        out.unlink()
        raise ValueError(f"export: the ONNX model differs from the torch encoder by {difference:g}; not written")
    return {"out": str(out), "fingerprint": exported.fingerprint, "dim": exported.dim,
            "max_abs_difference": difference}
