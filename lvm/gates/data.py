"""Data gates: is the dataset what it claims to be (encoder, norms, alignment, coherence, splits)?"""

from __future__ import annotations

import math

import numpy as np

from lvm import metrics as M
from lvm.data.datasets import Dataset, SequenceView
from lvm.errors import LvmError
from lvm.gates.status import (
    AMBER,
    GREEN,
    RED,
    GateResult,
    annotate,
    gate_params,
    judge,
    skipped,
)
from lvm.profiles import Profile


def encoder_fingerprint(ds: Dataset, profile: Profile, checkpoint_fingerprints: dict | None = None) -> GateResult:
    """Re-encode the probes with the dataset's declared encoder; compare fingerprint and probe vectors."""
    from lvm.data.encoders import EncoderSpec, load_encoder

    enc_meta = ds.meta.get("encoder") or {}
    spec = enc_meta.get("spec") or {}
    stored = enc_meta.get("fingerprint")
    where = {"dataset": ds.path.name}
    if not stored:
        # imported legacy data: nothing to compare against. Not GREEN (the space is unverified), not
        # RED (nothing contradicts it): AMBER, and checkpoints must still agree with the dataset.
        return GateResult(
            "encoder_fingerprint",
            AMBER,
            {"fingerprint_recorded": 0.0, "declared_encoder": spec.get("name")},
            [],
            "encoder_fingerprint AMBER: the dataset records no encoder fingerprint (imported data), so its vector "
            "space cannot be verified; rebuild it with `lvm build-data` to gate the encoder",
            **where,
        )
    mismatched = sorted(name for name, fp in (checkpoint_fingerprints or {}).items() if fp != stored)
    if ds.meta.get("synthetic"):
        return _synthetic_fingerprint(ds, stored, mismatched, where)
    try:
        encoder = load_encoder(EncoderSpec.from_dict(spec))
    except LvmError as exc:
        return skipped("encoder_fingerprint", f"declared encoder not available here: {exc}", **where)
    probe = ds.probe_vectors
    min_cos = (
        float(M.rowwise_cos(probe, encoder.probe_vectors).min())
        if probe is not None and probe.shape == encoder.probe_vectors.shape
        else float("nan")
    )
    metrics = {
        "fingerprint_match": float(encoder.fingerprint == stored),
        "probe_min_cos": min_cos,
        "checkpoints_match": float(not mismatched),
        "stored": stored,
        "recomputed": encoder.fingerprint,
        "mismatched_checkpoints": mismatched,
        **_stored_vectors_check(ds, encoder, gate_params(profile, "encoder_fingerprint")["text_sample"]),
    }
    return judge("encoder_fingerprint", metrics, profile, **where)


def _synthetic_fingerprint(ds: Dataset, stored: str, mismatched: list, where: dict) -> GateResult:
    """Synthetic data has no encoder: its space is recomputed from the generator config it records."""
    from lvm.data.synth import Segment, SynthConfig

    params = dict(ds.meta["synthetic"])
    params["segments"] = tuple(Segment(**g) for g in params.get("segments", []))
    recomputed = SynthConfig(**params).fingerprint()
    ok = recomputed == stored and not mismatched
    return GateResult(
        "encoder_fingerprint",
        GREEN if ok else RED,
        {
            "fingerprint_match": float(recomputed == stored),
            "checkpoints_match": float(not mismatched),
            "stored": stored,
            "recomputed": recomputed,
        },
        [],
        ""
        if ok
        else f"encoder_fingerprint RED: synthetic generator config does not reproduce the stored fingerprint "
        f"or a checkpoint comes from another space ({', '.join(mismatched)})",
        **where,
    )


def _stored_vectors_check(ds: Dataset, encoder, n: int, seed: int = 0) -> dict:
    """Re-encode a seeded sample of the stored texts and compare with the stored vectors: the probes
    prove the encoder, this proves the vectors came from it (a bank built with another pooling and
    its meta copied from an honest build passes the probe check, not this one)."""
    texts = ds.texts
    have = np.flatnonzero([bool(t) for t in texts])
    if not len(have) or n <= 0:
        return {"stored_sample_min_cos": float("nan"), "stored_sample": 0}
    idx = np.sort(np.random.default_rng(seed).choice(have, size=min(n, len(have)), replace=False))
    fresh = encoder.encode([texts[i] for i in idx])
    stored = np.asarray(ds.vectors[idx], dtype=np.float64)

    def unit(v):  # a direction test: norms are the normalization gate's business, not this one's
        v = np.asarray(v, dtype=np.float64)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    cos = M.rowwise_cos(unit(stored), unit(fresh))
    worst = int(idx[int(np.argmin(cos))])
    return {
        "stored_sample_min_cos": float(cos.min()),
        "stored_sample_mean_cos": float(cos.mean()),
        "stored_sample": int(len(idx)),
        "stored_sample_worst_chunk": worst,
    }


def normalization(ds: Dataset, profile: Profile) -> GateResult:
    return judge("normalization", M.norm_summary(ds.vectors), profile, dataset=ds.path.name)


def oracle_recall(ds: Dataset, index, profile: Profile, sample: int | None = None, seed: int = 0) -> GateResult:
    """Query the index with a seeded sample of stored vectors; Recall@k of the query's own id.

    An exact duplicate of the query counts as found (its duplicate rate is reported). Sequence
    targets must point into the bank: the top hit for a sample of val targets has cos ≥ 0.999.
    """
    params = gate_params(profile, "oracle_recall")
    n = min(sample or params["sample"], ds.n_chunks)
    ks = params["ks"]
    k = min(max(ks), ds.n_chunks)
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(ds.n_chunks, size=n, replace=False))
    q = np.ascontiguousarray(ds.vectors[ids], dtype=np.float32)
    _, found = index.search(q, k)
    canon = ds.duplicate_canon
    ranks = M.ranks_of(ids, found, canon)
    metrics = {f"recall_at_{kk}": float(((ranks > 0) & (ranks <= kk)).mean()) for kk in ks}
    metrics["self_at_1"] = float((found[:, 0] == ids).mean())
    metrics["duplicate_rate"] = float(
        (np.bincount(canon, minlength=len(canon))[canon[ids]] > 1).mean()
    )  # queries with a twin
    targets = next((v.targets for v in (ds.sequences(s, 1, 1) for s in ("val", "train", "ood")) if len(v)), ids)
    t_ids = np.sort(rng.choice(targets, size=min(n, len(targets)), replace=False))
    t = np.ascontiguousarray(ds.vectors[t_ids], dtype=np.float32)
    _, top = index.search(t, 1)
    hit = np.asarray(ds.vectors[np.maximum(top[:, 0], 0)], dtype=np.float32)
    metrics["target_to_bank_min_cos"] = float(M.rowwise_cos(hit, t).min())
    metrics["sample"] = int(n)
    return judge("oracle_recall", metrics, profile, dataset=ds.path.name)


def alignment(view: SequenceView, profile: Profile, sample: int | None = None, seed: int = 0) -> GateResult:
    """Targets must be the chunk right after the last context chunk (structure and similarity)."""
    params = gate_params(profile, "alignment")
    n = min(sample or params["sample"], len(view))
    if n == 0:
        return skipped("alignment", f"no {view.split} sequences", dataset=view.dataset.path.name)
    idx = np.sort(np.random.default_rng(seed).choice(len(view), size=n, replace=False))
    ds = view.dataset
    last = view.context_indices(idx)[:, -1]
    target = view.target_indices(idx)
    structural = float(((target == last + 1) & (ds.article_id[target] == ds.article_id[last])).mean())
    x, _, y = view.batch(idx)
    q = x[:, -1]
    prof = M.similarity_profile(q, last, ds.vectors, ds.article_id)
    declared = float(M.rowwise_cos(q, y).mean())  # P(+1) as the sequences declare it
    others = {k: v for k, v in prof.items() if k not in (0, 1) and not math.isnan(v)}
    tie = params["tie_tolerance"]
    peak = max(others.items(), key=lambda kv: kv[1]) if others else (None, float("nan"))
    metrics = {
        "target_is_next": structural,
        "declared_target_cos": declared,
        "profile": {str(k): v for k, v in prof.items()},
        "next_margin": declared - peak[1],
        # P(+1) and P(-1) are both adjacent pairs (a tie by nature); chunks two or more steps away are
        # clearly less similar, so the declared target must beat them by a margin: that has power
        "skip_margin": declared - max((v for k, v in others.items() if abs(k) >= 2), default=float("nan")),
        "peak_at_next": float(declared >= peak[1] - tie),
        "direction_delta": declared - prof.get(-1, float("nan")),
        "sample": int(n),
    }
    return judge("alignment", metrics, profile, dataset=ds.path.name, split=view.split)


def coherence_stats(ds: Dataset, split_code: int | None = None) -> dict:
    """``coherence_summary`` of the dataset's adjacency cosines (of one split's articles if given)."""
    cos = ds.adjacency
    if split_code is not None:
        first = ds.article_id[1:] == ds.article_id[:-1]
        cos = cos[ds.split[:-1][first] == split_code]
    return M.coherence_summary(cos)


def coherence(ds: Dataset, profile: Profile) -> GateResult:
    return judge("coherence", coherence_stats(ds), profile, dataset=ds.path.name)


def segment_breakdown(
    ds: Dataset, baseline_mean: float, n_segments: int = 10, by: str = "article_range", width: int | None = None
) -> list[dict]:
    """Mean adjacency coherence per article-id range (``n_segments`` equal ranges, or ranges of
    ``width`` article ids) or per topic, sorted by drop vs ``baseline_mean``."""
    same = np.flatnonzero(ds.article_id[1:] == ds.article_id[:-1])
    cos = ds.adjacency
    art = ds.article_id[same]
    rows = []
    if by == "topic":
        topics = np.array([a.get("topic", "") for a in ds.articles])[art]
        groups = {t: topics == t for t in np.unique(topics)}
    else:
        n_art = int(ds.article_id.max()) + 1
        if width:
            edges = np.append(np.arange(0, n_art, width), n_art)
        else:
            edges = np.linspace(0, n_art, n_segments + 1).astype(int)
        groups = {
            f"{lo}-{hi - 1}": (art >= lo) & (art < hi) for lo, hi in zip(edges[:-1], edges[1:], strict=False) if hi > lo
        }
    for name, sel in groups.items():
        if sel.any():
            c = cos[sel]
            rows.append(
                {
                    "segment": str(name),
                    "pairs": int(sel.sum()),
                    "mean": float(c.mean()),
                    "low_share": float((c < M.LOW_COHERENCE).mean()),
                    "drop_vs_baseline": float(baseline_mean - c.mean()),
                }
            )
    return sorted(rows, key=lambda r: -r["drop_vs_baseline"])


def coherence_drift(ds: Dataset, baseline: Dataset | None, profile: Profile) -> GateResult:
    where = {"dataset": ds.path.name}
    if baseline is None:
        return skipped("coherence_drift", "no --baseline-dataset given", **where)
    if baseline.encoder_fingerprint != ds.encoder_fingerprint:
        return annotate(
            judge(
                "coherence_drift",
                {"comparable": 0.0, "mean_drift_rel": float("nan"), "low_share_delta_pp": float("nan")},
                profile,
                **where,
            ),
            f"Baseline {baseline.path.name} was encoded with another encoder (fingerprints differ): "
            "coherence is not comparable.",
        )
    new, base = coherence_stats(ds), coherence_stats(baseline)
    params = gate_params(profile, "coherence_drift")
    metrics = {
        "comparable": 1.0,
        "mean": new["mean"],
        "baseline_mean": base["mean"],
        "mean_drift_rel": (new["mean"] - base["mean"]) / base["mean"],
        # a rise is a finding too: another pooling, near-duplicates or boilerplate make text look more coherent
        "mean_rise_rel": max(0.0, (new["mean"] - base["mean"]) / base["mean"]),
        "low_share": new["low_share"],
        "baseline_low_share": base["low_share"],
        "low_share_delta_pp": 100 * (new["low_share"] - base["low_share"]),
        "segments": segment_breakdown(ds, base["mean"], params["segments"], params["segment_by"])[:5],
    }
    return judge("coherence_drift", metrics, profile, **where)


def _article_keys(ds: Dataset, split: str | None = None) -> dict[str, set]:
    """Per article of ``split`` (all articles if None): its source id and a hash of its texts."""
    import hashlib

    texts = ds.texts
    keys: dict[str, set] = {}
    for a in ds.articles:
        if a["n_chunks"] and (split is None or a["split"] == split):
            own = {("source", a["source_id"])}
            own_texts = texts[a["first_chunk"] : a["first_chunk"] + a["n_chunks"]]
            if any(t.strip() for t in own_texts):  # vectors without text (synthetic data) have nothing to match
                body = "\x00".join(own_texts)
                own.add(("text", hashlib.sha256(body.encode("utf-8")).hexdigest()))
            keys[f"{ds.path.name}:{a['split']}:{a['article_id']}"] = own
    return keys


def _leaked_pairs(groups: dict[str, dict[str, set]]) -> set[tuple[str, str]]:
    """(article, article it repeats) across groups (splits), by source id or by text hash."""
    owner: dict = {}
    pairs: set[tuple[str, str]] = set()
    for group, articles in groups.items():
        for art, keys in articles.items():
            for key in keys:
                first = owner.setdefault(key, (group, art))
                if first[0] != group:
                    pairs.add((art, first[1]))
    return pairs


def _search_few_lists(index, q: np.ndarray, k: int, nprobe: int):
    """``index.search`` probing at most ``nprobe`` IVF lists. A twin at cos >= 0.9999 sits in the
    query's own list: a few lists find it, where all 64 would make the tens of thousands of leak
    queries the slowest search of the suite."""
    from lvm.data.index import RerankedIndex

    before = getattr(index, "nprobe", None)
    if before is not None:
        index.nprobe = min(before, nprobe)
    try:
        if isinstance(index, RerankedIndex):  # exact scores of the k returned are all the rule needs
            return index.search(np.ascontiguousarray(q), k, rerank=k)
        return index.search(np.ascontiguousarray(q), k)
    finally:
        if before is not None:
            index.nprobe = before


def _spread(first: int, n: int, most: int) -> list[int]:
    """Up to ``most`` chunk indices of an article of ``n`` chunks from ``first``, evenly spaced."""
    if n <= most:
        return list(range(first, first + n))
    return [first + int(i) for i in np.unique(np.linspace(0, n - 1, most).round().astype(int))]


def _near_identical_pairs(ds: Dataset, index, ood: Dataset | None, params: dict, seed: int = 0) -> set[tuple[str, str]]:
    """Articles whose chunks are near-identical (cos >= ``near_identical_cos``) to the chunks of one
    article in another split: a leak re-encoded on another run has other bytes, not other vectors.
    Up to ``leak_sample`` val/OOD articles (seeded) are searched against the dataset's index, each
    by up to ``leak_chunks`` of its chunks (evenly spaced; a leak twins most of them)."""
    from lvm.data.splits import SPLIT_NAMES

    if index is None:
        return set()
    sources = [(ds, a) for a in ds.articles if a["n_chunks"] and a["split"] != "train"]
    if ood is not None:
        sources += [(ood, a) for a in ood.articles if a["n_chunks"]]
    rng = np.random.default_rng(seed)
    if len(sources) > params["leak_sample"]:
        sources = [sources[i] for i in np.sort(rng.choice(len(sources), size=params["leak_sample"], replace=False))]
    if not sources:
        return set()
    rows = [(src, a, j) for src, a in sources for j in _spread(a["first_chunk"], a["n_chunks"], params["leak_chunks"])]
    q = np.empty((len(rows), ds.dim), dtype=np.float32)
    for src in {id(src): src for src, _, _ in rows}.values():  # one scattered read per dataset
        at = np.array([i for i, (s_, _, _) in enumerate(rows) if s_ is src])
        q[at] = src.vectors[np.array([rows[i][2] for i in at])]
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    sims, found = _search_few_lists(index, q, 2, params["leak_nprobe"])
    hits: dict[str, list] = {}
    for (src, a, j), sim, idx in zip(rows, sims, found, strict=True):
        # the best match that is not the query itself, in another split than the query's article
        for s_, i_ in zip(sim, idx, strict=True):
            if i_ < 0 or (src is ds and i_ == j):
                continue
            other_split = SPLIT_NAMES[int(ds.split[i_])]
            if s_ >= params["near_identical_cos"] and (src is not ds or other_split != a["split"]):
                hits.setdefault(f"{src.path.name}:{a['split']}:{a['article_id']}", []).append(
                    (
                        f"{ds.path.name}:{other_split}:{int(ds.article_id[i_])}",
                        min(a["n_chunks"], params["leak_chunks"]),
                    )
                )
            break
    pairs = set()
    for art, twins in hits.items():
        names = [t for t, _ in twins]
        top = max(set(names), key=names.count)
        if names.count(top) >= max(1, int(np.ceil(0.8 * twins[0][1]))):  # most of its searched chunks twin one
            pairs.add((art, top))
    return pairs


def split_hygiene(ds: Dataset, profile: Profile, ood: Dataset | None = None, index=None) -> GateResult:
    """No article in two of train / val / OOD: not by id, not by source id, not by the same text, not
    by near-identical vectors (cos >= 0.9999, when the index is given).

    With a separate OOD dataset, its articles are checked against every split of ``ds``.
    """
    from lvm.data.splits import OOD, SPLIT_NAMES, TRAIN

    params = gate_params(profile, "split_hygiene")
    groups = {name: _article_keys(ds, name) for name in SPLIT_NAMES}
    if ood is not None:
        groups["ood-dataset"] = _article_keys(ood)
    pairs = _leaked_pairs(groups) | _near_identical_pairs(ds, index, ood, params)
    article_code = np.array([SPLIT_NAMES.index(a["split"]) for a in ds.articles], dtype=np.int8)
    outside = np.flatnonzero(ds.split != article_code[ds.article_id])  # chunks in another split than their article
    # exact duplicate chunk vectors between train and OOD (counted: repeated sentences happen)
    ood_hashes = ood.row_hashes if ood is not None else ds.row_hashes[ds.split == OOD]
    dup = int(np.isin(ood_hashes, ds.row_hashes[ds.split == TRAIN]).sum())
    train_coh = coherence_stats(ds, TRAIN).get("mean", float("nan"))
    ood_coh = (coherence_stats(ds, OOD) if ood is None else coherence_stats(ood)).get("mean", float("nan"))
    leaked = sorted(f"{a} ~ {b}" for a, b in pairs)
    metrics = {
        "shared_articles": len({a for a, _ in pairs}) + len(outside),  # each leaked article counted once
        "leaked_pairs": leaked[:20],
        "chunks_outside_article_split": int(len(outside)),
        "train_ood_duplicate_vectors": int(dup),
        "train_ood_duplicate_share": float(dup / max(len(ood_hashes), 1)),
        "train_coherence": train_coh,
        "ood_coherence": ood_coh,
        "ood_train_coherence_gap": abs(ood_coh - train_coh)
        if not (math.isnan(ood_coh) or math.isnan(train_coh))
        else 0.0,
        "splits": {name: int((ds.split == c).sum()) for c, name in enumerate(SPLIT_NAMES)},
    }
    result = judge("split_hygiene", metrics, profile, dataset=ds.path.name)
    if leaked or len(outside):
        named = "; ".join(leaked[:5]) + (f" (+{len(leaked) - 5} more)" if len(leaked) > 5 else "")
        extra = f" chunks {outside[:5].tolist()} sit outside their article's split." if len(outside) else ""
        annotate(result, f"Leaked (split:article ~ split:article): {named or '-'}.{extra}")
    return result


_FROM_PROFILE = -1  # max_per_article default: the profile's value (None means no cap)


def batch_hygiene(
    view: SequenceView,
    profile: Profile,
    batch_size: int | None = None,
    max_per_article: int | None = _FROM_PROFILE,
    seed: int = 0,
    n_batches: int | None = None,
    masked=None,
) -> GateResult:
    """Batches from the trainer's sampler: no same-article pair left among InfoNCE negatives.

    ``masked(ids, B)`` is the loss's (B, B) mask of removed negatives (default: InfoNCE's own).
    """
    import torch

    from lvm.losses import masked_negatives
    from lvm.train.sampler import article_capped_batches

    masked = masked if masked is not None else masked_negatives
    params = gate_params(profile, "batch_hygiene")
    n_batches = n_batches or params["batches"]
    batch_size = batch_size or params["batch_size"]
    max_per_article = params["max_per_article"] if max_per_article == _FROM_PROFILE else max_per_article
    art = view.article_ids
    batches = article_capped_batches(art, batch_size, max_per_article, seed, epoch=1, limit=n_batches)
    exposed, pairs, max_items = 0, 0, 0
    for b in batches:
        ids = torch.from_numpy(art[b])
        same = ids[:, None] == ids[None, :]
        same.fill_diagonal_(False)
        excl = masked(ids, len(b))
        exposed += int((same & ~excl).sum())
        pairs += int(same.sum())
        max_items = max(max_items, int(np.bincount(art[b]).max()))
    metrics = {
        "same_article_negatives": exposed,
        "same_article_pairs": pairs,
        "max_items_per_article": max_items,
        "cap": max_per_article or 0,
        "batches": len(batches),
    }
    metrics["cap_respected"] = float(not max_per_article or max_items <= max_per_article)
    return judge("batch_hygiene", metrics, profile, dataset=view.dataset.path.name, split=view.split)
