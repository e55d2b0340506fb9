"""Import the seeds' legacy ``.npz`` sequences into a dataset folder.

The legacy format stores every sequence whole: ``context_sequences`` [N, ctx, D] and
``target_vectors`` [N, D] (so each chunk vector appears up to ctx+1 times), optionally with
article ids, target positions, target texts and per-row metadata dicts. We rebuild the chunk
bank — one vector per (article, position) — and the articles, so sequences become views again.

Object arrays (texts, metadata dicts) are pickles inside the ``.npz``. They are read with an
unpickler that only accepts plain data (numpy arrays, dtypes, scalars, str/int/float/dict/list);
anything that could execute code is refused.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lvm.data.datasets import check_vectors, write_dataset
from lvm.data.index import build_and_save_index
from lvm.data.splits import SplitPolicy, assign_splits
from lvm.errors import LvmError
from lvm.io import atomic_dir

CONTEXT_KEY, TARGET_KEY = "context_sequences", "target_vectors"
ARTICLE_KEYS = ("article_ids", "article_indices", "article_id", "target_article_ids")
POSITION_KEYS = ("target_positions", "positions", "chunk_positions", "target_chunk_indices")
TEXT_KEYS = ("target_texts", "texts")
META_ARTICLE_KEYS = ("article_index", "article_id", "article")
META_POSITION_KEYS = ("target_chunk_index", "chunk_index", "position", "target_position")
META_TEXT_KEYS = ("target_text", "text")
_SAME_VECTOR_ATOL = 1e-6  # two copies of one chunk vector must agree to float32 precision
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise LvmError(f"refusing to unpickle {module}.{name}: the .npz holds objects that could run code")


def _read_member(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    with zf.open(name) as raw:
        fh = io.BytesIO(raw.read())
    version = np.lib.format.read_magic(fh)
    shape, _, dtype = (
        np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    )(fh)
    if dtype.hasobject:
        arr = _DataOnlyUnpickler(fh).load()
        if not isinstance(arr, np.ndarray):
            raise LvmError(f"{name}: expected a pickled numpy array")
        return arr
    fh.seek(0)
    return np.load(fh, allow_pickle=False)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` without ``allow_pickle`` (object arrays via a data-only unpickler)."""
    if not path.is_file():
        raise LvmError(f"{path} not found")
    try:
        with zipfile.ZipFile(path) as zf:
            return {n[:-4]: _read_member(zf, n) for n in zf.namelist() if n.endswith(".npy")}
    except LvmError:
        raise
    except Exception as exc:  # noqa: BLE001 - the class of "this member cannot be parsed", never a pickle run:
        # zip and zlib errors, .npy headers (ValueError, SyntaxError, tokenize.TokenError, MemoryError for a
        # shape too large, RecursionError for one nested too deep), truncated data (EOFError), the data-only
        # unpickler's errors
        why = (str(exc).splitlines() or [""])[0][:160]
        raise LvmError(f"{path}: not a readable .npz ({type(exc).__name__}: {why})") from None


def _first(arrays: dict, keys) -> np.ndarray | None:
    return next((arrays[k] for k in keys if k in arrays), None)


def _from_metadata(meta: np.ndarray | None, keys) -> np.ndarray | None:
    if meta is None or len(meta) == 0 or not isinstance(meta[0], dict):
        return None
    key = next((k for k in keys if k in meta[0]), None)
    if key is None:
        return None
    try:
        return np.array([m[key] for m in meta])
    except (KeyError, TypeError, ValueError):
        raise LvmError(f"metadata: not every row has {key!r} (one value of one type each)") from None


def _kind(arr) -> str:
    return f"{arr.dtype} of shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__


def _column(npz: Path, what: str, arr, n: int, kinds: str) -> np.ndarray:
    """A per-sequence column (article ids, positions, texts): 1-D, one entry per sequence, of ``kinds``."""
    if not isinstance(arr, np.ndarray) or arr.shape != (n,) or arr.dtype.kind not in kinds:
        raise LvmError(f"{npz}: {what} must be a 1-D array of {n} entries ({kinds} kinds); got {_kind(arr)}")
    return arr


def _dense_ids(raw: np.ndarray) -> tuple[np.ndarray, list]:
    """Map source article ids to 0..A-1 in sorted id order (so id-range OOD = highest source ids)."""
    uniq, inverse = np.unique(raw, return_inverse=True)
    return inverse.astype(np.int64), uniq.tolist()


def _derive_positions(article: np.ndarray, contexts: np.ndarray, targets: np.ndarray, ctx: int) -> np.ndarray:
    """Without positions, rows of one article must be consecutive sliding windows in file order.

    A row's padding (all-zero context slots) must be on the left: a left-padded row is a short context at
    its article's start, so the article's first row targets the chunk at position (its real context
    slots), and each later row the next one. Every row's real slots must then equal min(position, ctx):
    padding and order that disagree (a padded row after a full one, padding inside a context) are
    refused, saying which row and why."""
    n = len(article)
    real = np.abs(contexts).sum(axis=2) > 0  # (N, ctx): zero vectors are padding
    n_real = real.sum(axis=1)
    inner = np.flatnonzero((real[:, :-1] & ~real[:, 1:]).any(axis=1) | ~real[:, -1])
    if len(inner):
        raise LvmError(
            f"row {int(inner[0])}: its padding (zero context vectors) is not on the left, or its last context "
            "slot is padding: only left-padded windows can be placed without target positions; provide "
            "target_positions in the .npz"
        )
    order = np.argsort(article, kind="stable")
    a = article[order]
    start = np.ones(n, dtype=bool)
    start[1:] = a[1:] != a[:-1]
    run_start = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    rank = np.arange(n) - run_start
    first_real = n_real[order][run_start]  # the real context slots of each row's article's first row
    pos = np.empty(n, dtype=np.int64)
    pos[order] = first_real + rank
    follow = order[1:][~start[1:]]  # row that follows its predecessor in the same article
    prev = order[:-1][~start[1:]]
    if len(follow) and not np.allclose(contexts[follow, -1], targets[prev], atol=_SAME_VECTOR_ATOL):
        raise LvmError(
            "rows of an article are not consecutive sliding windows (a row's last context is not "
            "the previous row's target): provide target positions (target_positions) in the .npz"
        )
    odd = np.flatnonzero(n_real != np.minimum(pos, ctx))
    if len(odd):
        r = int(odd[0])
        raise LvmError(
            f"row {r} (article {article[r]!r}) has {int(n_real[r])} real context chunks where its place in the "
            f"article's windows gives {int(min(pos[r], ctx))}: left-padding and row order disagree (a padded "
            "row after a full one?), so the chunk order is ambiguous; provide target_positions in the .npz"
        )
    return pos


def _as_stream(contexts: np.ndarray, targets: np.ndarray) -> np.ndarray | None:
    """The seeds' builder slides one window over the whole chunk stream (all articles back to back):
    row i's context is stream[i : i+ctx] and its target stream[i+ctx]. When every row fits that,
    the stream is rebuilt exactly (ctx + N chunks); else None."""
    n, ctx, _ = contexts.shape
    if n < 2:
        return None
    if ctx > 1 and not np.allclose(contexts[1:, :-1], contexts[:-1, 1:], atol=_SAME_VECTOR_ATOL):
        return None
    if not np.allclose(contexts[1:, -1], targets[:-1], atol=_SAME_VECTOR_ATOL):
        return None
    return np.concatenate([contexts[0], targets]).astype(np.float32)


def _stream_articles(npz: Path, article: np.ndarray, ctx: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per chunk of a rebuilt stream: its article (a row's target's; the first ctx chunks take the first
    row's), its position in that article, and how many windows cross an article boundary."""
    chunk_article = np.concatenate([np.full(ctx, article[0]), article])
    change = np.r_[True, chunk_article[1:] != chunk_article[:-1]]
    blocks = chunk_article[change]
    if len(np.unique(blocks)) != len(blocks):
        raise LvmError(f"{npz}: an article's windows are not contiguous in the stream; cannot rebuild its chunk order")
    starts = np.maximum.accumulate(np.where(change, np.arange(len(chunk_article)), 0))
    position = (np.arange(len(chunk_article)) - starts).astype(np.int32)
    crossing = int((chunk_article[: len(article)] != article).sum())  # first context chunk in another article
    report = {
        "windows": int(len(article)),
        "cross_article_windows": crossing,
        "within_article_windows": int(len(article) - crossing),
    }
    return chunk_article, position, report


def _encoder_meta(encoder_name: str | None) -> tuple[dict, np.ndarray | None]:
    """The named encoder's identity when it is available here (the probes re-encoded: a real
    fingerprint the gates can verify), else the name alone (the fingerprint gate is then AMBER)."""
    if encoder_name:
        from lvm.data.encoders import EncoderSpec, load_encoder

        try:
            enc = load_encoder(EncoderSpec(name=encoder_name))
            return {
                "spec": EncoderSpec(name=encoder_name).to_dict(),
                "pipeline": enc.pipeline,
                "fingerprint": enc.fingerprint,
            }, enc.probe_vectors
        except LvmError:
            pass
    return {"spec": {"name": encoder_name}, "pipeline": None, "fingerprint": None}, None


def _import_stream(
    npz: Path, out: Path, stream: np.ndarray, article: np.ndarray, source_ids: list, texts_raw, ctx: int, **options
) -> dict:
    """A dataset folder from a rebuilt stream: windows that cross articles are marked in the report and
    are not sequences of the dataset (gated at min_ctx = ctx, only within-article windows remain)."""
    chunk_article, position, crossing = _stream_articles(npz, article, ctx)
    texts = [""] * len(stream)
    if texts_raw is not None:
        for i, t in enumerate(np.asarray(texts_raw).tolist()):
            texts[ctx + i] = str(t)
    report = {"rows": int(len(article)), "ctx": ctx, "layout": "stream", **crossing}
    return _write_import(npz, out, stream, chunk_article, position, texts, source_ids, {}, report, **options)


def _read_windows(npz: Path, arrays: dict) -> tuple[np.ndarray, np.ndarray]:
    """(contexts [N, ctx, D], targets [N, D]) as float32, finite, of agreeing shapes."""
    missing = [k for k in (CONTEXT_KEY, TARGET_KEY) if k not in arrays]
    if missing:
        raise LvmError(f"{npz}: missing key(s) {', '.join(missing)}; found {', '.join(sorted(arrays)) or 'none'}")
    for key in (CONTEXT_KEY, TARGET_KEY):
        if not isinstance(arrays[key], np.ndarray) or arrays[key].dtype.kind not in "iuf":
            raise LvmError(f"{npz}: {key} must be an array of real numbers; got {_kind(arrays[key])}")
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf: refused as non-finite below
        contexts = np.asarray(arrays[CONTEXT_KEY], dtype=np.float32)
        targets = np.asarray(arrays[TARGET_KEY], dtype=np.float32)
    shapes_agree = contexts.ndim == 3 and targets.ndim == 2 and len(contexts) == len(targets)
    if not shapes_agree or contexts.shape[2] != targets.shape[1]:
        raise LvmError(
            f"{npz}: expected {CONTEXT_KEY} [N, ctx, D] and {TARGET_KEY} [N, D], "
            f"got {contexts.shape} and {targets.shape}"
        )
    if len(targets) == 0:
        raise LvmError(f"{npz}: no sequences")
    if contexts.shape[1] < 1:
        raise LvmError(f"{npz}: {CONTEXT_KEY} has no context slots (shape {contexts.shape})")
    check_vectors(targets, f"{npz}:{TARGET_KEY}")
    check_vectors(contexts.reshape(-1, contexts.shape[2]), f"{npz}:{CONTEXT_KEY}")
    return contexts, targets


def _row_columns(
    npz: Path, arrays: dict, n: int
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(metadata rows, article ids, target positions or None, target texts or None), one per row."""
    meta_rows = arrays.get("metadata")
    if meta_rows is not None and (not isinstance(meta_rows, np.ndarray) or meta_rows.shape != (n,)):
        raise LvmError(f"{npz}: metadata must hold one entry per sequence ({n}); got {_kind(meta_rows)}")

    def column(keys, meta_keys):
        found = _first(arrays, keys)
        return _from_metadata(meta_rows, meta_keys) if found is None else found

    article_raw = column(ARTICLE_KEYS, META_ARTICLE_KEYS)
    if article_raw is None:
        raise LvmError(
            f"{npz}: no article ids (keys {', '.join(ARTICLE_KEYS)} or metadata 'article_index'): "
            "train/val/OOD splits cannot be made article-disjoint without them; "
            "re-export the sequences with article ids"
        )
    article_raw = _column(npz, "article ids", article_raw, n, "iufUS")
    if article_raw.dtype.kind == "f" and not np.isfinite(article_raw).all():
        raise LvmError(f"{npz}: article ids must be finite")
    pos_raw = column(POSITION_KEYS, META_POSITION_KEYS)
    if pos_raw is not None:
        pos_raw = _column(npz, "target positions", pos_raw, n, "iu")
    texts_raw = column(TEXT_KEYS, META_TEXT_KEYS)
    if texts_raw is not None:
        texts_raw = _column(npz, "target texts", texts_raw, n, "iufUSOb")
    return meta_rows, article_raw, pos_raw, texts_raw


def _positions(npz: Path, pos_raw, article: np.ndarray, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    n, ctx = contexts.shape[:2]
    if pos_raw is None:
        return _derive_positions(article, contexts, targets, ctx)
    if (pos_raw < 0).any() or (pos_raw > n * (ctx + 1)).any():
        raise LvmError(f"{npz}: target positions must lie in [0, {n * (ctx + 1)}] (positions within an article)")
    return pos_raw.astype(np.int64)


def _rebuild_bank(
    npz: Path, contexts: np.ndarray, targets: np.ndarray, article: np.ndarray, pos: np.ndarray, source_ids: list
) -> dict:
    """Every (article, position) a row mentions, stored once: the target at pos, context slot j at
    pos-ctx+j; every copy of a chunk must be the same vector and every article gap-free."""
    n, ctx = contexts.shape[:2]
    slot_pos = pos[:, None] - ctx + np.arange(ctx)[None, :]  # (N, ctx)
    real = (slot_pos >= 0) & (np.abs(contexts).sum(axis=2) > 0)  # zero vectors are padding
    rows_c, slots_c = np.nonzero(real)
    occ_article = np.concatenate([article, article[rows_c]])
    occ_pos = np.concatenate([pos, slot_pos[rows_c, slots_c]])
    occ_row = np.concatenate([np.arange(n), rows_c])
    occ_slot = np.concatenate([np.full(n, -1), slots_c])  # -1 = the target
    key = occ_article * (int(occ_pos.max()) + 1) + occ_pos
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)

    def occ_vectors(sel):
        r, s = occ_row[sel], occ_slot[sel]
        return np.where((s < 0)[:, None], targets[r], contexts[r, np.maximum(s, 0)])

    bank = occ_vectors(first)
    for start in range(0, len(key), 1 << 18):  # every copy of a chunk must be the same vector
        sl = slice(start, start + (1 << 18))
        if not np.allclose(occ_vectors(np.arange(len(key))[sl]), bank[inverse[sl]], atol=_SAME_VECTOR_ATOL):
            raise LvmError(
                f"{npz}: the same (article, position) holds different vectors in different rows; positions are wrong"
            )
    chunk_article, chunk_pos = occ_article[first], occ_pos[first].astype(np.int32)
    starts = np.searchsorted(chunk_article, np.arange(len(source_ids)))
    expected = np.arange(len(uniq)) - np.repeat(starts, np.bincount(chunk_article, minlength=len(source_ids)))
    if not np.array_equal(chunk_pos, expected):
        gap = int(chunk_article[np.flatnonzero(chunk_pos != expected)[0]])
        raise LvmError(
            f"{npz}: article {source_ids[gap]!r} has gaps in its chunk positions; cannot rebuild its chunk order"
        )
    return {
        "bank": bank,
        "article": chunk_article,
        "position": chunk_pos,
        "row_chunk": inverse[:n],
        "duplicates_removed": int(len(key) - len(uniq)),
    }


def import_npz(
    npz: str | Path,
    out: str | Path,
    *,
    split: SplitPolicy | None = None,
    encoder_name: str | None = None,
    index_kind: str = "auto",
    progress: bool = True,
) -> dict:
    """Rebuild a dataset folder from a legacy ``.npz``; returns the written meta.

    Two layouts: the seeds' stream (one window slid over all articles back to back: the stream is
    rebuilt exactly, cross-article windows marked) and per-article windows (chunks de-duplicated by
    (article, position), positions derived from the windows when the file has none).
    """
    npz, out = Path(npz), Path(out)
    arrays = read_npz(npz)
    contexts, targets = _read_windows(npz, arrays)
    n, ctx, d = contexts.shape
    meta_rows, article_raw, pos_raw, texts_raw = _row_columns(npz, arrays, n)
    article, source_ids = _dense_ids(article_raw)
    stream = _as_stream(contexts, targets)
    options: dict[str, Any] = {
        "split": split,
        "encoder_name": encoder_name,
        "index_kind": index_kind,
        "progress": progress,
    }
    if stream is not None:  # the seeds' builder: one window slid over all articles back to back
        return _import_stream(npz, out, stream, article, source_ids, texts_raw, ctx, **options)
    built = _rebuild_bank(
        npz, contexts, targets, article, _positions(npz, pos_raw, article, contexts, targets), source_ids
    )
    texts = [""] * len(built["bank"])
    if texts_raw is not None:
        for i, t in zip(built["row_chunk"].tolist(), np.asarray(texts_raw).tolist(), strict=True):
            texts[i] = str(t)
    titles = {}
    if meta_rows is not None and all(isinstance(m, dict) for m in meta_rows) and "title" in meta_rows[0]:
        titles = {int(a): str(m.get("title", "")) for a, m in zip(article.tolist(), meta_rows, strict=True)}
    bank = built["bank"]
    dup = len(bank) - len(np.unique(bank.view(np.dtype((np.void, d * 4))).ravel()))
    report = {
        "rows": n,
        "ctx": ctx,
        "duplicates_removed": built["duplicates_removed"],
        "duplicate_chunk_vectors": int(dup),
    }
    return _write_import(
        npz, out, bank, built["article"], built["position"], texts, source_ids, titles, report, **options
    )


def _write_import(
    npz: Path,
    out: Path,
    bank: np.ndarray,
    chunk_article: np.ndarray,
    chunk_pos: np.ndarray,
    texts: list,
    source_ids: list,
    titles: dict,
    report: dict,
    *,
    split,
    encoder_name,
    index_kind: str,
    progress: bool,
) -> dict:
    """The dataset folder of an import (atomically), with the encoder's identity where it is installed."""
    articles = [{"source_id": str(s), "title": titles.get(i, str(s)), "topic": ""} for i, s in enumerate(source_ids)]
    article_split = assign_splits(len(articles), [""] * len(articles), split or SplitPolicy())
    encoder_meta, probes = _encoder_meta(encoder_name)
    meta = {
        "encoder": encoder_meta,
        "sequences": {
            "ctx": report["ctx"],
            "min_ctx": report["ctx"],
            "why": "the file holds full-context windows only",
        },
        "corpus": {"name": f"npz:{npz.name}"},
        "chunker": {"kind": "imported"},
        "split_policy": (split or SplitPolicy()).to_dict(),
        "import": report,
    }
    with atomic_dir(out, "dataset") as tmp:
        np.save(tmp / "vectors.npy", bank.astype(np.float32))
        full = write_dataset(
            tmp,
            article_id=chunk_article,
            position=chunk_pos,
            texts=texts,
            articles=articles,
            article_split=article_split,
            meta=meta,
            probe_vectors=probes,
        )
        build_and_save_index(tmp, bank, full["content_hash"], kind=index_kind, progress=progress)
    return full
