"""The regression check as it runs on another machine: a second "machine" has the same dataset
rebuilt with different low float bits (as another CPU's kernels give) and another hardware class,
and runs from another folder. A healthy rerun must compare every non-latency metric and pass; a
regressed model must fail with the regression named; a partial run must never pass for a full one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def _gates(cwd: Path, checkpoint: Path | str, dataset: Path, results: Path, *extra: str, hardware: str | None = None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    if hardware:
        env["LVM_HARDWARE_CLASS"] = hardware
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "gates"),
            "-p",
            "no:cacheprovider",
            "-q",
            f"--rootdir={cwd}",
            f"--checkpoint={checkpoint}",
            f"--dataset={dataset}",
            f"--results={results}",
            *extra,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert results.is_file(), proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc


def _compare(new: Path, base: Path, *extra: str):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "lvm.cli", "compare", str(new), str(base), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _perturb_low_bits(src: Path, dst: Path) -> None:
    """The same dataset as another CPU would encode it: every vector moved by one or two ulps."""
    from lvm.data.datasets import _HASHED_FILES
    from lvm.io import sha256_files, write_json_atomic

    shutil.copytree(src, dst)
    for name in ("index.faiss", "index.json"):
        (dst / name).unlink(missing_ok=True)
    vec = np.load(dst / "vectors.npy")
    rng = np.random.default_rng(7)
    flip = rng.random(vec.shape) < 0.5
    towards = np.where(rng.random(vec.shape) < 0.5, np.float32(np.inf), np.float32(-np.inf)).astype(np.float32)
    moved = np.where(flip, np.nextafter(vec, towards), vec)
    assert moved.dtype == np.float32 and (moved != vec).mean() > 0.4 and np.abs(moved - vec).max() < 1e-6
    np.save(dst / "vectors.npy", moved)
    meta = json.loads((dst / "meta.json").read_text())
    meta["content_hash"] = sha256_files([dst / f for f in _HASHED_FILES])
    write_json_atomic(dst / "meta.json", meta)


@pytest.fixture(scope="module")
def machines(default_dataset, tmp_path_factory) -> dict:
    from lvm.train.trainer import TrainConfig, Trainer

    a, b = tmp_path_factory.mktemp("machine_a"), tmp_path_factory.mktemp("machine_b")
    Trainer(
        TrainConfig(dataset=str(default_dataset), epochs=2, kill_switches=False), a / "runs" / "amn", progress=False
    ).run()
    _gates(a, a / "runs" / "amn", default_dataset, a / "reports" / "gate_results.json")

    _perturb_low_bits(default_dataset, b / "data" / "wiki-minilm")
    shutil.copytree(a / "runs", b / "runs")
    degraded = b / "degraded" / "amn"  # a model that regressed to copying its input, gated as amn=PATH
    Trainer(TrainConfig(dataset=str(b / "data" / "wiki-minilm"), model="copy_last"), degraded, progress=False).run()
    return {
        "a": a,
        "b": b,
        "baseline": a / "reports" / "gate_results.json",
        "data_b": b / "data" / "wiki-minilm",
        "degraded": degraded,
    }


def test_a_healthy_rerun_on_another_machine_compares_every_non_latency_metric(machines):
    b = machines["b"]
    new = b / "reports" / "gate_results.json"
    _gates(b, b / "runs" / "amn", machines["data_b"], new, hardware="Other CPU x 8")
    base_doc, new_doc = json.loads(machines["baseline"].read_text()), json.loads(new.read_text())
    assert base_doc["results"][0]["dataset_hash"] != new_doc["results"][0]["dataset_hash"]  # the bytes differ ...
    proc = _compare(new, machines["baseline"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    # ... yet every non-latency gate result was compared, metric by metric
    reg = next(r for r in json.loads(new.read_text())["results"] if r["gate"] == "val_cosine")
    assert (
        reg["comparability_key"]
        == next(r for r in base_doc["results"] if r["gate"] == "val_cosine")["comparability_key"]
    )
    from lvm.report.regression import NOT_COMPARABLE, check

    verdict = check(new_doc, base_doc)
    rows = [c for r in verdict.regressions for c in r.metrics["comparisons"]]
    not_compared = {c["gate"] for c in rows if c["metric"] == NOT_COMPARABLE}
    assert not_compared <= {"latency"}, not_compared  # hardware differs: at most the timings
    compared_gates = {c["gate"] for c in rows if c["metric"] != NOT_COMPARABLE}
    gated = {
        r["gate"]
        for r in base_doc["results"]
        if r["status"] != "SKIP" and r.get("thresholds") and r["gate"] != "latency"
    }
    assert gated <= compared_gates, gated - compared_gates
    assert f"{verdict.compared} metric comparison(s)" in proc.stdout


def test_a_regressed_model_fails_with_the_regression_named(machines):
    b = machines["b"]
    new = b / "reports" / "degraded.json"
    _gates(b, f"amn={machines['degraded']}", machines["data_b"], new, hardware="Other CPU x 8")
    proc = _compare(new, machines["baseline"])
    assert proc.returncode == 1
    regressed = proc.stdout.split("Regressed gates:", 1)[1]
    assert "val_cosine/val" in regressed and "amn on wiki-minilm" in regressed
    assert "nothing was comparable" not in proc.stdout


def test_the_same_checkpoint_from_another_folder_compares_green(machines, default_dataset):
    """A checkpoint is named by its model card, not its folder: runs/amn copied to runs/other_folder_name
    and gated again compares with the results gated from runs/amn, metric by metric."""
    a = machines["a"]
    other = a / "runs" / "other_folder_name"
    shutil.copytree(a / "runs" / "amn", other)
    new = a / "reports" / "other_folder_name.json"
    _gates(a, other, default_dataset, new)
    doc = json.loads(new.read_text())
    assert {r.get("checkpoint") for r in doc["results"]} == {None, "amn"} and list(doc["models"]) == ["amn"]
    folders = {Path(r["checkpoint_path"]).name for r in doc["results"] if r.get("checkpoint_path")}
    assert folders == {"other_folder_name"}
    proc = _compare(new, machines["baseline"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "missing from NEW" not in proc.stdout and "**Verdict: GREEN**" in proc.stdout, proc.stdout[-3000:]


def test_a_partial_run_cannot_pass_for_a_full_one(machines):
    b = machines["b"]
    new = b / "reports" / "partial.json"
    proc = _gates(b, b / "runs" / "amn", machines["data_b"], new, "-m", "data", hardware="Other CPU x 8")
    doc = json.loads(new.read_text())
    assert doc["run"]["complete"] is False and doc["run"]["selection"]["markexpr"] == "data"
    assert "val_cosine" in doc["run"]["gates_missing"]
    out = _compare(new, machines["baseline"])
    assert out.returncode == 1 and "partial run" in out.stdout and "partial run" in out.stderr
    assert _compare(new, machines["baseline"], "--allow-missing").returncode == 0  # the user accepts it, knowingly

    # and it never replaces a complete results file: it is written beside it
    full = b / "reports" / "full.json"
    shutil.copy(machines["baseline"], full)
    before = full.read_bytes()
    proc = _gates(b, b / "runs" / "amn", machines["data_b"], full, "-k", "coherence", hardware="Other CPU x 8")
    assert full.read_bytes() == before
    assert (b / "reports" / "full.partial.json").is_file(), proc.stdout[-2000:]


def test_nothing_comparable_fails(machines, tmp_path):
    other = json.loads(machines["baseline"].read_text())
    for r in other["results"]:
        if isinstance(r.get("comparability"), dict):
            r["comparability_key"] = "another-dataset"
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    proc = _compare(path, machines["baseline"])
    assert proc.returncode == 1 and "nothing was comparable" in proc.stderr


def test_the_leaderboard_reads_the_results_file_alone(machines, tmp_path):
    """Run from an unrelated folder, the page shows the model's type, loss and curves from the file."""
    from lvm.report.leaderboard import build_leaderboard

    copy = tmp_path / "elsewhere" / "gate_results.json"
    copy.parent.mkdir()
    shutil.copy(machines["baseline"], copy)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        res = build_leaderboard([copy], tmp_path / "out")
    finally:
        os.chdir(cwd)
    models = [r for r in res["rows"] if r["kind"] == "model"]
    baselines = [r for r in res["rows"] if r["kind"] == "baseline"]
    assert [r["model_type"] for r in models] == ["amn"] and models[0]["loss"] not in (None, "?")
    assert models[0]["epochs"] == 2
    assert len(baselines) == len({r["checkpoint"] for r in baselines}) == 3
    doc = json.loads(copy.read_text())
    assert doc["models"]["amn"]["card"]["type"] == "amn" and doc["run"]["seconds"] > 0
    assert all(r["seconds"] > 0 for r in doc["results"] if r["status"] != "SKIP")
    assert not Path(doc["results"][0]["dataset_path"]).is_absolute()
