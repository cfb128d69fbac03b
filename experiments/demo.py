"""`fedrecon demo`: a real server process and 3 client processes learning glyphs over gRPC, end to end.

Each round every client learns a mission (a few new classes), scores itself on every class any client
has seen so far (before merging it knows only its own), pushes its per-class deltas, the server merges,
every client pulls and scores again. Prints a table per merge, writes results.json and demo.png.
`--dataset omniglot --data-dir DIR` runs it on real Omniglot (images_evaluation).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrecon.client.data import load_dataset
from fedrecon.client.encoder import load_encoder_spec
from fedrecon.experiments.datasets import class_counts
from fedrecon.experiments.process import ServerProcess
from fedrecon.experiments.protocols import federated


class ClientProcess:
    """One `python -m fedrecon.experiments.demo_client` process, spoken to in JSON lines."""

    def __init__(self, index: int, address: str, spec: dict[str, Any], data_dir: str | None, encoder: str,
                 log: Path) -> None:
        self.client_id = f"demo-client-{index}"
        self._log = log.open("w")
        argv = [sys.executable, "-m", "fedrecon.experiments.demo_client", "--address", address, "--client-id",
                self.client_id, "--dataset", json.dumps(spec), "--encoder", encoder]
        if data_dir:
            argv += ["--data-dir", data_dir]
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                        text=True, bufsize=1)
        self.log = log

    def send(self, message: dict[str, Any]) -> None:
        """Write one command."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        """Read one reply; a clear error (with the client's log) if the process died."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"{self.client_id} exited ({self.process.returncode}): "
                               f"{self.log.read_text()[-2000:]}")
        return json.loads(line)

    def close(self) -> None:
        """Ask it to quit; kill it if it does not."""
        if self.process.poll() is None:
            try:
                self.send({"cmd": "quit"})
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self._log.close()


def _pairs(schedule_test: dict[str, np.ndarray], classes: list[str]) -> list[list]:
    return [[c, schedule_test[c].tolist()] for c in classes]


def run_demo(dataset: str = "glyphs", data_dir: str | None = None, out: str | Path = "runs/demo", clients: int = 3,
             missions: int = 4, classes_per_mission: int = 5, train_shots: int = 10, test_shots: int = 5,
             encoder: str | None = None, seed: int = 0, echo: Any = print) -> dict[str, Any]:
    """Run the demo; returns the results document (also written to `out/results.json`)."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder_spec = encoder or dataset
    classes = clients * missions * classes_per_mission
    if dataset == "glyphs":
        spec = {"name": "glyphs", "classes": classes, "drawings": train_shots + test_shots, "seed": seed + 1,
                "cache_dir": str(out / "cache")}
    elif dataset == "omniglot":
        if not data_dir:
            raise SystemExit("--dataset omniglot needs --data-dir (folder with images_evaluation.zip)")
        spec = {"name": "omniglot", "background": False, "cache_dir": str(out / "cache")}
    else:
        raise SystemExit(f"unknown dataset {dataset!r} (glyphs or omniglot)")
    try:
        enc = load_encoder_spec(encoder_spec, dataset)
    except FileNotFoundError as error:
        raise SystemExit(f"{error}; pass --encoder PATH (or --encoder random)") from error
    data = load_dataset(spec, data_dir, enc.config["image_size"])  # also fills the cache the clients read
    schedule = federated(data.class_ids, class_counts(data), np.random.default_rng(seed), classes=classes,
                         clients=clients, classes_per_mission=classes_per_mission, train_shots=train_shots,
                         test_shots=test_shots, name="demo")
    server = ServerProcess().start()
    echo(f"server {server.address} (a real `fedrecon server` process); {clients} client processes; "
         f"{data.name}; encoder {enc.fingerprint}")
    procs: list[ClientProcess] = []
    rows = []
    try:
        procs = [ClientProcess(i, server.address, spec, data_dir, encoder_spec, out / f"client-{i}.log")
                 for i in range(clients)]
        for p in procs:
            p.receive()  # ready
        header = (f"{'merge':>5} {'classes':>7} | " + " ".join(f"{'c' + str(i) + ' before':>10}" for i in
                                                               range(clients))
                  + " | " + " ".join(f"{'c' + str(i) + ' after':>9}" for i in range(clients))
                  + f" | {'bytes up':>9} {'bytes down':>10}")
        echo(header)
        echo("-" * len(header))
        for r, rnd in enumerate(schedule.rounds):
            seen = schedule.seen_after(r)
            test = _pairs(schedule.test, seen)
            for i, p in enumerate(procs):
                visits = [[v.class_id, v.train.tolist()] for v in rnd.visits if v.client == i]
                p.send({"cmd": "learn", "visits": visits, "test": test})
            learned = [p.receive() for p in procs]
            for p in procs:
                p.send({"cmd": "sync", "test": test})
            synced = [p.receive() for p in procs]
            row = {"merge": r + 1, "classes_seen": len(seen), "before": [x["before"] for x in learned],
                   "after": [x["after"] for x in synced], "bytes_up": sum(x["bytes_up"] for x in learned),
                   "bytes_down": sum(x["bytes_down"] for x in synced),
                   "update_ms_per_class": float(np.mean([x["update_ms_per_class"] for x in learned])),
                   "embed_ms_per_class": float(np.mean([x["embed_ms_per_class"] for x in learned]))}
            rows.append(row)
            echo(f"{row['merge']:>5} {row['classes_seen']:>7} | "
                 + " ".join(f"{a:>9.1f}%" for a in row["before"]) + " | "
                 + " ".join(f"{a:>8.1f}%" for a in row["after"])
                 + f" | {row['bytes_up']:>9,} {row['bytes_down']:>10,}")
    finally:
        for p in procs:
            p.close()
        server.stop()
    result = {"dataset": data.name, "encoder": enc.fingerprint, "clients": clients, "missions": missions,
              "classes_per_mission": classes_per_mission, "train_shots": train_shots, "test_shots": test_shots,
              "server": "fedrecon server process over gRPC (loopback)", "rounds": rows,
              "final_accuracy_after_merge": float(np.mean(rows[-1]["after"])),
              "final_accuracy_before_merge": float(np.mean(rows[-1]["before"])),
              "bytes_up": sum(r["bytes_up"] for r in rows), "bytes_down": sum(r["bytes_down"] for r in rows),
              "update_ms_per_class": float(np.mean([r["update_ms_per_class"] for r in rows])),
              "embed_ms_per_class": float(np.mean([r["embed_ms_per_class"] for r in rows])),
              "wall_seconds": round(time.perf_counter() - start, 2)}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    result["plot"] = str(plot_demo(result, out / "demo.png"))
    return result


def plot_demo(result: dict[str, Any], path: Path) -> Path:
    """Accuracy per merge of each client before and after merging, and bytes per merge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from fedrecon.experiments.results import identical_to

    rows = result["rounds"]
    x = [r["classes_seen"] for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    after = {i: [r["after"][i] for r in rows] for i in range(result["clients"])}
    same = identical_to(after)
    for i in range(result["clients"]):
        twins = [j for j, k in same.items() if k == i]
        if i in same:
            continue  # drawn once, labelled by the client it equals
        names = "client " + " = ".join(str(c) for c in [i, *twins])
        line, = ax.plot(x, after[i], marker="o", label=f"{names} after merge" + (" (identical)" if twins else ""))
        ax.plot(x, [r["before"][i] for r in rows], marker="x", ls="--", color=line.get_color(),
                label=f"client {i} alone (before merge)")
    for i in same:
        ax.plot(x, [r["before"][i] for r in rows], marker="x", ls=":", label=f"client {i} alone (before merge)")
    ax.set_xlabel("classes seen by the federation")
    ax.set_ylabel("accuracy over all classes seen (%)")
    ax.set_ylim(0, 100)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"fedrecon demo: {result['dataset']}")
    merges = [r["merge"] for r in rows]
    bx.bar(np.array(merges) - 0.2, [r["bytes_up"] for r in rows], width=0.4, label="pushed (all clients)")
    bx.bar(np.array(merges) + 0.2, [r["bytes_down"] for r in rows], width=0.4, label="pulled (all clients)")
    bx.set_xticks(merges)
    bx.set_xlabel("merge")
    bx.set_ylabel("bytes")
    bx.legend(fontsize=8)
    bx.set_title("bytes on the wire per merge")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def register(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options."""
    parser.add_argument("--dataset", default="glyphs", choices=["glyphs", "omniglot"])
    parser.add_argument("--data-dir", help="Omniglot folder (with images_evaluation.zip) for --dataset omniglot")
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--missions", type=int, default=4, help="merges (each client learns one mission per merge)")
    parser.add_argument("--classes-per-mission", type=int, default=5)
    parser.add_argument("--train-shots", type=int, default=10)
    parser.add_argument("--test-shots", type=int, default=5)
    parser.add_argument("--encoder", help="encoder (default: the shipped one for the data set; or a path, random)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its summary as JSON."""
    result = run_demo(args.dataset, args.data_dir, args.out, args.clients, args.missions, args.classes_per_mission,
                      args.train_shots, args.test_shots, args.encoder, args.seed)
    summary = {k: v for k, v in result.items() if k != "rounds"}
    print(json.dumps(summary, indent=2))
    return 0
