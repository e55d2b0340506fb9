"""Encode scaling on Ray (issue 23 item 4): the same chunks encoded by ``--engine ray`` with 1 and 2 workers.

Not part of `make test` (the file name does not match test_*.py); `make bench` runs it. Each run is
``lvm.data.ray_build.encode_with_ray`` as ``build-data --engine ray`` calls it: a fresh embedded Ray cluster
(``num_cpus`` = workers), the actors load the encoder (the packaged MiniLM, ONNX backend, batch 64), then
the shards (``SHARD`` chunks at least, whole articles) of the first ``ARTICLES`` articles of the default
corpus are encoded into a preallocated bank. Per worker count ``extra_info`` records: chunks/s over the
encode phase (first shard sent to last shard written: actors already loaded), chunks per CPU-second (the
workers' own process CPU time inside ``encode``, summed), the startup (Ray + actors + encoder load) and the
scaling (2 workers / 1 worker); plus the load average before and after, lscpu's model name and flags.
Workers run one intra-op thread each (Ray sets ``OMP_NUM_THREADS=1`` for a one-CPU actor), so chunks per
CPU-second is the per-core throughput a cluster of such workers would get.

    .venv/bin/python -m pytest tests/bench_ray_encode.py -p no:cacheprovider -q -s

``LVM_BENCH_RAY_ARTICLES`` (default 600, about 2,100 chunks), ``LVM_BENCH_RAY_SHARD`` (default 512:
smaller shards sort fewer texts by length and pad more: 128 measured half the chunks per CPU-second),
``LVM_BENCH_RAY_ROUNDS`` (default 1; rounds alternate the order of the worker counts).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest
from bench_encode import cpu_info

ARTICLES = int(os.environ.get("LVM_BENCH_RAY_ARTICLES", "600"))
SHARD = int(os.environ.get("LVM_BENCH_RAY_SHARD", "512"))
ROUNDS = int(os.environ.get("LVM_BENCH_RAY_ROUNDS", "1"))
WORKERS = (1, 2)
BATCH = 64


def test_bench_ray_encode_scaling(benchmark, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from lvm.data.build import BuildConfig, chunk_corpus
    from lvm.data.corpora import first_articles, load_corpus
    from lvm.data.encoders import EncoderSpec
    from lvm.data.ray_build import encode_with_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = BuildConfig(max_articles=ARTICLES)
    table = chunk_corpus(first_articles(load_corpus(cfg.corpus), ARTICLES), cfg.chunker)
    n = len(table.texts)
    runs: dict[int, list[dict]] = {w: [] for w in WORKERS}
    vectors: dict[int, np.ndarray] = {}
    load_before = os.getloadavg()
    rounds = iter(range(1 << 30))

    def one_round():
        r = next(rounds)
        for w in WORKERS if r % 2 == 0 else WORKERS[::-1]:
            partial = tmp_path / f"r{r}-w{w}"
            seconds: dict = {}
            t = time.perf_counter()
            path, _, _, stats = encode_with_ray(
                EncoderSpec(), table, partial, "bench", batch_size=BATCH, workers=w, shard_chunks=SHARD,
                progress=False, log=lambda m: None, seconds=seconds,
            )  # fmt: skip
            total = time.perf_counter() - t
            assert stats["rows_encoded"] == n and len(stats["encoded"]) == stats["shards"]
            runs[w].append(
                {
                    "encode_s": seconds["encode"],
                    "startup_s": seconds["load_encoder"],
                    "total_s": total,
                    "worker_cpu_s": stats["worker_cpu_seconds"],
                    "shards": stats["shards"],
                    "worker_processes": len(stats["pids"]),
                }
            )
            vectors.setdefault(w, np.load(path))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    table_out = {}
    for w, rs in runs.items():
        table_out[w] = {
            "chunks_per_s": round(statistics.median(n / r["encode_s"] for r in rs), 1),
            "chunks_per_cpu_s": round(statistics.median(n / r["worker_cpu_s"] for r in rs), 1),
            "startup_s": round(statistics.median(r["startup_s"] for r in rs), 1),
            "total_s": round(statistics.median(r["total_s"] for r in rs), 1),
            "rounds": rs,
        }
    a, b = vectors[1], vectors[2]
    min_cos = float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())
    benchmark.extra_info.update(
        {
            "chunks": n,
            "articles": ARTICLES,
            "shard_chunks": SHARD,
            "shards": runs[1][0]["shards"],
            "batch_size": BATCH,
            "rounds": ROUNDS,
            "workers": {str(w): row for w, row in table_out.items()},
            "scaling_chunks_per_s_2_over_1": round(table_out[2]["chunks_per_s"] / table_out[1]["chunks_per_s"], 2),
            "min_cos_1_vs_2_workers": min_cos,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cpu": cpu_info(),
        }
    )
    for w, row in table_out.items():  # shown with -s
        print(
            f"ray workers={w}: {row['chunks_per_s']:7.1f} chunks/s {row['chunks_per_cpu_s']:7.1f} per CPU-s, "
            f"startup {row['startup_s']} s, total {row['total_s']} s"
        )
    print({k: v for k, v in benchmark.extra_info.items() if k != "workers"})
    assert min_cos >= 0.99999
