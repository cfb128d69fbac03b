"""Crash safety: client processes push while the server is SIGKILLed at random moments and restarted on its database.

Run: python -m fedrecon.benchmarks.crash_safety --kills 20 --clients 8

Each client process pushes numbered deltas whose content is a pure function of (client, seq), with
values that are exact binary fractions so every float64 sum is exact in any order; it appends each
acknowledged seq to its own file. The server checkpoints every few operations (`--checkpoint-every`),
so kills land in log appends, checkpoints and WAL writes alike. After every kill the database files
are copied and loaded: for every client the stored pushes must be exactly seqs 1..L (L >= its last
acknowledged seq) and for every class the stored count and sum must equal exactly what those pushes
add up to. Prints JSON with `acked`, `lost` (acknowledged pushes missing) and `doubled` (counted twice).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedrecon.benchmarks.harness import ServerProcess, free_port, print_result

SPACE = "crash"


def push_content(client: int, seq: int, pool: int, dim: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The deterministic deltas of a client's push `seq`: ids, counts, means (multiples of 1/8, exact)."""
    rng = np.random.default_rng([client, seq])
    n = int(rng.integers(1, 7))
    ids = [f"k{i}" for i in rng.choice(pool, size=n, replace=False)]
    return ids, rng.integers(1, 6, size=n), rng.integers(-16, 17, size=(n, dim)).astype(np.float32) / 8


def worker(args: argparse.Namespace) -> int:
    """One client process: push until the stop file exists, recording each acknowledged seq."""
    from fedrecon.client.recon_client import ReconClient

    client_id = f"client{args.index}"
    acks = open(args.acks, "a")  # noqa: SIM115 - kept open for the whole run
    with ReconClient(args.address, client_id, state_path=args.state, timeout=2.0, retries=100_000,
                     backoff=0.05) as client:
        if client.state.pending is not None:
            ack = client.resume()
            acks.write(f"{ack.seq}\n")
        while not Path(args.stop).exists():
            seq = client.state.last_seq + 1
            ack = client.push(SPACE, *push_content(args.index, seq, args.pool, args.dim))
            if ack.seq != seq:
                raise RuntimeError(f"{client_id}: pushed seq {seq}, acknowledged {ack.seq}")
            acks.write(f"{ack.seq}\n")
            acks.flush()
            os.fsync(acks.fileno())
    acks.close()
    return 0


def expected_tables(last_seqs: dict[int, int], pool: int, dim: int) -> tuple[dict, dict]:
    """Per (client, class) and per class: (count, sum) that pushes 1..L of every client add up to."""
    per_client: dict[tuple[int, str], list] = {}
    for client, last in last_seqs.items():
        for seq in range(1, last + 1):
            ids, counts, means = push_content(client, seq, pool, dim)
            for cid, count, mean in zip(ids, counts, means.astype(np.float64), strict=True):
                entry = per_client.setdefault((client, cid), [0, np.zeros(dim)])
                entry[0] += int(count)
                entry[1] = entry[1] + count * mean
    merged: dict[str, list] = {}
    for (_, cid), (count, total) in per_client.items():
        entry = merged.setdefault(cid, [0, np.zeros(dim)])
        entry[0] += count
        entry[1] = entry[1] + total
    return per_client, merged


def read_acks(path: Path) -> int:
    """The highest acknowledged seq in a client's ack file (0 if none)."""
    if not path.exists():
        return 0
    seqs = [int(line) for line in path.read_text().split() if line.strip()]
    return max(seqs, default=0)


def verify(db: Path, workdir: Path, clients: int, pool: int, dim: int, final: bool) -> dict:
    """Load a copy of the database and compare it, exactly, with what the clients' pushes add up to."""
    from fedrecon.server.store import PrototypeStore

    copy_dir = Path(tempfile.mkdtemp(dir=workdir, prefix="check-"))
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(db) + suffix)
        if source.exists():
            shutil.copy2(source, copy_dir / (db.name + suffix))
    acked = {c: read_acks(workdir / f"acks{c}.txt") for c in range(clients)}
    with PrototypeStore(copy_dir / db.name) as store:
        stored = {c: store.client_record(f"client{c}").last_seq for c in range(clients)}
        lost = sum(max(0, acked[c] - stored[c]) for c in range(clients))
        unacked_applied = sum(max(0, stored[c] - acked[c]) for c in range(clients))
        per_client, merged = expected_tables(stored, pool, dim)
        doubled = mismatched = 0
        for (client, cid), (count, total) in per_client.items():
            table = store.contribution(f"client{client}", SPACE)
            got_count, got_sum = (int(table.counts[table.index[cid]]), table.sums[table.index[cid]]) \
                if cid in table else (0, np.zeros(dim))
            doubled += got_count > count
            mismatched += got_count != count or not np.array_equal(got_sum, total)
        pulled = store.pull(SPACE)
        got = {cid: (int(n), m * n) for cid, n, m in zip(pulled.class_ids, pulled.counts, pulled.means, strict=True)}
        for cid, (count, total) in merged.items():
            got_count, got_sum = got.get(cid, (0, np.zeros(dim)))
            doubled += got_count > count
            mismatched += got_count != count or not np.allclose(got_sum, total, rtol=0, atol=1e-9)
        table = store.spaces.get(SPACE)
        if table is not None:  # the merged sums themselves, exactly
            for cid, (_, total) in merged.items():
                mismatched += cid not in table or not np.array_equal(table.sums[table.index[cid]], total)
        version = store.version
    shutil.rmtree(copy_dir, ignore_errors=True)
    if final:
        lost += sum(max(0, stored[c] - acked[c]) for c in range(clients))  # every applied push must be acked
    return {"acked": sum(acked.values()), "stored": sum(stored.values()), "lost": lost, "doubled": int(doubled),
            "mismatched": int(mismatched), "unacked_applied": unacked_applied, "version": version}


def run(kills: int, clients: int, pool: int = 40, dim: int = 8, checkpoint_every: int = 2, min_up: float = 0.3,
        max_up: float = 1.5, seed: int = 0, workdir: Path | None = None) -> dict:
    """The whole experiment; returns the JSON-ready result."""
    rng = random.Random(seed)
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="fedrecon-crash-")) if workdir is None else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    db, stop = workdir / "crash.db", workdir / "stop"
    server = ServerProcess(free_port(), ["--db", str(db)], ["--insecure", "--checkpoint-every",
                                                            str(checkpoint_every)]).start()
    procs = [subprocess.Popen([sys.executable, "-m", "fedrecon.benchmarks.crash_safety", "--worker",
                               "--index", str(c), "--address", server.address, "--state",
                               str(workdir / f"state{c}.json"), "--acks", str(workdir / f"acks{c}.txt"), "--stop",
                               str(stop), "--pool", str(pool), "--dim", str(dim)]) for c in range(clients)]
    checks, failures = [], []
    start = time.monotonic()
    try:
        time.sleep(max_up)
        for _ in tqdm(range(kills), desc="kills", file=sys.stderr):
            time.sleep(rng.uniform(min_up, max_up))
            server.kill()
            check = verify(db, workdir, clients, pool, dim, final=False)
            checks.append(check)
            if check["lost"] or check["doubled"] or check["mismatched"]:
                failures.append(check)
            server.start()
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError("a client process failed")
        stop.touch()
        for p in procs:
            p.wait(timeout=300)
        server.kill()
        final = verify(db, workdir, clients, pool, dim, final=True)
    finally:
        stop.touch()
        server.kill()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    result = {
        "kills": kills, "clients": clients, "checkpoint_every": checkpoint_every,
        "acked": final["acked"], "lost": final["lost"] + sum(c["lost"] for c in checks),
        "doubled": final["doubled"] + sum(c["doubled"] for c in checks),
        "mismatched": final["mismatched"] + sum(c["mismatched"] for c in checks),
        "checks": len(checks) + 1, "failed_checks": len(failures) + int(bool(final["lost"] or final["doubled"] or
                                                                             final["mismatched"])),
        "acked_but_in_flight_at_kill": sum(c["unacked_applied"] for c in checks),
        "client_exit_codes": [p.returncode for p in procs], "final_version": final["version"],
        "seconds": round(time.monotonic() - start, 1),
    }
    if own:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; run the harness (or, with --worker, one client process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--checkpoint-every", type=int, default=2, help="server checkpoint interval (operations)")
    parser.add_argument("--pool", type=int, default=40, help="distinct class ids")
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--min-up", type=float, default=0.3, help="shortest time between a restart and a kill (s)")
    parser.add_argument("--max-up", type=float, default=1.5, help="longest time between a restart and a kill (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the database and ack files here")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--acks", help=argparse.SUPPRESS)
    parser.add_argument("--stop", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.kills < 0 or args.clients < 1:
        parser.error("--kills must be >= 0 and --clients >= 1")
    result = run(args.kills, args.clients, args.pool, args.dim, args.checkpoint_every, args.min_up, args.max_up,
                 args.seed, args.workdir)
    print_result(result, args.out)
    return 0 if result["lost"] == 0 and result["doubled"] == 0 and result["mismatched"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
