"""The FAISS index over a dataset's chunk bank, saved beside it with its parameters.

Small banks get an exact inner-product index (``IndexFlatIP``); large ones an IVF inner-product
index with ``nlist ≈ 4·√N`` lists (GATES.md, retrieval) trained on a seeded sample, searched with
``nprobe`` lists (64 by default, as in the seeds' evaluation). The default large index stores
8-bit scalar-quantised codes (``ivf-sq8-ip``: a quarter of the bank's bytes, not a second copy of
it) and is searched through ``RerankedIndex``: the top candidates are re-scored on the exact
vectors of the bank, so returned similarities are exact and the leading ranks are the exact
order (``ivf-flat-ip``, a full float32 copy, remains available).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from lvm.data.datasets import Dataset
from lvm.errors import LvmError
from lvm.io import sha256_file, write_atomic, write_json_atomic

EXACT_MAX = 100_000  # up to this many vectors an exact search is cheap enough (ms per query)
DEFAULT_NPROBE = 64  # the seeds' evaluation setting
TRAIN_POINTS_PER_LIST = 39  # k-means sample per list: FAISS's own minimum for stable centroids
KMEANS_ITERATIONS = 10  # FAISS's IVF default; k-means cost = iterations × sample × nlist × D
ADD_BLOCK = 65536  # vectors added per call: keeps memory flat on memory-mapped banks
KINDS = ("auto", "flat-ip", "ivf-sq8-ip", "ivf-flat-ip")
IVF_KINDS = ("ivf-sq8-ip", "ivf-flat-ip")
RERANK_MIN, RERANK_MAX = 8, 64  # candidates re-scored exactly per query: min(max(2k, 8), 64)
RERANK_QUERIES = 256  # queries re-scored per step: bounded memory (256 × 64 rows)


@dataclass
class IndexParams:
    kind: str  # "flat-ip" (exact), "ivf-sq8-ip" (8-bit codes, exact re-rank) or "ivf-flat-ip"
    ntotal: int
    dim: int
    nlist: int | None = None
    nprobe: int | None = None
    train_size: int | None = None
    seed: int = 0
    dataset_hash: str = ""
    # index.faiss itself: its SHA-256, and [size, mtime_ns, inode] when that hash was taken (the file is
    # hashed again on load only when these moved: a same-shape swap or flipped bytes are then caught)
    file_sha256: str = ""
    file_stat: list | None = None


def default_nlist(n: int) -> int:
    return max(1, int(round(4 * math.sqrt(n))))


def build_index(
    vectors: np.ndarray,
    *,
    kind: str = "auto",
    nlist: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
    seed: int = 0,
    progress: bool = False,
):
    """Build an inner-product index over ``vectors`` ([N, D], may be a memmap). Returns (index, params)."""
    import faiss

    n, d = vectors.shape
    if nlist is not None and not 1 <= nlist <= n:
        raise LvmError(f"nlist must be between 1 and the number of vectors ({n}); got {nlist}")
    if nprobe is not None and nprobe < 1:
        raise LvmError(f"nprobe must be at least 1; got {nprobe}")
    if kind == "auto":
        kind = "flat-ip" if n <= EXACT_MAX else "ivf-sq8-ip"
    index: faiss.Index
    if kind == "flat-ip":
        index = faiss.IndexFlatIP(d)
        params = IndexParams(kind, 0, d, seed=seed)
    elif kind in IVF_KINDS:
        nlist = nlist or default_nlist(n)
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf-sq8-ip":
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
        else:
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        train_size = min(n, nlist * TRAIN_POINTS_PER_LIST)
        sample = np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False))
        index.cp.seed = seed
        index.cp.niter = KMEANS_ITERATIONS
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        index.nprobe = min(nprobe, nlist)
        params = IndexParams(kind, 0, d, nlist=nlist, nprobe=index.nprobe, train_size=train_size, seed=seed)
    else:
        raise LvmError(f"unknown index kind {kind!r}: expected one of {', '.join(KINDS)}")
    from tqdm.auto import tqdm

    for start in tqdm(range(0, n, ADD_BLOCK), desc="index", unit="block", disable=not progress):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_BLOCK], dtype=np.float32))
    params.ntotal = int(index.ntotal)
    return index, params


def save_index(folder: Path, index, params: IndexParams) -> None:
    import faiss

    path = folder / "index.faiss"
    write_atomic(path, lambda tmp: faiss.write_index(index, str(tmp)))
    params.file_sha256, params.file_stat = sha256_file(path), _stat(path)
    write_json_atomic(folder / "index.json", asdict(params))


def _stat(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _check_file(path: Path, params: IndexParams) -> None:
    """index.faiss is the file index.json was written for (see ``IndexParams.file_sha256``); an index
    saved before the hash was recorded is trusted as before."""
    if not params.file_sha256 or params.file_stat == _stat(path):
        return
    if sha256_file(path) != params.file_sha256:
        raise LvmError(f"{path}: not the index file saved with index.json (replaced or damaged): rebuild it")


def build_and_save_index(folder: Path, vectors: np.ndarray, dataset_hash: str, **build_kw):
    """Build an index over ``vectors``, stamp it with the dataset's content hash, save it in ``folder``."""
    index, params = build_index(vectors, **build_kw)
    params.dataset_hash = dataset_hash
    save_index(folder, index, params)
    return index, params


def read_index_params(meta_path: Path) -> IndexParams:
    """``index.json``, checked: one line (``LvmError``) when it is not JSON, nested too deep, not an
    object, or a field is missing, unknown or of the wrong type or range (a damaged index is then
    rebuilt by ``load_or_build_index``, or refused)."""
    from lvm.schemas import read_json_object

    raw = read_json_object(meta_path, "the index parameters")
    names = {f.name for f in fields(IndexParams)}
    unknown = sorted(str(k) for k in set(raw) - names)
    missing = sorted(n for n in ("kind", "ntotal", "dim") if n not in raw)
    if unknown or missing:
        what = f"unknown field(s) {', '.join(unknown)}" if unknown else f"missing field(s) {', '.join(missing)}"
        raise LvmError(f"{meta_path}: damaged index parameters ({what})")
    params = IndexParams(**raw)
    ints = {"ntotal": 0, "dim": 1, "nlist": 1, "nprobe": 1, "train_size": 1, "seed": 0}
    for name, low in ints.items():
        v = getattr(params, name)
        optional = name in ("nlist", "nprobe", "train_size")
        if (v is None and optional) or (isinstance(v, int) and not isinstance(v, bool) and low <= v < 2**63):
            continue
        raise LvmError(f"{meta_path}: damaged index parameters ({name} must be an integer >= {low}; got {v!r:.40})")
    if params.kind not in KINDS[1:]:
        raise LvmError(f"{meta_path}: damaged index parameters (kind {params.kind!r:.40} is not one of {KINDS[1:]})")
    if params.kind in IVF_KINDS and (params.nlist is None or params.nprobe is None):
        raise LvmError(f"{meta_path}: damaged index parameters (an IVF index needs nlist and nprobe)")
    if not isinstance(params.dataset_hash, str) or not isinstance(params.file_sha256, str):
        raise LvmError(f"{meta_path}: damaged index parameters (dataset_hash and file_sha256 must be strings)")
    stat = params.file_stat
    if stat is not None and not (
        isinstance(stat, list) and len(stat) == 3 and all(type(v) is int and 0 <= v < 2**64 for v in stat)
    ):
        raise LvmError(f"{meta_path}: damaged index parameters (file_stat must be 3 integers; got {stat!r:.40})")
    return params


def load_index(dataset: Dataset, nprobe: int | None = None):
    """Load the dataset's saved index; refuses one built for other vectors. Returns (index, params)."""
    import faiss

    path, meta_path = dataset.path / "index.faiss", dataset.path / "index.json"
    for p in (path, meta_path):
        if p.exists() and not p.is_file():
            raise LvmError(f"{p} is a {'folder' if p.is_dir() else 'special file'}, not a file: remove it")
    if not path.is_file() or not meta_path.is_file():
        raise LvmError(f"{dataset.path} has no index (run `lvm build-index {dataset.path}`)")
    params = read_index_params(meta_path)
    if params.dataset_hash != dataset.content_hash or params.ntotal != dataset.n_chunks:
        raise LvmError(f"{path} was built for other vectors (stale index): rebuild it with `lvm build-index`")
    _check_file(path, params)
    try:
        # IVF lists are memory-mapped: only the lists a search probes are paged in
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if params.kind in IVF_KINDS else 0)
    except RuntimeError as exc:
        raise LvmError(f"{path}: corrupt FAISS index ({str(exc).splitlines()[0]})") from None
    if index.d != dataset.dim or index.ntotal != dataset.n_chunks:
        raise LvmError(f"{path} holds {index.ntotal} vectors of dim {index.d}: not this dataset's; rebuild it")
    if nprobe is not None and params.kind in IVF_KINDS:
        index.nprobe = min(nprobe, params.nlist)
        params.nprobe = index.nprobe
    if params.kind == "ivf-sq8-ip":
        return RerankedIndex(index, dataset.vectors), params
    return index, params


class RerankedIndex:
    """A compressed index whose leading candidates are re-scored on the exact vectors of the bank.

    ``search(q, k)`` asks the index for max(k, r) candidates, r = min(max(2k, 8), 64), re-scores
    the first r with exact inner products (vectors read from the bank, a few hundred queries at a
    time), re-orders them and returns the first k: similarities of the re-scored ranks are exact
    and their order is the exact order among the candidates (ranks beyond r, k up to 1000 in
    oracle_recall, keep the codes' order).
    """

    def __init__(self, index, vectors):
        self.index, self.vectors = index, vectors
        self.d, self.ntotal = index.d, index.ntotal

    @property
    def nprobe(self) -> int:
        return self.index.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.index.nprobe = value

    def search(self, q: np.ndarray, k: int, rerank: int | None = None):
        """``rerank`` overrides the re-scored depth r (e.g. k: exact scores for what is returned)."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        r = min(max(2 * k, RERANK_MIN), RERANK_MAX) if rerank is None else rerank  # ≥ k for k ≤ 64
        r = max(1, min(r, self.ntotal))
        sims, found = self.index.search(q, max(k, r))
        for s in range(0, len(q), RERANK_QUERIES):
            self._rescore(q[s : s + RERANK_QUERIES], sims[s : s + RERANK_QUERIES], found[s : s + RERANK_QUERIES], r)
        return sims[:, :k], found[:, :k]

    def _rescore(self, q: np.ndarray, sims: np.ndarray, found: np.ndarray, r: int) -> None:
        """Exact inner products of the first ``r`` candidates, re-sorted in place (-1: none found)."""
        ids = found[:, :r]
        real = ids >= 0
        uniq, inverse = np.unique(ids[real], return_inverse=True)
        if not len(uniq):
            return
        bank = np.asarray(self.vectors[uniq], dtype=np.float32)  # each candidate row read once
        exact = np.full(ids.shape, -np.finfo(np.float32).max, dtype=np.float32)  # FAISS's "no result" score
        rows = np.nonzero(real)[0]
        exact[real] = np.einsum("ij,ij->i", q[rows], bank[inverse])
        order = np.argsort(-exact, axis=1, kind="stable")
        found[:, :r] = np.take_along_axis(ids, order, axis=1)
        sims[:, :r] = np.take_along_axis(exact, order, axis=1)


def load_or_build_index(dataset: Dataset, *, nprobe: int | None = None, progress: bool = False, **kw):
    """The cached index if it matches the dataset, else (missing, stale or damaged: ``index.json`` or
    ``index.faiss``) build and save one; one line when it cannot be saved there."""
    try:
        return load_index(dataset, nprobe=nprobe)
    except LvmError as exc:
        reason = str(exc)
    try:
        return build_and_save_index(
            dataset.path,
            dataset.vectors,
            dataset.content_hash,
            nprobe=nprobe or DEFAULT_NPROBE,
            progress=progress,
            **kw,
        )
    except OSError as exc:  # e.g. index.json is a folder, or the dataset folder is read-only
        why = exc.strerror or type(exc).__name__
        raise LvmError(f"{reason}; and it cannot be rebuilt there ({why})") from None
