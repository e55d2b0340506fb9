"""``lvm watch RUN_DIR``: the profile's epoch rules gating a training run that lvm does not own.

A foreign trainer writes its checkpoints into RUN_DIR (the seeds' ``epoch_N.pt`` / ``best_model.pt``
/ ``final_model.pt``, or an lvm run's ``last.json``); the watcher judges each new one, once, with
``EpochGates`` — the same decisions ``lvm train`` takes in-process:

- a seeds' ``.pt`` is read with ``torch.load(weights_only=True)`` and the allow-list of
  ``lvm.models.legacy`` (nothing from the file runs); its class is built from the file's
  ``model_config`` by ``--factory py:models.py:Class`` and the weights are loaded strictly;
- its val cosine (and OOD cosine, at an epoch with an OOD-sentinel rule) is scored on the dataset by
  the watcher itself: the number the file carries is recorded beside it, never trusted;
- each judged checkpoint appends one JSON line to ``RUN_DIR/lvm-watch.jsonl`` (a single ``O_APPEND``
  write per line) and prints one stoplight line; the log is also the watcher's memory, so a watcher
  started again (or ``--once`` after every epoch) judges only what is new;
- on a kill it writes ``RUN_DIR/KILL`` (JSON: epoch, rule, message; written atomically), sends
  ``--signal`` to ``--pid`` when given, and exits with ``EXIT_KILL_SWITCH`` (3), the code of a
  kill-switch abort of ``lvm train``. A foreign trainer can poll for ``KILL`` after each epoch and
  stop; remove the file to let the run go on (a watcher exits 3 while it is there).

A file still being written (its size or mtime moved since the last look, or younger than
``settle`` seconds) is retried, not judged; one that stays unreadable is retried ``UNREADABLE_TRIES``
times, then refused in one line (a garbage ``.pt``), and not read again until it changes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lvm.errors import LvmError

if TYPE_CHECKING:
    from lvm.train.epoch_gates import Decision, EpochGates

WATCH_LOG = "lvm-watch.jsonl"
KILL_FILE = "KILL"
# what a trainer writes per epoch: the seeds' per-epoch and best/final files, an lvm run's last checkpoint
CHECKPOINT_GLOBS = ("epoch_*.pt", "epoch_*.pth", "best_model.pt", "final_model.pt", "last.json")
FINAL_CHECKPOINT = "final_model.pt"  # the seeds' trainer writes it when the run is over
SETTLE_S = 1.0  # a checkpoint whose mtime is younger than this may still be being written
UNREADABLE_TRIES = 3  # looks at a settled file that does not load before it is refused (a garbage .pt)
ONCE_WAIT_S = 60.0  # --once: how long files still being written are waited for
EPOCH_IN_NAME = re.compile(r"epoch[_-]?(\d+)", re.IGNORECASE)


@dataclass
class Loaded:
    """A checkpoint ready to judge: the model to score and what the file says about itself."""

    model: object
    epoch: int
    file_val_cosine: float | None
    ctx: int | None
    min_ctx: int | None
    dataset_path: str | None = None
    meta: dict | None = None  # an lvm checkpoint's JSON


class Unreadable(Exception):
    """The file did not load (still being written, or damaged): retried until it settles."""


class NeedsFactory(LvmError):
    """A pickled checkpoint and no ``--factory``: every such file would fail the same way."""


class OptionConflict(LvmError):
    """An option the run's checkpoints cannot meet (``--ctx`` beyond the model's context): a usage
    error, one line and exit 2, before anything is written to the watch log."""


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line with a single ``O_APPEND`` write (no torn lines between writers)."""
    data = (json.dumps(record, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(path: Path) -> list[dict]:
    """The records of a watch log; a torn or foreign line is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("key"), str):
            out.append(rec)
    return out


def _key(name: str, st: os.stat_result) -> str:
    return f"{name}:{st.st_size}:{st.st_mtime_ns}"


def _epoch_of(obj: dict, path: Path) -> int:
    epoch = obj.get("epoch")
    if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1:
        return epoch
    m = EPOCH_IN_NAME.search(path.stem)
    if m and int(m.group(1)) >= 1:
        return int(m.group(1))
    raise LvmError(f"{path}: no epoch in the checkpoint (an integer 'epoch' >= 1) nor in its name (epoch_N.pt)")


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class Watcher:
    """Judge the new checkpoints of ``run_dir`` against the profile's epoch rules.

    ``dataset``: the data to score on (default: an lvm checkpoint's own dataset, else
    ``fallback_dataset``). ``factory``: ``py:file.py:Class`` that builds a seeds' model from its
    ``model_config`` (required for ``.pt`` files). ``ctx``/``min_ctx``/``samples_per_epoch``
    override what the checkpoint and the dataset say. ``out``/``err``: where stoplight lines and
    one-line problems go.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        dataset: str | None = None,
        fallback_dataset: str | None = None,
        profile: str | None = None,
        factory: str | None = None,
        ctx: int | None = None,
        min_ctx: int | None = None,
        samples_per_epoch: int | None = None,
        settle: float = SETTLE_S,
        device=None,
        pid: int | None = None,
        sig: int = signal.SIGTERM,
        out: Callable[[str], None] = print,
        err: Callable[[str], None] = print,
    ):
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise LvmError(f"{self.run_dir} is not a folder (the run folder a trainer writes its checkpoints into)")
        self.dataset_arg, self.fallback_dataset = dataset, fallback_dataset
        self.profile, self.factory = profile, factory
        self.ctx, self.min_ctx, self.samples_per_epoch = ctx, min_ctx, samples_per_epoch
        self.settle, self.device = settle, device
        self.pid, self.sig = pid, sig
        self.out, self.err = out, err
        self.log_path = self.run_dir / WATCH_LOG
        self.kill_path = self.run_dir / KILL_FILE
        self.gates: EpochGates | None = None  # built with the first checkpoint (its ctx and dataset)
        self.last_stat: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) at the last look
        self.tries: dict[str, int] = {}  # key -> failed loads of a settled file
        records = read_log(self.log_path)
        self.done = {r["key"] for r in records}  # judged, skipped or refused: never read again
        self.judged = {
            int(r["epoch"]): r["file"]
            for r in records
            if r.get("kind") == "decision" and isinstance(r.get("epoch"), int)
        }
        self.pending: list[str] = []  # files seen being written at the last poll
        self.errors = 0  # files refused at the last poll

    # -- finding checkpoints

    def candidates(self) -> list[Path]:
        seen: dict[str, Path] = {}
        for pattern in CHECKPOINT_GLOBS:
            for p in self.run_dir.glob(pattern):
                if p.is_file():
                    seen[p.name] = p
        return sorted(seen.values(), key=lambda p: p.name)

    def _settled(self, p: Path, st: os.stat_result) -> bool:
        """Not being written: same size and mtime as at the last look, and older than ``settle``."""
        now_stat = (st.st_size, st.st_mtime_ns)
        before = self.last_stat.get(p.name)
        self.last_stat[p.name] = now_stat
        young = time.time() - st.st_mtime < self.settle
        return not young and (before is None or before == now_stat)

    # -- loading

    def _dataset(self, loaded: Loaded):
        if self.gates is not None:
            return self.gates.dataset
        path = self.dataset_arg or loaded.dataset_path or self.fallback_dataset
        if not path:
            raise LvmError("no dataset to score the checkpoints on: pass --dataset DIR")
        from lvm.data.datasets import open_dataset

        return open_dataset(path)

    def load(self, p: Path) -> Loaded:
        """The checkpoint at ``p``; ``Unreadable`` when it does not load (yet)."""
        if p.suffix == ".json":
            return self._load_lvm(p)
        return self._load_seed(p)

    def _load_lvm(self, p: Path) -> Loaded:
        from lvm.models.checkpoints import load_checkpoint

        try:  # the trainer writes NAME.safetensors, then NAME.json: between the two they disagree
            model, meta = load_checkpoint(p)
        except LvmError as exc:
            raise Unreadable(str(exc)) from None
        train_cfg = meta.get("training") or {}
        return Loaded(
            model=model,
            epoch=int(meta.get("epoch") or 0) or _epoch_of({}, p),
            file_val_cosine=_number((meta.get("metrics") or {}).get("val_cosine")),
            ctx=int(meta["ctx"]),
            min_ctx=int(meta.get("min_ctx") or train_cfg.get("min_ctx") or 1),
            dataset_path=meta.get("dataset_path"),
            meta=meta,
        )

    def _load_seed(self, p: Path) -> Loaded:
        from lvm.models.adapters import adapt
        from lvm.models.legacy import CTX_KEYS, DIM_KEYS, _build_and_load, _first, _plain, read_seed_checkpoint

        try:
            obj = read_seed_checkpoint(p)  # weights_only=True + the allow-list; one line when refused
        except LvmError as exc:
            raise Unreadable(str(exc)) from None
        if not self.factory:
            raise NeedsFactory(
                f"{p}: a pickled checkpoint needs the class that reads it: pass --factory py:models.py:Class "
                "(built from the file's model_config)"
            )
        config = obj.get("model_config") or {}
        if not isinstance(config, dict):
            raise LvmError(f"{p}: model_config must be a dict of constructor arguments; got {type(config).__name__}")
        model, _ = _build_and_load(self.factory, config, obj["model_state_dict"], p)
        args = _plain(obj.get("args") or {})
        args = args if isinstance(args, dict) else {}
        ctx = self.ctx or _first([config, args], CTX_KEYS)
        dim = _first([config, args], DIM_KEYS)
        min_ctx = args.get("min_ctx") if isinstance(args.get("min_ctx"), int) else None
        if ctx and dim:  # the seeds' forward(x) takes no mask: called by its signature, on full windows
            model, fields = adapt(model, ctx, dim)
            if fields.get("accepts_mask") is False:
                min_ctx = ctx
        return Loaded(
            model=model,
            epoch=_epoch_of(obj, p),
            file_val_cosine=_number(obj.get("val_cosine")),
            ctx=ctx,
            min_ctx=min_ctx,
        )

    # -- judging

    def _gates(self, loaded: Loaded) -> EpochGates:
        from lvm.train.epoch_gates import EpochGates

        if self.gates is None:
            if self.ctx and loaded.ctx and self.ctx > loaded.ctx:
                raise OptionConflict(
                    f"--ctx {self.ctx}: the run's model was built for contexts of at most {loaded.ctx} chunks; "
                    f"pass --ctx {loaded.ctx} or less"
                )
            ds = self._dataset(loaded)
            if loaded.meta is not None:
                from lvm.models.checkpoints import check_compatible

                check_compatible(loaded.meta, ds)
            ctx = self.ctx or loaded.ctx
            min_ctx = self.min_ctx or loaded.min_ctx
            if ctx and min_ctx and min_ctx > ctx:
                min_ctx = ctx
            # an lvm run is judged by the profile it trained under, unless one is given
            run_profile = ((loaded.meta or {}).get("training") or {}).get("gate_profile")
            self.gates = EpochGates(
                self.profile or run_profile,
                self.samples_per_epoch,
                ds,
                ctx=ctx,
                min_ctx=min_ctx,
                device=self.device,
                start_epoch=max(self.judged, default=0) + 1,
            )
        return self.gates

    def _record(self, kind: str, p: Path, key: str, **fields) -> dict:
        rec = {"kind": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "file": p.name, "key": key}
        rec.update(fields)
        append_line(self.log_path, rec)
        self.done.add(key)
        return rec

    def _judge(self, p: Path, key: str, loaded: Loaded) -> Decision:
        from lvm.io import sha256_file

        gates = self._gates(loaded)
        if self.device is not None and hasattr(loaded.model, "to"):
            loaded.model.to(self.device)
        try:
            decision = gates.after_epoch(loaded.epoch, model=loaded.model)
        except LvmError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's model code: say what failed, in one line
            why = " ".join(str(exc).split())[:200]
            raise LvmError(
                f"{p}: scoring it on {gates.dataset.path} failed ({type(exc).__name__}: {why}); the model must take "
                f"x (B, {gates.ctx}, {gates.dataset.dim}) float32 and a mask (B, {gates.ctx}) bool"
            ) from None
        self.judged[loaded.epoch] = p.name
        self._record(
            "decision",
            p,
            key,
            sha256=sha256_file(p),
            profile=gates.profile.name,
            dataset=str(gates.dataset.path),
            ctx=gates.ctx,
            min_ctx=gates.min_ctx,
            samples_per_epoch=gates.samples_per_epoch,
            file_val_cosine=loaded.file_val_cosine,
            **decision.to_dict(),
        )
        said = "" if loaded.file_val_cosine is None else f" [the file says val cos {loaded.file_val_cosine:.4f}]"
        line = f"{decision.status:<5} {p.name}: {decision.message}{said} -> {decision.action}"
        if decision.kill:
            line += self._kill(p, decision)
        self.out(line)
        return decision

    def _kill(self, p: Path, decision: Decision) -> str:
        """Write KILL and signal ``pid``; what was done, for the stoplight line."""
        from lvm.io import write_json_atomic
        from lvm.train.trainer import EXIT_KILL_SWITCH

        write_json_atomic(
            self.kill_path,
            {
                "epoch": decision.epoch,
                "rule": decision.rule,
                "message": decision.message,
                "file": p.name,
                "exit_code": EXIT_KILL_SWITCH,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        done = f"; wrote {self.kill_path}"
        if self.pid:
            try:
                os.kill(self.pid, self.sig)
            except (ProcessLookupError, PermissionError) as exc:
                return done + f"; could not signal pid {self.pid} ({type(exc).__name__})"
            done += f", sent {signal.Signals(self.sig).name} to pid {self.pid}"
        return done

    def _look(self, p: Path) -> tuple[str, Loaded] | None:
        """``p``'s key and checkpoint when it is new, settled and loads; None otherwise (judged before,
        being written or unreadable: retried; refused: recorded)."""
        try:
            st = p.stat()
        except OSError:
            return None  # renamed or removed between the listing and now
        key = _key(p.name, st)
        if key in self.done:
            return None
        if not self._settled(p, st):
            self.pending.append(p.name)
            return None
        try:
            return key, self.load(p)
        except Unreadable as exc:
            self.tries[key] = self.tries.get(key, 0) + 1
            if self.tries[key] < UNREADABLE_TRIES:
                self.pending.append(p.name)
            else:
                self._refuse(p, key, str(exc))
        except NeedsFactory:
            raise  # a usage error: one line, exit 2
        except LvmError as exc:
            self._refuse(p, key, str(exc))
        return None

    def poll(self) -> list[Decision]:
        """One look at the run folder: judge every new settled checkpoint (in epoch order); the decisions."""
        self.pending, self.errors = [], 0
        ready: list[tuple[int, int, Path, str, Loaded]] = []
        for p in self.candidates():
            looked = self._look(p)
            if looked is not None:
                key, loaded = looked
                ready.append((loaded.epoch, 0 if p.name.startswith("epoch") else 1, p, key, loaded))
        decisions = []
        for epoch, _, p, key, loaded in sorted(ready, key=lambda r: r[:2]):
            if epoch in self.judged:
                self._record("skip", p, key, epoch=epoch, why=f"epoch {epoch} already judged from {self.judged[epoch]}")
                continue
            try:
                decision = self._judge(p, key, loaded)
            except OptionConflict:
                raise  # a usage error: one line, exit 2, nothing recorded
            except LvmError as exc:
                self._refuse(p, key, str(exc))
                continue
            decisions.append(decision)
            if decision.kill:
                break  # the run is stopped: later files are judged by a watcher started again
        return decisions

    def run_over(self) -> bool:
        """The trainer says it is done (the seeds' final_model.pt or training_history.json; an lvm
        history that is no longer running) and every checkpoint in the folder has been looked at."""
        history = self.run_dir / "training_history.json"
        over = (self.run_dir / FINAL_CHECKPOINT).is_file()
        if history.is_file():
            try:
                doc = json.loads(history.read_text(encoding="utf-8"))
            except (ValueError, OSError, RecursionError):
                doc = None
            over = over or (isinstance(doc, dict) and doc.get("status", "completed") != "running")
        if not over or self.pending:
            return False
        try:
            return all(_key(p.name, p.stat()) in self.done for p in self.candidates())
        except OSError:
            return False

    def _refuse(self, p: Path, key: str, why: str) -> None:
        self.errors += 1
        self._record("error", p, key, error=why)
        self.err(f"lvm watch: error: {why}")

    # -- the loop

    def run(self, once: bool = False, interval: float = 30.0, idle_timeout: float | None = None) -> int:
        """Watch until a kill (exit 3), the run's end or ``idle_timeout`` seconds without a new
        checkpoint (0); ``once``: judge what is there now (waiting for files still being written)."""
        from lvm.train.trainer import EXIT_KILL_SWITCH

        last_new = time.monotonic()
        start = time.monotonic()
        while True:
            decisions = self.poll()
            if decisions:
                last_new = time.monotonic()
            if any(d.kill for d in decisions):
                return EXIT_KILL_SWITCH
            if once:
                if self.pending and time.monotonic() - start < ONCE_WAIT_S:
                    time.sleep(max(0.1, min(self.settle, interval)))
                    continue
                return self._once_exit(bool(decisions))
            if self.kill_path.exists():
                self.out(f"KILL  {self.kill_path} exists: the run was stopped (remove it to watch on)")
                return EXIT_KILL_SWITCH
            if self.run_over():
                self.out(f"done  {self.run_dir}: the run is over; every checkpoint judged")
                return 0
            if idle_timeout is not None and time.monotonic() - last_new > idle_timeout:
                self.out(f"idle  {self.run_dir}: no new checkpoint for {idle_timeout:g} s")
                return 0
            time.sleep(max(0.1, min(interval, self.settle) if self.pending else interval))

    def _once_exit(self, judged: bool) -> int:
        from lvm.train.trainer import EXIT_KILL_SWITCH

        if not judged and not self.errors and not self.pending:
            last = max(self.judged, default=None)
            self.out(
                f"----- {self.run_dir}: no new checkpoint"
                + (f" (last judged: epoch {last}, {self.judged[last]})" if last is not None else "")
            )
        for name in self.pending:
            self.err(f"lvm watch: {self.run_dir / name} is still being written after {ONCE_WAIT_S:g} s: not judged")
        if self.kill_path.exists():
            return EXIT_KILL_SWITCH
        return 2 if self.errors else 0
