"""Files on disk: every write the harness makes goes through here. A file appears whole or not at
all (written to a temporary name beside it, then renamed in one step), folders are swapped in with
one rename, content is identified by SHA-256, and timestamps are UTC ISO-8601 strings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def utc_timestamp() -> str:
    """Now, as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One SHA-256 over several files, each prefixed by its name (order matters)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def _tmp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _dead_leftovers(path: Path, kind: str) -> list[Path]:
    """``.NAME.KIND-PID`` entries beside ``path`` whose process is gone (killed mid-write)."""
    prefix = f".{path.name}.{kind}-"
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return []
    pids = {n: n[len(prefix) :] for n in names}
    return [path.parent / n for n, pid in pids.items() if pid.isdigit() and not _pid_alive(int(pid))]


def clear_stale_temps(path: Path) -> None:
    """Undo what a process killed while writing ``path`` left beside it: its temporary file or
    folder (``.NAME.tmp-PID``) is removed, and a folder it had moved aside to swap in a new one
    (``.NAME.old-PID``) is put back when ``path`` is missing, else removed. Only entries of
    processes that no longer run are touched; concurrent writers are left alone."""
    path = Path(path)
    for old in _dead_leftovers(path, "old"):
        if not path.exists():
            try:
                os.replace(old, path)
                continue
            except OSError:
                pass
        shutil.rmtree(old, ignore_errors=True)
    for tmp in _dead_leftovers(path, "tmp"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it over ``path``.

    On any error the temporary file is removed and an existing ``path`` is left as it was. The
    temporary files of writers killed earlier (SIGKILL, power loss) are removed first.
    """
    path = Path(path)
    clear_stale_temps(path)
    tmp = _tmp_beside(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


OUTPUT_MARKER = ".lvm-output"  # written into every folder lvm writes: what it is and which lvm wrote it


@contextmanager
def atomic_dir(out: Path, kind: str = "output") -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    ``out`` may only be replaced when it is missing, empty or lvm's own output (it holds the
    ``.lvm-output`` marker written here): a user's folder is never deleted. On any error the
    temporary folder is removed and an existing ``out`` is left untouched.
    """
    out = Path(out)
    clear_stale_temps(out)  # a build killed earlier: its temporary folder, or ``out`` it had moved aside
    refuse_foreign_folder(out, OUTPUT_MARKER, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"kind": kind, "written_at": utc_timestamp()}) + "\n")
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def refuse_foreign_folder(out: Path, marker: str = OUTPUT_MARKER, what: str = "output") -> None:
    """Refuse to replace ``out`` unless it is missing, empty, or lvm's own output (the marker, or a
    dataset folder an earlier lvm wrote): a user's folder that happens to sit at the output path
    is never deleted."""
    from lvm.errors import LvmError

    out = Path(out)
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise LvmError(f"{out} exists and is not a folder; the {what} is written as a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / marker).exists() or (out / OUTPUT_MARKER).exists() or _earlier_lvm_dataset(out):
        return
    raise LvmError(
        f"refusing to write the {what} into {out}: it is not empty and was not written by lvm (no {OUTPUT_MARKER}); "
        "choose another path or empty it yourself"
    )


def _earlier_lvm_dataset(out: Path) -> bool:
    """A dataset folder written before the marker existed: its meta.json says so."""
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format_version") == 1 and isinstance(meta.get("content_hash"), str)
