"""Gate sweeps: every checkpoint × dataset of a hyper-parameter sweep gated as independent tasks, on Ray or
a local pool, merged into one results file and one leaderboard (``lvm sweep``).

**Tasks.** Each task is its own gate session: one ``python -m pytest <lvm.gatesuite> --checkpoint=NAME=PATH
--dataset=D --results=part.json -m MARKEXPR -p no:cacheprovider -q`` process, so a task sees exactly what
``pytest gates/`` sees. Per dataset:

- one **data** task (``-m data``) with every checkpoint given: the data gates run once per dataset, and
  read what they read in one run with all checkpoints (``encoder_fingerprint`` compares every card's
  fingerprint, ``alignment`` and ``batch_hygiene`` read every context the models use);
- one **model** task per checkpoint (``-m "model and not latency"``);
- one **latency** task per checkpoint (``-m latency``), in a second, serial phase (below).

**Names.** A checkpoint is named by its model card (two AMN runs are both ``amn``), so the sweep names every
checkpoint by its folder (``amn_lr3=runs/amn_lr3``; the file's stem for a file; parent folders prefixed
when two folders share a name) and says so; ``NAME=SPEC`` in ``--checkpoints`` sets one explicitly.

**Merge.** The tasks' results documents (schema ``lvm-gate-results`` v2) become one: their rows (paths made
relative to the new file), their ``models`` tables, a ``run`` record as the gate suite writes it (plus
``run.sweep``: engine, workers, tasks, attempts, failures with their output's tail) and the summary. It
equals what one ``pytest gates/`` run with all checkpoints writes, apart from timings and run metadata.
Then ``lvm leaderboard``. Exit code 1 when any gate is RED, as the gate suite.

**Failures.** A task that fails (crash, timeout, a pytest usage error) makes each gate it owns RED with its
one-line reason; the sweep goes on. A checkpoint that does not load is the gate suite's own verdict
(``checkpoint_integrity`` RED, its other gates SKIP). On Ray, a task whose *worker* dies (a killed
process, a lost node) runs again, up to ``RETRIES`` times; its pytest process dies with its worker
(``PR_SET_PDEATHSIG``), so no orphan writes beside the retry.

**Latency.** Wall-clock gates are judged on a quiet machine, so latency never runs beside another task:
all other tasks finish first, then the latency tasks run in a serial phase. On Ray each latency task
reserves *all* CPUs of one node (``num_cpus`` = the node's CPUs, pinned there with
``NodeAffinitySchedulingStrategy``), so each node times one checkpoint at a time and nothing else;
nodes time in parallel. The local engine runs them one after another.

**Engines.** ``ray`` (default): embedded and local — ``ray.init(address="local", num_cpus=WORKERS)``, no
dashboard, bound to the loopback interface — or the cluster at ``RAY_ADDRESS`` (every node needs this
package installed and the same paths: checkpoints, datasets). ``local``: the same tasks, WORKERS pytest
processes at a time, no Ray needed.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvm.errors import LvmError

RETRIES = 2  # more runs of a task whose Ray worker died (a lost node, a killed process)
DEFAULT_TIMEOUT = 3600.0  # seconds one task (one pytest process) may take
MARKEXPR = {"data": "data", "model": "model and not latency", "latency": "latency"}
TAIL_LINES = 30
CHECKPOINT_SUFFIXES = (".pt2", ".safetensors", ".json")

# The pytest process of a task: `python -m pytest ARGS`, made to die with the process that started it (a Ray
# worker killed mid-task must not leave an orphan gating beside its retry; Linux: PR_SET_PDEATHSIG).
_BOOT = """\
import ctypes, os, runpy, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(70)
sys.argv = ["pytest", *sys.argv[2:]]
sys.path.insert(0, os.getcwd())
runpy.run_module("pytest", run_name="__main__", alter_sys=True)
"""


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Task:
    """One gate session: ``kind`` data (every checkpoint, data gates), model or latency (one checkpoint)."""

    id: str
    kind: str
    dataset: str  # absolute path
    checkpoints: tuple[str, ...]  # --checkpoint arguments, NAME=SPEC
    checkpoint: str | None = None  # the name (model and latency tasks)

    @property
    def markexpr(self) -> str:
        return MARKEXPR[self.kind]

    def gates(self) -> tuple[str, ...]:
        """The gates this task owns (each is RED with the task's reason when the task fails)."""
        from lvm.gates.spec import DATA_GATES, GATES

        if self.kind == "data":
            return DATA_GATES
        latency = self.kind == "latency"
        return tuple(g.id for g in GATES if g.kind == "model" and g.id != "regression" and g.hardware_bound == latency)


@dataclass(frozen=True)
class TaskOptions:
    """What every task runs with (sent to the workers)."""

    extra_args: tuple[str, ...] = ()  # gate suite options: --gate-profile, --ood-dataset, ...
    timeout: float = DEFAULT_TIMEOUT
    env: dict = field(default_factory=dict)
    cwd: str | None = None  # the driver's folder (relative imports of py: factories), when the node has it


def _is_py(spec: str) -> bool:
    return spec.startswith("py:")


def _absolute(spec: str) -> str:
    """A spec with its file made absolute (tasks run in other folders, maybe on other machines)."""
    if _is_py(spec):
        target, sep, attr = spec[3:].rpartition(":")
        return f"py:{Path(target).resolve()}:{attr}" if target.endswith(".py") else spec
    return str(Path(spec).resolve())


def _looks_like_checkpoint(path: Path) -> bool:
    """A glob match worth gating: a folder holding a checkpoint file, or a checkpoint file (not
    training_history.json, training.log, a folder of runs)."""
    if path.is_dir():
        return any(p.is_file() and p.suffix in CHECKPOINT_SUFFIXES for p in path.iterdir())
    if path.suffix in (".pt2", ".safetensors"):
        return True
    if path.suffix == ".json":
        from lvm.report.recorder import card_name

        return card_name(str(path)) is not None
    return False


def expand_checkpoints(patterns: Iterable[str], log: Callable[[str], None] = print) -> list[tuple[str | None, str]]:
    """``(NAME or None, absolute spec)`` for every ``--checkpoints`` item: ``NAME=SPEC`` as given, a ``py:``
    spec, a path, or a glob (its matches that hold a checkpoint; the others are named and skipped)."""
    from lvm.report.recorder import split_name

    out: list[tuple[str | None, str]] = []
    for item in patterns:
        name, spec = split_name(item)
        if name or _is_py(spec) or not glob.has_magic(spec):
            if not _is_py(spec) and not Path(spec).exists():
                raise LvmError(f"--checkpoints: {spec} not found")
            out.append((name, _absolute(spec)))
            continue
        matches = sorted(Path(m) for m in glob.glob(spec))
        kept = [m for m in matches if _looks_like_checkpoint(m)]
        skipped = [str(m) for m in matches if m not in kept]
        if skipped:
            log(f"sweep: skipped (no checkpoint inside): {', '.join(skipped)}")
        if not kept:
            raise LvmError(f"--checkpoints: no checkpoint matches {spec!r}")
        out += [(None, str(m.resolve())) for m in kept]
    return out


def _safe(text: str) -> str:
    """A name the gate suite accepts in NAME= (letters, digits, ``_.+-``)."""
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", text)
    return name if name and re.match(r"[A-Za-z0-9_]", name) else "_" + name


def folder_names(entries: list[tuple[str | None, str]]) -> list[tuple[str, str]]:
    """``(NAME, spec)``: the given name, else the folder's (a file's stem; a ``py:`` spec's label); parent
    folders are prefixed (``a_amn``, ``b_amn``) while two would share a name. ``LvmError`` on two alike."""
    from lvm.report.recorder import path_label

    def parts(spec: str) -> list[str]:
        if _is_py(spec):
            return [path_label(spec)]
        p = Path(spec)
        return [*p.parent.parts[1:], p.stem if p.is_file() else p.name]

    depth = {spec: 1 for name, spec in entries if name is None}
    for _ in range(64):
        named = {spec: _safe("_".join(parts(spec)[-d:])) for spec, d in depth.items()}
        counts: dict[str, int] = {}
        for n in named.values():
            counts[n] = counts.get(n, 0) + 1
        grow = [s for s, n in named.items() if counts[n] > 1 and depth[s] < len(parts(s))]
        if not grow:
            break
        for s in grow:
            depth[s] += 1
    names = [(name or named[spec], spec) for name, spec in entries]
    seen: dict[str, str] = {}
    for name, spec in names:
        if name in seen:
            raise LvmError(
                f"--checkpoints: {seen[name]} and {spec} are both named {name!r}; name one with NAME=PATH"
                if seen[name] != spec
                else f"--checkpoints: {spec} is given twice"
            )
        seen[name] = spec
    return names


def plan(checkpoints: list[tuple[str, str]], datasets: list[str]) -> list[Task]:
    """Data tasks (one per dataset), model tasks, then latency tasks (checkpoint × dataset)."""
    every = tuple(f"{n}={s}" for n, s in checkpoints)
    tasks = [Task(f"data@{Path(d).name}", "data", d, every) for d in datasets]
    for kind in ("model", "latency"):
        tasks += [
            Task(f"{kind}:{n}@{Path(d).name}", kind, d, (f"{n}={s}",), n) for d in datasets for n, s in checkpoints
        ]
    return tasks


# ----------------------------------------------------------------------------- one task (on a worker)


def _tail(text: str, n: int = TAIL_LINES) -> list[str]:
    return [line[:400] for line in text.splitlines()[-n:]]


def _last_line(lines: list[str]) -> str:
    """The output's last line that says something (not pytest's ==== rules or blank)."""
    for line in reversed(lines):
        s = line.strip()
        if s and not set(s) <= set("=-_ ") and not s.startswith("====="):
            return s[:240]
    return "no output"


def _why(returncode: int | None, timed_out: float | None, lines: list[str]) -> str:
    if timed_out is not None:
        return f"timed out after {timed_out:g} s"
    if returncode is not None and returncode < 0:
        try:
            sig = signal.Signals(-returncode).name
        except ValueError:
            sig = f"signal {-returncode}"
        return f"pytest was killed by {sig}: {_last_line(lines)}"
    return f"pytest exited {returncode} without results: {_last_line(lines)}"


def run_task(task: Task, opts: TaskOptions) -> dict:
    """Run one task's gate session; never raises. ``ok``: its results document is in ``doc``; else
    ``reason`` says why in one line. ``part_dir`` is where its paths are relative to."""
    import lvm.gatesuite

    started = time.time()
    suite = str(Path(lvm.gatesuite.__file__).resolve().parent)
    work = Path(tempfile.mkdtemp(prefix="lvm-sweep-")).resolve()
    part, log = work / "part.json", work / "task.log"
    args = [suite, *(f"--checkpoint={c}" for c in task.checkpoints), f"--dataset={task.dataset}"]
    args += [f"--results={part}", "-m", task.markexpr, "-p", "no:cacheprovider", "-q", *opts.extra_args]
    cmd = [sys.executable, "-c", _BOOT, str(os.getpid()), *args]
    cwd = opts.cwd if opts.cwd and os.path.isdir(opts.cwd) else str(work)
    returncode, timed_out = None, None
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **opts.env})
            try:
                returncode = proc.wait(timeout=opts.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                timed_out = opts.timeout
        lines = _tail(log.read_text(errors="replace"))
        doc = None
        if timed_out is None and returncode in (0, 1) and part.is_file():
            doc = json.loads(part.read_text())
        ok = doc is not None or (timed_out is None and returncode == 5)  # 5: pytest collected no gate
        reason = None if ok else _why(returncode, timed_out, lines)
    except (OSError, ValueError) as exc:
        ok, doc, lines, reason = False, None, [], f"task could not run: {type(exc).__name__}: {exc}"[:240]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "id": task.id,
        "ok": ok,
        "doc": doc,
        "reason": reason,
        "returncode": returncode,
        "part_dir": str(work),
        "log_tail": lines if not ok else [],
        "seconds": round(time.time() - started, 3),
        "host": socket.gethostname(),
        "attempt": 1,
    }


# ----------------------------------------------------------------------------- engines


Done = Callable[[dict], None]


class LocalEngine:
    """WORKERS tasks at a time, each its own pytest process; the latency phase one task at a time."""

    name = "local"

    def __init__(self, workers: int | None):
        self.workers = workers or os.cpu_count() or 1
        self.where = "local"

    def run(self, tasks: list[Task], opts: TaskOptions, done: Done, serial: bool = False) -> None:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        with ThreadPoolExecutor(max_workers=1 if serial else self.workers) as pool:
            futures = [pool.submit(run_task, t, opts) for t in tasks]
            for f in as_completed(futures):
                done(f.result())

    def attempts(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class _AttemptLedger:
    """A Ray actor counting the runs of each task (a retried task starts twice)."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def start(self, task_id: str) -> int:
        self.counts[task_id] = self.counts.get(task_id, 0) + 1
        return self.counts[task_id]

    def all(self) -> dict:
        return dict(self.counts)


def _ray_task(task: Task, opts: TaskOptions, ledger) -> dict:
    import ray

    attempt = ray.get(ledger.start.remote(task.id))
    return {**run_task(task, opts), "attempt": attempt}


class RayEngine:
    """Tasks as Ray tasks (``num_cpus=1``, retried when their worker dies), at most WORKERS in flight;
    the latency phase as one task per node at a time, each holding all of its node's CPUs."""

    name = "ray"

    def __init__(self, workers: int | None):
        from lvm.data.ray_build import start_ray

        self.ray: Any
        self.ray, self.owned, cpus = start_ray(workers)
        address = os.environ.get("RAY_ADDRESS") or None
        self.where = address or "local"
        self.workers = min(workers, cpus) if workers else cpus
        self.ledger: Any = self.ray.remote(num_cpus=0)(_AttemptLedger).remote()
        self.remote: Any = self.ray.remote(max_retries=RETRIES)(_ray_task)

    def _failed(self, task: Task, exc: Exception) -> dict:
        first = (str(exc).strip().splitlines() or [""])[0]
        reason = f"Ray task failed: {type(exc).__name__}: {first}"[:240]
        return {"id": task.id, "ok": False, "doc": None, "reason": reason, "log_tail": _tail(str(exc)), "attempt": 0}

    def _nodes(self) -> list[dict]:
        nodes = [n for n in self.ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
        if not nodes:
            raise LvmError("the Ray cluster has no live node with a CPU")
        return nodes

    def _submit(self, task: Task, opts: TaskOptions, node: dict | None):
        if node is None:
            return self.remote.options(num_cpus=1).remote(task, opts, self.ledger)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        cpus = node["Resources"]["CPU"]
        return self.remote.options(num_cpus=cpus, scheduling_strategy=strategy).remote(task, opts, self.ledger)

    def run(self, tasks: list[Task], opts: TaskOptions, done: Done, serial: bool = False) -> None:
        ray = self.ray
        queue = list(tasks)
        nodes = self._nodes() if serial else []
        # latency: every task is placed on a node now (round robin) and holds the whole node; Ray runs them
        # one at a time per node. Otherwise at most WORKERS tasks are in flight.
        window = len(queue) if serial else self.workers
        pending: dict = {}
        placed = 0
        while queue or pending:
            while queue and len(pending) < window:
                task = queue.pop(0)
                node = nodes[placed % len(nodes)] if serial else None
                placed += 1
                pending[self._submit(task, opts, node)] = task
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                try:
                    done(ray.get(ref))
                except ray.exceptions.RayError as exc:  # retries used up, node lost, cancelled
                    done(self._failed(task, exc))

    def attempts(self) -> dict:
        return self.ray.get(self.ledger.all.remote())

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()


def make_engine(name: str, workers: int | None):
    if name == "local":
        return LocalEngine(workers)
    if name == "ray":
        return RayEngine(workers)
    raise LvmError(f"--engine: unknown engine {name!r} (ray, local)")


# ----------------------------------------------------------------------------- the merge


def _repath(value: str | None, part_dir: str, base: Path) -> str | None:
    """A path relative to a task's results file, made relative to the merged file's folder."""
    from lvm.report.recorder import PREDICTIONS

    if not value or _is_py(value):
        return value
    prefix = PREDICTIONS if value.startswith(PREDICTIONS) else ""
    absolute = os.path.normpath(os.path.join(part_dir, value.removeprefix(prefix)))
    return prefix + os.path.relpath(absolute, base.resolve())


def failure_rows(task: Task, reason: str, base: Path) -> list[dict]:
    """RED rows, one per gate the failed task owns, with its one-line reason."""
    from lvm.gates.status import RED, GateResult
    from lvm.report.recorder import PREDICTIONS

    spec = task.checkpoints[0].partition("=")[2] if task.checkpoint else None
    if spec and not _is_py(spec):
        spec = (PREDICTIONS if spec.startswith(PREDICTIONS) else "") + os.path.relpath(
            spec.removeprefix(PREDICTIONS), base.resolve()
        )
    message = f"sweep task {task.id} failed: {reason}"
    dataset, dataset_path = Path(task.dataset).name, os.path.relpath(task.dataset, base.resolve())
    rows = []
    for gate in task.gates():
        result = GateResult(gate, RED, message=message, dataset=dataset, checkpoint=task.checkpoint)
        row = {**result.to_dict(), "nodeid": f"sweep::{task.id}::{gate}", "dataset_path": dataset_path}
        rows.append({**row, "checkpoint_path": spec} if spec else row)
    return rows


def _order(tasks: list[Task]):
    """Rows in the gate suite's order: data gates per dataset, then each checkpoint's gates."""
    from lvm.gates.spec import ORDER
    from lvm.report.results import dataset_label

    datasets = {Path(t.dataset).name: i for i, t in enumerate(tasks) if t.kind == "data"}
    ckpts: dict[str, int] = {}
    for t in tasks:
        if t.checkpoint is not None:
            ckpts.setdefault(t.checkpoint, len(ckpts))

    def key(row: dict):
        ds = datasets.get(dataset_label(row) or "", len(datasets))  # training_health: by its dataset_path
        ck = row.get("checkpoint")
        return (ck is not None, ds, ckpts.get(ck, len(ckpts)) if ck else -1, ORDER.get(row["gate"], 99))

    return key


def merge(tasks: list[Task], outcomes: dict[str, dict], target: Path, run: dict) -> dict:
    """One results document from the tasks' documents (and RED rows for the tasks that failed)."""
    from lvm.gates.spec import DATA_GATES, MODEL_GATES
    from lvm.report.results import build_document, json_safe

    base = target.parent
    rows: list[dict] = []
    models: dict = {}
    profile: dict[str, Any] = {"name": "unknown", "version": 0}
    for task in tasks:
        out = outcomes[task.id]
        if not out["ok"]:
            rows += failure_rows(task, out["reason"], base)
            continue
        doc = out["doc"] or {}
        for r in doc.get("results", []):
            for key in ("checkpoint_path", "dataset_path"):
                if r.get(key):
                    r[key] = _repath(r[key], out["part_dir"], base)
            rows.append(r)
        for name, entry in (doc.get("models") or {}).items():
            models.setdefault(name, entry)
        if (doc.get("profile") or {}).get("name", "unknown") != "unknown" and profile["name"] == "unknown":
            profile = doc["profile"]
    rows.sort(key=_order(tasks))
    doc = build_document(rows, profile["name"], profile["version"])
    ran = sorted({r["gate"] for r in rows if r["gate"] != "regression"})
    models_gated = any(t.checkpoint for t in tasks)
    expected = set(DATA_GATES) | (set(MODEL_GATES) - {"regression"} if models_gated else set())
    missing = sorted(expected - set(ran))
    doc["run"] = {
        **run,
        "gates_ran": ran,
        "gates_missing": missing,
        "selection": {"keyword": None, "markexpr": None, "last_failed": False, "deselected": 0},
        "complete": not missing,
    }
    doc["models"] = json_safe(models)
    return doc


# ----------------------------------------------------------------------------- the sweep


class _Terminal:
    """What ``write_stoplights`` writes on: plain lines on stdout."""

    def section(self, title: str) -> None:
        print(f"{'=' * 20} {title} {'=' * 20}")

    def write(self, text: str, **_colour) -> None:
        print(text, end="")

    def write_line(self, text: str, **_colour) -> None:
        print(text)


@dataclass
class SweepConfig:
    checkpoints: list[str]
    datasets: list[str]
    engine: str = "ray"
    workers: int | None = None
    results: str = "reports/sweep_results.json"
    out: str = "reports/sweep"
    timeout: float = DEFAULT_TIMEOUT
    extra_args: tuple[str, ...] = ()
    progress: bool = True
    argv: list = field(default_factory=list)


def _datasets(paths: list[str]) -> list[str]:
    out: list[str] = []
    seen: dict[str, str] = {}
    for d in paths:
        p = Path(d).resolve()
        if not p.is_dir():
            raise LvmError(f"--datasets: folder {d} not found")
        if p.name in seen and seen[p.name] != str(p):
            raise LvmError(f"--datasets: {seen[p.name]} and {p} share the name {p.name!r} (rows name a dataset by it)")
        seen[p.name] = str(p)
        if str(p) not in out:
            out.append(str(p))
    return out


def _execute(engine, tasks: list[Task], opts: TaskOptions, progress: bool) -> tuple[dict[str, dict], dict]:
    """Run the tasks: everything but latency in parallel, then the latency phase; (task id -> outcome,
    seconds per phase)."""
    from tqdm.auto import tqdm

    outcomes: dict[str, dict] = {}
    phases: dict[str, float] = {}
    with tqdm(total=len(tasks), desc="sweep", unit="task", disable=not progress) as bar:

        def done(out: dict) -> None:
            outcomes[out["id"]] = out
            bar.set_postfix_str(out["id"][:40])
            bar.update(1)

        for phase, serial in (("parallel", False), ("latency", True)):
            t0 = time.perf_counter()
            engine.run([t for t in tasks if (t.kind == "latency") == serial], opts, done, serial=serial)
            phases[phase] = round(time.perf_counter() - t0, 3)
    return outcomes, phases


def run_sweep(cfg: SweepConfig, log: Callable[[str], None] = print) -> int:
    """``lvm sweep``: gate every checkpoint × dataset, write one results file and the leaderboard; 1 when
    any gate is RED, else 0."""
    from lvm.report.leaderboard import leaderboard_main
    from lvm.report.recorder import write_stoplights
    from lvm.report.results import write_results
    from lvm.schemas import ResultRow

    started = time.time()
    datasets = _datasets(cfg.datasets)
    named = folder_names(expand_checkpoints(cfg.checkpoints, log))
    log("sweep: checkpoints are named by their folder (a model card's name is shared by every run of a model): ")
    log("  " + " ".join(f"{n}={s}" for n, s in named))
    tasks = plan(named, datasets)
    from lvm.data.ray_build import driver_env  # the driver's LVM_/HF_/... settings (no Ray imported)

    opts = TaskOptions(tuple(cfg.extra_args), cfg.timeout, driver_env(), os.getcwd())
    engine = make_engine(cfg.engine, cfg.workers)
    try:
        log(f"sweep: {len(tasks)} tasks on {engine.name} ({engine.where}), {engine.workers} worker(s); latency last")
        outcomes, phases = _execute(engine, tasks, opts, cfg.progress)
        attempts = engine.attempts()
    finally:
        engine.close()
    failed = [o for o in outcomes.values() if not o["ok"]]
    retried = {k: v for k, v in attempts.items() if v > 1}
    run = {
        "argv": list(cfg.argv),
        "seconds": round(time.time() - started, 3),
        "sweep": {
            "engine": engine.name,
            "where": engine.where,
            "workers": engine.workers,
            "tasks": len(tasks),
            "latency": "serial phase after all other tasks; one task per node, holding all its CPUs",
            "phase_seconds": phases,
            "retried": retried,
            "failed": [{"task": o["id"], "reason": o["reason"], "log_tail": o.get("log_tail", [])} for o in failed],
        },
    }
    target = Path(cfg.results)
    doc = merge(tasks, outcomes, target, run)
    path = write_results(target, doc)
    write_stoplights(_Terminal(), [ResultRow.model_validate(r) for r in doc["results"]])
    log(f"results: {path}")
    for task_id, n in sorted(retried.items()):
        log(f"sweep: {task_id} ran {n} times (its worker was lost)")
    for o in failed:
        log(f"sweep: task {o['id']} failed: {o['reason']}")
    leaderboard_main([path], cfg.out)
    return 1 if doc["summary"]["RED"] else 0
