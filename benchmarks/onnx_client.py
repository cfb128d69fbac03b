"""Wall time of `fedrecon client learn` / `classify` processes with a torch encoder vs its ONNX export.

With an ONNX encoder the client commands never import torch (a device has none; importing it is most of a
short command's time). Real Omniglot PNGs (`images_evaluation`), `--images` learned offline, the same number
classified offline; each command `--repeats` times, median wall seconds (process start included).

    python -m fedrecon.benchmarks.onnx_client --data-dir ../shared/data/omniglot [--images 250] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

FEDRECON = [sys.executable, "-m", "fedrecon"]


def write_pngs(zip_path: Path, out: Path, images: int, per_class: int = 10) -> tuple[Path, list[Path]]:
    """`images` training PNGs in out/learn/<class>/ and as many query PNGs (the next drawings of each class)."""
    queries: list[Path] = []
    with zipfile.ZipFile(zip_path) as zf:
        by_class: dict[str, list[str]] = {}
        for name in sorted(n for n in zf.namelist() if n.endswith(".png")):
            by_class.setdefault(name.rsplit("/", 1)[0], []).append(name)
        for k, names in enumerate(list(by_class.values())[: images // per_class]):
            for split, picked in (("learn", names[:per_class]), ("query", names[per_class : 2 * per_class])):
                folder = out / split / f"c{k:03d}"
                folder.mkdir(parents=True, exist_ok=True)
                for n in picked:
                    (folder / n.rsplit("/", 1)[1]).write_bytes(zf.read(n))
                    if split == "query":
                        queries.append(folder / n.rsplit("/", 1)[1])
    return out / "learn", queries


def timed(command: list[str]) -> float:
    """Wall seconds of one process (it must succeed)."""
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - started


def imports_torch(command: list[str]) -> bool:
    """True if the command's process imports torch (`python -X importtime`)."""
    out = subprocess.run([sys.executable, "-X", "importtime", *command[1:]], check=True, capture_output=True,
                         text=True, timeout=600)
    return any(line.split("|")[-1].strip().split(".")[0] == "torch" for line in out.stderr.splitlines() if "|" in line)


def measure(encoder: str, learn: Path, queries: list[Path], work: Path, repeats: int) -> dict[str, Any]:
    """Median wall seconds of learn and classify with `encoder`, and whether torch was imported."""
    learn_s, classify_s = [], []
    for r in range(repeats):
        common = ["--offline", "--server", "127.0.0.1:1", "--client-id", "bench", "--encoder", encoder,
                  "--state-dir", str(work / f"state-{Path(encoder).stem}-{r}")]
        learn_s.append(timed([*FEDRECON, "client", "learn", *common, str(learn)]))
        classify_s.append(timed([*FEDRECON, "client", "classify", *common, *map(str, queries)]))
    command = [*FEDRECON, "client", "classify", *common, *map(str, queries)]
    return {"learn_s": round(statistics.median(learn_s), 2), "classify_s": round(statistics.median(classify_s), 2),
            "imports_torch": imports_torch(command)}


def main(argv: list[str] | None = None) -> int:
    """Export the shipped encoder to ONNX, time both; print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding images_evaluation.zip")
    parser.add_argument("--encoder", default="omniglot")
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        learn, queries = write_pngs(Path(args.data_dir) / "images_evaluation.zip", work, args.images)
        onnx = work / f"{args.encoder}.onnx"
        subprocess.run([*FEDRECON, "encoder", "export", args.encoder, "--out", str(onnx)], check=True,
                       capture_output=True, timeout=600)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True, timeout=600)
        result = {"images": len(queries), "python_import_torch_s": round(time.perf_counter() - started, 2),
                  "torch": measure(args.encoder, learn, queries, work, args.repeats),
                  "onnx": measure(str(onnx), learn, queries, work, args.repeats)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
