"""The Conv4 prototypical-network encoder, its checkpoints and the space fingerprint pushes carry.

Conv4 = 4 x [3x3 conv 64, BatchNorm, ReLU, 2x2 max-pool], flattened: 64-d at 28x28, 1600-d at 84x84.
The fingerprint is a hash of the config and the float32 weights, so two clients agree on it exactly
when they embed into the same space.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

FORMAT = "fedrecon-encoder/1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (padding 1), BatchNorm, ReLU, 2x2 max-pool."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


class Conv4(nn.Module):
    """Conv4 backbone of Snell et al. (2017); input (N, C, H, W) already preprocessed."""

    def __init__(self, channels: int = 1, hidden: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[conv_block(channels if i == 0 else hidden, hidden) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)


def output_dim(image_size: int, hidden: int = 64, depth: int = 4) -> int:
    """Embedding width of Conv4 for a square input."""
    s = image_size
    for _ in range(depth):
        s //= 2
    return hidden * s * s


def default_config(dataset: str, image_size: int, channels: int) -> dict[str, Any]:
    """The config that rebuilds a Conv4 and says how images must be preprocessed."""
    mean, std = ([0.0] * channels, [1.0] * channels)
    if channels == 3:  # ImageNet statistics for RGB inputs in [0, 1]
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    return {
        "arch": "conv4",
        "hidden": 64,
        "depth": 4,
        "image_size": image_size,
        "channels": channels,
        "dataset": dataset,
        "preprocessing": {"input": "float32 in [0,1], (N, C, H, W)", "resize": "antialiased",
                          "foreground": "ink bright" if channels == 1 else "rgb",
                          "mean": mean, "std": std},
    }


def _float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as contiguous float32 CPU tensors (BatchNorm's step counter dropped)."""
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone()
            for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def fingerprint(config: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """Space fingerprint: `conv4-` + 16 hex of sha256 over the arch config and float32 weights."""
    h = hashlib.sha256()
    core = {k: config[k] for k in ("arch", "hidden", "depth", "image_size", "channels")}
    core["preprocessing"] = {k: config["preprocessing"][k] for k in ("mean", "std")}
    h.update(json.dumps(core, sort_keys=True).encode())
    for key in sorted(state):
        t = state[key].to(torch.float32).contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().astype("<f4").tobytes())
    return f"{config['arch']}-{h.hexdigest()[:16]}"


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fold_batchnorm(model: Conv4) -> nn.Module:
    """An eval-mode copy of `model` for embedding: BatchNorm folded into each conv, channels-last memory.

    Same outputs to ~1e-6; on CPU about 2x faster than the training module for small batches.
    """
    blocks = []
    for conv, norm, *rest in copy.deepcopy(model).eval().blocks:
        blocks.append(nn.Sequential(fuse_conv_bn_eval(conv, norm), *rest))
    return nn.Sequential(nn.Sequential(*blocks), nn.Flatten(1)).eval().to(memory_format=torch.channels_last)


class Encoder:
    """A frozen Conv4 with its config: embeds numpy images into float32 vectors of one space.

    `embed` runs a BatchNorm-folded snapshot of `model` taken here; build a new Encoder after changing weights.
    """

    def __init__(self, model: Conv4, config: dict[str, Any], device: str | torch.device | None = None) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.dim = output_dim(config["image_size"], config["hidden"], config["depth"])
        pre = config["preprocessing"]
        shape = (1, config["channels"], 1, 1)
        self._mean = torch.tensor(pre["mean"], dtype=torch.float32).view(shape).to(self.device)
        self._std = torch.tensor(pre["std"], dtype=torch.float32).view(shape).to(self.device)
        self.fingerprint = fingerprint(config, _float_state(model))
        self._inference = fold_batchnorm(self.model)

    @classmethod
    def random(cls, dataset: str = "omniglot", image_size: int = 28, channels: int = 1, seed: int = 0,
               device: str | torch.device | None = None) -> Encoder:
        """An untrained Conv4 (seeded), e.g. as a baseline."""
        torch.manual_seed(seed)
        return cls(Conv4(channels), default_config(dataset, image_size, channels), device)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise [0,1] images as the config says."""
        return (x - self._mean) / self._std

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Embed float images (N, C, H, W) in [0, 1] (or uint8 0..255) -> float32 (N, dim)."""
        images = np.asarray(images)
        c, s = self.config["channels"], self.config["image_size"]
        if images.ndim == 3 and c == 1:
            images = images[:, None]
        if images.ndim != 4 or images.shape[1:] != (c, s, s):
            raise ValueError(f"embed: expected images (N, {c}, {s}, {s}), got {images.shape}")
        out = np.empty((len(images), self.dim), dtype=np.float32)
        scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(self.device)
                x = self.preprocess(x.float() * scale).contiguous(memory_format=torch.channels_last)
                out[i : i + len(x)] = self._inference(x).cpu().numpy()
        return out

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write this encoder as a checkpoint (float32 weights, config, fingerprint)."""
        return save_checkpoint(path, self.model, self.config, **extra)


def save_checkpoint(path: str | Path, model: nn.Module, config: dict[str, Any], **extra: Any) -> Path:
    """Save float32 weights + config + fingerprint (+ JSON-able extras such as training info)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _float_state(model)
    blob = {"format": FORMAT, "config": config, "state_dict": state,
            "fingerprint": fingerprint(config, state), "extra": extra}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def resolve_weights(name_or_path: str | Path) -> Path:
    """A shipped name (`omniglot`, `glyphs`) -> client/weights/<name>.pt; else the path itself."""
    p = Path(name_or_path)
    if p.suffix != ".pt" and "/" not in str(name_or_path) and (WEIGHTS_DIR / f"{name_or_path}.pt").exists():
        return WEIGHTS_DIR / f"{name_or_path}.pt"
    if not p.exists():
        shipped = sorted(q.stem for q in WEIGHTS_DIR.glob("*.pt"))
        raise FileNotFoundError(f"{name_or_path}: no such checkpoint (shipped names: {shipped})")
    return p


def read_checkpoint(name_or_path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (format, config, state_dict, fingerprint, extra)."""
    path = resolve_weights(name_or_path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    return blob


def load_encoder(name_or_path: str | Path, device: str | torch.device | None = None) -> Encoder:
    """Load a shipped encoder by name or a checkpoint by path; checks the recorded fingerprint."""
    blob = read_checkpoint(name_or_path)
    config = blob["config"]
    model = Conv4(config["channels"], config["hidden"], config["depth"])
    missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
    if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
        raise ValueError(f"{name_or_path}: weights do not fit Conv4 (missing {missing}, unexpected {unexpected})")
    enc = Encoder(model, config, device)
    if enc.fingerprint != blob["fingerprint"]:
        raise ValueError(f"{name_or_path}: fingerprint {enc.fingerprint} != recorded {blob['fingerprint']}")
    return enc
