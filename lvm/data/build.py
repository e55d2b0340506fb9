"""corpus -> chunks -> vectors -> dataset folder -> index, with caching and resume.

Re-running with the same inputs reuses the finished dataset without loading the encoder (the
cache key is computed from the corpus bytes, the chunker and split settings, the encoder spec and
a digest of its weight files). When only the splits or index settings change, the encoded vectors
of the previous build are reused. An interrupted encode resumes from its last finished block.

Engines: ``local`` encodes in this process (``_encode_resumable``); ``ray`` shards the corpus by article
over Ray actors that write the same bank in place (``lvm.data.ray_build``): the same dataset, resumable
shard by shard.

**What a failed build leaves.** Settings that cannot work are refused before anything is written or
encoded (one line, exit 2): ``--out`` a dangling symlink or not a folder, a folder holding files lvm did
not write, ``--max-length`` outside what the encoder reads, ``--nlist`` above the chunk count (known after
chunking, before encoding). A build refused later (``LvmError``) removes its temporary folder and its
partial folder. Only an *interrupted* encode keeps its partial folder ``.OUT.partial-KEY`` beside ``OUT``,
deliberately, so that rerunning the same command resumes it: a kill or Ctrl-C mid-encoding, an
unexpected crash, or a Ray build stopped by a lost worker (``BuildInterrupted``). A successful build, or a
rerun that finds the dataset up to date, removes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from lvm import __version__
from lvm.data.chunking import ChunkerConfig, chunk_text, has_word
from lvm.data.corpora import DEFAULT_CORPUS, Corpus, first_articles, load_corpus
from lvm.data.datasets import FORMAT_VERSION, write_dataset
from lvm.data.encoders import (
    EncoderSpec,
    backend_key,
    check_max_length,
    load_encoder,
    resolve_model_dir,
    weights_digest,
)
from lvm.data.index import DEFAULT_NPROBE, build_and_save_index
from lvm.data.splits import SplitPolicy, assign_splits
from lvm.errors import LvmError
from lvm.io import atomic_dir, clear_stale_temps, refuse_foreign_folder, utc_timestamp, write_json_atomic

ENCODE_BLOCK = 2048  # texts per resumable encode step (~8 s of MiniLM on 2 cores)
ENGINES = ("local", "ray")
MAX_WORKERS = 65_536


@dataclass
class BuildConfig:
    corpus: str = DEFAULT_CORPUS
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)
    split: SplitPolicy = field(default_factory=SplitPolicy)
    index_kind: str = "auto"
    nlist: int | None = None
    nprobe: int = DEFAULT_NPROBE
    batch_size: int = 64
    max_articles: int | None = None  # only the corpus's first N articles (its own order); None: all
    engine: str = "local"  # "local": this process; "ray": Ray actors, sharded by article (lvm.data.ray_build)
    workers: int | None = None  # ray: actors (None: the cluster's CPUs); not part of any key
    shard_chunks: int = ENCODE_BLOCK  # ray: chunks per shard, at least (whole articles); not part of any key


@dataclass
class ChunkTable:
    texts: list[str]
    article_id: np.ndarray
    position: np.ndarray
    articles: list[dict]  # dense article id -> {source_id, title, topic}


def chunk_corpus(corpus: Corpus, cfg: ChunkerConfig) -> ChunkTable:
    texts, aid, pos, articles = [], [], [], []
    for art in corpus.articles:
        chunks = art.chunks if art.chunks is not None else chunk_text(art.text or "", cfg)
        if not chunks:
            continue
        a = len(articles)
        articles.append({"source_id": art.source_id, "title": art.title, "topic": art.topic})
        texts.extend(chunks)
        aid.extend([a] * len(chunks))
        pos.extend(range(len(chunks)))
    if not texts:
        raise LvmError(f"corpus {corpus.name!r} produced no chunks")
    if not any(has_word(t) for t in texts if isinstance(t, str)):
        raise LvmError(
            f"corpus {corpus.name!r}: none of its {len(texts)} chunk(s) holds a letter or a digit "
            "(only punctuation, symbols or spaces): nothing to encode"
        )
    return ChunkTable(texts, np.asarray(aid, dtype=np.int64), np.asarray(pos, dtype=np.int32), articles)


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True).encode() if not isinstance(p, bytes) else p)
        h.update(b"\0")
    return h.hexdigest()


def _package_versions() -> dict:
    out = {}
    for pkg in ("sentence-transformers", "transformers", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def encoder_key(spec: EncoderSpec) -> str:
    """What determines the encoder's outputs, computed without importing torch (fast)."""
    model_dir, model_id = resolve_model_dir(spec.name)
    backend = backend_key(spec)  # None for torch: its key stays the pre-backend one
    extra = () if backend is None else (backend,)
    return _sha(spec.to_dict(), model_id, weights_digest(model_dir), _package_versions(), *extra)


def chunks_digest(table: ChunkTable) -> str:
    h = hashlib.sha256()
    for t, a in zip(table.texts, table.article_id.tolist(), strict=False):
        h.update(f"{a}\0{t}\n".encode())
    return h.hexdigest()


def _encode_resumable(encoder, texts: list[str], partial: Path, batch_size: int, progress: bool) -> Path:
    """Encode into ``partial/vectors.npy`` block by block; a rerun continues where it stopped."""
    from tqdm.auto import tqdm

    partial.mkdir(parents=True, exist_ok=True)
    vec_path, done_path = partial / "vectors.npy", partial / "done.json"
    n, d = len(texts), encoder.dim
    done, out = 0, None
    if vec_path.is_file() and done_path.is_file():
        try:  # our own files, but a damaged one is a fresh start, never a crash
            rows = json.loads(done_path.read_text()).get("rows", 0)
            out = np.load(vec_path, mmap_mode="r+")
            done = rows if isinstance(rows, int) and 0 <= rows <= n else 0
        except Exception:  # noqa: BLE001 - unreadable JSON or .npy header (ValueError, SyntaxError, ...)
            done, out = 0, None
        if out is not None and (out.shape != (n, d) or out.dtype != np.float32):
            done, out = 0, None
    if out is None:
        vec_path.unlink(missing_ok=True)  # never truncate in place: it may be linked into a dataset folder
        for name in ("shards.json", "shards-done.jsonl"):  # a ray build's progress, about the old file
            (partial / name).unlink(missing_ok=True)
        out = np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32, shape=(n, d))
        write_json_atomic(done_path, {"rows": 0})
    with tqdm(total=n, initial=done, desc="encode", unit="chunk", disable=not progress, smoothing=0.1) as bar:
        for start in range(done, n, ENCODE_BLOCK):
            block = texts[start : start + ENCODE_BLOCK]
            out[start : start + len(block)] = encoder.encode(block, batch_size=batch_size)
            out.flush()
            write_json_atomic(done_path, {"rows": start + len(block)})
            bar.update(len(block))
    del out
    return vec_path


@dataclass
class BuildResult:
    path: Path
    meta: dict
    reused: str  # "dataset", "vectors" or "" (built from scratch)
    seconds: dict


def _old_meta(out: Path) -> dict | None:
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return meta if isinstance(meta, dict) else None


def _intact(out: Path) -> str | None:
    """Why the previous build at ``out`` is not reused (None: it opens and its files are the ones its content
    hash names; ``lvm.data.datasets``: the same check as every open)."""
    from lvm.data.datasets import open_dataset

    try:
        open_dataset(out)
    except LvmError as exc:
        return str(exc)
    return None


def _vectors(
    cfg: BuildConfig,
    table,
    out: Path,
    tmp: Path,
    partial: Path,
    old_meta: dict | None,
    reuse: bool,
    progress: bool,
    log,
    seconds: dict,
    vectors_key: str = "",
) -> tuple[dict, np.ndarray | None]:
    """``tmp/vectors.npy``: the old folder's when corpus and encoder are unchanged, else encoded
    (resumable). Returns the encoder identity and the probe vectors."""
    if reuse and old_meta is not None:
        log(f"{out}: corpus and encoder unchanged, reusing encoded vectors")
        shutil.copyfile(out / "vectors.npy", tmp / "vectors.npy")
        probe = np.load(out / "probe_vectors.npy") if (out / "probe_vectors.npy").is_file() else None
        return old_meta["encoder"], probe
    if cfg.engine == "ray":
        from lvm.data.ray_build import encode_with_ray

        vec_path, identity, probe, stats = encode_with_ray(
            cfg.encoder, table, partial, vectors_key, batch_size=cfg.batch_size, workers=cfg.workers,
            shard_chunks=cfg.shard_chunks, progress=progress, log=log, seconds=seconds,
        )  # fmt: skip
        seconds["encode_chunks_per_s"] = stats["rows_encoded"] / max(seconds["encode"], 1e-9)
        seconds["shards"], seconds["shards_encoded"] = stats["shards"], len(stats["encoded"])
        which = f" {sorted(stats['encoded'])}" if len(stats["encoded"]) <= 20 else ""
        log(f"ray: encoded {len(stats['encoded'])} of {stats['shards']} shards this run{which}")
        _link(vec_path, tmp)
        return identity, probe
    t = time.perf_counter()
    encoder = load_encoder(cfg.encoder)
    seconds["load_encoder"] = time.perf_counter() - t
    log(
        f"encoding {len(table.texts)} chunks of {len(table.articles)} articles "
        f"with {encoder.model_id} ({encoder.dim}-D, {encoder.spec.backend} backend)"
    )
    t = time.perf_counter()
    vec_path = _encode_resumable(encoder, table.texts, partial, cfg.batch_size, progress)
    seconds["encode"] = time.perf_counter() - t
    seconds["encode_chunks_per_s"] = len(table.texts) / max(seconds["encode"], 1e-9)
    _link(vec_path, tmp)
    return encoder.identity(), encoder.probe_vectors


def _link(vec_path: Path, tmp: Path) -> None:
    # linked (or copied), not moved: a build killed before the swap resumes with nothing to encode
    try:
        os.link(vec_path, tmp / "vectors.npy")
    except OSError:
        shutil.copyfile(vec_path, tmp / "vectors.npy")


def check_config(cfg: BuildConfig, out: Path) -> None:
    """The refusals that need neither the corpus nor the encoder (one line each, nothing written)."""
    from lvm.bounds import Bound, check_number

    if cfg.engine not in ENGINES:
        raise LvmError(f"--engine: unknown engine {cfg.engine!r} (expected one of {', '.join(ENGINES)})")
    if cfg.workers is not None:
        check_number(cfg.workers, Bound(int, 1, MAX_WORKERS), "--workers")
        if cfg.engine != "ray":
            raise LvmError("--workers applies to --engine ray only (the local engine encodes in this process)")
    check_number(cfg.shard_chunks, Bound(int, 1, 2**31 - 1), "--shard-chunks")
    if cfg.engine == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            from lvm.data.ray_build import ray_missing

            raise ray_missing()
    if out.is_symlink() and not out.exists():
        raise LvmError(
            f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist: "
            "remove the link, create its target folder, or choose another path"
        )
    if out.exists() and not out.is_dir():
        raise LvmError(f"--out {out} exists and is not a folder: choose another path")
    check_max_length(cfg.encoder)


def check_nlist(cfg: BuildConfig, n_chunks: int) -> None:
    """``--nlist`` must not exceed the number of vectors (checked once the chunks are known, before encoding)."""
    if cfg.nlist is not None and not 1 <= cfg.nlist <= n_chunks:
        raise LvmError(
            f"--nlist {cfg.nlist} is more than the corpus's {n_chunks} chunks: an IVF list needs at least one "
            f"vector; use --nlist {n_chunks} or less (or leave it out: about 4·√N)"
        )


def build_dataset(
    cfg: BuildConfig, out: str | Path, *, force: bool = False, progress: bool = True, log=print
) -> BuildResult:
    """Build (or reuse) the dataset folder ``out`` described by ``cfg``."""
    t0 = time.perf_counter()
    out = Path(out)
    seconds: dict[str, float] = {}
    check_config(cfg, out)
    corpus = load_corpus(cfg.corpus)
    if cfg.max_articles is not None:
        corpus = first_articles(corpus, cfg.max_articles)
    table = chunk_corpus(corpus, cfg.chunker)
    check_nlist(cfg, len(table.texts))
    seconds["chunk"] = time.perf_counter() - t0
    vectors_key = _sha("vectors", encoder_key(cfg.encoder), chunks_digest(table))
    build_key = _sha(
        "dataset", FORMAT_VERSION, vectors_key, corpus.source_hash, cfg.split.to_dict(), cfg.index_kind, cfg.nlist,
        cfg.nprobe, *(() if cfg.max_articles is None else (cfg.max_articles,)),
    )  # fmt: skip
    clear_stale_temps(out)  # a build killed mid-swap: its folder moved aside is put back first
    partial = out.parent / f".{out.name}.partial-{vectors_key[:16]}"
    old_meta = _old_meta(out) if (out / "meta.json").is_file() else None
    damaged = _intact(out) if old_meta and not force else None
    if damaged:
        old_meta = None  # damaged since it was built: nothing of it is reused
    if old_meta and old_meta.get("build_key") == build_key and not force and (out / "index.faiss").is_file():
        seconds["total"] = time.perf_counter() - t0
        shutil.rmtree(partial, ignore_errors=True)  # left by a build killed after its swap
        log(f"{out}: up to date ({old_meta['counts']['chunks']} chunks), reused")
        return BuildResult(out, old_meta, "dataset", seconds)
    refuse_foreign_folder(out, "dataset")  # about to write: refused before any log line or work (one line)
    if damaged:
        log(f"{out}: not reused ({damaged})")

    split = assign_splits(len(table.articles), [a["topic"] for a in table.articles], cfg.split)
    reuse_vectors = bool(old_meta and old_meta.get("vectors_key") == vectors_key and not force)
    try:
        full = _write(cfg, table, corpus, out, partial, old_meta, reuse_vectors, progress, log, seconds, split,
                      build_key, vectors_key)  # fmt: skip
    except LvmError as exc:
        from lvm.data.ray_build import BuildInterrupted

        if not isinstance(exc, BuildInterrupted):  # refused: nothing left behind (an interruption resumes)
            shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)
    seconds["total"] = time.perf_counter() - t0
    return BuildResult(out, full, "vectors" if reuse_vectors else "", seconds)


def _write(cfg, table, corpus, out, partial, old_meta, reuse_vectors, progress, log, seconds, split, build_key,
           vectors_key) -> dict:  # fmt: skip
    with atomic_dir(out, "dataset") as tmp:
        identity, probe = _vectors(
            cfg, table, out, tmp, partial, old_meta, reuse_vectors, progress, log, seconds, vectors_key
        )
        meta = {
            "lvm_version": __version__, "created_at": utc_timestamp(), "encoder": identity,
            "corpus": {"name": corpus.name, "source_hash": corpus.source_hash, **corpus.info},
            "chunker": cfg.chunker.to_dict(), "split_policy": cfg.split.to_dict(), "build_key": build_key,
            "vectors_key": vectors_key,
        }  # fmt: skip
        t = time.perf_counter()
        full = write_dataset(
            tmp, article_id=table.article_id, position=table.position, texts=table.texts, articles=table.articles,
            article_split=split, meta=meta, probe_vectors=probe,
        )  # fmt: skip
        vectors = np.load(tmp / "vectors.npy", mmap_mode="r")
        build_and_save_index(
            tmp, vectors, full["content_hash"], kind=cfg.index_kind, nlist=cfg.nlist, nprobe=cfg.nprobe,
            progress=progress,
        )  # fmt: skip
        del vectors
        seconds["write_and_index"] = time.perf_counter() - t
    return full
