"""Crash safety: client processes push while the server is SIGKILLed at random moments and restarted on its database.

Run: python -m fedrecon.benchmarks.crash_safety --kills 20 --clients 8 [--stream 8]

Each client process pushes numbered deltas whose content is a pure function of (client, seq), with
values that are exact binary fractions so every float64 sum is exact in any order; it appends each
acknowledged seq to its own file. The server checkpoints every few operations (`--checkpoint-every`),
so kills land in log appends, checkpoints and WAL writes alike. After every kill the database files
are copied and loaded: for every client the stored pushes must be exactly seqs 1..L (L >= its last
acknowledged seq) and for every class the stored count and sum must equal exactly what those pushes
add up to. Prints JSON with `acked`, `lost` (acknowledged pushes missing) and `doubled` (counted twice).
Beside the clients (unless --no-hostile), `Pressure` re-sends used seqs with other content, pulls the
table in small pages during the pushes, and tries a second server on the database after every restart.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedrecon.benchmarks.harness import free_port, print_result
from fedrecon.experiments.process import FEDRECON, ServerProcess

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
            acks.write(f"{ack.seq} {ack.version}\n")
        while not Path(args.stop).exists():
            seq = client.state.last_seq + 1
            if args.stream > 1:  # a backlog: `stream` numbered pushes on one PushStream call
                pushes = [push_content(args.index, seq + i, args.pool, args.dim) for i in range(args.stream)]
                answered = client.push_many(SPACE, pushes)
            else:
                answered = [client.push(SPACE, *push_content(args.index, seq, args.pool, args.dim))]
            if [a.seq for a in answered] != list(range(seq, seq + len(answered))) or not answered:
                raise RuntimeError(f"{client_id}: pushed from seq {seq}, acknowledged {[a.seq for a in answered]}")
            for ack in answered:
                acks.write(f"{ack.seq} {ack.version}\n")
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


def read_ack_versions(path: Path) -> dict[int, int]:
    """seq -> global version of each acknowledged push in a client's ack file ("seq version" lines)."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts:
            out[int(parts[0])] = int(parts[1]) if len(parts) > 1 else 0
    return out


def read_acks(path: Path) -> int:
    """The highest acknowledged seq in a client's ack file (0 if none)."""
    return max(read_ack_versions(path), default=0)


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
        table = store.tables.spaces.get(SPACE)
        if table is not None:  # the merged sums themselves, exactly
            for cid, (_, total) in merged.items():
                mismatched += cid not in table or not np.array_equal(table.sums[table.index[cid]], total)
        version = store.version
    shutil.rmtree(copy_dir, ignore_errors=True)
    if final:
        lost += sum(max(0, stored[c] - acked[c]) for c in range(clients))  # every applied push must be acked
    return {"acked": sum(acked.values()), "stored": sum(stored.values()), "lost": lost, "doubled": int(doubled),
            "mismatched": int(mismatched), "unacked_applied": unacked_applied, "version": version}


class Pressure:
    """Hostile traffic beside the clients, across kills: reused seqs with other content, paged pulls, second servers.

    A rogue re-sends each client's last seq with other content (what two processes sharing a state file,
    or a state file restored from a backup, do): every such push must be refused (ALREADY_EXISTS, or
    FAILED_PRECONDITION when the seq is already stale), never acknowledged. A pager pulls the table in
    small pages while pushes land, going on with the same page token when the server comes back from a kill;
    each completed paged pull must equal exactly the pushes acknowledged with a version <= its last page's
    version. After every restart a second server on the same database
    must refuse to start.
    """

    def __init__(self, address: str, db: Path, clients: int, pool: int, dim: int, seed: int,
                 page_bytes: int = 1200) -> None:
        self.address, self.db, self.clients, self.pool, self.dim = address, db, clients, pool, dim
        self.page_bytes = page_bytes
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.counts: dict[str, int] = {k: 0 for k in ("reused_refused", "reused_stale", "reuse_silently_dropped",
                                                      "reuse_accepted", "paged_pulls", "paged_pulls_across_restarts",
                                                      "paged_pages",
                                                      "second_servers_refused", "second_servers_started")}
        self.pulls: list[tuple[int, dict[str, tuple[int, np.ndarray]]]] = []
        self.threads = [threading.Thread(target=self._reuse, daemon=True),
                        threading.Thread(target=self._page, daemon=True)]

    def start(self) -> Pressure:
        """Start the rogue and the pager."""
        for thread in self.threads:
            thread.start()
        return self

    def close(self) -> None:
        """Stop both threads."""
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _reuse(self) -> None:
        import grpc

        from fedrecon.proto import codec
        from fedrecon.proto.payloads import Deltas
        from fedrecon.proto.v1 import admin_pb2 as apb
        from fedrecon.proto.v1 import admin_pb2_grpc as arpc
        from fedrecon.proto.v1 import recon_pb2 as pb
        from fedrecon.proto.v1 import recon_pb2_grpc as rpc

        with grpc.insecure_channel(self.address) as channel:
            stub, admin = rpc.ReconnaissanceStub(channel), arpc.AdminStub(channel)
            while not self.stop.wait(0.05):
                try:
                    seqs = {c.client_id: c.last_seq for c in admin.Stats(apb.StatsRequest(), timeout=2).clients}
                    index = self.rng.randrange(self.clients)
                    seq = seqs.get(f"client{index}", 0)
                    if not seq:
                        continue
                    ids, counts, means = push_content(index, seq, self.pool, self.dim)
                    other = codec.encode_deltas(Deltas(ids, counts + 1, means))  # the same seq, other content
                    reply = stub.Push(pb.PushRequest(client_id=f"client{index}", space=SPACE, seq=seq, deltas=other),
                                      timeout=2)
                    self.counts["reuse_silently_dropped" if reply.duplicate else "reuse_accepted"] += 1
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.ALREADY_EXISTS:
                        self.counts["reused_refused"] += 1
                    elif error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        self.counts["reused_stale"] += 1  # the client pushed again meanwhile: a gap, refused

    def _page(self) -> None:
        import grpc

        from fedrecon.proto import codec
        from fedrecon.proto.v1 import recon_pb2 as pb
        from fedrecon.proto.v1 import recon_pb2_grpc as rpc

        with grpc.insecure_channel(self.address) as channel:  # default receive limits
            stub = rpc.ReconnaissanceStub(channel)
            while not self.stop.wait(0.02):
                table: dict[str, tuple[int, np.ndarray]] = {}
                token, pages, crossed = "", 0, False
                while not self.stop.is_set():
                    try:
                        reply = stub.Pull(pb.PullRequest(space=SPACE, dtype=pb.FLOAT64, page_token=token,
                                                         max_reply_bytes=self.page_bytes), timeout=2)
                    except grpc.RpcError:  # the server was killed mid-pull: ask for the same page once it is back
                        crossed = crossed or pages > 0
                        time.sleep(0.05)
                        continue
                    deltas = codec.decode_deltas(reply.classes, allow_zero_counts=True)
                    for cid, count, mean in zip(deltas.class_ids, deltas.counts.tolist(), deltas.means, strict=True):
                        table[cid] = (count, mean * count)
                    pages, token = pages + 1, reply.next_page_token
                    if not token:
                        self.pulls.append((reply.version, table))
                        self.counts["paged_pulls"] += 1
                        self.counts["paged_pulls_across_restarts"] += crossed
                        self.counts["paged_pages"] += pages
                        break

    def check_second_server(self) -> None:
        """A second server on the same database must exit (2) instead of serving."""
        argv = [*FEDRECON, "server", "--host", "127.0.0.1", "--port", "0", "--db", str(self.db), "--insecure",
                "--log-level", "warning"]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = process.communicate(timeout=120)
            refused = process.returncode == 2 and "in use by another fedrecon server" in err
        except subprocess.TimeoutExpired:  # it is serving: the one-writer rule is broken
            process.kill()
            process.wait()
            refused = False
        self.counts["second_servers_refused" if refused else "second_servers_started"] += 1

    def mismatched_pulls(self, workdir: Path) -> int:
        """Completed paged pulls that differ from the acknowledged pushes with a version <= theirs."""
        acks = {c: read_ack_versions(workdir / f"acks{c}.txt") for c in range(self.clients)}
        bad = 0
        for version, table in self.pulls:
            last = {c: max((s for s, v in a.items() if v <= version), default=0) for c, a in acks.items()}
            _, merged = expected_tables(last, self.pool, self.dim)
            live = {cid: v for cid, v in table.items() if v[0] > 0}
            bad += set(live) != set(merged) or any(
                live[cid][0] != count or not np.allclose(live[cid][1], total, rtol=0, atol=1e-9)
                for cid, (count, total) in merged.items() if cid in live)
        return int(bad)


def run(kills: int, clients: int, pool: int = 40, dim: int = 8, checkpoint_every: int = 2, min_up: float = 0.3,
        max_up: float = 1.5, seed: int = 0, workdir: Path | None = None, hostile: bool = True,
        stream: int = 1) -> dict:
    """The whole experiment; returns the JSON-ready result."""
    rng = random.Random(seed)
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="fedrecon-crash-")) if workdir is None else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    db, stop = workdir / "crash.db", workdir / "stop"
    server = ServerProcess(db, ["--checkpoint-every", str(checkpoint_every)], port=free_port()).start()
    procs = [subprocess.Popen([sys.executable, "-m", "fedrecon.benchmarks.crash_safety", "--worker",
                               "--index", str(c), "--address", server.address, "--state",
                               str(workdir / f"state{c}.json"), "--acks", str(workdir / f"acks{c}.txt"), "--stop",
                               str(stop), "--pool", str(pool), "--dim", str(dim), "--stream", str(stream)])
             for c in range(clients)]
    checks, failures = [], []
    pressure = Pressure(server.address, db, clients, pool, dim, seed).start() if hostile else None
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
            if pressure is not None:
                pressure.check_second_server()
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError("a client process failed")
        stop.touch()
        for p in procs:
            p.wait(timeout=300)
        if pressure is not None:
            pressure.close()
        server.kill()
        final = verify(db, workdir, clients, pool, dim, final=True)
    finally:
        stop.touch()
        if pressure is not None:
            pressure.close()
        server.kill()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    result = {
        "kills": kills, "clients": clients, "checkpoint_every": checkpoint_every, "stream": stream,
        "acked": final["acked"], "lost": final["lost"] + sum(c["lost"] for c in checks),
        "doubled": final["doubled"] + sum(c["doubled"] for c in checks),
        "mismatched": final["mismatched"] + sum(c["mismatched"] for c in checks),
        "checks": len(checks) + 1, "failed_checks": len(failures) + int(bool(final["lost"] or final["doubled"] or
                                                                             final["mismatched"])),
        "acked_but_in_flight_at_kill": sum(c["unacked_applied"] for c in checks),
        "client_exit_codes": [p.returncode for p in procs], "final_version": final["version"],
        "seconds": round(time.monotonic() - start, 1),
    }
    if pressure is not None:
        result.update(pressure.counts, paged_mismatched=pressure.mismatched_pulls(workdir))
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
    parser.add_argument("--stream", type=int, default=1,
                        help="pushes per client call: 1 = unary Push, N > 1 = N pushes on one PushStream call")
    parser.add_argument("--workdir", type=Path, help="keep the database and ack files here")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--no-hostile", action="store_true",
                        help="without the rogue (reused seqs), the pager (paged pulls) and second-server attempts")
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
                 args.seed, args.workdir, hostile=not args.no_hostile, stream=args.stream)
    print_result(result, args.out)
    bad = ("lost", "doubled", "mismatched", "reuse_silently_dropped", "reuse_accepted", "paged_mismatched",
           "second_servers_started")
    return 0 if not any(result.get(key) for key in bad) else 1


if __name__ == "__main__":
    raise SystemExit(main())
