"""The Conv4 prototypical-network encoder, its checkpoints and the space fingerprint pushes carry.

Conv4 = 4 x [3x3 conv 64, BatchNorm, ReLU, 2x2 max-pool], flattened: 64-d at 28x28, 1600-d at 84x84.
`conv4-nopool` drops the last max-pool (wider embedding: 576-d at 28x28), same weights layout.
A config with `members: N` (N > 1) is N such networks side by side on the same input, their embeddings
concatenated (`fedrecon encoder combine`): a wider network whose parts do not mix.
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

from fedrecon.client.data.registry import DEFAULT_SIZES
from fedrecon.client.embedding import ImageEncoder
from fedrecon.client.preprocess import Preprocessing, check_inputs, domain_of, native

FORMAT = "fedrecon-encoder/2"
ARCHS = ("conv4", "conv4-nopool")
LEGACY_FORMATS = ("fedrecon-encoder/1",)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def conv_block(c_in: int, c_out: int, pool: bool = True) -> nn.Sequential:
    """3x3 conv (padding 1), BatchNorm, ReLU, then a 2x2 max-pool unless `pool` is False."""
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))


class Conv4(nn.Module):
    """Conv4 backbone of Snell et al. (2017); input (N, C, H, W) already preprocessed."""

    def __init__(self, channels: int = 1, hidden: int = 64, depth: int = 4, arch: str = "conv4") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown encoder arch {arch!r} (known: {', '.join(ARCHS)})")
        self.arch = arch
        pools = [i < depth - 1 or arch == "conv4" for i in range(depth)]
        self.blocks = nn.Sequential(*[conv_block(channels if i == 0 else hidden, hidden, pools[i])
                                      for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)


class SideBySide(nn.Module):
    """Several networks on the same input, their embeddings concatenated (one space, N times the width)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([member(x) for member in self.members], dim=1)


def output_dim(image_size: int, hidden: int = 64, depth: int = 4, arch: str = "conv4") -> int:
    """Embedding width of Conv4 (or `conv4-nopool`) for a square input."""
    s = image_size
    for _ in range(depth if arch == "conv4" else depth - 1):
        s //= 2
    return hidden * s * s


def members(config: dict[str, Any]) -> int:
    """How many Conv4 the config puts side by side (1 unless combined); ValueError for a malformed count."""
    count = config.get("members", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"encoder config: members must be a whole number >= 1, not {count!r}")
    return count


def embedding_dim(config: dict[str, Any]) -> int:
    """Width of the config's embedding: one Conv4's output times its members."""
    arch = config.get("arch", "conv4")
    return output_dim(config["image_size"], config["hidden"], config["depth"], arch) * members(config)


def build_model(config: dict[str, Any]) -> nn.Module:
    """An untrained network of the config's arch, channels, width and depth (members side by side if several)."""
    def one() -> Conv4:
        return Conv4(config["channels"], config["hidden"], config["depth"], config.get("arch", "conv4"))
    return one() if members(config) == 1 else SideBySide([one() for _ in range(members(config))])


def default_config(dataset: str, image_size: int, channels: int,
                   preprocessing: Preprocessing | None = None, arch: str = "conv4", hidden: int = 64) -> dict[str, Any]:
    """The config that rebuilds a Conv4 and says how raw images must be preprocessed (the data set's native look)."""
    pre = preprocessing or native(dataset, image_size, "RGB" if channels == 3 else "L")
    if (pre.size, pre.channels) != (image_size, channels):
        raise ValueError(f"preprocessing {pre.mode} {pre.size}px does not fit a {channels}-channel "
                         f"{image_size}px Conv4")
    if arch not in ARCHS:
        raise ValueError(f"unknown encoder arch {arch!r} (known: {', '.join(ARCHS)})")
    if hidden < 1:
        raise ValueError(f"a Conv4 needs at least 1 channel per block, not {hidden}")
    config = {"arch": arch, "hidden": hidden, "depth": 4, "image_size": image_size, "channels": channels,
              "dataset": dataset, "preprocessing": pre.to_dict()}
    return {**config, "domain": domain_of(config)}


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A format-1 config (preprocessing described in prose) with its preprocessing spelled out field by field."""
    old = config["preprocessing"]
    pre = Preprocessing("L" if config["channels"] == 1 else "RGB", invert=config.get("dataset") == "omniglot",
                        size=config["image_size"], resample="lanczos" if old.get("resize") == "antialiased" else
                        "nearest", mean=tuple(old["mean"]), std=tuple(old["std"]))
    return {**config, "preprocessing": pre.to_dict()}


def _float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as contiguous float32 CPU tensors (BatchNorm's step counter dropped)."""
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone()
            for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def fingerprint(config: dict[str, Any], state: dict[str, torch.Tensor], legacy: bool = False) -> str:
    """Space fingerprint: `conv4-` + 16 hex of sha256 over the arch, every preprocessing field and the weights.

    Two clients share a space only if they build the same network and turn raw images into the same
    inputs. `legacy` computes format 1's fingerprint (mean and std only), to verify old checkpoints.
    """
    h = hashlib.sha256()
    core = {k: config[k] for k in ("arch", "hidden", "depth", "image_size", "channels")}
    if members(config) != 1:  # absent for one Conv4, so single encoders keep the fingerprint they always had
        core["members"] = members(config)
    fields = ("mean", "std") if legacy else sorted(Preprocessing.__dataclass_fields__)
    core["preprocessing"] = {k: config["preprocessing"][k] for k in fields}
    h.update(json.dumps(core, sort_keys=True).encode())
    for key in sorted(state):
        t = state[key].to(torch.float32).contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().astype("<f4").tobytes())
    kind = config["arch"] if members(config) == 1 else f"{config['arch']}x{members(config)}"
    return f"{kind}-{h.hexdigest()[:16]}"


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """`auto`/None: CUDA when present, else CPU; a named device is checked, with a clear error if it is absent."""
    if name is None or str(name) == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r} (expected auto, cpu, cuda or cuda:N)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device {name!r} requested, but {build}; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` for embedding: BatchNorm folded into each conv, channels-last memory.

    Same outputs to ~1e-6; on CPU about 2x faster than the training module for small batches.
    """
    if isinstance(model, SideBySide):
        return SideBySide([fold_batchnorm(member) for member in model.members]).eval()
    blocks = []
    for conv, norm, *rest in copy.deepcopy(model).eval().blocks:
        blocks.append(nn.Sequential(fuse_conv_bn_eval(conv, norm), *rest))
    return nn.Sequential(nn.Sequential(*blocks), nn.Flatten(1)).eval().to(memory_format=torch.channels_last)


class Encoder(ImageEncoder):
    """A frozen Conv4 with its config: embeds numpy images into float32 vectors of one space.

    `embed` runs a BatchNorm-folded snapshot of `model` taken here; build a new Encoder after changing weights.
    """

    def __init__(self, model: nn.Module, config: dict[str, Any], device: str | torch.device | None = None,
                 name: str = "conv4") -> None:
        self.config = config
        self.name = name
        self.domain = domain_of(config)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.dim = embedding_dim(config)
        self.preprocessing = Preprocessing.from_dict(config["preprocessing"])
        pre = self.preprocessing
        if (pre.size, pre.channels) != (config["image_size"], config["channels"]):
            raise ValueError(f"encoder config: preprocessing {pre.mode} {pre.size}px does not fit "
                             f"{config['channels']} channels at {config['image_size']}px")
        shape = (1, config["channels"], 1, 1)
        self._mean = torch.tensor(pre.mean, dtype=torch.float32).view(shape).to(self.device)
        self._std = torch.tensor(pre.std, dtype=torch.float32).view(shape).to(self.device)
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
        """Embed preprocessed images (N, C, H, W): float in [0, 1] or uint8 -> float32 (N, dim).

        The arrays must already look as the preprocessing says (size, colour, polarity); arrays whose
        statistics contradict it are refused (ValueError). Raw files or PIL images: `embed_images`.
        """
        images = self.check_shape(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                batch = np.ascontiguousarray(images[i : i + batch_size])
                if batch.dtype != np.uint8:
                    check_inputs(batch, self.preprocessing, domain=self.domain)
                else:
                    check_inputs(batch[:, :, ::4, ::4].astype(np.float32) / 255.0, self.preprocessing,
                                 domain=self.domain)
                x = torch.from_numpy(batch).to(self.device)
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
    """An existing file wins (`x`, then `x.pt`); else a shipped name (`omniglot`, `glyphs`) -> client/weights/."""
    p = Path(name_or_path).expanduser()
    for candidate in (p, p.with_name(p.name + ".pt")):
        if candidate.is_file():
            return candidate
    if p.suffix != ".pt" and "/" not in str(name_or_path) and (WEIGHTS_DIR / f"{name_or_path}.pt").exists():
        return WEIGHTS_DIR / f"{name_or_path}.pt"
    shipped = sorted(q.stem for q in WEIGHTS_DIR.glob("*.pt"))
    raise FileNotFoundError(f"{name_or_path}: no such checkpoint file, and not a shipped encoder "
                            f"(shipped names: {shipped})")


def shipped_name(space: str) -> str | None:
    """The shipped encoder whose fingerprint is `space` (e.g. `omniglot-paper`), so messages can name it."""
    for path in sorted(WEIGHTS_DIR.glob("*.pt")):
        if read_checkpoint(path)["fingerprint"] == space:
            return path.stem
    return None


def read_checkpoint(name_or_path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (format, config, state_dict, fingerprint, extra)."""
    path = resolve_weights(name_or_path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a damaged or foreign file
        raise ValueError(f"{path}: not a readable encoder checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(blob, dict) or blob.get("format") not in (FORMAT, *LEGACY_FORMATS):
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    if blob["format"] in LEGACY_FORMATS:  # verify what it recorded, then spell out its preprocessing
        if fingerprint(blob["config"], blob["state_dict"], legacy=True) != blob["fingerprint"]:
            raise ValueError(f"{path}: weights do not match the recorded fingerprint {blob['fingerprint']}")
        config = upgrade_config(blob["config"])
        blob = {**blob, "format": FORMAT, "config": config, "fingerprint": fingerprint(config, blob["state_dict"])}
    blob["path"] = str(path)
    return blob


def load_encoder(name_or_path: str | Path, device: str | torch.device | None = None) -> Encoder:
    """Load a shipped encoder by name or a checkpoint by path; checks the recorded fingerprint."""
    blob = read_checkpoint(name_or_path)
    config = blob["config"]
    model = build_model(config)
    missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
    if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
        raise ValueError(f"{name_or_path}: weights do not fit {config['arch']} (missing {missing}, "
                         f"unexpected {unexpected})")
    enc = Encoder(model, config, device, name=Path(blob["path"]).stem)
    if enc.fingerprint != blob["fingerprint"]:
        raise ValueError(f"{name_or_path}: fingerprint {enc.fingerprint} != recorded {blob['fingerprint']}")
    return enc


def load_encoder_spec(spec: str, dataset: str, image_size: int | None = None, seed: int = 0,
                      device: str | torch.device | None = None) -> Encoder:
    """`random` (an untrained, seeded Conv4 sized for the data set), a shipped name (`omniglot`, `glyphs`) or a path."""
    if spec == "random":
        size, channels = DEFAULT_SIZES[dataset]
        return Encoder.random(dataset, image_size or size, channels, seed=seed, device=device)
    return load_encoder(spec, device=device)
