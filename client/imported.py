"""Bring your own backbone: any ONNX or TorchScript image model that outputs one vector per image, as a space.

`import_model` turns a model file plus its preprocessing into an encoder kept in the user's encoder directory
(`$FEDRECON_ENCODER_DIR`, else `$XDG_DATA_HOME/fedrecon/encoders`, else `~/.local/share/fedrecon/encoders`).
An ONNX encoder is one self-contained `.onnx` file whose metadata (`fedrecon`, JSON) holds the fingerprint, the
domain, the preprocessing and a probe: the vectors of two fixed inputs, checked whenever the file is loaded, so
a file whose model was changed is refused. ONNX encoders embed with onnxruntime and never import torch.
A TorchScript encoder is `NAME.torchscript` beside `NAME.json` (its bytes' sha256 is checked on load).

The fingerprint of an imported model is `onnx-` (or `torchscript-`) + 16 hex of sha256 over every preprocessing
field and the model bytes; an exported encoder (`export.export_onnx`) keeps the fingerprint of its source.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fedrecon.client.embedding import ImageEncoder
from fedrecon.client.preprocess import DOMAINS, Preprocessing, check_inputs

ONNX_FORMAT = "fedrecon-onnx/1"
TORCHSCRIPT_FORMAT = "fedrecon-torchscript/1"
METADATA_KEY = "fedrecon"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PROBE_TOLERANCE = 1e-4


def encoder_dir() -> Path:
    """Where imported encoders live: `$FEDRECON_ENCODER_DIR`, `$XDG_DATA_HOME/fedrecon/encoders`, or ~/.local/share."""
    if os.environ.get("FEDRECON_ENCODER_DIR"):
        return Path(os.environ["FEDRECON_ENCODER_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "fedrecon" / "encoders"


def imported_path(name: str) -> Path | None:
    """The file of an imported encoder called `name` (`NAME.onnx` or `NAME.json`), or None."""
    if not NAME_PATTERN.match(name):
        return None
    for suffix in (".onnx", ".json"):
        path = encoder_dir() / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def space_fingerprint(kind: str, pre: Preprocessing, model_bytes: bytes) -> str:
    """`<kind>-` + 16 hex of sha256 over every preprocessing field and the model bytes."""
    h = hashlib.sha256(json.dumps(pre.to_dict(), sort_keys=True).encode())
    h.update(hashlib.sha256(model_bytes).digest())
    return f"{kind}-{h.hexdigest()[:16]}"


def probe_input(pre: Preprocessing) -> np.ndarray:
    """Two fixed normalised inputs (N=2, C, S, S) whose vectors a file records, to detect a changed model."""
    pixels = np.random.default_rng(12345).random((2, pre.channels, pre.size, pre.size), dtype=np.float32)
    return normalise(pixels, pre)


def normalise(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Float pixels in [0, 1] (N, C, S, S) -> the network's input `(x - mean) / std`, float32."""
    shape = (1, pre.channels, 1, 1)
    mean = np.asarray(pre.mean, np.float32).reshape(shape)
    std = np.asarray(pre.std, np.float32).reshape(shape)
    return ((pixels.astype(np.float32) - mean) / std).astype(np.float32)


def as_vectors(output: np.ndarray, n: int, where: str) -> np.ndarray:
    """A model's output as (n, dim) float32; (n, dim, 1, 1) is flattened, anything else refused."""
    out = np.asarray(output)
    if out.ndim < 2 or out.shape[0] != n or (out.ndim > 2 and int(np.prod(out.shape[2:])) != 1):
        raise ValueError(f"{where}: the model must output one vector per image, (N, dim); got {out.shape} for N={n}")
    return out.reshape(n, -1).astype(np.float32)


class ModelEncoder(ImageEncoder):
    """An encoder whose network is a model file: pixels are checked, normalised in numpy and run in batches."""

    def __init__(self, config: dict[str, Any], path: Path) -> None:
        self.config = config
        self.path = path
        self.name = str(config["name"])
        self.domain = str(config["domain"])
        self.preprocessing = Preprocessing.from_dict(config["preprocessing"])
        self.fingerprint = str(config["fingerprint"])
        self.dim = int(config["dim"])

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """The model on normalised float32 inputs (N, C, S, S) -> (N, dim)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Summary, preprocessing, the file and where the model came from (no probe vectors)."""
        skip = {"preprocessing", "probe", "domain", "name", "fingerprint", "dim", "image_size", "channels"}
        return {**self.summary(), "preprocessing": self.preprocessing.to_dict(), "path": str(self.path),
                **{k: v for k, v in self.config.items() if k not in skip}}

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Embed preprocessed pixels (N, C, S, S): float in [0, 1] or uint8 -> float32 (N, dim)."""
        images = self.check_shape(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size]
            pixels = batch.astype(np.float32) / 255.0 if batch.dtype == np.uint8 else batch.astype(np.float32)
            check_inputs(pixels, self.preprocessing, domain=self.domain)
            out[i : i + len(batch)] = self.run(normalise(pixels, self.preprocessing))
        return out

    def verify_probe(self) -> None:
        """Refuse a file whose model no longer gives the vectors it recorded for the probe inputs."""
        recorded = np.asarray(self.config["probe"], np.float32)
        got = self.run(probe_input(self.preprocessing))
        scale = max(1.0, float(np.abs(recorded).max()))
        if got.shape != recorded.shape or float(np.abs(got - recorded).max()) > PROBE_TOLERANCE * scale:
            raise ValueError(f"{self.path}: the model does not give the vectors recorded with fingerprint "
                             f"{self.fingerprint} (changed after import or export?)")


class OnnxEncoder(ModelEncoder):
    """An ONNX model run with onnxruntime (no torch): the encoder of devices and of imported backbones."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ValueError(f"{path}: not a readable ONNX model ({str(error).splitlines()[0][:200]})") from error
        meta = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if meta is None:
            raise ValueError(f"{path}: an ONNX model without fedrecon metadata; import it first: fedrecon encoder "
                             "import MODEL.onnx --name NAME --size S --mode RGB --mean m,m,m --std s,s,s")
        config = json.loads(meta)
        if config.get("format") != ONNX_FORMAT:
            raise ValueError(f"{path}: fedrecon metadata of format {config.get('format')!r}, expected {ONNX_FORMAT}")
        super().__init__(config, path)
        self.input_name = self.session.get_inputs()[0].name
        self.verify_probe()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """The ONNX model on normalised inputs."""
        return as_vectors(self.session.run(None, {self.input_name: inputs})[0], len(inputs), str(self.path))


class TorchScriptEncoder(ModelEncoder):
    """A TorchScript model (`NAME.torchscript` + `NAME.json`), run with torch on the CPU."""

    def __init__(self, sidecar: str | Path) -> None:

        sidecar = Path(sidecar)
        config = json.loads(sidecar.read_text())
        if config.get("format") != TORCHSCRIPT_FORMAT:
            raise ValueError(f"{sidecar}: not a {TORCHSCRIPT_FORMAT} description")
        model_path = sidecar.with_name(config["file"])
        data = model_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != config["sha256"]:
            raise ValueError(f"{model_path}: its bytes changed since it was imported (sha256 differs)")
        super().__init__(config, model_path)
        self.model = load_torchscript(model_path)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """The TorchScript model on normalised inputs."""
        import torch

        with torch.inference_mode():
            return as_vectors(self.model(torch.from_numpy(inputs)).numpy(), len(inputs), str(self.path))


def load_torchscript(path: Path) -> Any:
    """A TorchScript archive on the CPU in eval mode (torch's deprecation notice about `torch.jit` silenced)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def check_name(name: str) -> None:
    """An importable encoder name: letters, digits, `.`, `_`, `-`; not a shipped encoder's name."""
    from fedrecon.client.spaces import shipped_names

    if not NAME_PATTERN.match(name):
        raise ValueError(f"encoder name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if name in shipped_names():
        raise ValueError(f"encoder name {name!r} is a shipped encoder's; choose another --name")


def base_config(name: str, kind: str, pre: Preprocessing, domain: str, fingerprint: str) -> dict[str, Any]:
    """The description every model encoder carries (dim and probe are added once the model has run)."""
    if domain not in DOMAINS:
        raise ValueError(f"--domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    return {"format": ONNX_FORMAT if kind == "onnx" else TORCHSCRIPT_FORMAT, "name": name, "arch": kind,
            "domain": domain, "fingerprint": fingerprint, "preprocessing": pre.to_dict(),
            "image_size": pre.size, "channels": pre.channels}


def probe_config(config: dict[str, Any], run: Any, where: str) -> dict[str, Any]:
    """`config` with `dim` and `probe` from running the model (`run`) on the probe inputs."""
    pre = Preprocessing.from_dict(config["preprocessing"])
    inputs = probe_input(pre)
    try:
        vectors = as_vectors(run(inputs), len(inputs), where)
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - runtimes raise their own types for a wrong input shape
        raise ValueError(f"{where}: the model does not take (N, {pre.channels}, {pre.size}, {pre.size}) inputs "
                         f"({str(error).splitlines()[0][:200]})") from error
    if not np.isfinite(vectors).all():
        raise ValueError(f"{where}: the model outputs NaN or infinite values")
    return {**config, "dim": int(vectors.shape[1]), "probe": vectors.tolist()}


def write_onnx(model: Any, config: dict[str, Any], out: Path) -> Path:
    """Write an ONNX ModelProto with `config` as its `fedrecon` metadata (replacing any earlier one)."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(config, sort_keys=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(out)
    return out


def onnx_runner(model_bytes: bytes) -> Any:
    """A function running an ONNX model given as bytes on normalised inputs (for the probe)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def import_model(source: str | Path, name: str, pre: Preprocessing, domain: str = "natural") -> ImageEncoder:
    """Turn an ONNX or TorchScript model file into the encoder `name` in `encoder_dir()`; returns it loaded."""
    source = Path(source).expanduser()
    check_name(name)
    if not source.is_file():
        raise ValueError(f"{source}: no such model file")
    if imported_path(name) is not None:
        raise ValueError(f"an encoder named {name!r} is already imported ({imported_path(name)}); choose another "
                         "--name (a name is one space)")
    data = source.read_bytes()
    if data[:2] == b"PK":  # a zip: TorchScript
        return _import_torchscript(source, data, name, pre, domain)
    import onnx

    try:
        model = onnx.load(str(source))  # weights kept beside it (`MODEL.onnx.data`) are read in too
    except Exception as error:  # noqa: BLE001 - protobuf decode errors vary
        raise ValueError(f"{source}: neither an ONNX model nor a TorchScript archive ({error})") from error
    plain = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(plain)
    canonical = model.SerializeToString()
    config = base_config(name, "onnx", pre, domain, space_fingerprint("onnx", pre, canonical))
    config = probe_config(config, onnx_runner(canonical), str(source))
    write_onnx(model, config, encoder_dir() / f"{name}.onnx")
    return OnnxEncoder(encoder_dir() / f"{name}.onnx")


def _import_torchscript(source: Path, data: bytes, name: str, pre: Preprocessing, domain: str) -> ImageEncoder:
    import torch

    try:
        model = load_torchscript(source)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a foreign archive
        raise ValueError(f"{source}: not a TorchScript model ({str(error).splitlines()[0][:200]})") from error

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    config = base_config(name, "torchscript", pre, domain, space_fingerprint("torchscript", pre, data))
    config = {**probe_config(config, run, str(source)), "file": f"{name}.torchscript",
              "sha256": hashlib.sha256(data).hexdigest()}
    folder = encoder_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.torchscript").write_bytes(data)
    (folder / f"{name}.json").write_text(json.dumps(config, indent=1))
    return TorchScriptEncoder(folder / f"{name}.json")
