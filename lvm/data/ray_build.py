"""``lvm build-data --engine ray``: the corpus encoded by Ray actors, shard by shard, resumable.

**Shards.** The chunk table is cut into shards of whole articles, each at least ``shard_chunks`` chunks
(default ``SHARD_CHUNKS``; the last one may be shorter): shard ``i`` is the rows ``[start_i, stop_i)`` of
the bank, and every boundary is an article's first chunk. The layout depends only on the chunk table and
``shard_chunks``, and is recorded in the partial build folder (``shards.json``), beside the bank.

**The bank is written in place.** The driver preallocates the partial build's ``vectors.npy``
(``np.lib.format.open_memmap``: float32 [N, D], the same file the one-process build writes), and each
worker writes its shard's rows straight into it at their byte offset (``os.pwrite``, then ``fsync``): no
shard files to assemble, no second copy, and the driver never holds more than the probe vectors (it never
loads the encoder: the first actor reports the identity). Every existing reader (``VectorBank``, the
content hash, ``lvm inspect``) sees the one-process layout. On a cluster (``RAY_ADDRESS``) the partial
folder must therefore be on a file system every node mounts at the same path (as the corpus must be).

**Workers.** ``workers`` Ray actors (``num_cpus=1`` each), each loading the encoder once; the driver hands
each actor one shard at a time. An actor whose process dies (a killed worker, a lost node) is restarted
and its shard run again, up to ``RETRIES`` times (``max_restarts`` / ``max_task_retries``): the retry
rewrites the whole shard. Beyond that the build stops with one line (``BuildInterrupted``) once the other
workers' shards in flight are written, and keeps the partial folder.

**Resume.** A shard is done when ``shards-done.jsonl`` (appended and fsynced after the shard's rows are
fsynced) records it with the SHA-256 of its rows, and its rows in ``vectors.npy`` still hash to it. A rerun
of the same command checks each recorded shard that way and encodes only the others (the log says how
many). A partial folder left by the one-process engine (``done.json``: its first ``rows`` rows) counts its
complete shards as done; a different shard layout, dimension or bank shape starts afresh.

**Same dataset.** The chunks, their order and the encoder spec are the one-process build's, so the
vectors key, the build key and the encoder identity (fingerprint) are the same, and the vectors agree
row for row (cos >= 0.99999; batches differ, so the last float bits may).

Ray is imported here only, when the engine runs: the default install has no Ray (``.[distributed]``).
Embedded and local by default (``ray.init(address="local", num_cpus=workers)``, loopback only, no
dashboard, shut down after the build), or the cluster at ``RAY_ADDRESS`` (as ``lvm sweep``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from lvm.errors import LvmError
from lvm.io import write_json_atomic

SHARD_CHUNKS = 2048  # chunks per shard, at least (whole articles): ~6 s of MiniLM on one core
RETRIES = 2  # restarts of an actor whose process died, and runs again of the shard it held
MANIFEST, DONE_LOG, ONE_PROCESS_DONE = "shards.json", "shards-done.jsonl", "done.json"
MANIFEST_VERSION = 1
# the driver's settings every actor (and every ``lvm sweep`` task) gets; not OMP_*: Ray gives a one-CPU actor one thread
ENV_PREFIXES = ("LVM_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
# Test hook: "SHARD:TIMES:COUNTER" makes the actor encoding shard SHARD write half of its rows and die
# (os._exit) while COUNTER (a file, one line per death) holds fewer than TIMES lines.
CRASH_ENV = "LVM_TEST_RAY_CRASH"


class BuildInterrupted(LvmError):
    """The build stopped with its partial folder kept: a rerun of the same command resumes it."""


def driver_env() -> dict[str, str]:
    """The driver's ``ENV_PREFIXES`` settings, for every worker (actors here, tasks of ``lvm sweep``)."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


def ray_missing() -> LvmError:
    return LvmError(
        "--engine ray needs Ray, which is not installed: pip install '.[distributed]' "
        "(lvm-gates[distributed]), or use --engine local"
    )


def shard_layout(article_id: np.ndarray, shard_chunks: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of whole articles, each at least ``shard_chunks`` rows but the last."""
    n = len(article_id)
    if n == 0:
        return []
    starts = np.flatnonzero(np.r_[True, article_id[1:] != article_id[:-1]])
    bounds = [0]
    for s in starts[1:].tolist():
        if s - bounds[-1] >= shard_chunks:
            bounds.append(s)
    bounds.append(n)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.float32).tobytes()).hexdigest()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_rows(path: str, offset: int, start: int, rows: np.ndarray) -> None:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    fd = os.open(path, os.O_WRONLY)
    try:
        _pwrite_all(fd, rows.tobytes(), offset + start * rows.shape[1] * 4)
        os.fsync(fd)
    finally:
        os.close(fd)


def _maybe_crash(shard: int, path: str, offset: int, start: int, vecs: np.ndarray) -> None:
    hook = os.environ.get(CRASH_ENV)
    if not hook:
        return
    which, times, counter = hook.split(":", 2)
    if int(which) != shard:
        return
    seen = Path(counter).read_text().count("\n") if Path(counter).is_file() else 0
    if seen >= int(times):
        return
    with open(counter, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    _write_rows(path, offset, start, vecs[: len(vecs) // 2])  # died mid-shard: half of its rows written
    os._exit(1)


class ShardEncoder:
    """A Ray actor: the encoder loaded once, then shards encoded and written into the bank in place."""

    def __init__(self, spec_dict: dict, batch_size: int):
        self.spec_dict, self.batch_size = spec_dict, batch_size
        self._encoder = None

    @property
    def encoder(self):
        """Loaded on the first call, not in the constructor: a refusal (LvmError) then reaches the driver
        as the task's error, not as a dead actor."""
        if self._encoder is None:
            from lvm.data.encoders import EncoderSpec, load_encoder

            self._encoder = load_encoder(EncoderSpec.from_dict(self.spec_dict))
        return self._encoder

    def identity(self) -> dict:
        enc = self.encoder
        return {"identity": enc.identity(), "probe": enc.probe_vectors, "dim": enc.dim, "pid": os.getpid()}

    def encode(self, shard: int, start: int, texts: list[str], path: str, offset: int) -> dict:
        t = time.perf_counter()
        cpu = time.process_time()
        vecs = self.encoder.encode(texts, batch_size=self.batch_size)
        _maybe_crash(shard, path, offset, start, vecs)
        _write_rows(path, offset, start, vecs)
        return {
            "shard": shard,
            "rows": len(vecs),
            "sha256": _digest(vecs),
            "seconds": time.perf_counter() - t,
            "cpu_seconds": time.process_time() - cpu,
            "pid": os.getpid(),
        }


def start_ray(workers: int | None) -> tuple[Any, bool, int]:
    """(ray, whether this call started it, CPUs of the cluster), for ``build-data --engine ray`` and
    ``lvm sweep --engine ray``: the cluster at ``RAY_ADDRESS``, else an embedded one on the loopback
    interface with ``workers`` CPUs (all when None); one line when Ray is missing or cannot start."""
    address = os.environ.get("RAY_ADDRESS") or None
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ray_missing() from None
    owned = not ray.is_initialized()
    try:
        if owned and address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        elif owned:
            ray.init(
                address="local",
                num_cpus=workers or os.cpu_count() or 1,
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ray's own classes
        where = f"the Ray cluster at RAY_ADDRESS={address}" if address else "a local Ray cluster"
        raise LvmError(
            f"--engine ray: cannot start or reach {where} ({type(exc).__name__}: {_first_line(exc)}); "
            "check RAY_ADDRESS, or use --engine local"
        ) from None
    return ray, owned, max(1, int(ray.cluster_resources().get("CPU", 1)))


@contextlib.contextmanager
def _ray_chatter_to(log):
    """Ray prints its workers' deaths and task retries to the driver's stderr (paragraphs each, even with
    ``log_to_driver=False``); while the build runs they go to ``log`` as one short line each instead."""
    try:
        from ray._private import worker as ray_worker

        original = ray_worker.print_to_stdstream
    except (ImportError, AttributeError):  # another Ray version: its own output stays
        yield
        return

    def summarize(data, ignore_prefix=False):
        for line in data.get("lines") or []:
            text = " ".join(str(line).split())
            if text:
                log(f"ray: {text[:160]}{'...' if len(text) > 160 else ''}")

    ray_worker.print_to_stdstream = summarize
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original


def _read_done(partial: Path, layout: list[tuple[int, int]], bank: np.ndarray) -> dict[int, str]:
    """Shards recorded done whose rows still hash to their record (a torn last line is ignored)."""
    done: dict[int, str] = {}
    try:
        lines = (partial / DONE_LOG).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return done
    for line in lines:
        try:
            rec = json.loads(line)
            i, sha = int(rec["shard"]), str(rec["sha256"])
            if 0 <= i < len(layout) and [rec["start"], rec["stop"]] == list(layout[i]):
                done[i] = sha
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
    return {i: sha for i, sha in done.items() if _digest(bank[slice(*layout[i])]) == sha}


def _open_partial(partial: Path, layout, n: int, dim: int, vectors_key: str, shard_chunks: int, log):
    """The bank file (created, or the one a previous run left) and the shards already done."""
    partial.mkdir(parents=True, exist_ok=True)
    vec_path = partial / "vectors.npy"
    manifest = {
        "version": MANIFEST_VERSION, "vectors_key": vectors_key, "rows": n, "dim": dim, "dtype": "float32",
        "shard_chunks": shard_chunks, "shards": [list(s) for s in layout],
    }  # fmt: skip
    bank = None
    if vec_path.is_file():
        try:  # our own files, but a damaged one is a fresh start, never a crash
            bank = np.load(vec_path, mmap_mode="r")
            if bank.shape != (n, dim) or bank.dtype != np.float32:
                bank = None
        except Exception:  # noqa: BLE001 - unreadable .npy header (ValueError, SyntaxError, ...)
            bank = None
    done: dict[int, str] = {}
    rewrite = True  # the manifest and the done log are written afresh (from ``done``)
    if bank is not None:
        try:
            same = json.loads((partial / MANIFEST).read_text()) == manifest
        except (OSError, ValueError, RecursionError):
            same = False
        if same:
            done, rewrite = _read_done(partial, layout, bank), False
        elif (partial / ONE_PROCESS_DONE).is_file():  # the one-process engine's progress: its first rows
            try:
                rows = json.loads((partial / ONE_PROCESS_DONE).read_text()).get("rows", 0)
            except (OSError, ValueError, AttributeError, RecursionError):
                rows = 0
            rows = rows if isinstance(rows, int) and not isinstance(rows, bool) else 0
            done = {i: _digest(bank[a:b]) for i, (a, b) in enumerate(layout) if b <= rows}
        else:
            bank = None
    if bank is None:
        vec_path.unlink(missing_ok=True)  # never truncated in place: it may be linked into a dataset folder
        bank = np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32, shape=(n, dim))
        bank.flush()
    offset = int(bank.offset)
    del bank
    if rewrite:
        with open(partial / DONE_LOG, "w") as fh:
            for i, sha in sorted(done.items()):
                fh.write(json.dumps({"shard": i, "start": layout[i][0], "stop": layout[i][1], "sha256": sha}) + "\n")
        write_json_atomic(partial / MANIFEST, manifest)
    (partial / ONE_PROCESS_DONE).unlink(missing_ok=True)
    return vec_path, offset, done


def _record_done(partial: Path, shard: int, span: tuple[int, int], sha: str) -> None:
    with open(partial / DONE_LOG, "a") as fh:
        fh.write(json.dumps({"shard": shard, "start": span[0], "stop": span[1], "sha256": sha}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _task_failure(ray, exc: BaseException, shard: int) -> LvmError:
    """What a failed shard task means: the encoder's own refusal (an ``LvmError`` raised in the worker) is
    passed on as is; a worker lost more than ``RETRIES`` times, or another error, interrupts the build."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, LvmError):
        return LvmError(str(cause))
    if isinstance(exc, ray.exceptions.RayTaskError):
        return BuildInterrupted(f"shard {shard} failed on its Ray worker: {_first_line(exc)}")
    lost = f"the Ray worker encoding shard {shard} was lost {RETRIES + 1} times"
    return BuildInterrupted(f"{lost} ({type(exc).__name__})")


def _run_shards(ray, actors, layout, todo, table, vec_path, offset, partial, done, bar, stats) -> LvmError | None:
    """Each actor one shard at a time until every shard in ``todo`` is encoded; each completion recorded (its
    hash appended to the done log) and counted on ``bar``. After a failure no new shard starts, the ones in
    flight finish and are recorded, and the failure is returned."""
    queue, idle = list(todo), list(actors)
    pending: dict = {}
    failure: LvmError | None = None
    while pending or (queue and failure is None):
        while queue and idle and failure is None:
            i, actor = queue.pop(0), idle.pop(0)
            a, b = layout[i]
            pending[actor.encode.remote(i, a, list(table.texts[a:b]), str(vec_path), offset)] = (i, actor)
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            i, actor = pending.pop(ref)
            try:
                res = ray.get(ref)
            except ray.exceptions.RayError as exc:  # retries used up (a lost worker), or the encoder refused
                failure = failure or _task_failure(ray, exc, i)
                continue
            _record_done(partial, i, layout[i], res["sha256"])
            done[i] = res["sha256"]
            stats["encoded"].append(i)
            stats["rows_encoded"] += res["rows"]
            stats["worker_seconds"] += res["seconds"]
            stats["worker_cpu_seconds"] += res["cpu_seconds"]
            stats["pids"].add(res["pid"])
            bar.update(res["rows"])
            idle.append(actor)
    return failure


def encode_with_ray(
    spec,
    table,
    partial: Path,
    vectors_key: str,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    shard_chunks: int = SHARD_CHUNKS,
    progress: bool = True,
    log=print,
    seconds: dict | None = None,
) -> tuple[Path, dict, np.ndarray, dict]:
    """Encode ``table.texts`` into ``partial/vectors.npy`` with Ray actors, shard by shard (module doc).

    Returns the bank's path, the encoder identity, the probe vectors and the run's statistics
    (shards in all, already done, encoded now, worker seconds, worker processes)."""
    seconds = {} if seconds is None else seconds
    layout = shard_layout(np.asarray(table.article_id), shard_chunks)
    t = time.perf_counter()
    ray, owned, cpus = start_ray(workers)
    try:
        with _ray_chatter_to(log):
            return _encode(ray, cpus, spec, table, partial, vectors_key, layout, batch_size, workers, shard_chunks,
                           progress, log, seconds, t)  # fmt: skip
    finally:
        if owned:
            ray.shutdown()


def _encode(ray, cpus, spec, table, partial, vectors_key, layout, batch_size, workers, shard_chunks, progress, log,
            seconds, t):  # fmt: skip
    from tqdm.auto import tqdm

    n = len(table.texts)
    n_workers = min(workers or cpus, cpus)
    if workers and workers > cpus:
        log(f"--workers {workers}: the Ray cluster has {cpus} CPU(s), running {cpus} workers")
    actor_cls: Any = ray.remote(ShardEncoder).options(
        num_cpus=1, max_restarts=RETRIES, max_task_retries=RETRIES, runtime_env={"env_vars": driver_env()}
    )
    actors = [actor_cls.remote(spec.to_dict(), batch_size) for _ in range(min(n_workers, len(layout)))]
    try:  # the identity comes from the workers (all load at once): the driver never loads the encoder
        infos = ray.get([a.identity.remote() for a in actors])
    except ray.exceptions.RayError as exc:
        failure = _task_failure(ray, exc, 0)
        if isinstance(failure, BuildInterrupted):
            raise LvmError(f"the Ray workers cannot load the encoder: {_first_line(exc)}") from None
        raise failure from None
    info = infos[0]
    odd = [x["identity"]["fingerprint"] for x in infos if x["identity"] != info["identity"]]
    if odd:
        raise LvmError(
            f"the Ray workers disagree on the encoder's identity (fingerprints "
            f"{info['identity']['fingerprint'][:12]} and {odd[0][:12]}): give every node the same model, "
            "package versions and backend"
        )
    dim = int(info["dim"])
    vec_path, offset, done = _open_partial(partial, layout, n, dim, vectors_key, shard_chunks, log)
    todo = [i for i in range(len(layout)) if i not in done]
    seconds["load_encoder"] = time.perf_counter() - t
    resumed = f"; {len(done)} already encoded (verified), encoding {len(todo)}" if done else ""
    log(
        f"encoding {n} chunks of {len(table.articles)} articles in {len(layout)} shards on {len(actors)} "
        f"Ray worker(s) ({'cluster' if os.environ.get('RAY_ADDRESS') else 'local'}) with "
        f"{info['identity']['pipeline']['model_id']} ({dim}-D, {spec.backend} backend){resumed}"
    )
    stats: dict[str, Any] = {"shards": len(layout), "already_done": len(done), "encoded": [], "rows_encoded": 0,
                             "worker_seconds": 0.0, "worker_cpu_seconds": 0.0, "pids": set()}  # fmt: skip
    done_rows = sum(layout[i][1] - layout[i][0] for i in done)
    t = time.perf_counter()
    with tqdm(total=n, initial=done_rows, desc="encode", unit="chunk", disable=not progress) as bar:
        failure = _run_shards(ray, actors, layout, todo, table, vec_path, offset, partial, done, bar, stats)
    seconds["encode"] = time.perf_counter() - t
    if isinstance(failure, BuildInterrupted):
        raise BuildInterrupted(
            f"{failure}: {len(done)} of {len(layout)} shards are encoded in {partial}; "
            "rerun the same command to encode only the rest"
        )
    if failure is not None:
        raise failure
    stats["pids"] = sorted(stats["pids"])
    return vec_path, info["identity"], np.asarray(info["probe"], dtype=np.float32), stats
