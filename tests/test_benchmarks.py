"""Smoke test: every benchmark runs at tiny size and reports the keys bench.json promises, with sane values.

No timing assertions: only that figures exist, are positive and finite, and that exact quantities
(message sizes, parameter counts) are what they must be.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from helpers import FEDRECON

from fedrecon.benchmarks import classify, client_cost, fedavg, merge, scale, suite, sync, wire


def positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_wire_sizes_are_exact() -> None:
    r = wire.run(quick=True)
    # float16 halves exactly the vector bytes: the ratios differ by exactly 0.5 of raw float32
    assert r["ratio_fp32_d64_b16"] - r["ratio_fp16_d64_b16"] == pytest.approx(0.5)
    assert r["ratio_fp16_d64_b16"] == pytest.approx(r["ratio_bf16_d64_b16"])
    assert 1.0 < r["ratio_fp32_d64_b16"] < 1.3 and 1.0 < r["ratio_fp32_d1600_b16"] < r["ratio_fp32_d64_b16"]
    assert r["ratio_fp32_d64_b16_short_ids"] < r["ratio_fp32_d64_b16"]
    # the socket carries at least the message, plus a little HTTP/2 framing
    assert r["socket"]["socket_bytes_up_per_class"] >= r["socket"]["message_bytes_per_class"]
    assert r["socket_ratio_fp32_d64_b16"] < 1.5 and positive(r["socket_ratio_fp32_d64_b16_gzip"])
    assert "skipped" in r["accuracy"]


def test_merge_throughput_tiny(tmp_path) -> None:
    r = merge.run(quick=True, workdir=tmp_path, client_counts=(2,), seconds=0.5)
    for key in ("durable_updates_per_s_2_clients", "inmemory_updates_per_s", "store_direct_memory_updates_per_s",
                "store_direct_durable_updates_per_s_8_threads", "ratio_durable_8_to_inmemory"):
        assert positive(r[key]), key
    run = r["runs"]["durable_2"]
    assert run["pushes"] > 0 and run["updates_per_s"] == pytest.approx(run["pushes"] * 64 / run["seconds"])
    noop = r["runs"]["noop_2"]  # the transport ceiling, measured in the same run by the same client processes
    assert noop["pushes"] > 0 and r["transport_ceiling_updates_per_s_2_clients"] == noop["updates_per_s"]
    assert r["rounds"] == 1 and r["durable_vs_transport_ceiling"] == pytest.approx(
        r["durable_updates_per_s_2_clients"] / noop["updates_per_s"])
    stream = r["runs"]["durable_stream_2"]  # the same clients, their pushes on PushStream calls, durable
    assert stream["pushes"] > 0 and r["durable_stream_updates_per_s_2_clients"] == stream["updates_per_s"]
    assert r["durable_stream_vs_transport_ceiling"] == pytest.approx(stream["updates_per_s"] / noop["updates_per_s"])
    assert r["runs"]["noop_stream_2"]["pushes"] > 0


def test_merge_ratios_are_medians_of_rounds_taken_within_each_round(tmp_path) -> None:
    r = merge.run(quick=True, workdir=tmp_path, client_counts=(2,), seconds=0.3, rounds=3)
    assert r["rounds"] == 3 and len(r["round_ratios"]) == 3
    within = sorted(x["durable_stream_vs_transport_ceiling"] for x in r["round_ratios"])
    assert r["durable_stream_vs_transport_ceiling"] == within[1]
    rates = sorted(x["durable_updates_per_s"] for x in r["round_ratios"])
    assert r["durable_updates_per_s_2_clients"] == rates[1]  # the run with the median rate


def test_sync_latency_tiny() -> None:
    r = sync.run(quick=True, sizes=(200,), repeats=3)
    for key in ("full_0k_p50_ms", "store_full_0k_p50_ms", "incremental10_0k_p50_ms", "ratio_full_0k_to_store"):
        assert positive(r[key]), key
    # the ratio is the two figures measured in the same run, not a constant
    assert r["ratio_full_0k_to_store"] == pytest.approx(r["full_0k_p50_ms"] / r["store_full_0k_p50_ms"], rel=0.01)


def test_client_cost_tiny() -> None:
    r = client_cost.run(quick=True, shots=5, warmup_classes=1, timed_classes=1)
    for key in ("ms_per_class", "lower_ms_per_class", "icarl_ms_per_class", "speedup_vs_icarl"):
        assert positive(r[key]), key
    assert r["ms_per_class"] == r["fedrecon"]["p50_ms"] and r["icarl_ms_per_class"] == r["icarl"]["p50_ms"]
    assert r["speedup_vs_icarl"] == pytest.approx(r["icarl_ms_per_class"] / r["ms_per_class"], rel=0.01)
    assert r["torch_threads"] == 1 and r["fedrecon"]["n"] == 3


def test_classify_and_scale_tiny() -> None:
    r = classify.run(quick=True, batch=8, sizes=(50, 1200))
    assert positive(r["batch_p50_ms_50"]) and positive(r["per_query_us_1k"]) and positive(r["embed_batch_p50_ms"])
    s = scale.inproc(clients=40, classes_per_client=5, universe=30)
    assert s["inproc_clients"] == 40 and positive(s["inproc_seconds"]) and positive(s["inproc_peak_traced_mb"])


def test_fedavg_bytes() -> None:
    r = fedavg.run()
    assert r["conv4_parameters"] == 111_936
    assert r["fedavg_bytes_per_merge"] == 10 * 2 * 111_936 * 4
    assert r["bytes_ratio"] == pytest.approx(r["fedavg_bytes_per_merge"] / r["prototype_bytes_per_merge"])
    assert r["bytes_ratio"] > 1


def test_headlines_mark_targets() -> None:
    results = {"wire": {"ratio_fp32_d64_b16": 1.05, "ratio_fp16_d64_b16": 0.6},
               "merge": {"durable_updates_per_s_8_clients": 40_000.0, "inmemory_updates_per_s": 400_000.0}}
    rows = {row["figure"]: row for row in suite.headline_rows(results)}
    assert rows["wire.ratio_fp32_d64_b16"]["met"] is True and rows["wire.ratio_fp16_d64_b16"]["met"] is False
    merged = rows["merge.durable_updates_per_s_8_clients"]
    assert merged["met"] is False and merged["ratio"] == pytest.approx(0.1)
    assert rows["pull.full_10k_p50_ms"]["value"] is None and rows["pull.full_10k_p50_ms"]["met"] is None
    assert "| merge.durable_updates_per_s_8_clients | 40,000 |" in suite.markdown(results, "fedrecon bench")


def test_bench_command_writes_json_and_table(tmp_path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run([*FEDRECON, "bench", "--quick", "--only", "wire,fedavg", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads((out / "bench.json").read_text())
    assert written["wire"]["ratio_fp32_d64_b16"] == pytest.approx(wire.run(quick=True)["ratio_fp32_d64_b16"])
    assert positive(written["fedavg"]["bytes_ratio"]) and written["machine"]["nproc"] >= 1
    table = (out / "bench.md").read_text()
    assert "fedavg.bytes_ratio" in table and "fedrecon bench --quick" in table
    bad = subprocess.run([*FEDRECON, "bench", "--only", "nosuch", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode != 0 and "nosuch" in bad.stderr


def test_numpy_reference_matches_store_merge() -> None:
    """The merge benchmark's ceiling merges the same numbers the store does."""
    pushes = merge._decoded(8, 4, 16, 2)
    assert len(pushes) == 16 and all(d.means.shape == (4, 8) for _, d in pushes)
    assert np.all(np.concatenate([d.counts for _, d in pushes]) >= 1)


def test_profile_layers_charge_each_sample_to_its_innermost_layer() -> None:
    from fedrecon.benchmarks.profile_push import summarize

    raw = "\n".join([
        "thread (1): w;Thread.run (threading.py:1);PrototypeStore._process (server/store.py:9);"
        "check_values (server/store.py:3) 3",
        "thread (1): w;Thread.run (threading.py:1);PrototypeStore._process (server/store.py:9) 1",
        "thread (2): r;_serve (grpc/_server.py:1) 4",
        "thread (3): x;Condition.wait (threading.py:3) 2",
    ])
    shares = summarize(raw)
    assert shares == {"gRPC (receive, dispatch, send)": 0.4, "writer: check content": 0.3,
                      "thread hand-offs (locks, events)": 0.2, "writer: batching": 0.1}


def test_merge_ab_runs_another_checkout_from_its_own_sources(tmp_path) -> None:
    from pathlib import Path

    from fedrecon.benchmarks import merge_ab
    from fedrecon.layout import checkout_runner

    root = Path(__file__).resolve().parent.parent
    runner = checkout_runner(root, tmp_path)
    out = subprocess.run([sys.executable, str(runner), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("fedrecon")
    r = merge_ab.run([sys.executable, str(runner), "server"], rounds=1, window=2, seconds=0.5, clients=2)
    assert [run["build"] for run in r["runs"]] == ["a", "b"] and all(run["updates_per_s"] > 0 for run in r["runs"])
    assert r["b_over_a"] == pytest.approx(r["b_median_updates_per_s"] / r["a_median_updates_per_s"])


def test_thread_cpu_reads_each_thread_of_a_process() -> None:
    """`profile_push --by-thread` charges CPU per thread: the busy thread is seen, with its own CPU."""
    import os
    import threading
    import time

    from fedrecon.benchmarks.profile_push import thread_cpu

    spent, ready = threading.Event(), threading.Event()
    native: list[int] = []

    def busy() -> None:
        native.append(threading.get_native_id())
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        ready.set()
        spent.wait(10)

    worker = threading.Thread(target=busy)
    worker.start()
    assert ready.wait(30)
    cpu = thread_cpu(os.getpid())
    spent.set()
    worker.join()
    assert native[0] in cpu and threading.get_native_id() in cpu
    assert cpu[native[0]] >= 0.1 and all(value >= 0 for value in cpu.values())


def test_cluster_bench_tiny(tmp_path) -> None:
    """`fedrecon bench --only cluster`: the same clients against SQLite and 1-3 replicas, CPU per part, and a pull
    from a replica that did not take the push (it must see it)."""
    from fedrecon.benchmarks import cluster

    r = cluster.run(quick=True, workdir=tmp_path, clients=2)
    for name in ("sqlite", "postgres_1_replicas", "postgres_2_replicas", "postgres_3_replicas"):
        assert r[name]["pushes"] > 0 and positive(r[name]["updates_per_s"]), name
        assert positive(r[name]["server_cpu_us_per_push"]) and positive(r[name]["client_cpu_us_per_push"]), name
    for n in (1, 2, 3):
        assert positive(r[f"postgres_{n}_replicas"]["postgres_cpu_us_per_push"])
    assert r["cross_replica_pull"]["pulls_that_saw_the_push"] == r["cross_replica_pull"]["n"] == 20
