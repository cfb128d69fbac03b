"""`fedrecon pretrain`: train a Conv4 prototypical network (Snell et al. 2017) on in-memory images.

Two recipes: `proto`, episodic N-way K-shot Q-query prototypical loss; `proxy`, a prototype loss
against one learned centre per training class (all classes in every step, so more signal per image),
scored as -squared distance like the few-shot evaluation. Adam with cosine or step decay; `--augment`
adds small affine distortions (rotation, shear, scale, translation) drawn from the training RNG.
Held-out classes are scored by few-shot episodes; `--keep best` ships the best-by-validation step.
`<out>.state.pt` makes runs resumable exactly and records every phase (command, steps, seed, time).
`<out>` is a shippable encoder.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fedrecon.client.data.images import ImageSet
from fedrecon.client.encoder import (
    ARCHS,
    Conv4,
    Encoder,
    build_model,
    default_config,
    embedding_dim,
    members,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
)
from fedrecon.client.preprocess import Preprocessing, native
from fedrecon.experiments.fewshot import episode_accuracies, summarize
from fedrecon.experiments.folder_recipe import add_folder_arguments, detect_mode, fit_recipe


def load_data(args: argparse.Namespace) -> tuple[ImageSet, ImageSet | None, str]:
    """(training set, validation set or None, validation description) for `--dataset`."""
    if args.dataset == "omniglot":
        from fedrecon.client.data.omniglot import download_omniglot, load_omniglot

        if args.download:
            download_omniglot(args.data_dir)
        rot = tuple(args.rotations)
        train = load_omniglot(args.data_dir, True, args.image_size, rot, cache_dir=args.cache_dir)
        if args.val_alphabets > 0:
            alphabets = sorted({c.split("/")[0] for c in train.class_ids})
            held = set(alphabets[-args.val_alphabets :])
            keep = [c for c in train.class_ids if c.split("/")[0] not in held]
            val_ids = [c for c in train.class_ids if c.split("/")[0] in held and c.endswith(f"rot{rot[0]:03d}")]
            return train.subset(keep), train.subset(val_ids), f"held-out background alphabets {sorted(held)}"
        if args.monitor_evaluation:
            val = load_omniglot(args.data_dir, False, args.image_size, cache_dir=args.cache_dir)
            return train, val, "monitor only: images_evaluation (never used to select weights)"
        return train, None, "none"
    if args.dataset == "glyphs":
        from fedrecon.client.data.glyphs import make_glyphs

        train = make_glyphs(args.glyph_classes, 20, args.seed, args.image_size, cache_dir=args.cache_dir)
        n_val = args.glyph_val_classes
        val = make_glyphs(n_val, 20, args.seed + 1_000_003, args.image_size, cache_dir=args.cache_dir)
        return train, val, f"{n_val} held-out glyph classes (another seed)"
    if args.dataset == "mini-imagenet":
        from fedrecon.client.data.mini_imagenet import load_mini_imagenet

        train = load_mini_imagenet(args.data_dir, "train", args.image_size, args.csv_dir)
        val = load_mini_imagenet(args.data_dir, "val", args.image_size, args.csv_dir)
        return train, val, "mini-ImageNet val split"
    if args.dataset == "folder":
        from fedrecon.client.data.folder import load_folder

        data = load_folder(args.data_dir, folder_preprocessing(args))
        n_val = max(1, round(len(data.class_ids) * args.val_fraction)) if args.val_fraction > 0 else 0
        if n_val >= len(data.class_ids):
            raise ValueError(f"{args.data_dir}: {len(data.class_ids)} classes leave none to train on after holding "
                             f"out {n_val} for validation; lower --val-fraction")
        order = np.random.default_rng(args.seed).permutation(len(data.class_ids))
        val_ids = sorted(data.class_ids[i] for i in order[:n_val])
        train_ids = [c for c in data.class_ids if c not in set(val_ids)]
        val = data.subset(val_ids) if val_ids else None
        return data.subset(train_ids), val, f"{n_val} held-out classes of the folder (seeded)" if val else "none"
    raise SystemExit(f"unknown --dataset {args.dataset!r}")


def folder_preprocessing(args: argparse.Namespace) -> Preprocessing:
    """How `--dataset folder` images become inputs: --mode, --invert, --image-size (ImageNet stats for RGB)."""
    pre = native("folder", args.image_size, args.mode)
    return Preprocessing(pre.mode, args.invert, pre.size, pre.resample, pre.mean, pre.std)


def lr_at(args: argparse.Namespace, step: int) -> float:
    """Learning rate at `step`: step decay by `--decay` every `--decay-every`, or cosine when 0."""
    if args.decay_every > 0:
        return args.lr * args.decay ** (step // args.decay_every)
    return args.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, args.episodes)))


RECIPE = ("dataset", "arch", "hidden", "method", "ways", "shots", "queries", "batch_size", "centre_lr_scale", "lr",
          "decay", "decay_every", "augment", "aug_rotate", "aug_shear", "aug_scale", "aug_translate", "seed",
          "image_size", "rotations", "val_alphabets", "glyph_classes", "episodes")


def recipe(args: argparse.Namespace) -> dict:
    """The arguments a resumed run must share with the saved one (`episodes` only on a cosine schedule)."""
    core = {k: getattr(args, k) for k in RECIPE}
    core["rotations"] = list(core["rotations"])
    if args.decay_every > 0:  # a step-decay schedule does not depend on its length, so it may be extended
        del core["episodes"]
    return core


RECIPE_BEFORE = {"hidden": 64}  # what states saved before a recipe field existed were trained with


def saved_recipe(saved: dict) -> dict:
    """A recorded recipe with the fields it predates filled in as they were (`RECIPE_BEFORE`)."""
    return {**RECIPE_BEFORE, **saved}


def check_recipe(saved: dict | None, now: dict, state_path: Path) -> None:
    """Refuse (ValueError, one line naming the field) to resume a state trained with another recipe."""
    saved = None if saved is None else saved_recipe(saved)
    for key in sorted(set(saved or {}) | set(now)):
        if saved is not None and saved.get(key) != now.get(key):
            flag = "--" + key.replace("_", "-")
            extra = " (only a step-decay schedule, --decay-every > 0, may be extended)" if key == "episodes" else ""
            raise ValueError(f"--resume: {state_path} was trained with {flag} {saved.get(key)}, not {now.get(key)}; "
                             f"a resumed run must keep the recipe{extra}")


def augment(x: torch.Tensor, rng: np.random.Generator, args: argparse.Namespace) -> torch.Tensor:
    """Each image under its own small random affine map (rotation, shear, scale, translation), drawn from `rng`."""
    n, size = x.shape[0], x.shape[-1]
    u = torch.from_numpy(rng.uniform(-1.0, 1.0, (n, 5))).to(x.device, torch.float32)
    rot, shear = u[:, 0] * math.radians(args.aug_rotate), u[:, 1] * math.radians(args.aug_shear)
    scale = 1.0 + u[:, 2] * args.aug_scale
    cos, sin, tan = torch.cos(rot), torch.sin(rot), torch.tan(shear)
    theta = torch.stack([torch.stack([cos, cos * tan - sin, u[:, 3] * (2 * args.aug_translate / size)], 1),
                         torch.stack([sin, sin * tan + cos, u[:, 4] * (2 * args.aug_translate / size)], 1)], 1)
    theta[:, :, :2] /= scale[:, None, None]  # output -> input coordinates: divide to enlarge the glyph
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Sampler:
    """Draws episodes and batches from an ImageSet's uint8 pixels, held once as a tensor on the training device."""

    def __init__(self, data: ImageSet, rng: np.random.Generator, device: torch.device | None = None) -> None:
        self.data, self.rng, self.device = data, rng, device or torch.device("cpu")
        self.pixels = torch.from_numpy(data.pixels).to(self.device)
        self.labels = torch.from_numpy(data.labels).to(self.device)
        self.by_class = [data.indices(i) for i in range(len(data.class_ids))]

    def _take(self, idx: np.ndarray) -> torch.Tensor:
        """The images at `idx` as float [0, 1], on the device (only indices travel)."""
        return self.pixels[torch.from_numpy(idx).to(self.device)].float().div_(255.0)

    def episode(self, ways: int, per_class: int) -> tuple[torch.Tensor, np.ndarray]:
        """(images (ways * per_class, C, H, W) float, chosen class labels) grouped class by class."""
        classes = self.rng.choice(len(self.by_class), ways, replace=False)
        idx = np.concatenate([self.rng.choice(self.by_class[c], per_class, replace=False) for c in classes])
        return self._take(idx), classes

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A uniform random batch of images and their labels."""
        idx = self.rng.choice(len(self.data), size, replace=False)
        return self._take(idx), self.labels[torch.from_numpy(idx).to(self.device)]


def proto_loss(emb: torch.Tensor, ways: int, shots: int, queries: int) -> tuple[torch.Tensor, float]:
    """Prototypical loss of one episode laid out class by class (shots then queries)."""
    emb = emb.view(ways, shots + queries, -1)
    protos = emb[:, :shots].mean(1)
    q = emb[:, shots:].reshape(ways * queries, -1)
    logits = -torch.cdist(q, protos).pow(2)
    target = torch.arange(ways, device=emb.device).repeat_interleave(queries)
    return F.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean().item()


def proxy_loss(emb: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Prototype loss against learned per-class centres (-squared distance logits)."""
    logits = -((emb * emb).sum(1, keepdim=True) - 2 * emb @ centres.T + (centres * centres).sum(1)[None])
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean().item()


def validate(model: Conv4, config: dict, val: ImageSet, ways: int, episodes: int, device: torch.device) -> float:
    """Held-out `ways`-way 1-shot accuracy (eval-mode BatchNorm), embedding every image once."""
    enc = Encoder(model, config, device)
    acc = episode_accuracies(enc.embed(val.pixels), val.labels, ways, 1, 5, episodes, seed=12345)
    model.train()
    return summarize(acc)[0]


def validate_or_keep(model: Conv4, config: dict, val: ImageSet, args: argparse.Namespace, device: torch.device,
                     out: Path, step: int) -> float:
    """`validate`; if it fails, the weights trained so far are saved to `<out stem>.failed.pt` and named."""
    try:
        return validate(model, config, val, args.val_ways, args.val_episodes, device)
    except Exception as error:
        kept = save_checkpoint(out.with_name(out.stem + ".failed" + out.suffix), model, config,
                               training={"command": args.command_line, "step": step, "failed": str(error)})
        raise ValueError(f"validation at step {step} failed ({error}); the weights trained so far are in {kept}") \
            from error


KEEP_BEST_NEEDS_SPLIT = ("--keep best needs a validation set held out of the training data (omniglot: "
                         "--val-alphabets N); --monitor-evaluation only prints and never selects")


def init_from(model: Conv4, path: str, config: dict) -> list[dict]:
    """Load an encoder checkpoint's weights into `model` (e.g. proxy-pretrained); returns its recorded phases."""
    blob = read_checkpoint(path)
    if members(blob["config"]) != 1:
        raise ValueError(f"--init {path}: a combined encoder ({members(blob['config'])} members); "
                         "train from one of its members")
    core = ("arch", "hidden", "depth", "image_size", "channels", "preprocessing")
    if any(blob["config"].get(k) != config.get(k) for k in core):
        raise ValueError(f"--init {path}: its network or preprocessing differs from this run's "
                         f"({ {k: blob['config'].get(k) for k in core[:5]} })")
    model.load_state_dict(blob["state_dict"], strict=False)
    training = blob.get("extra", {}).get("training", {})
    done = training.get("phases") or [{"command": training.get("command", "unrecorded"),
                                       "end_step": training.get("step")}]
    return [{**ph, "stage": f"init {blob['fingerprint']}"} for ph in done]


def device_name(device: torch.device) -> str:
    """The device in words, e.g. `cpu (1 threads)` or `cuda:0 (NVIDIA H200)`."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"


def train(args: argparse.Namespace) -> dict:
    """Run (or resume) training; writes `<out>` and the state at each validation/save and at the end."""
    if args.dataset == "folder" and args.mode is None:
        args.mode = detect_mode(args.data_dir)
    if args.image_size is None:
        args.image_size = 84 if args.dataset == "mini-imagenet" or getattr(args, "mode", "L") == "RGB" else 28
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    no_split = args.dataset == "omniglot" and args.val_alphabets <= 0
    if args.keep == "best" and no_split:
        raise ValueError(KEEP_BEST_NEEDS_SPLIT)
    train_set, val, val_desc = load_data(args)
    val, val_desc = fit_recipe(args, train_set, val, val_desc)  # before the first step: a folder's recipe is checked
    if args.keep == "best" and (val is None or val_desc.startswith("monitor only")):
        raise ValueError(KEEP_BEST_NEEDS_SPLIT)
    c, s = train_set.image_shape[0], train_set.image_shape[1]
    pre = folder_preprocessing(args) if args.dataset == "folder" else None
    config = default_config(args.dataset, s, c, pre, arch=args.arch, hidden=args.hidden)
    model = build_model(config).to(device)
    prior = init_from(model, args.init, config) if args.init else []
    dim = embedding_dim(config)
    centres = None
    params = list(model.parameters())
    if args.method == "proxy":
        centres = torch.nn.Parameter(torch.zeros(len(train_set.class_ids), dim, device=device))
    groups = [{"params": params, "scale": 1.0}]
    if centres is not None:
        groups.append({"params": [centres], "scale": args.centre_lr_scale})
    opt = torch.optim.Adam(groups, lr=args.lr)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    state_path = out.with_name(out.name + ".state.pt")
    step, history, elapsed, cpu_total, phases = 0, [], 0.0, 0.0, []
    best: dict | None = None  # {"step", "val"} of the kept weights under --keep best
    best_model: Conv4 | None = None
    if args.resume and state_path.exists():
        st = torch.load(state_path, map_location=device, weights_only=False)
        check_recipe(st.get("recipe"), recipe(args), state_path)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if centres is not None:
            centres.data.copy_(st["centres"])
        rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"].cpu())  # map_location may have moved it to the GPU
        step, history, elapsed = st["step"], st["history"], st["elapsed"]
        cpu_total = st.get("cpu", 0.0)
        phases = st.get("phases") or [{"command": "unrecorded (the state predates phase records)", "start_step": 0,
                                       "end_step": step, "wall_s": round(elapsed, 1)}]
        if st.get("best") is not None and args.keep == "best":
            best, best_model = st["best"], build_model(config).to(device)
            best_model.load_state_dict(st["best_model"])
        print(f"resumed from {state_path} at step {step}")
    else:
        phases = prior
        if args.resume:
            print(f"--resume: no state at {state_path}; starting at step 0")
    phase = {"command": args.command_line, "start_step": step, "end_step": step, "seed": args.seed,
             "device": device_name(device), "torch": str(torch.__version__), "wall_s": 0.0, "cpu_s": 0.0,
             "started_utc": datetime.now(UTC).isoformat(timespec="seconds")}
    phases = [*phases, phase]
    sampler = Sampler(train_set, rng, device)
    tmean, tstd = config["preprocessing"]["mean"], config["preprocessing"]["std"]
    mean = torch.tensor(tmean, device=device).view(1, c, 1, 1)
    std = torch.tensor(tstd, device=device).view(1, c, 1, 1)
    print(f"training {args.method} {args.arch} ({dim}-d, {4 * dim} bytes per class) on {len(train_set.class_ids)} "
          f"classes / {len(train_set)} images, augment {'on' if args.augment else 'off'}, validation: {val_desc}, "
          f"device {device_name(device)}")
    model.train()
    wall0, cpu0, step0 = time.time(), time.process_time(), step
    bar = tqdm(total=args.episodes, initial=step, desc="pretrain", mininterval=2)
    run_acc = run_loss = 0.0
    stop = min(args.episodes, args.stop_after or args.episodes)
    while step < stop:
        for g in opt.param_groups:
            g["lr"] = lr_at(args, step) * g["scale"]
        if args.method == "proto":
            x, _ = sampler.episode(args.ways, args.shots + args.queries)
            y = None
        else:
            x, y = sampler.batch(args.batch_size)
        if args.augment:
            x = augment(x, rng, args)
        x = (x - mean) / std
        if args.method == "proto":
            loss, acc = proto_loss(model(x), args.ways, args.shots, args.queries)
        else:
            loss, acc = proxy_loss(model(x), y, centres)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        fresh = bar.n == bar.initial  # first step of this process: start the running means afresh
        run_loss = loss.item() if fresh else 0.98 * run_loss + 0.02 * loss.item()
        run_acc = acc if fresh else 0.98 * run_acc + 0.02 * acc
        bar.update(1)
        bar.set_postfix(loss=f"{run_loss:.3f}", acc=f"{run_acc:.3f}", lr=f"{lr_at(args, step - 1):.1e}")
        validating = step % args.val_every == 0 or step == args.episodes
        if not (validating or step == stop or (args.save_every and step % args.save_every == 0)):
            continue
        wall, cpu = time.time() - wall0, time.process_time() - cpu0
        phase.update(end_step=step, wall_s=round(wall, 1), cpu_s=round(cpu, 1))
        entry = {"step": step, "loss": round(run_loss, 4), "train_acc": round(run_acc, 4),
                 "seconds": round(elapsed + wall, 1), "cpu_s": round(cpu_total + cpu, 1),
                 "eta_s": round(wall / (step - step0) * (args.episodes - step), 1)}
        if val is not None and validating:
            score = validate_or_keep(model, config, val, args, device, out, step)
            entry[f"val_{args.val_ways}way_1shot"] = round(score, 4)
            if args.keep == "best" and (best is None or score > best["val"]):
                best, best_model = {"step": step, "val": round(score, 4)}, copy.deepcopy(model)
        history.append(entry)
        tqdm.write(json.dumps(entry))
        kept = {"rule": "last", "step": step} if args.keep == "last" else {"rule": "best by validation", **(best or {})}
        info = {"command": args.command_line, "phases": phases, "recipe": recipe(args), "step": step,
                "kept": kept, "history": history, "validation": val_desc}
        if args.keep == "best":
            save_checkpoint(out.with_name(out.stem + ".last" + out.suffix), model, config,
                            training={**info, "kept": {"rule": "last", "step": step}})
            if best_model is not None:
                save_checkpoint(out, best_model, config, training=info)
        else:
            save_checkpoint(out, model, config, training=info)
        blob = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "centres": centres.data if centres is not None else None, "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "history": history, "elapsed": elapsed + wall,
                "cpu": cpu_total + cpu, "phases": phases, "recipe": recipe(args), "best": best,
                "best_model": best_model.state_dict() if best_model is not None else None}
        torch.save(blob, state_path.with_name(state_path.name + ".tmp"))
        state_path.with_name(state_path.name + ".tmp").replace(state_path)
    bar.close()
    enc = Encoder(best_model if best_model is not None else model, config, device)
    return {"out": str(out), "fingerprint": enc.fingerprint, "arch": args.arch, "dim": dim,
            "bytes_per_class": 4 * dim, "steps": step, "kept": kept if step > step0 else None,
            "seconds": round(elapsed + time.time() - wall0, 1),
            "cpu_s": round(cpu_total + time.process_time() - cpu0, 1), "last": history[-1] if history else None}


def register(parser: argparse.ArgumentParser) -> None:
    """Arguments of `fedrecon pretrain`."""
    p = parser
    p.add_argument("--dataset", required=True, choices=["omniglot", "mini-imagenet", "glyphs", "folder"],
                   help="folder: your own images, --data-dir ROOT/<class name>/<image files>")
    p.add_argument("--data-dir", default=None, help="data directory (omniglot, mini-imagenet, folder)")
    add_folder_arguments(p)
    p.add_argument("--out", required=True, help="encoder checkpoint to write (.pt)")
    p.add_argument("--download", action="store_true", help="omniglot: fetch the official zips into --data-dir")
    p.add_argument("--csv-dir", default=None, help="mini-imagenet: folder of the split CSVs if not --data-dir")
    p.add_argument("--method", default="proto", choices=["proto", "proxy"],
                   help="proto: episodic prototypical loss; proxy: one learned centre per training class")
    p.add_argument("--arch", default="conv4", choices=list(ARCHS),
                   help="conv4: the paper's (64-d at 28px); conv4-nopool: no last max-pool (576-d at 28px)")
    p.add_argument("--hidden", type=int, default=64,
                   help="channels of each Conv4 block (64: the paper's; at 28px conv4 embeds to this many floats)")
    p.add_argument("--augment", action="store_true",
                   help="small random affine distortion of every training image (drawn from the training RNG)")
    p.add_argument("--aug-rotate", type=float, default=10.0, help="--augment: max rotation, degrees")
    p.add_argument("--aug-shear", type=float, default=10.0, help="--augment: max shear angle, degrees")
    p.add_argument("--aug-scale", type=float, default=0.1, help="--augment: max relative scale change")
    p.add_argument("--aug-translate", type=float, default=2.0, help="--augment: max shift, pixels")
    p.add_argument("--ways", type=int, default=None,
                   help="classes per training episode (unset: 60, or every training class of a smaller folder)")
    p.add_argument("--shots", type=int, default=1, help="support images per class and episode")
    p.add_argument("--queries", type=int, default=None,
                   help="query images per class and episode (unset: 5, fewer if a folder's classes are small)")
    p.add_argument("--batch-size", type=int, default=512, help="images per step for --method proxy")
    p.add_argument("--centre-lr-scale", type=float, default=10.0, help="LR multiplier of proxy centres")
    p.add_argument("--episodes", type=int, default=2000, help="training steps")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--decay", type=float, default=0.5, help="LR factor at each step decay (--decay-every)")
    p.add_argument("--decay-every", type=int, default=0, help="steps per LR decay; 0 = cosine to --episodes")
    p.add_argument("--image-size", type=int, default=None, help="28 (omniglot, glyphs) or 84 (mini-imagenet)")
    p.add_argument("--rotations", type=int, nargs="+", default=[0, 90, 180, 270], help="omniglot only")
    p.add_argument("--val-alphabets", type=int, default=0, help="omniglot: hold out this many alphabets")
    p.add_argument("--monitor-evaluation", action="store_true", help="omniglot: also score images_evaluation")
    p.add_argument("--glyph-classes", type=int, default=1000, help="glyphs: training classes")
    p.add_argument("--glyph-val-classes", type=int, default=200, help="glyphs: held-out validation classes")
    p.add_argument("--val-every", type=int, default=200, help="validate and checkpoint every N steps")
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps (no validation)")
    p.add_argument("--val-ways", type=int, default=None,
                   help="ways of the 1-shot validation episodes (unset: 20, fewer for a small folder)")
    p.add_argument("--val-episodes", type=int, default=300, help="validation episodes")
    p.add_argument("--cache-dir", default=None, help="cache decoded images here")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling, augmentation and initial weights")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from <out>.state.pt (model, optimizer, RNG, step, phases); refused if "
                        "the recipe differs (dataset, arch, method, ways, shots, queries, lr, schedule, augment, "
                        "seed, held-out alphabets, and --episodes on a cosine schedule); a step-decay schedule "
                        "(--decay-every > 0) may be extended with a larger --episodes")
    p.add_argument("--init", default=None,
                   help="start from this encoder checkpoint's weights (e.g. a --method proxy run), not at random; "
                        "its phases are carried into this checkpoint's record")
    p.add_argument("--stop-after", type=int, default=0,
                   help="end this phase at this step (saved; the schedule still runs to --episodes): continue "
                        "later with --resume")
    p.add_argument("--keep", default="last", choices=["last", "best"],
                   help="what <out> holds: the last step, or the best step by held-out validation (needs "
                        "--val-alphabets for omniglot; the last step then goes to <out stem>.last.pt)")


def run(args: argparse.Namespace) -> int:
    """Train and print a JSON summary as the last line."""
    import sys

    if args.dataset != "glyphs" and not args.data_dir:
        raise SystemExit(f"--data-dir is required for {args.dataset}")
    args.command_line = "fedrecon " + " ".join(sys.argv[1:])
    print(json.dumps(train(args)))
    return 0
