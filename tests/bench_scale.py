"""Benchmarks at the seeds' scale (`make bench`; pytest-benchmark, results in reports/bench.json).

Not part of `make test` (the file name does not match test_*.py). Datasets are synthetic
(`lvm synth`): 726,014 × 768 with a low-coherence segment at articles 11k–15k (the seeds' 790k set)
and a clean twin for the drift comparison; both are created once under data/bench/ with their IVF
index (index build measured apart). Budgets (issue 15): full gate suite ≤ 60 s of CPU and wall with
the index cached, peak RSS ≤ 1.3 × the bank (2.9 GB). Side by side with the seeds' tools and the
scaling curves: tests/bench_triage.py; batch-1 latency: tests/bench_inference.py. Figures are
recorded in ``extra_info``, not asserted: a benchmark measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from conftest import synth_once

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("LVM_BENCH_DIR", ROOT / "data" / "bench"))
N_CHUNKS, DIM = 726_014, 768
ARCHS = ("amn", "gru", "lstm", "transformer")


@pytest.fixture(scope="session")
def big() -> Path:
    return synth_once(BENCH / "syn726", N_CHUNKS, DIM, "11000:15000:0.34:0.16")


@pytest.fixture(scope="session")
def big_clean() -> Path:
    return synth_once(BENCH / "syn726-clean", N_CHUNKS, DIM)


@pytest.fixture(scope="session")
def big_index(big) -> Path:
    """Index built once and cached with the dataset; its build time is benchmarked apart."""
    from lvm.data.datasets import open_dataset
    from lvm.data.index import load_or_build_index

    load_or_build_index(open_dataset(big))
    return big


@pytest.fixture(scope="session")
def big_checkpoint(big) -> Path:
    """A 1-epoch AMN on the big dataset (its training time is not part of the gate budget)."""
    from lvm.train.trainer import TrainConfig, Trainer

    run = BENCH / "runs" / "amn-syn726"
    if not (run / "best.json").is_file():
        import shutil

        shutil.rmtree(run, ignore_errors=True)
        Trainer(TrainConfig(dataset=str(big), epochs=1, batch_size=512, kill_switches=False), run, progress=False).run()
    return run


def test_bench_full_gate_suite_726k(benchmark, big_index, big_checkpoint, tmp_path):
    """`pytest gates/` for one AMN checkpoint on 726,014 × 768, index cached: wall, peak RSS, per gate."""
    junit, rss_file = tmp_path / "junit.xml", tmp_path / "rss_kb"
    # a wrapper process whose only child is the gate run, so RUSAGE_CHILDREN is that run's peak RSS
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[2:]); "
        "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "open(sys.argv[1], 'w').write(f'{u.ru_maxrss} {u.ru_utime + u.ru_stime}'); "
        "sys.exit(r.returncode)"
    )
    cmd = [
        sys.executable,
        "-c",
        wrapper,
        str(rss_file),
        sys.executable,
        "-m",
        "pytest",
        "gates/",
        f"--checkpoint={big_checkpoint}",
        f"--dataset={big_index}",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--results={tmp_path / 'r.json'}",
        f"--junitxml={junit}",
    ]

    def run():
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)

    t0 = time.perf_counter()
    proc = benchmark.pedantic(run, rounds=1, iterations=1)
    wall = time.perf_counter() - t0
    bank_gb = N_CHUNKS * DIM * 4 / 1024**3
    rss_kb, cpu_s = rss_file.read_text().split()
    peak_gb = int(rss_kb) / 1024**2
    per_gate = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        per_gate[case.get("name")] = round(float(case.get("time", 0)), 2)
    benchmark.extra_info.update(
        {
            "wall_s": round(wall, 1),
            "cpu_s": round(float(cpu_s), 1),
            "peak_rss_gb": round(peak_gb, 2),
            "bank_gb": round(bank_gb, 2),
            "rss_over_bank": round(peak_gb / bank_gb, 2),
            "per_gate_s": per_gate,
            "exit_code": proc.returncode,
            "summary": json.loads((tmp_path / "r.json").read_text())["summary"],
        }
    )
    assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-2000:]  # 1 = a RED gate, still measured


def test_bench_index_build_726k(benchmark, big):
    from lvm.data.datasets import open_dataset
    from lvm.data.index import build_index

    ds = open_dataset(big)
    _, params = benchmark.pedantic(lambda: build_index(ds.vectors), rounds=1, iterations=1)
    benchmark.extra_info.update({"kind": params.kind, "nlist": params.nlist, "train_size": params.train_size})


def test_bench_coherence_and_drift_726k(benchmark, big, big_clean):
    """coherence + coherence_drift on two 726k datasets, from cold opens (no cached adjacency)."""
    from lvm import gates
    from lvm.data.datasets import open_dataset
    from lvm.profiles import load_profile

    profile = load_profile("gtr-t5-wiki")

    def run():
        new, base = open_dataset(big), open_dataset(big_clean)
        return gates.coherence(new, profile), gates.coherence_drift(new, base, profile)

    coh, drift = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(
        {
            "coherence": coh.status,
            "drift": drift.status,
            "top_segment": drift.metrics["segments"][0]["segment"],
            "mean_drift_rel": round(drift.metrics["mean_drift_rel"], 4),
        }
    )


def test_bench_oracle_recall_726k(benchmark, big_index):
    from lvm import gates
    from lvm.data.datasets import open_dataset
    from lvm.data.index import load_index
    from lvm.profiles import load_profile

    ds = open_dataset(big_index)
    index, _ = load_index(ds)
    res = benchmark.pedantic(
        lambda: gates.oracle_recall(ds, index, load_profile("gtr-t5-wiki")), rounds=1, iterations=1
    )
    benchmark.extra_info.update(
        {k: res.metrics[k] for k in ("recall_at_1", "recall_at_5", "recall_at_1000", "duplicate_rate")}
    )


@pytest.fixture(scope="session", params=[384, 768])
def small_synth(request) -> Path:
    return synth_once(BENCH / f"syn40k-{request.param}", 40_000, request.param)


@pytest.mark.parametrize("arch", ARCHS)
def test_bench_training_throughput(benchmark, arch, small_synth, tmp_path):
    """Sequences per second for one epoch of training (batch 256, default threads)."""
    from lvm.train.trainer import TrainConfig, Trainer

    run = tmp_path / arch
    hist = benchmark.pedantic(
        lambda: Trainer(
            TrainConfig(dataset=str(small_synth), model=arch, epochs=1, kill_switches=False), run, progress=False
        ).run(),
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info.update(
        {
            "dim": int(small_synth.name.split("-")[-1]),
            "train_seq_per_s": round(hist["epochs"][0]["train_seq_per_s"]),
            "threads": torch.get_num_threads(),
        }
    )
