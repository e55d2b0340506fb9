"""Data triage (the seeds' P1): where did coherence fall, and a quality-filtered dataset.

Two tools, both built on the project's one adjacency coherence (``lvm.metrics.adjacency_coherence``)
and on the ``coherence`` / ``coherence_drift`` gates (``lvm.gates``):

- ``coherence_report``: the statistics of both gates for a dataset (and a baseline, side by side,
  change in pp per 0.1 bin as in the seeds' table), the gates' verdicts, and a per-segment
  breakdown (article-id ranges or topics) sorted by how far each segment fell.
- ``filter_dataset``: the seeds' quality filter (keep sequences whose score ≥ 0.35, drop articles
  matching ``List of|Disambiguation|Category:``) written as a new dataset folder with a mask over
  the parent's sequences, a before/after summary and provenance.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np

from lvm import __version__
from lvm import gates as G
from lvm import metrics as M
from lvm.data.datasets import Dataset, SequenceView, open_dataset, view_parent_ref, write_dataset
from lvm.data.splits import SPLIT_NAMES
from lvm.errors import LvmError
from lvm.io import atomic_dir, refuse_foreign_folder, utc_timestamp, write_atomic, write_json_atomic
from lvm.profiles import profile_for_dataset

SEGMENT_BY = ("article_range", "topic")
DEFAULT_SEGMENTS = 10  # equal article-id ranges when no width is given (the coherence_drift gate's default)
# the seeds' quality filter (004: "Min adjacency coherence: 0.35", "Text blocklist: ...")
MIN_COHERENCE = 0.35
BLOCKLIST = r"List of|Disambiguation|Category:"
SEQUENCE_SCORE = (
    "score of the sequence with target chunk t and context chunks t-n..t-1 (n = min(position, ctx)) = "
    "mean over i = t-n .. t-1 of cos(c_i, c_i+1), the n adjacency cosines of consecutive chunks inside "
    "context + target (lvm.metrics.adjacency_coherence)"
)
# parent meta keys a filtered dataset inherits: the vector space, profile and chunk provenance.
# build_key / vectors_key are not inherited: they would let `lvm build-data` mistake it for a build.
INHERITED_META = ("encoder", "gate_profile", "synthetic", "corpus", "chunker", "split_policy")


# ----------------------------------------------------------------------------- shared pieces


def _open_pair(dataset_path, baseline_path) -> tuple[Dataset, Dataset | None]:
    """Open a dataset and an optional baseline; refuse to compare two vector spaces."""
    ds = open_dataset(dataset_path)
    if baseline_path is None:
        return ds, None
    base = open_dataset(baseline_path)
    if base.encoder_fingerprint != ds.encoder_fingerprint:
        raise LvmError(
            f"{ds.path} and baseline {base.path} were encoded with different encoders (fingerprint "
            f"{ds.encoder_fingerprint} vs {base.encoder_fingerprint}): refusing to compare their coherence"
        )
    return ds, base


def _pair_coherence(ds: Dataset) -> tuple[np.ndarray, dict]:
    """(cos of every within-article adjacent pair, its summary); an error if there is none."""
    cos = ds.adjacency
    if len(cos) == 0:
        raise LvmError(f"{ds.path}: no article has two chunks, so adjacency coherence is undefined")
    return cos, M.coherence_summary(cos)


def _pair_start(ds: Dataset) -> np.ndarray:
    """Chunk index t of each pair (c_t, c_t+1) in the order ``adjacency_coherence`` returns them."""
    return np.flatnonzero(ds.article_id[1:] == ds.article_id[:-1])


def _describe(ds: Dataset) -> dict:
    return {
        "path": str(ds.path),
        "name": ds.path.name,
        "fingerprint": ds.encoder_fingerprint,
        "content_hash": ds.content_hash,
    }


def _rel(new: float, base: float) -> float:
    return (new - base) / base if base else float("nan")


# ----------------------------------------------------------------------------- coherence report


def _with_id_range(rows: list[dict]) -> list[dict]:
    """Add first/last article id to article-range rows ("400-599" -> 400, 599)."""
    for r in rows:
        lo, hi = r["segment"].split("-")
        r["first_article"], r["last_article"] = int(lo), int(hi)
    return rows


def _verdict(result: G.GateResult) -> dict:
    metrics = {k: v for k, v in result.metrics.items() if k not in ("segments", "histogram")}
    return {"status": result.status, "message": result.message, "metrics": metrics}


def _check_segments(by: str, segment_width: int | None) -> None:
    if by not in SEGMENT_BY:
        raise LvmError(f"segments by {by!r}: expected one of {', '.join(SEGMENT_BY)}")
    if segment_width is not None and by != "article_range":
        raise LvmError("a segment width applies to article-id ranges, not to topics: give one or the other")
    if segment_width is not None and segment_width < 1:
        raise LvmError(f"segment width must be at least 1 article, got {segment_width}")


def _histogram_rows(stats: dict, base_stats: dict | None) -> list[dict]:
    """One row per 0.1 bin: the dataset's share, the baseline's and the change in percentage points."""
    rows = []
    for b, share in stats["histogram"].items():
        row = {"bin": b, "dataset": share}
        if base_stats:
            row["baseline"] = base_stats["histogram"][b]
            row["change_pp"] = 100 * (share - row["baseline"])
        rows.append(row)
    return rows


def _drift(stats: dict, base_stats: dict | None) -> dict | None:
    if not base_stats:
        return None
    return {
        "mean_delta": stats["mean"] - base_stats["mean"],
        "mean_drift_rel": _rel(stats["mean"], base_stats["mean"]),
        "low_share_delta_pp": 100 * (stats["low_share"] - base_stats["low_share"]),
    }


def coherence_report(
    dataset_path,
    baseline_path=None,
    segment_width: int | None = None,
    by: str = "article_range",
    profile: str | None = None,
) -> dict:
    """Statistics, verdicts and per-segment breakdown of adjacency coherence cos(c_t, c_t+1).

    - ``stats``: mean, std, p10/p50/p90, share < 0.30 and the 0.1-bin histogram of the dataset
      (and of the baseline), as in ``lvm.metrics.coherence_summary``;
    - ``histogram``: one row per bin with both shares and the change in percentage points;
    - ``verdicts``: the ``coherence`` gate on the dataset and the ``coherence_drift`` gate
      (``lvm.gates.coherence_drift``; SKIP without a baseline) under the dataset's gate profile;
    - ``segments``: mean coherence per article-id range (``segment_width`` articles each; default
      10 equal ranges) or per topic (``by="topic"``), sorted by drop = reference mean − segment
      mean, the reference being the baseline's mean (the dataset's own mean without a baseline).

    Raises ``LvmError`` when the baseline was encoded with another encoder (fingerprints differ).
    """
    _check_segments(by, segment_width)
    t0 = time.perf_counter()
    ds, base = _open_pair(dataset_path, baseline_path)
    for d in (ds, base):  # the article tables (segments, topics) are read and checked, damage refused
        _ = d.articles if d is not None else None
    prof = profile_for_dataset(ds.meta, profile)
    cos, stats = _pair_coherence(ds)
    base_stats = _pair_coherence(base)[1] if base is not None else None

    ref_mean = base_stats["mean"] if base_stats else stats["mean"]
    rows = G.segment_breakdown(ds, ref_mean, DEFAULT_SEGMENTS, by, width=segment_width)
    if by == "article_range":
        rows = _with_id_range(rows)

    histogram, drift = _histogram_rows(stats, base_stats), _drift(stats, base_stats)
    verdicts = {
        "coherence": _verdict(
            G.judge("coherence", stats, prof, dataset=ds.path.name)
        ),  # = gates.coherence, stats computed once
        "coherence_drift": _verdict(G.coherence_drift(ds, base, prof)),
    }
    return {
        "dataset": {**_describe(ds), "stats": stats},
        "baseline": {**_describe(base), "stats": base_stats} if base is not None else None,
        "profile": prof.name,
        "drift": drift,
        "histogram": histogram,
        "verdicts": verdicts,
        "segments": {
            "by": by,
            "width": segment_width,
            "count": DEFAULT_SEGMENTS if by == "article_range" and segment_width is None else None,
            "reference": "baseline mean" if base_stats else "dataset mean",
            "reference_mean": ref_mean,
            "rows": rows,
        },
        "seconds": time.perf_counter() - t0,
    }


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _signed(v: float, unit: str = "", digits: int = 1) -> str:
    return f"{v:+.{digits}f}{unit}"


def format_report(report: dict) -> str:
    """The report as Markdown-style tables (the seeds' "| Range | 584k | 790k | Change |")."""
    new, base = report["dataset"], report["baseline"]
    s = new["stats"]
    lines = [f"Adjacency coherence cos(c_t, c_t+1) within articles — profile {report['profile']}"]
    if base:
        b = base["stats"]
        lines += [
            f"base = {base['path']} ({b['n_pairs']} pairs)",
            f"new  = {new['path']} ({s['n_pairs']} pairs)",
            "",
            "| Metric | base | new | Change |",
            "|---|---|---|---|",
        ]
        for key in ("mean", "std", "p10", "p50", "p90"):
            change = _signed(s[key] - b[key], digits=4)
            if key == "mean":
                change += f" ({_signed(100 * report['drift']['mean_drift_rel'], '%')})"
            lines.append(f"| {key} | {b[key]:.4f} | {s[key]:.4f} | {change} |")
        lines.append(
            f"| low (<{s['low_threshold']:.2f}) | {_pct(b['low_share'])} | {_pct(s['low_share'])} | "
            f"{_signed(report['drift']['low_share_delta_pp'], 'pp', 2)} |"
        )
        lines += ["", "| Range | base | new | Change |", "|---|---|---|---|"]
        lines += [
            f"| {h['bin']} | {_pct(h['baseline'])} | {_pct(h['dataset'])} | {_signed(h['change_pp'], 'pp')} |"
            for h in report["histogram"]
        ]
    else:
        lines += [f"new = {new['path']} ({s['n_pairs']} pairs)", "", "| Metric | new |", "|---|---|"]
        lines += [f"| {key} | {s[key]:.4f} |" for key in ("mean", "std", "p10", "p50", "p90")]
        lines.append(f"| low (<{s['low_threshold']:.2f}) | {_pct(s['low_share'])} |")
        lines += ["", "| Range | new |", "|---|---|"]
        lines += [f"| {h['bin']} | {_pct(h['dataset'])} |" for h in report["histogram"]]
    lines.append("")
    for gate, v in report["verdicts"].items():
        lines.append(f"{gate}: {v['status']}" + (f" — {v['message']}" if v["message"] else ""))
    seg = report["segments"]
    what = (
        "topics"
        if seg["by"] == "topic"
        else f"article ids, {seg['width']} per segment"
        if seg["width"]
        else f"article ids, {seg['count']} equal ranges"
    )
    lines += [
        "",
        f"Segments ({what}), sorted by drop vs the {seg['reference']} {seg['reference_mean']:.4f}:",
        "| Segment | pairs | mean | low (<0.30) | drop |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['segment']} | {r['pairs']} | {r['mean']:.4f} | {_pct(r['low_share'])} | "
        f"{_signed(r['drop_vs_baseline'], digits=4)} |"
        for r in seg["rows"]
    ]
    return "\n".join(lines)


def plot_histograms(report: dict, png_path) -> Path:
    """Overlay of the 0.1-bin histograms of the dataset and the baseline; written atomically."""
    from lvm.report.plots import coherence_histogram

    png_path = Path(png_path)
    bins = [h["bin"] for h in report["histogram"]]
    series = [("new", report["dataset"], [h["dataset"] for h in report["histogram"]])]
    if report["baseline"]:
        series.insert(0, ("base", report["baseline"], [h["baseline"] for h in report["histogram"]]))
    labelled = [
        (f"{label}: {d['name']} (mean {d['stats']['mean']:.3f}, low {_pct(d['stats']['low_share'])})", shares)
        for label, d, shares in series
    ]
    # the low-coherence line falls between bins
    fig = coherence_histogram(
        bins, labelled, overlay=True, xlabel="adjacency cosine cos(c_t, c_t+1)", marker_x=M.LOW_COHERENCE * 10 - 0.5
    )
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fmt = png_path.suffix.lstrip(".").lower() or "png"
    try:
        write_atomic(png_path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=100, bbox_inches="tight"))
    except (ValueError, OSError) as exc:
        raise LvmError(f"cannot write plot {png_path}: {exc}") from None
    return png_path


# ----------------------------------------------------------------------------- quality filter


def _cos_at_chunk(ds: Dataset, cos: np.ndarray) -> np.ndarray:
    """at[i] = cos(c_i, c_i+1) when both chunks are in one article, else 0 (``cos`` from adjacency_coherence)."""
    at = np.zeros(ds.n_chunks, dtype=np.float64)
    at[_pair_start(ds)] = cos
    return at


def sequence_scores(ds: Dataset, views: list[SequenceView], cos: np.ndarray | None = None) -> np.ndarray:
    """Score of every sequence of ``views`` (in order): mean of its n adjacency cosines.

    For target chunk t with context t-n..t-1: score = (1/n) Σ_{i=t-n}^{t-1} cos(c_i, c_{i+1}),
    from ``lvm.metrics.adjacency_coherence`` (``cos``, computed if not given) via prefix sums;
    every pair of a sequence lies inside one article.
    """
    at = _cos_at_chunk(ds, ds.adjacency if cos is None else cos)
    prefix = np.concatenate([[0.0], np.cumsum(at)])  # prefix[k] = Σ_{i<k} at[i]
    t = np.concatenate([v.targets for v in views])
    n = np.concatenate([v.n_context for v in views])
    return (prefix[t] - prefix[t - n]) / n


def _blocked_articles(ds: Dataset, pattern: re.Pattern) -> np.ndarray:
    """Bool per article: its title or any of its chunk texts matches ``pattern``."""
    blocked = np.array([bool(pattern.search(a.get("title") or "")) for a in ds.articles], dtype=bool)
    hit = np.fromiter((bool(pattern.search(t)) for t in ds.texts), dtype=bool, count=ds.n_chunks)
    blocked[np.unique(ds.article_id[hit])] = True
    return blocked


def _compile(blocklist: str | None) -> re.Pattern | None:
    if not blocklist:
        return None  # an empty pattern would match every article
    try:
        return re.compile(blocklist)
    except re.error as exc:
        raise LvmError(f"blocklist {blocklist!r} is not a valid regular expression ({exc})") from None


def _check_out(out: Path, ds: Dataset) -> None:
    """Before any work: ``out`` is not the dataset itself, and replacing it loses nothing of the
    user's (``lvm.io.refuse_foreign_folder``, checked again when the folder is swapped in)."""
    if out.resolve() == ds.path.resolve():
        raise LvmError(f"--out {out} is the dataset being filtered: write the filtered dataset to another folder")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "meta.json").is_file())):
        raise LvmError(f"{out} exists and is not a dataset folder: refusing to replace it (choose another --out)")
    refuse_foreign_folder(out, "filtered dataset")


def _side(summary: dict, chunks: int, articles: int, sequences: int, seq_score: float, base_mean: float | None) -> dict:
    """One column of the before/after summary."""
    row = {
        "chunks": chunks,
        "articles": articles,
        "sequences": sequences,
        "mean_coherence": summary["mean"],
        "low_share": summary["low_share"],
        "p50": summary["p50"],
        "mean_sequence_score": seq_score,
    }
    if base_mean is not None:
        row["gap_to_baseline_pct"] = 100 * _rel(summary["mean"], base_mean)
    return row


def filter_dataset(
    dataset_path,
    out_dir,
    min_coherence: float = MIN_COHERENCE,
    blocklist: str | None = BLOCKLIST,
    ctx: int = 5,
    min_ctx: int = 1,
    baseline_path=None,
    materialize: bool = False,
) -> dict:
    """Keep sequences with score ≥ ``min_coherence`` outside blocklisted articles; write a new dataset.

    Score of the sequence with target chunk t and context chunks t-n..t-1 (n = min(position, ctx),
    n ≥ ``min_ctx``) = the mean of the adjacency cosines cos(c_i, c_{i+1}) over the consecutive
    pairs inside context + target, i.e. over i = t-n … t-1 (n pairs), from
    ``lvm.metrics.adjacency_coherence``. An article is dropped whole when its title or any of its
    chunk texts matches the ``blocklist`` regex (``re.search``; empty/None: no blocklist).

    The new dataset holds the chunks kept sequences need: every maximal run of consecutive chunks
    covered by kept sequences becomes an article (source id ``"<source_id>#<run>"``, the parent
    article's title, topic and split, so splits stay article-disjoint), so every kept sequence is
    a sequence of the new dataset (runs may add shorter-context ones at their start).

    The new dataset is a view (``lvm.data.datasets``): ``rows.npy`` maps its chunks to the
    parent's, whose vectors and texts it reads through (the parent's content hash is checked on
    open); nothing of the bank is copied. ``materialize=True`` writes a standalone copy instead
    (vectors and texts copied). Written atomically to ``out_dir`` with ``mask.npy`` (bool per
    parent sequence of this ctx/min_ctx, in the order train, val, ood as ``SequenceView`` yields
    them) and ``filter_summary.json``
    (before/after counts, coherence, gap to the baseline's mean). ``meta.json`` records
    ``parent`` {path, content_hash} and ``filter`` (settings) and keeps the parent's encoder
    identity. Returns the summary.
    """
    if not isinstance(min_coherence, (int, float)) or math.isnan(min_coherence):
        raise LvmError(f"min coherence must be a number, got {min_coherence!r}")
    pattern = _compile(blocklist)
    t0 = time.perf_counter()
    ds, base = _open_pair(dataset_path, baseline_path)
    out = Path(out_dir)
    _check_out(out, ds)
    views = [ds.sequences(s, ctx, min_ctx) for s in SPLIT_NAMES]
    sel = _select(ds, views, min_coherence, pattern, ctx, min_ctx, blocklist)
    runs = _kept_runs(ds, sel)
    settings = {
        "min_coherence": float(min_coherence),
        "blocklist": blocklist or None,
        "ctx": ctx,
        "min_ctx": min_ctx,
        "score": SEQUENCE_SCORE,
        "materialized": bool(materialize),
    }
    meta = {k: ds.meta[k] for k in INHERITED_META if k in ds.meta}
    meta.update(
        {
            "lvm_version": __version__,
            "created_at": utc_timestamp(),
            "parent": (
                {"path": str(ds.path.resolve()), "content_hash": ds.content_hash}
                if materialize
                else view_parent_ref(ds, out)
            ),
            "filter": settings,
        }
    )
    with atomic_dir(out, "filtered dataset") as tmp:
        full = _write_filtered(tmp, ds, runs, meta, materialize)
        np.save(tmp / "mask.npy", sel["mask"])
        summary = _filter_summary(ds, base, out, settings, sel, runs, full, meta, min_ctx)
        summary["seconds"] = time.perf_counter() - t0
        write_json_atomic(tmp / "filter_summary.json", summary)
    return summary


def _select(
    ds: Dataset, views: list[SequenceView], min_coherence: float, pattern, ctx: int, min_ctx: int, blocklist
) -> dict:
    """Scores of every sequence (train, val, ood) and which are kept: coherent and not blocklisted."""
    n_seq = sum(len(v) for v in views)
    if n_seq == 0:
        raise LvmError(
            f"{ds.path}: no sequences with ctx={ctx}, min_ctx={min_ctx} (no article has {min_ctx + 1} chunks)"
        )
    from concurrent.futures import ThreadPoolExecutor

    # the blocklist reads the text and article tables (Python-bound) while the adjacency pass reads
    # the bank (I/O and NumPy, which release the GIL): the two overlap
    with ThreadPoolExecutor(1) as pool:
        blocked = pool.submit(_blocked_articles, ds, pattern) if pattern else None
        before_cos = ds.adjacency
        score = sequence_scores(ds, views, before_cos)
        targets = np.concatenate([v.targets for v in views])
        blocked_art = blocked.result() if blocked else np.zeros(len(ds.articles), dtype=bool)
    in_blocked = blocked_art[ds.article_id[targets]]
    coherent = score >= min_coherence
    mask = coherent & ~in_blocked
    if not mask.any():
        raise LvmError(
            f"the filter keeps no sequence of {ds.path} (min coherence {min_coherence}, blocklist {blocklist!r}): "
            "nothing to write"
        )
    return {
        "n_seq": n_seq,
        "before_cos": before_cos,
        "score": score,
        "targets": targets,
        "n_ctx": np.concatenate([v.n_context for v in views]),
        "blocked_art": blocked_art,
        "in_blocked": in_blocked,
        "coherent": coherent,
        "mask": mask,
    }


def _kept_runs(ds: Dataset, sel: dict) -> dict:
    """Chunks covered by kept sequences (t-n .. t each); maximal runs inside one article -> new articles."""
    targets, n_ctx, mask = sel["targets"], sel["n_ctx"], sel["mask"]
    opened = np.bincount(targets[mask] - n_ctx[mask], minlength=ds.n_chunks + 1)
    closed = np.bincount(targets[mask] + 1, minlength=ds.n_chunks + 1)
    keep = np.cumsum(opened - closed)[:-1] > 0
    keep_idx = np.flatnonzero(keep)
    starts = keep.copy()
    starts[1:] &= ~keep[:-1] | (ds.article_id[1:] != ds.article_id[:-1])
    run_first = np.flatnonzero(starts)  # parent chunk index where each run starts
    new_article = np.cumsum(starts)[keep_idx] - 1  # run of each kept chunk
    run_parent = ds.article_id[run_first]  # parent article of each run
    first_run_of = np.flatnonzero(np.r_[True, run_parent[1:] != run_parent[:-1]])
    run_index = np.arange(len(run_first)) - np.repeat(first_run_of, np.diff(np.r_[first_run_of, len(run_first)]))
    return {
        "keep_idx": keep_idx,
        "new_article": new_article,
        "new_position": (keep_idx - run_first[new_article]).astype(np.int32),
        "run_parent": run_parent,
        "run_index": run_index,
    }


def _write_filtered(tmp: Path, ds: Dataset, runs: dict, meta: dict, materialize: bool) -> dict:
    """The kept chunks as a dataset folder in ``tmp``: a view of ``ds`` (``rows.npy``), or with
    ``materialize`` a standalone copy (vectors copied blockwise: bounded memory)."""
    keep_idx, parents = runs["keep_idx"], ds.articles
    articles = [
        {
            "source_id": f"{parents[a]['source_id']}#{k}",
            "title": parents[a].get("title", ""),
            "topic": parents[a].get("topic", ""),
        }
        for a, k in zip(runs["run_parent"].tolist(), runs["run_index"].tolist(), strict=False)
    ]
    article_split = np.array(
        [SPLIT_NAMES.index(parents[a]["split"]) for a in runs["run_parent"].tolist()], dtype=np.int8
    )
    columns = {
        "article_id": runs["new_article"],
        "position": runs["new_position"],
        "articles": articles,
        "article_split": article_split,
        "meta": meta,
    }
    if not materialize:
        return write_dataset(tmp, texts=None, parent=ds, rows=keep_idx, **columns)
    texts = ds.texts
    vec = np.lib.format.open_memmap(
        tmp / "vectors.npy", mode="w+", dtype=ds.vectors.dtype, shape=(len(keep_idx), ds.dim)
    )
    for s in range(0, len(keep_idx), M.BLOCK):
        vec[s : s + M.BLOCK] = ds.vectors[keep_idx[s : s + M.BLOCK]]
    vec.flush()
    del vec
    return write_dataset(tmp, texts=[texts[i] for i in keep_idx.tolist()], probe_vectors=ds.probe_vectors, **columns)


def _filter_summary(
    ds: Dataset, base, out: Path, settings: dict, sel: dict, runs: dict, full: dict, meta: dict, min_ctx: int
) -> dict:
    """filter_summary.json: before/after counts and coherence, what was dropped and why, the mask's layout."""
    keep_idx, new_article, parents = runs["keep_idx"], runs["new_article"], ds.articles
    mask, score = sel["mask"], sel["score"]
    base_mean = _pair_coherence(base)[1]["mean"] if base is not None else None
    # a pair of the new dataset is a pair of consecutive parent chunks of one article: same cosine
    cos_at = _cos_at_chunk(ds, sel["before_cos"])
    after = M.coherence_summary(cos_at[keep_idx[:-1][new_article[1:] == new_article[:-1]]])
    n_seq_after = int((runs["new_position"] >= min_ctx).sum())  # SequenceView's rule, summed over the splits
    c = full["counts"]
    n_articles = int(sum(1 for a in parents if a["n_chunks"]))
    return {
        "dataset": str(ds.path),
        "out": str(out),
        "filter": settings,
        "baseline": {"path": str(base.path), "mean_coherence": base_mean} if base is not None else None,
        "before": _side(
            M.coherence_summary(sel["before_cos"]),
            ds.n_chunks,
            n_articles,
            sel["n_seq"],
            float(score.mean()),
            base_mean,
        ),
        "after": {
            **_side(after, c["chunks"], c["articles"], n_seq_after, float(score[mask].mean()), base_mean),
            "parent_articles": int(len(np.unique(runs["run_parent"]))),
        },
        "sequences": {
            "total": sel["n_seq"],
            "kept": int(mask.sum()),
            "kept_share": float(mask.mean()),
            "dropped_low_coherence": int((~sel["coherent"] & ~sel["in_blocked"]).sum()),
            "dropped_blocklist": int(sel["in_blocked"].sum()),
        },
        "blocklisted_articles": int(sel["blocked_art"].sum()),
        "blocklisted_titles": [parents[a].get("title", "") for a in np.flatnonzero(sel["blocked_art"])[:20].tolist()],
        "mask": {
            "file": "mask.npy",
            "length": sel["n_seq"],
            "order": "train, val, ood sequences as SequenceView yields them",
            "ctx": settings["ctx"],
            "min_ctx": min_ctx,
        },
        "index": "none: run `lvm build-index` on the filtered dataset",
        "storage": "standalone copy"
        if settings.get("materialized")
        else "view: reads vectors and texts through the parent",
        "parent": meta["parent"],
    }


def format_filter_summary(summary: dict) -> str:
    """Before/after table of a filter run (the seeds' "Unfiltered -> Filtered")."""
    b, a, s = summary["before"], summary["after"], summary["sequences"]
    lines = [
        f"{summary['out']}: kept {s['kept']} of {s['total']} sequences ({_pct(s['kept_share'])}); "
        f"dropped {s['dropped_low_coherence']} below {summary['filter']['min_coherence']}, "
        f"{s['dropped_blocklist']} in {summary['blocklisted_articles']} blocklisted articles",
        "",
        "| | before | after |",
        "|---|---|---|",
    ]
    for key in ("chunks", "articles", "sequences"):
        lines.append(f"| {key} | {b[key]} | {a[key]} |")
    lines.append(f"| mean coherence | {b['mean_coherence']:.4f} | {a['mean_coherence']:.4f} |")
    lines.append(f"| low (<{M.LOW_COHERENCE:.2f}) | {_pct(b['low_share'])} | {_pct(a['low_share'])} |")
    lines.append(f"| mean sequence score | {b['mean_sequence_score']:.4f} | {a['mean_sequence_score']:.4f} |")
    if "gap_to_baseline_pct" in b:
        lines.append(
            f"| gap to baseline mean {summary['baseline']['mean_coherence']:.4f} | "
            f"{_signed(b['gap_to_baseline_pct'], '%')} | {_signed(a['gap_to_baseline_pct'], '%')} |"
        )
    return "\n".join(lines)
