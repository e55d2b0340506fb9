"""Metrics: pure functions of arrays. Every formula is in the docstring; no I/O, no training.

Vectors are unit vectors, so ``cos(a, b) = a·b``.
"""

from __future__ import annotations

import numpy as np

BLOCK = 16384  # rows per block in streaming passes: ~50 MB of float32 at 768-D, bounded memory at any size
LOW_COHERENCE = 0.30  # the seeds' "low coherence" line: cos(c_t, c_t+1) < 0.30
HISTOGRAM_BINS = np.round(np.arange(0.0, 1.01, 0.1), 1)  # the seeds' 0.1-wide coherence table


def vector_norms(vectors: np.ndarray) -> np.ndarray:
    """‖v_i‖₂ for every row, computed blockwise."""
    out = np.empty(len(vectors), dtype=np.float64)
    for s, block in _blocks(vectors, BLOCK):
        b = np.asarray(block)
        if b.dtype == np.float32:  # float32 dot products (~1e-7 relative), accumulated per row by SIMD
            with np.errstate(over="ignore", invalid="ignore"):
                sq = np.vecdot(b, b).astype(np.float64)
            over = ~np.isfinite(sq)  # huge entries overflow float32 squares: those rows in float64
            if over.any():
                sq[over] = (b[over].astype(np.float64) ** 2).sum(axis=1)
            out[s : s + len(b)] = np.sqrt(sq)
        else:
            b = b.astype(np.float64)
            out[s : s + len(b)] = np.sqrt((b * b).sum(axis=1))
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

    The one implementation of adjacency coherence in the project (gates and tools call this, or
    ``Dataset.adjacency`` which caches it). Assumes chunks are stored in article order (as in a
    dataset folder); pairs that straddle two articles are excluded. Reads contiguous blocks (one
    pass over a memory-mapped bank, no fancy indexing).
    """
    n = len(vectors)
    same = article_id[1:] == article_id[:-1]  # pair (t, t+1) for every t < n-1
    out = np.empty(max(n - 1, 0), dtype=np.float64)
    if n <= 2 * BLOCK:
        _adjacent_cos(_blocks(vectors, BLOCK, 1), out)
        return out[same]
    # two halves on two threads (file reads and NumPy's loops release the GIL): a pass at the speed
    # of memory rather than of one core
    from concurrent.futures import ThreadPoolExecutor

    half = (n // 2 // BLOCK + 1) * BLOCK
    with ThreadPoolExecutor(2) as pool:
        halves = ((0, half), (half, n))
        done = [pool.submit(_adjacent_cos, _blocks(vectors, BLOCK, 1, lo, hi), out) for lo, hi in halves]
        for f in done:
            f.result()
    return out[same]


def _adjacent_cos(blocks, out: np.ndarray) -> None:
    """out[t] = cos(c_t, c_t+1) for the rows of each ``(start, rows[start : start + block + 1])``."""
    for s, a in blocks:
        if len(a) < 2:
            break
        a = np.asarray(a, dtype=np.float32)
        # a cosine, not a raw dot product: un-normalised data must not read as "coherent" (norms 1.03 -> mean 1.06).
        # float32 dot products (SIMD, ~1e-7 from float64: far below the 4 decimals anything reports)
        with np.errstate(over="ignore", invalid="ignore"):
            sq, dots = np.vecdot(a, a), np.vecdot(a[:-1], a[1:])
        if not (np.isfinite(sq).all() and np.isfinite(dots).all()):  # huge entries overflow float32: float64
            a64 = a.astype(np.float64)
            sq, dots = np.vecdot(a64, a64), np.vecdot(a64[:-1], a64[1:])
        norms = np.sqrt(sq, dtype=np.float64)
        out[s : s + len(a) - 1] = dots / np.maximum(norms[:-1] * norms[1:], 1e-12)


def _blocks(vectors, block: int, overlap: int = 0, begin: int = 0, end: int | None = None):
    """(start, rows[start : start + block + overlap]) for start = begin, begin + block, ... < end: a
    dataset bank's own ``blocks`` (one reused read buffer), else slices of any array-like."""
    if hasattr(vectors, "blocks"):
        yield from vectors.blocks(block, overlap, begin, end)
        return
    for start in range(begin, len(vectors) if end is None else min(end, len(vectors)), block):
        yield start, vectors[start : start + block + overlap]


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
            for lo, hi, c in zip(HISTOGRAM_BINS[:-1], HISTOGRAM_BINS[1:], counts, strict=False)
        },
    }


# ----------------------------------------------------------------------------- uncertainty


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: resample items with replacement ``n_boot`` times."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(0, n_boot, 100):  # blocks of resamples: bounded memory for large N
        k = min(100, n_boot - b)
        idx = rng.integers(0, len(values), size=(k, len(values)))
        means[b : b + k] = values[idx].mean(axis=1)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))


def cluster_bootstrap(
    values: np.ndarray, clusters: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict:
    """Mean of ``values`` with a cluster (block) bootstrap CI: whole clusters are resampled.

    Sequences of one article overlap (they share context chunks), so they are not independent;
    resampling articles keeps that dependence. With cluster sums S_c and sizes n_c, one resample
    draws K clusters with replacement (weights w ~ Multinomial(K, 1/K)) and its mean is
    Σ w_c S_c / Σ w_c n_c. ``n_eff`` = Var(values) / Var(resampled means): the number of
    independent items the data is worth (n when every cluster has one item and they are iid).
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return {
            "mean": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "n": 0,
            "clusters": 0,
            "n_eff": 0.0,
        }
    _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    sizes = np.bincount(inverse).astype(np.float64)
    k = len(sums)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(0, n_boot, 100):  # blocks of resamples: memory bounded by 100 x K weights
        w = rng.multinomial(k, np.full(k, 1.0 / k), size=min(100, n_boot - b)).astype(np.float64)
        means[b : b + len(w)] = (w @ sums) / np.maximum(w @ sizes, 1.0)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    var_means, var_values = float(means.var()), float(values.var())
    noise = 1e-20 * max(1.0, float(values.mean()) ** 2)  # constant values leave only rounding noise in both
    n_eff = var_values / var_means if var_means > noise and var_values > noise else float(n)
    return {
        "mean": float(values.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n": n,
        "clusters": k,
        "n_eff": min(n_eff, float(n)),
    }


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    clusters: np.ndarray | None = None,
) -> dict:
    """Mean of d_i = a_i − b_i over the same items, with its bootstrap CI (paired bootstrap).

    With ``clusters`` (the article of each item) whole articles are resampled, the same ones on
    both sides since d pairs them (``cluster_bootstrap``); the result then carries ``n_eff``.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if clusters is not None:
        return cluster_bootstrap(d, clusters, n_boot, alpha, seed)
    lo, hi = bootstrap_ci(d, n_boot, alpha, seed)
    return {"mean": float(d.mean()), "ci_low": lo, "ci_high": hi, "n": int(len(d))}


def cluster_bootstrap_difference(
    a: np.ndarray,
    a_clusters: np.ndarray,
    b: np.ndarray,
    b_clusters: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """mean(a) − mean(b) over two item sets drawn from one set of clusters, with a cluster bootstrap CI.

    The items of ``a`` and ``b`` may differ (P(0) is scored on every sequence, P(+3) only where a chunk
    three steps on exists) but their clusters (articles) are one population: each resample draws the
    clusters once (weights w ~ Multinomial(K, 1/K) over the union of clusters) and recomputes both
    means on the same draw, Σ w_c S^a_c / Σ w_c n^a_c − Σ w_c S^b_c / Σ w_c n^b_c. The CI is that of
    the reported difference itself (the same statistic, resampled), not of a paired proxy on a subset.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    value = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
    if not len(a) or not len(b):
        return {"mean": value, "ci_low": float("nan"), "ci_high": float("nan"), "clusters": 0}
    _, inverse = np.unique(np.concatenate([np.asarray(a_clusters), np.asarray(b_clusters)]), return_inverse=True)
    ia, ib = inverse[: len(a)], inverse[len(a) :]
    k = int(inverse.max()) + 1
    sa, na = np.bincount(ia, weights=a, minlength=k), np.bincount(ia, minlength=k).astype(np.float64)
    sb, nb = np.bincount(ib, weights=b, minlength=k), np.bincount(ib, minlength=k).astype(np.float64)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for s in range(0, n_boot, 100):  # blocks of resamples: memory bounded by 100 x K weights
        w = rng.multinomial(k, np.full(k, 1.0 / k), size=min(100, n_boot - s)).astype(np.float64)
        diffs[s : s + len(w)] = (w @ sa) / np.maximum(w @ na, 1.0) - (w @ sb) / np.maximum(w @ nb, 1.0)
    lo, hi = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"mean": value, "ci_low": float(lo), "ci_high": float(hi), "clusters": k}


# ----------------------------------------------------------------------------- data alignment


def neighbour_indices(anchor: np.ndarray, article_id: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk index ``anchor + k`` and whether it exists inside the anchor's article."""
    j = anchor + k
    ok = (j >= 0) & (j < len(article_id))
    ok[ok] = article_id[j[ok]] == article_id[anchor[ok]]
    return np.where(ok, j, 0), ok


def similarity_profile(
    query: np.ndarray, anchor: np.ndarray, vectors: np.ndarray, article_id: np.ndarray, offsets=range(-3, 4)
) -> dict:
    """P(k) = mean over items of cos(query_i, c_{anchor_i + k}) for each offset k, same article only.

    With ``query`` = the last context chunk and ``anchor`` its index this is the data's adjacency
    profile; with ``query`` = a model's predictions and ``anchor`` the target index it is the
    model's offset sweep (GATES.md ``offset_sweep``: k = 0 is the target, k = −1 the last context).
    Offsets with no item are NaN.
    """
    out = {}
    for k in offsets:
        j, ok = neighbour_indices(anchor, article_id, k)
        if not ok.any():
            out[k] = float("nan")
            continue
        out[k] = float(rowwise_cos(query, vectors, np.flatnonzero(ok), j[ok]).mean())  # blockwise: no [N, D] copies
    return out


def anchor_order_margins(gram: np.ndarray, max_offset: int = 3, perm: np.ndarray | None = None) -> np.ndarray:
    """Adjacent-vs-distant margin of every anchor chunk of articles of one length L.

    ``gram`` (A, L, L) holds cos(c_i, c_j) within each of A articles. For anchor i = 0…L−3 (a chunk
    with a next chunk and at least one two steps on):

        d_i = cos(c_i, c_{i+1}) − mean_{k=2…min(K, L−1−i)} cos(c_i, c_{i+k})

    Returns (A, L−2). With ``perm`` (A, L) the chunks of each article are read in that order (a
    within-article shuffle): for any permutation the three chunks of a term are three distinct
    chunks of the article, so E[d_i] = 0 under shuffling and the mean of d is the order signal.
    """
    a_count, length = gram.shape[:2]
    if length < 3:
        return np.empty((a_count, 0))
    rows = np.arange(a_count)[:, None]
    order = np.broadcast_to(np.arange(length), (a_count, length)) if perm is None else perm
    out = np.empty((a_count, length - 2))
    for i in range(length - 2):
        far = range(2, min(max_offset, length - 1 - i) + 1)
        anchor = order[:, i : i + 1]
        near = gram[rows, anchor, order[:, i + 1 : i + 2]][:, 0]
        distant = np.mean([gram[rows, anchor, order[:, i + k : i + k + 1]][:, 0] for k in far], axis=0)
        out[:, i] = near - distant
    return out


def order_permutation_null(
    gram: np.ndarray, max_offset: int, n_perm: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The within-article permutation null of ``anchor_order_margins`` for articles of one length.

    Returns (sums, above): ``sums[r]`` = Σ d over every anchor of the A articles under the r-th
    shuffle (each article shuffled independently), ``above[a]`` = Σ_r ([m_ra > m_a] + ½ [m_ra = m_a])
    where m_a is article a's mean margin in its real order and m_ra under shuffle r (a mid-rank count:
    above[a] / n_perm is the article's one-sided permutation p-value, ½ on average when its order
    carries no signal).
    """
    a_count, length = gram.shape[:2]
    observed = anchor_order_margins(gram, max_offset).mean(axis=1)
    sums, above = np.zeros(n_perm), np.zeros(a_count)
    for r in range(n_perm):
        perm = np.argsort(rng.random((a_count, length)), axis=1)
        m = anchor_order_margins(gram, max_offset, perm)
        sums[r] = m.sum()
        shuffled = m.mean(axis=1)
        tie = np.isclose(shuffled, observed, rtol=0.0, atol=1e-9)
        above += (shuffled > observed) & ~tie
        above += 0.5 * tie
    return sums, above


# ----------------------------------------------------------------------------- model outputs


ROW_BLOCK = 4096  # rows per step of the row-wise products: float64 temporaries stay ~25 MB at 768-D


def rowwise_cos(a: np.ndarray, b: np.ndarray, a_rows=None, b_rows=None) -> np.ndarray:
    """cos(a_i, b_i) for unit rows: Σ_d a_id b_id (float64), over rows ``a_rows`` of ``a`` and
    ``b_rows`` of ``b`` when given (``b`` may be a dataset's bank). Computed a block of rows at a
    time, so no [N, D] copy or float64 temporary of the whole arrays is made."""
    n = len(a_rows) if a_rows is not None else len(b_rows) if b_rows is not None else len(a)
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, ROW_BLOCK):
        ia = slice(s, s + ROW_BLOCK) if a_rows is None else a_rows[s : s + ROW_BLOCK]
        ib = slice(s, s + ROW_BLOCK) if b_rows is None else b_rows[s : s + ROW_BLOCK]
        out[s : s + ROW_BLOCK] = (np.asarray(a[ia], dtype=np.float64) * np.asarray(b[ib], dtype=np.float64)).sum(axis=1)
    return out


def effective_rank(x: np.ndarray) -> float:
    """exp(H(p)) with p_i = σ_i / Σσ over singular values of the centred rows (Roy & Vetterli)."""
    x = np.asarray(x, dtype=np.float64)
    s = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def mean_pairwise_cos(x: np.ndarray) -> float:
    """Mean cos(x_i, x_j) over i ≠ j = (‖Σx‖² − Σ‖x_i‖²) / (n(n−1)) for unit rows."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 2:
        return float("nan")
    s = x.sum(axis=0)
    return float((s @ s - (x * x).sum()) / (n * (n - 1)))


def other_article_cos(pred: np.ndarray, target: np.ndarray, article: np.ndarray, seed: int = 0) -> np.ndarray:
    """cos(ŷ_i, y_π(i)) for a random pairing π with another article's target (same rows shuffled)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(pred))
    clash = article[perm] == article
    for _ in range(10):  # re-draw the few pairs that landed in the same article
        if not clash.any():
            break
        perm[clash] = rng.permutation(perm[clash]) if clash.sum() > 1 else rng.integers(0, len(pred), 1)
        clash = article[perm] == article
    return rowwise_cos(pred, target, b_rows=perm)[~clash]


# ----------------------------------------------------------------------------- retrieval


def retrieval_metrics(ranks: np.ndarray, k_max: int = 50) -> dict:
    """From the 1-based rank of the true next chunk in the retrieved list (0 = not in top k_max).

    R@k = P(1 ≤ rank ≤ k); Contain@50 = R@50; Eff@5 = hits@5 / hits@50 (how much of what is found
    is found early); MRR@50 = mean of 1/rank (0 when not found).
    """
    r = np.asarray(ranks)
    found = r > 0
    hits = lambda k: float(((r > 0) & (r <= k)).mean())  # noqa: E731
    contain = hits(k_max)
    return {
        "r_at_1": hits(1),
        "r_at_5": hits(5),
        "r_at_10": hits(10),
        "contain_at_50": contain,
        "eff_at_5": hits(5) / contain if contain > 0 else 0.0,
        "mrr_at_50": float(np.where(found, 1.0 / np.maximum(r, 1), 0.0).mean()),
    }


def row_hashes(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 64-bit hash per row: h_i = Σ_j w_j · bits(v_ij) (mod 2⁶⁴) with random odd weights w.

    Byte-identical rows get identical hashes; distinct rows collide with probability ~2⁻⁶⁴ per
    pair. Vectorized and blockwise: one pass over a memory-mapped bank.
    """
    d = vectors.shape[1]
    words = (d * vectors.dtype.itemsize + 7) // 8
    w = np.random.default_rng(seed).integers(1, 2**63, size=words, dtype=np.uint64) | np.uint64(1)
    out = np.empty(len(vectors), dtype=np.uint64)
    for s in range(0, len(vectors), BLOCK):
        block = np.ascontiguousarray(vectors[s : s + BLOCK])
        raw = block.view(np.uint8).reshape(len(block), -1)
        if raw.shape[1] % 8:
            raw = np.pad(raw, ((0, 0), (0, 8 - raw.shape[1] % 8)))
        with np.errstate(over="ignore"):
            out[s : s + len(block)] = (raw.view(np.uint64) * w).sum(axis=1, dtype=np.uint64)
    return out


def duplicate_canon(vectors: np.ndarray, hashes: np.ndarray | None = None) -> np.ndarray:
    """canon[i] = the first row whose vector is identical to row i (i itself if unique).

    Exact duplicates are the seeds' cause of R@1 < 1 ("0.946 from duplicates") and must not count
    as misses. Identity is decided by ``row_hashes``.
    """
    h = row_hashes(vectors) if hashes is None else hashes
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    return first[inverse].astype(np.int64)


def ranks_of(truth: np.ndarray, retrieved: np.ndarray, canon: np.ndarray | None = None) -> np.ndarray:
    """1-based position of ``truth[i]`` in ``retrieved[i]`` (0 when absent).

    With ``canon`` (``duplicate_canon`` of the bank) an exact duplicate of the true chunk counts
    as the true chunk: a bank with repeated sentences must not count a correct answer as a miss.
    """
    if canon is not None:
        hit = (retrieved >= 0) & (canon[np.maximum(retrieved, 0)] == canon[truth][:, None])
    else:
        hit = retrieved == truth[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)


def contrastive_accuracy(
    pred: np.ndarray, target: np.ndarray, article: np.ndarray, n_neg: int = 100, seed: int = 0
) -> float:
    """Share of (item, other-article target) pairs where the other target is farther than the true one.

    acc = mean_i mean_{j ∈ N_i} [cos(ŷ_i, y_j) < cos(ŷ_i, y_i)] with N_i up to ``n_neg`` random
    items of other articles.
    """
    rng = np.random.default_rng(seed)
    pred, target = np.asarray(pred, np.float32), np.asarray(target, np.float32)
    pos = (pred * target).sum(axis=1)
    j = rng.integers(0, len(pred), size=(len(pred), n_neg))
    valid = article[j] != article[:, None]
    wins = 0
    for s in range(0, len(pred), 256):  # (256, n_neg, D) at a time: bounded memory
        neg = np.einsum("id,ikd->ik", pred[s : s + 256], target[j[s : s + 256]])
        wins += int(((neg < pos[s : s + 256, None]) & valid[s : s + 256]).sum())
    return float(wins / max(valid.sum(), 1))


def latency_ratio(timings: dict) -> dict:
    """The latency verdict's figures from per-call timings (one round of ``evaluation.batch1_latency``).

    robust_ms = max(P95 of the model's CPU time, P50 of its wall time): CPU time ignores time spent
    waiting for a core (a busy neighbour), the median wall time still counts a model that sleeps or
    waits. ref_ms = P50 of the reference probe's CPU time, timed beside each call in the same
    thread. ratio = robust_ms / ref_ms: the model's cost in units of this machine's speed.
    """
    ms = {k: np.asarray(timings[k], dtype=np.float64) * 1e3 for k in ("cpu", "wall", "ref_cpu", "ref_wall")}
    robust = max(float(np.percentile(ms["cpu"], 95)), float(np.percentile(ms["wall"], 50)))
    ref = float(np.percentile(ms["ref_cpu"], 50))
    return {
        "p95_cpu_ms": float(np.percentile(ms["cpu"], 95)),
        "robust_ms": robust,
        "reference_ms": ref,
        "reference_wall_ms": float(np.percentile(ms["ref_wall"], 50)),
        "ratio": robust / ref if ref > 0 else float("nan"),
    }


MAX_DISTURBANCE = 99.0  # a round without an undisturbed probe: its disturbance (JSON has no inf)
MIN_CLEAN_CALLS = 5  # fewer undisturbed calls of a kind in the chosen round: its figures use every call of it


def latency_rounds(timings: dict, load: dict | None = None) -> dict:
    """The latency verdict from ``evaluation.batch1_latency``'s rounds: the least-disturbed round, its
    figures and how disturbed it was.

    Inputs (per call, seconds): ``wall``, ``cpu`` (calling thread) and ``switched`` (involuntary
    context switches) of the model and, prefixed ``ref_``, of the reference probe beside it;
    ``round``; ``probe_first`` (the probe ran before the model in that pair). Missing keys (a plain
    dict of the four timings) mean one round, one order, no switches.

    A call is disturbed when the scheduler took its core during it (``switched`` > 0) or, for the
    probe (which never waits by itself), when its wall time exceeds its CPU time by more than the
    fastest probe (P10 of all probe walls: it waited for a core at least as long as it ran). A
    model's own waits (a sleep, I/O) are voluntary: they are not disturbance and stay in its wall
    time. The probe is timed in two positions (after the model, after a probe), whose speeds differ
    by the caches (0.077 vs 0.054 ms on an idle Sapphire Rapids core), so each position is compared
    with itself: floor_o = P10 of its undisturbed wall times over the run (the fastest reference
    seen, ``reference_fastest_ms`` = the lower floor). Per round r:

        slowdown_r    = max over positions o of P50(undisturbed probe wall in r, o) / floor_o − 1
                        (a neighbour on the caches, the memory bus, a sibling hyperthread, a clock)
        preempted_r   = share of the round's model and probe calls that were disturbed
        disturbance_r = max(slowdown_r, preempted_r)

    The chosen round has the least disturbance (the earliest on a tie); ``load_disturbance`` is its
    disturbance, which the profile caps ("too busy to time"). Its figures use its undisturbed calls
    (every call of a kind when fewer than ``MIN_CLEAN_CALLS``): ``latency_percentiles`` of the model's
    wall times, ``p95_cpu_ms`` and ``robust_ms`` as in ``latency_ratio``, ``reference_ms`` = the mean
    over positions of the probe's P50 CPU time (``reference_wall_ms`` the same of wall time), and
    ratio = robust_ms / reference_ms. ``load`` (``Timings.load``) adds ``runnable_per_core``: the
    other runnable tasks on the machine per core (median of the samples).
    """
    ms = {k: np.asarray(timings[k], dtype=np.float64) * 1e3 for k in ("cpu", "wall", "ref_cpu", "ref_wall")}
    n = len(ms["wall"])
    rounds = np.asarray(timings.get("round", np.zeros(n)), dtype=np.int64)
    switched = np.asarray(timings.get("switched", np.zeros(n))) > 0
    first = np.asarray(timings.get("probe_first", np.zeros(n)), dtype=bool)
    positions = [o for o in (~first, first) if o.any()]
    fastest = float(np.percentile(ms["ref_wall"], 10))
    probe_bad = (np.asarray(timings.get("ref_switched", np.zeros(n))) > 0) | (ms["ref_wall"] - ms["ref_cpu"] > fastest)
    probe_ok = ~probe_bad
    floors = [
        float(np.percentile(ms["ref_wall"][o & probe_ok], 10)) if (o & probe_ok).any() else fastest for o in positions
    ]
    ids = np.unique(rounds)
    by_round = [rounds == r for r in ids]
    slowdown, preempted = [], []
    for sel in by_round:
        slow = 0.0
        for o, floor in zip(positions, floors, strict=True):
            clean = sel & o & probe_ok
            if not clean.any() or floor <= 0:
                slow = MAX_DISTURBANCE
                break
            slow = max(slow, float(np.percentile(ms["ref_wall"][clean], 50)) / floor - 1.0)
        slowdown.append(min(slow, MAX_DISTURBANCE))
        preempted.append(float((switched[sel].sum() + probe_bad[sel].sum()) / (2 * sel.sum())))
    disturbance = [max(s, p) for s, p in zip(slowdown, preempted, strict=True)]
    best = int(np.argmin(disturbance))
    sel = by_round[best]
    model_sel = sel & ~switched if (sel & ~switched).sum() >= MIN_CLEAN_CALLS else sel
    figures = latency_ratio({k: ms[k][model_sel] / 1e3 for k in ("cpu", "wall", "ref_cpu", "ref_wall")})
    ref_cpu, ref_wall = [], []
    for o in positions:
        clean = sel & o & probe_ok if (sel & o & probe_ok).sum() >= MIN_CLEAN_CALLS else sel & o
        if clean.any():
            ref_cpu.append(float(np.percentile(ms["ref_cpu"][clean], 50)))
            ref_wall.append(float(np.percentile(ms["ref_wall"][clean], 50)))
    ref = float(np.mean(ref_cpu))
    figures.update(
        reference_ms=ref,
        reference_wall_ms=float(np.mean(ref_wall)),
        ratio=figures["robust_ms"] / ref if ref > 0 else float("nan"),
    )
    out = {
        **latency_percentiles(ms["wall"][model_sel] / 1e3),
        **figures,
        "load_disturbance": disturbance[best],
        "probe_slowdown": slowdown[best],
        "preempted_share": preempted[best],
        "reference_fastest_ms": min(floors),
        "rounds": len(ids),
        "chosen_round": int(ids[best]),
        "round_disturbance": [round(d, 4) for d in disturbance],
        "n_calls_total": n,
    }
    load = load or {}
    if load.get("runnable"):
        others = max(float(np.median(load["runnable"])) - 1.0, 0.0)  # the tasks besides this one
        out["runnable_per_core"] = others / max(int(load.get("cores", 1)), 1)
    return out


def latency_percentiles(seconds: np.ndarray) -> dict:
    """P50/P95/P99 (and mean) of per-call latencies, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": float(ms.mean()),
        "n_calls": int(len(ms)),
    }
