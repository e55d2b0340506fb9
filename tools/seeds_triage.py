"""The seeds' two data-triage tools, re-stated from their published description (for benchmarks).

The seeds' team measured a coherence drift (``measure_coherence_drift.py``) and built a quality
mask (``build_quality_mask.py``) over their sequence file ``training_sequences_ctx5.npz``. Their
code is not published; this is what their runbooks describe, written the straightforward NumPy
way (no artificial slowness: full arrays via ``np.load`` as a plain script reads them, then
vectorised ``einsum`` passes, no Python loop over rows). It exists so ``tests/bench_triage.py``
can time their computation against ``lvm coherence`` / ``lvm filter`` on the same data.

What it relies on (quoted from ../shared/seeds/; the text encoding is mangled there in places):

- 001_2da74f744f1f5208.txt: ``5. **Adjacency Coherence** - cos(t,t+1) distribution check`` and
  ``data = np.load('artifacts/lvm/training_sequences_ctx5.npz')`` /
  ``targets = data['target_vectors']`` (how their scripts read the file), ``3. **Filter junk**:
  Remove "List of...", disambiguation pages``.
- 004_3158926331ca8e7b.txt, "Coherence Drift Analysis": ``Mean adjacency cosine: 0.4842``,
  ``Std:``, ``Low coherence (<0.30): 17.91%``, ``Median (p50):``, ``P90:``;
  ``Mean coherence drift:  -0.1475 (-30.5%)``, ``Low-coherence change:  +26.87pp``,
  ``Verdict:               SIGNIFICANT QUALITY DEGRADATION``; the distribution table
  ``| Range | 584k | 790k | Change |`` in bins ``[0.0, 0.1)`` … ``[0.6, 0.7)``, ``[0.7+)`` that
  sum to 100 %; ``coherence_comparison.json - Detailed coherence metrics (584k vs 790k)``.
- 004, "Quality Filtering Results": ``Min adjacency coherence: 0.35``,
  ``Text blocklist: "List of|Disambiguation|Category:"``, ``Original:  726,014 sequences``,
  ``Kept:      277,078 sequences (38.2%)``, ``Quality metrics (filtered): Mean coherence: 0.4250``,
  ``Low coherence (<0.30): 21.1%``; ``quality_mask_790k.npy - Boolean mask (726k entries, 38.2%
  True)``.

Hence:

- drift: the adjacency cosines of adjacent rows of ``target_vectors`` (their vector stream:
  row i+1's target is the chunk after row i's, across article boundaries too, as their builder
  slid one window over all articles back to back), for the new and the baseline file; mean,
  std, p50, p90, share < 0.30, shares per 0.1 bin (below 0 in the first, ≥ 1 in the last), the
  drift of the mean (absolute and relative) and of the low share (pp), a verdict, the table.
- mask: a sequence's coherence = the mean of the adjacent-row cosines of its rows (its ctx
  context vectors then its target: ctx cosines); keep it when ≥ 0.35 and its target text does
  not match the blocklist (``re.search``); ``np.save`` the boolean mask (one entry per row);
  print the kept counts and the adjacency coherence of the kept rows' targets.

Assumed where the runbooks say nothing: the verdict's thresholds (a relative drop of the mean
beyond 10 % or a low-share rise beyond 10 pp is "SIGNIFICANT", beyond 5 % / 5 pp "MINOR").

The exporter ``export_npz`` writes a dataset folder as the seeds' stream layout (what
``lvm/data/interop.py`` imports as ``layout: "stream"`` and tests/test_interop.py builds with
``np.savez(npz, context_sequences=..., target_vectors=..., article_ids=...)``): row i has
context = chunks i..i+ctx-1 and target = chunk i+ctx of the whole bank, article id = the
target's. It streams block by block into the zip (same bytes as ``np.savez``), so memory stays
bounded whatever the bank's size.

CLI::

    python tools/seeds_triage.py drift NEW.npz BASE.npz [--json-out FILE]
    python tools/seeds_triage.py mask IN.npz --out MASK.npy [--min-coherence 0.35] [--blocklist REGEX]
    python tools/seeds_triage.py export DATASET_DIR OUT.npz [--ctx 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

CTX = 5
MIN_COHERENCE = 0.35
BLOCKLIST = "List of|Disambiguation|Category:"
LOW = 0.30
BIN_EDGES = np.linspace(0.0, 1.0, 11)  # bins of 0.1
TABLE_BINS = 7  # the seeds' table: [0.0, 0.1) … [0.6, 0.7), then [0.7+)


# ----------------------------------------------------------------------------- drift


def adjacency_cosines(vectors: np.ndarray) -> np.ndarray:
    """cos(v_i, v_i+1) of every pair of adjacent rows."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    dots = np.einsum("ij,ij->i", vectors[:-1], vectors[1:])
    return dots / np.maximum(norms[:-1] * norms[1:], 1e-12)


def coherence_stats(cos: np.ndarray) -> dict:
    counts, _ = np.histogram(np.clip(cos, 0.0, 0.999999), bins=BIN_EDGES)
    shares = counts / len(cos)
    return {
        "n_pairs": int(len(cos)),
        "mean": float(cos.mean()),
        "std": float(cos.std()),
        "low_share": float((cos < LOW).mean()),
        "p50": float(np.percentile(cos, 50)),
        "p90": float(np.percentile(cos, 90)),
        "histogram": {
            f"[{lo:.1f}, {hi:.1f})": float(s) for lo, hi, s in zip(BIN_EDGES, BIN_EDGES[1:], shares, strict=False)
        },
    }


def file_coherence(npz_path) -> dict:
    data = np.load(npz_path)
    targets = data["target_vectors"]  # the whole array, as their scripts read it
    return coherence_stats(adjacency_cosines(targets))


def verdict(rel: float, low_pp: float) -> str:
    if rel < -0.10 or low_pp > 10:
        return "SIGNIFICANT QUALITY DEGRADATION"
    if rel < -0.05 or low_pp > 5:
        return "MINOR DRIFT"
    return "STABLE"


def measure_drift(new_npz, base_npz) -> dict:
    base, new = file_coherence(base_npz), file_coherence(new_npz)
    delta = new["mean"] - base["mean"]
    rel = delta / base["mean"] if base["mean"] else float("nan")
    low_pp = 100 * (new["low_share"] - base["low_share"])
    return {
        "baseline": {"path": str(base_npz), **base},
        "new": {"path": str(new_npz), **new},
        "drift": {"mean_delta": delta, "mean_drift_rel": rel, "low_share_delta_pp": low_pp},
        "verdict": verdict(rel, low_pp),
    }


def _table_rows(hist: dict) -> list[tuple[str, float]]:
    shares = list(hist.values())
    rows = [(label, s) for label, s in zip(list(hist)[:TABLE_BINS], shares[:TABLE_BINS], strict=False)]
    return rows + [(f"[{BIN_EDGES[TABLE_BINS]:.1f}+)", sum(shares[TABLE_BINS:]))]


def format_drift(report: dict) -> str:
    lines = []
    for key, name in (("baseline", "Baseline"), ("new", "Current")):
        s = report[key]
        lines += [
            f"{name} ({s['path']}, {s['n_pairs']:,} pairs):",
            f"Mean adjacency cosine: {s['mean']:.4f}",
            f"Std:                   {s['std']:.4f}",
            f"Low coherence (<{LOW:.2f}): {100 * s['low_share']:.2f}%",
            f"Median (p50):          {s['p50']:.4f}",
            f"P90:                   {s['p90']:.4f}",
            "",
        ]
    d = report["drift"]
    lines += [
        "Drift Analysis:",
        f"Mean coherence drift:  {d['mean_delta']:+.4f} ({100 * d['mean_drift_rel']:+.1f}%)",
        f"Low-coherence change:  {d['low_share_delta_pp']:+.2f}pp",
        f"Verdict:               {report['verdict']}",
        "",
        "| Range | baseline | current | Change |",
        "|---|---|---|---|",
    ]
    base_rows, new_rows = _table_rows(report["baseline"]["histogram"]), _table_rows(report["new"]["histogram"])
    for (label, b), (_, n) in zip(base_rows, new_rows, strict=False):
        lines.append(f"| {label} | {100 * b:.1f}% | {100 * n:.1f}% | {100 * (n - b):+.1f}pp |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- quality mask


def sequence_coherence(contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per row: mean of the adjacent-row cosines of its ctx context vectors followed by its target."""
    sq = np.concatenate(
        [np.einsum("nkd,nkd->nk", contexts, contexts), np.einsum("nd,nd->n", targets, targets)[:, None]], axis=1
    )
    dots = np.concatenate(
        [
            np.einsum("nkd,nkd->nk", contexts[:, :-1], contexts[:, 1:]),
            np.einsum("nd,nd->n", contexts[:, -1], targets)[:, None],
        ],
        axis=1,
    )
    norms = np.sqrt(sq)
    cos = dots / np.maximum(norms[:, :-1] * norms[:, 1:], 1e-12)
    return cos.mean(axis=1)


def build_mask(npz_path, min_coherence: float = MIN_COHERENCE, blocklist: str | None = BLOCKLIST) -> tuple:
    """(mask, summary): keep rows whose sequence coherence ≥ ``min_coherence`` and whose target text
    does not match ``blocklist``."""
    data = np.load(npz_path)
    contexts = data["context_sequences"]
    targets = data["target_vectors"]
    score = sequence_coherence(contexts, targets)
    keep = score >= min_coherence
    blocked = np.zeros(len(targets), dtype=bool)
    if blocklist and "target_texts" in data.files:
        pattern = re.compile(blocklist)
        blocked = np.fromiter((bool(pattern.search(t)) for t in data["target_texts"].tolist()), bool, len(targets))
    mask = keep & ~blocked
    before = coherence_stats(adjacency_cosines(targets))
    after = coherence_stats(adjacency_cosines(targets[mask])) if mask.sum() > 1 else None
    summary = {
        "original": int(len(mask)),
        "kept": int(mask.sum()),
        "filtered": int((~mask).sum()),
        "dropped_low_coherence": int((~keep).sum()),
        "dropped_blocklist": int((blocked & keep).sum()),
        "min_coherence": min_coherence,
        "blocklist": blocklist,
        "before": {"mean": before["mean"], "low_share": before["low_share"]},
        "after": {"mean": after["mean"], "low_share": after["low_share"]} if after else None,
    }
    return mask, summary


def format_mask(s: dict) -> str:
    n = s["original"]
    lines = [
        f"Original:  {n:,} sequences",
        f"Kept:      {s['kept']:,} sequences ({100 * s['kept'] / n:.1f}%)",
        f"Filtered:  {s['filtered']:,} sequences ({100 * s['filtered'] / n:.1f}%)",
    ]
    if s["after"]:
        lines += [
            "",
            "Quality metrics (filtered):",
            f"   Mean coherence:        {s['after']['mean']:.4f}  (was {s['before']['mean']:.4f})",
            f"   Low coherence (<{LOW:.2f}): {100 * s['after']['low_share']:.1f}%   "
            f"(was {100 * s['before']['low_share']:.1f}%)",
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- exporter


def _member(zf: zipfile.ZipFile, name: str, dtype, shape, blocks) -> None:
    """One ``.npy`` member written block by block (the bytes ``np.savez`` would write)."""
    with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(fh, header)
        for block in blocks:
            fh.write(np.ascontiguousarray(block, dtype=dtype).data)


def export_npz(dataset_dir, out_npz, ctx: int = CTX, block: int = 16384, texts: bool = True) -> dict:
    """Write dataset folder ``dataset_dir`` as the seeds' stream layout ``.npz`` (atomically).

    ``context_sequences`` [N, ctx, D] float32 (row i = chunks i..i+ctx-1 of the bank),
    ``target_vectors`` [N, D] (chunk i+ctx), ``article_ids`` [N] (the target's dense article id)
    and, with ``texts``, ``target_texts`` [N] (str); N = chunks − ctx. Streams ``block`` rows at
    a time: memory stays at a few blocks, not the 6× bank the file holds.
    """
    from lvm.data.datasets import open_dataset

    ds = open_dataset(dataset_dir)
    vectors, n, d = ds.vectors, ds.n_chunks, ds.dim
    rows = n - ctx
    if rows < 2:
        raise SystemExit(f"{dataset_dir}: {n} chunks, too few for ctx {ctx}")
    out = Path(out_npz)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    t0 = time.perf_counter()

    def context_blocks():
        for s in range(0, rows, block):
            e = min(s + block, rows)
            v = np.asarray(vectors[s : e + ctx - 1], dtype=np.float32)
            yield np.stack([v[j : j + e - s] for j in range(ctx)], axis=1)

    def target_blocks():
        for s in range(ctx, n, block):
            yield np.asarray(vectors[s : min(s + block, n)], dtype=np.float32)

    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _member(zf, "context_sequences", np.float32, (rows, ctx, d), context_blocks())
        _member(zf, "target_vectors", np.float32, (rows, d), target_blocks())
        art = np.asarray(ds.article_id[ctx:], dtype=np.int64)
        _member(zf, "article_ids", np.int64, (rows,), [art])
        if texts:
            txt = np.array(ds.texts[ctx:], dtype=str)
            _member(zf, "target_texts", txt.dtype, (rows,), [txt])
    os.replace(tmp, out)
    return {
        "dataset": str(ds.path),
        "content_hash": ds.content_hash,
        "npz": str(out),
        "rows": rows,
        "ctx": ctx,
        "dim": d,
        "bytes": out.stat().st_size,
        "seconds": time.perf_counter() - t0,
    }


def npz_bytes(n_chunks: int, dim: int, ctx: int = CTX) -> int:
    """Size of the exported file's vector members (contexts + targets), float32."""
    return (n_chunks - ctx) * (ctx + 1) * dim * 4


# ----------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="seeds_triage", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("drift", help="coherence drift of NEW against BASE (measure_coherence_drift.py)")
    p.add_argument("new")
    p.add_argument("base")
    p.add_argument("--json-out", help="also write the comparison as JSON (their coherence_comparison.json)")
    p = sub.add_parser("mask", help="quality mask (build_quality_mask.py)")
    p.add_argument("npz")
    p.add_argument("--out", required=True, help="boolean mask, one entry per sequence (.npy)")
    p.add_argument("--min-coherence", type=float, default=MIN_COHERENCE)
    p.add_argument("--blocklist", default=BLOCKLIST)
    p.add_argument("--json-out", help="also write the summary as JSON")
    p = sub.add_parser("export", help="a dataset folder as the seeds' stream-layout .npz")
    p.add_argument("dataset")
    p.add_argument("out")
    p.add_argument("--ctx", type=int, default=CTX)
    args = ap.parse_args(argv)

    if args.cmd == "drift":
        report = measure_drift(args.new, args.base)
        print(format_drift(report))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report, indent=2))
    elif args.cmd == "mask":
        mask, summary = build_mask(args.npz, args.min_coherence, args.blocklist)
        np.save(args.out, mask)
        print(format_mask(summary))
        print(f"Mask: {args.out} ({len(mask):,} entries, {100 * mask.mean():.1f}% True)")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(summary, indent=2))
    else:
        print(json.dumps(export_npz(args.dataset, args.out, ctx=args.ctx), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
