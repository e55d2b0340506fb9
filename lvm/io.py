"""Files on disk: every write the harness makes goes through here. A file appears whole or not at
all (written to a temporary name beside it, then renamed in one step), folders are swapped in with
one rename, content is identified by SHA-256, and timestamps are UTC ISO-8601 strings.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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


OUTPUT_MARKER = ".lvm-output"  # written into every folder lvm writes: what it is, and the files lvm wrote there
MARKER_VERSION = 2  # 2: the marker lists the files (size, mtime, SHA-256); 1 (no "files"): an older lvm
# What lvm (re)writes inside its own output folders after writing them, rebuilt from the data: caches
# (the dataset integrity record, fitted baselines) and the search index (`lvm build-index`). Always lvm's.
DERIVED_ENTRIES = frozenset({"cache", "index.faiss", "index.json"})
_DATASET_FILES = frozenset(
    {"meta.json", "vectors.npy", "article_id.npy", "position.npy", "split.npy", "texts.jsonl", "articles.jsonl"}
    | {"probe_vectors.npy", "rows.npy"}
)
# What each kind of output held before markers listed their files: a folder with an old marker (or
# a dataset folder written before markers existed) is lvm's only when it holds nothing else.
OLD_OUTPUT_FILES: dict[str, frozenset[str]] = {
    "dataset": _DATASET_FILES,
    "filtered dataset": _DATASET_FILES | {"mask.npy", "filter_summary.json"},
    "imported checkpoint": frozenset({"model.safetensors", "model.json", "model.pt2"}),
    "sequence manifest": frozenset(
        {"manifest.json"} | {f"{s}_{k}.npy" for s in ("train", "val", "ood") for k in ("targets", "context")}
    ),
}
_ANY_OLD_OUTPUT = frozenset().union(*OLD_OUTPUT_FILES.values())
_LEFTOVER = re.compile(r"^\..+\.(tmp|old)-\d+$")  # a temporary file of an lvm writer (write_atomic, atomic_dir)


@contextmanager
def atomic_dir(out: Path, kind: str = "output") -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    The ``.lvm-output`` marker written into the new folder lists every file lvm wrote there with its
    size, mtime and SHA-256 (hashed once, here). ``out`` may only be replaced when it is missing,
    empty, or holds nothing but lvm's files: the ones its marker lists, unchanged (same size, and
    same mtime or same SHA-256), plus what lvm rebuilds there (``cache/``, ``index.faiss``,
    ``index.json``). Anything else — a file the user added, or one lvm wrote that the user has
    since changed — makes the command refuse, naming it, before any work and again just before the
    swap: a user's file is never deleted (nor moved). On any error the temporary folder is removed
    and an existing ``out`` is left untouched.
    """
    out = Path(out)
    clear_stale_temps(out)  # a build killed earlier: its temporary folder, or ``out`` it had moved aside
    refuse_foreign_folder(out, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_marker(tmp, kind)  # a first marker (no files yet); the final one below lists them
        yield tmp
        write_marker(tmp, kind, _listing(tmp))
        refuse_foreign_folder(out, kind)  # the user may have added a file while we worked
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    except OSError:  # e.g. out became something else meanwhile: put back what was there, leave nothing
        if old.exists() and not out.exists():
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def write_marker(folder: Path, kind: str, files: dict | None = None) -> None:
    """``folder/.lvm-output``: the kind of output, when, and the files lvm wrote (``_listing``)."""
    doc = {"kind": kind, "written_at": utc_timestamp(), "marker_version": MARKER_VERSION, "files": files or {}}
    write_json_atomic(Path(folder) / OUTPUT_MARKER, doc)


def _listing(folder: Path) -> dict[str, dict]:
    """Every regular file under ``folder`` (relative POSIX path -> size, mtime_ns, sha256), but the
    marker, what lvm rebuilds there (``DERIVED_ENTRIES``) and symlinks (lvm writes none)."""
    folder = Path(folder)
    files: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        if here == folder:
            dirnames[:] = [d for d in dirnames if d not in DERIVED_ENTRIES]
        for name in sorted(filenames):
            p = here / name
            rel = p.relative_to(folder).as_posix()
            if rel == OUTPUT_MARKER or (here == folder and name in DERIVED_ENTRIES) or p.is_symlink():
                continue
            st = p.stat()
            files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(p)}
    return files


def _read_marker(out: Path) -> dict | None:
    try:
        doc = json.loads((out / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _unchanged(path: Path, rec) -> bool:
    """``path`` is still the file a marker recorded: same size, and same mtime or same SHA-256."""
    if not isinstance(rec, dict) or path.is_symlink() or not path.is_file():
        return False
    try:
        st = path.stat()
        if st.st_size != rec.get("size"):
            return False
        return st.st_mtime_ns == rec.get("mtime_ns") or sha256_file(path) == rec.get("sha256")
    except OSError:
        return False


def foreign_entries(out: Path, kind: str = "output") -> list[str] | None:
    """What in lvm's output folder ``out`` is not lvm's (paths relative to ``out``), or None when
    ``out`` is not an lvm output folder at all (no marker, and not a dataset of an older lvm).

    With a marker that lists files: a file not listed, listed but changed since (size, then mtime,
    then SHA-256), any symlink, and any folder holding nothing lvm wrote. With an older marker (or a
    damaged one, or a dataset folder from before markers): any top-level entry an output of that
    kind never held (``OLD_OUTPUT_FILES``). ``DERIVED_ENTRIES`` and lvm's own temporary files are
    lvm's in both cases."""
    out = Path(out)
    has_marker = (out / OUTPUT_MARKER).is_file()
    marker = _read_marker(out) if has_marker else None
    if not has_marker and not _earlier_lvm_dataset(out):
        return None
    listed = marker.get("files") if marker is not None else None
    if not isinstance(listed, dict):
        old_kind = marker.get("kind") if marker is not None else "dataset"
        allowed = OLD_OUTPUT_FILES.get(old_kind if isinstance(old_kind, str) else kind, _ANY_OLD_OUTPUT)
        return sorted(
            e.name + ("/" if e.is_dir() and not e.is_symlink() else "")
            for e in os.scandir(out)
            if not _lvm_entry(e.name) and not (e.name in allowed and e.is_file(follow_symlinks=False))
        )
    foreign: list[str] = []
    _walk_foreign(out, out, listed, foreign)
    return foreign


def _lvm_entry(name: str) -> bool:
    return name == OUTPUT_MARKER or name in DERIVED_ENTRIES or bool(_LEFTOVER.match(name))


# The files lvm writes in an output's cache/: the integrity record (finite.json: an older lvm's), fitted
# null baselines, and atomic-write temporaries
_CACHE_FILE = re.compile(r"^(verified\.json|finite\.json|ridge-[0-9a-f]+\.safetensors|\..+\.(tmp|old)-\d+)$")


def _cache_file(entry: os.DirEntry) -> bool:
    return entry.is_file(follow_symlinks=False) and bool(_CACHE_FILE.match(entry.name))


def _walk_foreign(root: Path, folder: Path, listed: dict, foreign: list[str]) -> bool:
    """Add the entries under ``folder`` that are not lvm's to ``foreign``; True if it holds any of lvm's."""
    holds_lvm = False
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        p = Path(e.path)
        rel = p.relative_to(root).as_posix()
        if folder == root and e.name == "cache" and e.is_dir(follow_symlinks=False):
            # lvm's caches hold only files of the names it writes; anything else there is the user's
            foreign += [f"cache/{c.name}" for c in sorted(os.scandir(p), key=lambda c: c.name) if not _cache_file(c)]
            holds_lvm = True
            continue
        if _lvm_entry(e.name) if folder == root else _LEFTOVER.match(e.name):
            holds_lvm = True
            continue
        if e.is_dir(follow_symlinks=False):
            n = len(foreign)
            if not _walk_foreign(root, p, listed, foreign) and len(foreign) == n:
                foreign.append(rel + "/")  # a folder of nothing (or only of the user's): the user's
            else:
                holds_lvm = True
        elif _unchanged(p, listed.get(rel)):
            holds_lvm = True
        else:
            foreign.append(rel)
    return holds_lvm


def refuse_foreign_folder(out: Path, what: str = "output") -> None:
    """Refuse to replace ``out`` unless it is missing, empty, or holds nothing but lvm's files
    (``foreign_entries``): a user's folder that happens to sit at the output path, or a user's file
    inside lvm's output, is never deleted. One line, naming the first entries that are not lvm's."""
    from lvm.errors import LvmError

    out = Path(out)
    if out.is_symlink():  # replacing it would move the link, not write where it points (or fail: dangling)
        raise LvmError(
            f"{out} is a symbolic link (to {os.readlink(out)}); the {what} is written as a real folder: "
            "give the link's target, or another path"
        )
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise LvmError(f"{out} exists and is not a folder; the {what} is written as a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    foreign = foreign_entries(out, what)
    if foreign is None:
        raise LvmError(
            f"refusing to write the {what} into {out}: it is not empty and was not written by lvm "
            f"(no {OUTPUT_MARKER}); choose another path or empty it yourself"
        )
    if foreign:
        named = ", ".join(str(out / f) for f in foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise LvmError(
            f"refusing to replace the {what} in {out}: it holds files lvm did not write, or changed since ({named}); "
            "move them out of the folder, or choose another path (lvm replaces a folder only when all of it is its own)"
        )


def _earlier_lvm_dataset(out: Path) -> bool:
    """A dataset folder written before the marker existed: its meta.json says so."""
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format_version") == 1 and isinstance(meta.get("content_hash"), str)
