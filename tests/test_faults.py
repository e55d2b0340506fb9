"""Fault tests: real `lvm` and `pytest gates/` processes, killed with SIGKILL at awkward moments.

Nothing here mocks a crash: each test starts the real command in a fresh process
(``subprocess.Popen``), waits for a moment it can see from outside (a partial folder's progress, a
row in training_history.json, a temporary file beside the results file, the stoplight table on
stdout), kills it with ``os.kill(pid, SIGKILL)`` and checks what is left on disk and what the next
run makes of it:

1. ``lvm build-data`` killed mid-encode (and again after the encode, while the folder is written):
   the rerun resumes from the last finished block and writes vectors byte-identical to an
   uninterrupted build; no temporary folder is left.
2. ``lvm train`` killed mid-epoch (and again while resume.pt is written): ``--resume`` loses at most
   the epoch in flight; the history's epochs are 1..N, each once.
3. ``pytest gates/`` killed at random moments, while it writes the results file and while it prints
   the table: the results file is always the old one or a new complete one; no stray temporary file.
4. four gate runs at once, two on one results file: every file is valid, every exit code is the one
   a single run gives.
5. a child killing itself between the two renames of a folder swap, and inside a file write: the
   next writer puts the old folder back (or removes the temporary file) before it writes.

Everything uses a small corpus encoded with the real packaged MiniLM (no default dataset); the
module takes about two minutes on two cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ROOT, SMALL_ARTICLES
from lvm.report.results import read_results

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_ADDOPTS", "PYTEST_XDIST"))},
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # one thread per process: several run at once on two shared cores, and OpenMP workers that spin
    # while another process holds the core make each run several times slower
    "OMP_NUM_THREADS": "1",
}
REPEATS = 16  # 16 x 12 articles: ~1,000 chunks, two seconds of MiniLM on two cores
BLOCK = 64  # texts per resumable encode step in these builds (the shipped 2048 is one block here)
# `lvm build-data` exactly as the console script runs it, with a smaller encode block so a kill
# lands between finished blocks (a few hundred sentences are a single block of the default size).
BUILD_WITH_BLOCK = (
    "import runpy, sys; import lvm.data.build as b; b.ENCODE_BLOCK = int(sys.argv.pop(1)); "
    "runpy.run_module('lvm.cli', run_name='__main__', alter_sys=True)"
)
DEADLINE = 300.0  # seconds any wait may take before the test fails (never reached when healthy)


# ----------------------------------------------------------------------------- helpers


def write_varied_corpus(path: Path, repeats: int = REPEATS) -> Path:
    """The small articles, each repeated with a sentence of its own so no two articles are equal."""
    with open(path, "w", encoding="utf-8") as fh:
        for k in range(repeats):
            for i, (title, topic, text) in enumerate(SMALL_ARTICLES):
                extra = f"This is note number {k} about {title.lower()}, kept in volume {k % 7 + 1} of the archive."
                doc = {"id": f"a{k:03d}-{i:02d}", "title": f"{title} ({k})", "topic": topic, "text": f"{text} {extra}"}
                fh.write(json.dumps(doc) + "\n")
    return path


class Procs:
    """Popen with the test's environment; every process still running at teardown is killed."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(args, cwd=ROOT, env={**ENV, **(env or {})}, **kw)
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.close()


def wait_for(
    cond: Callable[[], bool], proc: subprocess.Popen, interval: float = 0.02, spin_from: float | None = None
) -> bool:
    """Poll ``cond`` until it holds (True) or ``proc`` ends (False); fail after DEADLINE.

    From the monotonic time ``spin_from`` on, poll without sleeping (to catch a write that lasts a
    millisecond without spinning a shared core for the whole run)."""
    end = time.monotonic() + DEADLINE
    while (now := time.monotonic()) < end:
        if cond():
            return True
        if proc.poll() is not None:
            return cond()
        if spin_from is None or now < spin_from:
            time.sleep(interval)
    pytest.fail(f"gave up waiting after {DEADLINE:.0f} s: {proc.args}")


def sigkill(proc: subprocess.Popen) -> bool:
    """SIGKILL ``proc`` and reap it; whether the kill landed (False: it had already exited)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return proc.returncode == -signal.SIGKILL


def read_until(proc: subprocess.Popen, mark: bytes) -> bool:
    """Read ``proc``'s stdout as it comes (not by lines: a line may end only at exit) until ``mark``."""
    seen = b""
    while chunk := os.read(proc.stdout.fileno(), 65536):
        seen = seen[-len(mark) :] + chunk
        if mark in seen:
            return True
    return False


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary entries (.NAME.tmp-PID, .NAME.old-PID, .NAME.partial-KEY) in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if re.match(r"\..+\.(tmp|old|partial)-", p.name))


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_cmd(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", BUILD_WITH_BLOCK, str(BLOCK), "build-data", "--corpus", str(corpus),
            "--out", str(out), *extra]  # fmt: skip


def gate_cmd(checkpoint: Path, dataset: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "gates/", "-p", "no:cacheprovider", "-q", f"--checkpoint={checkpoint}",
            f"--dataset={dataset}", f"--results={results}", *extra]  # fmt: skip


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def private_tmpdir(tmp_path_factory):
    """The children's TMPDIR: what killed processes leave in it (each gate run makes a folder for its
    per-sequence scores there) stays out of /tmp."""
    before = ENV.get("TMPDIR")
    ENV["TMPDIR"] = str(tmp_path_factory.mktemp("faults-tmpdir"))
    yield
    if before is None:
        del ENV["TMPDIR"]
    else:
        ENV["TMPDIR"] = before


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_varied_corpus(tmp_path_factory.mktemp("faults-corpus") / "varied.jsonl")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> Path:
    """The dataset of an uninterrupted `lvm build-data` of the corpus (same encode block)."""
    out = tmp_path_factory.mktemp("faults-ref") / "ref"
    res = subprocess.run(build_cmd(corpus, out, "--quiet"), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def gate_checkpoint(tmp_path_factory, reference) -> Path:
    from lvm.train import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("faults-ckpt") / "amn"
    cfg = TrainConfig(dataset=str(reference), epochs=1, batch_size=16, threads=1, kill_switches=False)
    Trainer(cfg, out, progress=False).run()
    return out


@pytest.fixture(scope="module")
def single_gate_run(tmp_path_factory, reference, gate_checkpoint) -> dict:
    """One gate run alone: its exit code and results file (the 'old' file of the kill test)."""
    results = tmp_path_factory.mktemp("faults-single") / "results.json"
    t = time.monotonic()
    res = subprocess.run(
        gate_cmd(gate_checkpoint, reference, results), cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]
    doc = read_results(results)
    return {"rc": res.returncode, "bytes": results.read_bytes(), "rows": len(doc["results"]),
            "seconds": time.monotonic() - t}  # fmt: skip


# ----------------------------------------------------------------------------- 1. build-data


def _partial_rows(parent: Path, name: str) -> int:
    for done in parent.glob(f".{name}.partial-*/done.json"):
        doc = read_json(done)
        if doc:
            return int(doc.get("rows", 0))
    return 0


def _first_encode_count(stderr: str) -> int | None:
    """The count the encode progress bar started at (tqdm's first line: 'encode:  48%|...| 768/1584')."""
    m = re.search(r"encode:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)", stderr)
    return int(m.group(1)) if m else None


def test_build_data_killed_mid_encode_resumes_to_identical_vectors(tmp_path, corpus, reference, procs):
    n = json.loads((reference / "meta.json").read_text())["counts"]["chunks"]
    assert n >= 8 * BLOCK, "the corpus must span many encode blocks"
    out = tmp_path / "ds"

    # kill 1: mid-encode, once about half the blocks are done
    proc = procs.start(build_cmd(corpus, out, "--quiet"))
    assert wait_for(lambda: _partial_rows(tmp_path, "ds") >= n // 2, proc), "build ended before half was encoded"
    assert sigkill(proc), "build-data finished before it could be killed"
    resume_at = _partial_rows(tmp_path, "ds")
    assert 0 < resume_at < n and resume_at % BLOCK == 0
    assert not (out / "meta.json").exists()

    # kill 2: the rerun resumes, encodes the rest; killed once the encode is done (folder being written)
    err = tmp_path / "rerun.err"
    with open(err, "w") as fh:
        proc = procs.start(build_cmd(corpus, out), stderr=fh)
        wait_for(lambda: _partial_rows(tmp_path, "ds") == n, proc, interval=0.002)
        killed_after_encode = sigkill(proc)
    assert _first_encode_count(err.read_text()) == resume_at, "the rerun did not resume from the last finished block"
    if not killed_after_encode:
        assert proc.returncode == 0, err.read_text()[-2000:]

    # the last run completes; after a kill past the encode it encodes nothing again
    res = subprocess.run(build_cmd(corpus, out), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    print(f"killed at {resume_at}/{n} rows, then after the encode: {killed_after_encode}")
    if killed_after_encode:
        assert _first_encode_count(res.stderr) in (n, None), "a build killed after its encode encoded again"

    assert (out / "vectors.npy").read_bytes() == (reference / "vectors.npy").read_bytes()
    meta, ref_meta = (json.loads((d / "meta.json").read_text()) for d in (out, reference))
    assert meta["content_hash"] == ref_meta["content_hash"]
    assert meta["vectors_key"] == ref_meta["vectors_key"]
    assert leftovers(tmp_path) == [], "temporary folders left behind"


# ----------------------------------------------------------------------------- 2. train


def _epochs(run: Path) -> list[int]:
    hist = read_json(run / "training_history.json") or {}
    return [e["epoch"] for e in hist.get("epochs", [])]


def test_train_killed_mid_epoch_resumes_losing_at_most_one_epoch(tmp_path, reference, procs):
    epochs = 5
    run = tmp_path / "run"
    train = [sys.executable, "-m", "lvm.cli", "train", "--dataset", str(reference), "--epochs", str(epochs),
             "--batch-size", "4", "--threads", "1", "--no-kill-switches", "--quiet", "--out", str(run)]  # fmt: skip

    # kill 1: mid-epoch, half an epoch after epoch 2 is recorded
    proc, t0 = procs.start(train), time.monotonic()
    assert wait_for(lambda: len(_epochs(run)) >= 1, proc), "training ended before epoch 1"
    to_first_epoch = time.monotonic() - t0
    assert wait_for(lambda: len(_epochs(run)) >= 2, proc), "training ended before epoch 2"
    hist = json.loads((run / "training_history.json").read_text())
    time.sleep(min(0.5 * hist["epochs"][-1]["seconds"], 5.0))
    assert sigkill(proc), "training finished before it could be killed"
    done1 = _epochs(run)
    assert done1 == list(range(1, len(done1) + 1)) and 2 <= len(done1) < epochs
    assert json.loads((run / "training_history.json").read_text())["status"] == "running"

    # kill 2: the resumed run, while it writes resume.pt (its history already holds that epoch)
    resume = [sys.executable, "-m", "lvm.cli", "train", "--resume", str(run), "--quiet"]
    proc = procs.start(resume)
    writing = lambda: any(p.name.startswith(".resume.pt.tmp-") for p in os.scandir(run))  # noqa: E731
    wait_for(writing, proc, spin_from=time.monotonic() + 0.6 * to_first_epoch)
    killed_in_write = sigkill(proc)
    done2 = _epochs(run)
    assert done2[: len(done1)] == done1 and len(done2) > len(done1)

    # the last resume completes
    res = subprocess.run(resume, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    hist = json.loads((run / "training_history.json").read_text())
    assert hist["status"] == "completed"
    assert [e["epoch"] for e in hist["epochs"]] == list(range(1, epochs + 1)), "epochs lost or repeated"
    resumed = hist["resumed_at_epoch"]
    assert resumed[0] == len(done1) + 1  # only the epoch in flight was lost
    print(f"resumed at {resumed}; killed after {done1}, then while writing resume.pt: {killed_in_write} after {done2}")
    if killed_in_write:
        assert len(resumed) == 2 and resumed[1] in (len(done2), len(done2) + 1), resumed
    assert hist["best_epoch"] in range(1, epochs + 1)
    assert hist["best_val_cosine"] == max(e["val_cosine"] for e in hist["epochs"])
    assert json.loads((run / "last.json").read_text())["epoch"] == epochs
    from lvm.models.checkpoints import load_checkpoint

    load_checkpoint(run / "last.json")
    load_checkpoint(run / "best.json")
    assert leftovers(run) == [], "temporary files left in the run folder"


# ----------------------------------------------------------------------------- 3. gates killed


def _statuses(doc: dict) -> dict:
    """Each gate's status, latency aside (it is timed on a machine shared with the other runs)."""
    rows = [r for r in doc["results"] if r["gate"] != "latency"]
    return {(r["gate"], r.get("split"), r.get("checkpoint")): r["status"] for r in rows}


def _is_old_or_new_complete(path: Path, old: bytes, rows: int) -> str:
    data = path.read_bytes()
    if data == old:
        return "old"
    doc = read_results(path)  # raises on partial or corrupt JSON
    assert doc["run"]["complete"] and len(doc["results"]) == rows, "results file holds an incomplete run"
    return "new"


# `pytest gates/ ...` whose rename of the results file waits: a kill from outside lands while the new
# file lies complete under its temporary name (it lasts well under a millisecond otherwise).
HOLD_RESULTS_RENAME = """
import os, sys, time
import pytest
name, real = ".%s.tmp-" % os.path.basename(sys.argv[1]), os.replace
def replace(a, b):
    if os.path.basename(str(a)).startswith(name):
        time.sleep(20)
    return real(a, b)
os.replace = replace
sys.exit(pytest.main(sys.argv[2:]))
"""


def test_gate_run_killed_while_writing_results(tmp_path, reference, gate_checkpoint, single_gate_run, procs):
    results = tmp_path / "reports" / "gate_results.json"
    results.parent.mkdir()
    results.write_bytes(single_gate_run["bytes"])
    old, rows, seconds = single_gate_run["bytes"], single_gate_run["rows"], single_gate_run["seconds"]
    cmd = gate_cmd(gate_checkpoint, reference, results)
    rng = random.Random(int(os.environ.get("LVM_FAULT_SEED", "5")))
    writing = lambda: any(".tmp-" in p.name for p in os.scandir(results.parent))  # noqa: E731
    seen = []
    # two random moments, the write itself (held open), then the printed table
    for how in ("random", "random", "write", "table"):
        before = results.read_bytes()
        if how == "random":
            proc = procs.start(cmd)
            at = time.monotonic() + rng.uniform(0.05, 0.7) * seconds
            wait_for(lambda: time.monotonic() >= at, proc)  # noqa: B023 (called before the next loop)
        elif how == "write":
            proc = procs.start([sys.executable, "-c", HOLD_RESULTS_RENAME, str(results), *cmd[3:]])
            assert wait_for(writing, proc), "the results file was never written"
        else:
            proc = procs.start(cmd, stdout=subprocess.PIPE, env={"PYTHONUNBUFFERED": "1"})
            read_until(proc, b"lvm gates: stoplights")  # printed after the results file is written
        killed = sigkill(proc)
        state = _is_old_or_new_complete(results, before, rows)
        seen.append((how, killed, state))
        if how == "write":  # killed with the new file complete under its temporary name, before the rename
            assert killed and state == "old" and len(leftovers(results.parent)) == 1
        if proc.stdout:
            proc.stdout.close()
    # a later run is not tripped by what the killed ones left, and leaves nothing itself
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert res.returncode == single_gate_run["rc"], res.stdout[-3000:]
    assert _is_old_or_new_complete(results, old, rows) == "new"
    assert _statuses(read_results(results)) == _statuses(json.loads(old))
    assert leftovers(results.parent) == [], f"stray temporary files after {seen}"
    print(f"kills (moment, landed, file after): {seen}")


# ----------------------------------------------------------------------------- 4. concurrent gates


def test_concurrent_gate_runs(tmp_path, reference, gate_checkpoint, single_gate_run, procs):
    few = ("-k", "normalization")  # a partial run, with an exit code of its own
    res = subprocess.run(
        gate_cmd(gate_checkpoint, reference, tmp_path / "few-alone.json", *few),
        cwd=ROOT, env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    rc_few = res.returncode
    assert rc_few in (0, 1), res.stdout[-2000:]
    shared, own, few_file = tmp_path / "shared.json", tmp_path / "own.json", tmp_path / "few.json"
    runs = [
        (gate_cmd(gate_checkpoint, reference, shared), single_gate_run["rc"]),
        (gate_cmd(gate_checkpoint, reference, shared), single_gate_run["rc"]),
        (gate_cmd(gate_checkpoint, reference, own), single_gate_run["rc"]),
        (gate_cmd(gate_checkpoint, reference, few_file, *few), rc_few),
    ]
    started = [(procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), rc) for cmd, rc in runs]
    for proc, rc in started:
        out, _ = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == rc, out.decode()[-3000:]
    for path in (shared, own):
        doc = read_results(path)
        assert doc["run"]["complete"] and len(doc["results"]) == single_gate_run["rows"]
        assert _statuses(doc) == _statuses(json.loads(single_gate_run["bytes"]))
    assert not read_results(few_file)["run"]["complete"]
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- 5. at the exact moment

# A child that SIGKILLs itself at one precise point of lvm.io: right after atomic_dir moved the old
# folder aside (before the new one is renamed in), or inside write_atomic's write.
KILL_IN_SWAP = """
import os, signal, sys
from pathlib import Path
from lvm import io
out, real = Path(sys.argv[1]), os.replace
def replace(a, b):
    real(a, b)
    if Path(b).name.startswith(f".{out.name}.old-"):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
with io.atomic_dir(out) as tmp:
    (tmp / "v.txt").write_text("new")
"""
KILL_IN_WRITE = """
import os, signal, sys
from lvm import io
def write(tmp):
    tmp.write_text('{"half": ')
    os.kill(os.getpid(), signal.SIGKILL)
io.write_atomic(sys.argv[1], write)
"""


def test_killed_between_the_renames_of_a_folder_swap_or_inside_a_file_write(tmp_path):
    from lvm.io import atomic_dir, clear_stale_temps, write_json_atomic

    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "v.txt").write_text("old")
    res = subprocess.run([sys.executable, "-c", KILL_IN_SWAP, str(out)], cwd=ROOT, env=ENV)
    assert res.returncode == -signal.SIGKILL
    assert not out.exists() and len(leftovers(tmp_path)) == 2  # the old folder aside, the new one not in
    clear_stale_temps(out)  # what build-data and every atomic_dir do first
    assert (out / "v.txt").read_text() == "old" and leftovers(tmp_path) == []
    with atomic_dir(out) as tmp:
        (tmp / "v.txt").write_text("newer")
    assert (out / "v.txt").read_text() == "newer" and leftovers(tmp_path) == []

    results = tmp_path / "r.json"
    write_json_atomic(results, {"run": 1})
    res = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, str(results)], cwd=ROOT, env=ENV)
    assert res.returncode == -signal.SIGKILL
    assert json.loads(results.read_text()) == {"run": 1} and len(leftovers(tmp_path)) == 1
    write_json_atomic(results, {"run": 2})
    assert json.loads(results.read_text()) == {"run": 2} and leftovers(tmp_path) == []
