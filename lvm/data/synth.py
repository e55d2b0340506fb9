"""Synthetic datasets at any size: articles as random walks on the unit sphere with a chosen
adjacency coherence, optional low-coherence segments and exact duplicates.

Each article starts at a random unit vector; each next chunk is

    v_{t+1} = c_t · v_t + √(1 − c_t²) · u_t,      u_t ⟂ v_t, ‖u_t‖ = 1

so cos(v_t, v_{t+1}) = c_t exactly, with c_t drawn per pair from N(mean, std²) clipped to
[−0.99, 0.99]. A segment (a range of article ids) can have its own mean and std: the seeds'
"low-coherence dilution" at articles 11k–15k. Generation is vectorized over articles (one step per
chunk position), streamed in blocks into a memory-mapped ``vectors.npy``, and deterministic from
the seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lvm.data.datasets import write_dataset
from lvm.data.splits import SplitPolicy, assign_splits
from lvm.errors import LvmError
from lvm.io import atomic_dir

ARTICLE_BLOCK = 4096  # articles generated at once: bounded memory at any size
MAX_COS = 0.99  # adjacency cosines are clipped to [-MAX_COS, MAX_COS]


@dataclass(frozen=True)
class Segment:
    """Articles ``start <= id < stop`` get adjacency coherence N(mean, std²)."""

    start: int
    stop: int
    mean: float
    std: float

    @classmethod
    def parse(cls, text: str) -> Segment:
        try:
            start, stop, mean, std = text.split(":")
            return cls(int(start), int(stop), float(mean), float(std))
        except ValueError:
            raise LvmError(f"segment {text!r}: expected START:STOP:MEAN:STD, e.g. 11000:15000:0.34:0.16") from None


@dataclass(frozen=True)
class SynthConfig:
    n_chunks: int = 36_000
    dim: int = 384
    mean_chunks_per_article: float = 15.0
    coherence: float = 0.48  # the seeds' healthy 584k set: mean 0.4842, std 0.2102
    coherence_std: float = 0.21
    segments: tuple[Segment, ...] = field(default_factory=tuple)
    duplicate_fraction: float = 0.0
    seed: int = 0

    def fingerprint(self) -> str:
        """Identity of the generated vector space (stands in for an encoder fingerprint): its dimension
        and the seed of the space, not the content. A set diluted with low-coherence segments and its
        clean twin share a space, so coherence drift, ``lvm coherence --baseline`` and the bench compare
        them; another dimension or seed is another space."""
        space = {"kind": "synthetic-sphere", "dim": self.dim, "space_seed": self.seed}
        return "synthetic-" + hashlib.sha256(json.dumps(space, sort_keys=True).encode()).hexdigest()


def article_lengths(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Lengths ≥ 2 (Poisson around the mean) summing exactly to ``n_chunks``."""
    if cfg.n_chunks < 2:
        raise LvmError("n-chunks must be at least 2")
    n_art = max(1, int(round(cfg.n_chunks / cfg.mean_chunks_per_article)))
    lengths = np.maximum(2, rng.poisson(cfg.mean_chunks_per_article, n_art))
    total = np.cumsum(lengths)
    keep = int(np.searchsorted(total, cfg.n_chunks, side="left")) + 1
    lengths = lengths[:keep]
    lengths[-1] -= int(lengths.sum() - cfg.n_chunks)
    if lengths[-1] < 2:  # fold a 0/1-chunk tail into the previous article
        tail = lengths[-1]
        lengths = lengths[:-1]
        lengths[-1] += tail
    return lengths.astype(np.int64)


def _coherence_params(cfg: SynthConfig, article_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = np.full(len(article_ids), cfg.coherence)
    std = np.full(len(article_ids), cfg.coherence_std)
    for seg in cfg.segments:
        sel = (article_ids >= seg.start) & (article_ids < seg.stop)
        mean[sel], std[sel] = seg.mean, seg.std
    return mean, std


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def generate(cfg: SynthConfig, out: np.ndarray, lengths: np.ndarray, progress: bool = False) -> None:
    """Fill ``out`` ([n_chunks, dim], e.g. a memmap) article block by article block."""
    from tqdm.auto import tqdm

    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    n_art = len(lengths)
    for b0 in tqdm(range(0, n_art, ARTICLE_BLOCK), desc="synth", unit="block", disable=not progress):
        ids = np.arange(b0, min(b0 + ARTICLE_BLOCK, n_art))
        rng = np.random.default_rng([cfg.seed, 0, int(b0)])  # per block: same output whatever the block order
        lens, first = lengths[ids], starts[ids]
        mean, std = _coherence_params(cfg, ids)
        v = _unit(rng.standard_normal((len(ids), cfg.dim), dtype=np.float32))  # (A, D)
        out[first] = v
        for p in range(1, int(lens.max())):
            live = np.flatnonzero(lens > p)
            c = np.clip(rng.normal(mean[live], std[live]), -MAX_COS, MAX_COS).astype(np.float32)[:, None]
            u = rng.standard_normal((len(live), cfg.dim), dtype=np.float32)
            u -= (u * v[live]).sum(axis=1, keepdims=True) * v[live]  # make u ⟂ v
            u = _unit(u)
            v[live] = _unit(c * v[live] + np.sqrt(1 - c * c) * u)
            out[first[live] + p] = v[live]
    if cfg.duplicate_fraction > 0:
        rng = np.random.default_rng([cfg.seed, 1, 0])
        n_dup = int(round(cfg.duplicate_fraction * len(out)))
        dst = np.sort(rng.choice(len(out), size=n_dup, replace=False))
        src = rng.integers(0, len(out), size=n_dup)
        for s in range(0, n_dup, 65536):
            out[dst[s : s + 65536]] = np.asarray(out[src[s : s + 65536]])


def synth_dataset(
    cfg: SynthConfig, out_dir: str | Path, split: SplitPolicy | None = None, progress: bool = True
) -> dict:
    """Write a dataset folder (same format as ``lvm build-data``) from a synthetic config."""
    if cfg.dim < 2:
        raise LvmError("dim must be at least 2")
    if not -MAX_COS <= cfg.coherence <= MAX_COS or cfg.coherence_std < 0:
        raise LvmError(f"coherence must be in [-{MAX_COS}, {MAX_COS}] and its std >= 0")
    if not 0 <= cfg.duplicate_fraction < 1:
        raise LvmError("duplicate fraction must be in [0, 1)")
    rng = np.random.default_rng([cfg.seed, 2, 0])
    lengths = article_lengths(cfg, rng)
    n_art = len(lengths)
    article_id = np.repeat(np.arange(n_art), lengths)
    position = (np.arange(cfg.n_chunks) - np.repeat(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)).astype(
        np.int32
    )
    topic_of = np.array(["base"] * n_art, dtype=object)
    for k, seg in enumerate(cfg.segments):
        topic_of[seg.start : seg.stop] = f"segment-{k}"
    articles = [
        {"source_id": f"synth-{i}", "title": f"synthetic article {i}", "topic": str(topic_of[i])} for i in range(n_art)
    ]
    policy = split or SplitPolicy()
    article_split = assign_splits(n_art, [a["topic"] for a in articles], policy)
    with atomic_dir(Path(out_dir), "dataset") as tmp:
        vec = np.lib.format.open_memmap(tmp / "vectors.npy", mode="w+", dtype=np.float32, shape=(cfg.n_chunks, cfg.dim))
        generate(cfg, vec, lengths, progress)
        vec.flush()
        del vec
        params = {**asdict(cfg), "segments": [asdict(s) for s in cfg.segments]}
        meta = {
            "encoder": {"spec": {"name": "synthetic"}, "pipeline": None, "fingerprint": cfg.fingerprint()},
            "synthetic": params,
            "gate_profile": "gtr-t5-wiki",  # the seeds' thresholds: synthetic data mimics their 768-D sets
            "corpus": {"name": "synthetic"},
            "chunker": {"kind": "synthetic"},
            "split_policy": policy.to_dict(),
        }
        full = write_dataset(
            tmp,
            article_id=article_id,
            position=position,
            texts=None,
            articles=articles,
            article_split=article_split,
            meta=meta,
        )
    return full
