"""Gate-sweep benchmark: `lvm sweep` over 8 checkpoints on the Ray engine with 1 and 2 workers.

Not part of `make test` (the file name does not match test_*.py); `make bench` runs it. Run alone:

    .venv/bin/python -m pytest tests/bench_sweep.py -p no:cacheprovider --benchmark-json=OUT.json

The 8 checkpoints are 1-epoch AMN runs (seeds 1-8) on the small real dataset of tests/conftest.py, trained
once per session; each case is one sweep (17 tasks: 1 data task, 8 model tasks, then 8 latency tasks one at
a time) through the real CLI, an embedded Ray cluster with `--workers` CPUs, started and shut down by the
sweep. ``extra_info`` holds the wall time of the whole command, the sweep's own seconds, its two phases
(parallel, latency), the task count and the exit code. Figures are recorded, not asserted: a benchmark
measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_lvm

N_CHECKPOINTS = 8


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory, small_dataset):
    pytest.importorskip("ray")
    runs = tmp_path_factory.mktemp("bench-sweep") / "runs"
    for seed in range(1, N_CHECKPOINTS + 1):
        proc = run_lvm(
            "train", "--model", "amn", "--dataset", str(small_dataset), "--epochs", "1", "--seed", str(seed),
            "--out", str(runs / f"amn_s{seed}"), "--quiet", "--threads", "1", "--no-kill-switches",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    return runs


@pytest.mark.parametrize("workers", [1, 2])
def test_bench_sweep_8_checkpoints(benchmark, sweep_runs, small_dataset, workers, tmp_path):
    """One `lvm sweep` of 8 checkpoints x 1 dataset on Ray with `workers` workers."""
    results = tmp_path / "sweep.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["HF_HUB_OFFLINE"] = "1"
    cmd = [sys.executable, "-m", "lvm.cli", "sweep", "--checkpoints", f"{sweep_runs}/*"]
    cmd += ["--datasets", str(small_dataset), "--workers", str(workers), "--results", str(results)]
    cmd += ["--out", str(tmp_path / "board"), "--quiet"]

    def run():
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env, cwd=ROOT)
        return proc, time.perf_counter() - t0

    proc, wall = benchmark.pedantic(run, rounds=1, iterations=1)
    assert results.is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(results.read_text())
    sweep = doc["run"]["sweep"]
    assert not sweep["failed"], sweep["failed"]
    benchmark.extra_info.update(
        {
            "checkpoints": N_CHECKPOINTS,
            "workers": workers,
            "engine": sweep["engine"],
            "tasks": sweep["tasks"],
            "wall_s": round(wall, 2),
            "sweep_s": doc["run"]["seconds"],
            "phase_seconds": sweep.get("phase_seconds"),
            "exit_code": proc.returncode,
            "cpus": os.cpu_count(),
        }
    )
