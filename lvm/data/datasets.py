"""The dataset folder: chunk vectors stored once, memory-mapped, plus per-chunk columns.

Layout (format version 1)::

    DATASET/
      meta.json          format version, encoder identity, dim, corpus, chunker, split policy,
                         counts, content hash (written last: its presence marks a complete folder)
      vectors.npy        float32 [N, D] chunk vectors, memory-mapped on open
      article_id.npy     int64 [N]  dense article id (0..A-1) of each chunk
      position.npy       int32 [N]  position of the chunk inside its article (0, 1, 2, ...)
      split.npy          int8  [N]  0 train, 1 val, 2 ood (article-disjoint)
      texts.jsonl        one JSON string per chunk (its text)
      articles.jsonl     one object per article: article_id, source_id, title, topic, split,
                         first_chunk, n_chunks
      probe_vectors.npy  the encoder's probe vectors at build time (for the fingerprint gate)
      index.faiss/.json  the FAISS index over the bank and its parameters (lvm.data.index)

A **view** (what ``lvm filter`` writes) holds no vectors and no texts: ``rows.npy`` (int64 [N],
the parent chunk behind each of its chunks) and ``meta.json["parent"]`` {path, relative,
content_hash, rows} name the parent dataset, whose bank every read goes through (``RowsBank``);
the parent's content hash is checked on open. Its own columns (article_id, position, split,
articles) are written as usual, so sequences, splits and gates work unchanged.

Chunks are stored sorted by (article, position) with contiguous positions, so the context of
chunk ``t`` is simply chunks ``t-k .. t-1``: sequences are index arithmetic, never copies.

**Integrity on every open.** ``cache/verified.json`` records, for the content hash in meta.json,
the size, modification time and inode of every hashed file and the 16-number vector sketch
(``vector_sketch``). Every open checks that every hashed file is there, recomputes the sketch (one
streaming pass, which is also the finiteness check) and compares it with the record, and
recomputes the full content hash when a file's size, mtime or inode differs from the record, when
there is no record (a dataset written before the record existed, or copied: the full hash runs
once, then the record is written), or when the sketch disagrees. A hashed file may be a symlink,
also to a file outside the folder: it is accepted only when the content hash matches (its
target's size, mtime and inode are recorded, so a re-pointed link or a changed target is hashed
again). A read-only folder, where the record cannot be written, is hashed on every open.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lvm.data.splits import SPLIT_NAMES
from lvm.errors import LvmError
from lvm.io import sha256_files, write_json_atomic

FORMAT_VERSION = 1
ALL_SPLITS = "all"  # a view over every split (a separate OOD dataset is scored whole)
_ARRAYS = ("vectors.npy", "article_id.npy", "position.npy", "split.npy")
_HASHED_FILES = _ARRAYS + ("texts.jsonl", "articles.jsonl")
_IDENTITY_FILES = ("article_id.npy", "position.npy", "split.npy", "texts.jsonl", "articles.jsonl")
_VIEW_FILES = ("rows.npy", "article_id.npy", "position.npy", "split.npy", "articles.jsonl")
MAX_VIEW_DEPTH = 8  # a view of a view of ... (a longer chain is refused: a cycle, or a mistake)
SKETCH_SEED, SKETCH_DIRECTIONS = 20261130, 8
SKETCH_TOLERANCE = 1e-5  # vector sketches within this (max abs) are the same vectors up to CPU low-bit noise
FANCY_CHUNK = 4096  # rows per scattered read before the mapped pages are released
CACHE_DIR, VERIFIED_RECORD = "cache", "verified.json"  # the integrity record (outside the content hash)
RECORD_VERSION = 1


class DatasetChanged(LvmError):
    """A dataset's files are not the ones its content hash was recorded for."""


def check_vectors(vectors: np.ndarray, what: str = "vectors", block: int = 65536) -> None:
    """Refuse non-2D or non-finite vectors with one clear line (checked blockwise: memmap-safe)."""
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise LvmError(f"{what}: expected a 2-D [N, D] array, got shape {tuple(vectors.shape)}")
    for start in range(0, len(vectors), block):
        part = vectors[start : start + block]
        if not np.isfinite(part).all():
            bad = start + int(np.flatnonzero(~np.isfinite(part).all(axis=1))[0])
            raise LvmError(f"{what}: row {bad} contains NaN or Inf")


def check_chunk_order(article_id: np.ndarray, position: np.ndarray) -> None:
    """Chunks must be grouped by article with positions 0, 1, 2, ... inside each article."""
    if len(article_id) == 0:
        raise LvmError("the dataset has no chunks")
    new_article = np.ones(len(article_id), dtype=bool)
    new_article[1:] = article_id[1:] != article_id[:-1]
    starts = np.flatnonzero(new_article)
    if len(np.unique(article_id[starts])) != len(starts):
        raise LvmError("chunks of an article are not stored contiguously")
    run_start = np.repeat(starts, np.diff(np.append(starts, len(article_id))))
    expected = np.arange(len(article_id)) - run_start
    if not np.array_equal(position, expected):
        bad = int(np.flatnonzero(position != expected)[0])
        raise LvmError(
            f"chunk {bad}: position {int(position[bad])} but {int(expected[bad])} expected "
            "(positions must run 0, 1, 2, ... within each article)"
        )


def _write_texts(tmp_dir: Path, texts: list[str] | None, n: int) -> None:
    with open(tmp_dir / "texts.jsonl", "w", encoding="utf-8") as fh:
        if texts is None:  # vectors without text (synthetic data): one empty string per chunk
            fh.write('""\n' * n)
        else:
            for t in texts:
                fh.write(json.dumps(t, ensure_ascii=False) + "\n")


def _write_articles(
    tmp_dir: Path, articles: list[dict], article_id: np.ndarray, article_split: np.ndarray
) -> np.ndarray:
    """articles.jsonl (one row per dense article id, with its split and chunk range); the chunk counts."""
    first = np.searchsorted(article_id, np.arange(len(articles)), side="left")
    count = np.bincount(article_id, minlength=len(articles))
    with open(tmp_dir / "articles.jsonl", "w", encoding="utf-8") as fh:
        for i, a in enumerate(articles):
            row = {
                "article_id": i,
                "source_id": a.get("source_id", str(i)),
                "title": a.get("title", ""),
                "topic": a.get("topic", ""),
                "split": SPLIT_NAMES[int(article_split[i])],
                "first_chunk": int(first[i]),
                "n_chunks": int(count[i]),
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return count


def write_dataset(
    tmp_dir: Path,
    *,
    article_id: np.ndarray,
    position: np.ndarray,
    texts: list[str] | None,
    articles: list[dict],
    article_split: np.ndarray,
    meta: dict,
    probe_vectors: np.ndarray | None = None,
    parent: Dataset | None = None,
    rows: np.ndarray | None = None,
) -> dict:
    """Write every file but the vectors (already at ``tmp_dir/vectors.npy``) and ``meta.json``.

    ``articles[i]`` describes dense article id ``i`` (source_id, title, topic). With ``parent``
    and ``rows`` it writes a view instead: ``rows.npy`` (chunk i is the parent's chunk rows[i]),
    no vectors and no texts (both read through the parent); ``meta["parent"]`` must name the
    parent (``view_parent_ref``). Returns the full meta (with counts and content hash) after
    writing it.
    """
    if parent is None:
        vectors = np.load(tmp_dir / "vectors.npy", mmap_mode="r")
        n_vectors, dim = len(vectors), int(vectors.shape[1])
    else:  # a view: the vectors (and texts) are the parent's rows
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= parent.n_chunks)):
            raise LvmError(f"view rows must index the parent's {parent.n_chunks} chunks")
        np.save(tmp_dir / "rows.npy", rows)
        n_vectors, dim, texts = len(rows), parent.dim, None
    n = len(article_id)
    n_texts = n if texts is None else len(texts)
    if not (n_vectors == len(position) == n_texts == n):
        raise LvmError(
            f"column lengths differ: vectors {n_vectors}, positions {len(position)}, texts {n_texts}, article ids {n}"
        )
    article_id = np.asarray(article_id, dtype=np.int64)
    position = np.asarray(position, dtype=np.int32)
    check_chunk_order(article_id, position)
    if article_id.max() >= len(articles) or article_id.min() < 0:
        raise LvmError("article ids must index the article table (0..A-1)")
    chunk_split = np.asarray(article_split, dtype=np.int8)[article_id]
    np.save(tmp_dir / "article_id.npy", article_id)
    np.save(tmp_dir / "position.npy", position)
    np.save(tmp_dir / "split.npy", chunk_split)
    if parent is None:
        _write_texts(tmp_dir, texts, n)
    count = _write_articles(tmp_dir, articles, article_id, article_split)
    if probe_vectors is not None:
        np.save(tmp_dir / "probe_vectors.npy", np.asarray(probe_vectors, dtype=np.float32))
    counts = {"chunks": n, "articles": int((count > 0).sum())}
    for code, name in enumerate(SPLIT_NAMES):
        counts[f"{name}_chunks"] = int((chunk_split == code).sum())
        counts[f"{name}_articles"] = int(((article_split == code) & (count > 0)).sum())
    if parent is None:
        content_hash = sha256_files([tmp_dir / f for f in _HASHED_FILES])
    else:
        content_hash = _view_hash(tmp_dir, parent.content_hash)
    full = {"format_version": FORMAT_VERSION, **meta, "dim": dim, "counts": counts, "content_hash": content_hash}
    names = _VIEW_FILES if parent is not None else _HASHED_FILES
    stats = _file_stats(tmp_dir, names)
    sketch, finite = (None, True) if parent is not None else sketch_of(VectorBank(tmp_dir / "vectors.npy"))
    if finite:  # else the first open refuses it, naming the row
        _write_record(tmp_dir, content_hash, stats, sketch)
    write_json_atomic(tmp_dir / "meta.json", full)
    return full


def _file_stats(folder: Path, names) -> dict[str, list[int]]:
    """[size, mtime_ns, inode] of each file (through symlinks: the file read); a missing one is []."""
    out: dict[str, list[int]] = {}
    for name in names:
        try:
            st = os.stat(folder / name)
        except OSError:
            out[name] = []
            continue
        out[name] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return out


def _read_record(folder: Path) -> dict | None:
    """``cache/verified.json`` when it is readable and well-formed, else None (then: the full hash)."""
    try:
        rec = json.loads((folder / CACHE_DIR / VERIFIED_RECORD).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    ok = (
        isinstance(rec, dict)
        and rec.get("version") == RECORD_VERSION
        and isinstance(rec.get("content_hash"), str)
        and isinstance(rec.get("files"), dict)
    )
    if not ok:
        return None
    # each file's entry is [size, mtime_ns, inode] (or [] for a missing file); anything else (a number,
    # a string, floats, bools) is dropped, so that file is hashed again instead of trusted or crashing
    rec["files"] = {
        name: stat
        for name, stat in rec["files"].items()
        if isinstance(stat, list) and all(type(v) is int for v in stat) and len(stat) in (0, 3)
    }
    return rec


def _write_record(folder: Path, content_hash: str, stats: dict, sketch: list[float] | None) -> None:
    """Best effort: a read-only dataset is hashed on every open instead."""
    rec = {"version": RECORD_VERSION, "content_hash": content_hash, "files": stats, "vector_sketch": sketch}
    try:
        (folder / CACHE_DIR).mkdir(exist_ok=True)
        write_json_atomic(folder / CACHE_DIR / VERIFIED_RECORD, rec)
    except OSError:
        pass


def _sketch_differs(a: list[float], b) -> float | None:
    """The largest difference of a sketch from a recorded one, None when they agree within
    ``SKETCH_TOLERANCE`` (a recorded sketch that is not 16 finite numbers counts as different)."""
    if not isinstance(b, list) or len(b) != len(a) or not all(isinstance(v, (int, float)) for v in b):
        return float("inf")
    gap = float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
    return None if gap <= SKETCH_TOLERANCE else gap


def sketch_of(vectors) -> tuple[list[float], bool]:
    """(the 16-number vector sketch, whether every entry is finite) in one streaming pass.

    The sketch: the mean vector and a ±1-signed mean (sign seeded by chunk index, so moving vectors
    between chunks changes it), each projected on 8 fixed random directions. Low-bit noise moves
    them by ~1e-7. Finiteness comes free: float64 sums of finite float32 blocks never overflow, so
    a non-finite sum means a NaN or infinite entry in its block.
    """
    n, dim = len(vectors), int(vectors.shape[1])
    rng = np.random.default_rng(SKETCH_SEED)
    directions = rng.standard_normal((dim, SKETCH_DIRECTIONS)) / np.sqrt(dim)
    total, signed = np.zeros(dim), np.zeros(dim)
    finite = True
    for start, block in vectors.blocks(65536):
        sign = np.where(np.random.default_rng(start).random(len(block)) < 0.5, -1.0, 1.0)
        # one float32 matrix product per block (BLAS: ~1e-7 relative, far inside SKETCH_TOLERANCE
        # once divided by N), accumulated over blocks in float64
        with np.errstate(over="ignore", invalid="ignore"):
            sums = np.stack([np.ones(len(block), dtype=np.float32), sign.astype(np.float32)]) @ block
            if not np.isfinite(sums).all():  # huge entries overflow float32 sums: this block in float64
                sums = np.stack([np.ones(len(block)), sign]) @ block.astype(np.float64)
                finite = finite and bool(np.isfinite(sums).all())
        total += sums[0]
        signed += sums[1]
    n = max(n, 1)
    with np.errstate(invalid="ignore"):
        sketch = [round(float(v), 9) for v in np.concatenate([total / n @ directions, signed / n @ directions])]
    return sketch, finite


def _view_hash(folder: Path, parent_hash: str) -> str:
    """A view's content hash: its own files, chained to the parent's content hash."""
    own = sha256_files([folder / f for f in _VIEW_FILES])
    return hashlib.sha256(f"view:{own}:{parent_hash}".encode()).hexdigest()


def view_parent_ref(parent: Dataset, out: Path) -> dict:
    """``meta["parent"]`` of a view written to ``out``: where the parent is (absolute, and relative to
    the view so the two can move together) and the content hash it must still have."""
    target = parent.path.resolve()
    return {
        "path": str(target),
        "relative": os.path.relpath(target, Path(out).resolve()),
        "content_hash": parent.content_hash,
        "rows": "rows.npy",
    }


class VectorBank:
    """The read-only [N, D] bank of a dataset folder.

    Contiguous row slices (the streaming passes: norms, coherence, hashes, index build) are read
    from the file into fresh arrays, so a full pass does not leave 2 GB of mapped pages in the
    process; any other index (batches of sequences: fancy indexing) goes through a memory map.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._map = np.load(self.path, mmap_mode="r")
        mm = getattr(self._map, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise"):
            mm.madvise(mmap.MADV_RANDOM)  # sequence batches read scattered rows: no readahead
        self.shape, self.dtype, self.ndim = self._map.shape, self._map.dtype, self._map.ndim
        self._offset = self._map.offset
        self._row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return len(self) * self._row_bytes

    def __getitem__(self, key):
        if isinstance(key, slice) and key.step in (None, 1) and self.ndim == 2 and self._map.flags.c_contiguous:
            start, stop, _ = key.indices(len(self))
            n = max(stop - start, 0)
            with open(self.path, "rb") as fh:
                fh.seek(self._offset + start * self._row_bytes)
                block = np.fromfile(fh, dtype=self.dtype, count=n * self.shape[1])
            if len(block) != n * self.shape[1]:
                raise LvmError(f"{self.path}: truncated vectors file")
            return block.reshape(n, self.shape[1])
        idx = np.asarray(key) if isinstance(key, (list, np.ndarray)) else None
        if idx is None or idx.dtype == bool or idx.ndim != 1:
            out = np.array(self._map[key])  # a copy; then let the touched pages go
            self.release()
            return out
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        idx = np.where(idx < 0, idx + len(self), idx) if len(idx) and idx.min() < 0 else idx
        for s in range(0, len(idx), FANCY_CHUNK):  # scattered rows: bounded resident pages at any size
            part = idx[s : s + FANCY_CHUNK]
            out[s : s + FANCY_CHUNK] = self._map[part]
            self.release(part)
        return out

    def blocks(self, block: int = 16384, overlap: int = 0, begin: int = 0, end: int | None = None):
        """Stream the bank in order: yields ``(start, rows[start : start + block + overlap])`` for
        start = begin, begin + block, ... < end (default: the whole bank). The rows are read from
        the file into one reused buffer (no page faults on fresh memory, no mapped pages left
        behind): the array is valid until the next step — copy what must be kept."""
        end = len(self) if end is None else min(end, len(self))
        if self.ndim != 2 or not self._map.flags.c_contiguous:
            for start in range(begin, end, block):
                yield start, self[start : start + block + overlap]
            return
        buf = np.empty((block + overlap, self.shape[1]), dtype=self.dtype)
        with open(self.path, "rb", buffering=0) as fh:
            for start in range(begin, end, block):
                n = min(block + overlap, len(self) - start)
                fh.seek(self._offset + start * self._row_bytes)
                view = memoryview(buf).cast("B")[: n * self._row_bytes]  # type: ignore[arg-type]
                got = 0
                while got < len(view):
                    k = fh.readinto(view[got:])
                    if not k:
                        raise LvmError(f"{self.path}: truncated vectors file")
                    got += k
                yield start, buf[:n]

    def release(self, rows: np.ndarray | None = None) -> None:
        """Drop the mapped pages from this process (they stay in the page cache): scattered reads
        of sequence batches would otherwise keep most of a large bank resident. With ``rows`` (the
        indices just read) only their span is dropped: cheaper than the whole 2 GB mapping."""
        mm = getattr(self._map, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        if rows is None or not len(rows):
            mm.madvise(mmap.MADV_DONTNEED)
            return
        page = mmap.PAGESIZE
        lo = (self._offset + int(rows.min()) * self._row_bytes) // page * page
        hi = min(len(mm), self._offset + (int(rows.max()) + 1) * self._row_bytes)
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def __array__(self, dtype=None, copy=None):
        if copy:
            return np.array(self._map, dtype=dtype, copy=True)
        return np.asarray(self._map, dtype=dtype)


class RowsBank:
    """The vectors of a view: row ``i`` is row ``rows[i]`` of the parent's bank; nothing is copied.

    Same interface as ``VectorBank``: a slice whose rows are contiguous in the parent is one file
    read there, anything else a scattered read of the parent's rows.
    """

    def __init__(self, parent_bank, rows: np.ndarray, path: Path):
        self.parent, self.rows, self.path = parent_bank, rows, Path(path)
        self.shape = (len(rows), *parent_bank.shape[1:])
        self.dtype, self.ndim = parent_bank.dtype, parent_bank.ndim

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.parent[int(self.rows[key])]
        sel = np.asarray(self.rows[key])
        if sel.ndim == 1 and len(sel) > 1 and sel[-1] - sel[0] == len(sel) - 1 and (np.diff(sel) == 1).all():
            return self.parent[int(sel[0]) : int(sel[-1]) + 1]
        return self.parent[sel]

    def blocks(self, block: int = 16384, overlap: int = 0, begin: int = 0, end: int | None = None):
        for start in range(begin, len(self) if end is None else min(end, len(self)), block):
            yield start, self[start : start + block + overlap]

    def release(self) -> None:
        self.parent.release()

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)


class SequenceView:
    """Sequences (up to ``ctx`` previous chunks -> next chunk) of one split, computed on the fly.

    Sequence ``i`` has target chunk ``targets[i]`` and context chunks
    ``targets[i]-n .. targets[i]-1`` with ``n = min(position, ctx) >= min_ctx``; shorter contexts
    are left-padded (zeros, mask False) so the last context slot is always the last real chunk.
    """

    def __init__(self, dataset: Dataset, split: str, ctx: int, min_ctx: int):
        if not 1 <= min_ctx <= ctx:
            raise LvmError(f"need 1 <= min_ctx <= ctx, got ctx={ctx}, min_ctx={min_ctx}")
        if split not in (*SPLIT_NAMES, ALL_SPLITS):
            raise LvmError(f"unknown split {split!r}: expected one of {', '.join(SPLIT_NAMES)} or {ALL_SPLITS}")
        self.dataset, self.split, self.ctx, self.min_ctx = dataset, split, ctx, min_ctx
        in_split = (
            np.ones(len(dataset.split), dtype=bool)
            if split == ALL_SPLITS
            else dataset.split == SPLIT_NAMES.index(split)
        )
        ok = (dataset.position >= min_ctx) & in_split
        self.targets = np.flatnonzero(ok).astype(np.int64)
        self.n_context = np.minimum(dataset.position[self.targets], ctx).astype(np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def article_ids(self) -> np.ndarray:
        return self.dataset.article_id[self.targets]

    def context_indices(self, idx) -> np.ndarray:
        """[B, ctx] chunk indices of the contexts of sequences ``idx``; -1 marks padding."""
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        t = self.targets[idx]
        slots = np.arange(self.ctx)
        ci = t[:, None] - self.ctx + slots[None, :]  # (B, ctx)
        pad = slots[None, :] < (self.ctx - self.n_context[idx])[:, None]
        ci[pad] = -1
        return ci

    def target_indices(self, idx) -> np.ndarray:
        """[B] chunk indices of the targets of sequences ``idx``."""
        return self.targets[np.atleast_1d(np.asarray(idx, dtype=np.int64))]

    def batch(self, idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x [B, ctx, D] float32, mask [B, ctx] bool, y [B, D] float32) for sequences ``idx``."""
        ci = self.context_indices(idx)
        mask = ci >= 0
        rows, t = np.where(mask, ci, 0), self.target_indices(idx)
        vecs = self.dataset.vectors
        lo, hi = (int(min(rows.min(), t.min())), int(max(rows.max(), t.max())) + 1) if len(t) else (0, 0)
        if 0 < hi - lo <= 2 * (rows.size + len(t)):  # consecutive sequences: one sequential read of their span
            span = np.asarray(vecs[lo:hi], dtype=np.float32)
            x, y = span[rows - lo], span[t - lo]
        else:  # scattered (shuffled batches): a gather
            x = np.asarray(vecs[rows.ravel()], dtype=np.float32).reshape(*ci.shape, -1)
            y = np.asarray(vecs[t], dtype=np.float32)
        x[~mask] = 0.0
        return x, mask, y

    @cached_property
    def target_vectors(self) -> np.ndarray:
        """[M, D] float32 vectors of every sequence's target (computed once per view)."""
        return np.asarray(self.dataset.vectors[self.targets], dtype=np.float32)

    def iter_batches(self, batch_size: int = 512, shuffle: bool = False, seed: int = 0):
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield (idx, *self.batch(idx))


def _native(arr: np.ndarray) -> np.ndarray:
    """The array in this machine's byte order (a big-endian .npy is valid; torch refuses to wrap it)."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


class Dataset:
    """A dataset folder opened read-only; vectors are memory-mapped, never copied."""

    def __init__(self, path: str | Path, _depth: int = 0):
        self.path = Path(path)
        self.parent: Dataset | None = None  # the dataset a view reads through (None: a plain folder)
        self.vectors: Any  # VectorBank, or a view's RowsBank: array-like [N, D] (slices, index arrays, blocks)
        self.article_id: np.ndarray
        self.position: np.ndarray
        self.split: np.ndarray
        from lvm import schemas

        if not self.path.is_dir():
            raise LvmError(f"dataset {self.path} not found (build one with `lvm build-data --out {self.path}`)")
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise LvmError(f"{self.path} is not a dataset folder (no meta.json): incomplete or not built by lvm")
        raw = schemas.read_json(meta_path, "a dataset's meta.json")
        if isinstance(raw, dict) and raw.get("format_version") not in (None, FORMAT_VERSION):
            raise LvmError(
                f"{self.path}: dataset format version {raw.get('format_version')}, "
                f"this lvm reads {FORMAT_VERSION}; rebuild it"
            )
        checked = schemas.validate(schemas.DatasetMeta, raw, str(meta_path))
        bad = schemas.nonfinite_path(raw)  # in any key, known or not: it is copied into every derived dataset
        if bad:
            raise LvmError(f"{meta_path}: {bad} is not a finite number (NaN, Infinity or beyond float range)")
        self.meta = raw
        ref = raw.get("parent")
        is_view = isinstance(ref, dict) and "rows" in ref
        if is_view:
            self.parent = self._open_parent(schemas.validate(schemas.ViewParent, ref, f"{meta_path}: parent"), _depth)
        try:
            if self.parent is not None:
                rows = np.load(self.path / "rows.npy", allow_pickle=False)
                schemas.check_view_rows(self.path, rows, checked, self.parent.n_chunks)
                self.vectors = RowsBank(self.parent.vectors, rows.astype(np.int64, copy=False), self.path / "rows.npy")
            else:
                self.vectors = VectorBank(self.path / "vectors.npy")
            self.article_id = _native(np.load(self.path / "article_id.npy", allow_pickle=False))
            self.position = _native(np.load(self.path / "position.npy", allow_pickle=False))
            self.split = _native(np.load(self.path / "split.npy", allow_pickle=False))
        except Exception as exc:  # noqa: BLE001 - a damaged .npy header fails in many ways (no pickles are read)
            raise LvmError(
                f"{self.path}: cannot read dataset arrays ({type(exc).__name__}: {str(exc)[:160]})"
            ) from None
        schemas.check_dataset_arrays(self.path, self.vectors, self.article_id, self.position, self.split, checked)
        self._check_integrity(schemas)

    def _open_parent(self, ref, depth: int) -> Dataset:
        """The parent a view reads through: found (beside the view, else at its absolute path),
        opened, and still the data the view was written from (content hash)."""
        if depth >= MAX_VIEW_DEPTH:
            raise LvmError(f"{self.path}: views nested more than {MAX_VIEW_DEPTH} deep (a cycle of parents?)")
        candidates = ([self.path / ref.relative] if ref.relative else []) + [Path(ref.path)]
        found = next((c for c in candidates if (c / "meta.json").is_file()), None)
        if found is None:
            raise LvmError(
                f"{self.path} is a filtered view that reads its vectors from {ref.path}, which is not there: "
                "restore that dataset, or re-run `lvm filter ... --materialize` to write a standalone copy"
            )
        try:
            parent = Dataset(found.resolve(), depth + 1)
        except DatasetChanged as exc:
            raise DatasetChanged(
                f"{self.path} is a view of {found}, which changed since the view was written ({exc}): "
                "restore it, or re-run `lvm filter`"
            ) from None
        if parent.content_hash != ref.content_hash:
            raise LvmError(
                f"{self.path} is a view of {found}, which changed since the view was written (content hash "
                f"{parent.content_hash[:12]}…, recorded {ref.content_hash[:12]}…): re-run `lvm filter`"
            )
        mine = (self.meta.get("encoder") or {}).get("fingerprint")
        if mine != parent.encoder_fingerprint:
            raise LvmError(f"{self.path}: encoder fingerprint {mine} differs from its parent's ({found})")
        return parent

    def _check_integrity(self, schemas) -> None:
        """The files are the ones the content hash was recorded for (see the module docstring):
        every hashed file present; the vector sketch recomputed and compared with the record (a
        view: its parent was checked when it opened); the full content hash recomputed when a
        file's size, mtime or inode moved, when there is no record, or when the sketch disagrees.
        Every vector is finite (the same pass). The record is (re)written after a full hash."""
        names = _VIEW_FILES if self.parent is not None else _HASHED_FILES
        for name in names:
            p = self.path / name
            if not p.is_file():
                what = "is missing" if not (p.exists() or p.is_symlink()) else "is not a readable file"
                raise LvmError(f"{self.path}: {name} {what} (a dataset folder needs {', '.join(names)}); rebuild it")
        stats = _file_stats(self.path, names)
        rec = _read_record(self.path)
        if rec is not None and rec["content_hash"] != self.content_hash:
            rec = None  # recorded for other contents: as good as none
        moved = [n for n in names if rec is None or rec["files"].get(n) != stats[n]]
        if rec is not None:  # name the files whose size or mtime moved (a copy moves only the inodes)
            moved = [n for n in moved if (rec["files"].get(n) or [None, None])[:2] != stats[n][:2]] or moved
        sketch = None
        if self.parent is None:
            sketch, finite = sketch_of(self.vectors)
            if not finite:
                schemas.check_finite(self.path, self.vectors)  # names the row
            gap = _sketch_differs(sketch, rec.get("vector_sketch")) if rec is not None and not moved else None
            if gap is not None:  # same sizes and times, other vectors (or a damaged record): hash to decide
                moved = [f"vectors.npy (its vector sketch moved by {gap:.2g})"]
            self.__dict__["vector_sketch"] = sketch
        if moved:
            self._check_content_hash(moved if rec is not None else None)
            if _file_stats(self.path, names) == stats:  # unchanged while we read: remember them
                _write_record(self.path, self.content_hash, stats, sketch)

    def _check_content_hash(self, moved: list[str] | None) -> None:
        """Recompute the content hash (every byte of the hashed files); ``moved``: the files whose
        size, mtime or inode differ from the record (None: no record to compare with)."""
        if self.parent is not None:
            actual = _view_hash(self.path, self.parent.content_hash)
        else:
            actual = sha256_files([self.path / f for f in _HASHED_FILES])
        if actual == self.content_hash:
            return
        which = f"{', '.join(moved)} changed" if moved else "its files changed"
        raise DatasetChanged(
            f"{self.path}: content hash mismatch: {which} since the dataset was written (hash {actual[:12]}…, "
            f"meta.json records {self.content_hash[:12]}…): restore the original files or rebuild it"
        )

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_chunks(self) -> int:
        return len(self.vectors)

    @property
    def content_hash(self) -> str:
        return self.meta["content_hash"]

    @property
    def encoder_fingerprint(self) -> str | None:
        return (self.meta.get("encoder") or {}).get("fingerprint")

    @cached_property
    def identity(self) -> str:
        """What the data is, stable across machines: SHA-256 of the texts, articles, ids, positions,
        splits, the encoder fingerprint and the dims, but not of the vectors' bytes, whose low bits
        differ between CPUs (``vector_sketch`` stands for the vectors, compared within a tolerance).
        ``content_hash`` (every byte) stays the exact provenance."""
        if self.parent is not None:  # a view: its own columns and rows, and what the parent is
            h = hashlib.sha256(sha256_files([self.path / f for f in _VIEW_FILES]).encode())
            h.update(self.parent.identity.encode())
        else:
            files = [self.path / f for f in _IDENTITY_FILES if (self.path / f).is_file()]
            h = hashlib.sha256(sha256_files(files).encode())
        h.update(json.dumps([self.encoder_fingerprint, self.n_chunks, self.dim]).encode())
        return h.hexdigest()

    @cached_property
    def vector_sketch(self) -> list[float]:
        """16 numbers that summarise every vector and its place (``sketch_of``; one streaming pass,
        already made when a plain dataset is opened). Low-bit noise moves them by ~1e-7."""
        return sketch_of(self.vectors)[0]

    @cached_property
    def texts(self) -> list[str]:
        from lvm import schemas

        if self.parent is not None:
            parent_texts = self.parent.texts
            return [parent_texts[i] for i in self.vectors.rows.tolist()]
        path = self.path / "texts.jsonl"  # read_json_strings refuses a missing file, naming it
        return schemas.check_texts(path, schemas.read_json_strings(path, "chunk texts"), self.n_chunks)

    @cached_property
    def articles(self) -> list[dict]:
        """One row per dense article id (checked: objects with a split, covering every id)."""
        from lvm import schemas

        path = self.path / "articles.jsonl"
        rows = schemas.read_jsonl(path, "the article table")
        return schemas.check_articles(path, rows, self.article_id)

    @cached_property
    def probe_vectors(self) -> np.ndarray | None:
        p = self.path / "probe_vectors.npy"
        if not p.is_file():
            return self.parent.probe_vectors if self.parent is not None else None
        try:
            return np.load(p, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - a damaged .npy header fails in many ways (no pickles are read)
            raise LvmError(f"{p}: cannot read the probe vectors ({type(exc).__name__}: {str(exc)[:120]})") from None

    @cached_property
    def row_hashes(self) -> np.ndarray:
        """64-bit hash of every chunk vector (lvm.metrics.row_hashes), computed once."""
        from lvm.metrics import row_hashes

        return row_hashes(self.vectors)

    @cached_property
    def duplicate_canon(self) -> np.ndarray:
        """For every chunk, the first chunk with an identical vector (lvm.metrics.duplicate_canon)."""
        from lvm.metrics import duplicate_canon

        return duplicate_canon(self.vectors, self.row_hashes)

    @cached_property
    def adjacency(self) -> np.ndarray:
        """cos(c_t, c_t+1) of every within-article pair (lvm.metrics.adjacency_coherence), computed once."""
        from lvm.metrics import adjacency_coherence

        return adjacency_coherence(self.vectors, self.article_id)

    def sequences(self, split: str = "train", ctx: int = 5, min_ctx: int = 1) -> SequenceView:
        return SequenceView(self, split, ctx, min_ctx)

    def verify(self) -> None:
        """Recompute the content hash (reads every byte); raise if the folder was altered."""
        if self.parent is not None:
            self.parent.verify()
            actual = _view_hash(self.path, self.parent.content_hash)
        else:
            actual = sha256_files([self.path / f for f in _HASHED_FILES])
        if actual != self.content_hash:
            raise DatasetChanged(f"{self.path}: content hash mismatch (files changed since the build); rebuild it")


def open_dataset(path: str | Path) -> Dataset:
    return Dataset(path)
