"""Metrics: pure functions of arrays. Every formula is in the docstring; no I/O, no training.

Vectors are unit vectors, so ``cos(a, b) = a·b``.
"""

from __future__ import annotations

import numpy as np

BLOCK = 65536  # rows per block on memory-mapped arrays: bounded memory at any dataset size
LOW_COHERENCE = 0.30  # the seeds' "low coherence" line: cos(c_t, c_t+1) < 0.30
HISTOGRAM_BINS = np.round(np.arange(0.0, 1.01, 0.1), 1)  # the seeds' 0.1-wide coherence table


def vector_norms(vectors: np.ndarray) -> np.ndarray:
    """‖v_i‖₂ for every row, computed blockwise."""
    out = np.empty(len(vectors), dtype=np.float64)
    for s in range(0, len(vectors), BLOCK):
        block = np.asarray(vectors[s : s + BLOCK], dtype=np.float64)
        out[s : s + BLOCK] = np.sqrt((block * block).sum(axis=1))
    return out


def norm_summary(vectors: np.ndarray) -> dict:
    """|mean−1|, std, min, max of the norms, plus counts of NaN/Inf rows and zero vectors."""
    norms = vector_norms(vectors)
    finite = np.isfinite(norms)
    good = norms[finite]
    return {
        "mean": float(good.mean()) if len(good) else float("nan"),
        "abs_mean_minus_1": float(abs(good.mean() - 1.0)) if len(good) else float("nan"),
        "std": float(good.std()) if len(good) else float("nan"),
        "min": float(good.min()) if len(good) else float("nan"),
        "max": float(good.max()) if len(good) else float("nan"),
        "nonfinite": int((~finite).sum()),
        "zero": int((good == 0).sum()),
    }


def adjacency_coherence(vectors: np.ndarray, article_id: np.ndarray) -> np.ndarray:
    """cos(c_t, c_{t+1}) for every pair of consecutive chunks of the same article.

    The one implementation of adjacency coherence in the project (gates and tools call this).
    Assumes chunks are stored in article order (as in a dataset folder); pairs that straddle two
    articles are excluded.
    """
    same = np.flatnonzero(article_id[1:] == article_id[:-1])  # pair (t, t+1) with t in `same`
    out = np.empty(len(same), dtype=np.float64)
    for s in range(0, len(same), BLOCK):
        t = same[s : s + BLOCK]
        a = np.asarray(vectors[t], dtype=np.float64)
        b = np.asarray(vectors[t + 1], dtype=np.float64)
        out[s : s + BLOCK] = (a * b).sum(axis=1)
    return out


def coherence_summary(cos: np.ndarray, low: float = LOW_COHERENCE) -> dict:
    """mean, std, p10/p50/p90, share below ``low``, and the share per 0.1-wide bin.

    Values below 0 fall in the first bin and values ≥ 1 in the last, as in the seeds' table.
    """
    if len(cos) == 0:
        return {"n_pairs": 0}
    clipped = np.clip(cos, 0.0, 0.999999)
    counts, _ = np.histogram(clipped, bins=HISTOGRAM_BINS)
    return {
        "n_pairs": int(len(cos)),
        "mean": float(cos.mean()),
        "std": float(cos.std()),
        "p10": float(np.percentile(cos, 10)),
        "p50": float(np.percentile(cos, 50)),
        "p90": float(np.percentile(cos, 90)),
        "low_share": float((cos < low).mean()),
        "low_threshold": low,
        "histogram": {
            f"[{lo:.1f},{hi:.1f})": float(c / len(cos))
            for lo, hi, c in zip(HISTOGRAM_BINS[:-1], HISTOGRAM_BINS[1:], counts)
        },
    }
