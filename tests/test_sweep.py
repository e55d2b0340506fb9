"""`lvm sweep` (lvm/sweep.py): every checkpoint × dataset gated as independent tasks, merged into one results file.

On a real embedded Ray cluster (2 workers, loopback, no dashboard; started and shut down by the sweep) with
3 checkpoints that all carry the card name "amn" (a 1-epoch AMN run, a copy of it with garbage weights, and a
`py:` factory of the same weights that kills its own Ray worker the first time it is loaded) on the small
dataset: the merged results equal one `pytest gates/` run with the same checkpoints (gate, checkpoint,
dataset, split, status, message, metrics apart from timings; the models table; the summary), the broken
checkpoint is RED with its reason while the others are gated, and the task whose worker was killed ran again
and completed. Without Ray: a task that fails (here: timed out) is RED with its one-line reason, on the local
engine. The Ray tests are skipped when ray is not installed (`make setup` installs lvm-gates[distributed]).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_lvm

KILLER = """\
import os
import signal
import time
from pathlib import Path

MARKER = Path(__file__).with_name("killed.marker")
RUN = {run!r}


def build():
    # only inside the sweep (its tasks get the driver's LVM_* variables), and once: kill the Ray worker that runs
    # this task's pytest process (its parent), as a lost node or the OOM killer would
    if os.environ.get("LVM_TEST_KILL_WORKER") and not MARKER.exists():
        MARKER.write_text(str(os.getppid()))
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(60)  # dies with its parent
    from lvm.models.checkpoints import load_checkpoint

    model, meta = load_checkpoint(RUN)
    keys = ("ctx", "input_dim", "encoder_fingerprint")
    return model, {{"name": "amn", "type": "amn", "min_ctx": meta.get("min_ctx", 1), **{{k: meta[k] for k in keys}}}}
"""
NAMES = ("amn_a", "broken", "killer_build")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LVM_TEST_KILL_WORKER")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def _train(dataset: Path, out: Path) -> Path:
    proc = run_lvm(
        "train", "--model", "amn", "--dataset", str(dataset), "--epochs", "1", "--out", str(out),
        "--quiet", "--threads", "1", "--no-kill-switches",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def _sweep(*args: str, env: dict, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lvm.cli", "sweep", *args, "--quiet"],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory, small_dataset):
    pytest.importorskip("ray")
    tmp = tmp_path_factory.mktemp("sweep")
    runs = tmp / "runs"
    amn = _train(small_dataset, runs / "amn_a")
    broken = runs / "broken"
    shutil.copytree(amn, broken)
    (broken / "best.safetensors").write_bytes(os.urandom(4096))  # garbage weights
    (runs / "notes").mkdir()  # no checkpoint inside: a glob skips it
    killer = tmp / "killer" / "killer.py"
    killer.parent.mkdir()
    killer.write_text(KILLER.format(run=str(amn)))
    spec = f"py:{killer}:build"

    sweep = _sweep(
        "--checkpoints", f"{runs}/*", spec, "--datasets", str(small_dataset), "--workers", "2",
        "--results", str(tmp / "sweep.json"), "--out", str(tmp / "board"),
        env=_env(LVM_TEST_KILL_WORKER="1"),
    )  # fmt: skip
    ref = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "gates"), f"--checkpoint=amn_a={amn}",
         f"--checkpoint=broken={broken}", f"--checkpoint=killer_build={spec}", f"--dataset={small_dataset}",
         f"--results={tmp / 'ref.json'}", "-p", "no:cacheprovider", "-q"],
        capture_output=True, text=True, timeout=420, env=_env(), cwd=ROOT,
    )  # fmt: skip
    assert (tmp / "sweep.json").is_file(), sweep.stdout[-3000:] + sweep.stderr[-3000:]
    assert (tmp / "ref.json").is_file(), ref.stdout[-3000:] + ref.stderr[-3000:]
    return {
        "tmp": tmp,
        "sweep": sweep,
        "ref": ref,
        "doc": json.loads((tmp / "sweep.json").read_text()),
        "ref_doc": json.loads((tmp / "ref.json").read_text()),
        "marker": killer.with_name("killed.marker"),
    }


def _key(r: dict) -> tuple:
    return r["gate"], r.get("checkpoint"), r.get("dataset"), r.get("split")


def _timing(gate: str, metric: str) -> bool:
    """A metric that is a timing: any of the latency gate's but its machine-independent cost and path,
    and any *_ms figure (retrieval's search time)."""
    if gate == "latency":
        return not metric.startswith(("cost_", "inference_"))
    return metric.endswith("_ms") or "_ms_" in metric


def test_the_sweep_names_checkpoints_by_folder_and_exits_like_the_gate_suite(world):
    out = world["sweep"].stdout
    assert world["sweep"].returncode == world["ref"].returncode == 1, out[-2000:] + world["sweep"].stderr[-2000:]
    assert "named by their folder" in out
    for name in NAMES:
        assert f"{name}=" in out
    assert "skipped (no checkpoint inside)" in out and "notes" in out
    assert {r["checkpoint"] for r in world["doc"]["results"] if r.get("checkpoint")} == set(NAMES)


def test_merged_results_equal_one_gate_run_with_all_checkpoints(world):
    doc, ref = world["doc"], world["ref_doc"]
    assert doc["schema"] == ref["schema"] and doc["schema_version"] == ref["schema_version"] == 2
    rows, ref_rows = {_key(r): r for r in doc["results"]}, {_key(r): r for r in ref["results"]}
    assert len(rows) == len(doc["results"]) and set(rows) == set(ref_rows)
    assert [_key(r) for r in doc["results"]] == [_key(r) for r in ref["results"]]  # same order too
    compared = 0
    for key, r in rows.items():
        want = ref_rows[key]
        metrics = {m: v for m, v in r["metrics"].items() if not _timing(r["gate"], m)}
        assert metrics == {m: v for m, v in want["metrics"].items() if not _timing(r["gate"], m)}, key
        compared += len(metrics)
        if r["gate"] == "latency":
            continue  # its verdict is on wall-clock time, measured on a machine other agents share
        assert (r["status"], r["message"], r["thresholds"]) == (want["status"], want["message"], want["thresholds"])
        for field in ("comparability_key", "dataset_hash", "per_sequence", "checkpoint_path", "dataset_path"):
            assert r.get(field) == want.get(field), (key, field)
    assert compared > 300
    assert doc["models"] == ref["models"]
    assert doc["profile"] == ref["profile"]
    assert doc["run"]["complete"] and doc["run"]["gates_missing"] == ref["run"]["gates_missing"] == []
    assert doc["run"]["gates_ran"] == ref["run"]["gates_ran"]
    statuses = lambda d: sorted((_key(r), r["status"]) for r in d["results"] if r["gate"] != "latency")  # noqa: E731
    assert statuses(doc) == statuses(ref)


def test_a_broken_checkpoint_is_red_with_its_reason_and_the_others_are_gated(world):
    rows = {_key(r): r for r in world["doc"]["results"]}
    integrity = rows[("checkpoint_integrity", "broken", "small", None)]
    assert integrity["status"] == "RED" and "weights do not match" in integrity["message"]
    assert rows[("val_cosine", "broken", "small", None)]["status"] == "SKIP"
    for name in ("amn_a", "killer_build"):
        assert rows[("checkpoint_integrity", name, "small", None)]["status"] == "GREEN"
        assert rows[("val_cosine", name, "small", "val")]["status"] in ("GREEN", "AMBER")
        assert rows[("latency", name, "small", "val")]["status"] != "RED"
    assert world["doc"]["run"]["sweep"]["failed"] == []


def test_a_task_whose_ray_worker_was_killed_runs_again_and_the_sweep_completes(world):
    assert world["marker"].is_file()  # the factory killed its worker once
    sweep = world["doc"]["run"]["sweep"]
    assert sweep["engine"] == "ray" and sweep["where"] == "local" and sweep["workers"] == 2
    assert sweep["tasks"] == 7  # 1 data + 3 model + 3 latency
    assert list(sweep["retried"].values()) == [2], sweep  # the one task on the killed worker, run twice
    assert next(iter(sweep["retried"])) in ("data@small", "model:killer_build@small")
    assert "ran 2 times" in world["sweep"].stdout


def test_one_leaderboard_from_the_merged_results(world):
    board = (world["tmp"] / "board" / "leaderboard.md").read_text()
    for name in NAMES:
        assert name in board
    assert (world["tmp"] / "board" / "leaderboard.html").is_file()


# ----------------------------------------------------------------------------- without Ray


def test_a_failed_task_is_red_with_its_reason_and_never_sinks_the_sweep(tmp_path, small_dataset):
    """The local engine (no Ray): a 1-second timeout fails every task; each gate it owned is RED with the
    reason, the results file and the leaderboard are still written, the exit code is the gate suite's."""
    run = tmp_path / "runs" / "m1"
    run.mkdir(parents=True)
    for f in ("best.json", "config.json"):
        (run / f).write_text("{}")
    proc = _sweep(
        "--checkpoints", str(run), "--datasets", str(small_dataset), "--engine", "local", "--workers", "2",
        "--timeout", "1", "--results", str(tmp_path / "r.json"), "--out", str(tmp_path / "board"),
        env=_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["results"] and {r["status"] for r in doc["results"]} == {"RED"}
    assert all("timed out after 1 s" in r["message"] for r in doc["results"])
    assert {r["gate"] for r in doc["results"]} >= {"encoder_fingerprint", "val_cosine", "latency"}
    failed = doc["run"]["sweep"]["failed"]
    assert sorted(f["task"] for f in failed) == ["data@small", "latency:m1@small", "model:m1@small"]
    assert doc["run"]["sweep"]["engine"] == "local"
    assert (tmp_path / "board" / "leaderboard.md").is_file()
    assert "task model:m1@small failed: timed out" in proc.stdout


def test_checkpoints_are_named_by_folder_with_parents_when_two_share_a_name(tmp_path):
    from lvm.errors import LvmError
    from lvm.sweep import folder_names, plan

    a, b, c = (tmp_path / "lr1" / "amn"), (tmp_path / "lr3" / "amn"), (tmp_path / "gru x")
    names = folder_names([(None, str(a)), (None, str(b)), (None, str(c)), ("mine", str(tmp_path / "m"))])
    assert [n for n, _ in names] == ["lr1_amn", "lr3_amn", "gru_x", "mine"]
    with pytest.raises(LvmError, match="both named"):
        folder_names([("x", str(a)), ("x", str(b))])
    tasks = plan(names[:2], [str(tmp_path / "d1"), str(tmp_path / "d2")])
    assert [t.id for t in tasks][:3] == ["data@d1", "data@d2", "model:lr1_amn@d1"]
    assert [t.kind for t in tasks].count("latency") == 4 and tasks[-1].kind == "latency"
    assert tasks[0].checkpoints == (f"lr1_amn={a}", f"lr3_amn={b}")  # the data gates see every checkpoint
    assert tasks[2].markexpr == "model and not latency" and tasks[-1].markexpr == "latency"
