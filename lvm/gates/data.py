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
    cap_thin,
    gate_params,
    judge,
    judge_rule,
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
    result = judge("encoder_fingerprint", metrics, profile, **where)
    step = _step_note(metrics)
    return _note(result, f"{step} The encoder is not at fault: alignment and order judge the step.") if step else result


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


STEPS = (-1, 0, 1)  # offsets at which a stored vector is compared with re-encoded texts (i-1, i, i+1)
STEP_MATCH_COS = 0.999  # a stored vector "is" the encoding of a text at or above this cosine (same pipeline: 1.0000)
_STORED_SAMPLE: dict[tuple, dict] = {}  # (dataset, content hash, encoder spec, n, seed) -> the re-encoded sample


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _stored_sample(ds: Dataset, encoder, n: int, seed: int = 0) -> dict:
    """A seeded sample of ``n`` stored texts re-encoded, each stored vector scored against the re-encoded
    texts of its chunk and of its neighbours in the article (``STEPS``). Computed once per dataset and
    encoder in a process: ``encoder_fingerprint`` judges the encoder on it, ``alignment`` and ``order``
    the step between texts and vectors.

    Per sampled chunk i: cos_s(i) = cos(stored v_i, encode(text_{i+s})), its best offset b(i) (0 on a
    tie within 1e-6, then the smallest |s|) and best cosine c(i) = max_s cos_s(i). The neighbours
    (s != 0) are encoded only for the chunks whose own text does not give their vector (cos_0 <
    ``STEP_MATCH_COS``; none on built data, so a healthy dataset costs no extra encoding); cos_s is NaN
    where not computed, where chunk i+s is not in the article or has no text. A chunk is *out of step*
    when c(i) >= ``STEP_MATCH_COS`` at b(i) != 0: its vector encodes a neighbour's text, not its own.
    """
    key = (str(ds.path), ds.content_hash, repr(getattr(encoder, "spec", None)), n, seed)
    if key in _STORED_SAMPLE:
        return _STORED_SAMPLE[key]
    texts = ds.texts
    have = np.flatnonzero([bool(t) for t in texts])
    if not len(have) or n <= 0:
        return {"sample": np.zeros(0, dtype=np.int64)}
    idx = np.sort(np.random.default_rng(seed).choice(have, size=min(n, len(have)), replace=False))
    cos = np.full((len(idx), len(STEPS)), np.nan)
    stored = _unit(ds.vectors[idx])  # a direction test: norms are the normalization gate's business
    zero = STEPS.index(0)
    cos[:, zero] = (stored * _unit(encoder.encode([texts[i] for i in idx]))).sum(axis=1)
    # the neighbours' texts only for the chunks whose own text does not give their vector (none on built data)
    need = np.flatnonzero(~(cos[:, zero] >= STEP_MATCH_COS))
    rows = {}
    for s in STEPS:
        j, ok = M.neighbour_indices(idx[need], ds.article_id, s)
        rows[s] = (j, ok & np.array([bool(texts[x]) for x in j], dtype=bool))
    wanted = np.unique(np.concatenate([rows[s][0][rows[s][1]] for s in STEPS if s]))
    fresh = dict(zip(wanted.tolist(), _unit(encoder.encode([texts[i] for i in wanted])), strict=True))
    for c, s in enumerate(STEPS):
        j, ok = rows[s]
        if s and ok.any():
            cos[need[ok], c] = (stored[need[ok]] * np.stack([fresh[x] for x in j[ok].tolist()])).sum(axis=1)
    filled = np.where(np.isnan(cos), -np.inf, cos)
    best_cos = filled.max(axis=1)
    # the best offset; 0 wins a tie (a text repeated next to itself), then the nearest
    rank = np.array([(-abs(s) if s else 1) for s in STEPS], dtype=np.float64) * 1e-9
    best = np.array(STEPS)[np.argmax(np.where(filled >= best_cos[:, None] - 1e-6, 1.0 + rank, 0.0), axis=1)]
    out_of_step = (best != 0) & (best_cos >= STEP_MATCH_COS) & ~(cos[:, zero] >= STEP_MATCH_COS)
    result = {"sample": idx, "cos": cos, "best": best, "best_cos": best_cos, "out_of_step": out_of_step}
    _STORED_SAMPLE[key] = result
    return result


def _stored_vectors_check(ds: Dataset, encoder, n: int, seed: int = 0) -> dict:
    """Re-encode a seeded sample of the stored texts and compare with the stored vectors: the probes
    prove the encoder, this proves the vectors came from it (a bank built with another pooling and
    its meta copied from an honest build passes the probe check, not this one). A vector that is the
    exact encoding of a neighbour's text came from this encoder too: its cosine is taken at that
    offset, and the step between texts and vectors is the alignment gate's finding, not this one's."""
    got = _stored_sample(ds, encoder, n, seed)
    idx = got["sample"]
    if not len(idx):
        return {"stored_sample_min_cos": float("nan"), "stored_sample": 0}
    zero = STEPS.index(0)
    worst = int(np.argmin(got["best_cos"]))
    step0 = got["cos"][:, zero]
    return {
        "stored_sample_min_cos": float(got["best_cos"].min()),
        "stored_sample_mean_cos": float(got["best_cos"].mean()),
        "stored_sample": int(len(idx)),
        "stored_sample_worst_chunk": int(idx[worst]),
        "stored_sample_step0_min_cos": float(np.nanmin(step0)) if not np.isnan(step0).all() else float("nan"),
        **_step_metrics(ds, got),
    }


def _step_metrics(ds: Dataset, got: dict) -> dict:
    """The step between texts and vectors found in the stored-text sample (see ``_stored_sample``)."""
    idx, off = got["sample"], got["out_of_step"]
    steps = got["best"][off]
    step = int(np.bincount(steps - min(STEPS)).argmax() + min(STEPS)) if len(steps) else 0
    examples = [
        f"chunk {int(i)} (article {int(ds.article_id[i])}) holds chunk {int(i + b)}'s vector"
        for i, b in zip(idx[off][:3], got["best"][off][:3], strict=True)
    ]
    return {
        "text_vector_step": step,
        "out_of_step_share": float(off.mean()) if len(idx) else 0.0,
        "out_of_step_chunks": int(off.sum()),
        "step_sample": int(len(idx)),
        "out_of_step_examples": examples,
    }


def _note(result: GateResult, *notes: str) -> GateResult:
    """``annotate`` with the non-empty ``notes``, after a full stop (a profile's cause has none)."""
    text = " ".join(n for n in notes if n)
    if text and result.message and not result.message.rstrip().endswith((".", "!", "?")):
        result.message = result.message.rstrip() + "."
    return annotate(result, text) if text else result


STEP_RULES = ("out_of_step_share", "within_article_duplicate_vectors_other_text")
STEP_CAUSE = (
    "texts and vectors paired with an offset (a writer or loader that shifted one column against the other), "
    "not another encoder and not a lost order"
)


def _step_cause(result: GateResult, profile: Profile) -> GateResult:
    """When the step fired (direct evidence: stored vectors are their neighbours' texts), or only the rules of
    its symptoms (``STEP_RULES``), the likely cause is the step, not the gate's own (a step also repeats
    a vector at each article's edge, which can move the similarity profile's peak)."""
    fired = [r["metric"] for r in result.thresholds if judge_rule(result.metrics.get(r["metric"]), r) != GREEN]
    cause = profile.gate(result.gate).get("cause")
    if fired and ("out_of_step_share" in fired or set(fired) <= set(STEP_RULES)) and cause:
        result.message = result.message.replace(f"Likely cause: {cause}", f"Likely cause: {STEP_CAUSE}")
    return result


def _step_note(m: dict) -> str:
    k = m.get("text_vector_step", 0)
    if not m.get("out_of_step_chunks"):
        return ""
    return (
        f"Texts and vectors out of step by {k:+d}: the vector stored at chunk i encodes the text of chunk "
        f"i{k:+d} ({m['out_of_step_chunks']} of {m['step_sample']} re-encoded chunks; "
        + "; ".join(m["out_of_step_examples"])
        + "). The vectors are the declared encoder's; the texts and vectors were paired with an offset."
    )


def _given_step(ds: Dataset, profile: Profile, step: dict | None) -> tuple[dict, str | None]:
    """The step metrics given to a gate, else measured (``text_vector_step``); (metrics, why unmeasured)."""
    if step is None:
        return text_vector_step(ds, profile)
    return step, None if "out_of_step_share" in step else "no text-vector step given"


def text_vector_step(ds: Dataset, profile: Profile, seed: int = 0) -> tuple[dict, str | None]:
    """(step metrics, None) from the stored-text sample re-encoded with the dataset's declared encoder
    (the same sample as ``encoder_fingerprint``'s, computed once), or ({}, why it cannot be measured)."""
    from lvm.data.encoders import EncoderSpec, load_encoder

    enc_meta = ds.meta.get("encoder") or {}
    if ds.meta.get("synthetic"):
        return {}, "synthetic data has no texts to re-encode"
    if not enc_meta.get("fingerprint"):
        return {}, "the dataset records no encoder fingerprint"
    try:
        encoder = load_encoder(EncoderSpec.from_dict(enc_meta.get("spec") or {}))
        if encoder.fingerprint != enc_meta["fingerprint"]:
            return {}, "the declared encoder does not reproduce the dataset's fingerprint (see encoder_fingerprint)"
        got = _stored_sample(ds, encoder, gate_params(profile, "encoder_fingerprint")["text_sample"], seed)
    except LvmError as exc:
        return {}, f"declared encoder not available here ({exc})"
    if not len(got["sample"]):
        return {}, "no stored texts"
    return _step_metrics(ds, got), None


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


def alignment(
    view: SequenceView, profile: Profile, sample: int | None = None, seed: int = 0, step: dict | None = None
) -> GateResult:
    """Targets must be the chunk right after the last context chunk (structure and similarity); texts and
    vectors in step (``text_vector_step``, or ``step`` when given); no vector repeated within an article
    under another text (``within_article_duplicates``)."""
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
        **within_article_duplicates(ds),
    }
    step_metrics, why = _given_step(ds, profile, step)
    metrics.update(step_metrics)
    unmeasured = {"out_of_step_share": why} if why else None
    result = _step_cause(
        judge("alignment", metrics, profile, split=view.split, unmeasured=unmeasured, dataset=ds.path.name), profile
    )
    notes = [_step_note(metrics)]
    if metrics["within_article_duplicate_vectors"]:
        notes.append(
            f"{metrics['within_article_duplicate_vectors']} chunk vector(s) repeat an earlier chunk of their article "
            f"({metrics['within_article_duplicate_vectors_other_text']} under another text): "
            + "; ".join(metrics["within_article_duplicate_examples"])
            + "."
        )
    return _note(result, *notes)


def within_article_duplicates(ds: Dataset, most: int = 5) -> dict:
    """Chunks whose vector is byte-identical to an earlier chunk of the same article (by ``row_hashes``).

    A sentence repeated in one article legitimately repeats its vector; a vector repeated under another
    text cannot come from a deterministic encoder: vectors copied or shifted within the article (a
    loader that pairs chunk i with chunk i+1's vector leaves the last two chunks with one vector).
    Texts are compared case- and whitespace-folded (the default encoder is uncased)."""
    h, art = ds.row_hashes, np.asarray(ds.article_id)
    if len(h) < 2:
        return {
            "within_article_duplicate_vectors": 0,
            "within_article_duplicate_vectors_other_text": 0,
            "within_article_duplicate_examples": [],
        }
    order = np.lexsort((np.arange(len(h)), h, art))
    same = (art[order][1:] == art[order][:-1]) & (h[order][1:] == h[order][:-1])
    starts = np.r_[True, ~same]  # runs of one vector within one article, earliest chunk first
    first_of = order[starts][np.cumsum(starts) - 1]
    later, earlier = order[1:][same], first_of[1:][same]
    other_text = 0
    found: dict[bool, list[str]] = {True: [], False: []}
    if len(later):
        texts = ds.texts
        fold = lambda t: " ".join(t.lower().split())  # noqa: E731
        for a, b in zip(earlier.tolist(), later.tolist(), strict=True):
            differs = fold(texts[a]) != fold(texts[b])
            other_text += differs
            if len(found[differs]) < most:
                found[differs].append(
                    f"article {int(art[b])}: chunk {b} = chunk {a}" + (" (other text)" if differs else " (same text)")
                )
    examples = (found[True] + found[False])[:most]  # those under another text first
    return {
        "within_article_duplicate_vectors": int(len(later)),
        "within_article_duplicate_vectors_other_text": int(other_text),
        "within_article_duplicate_examples": examples,
    }


MAX_ORDER_CHUNKS = 64  # chunks of one article the order gate reads: its (L, L) cosines stay small


def _order_grams(ds: Dataset, articles: list[dict], cap: int = MAX_ORDER_CHUNKS) -> dict:
    """{L: (article ids, (A, L, L) cosines within each article's first L chunks)}, one entry per length."""
    lengths = np.array([min(a["n_chunks"], cap) for a in articles], dtype=np.int64)
    out = {}
    for length in np.unique(lengths).tolist():
        group = [a for a, n in zip(articles, lengths.tolist(), strict=True) if n == length]
        rows = (np.array([a["first_chunk"] for a in group])[:, None] + np.arange(length)).ravel()
        v = _unit(ds.vectors[rows]).reshape(len(group), length, -1)  # a direction test, as coherence
        out[length] = (np.array([a["article_id"] for a in group]), np.einsum("ald,amd->alm", v, v))
    return out


def order(ds: Dataset, profile: Profile, seed: int = 0, step: dict | None = None) -> GateResult:
    """Does the chunk order within articles carry signal?

    The adjacent-vs-distant margin of every anchor chunk (``metrics.anchor_order_margins``:
    cos(c_i, c_{i+1}) − mean cos(c_i, c_{i+k}), k = 2…``max_offset``, within the article), its mean
    with an article-cluster CI, against the within-article permutation null (``permutations``
    shuffles of every article: 0 in expectation). Topic alone keeps the chunks of a shuffled article
    similar to one another, so the comparison never leaves the article. ``order_signal`` = the mean
    minus the null's mean; RED when its CI reaches 0 (the order cannot be told from shuffled). With
    the profile's ``reference_signal`` (the signal of its corpus in order) ``in_order_share`` =
    signal / reference estimates the share of articles still in order (a shuffled article adds 0 in
    expectation). Also judged: the step between texts and vectors (``text_vector_step``)."""
    params = gate_params(profile, "order")
    where = {"dataset": ds.path.name}
    eligible = [a for a in ds.articles if a["n_chunks"] >= 3]
    rng = np.random.default_rng(seed)
    if len(eligible) > params["sample"]:
        eligible = [eligible[i] for i in np.sort(rng.choice(len(eligible), size=params["sample"], replace=False))]
    if not eligible:
        return skipped("order", "no article has 3 or more chunks: their order cannot be measured", **where)
    k_max, n_perm = int(params["max_offset"]), int(params["permutations"])
    margins, clusters, null_sums, per_article = [], [], np.zeros(n_perm), []
    for length, (ids, gram) in _order_grams(ds, eligible).items():
        d = M.anchor_order_margins(gram, k_max)
        margins.append(d.ravel())
        clusters.append(np.repeat(ids, d.shape[1]))
        sums, above = M.order_permutation_null(gram, k_max, n_perm, rng)
        null_sums += sums
        per_article += list(zip(ids.tolist(), [length] * len(ids), (above / n_perm).tolist(), strict=True))
    d, cl = np.concatenate(margins), np.concatenate(clusters)
    null = null_sums / len(d)  # the mean margin under each shuffle
    ci = M.cluster_bootstrap(d, cl, seed=seed)
    null_mean = float(null.mean())
    null_sd = float(null.std(ddof=1)) if n_perm > 1 else float("nan")
    signal = ci["mean"] - null_mean
    p_art = np.array([p for _, _, p in per_article])
    # examples: the articles whose real order reads least ordered against their own shuffles, longest first
    # (a 3-chunk article has 3 distinct orders; a long article that most shuffles beat is real evidence)
    titles = {a["article_id"]: a.get("title", "") for a in eligible}
    least = sorted(per_article, key=lambda t: (-t[2], -t[1]))[:5]
    metrics = {
        "order_signal": signal,
        "order_signal_ci_low": ci["ci_low"] - null_mean,
        "order_signal_ci_high": ci["ci_high"] - null_mean,
        "adjacent_minus_distant": ci["mean"],
        "null_mean": null_mean,
        "null_sd": null_sd,
        "null_z": signal / null_sd if null_sd > 0 else float("nan"),
        "null_p": float((1 + (null >= ci["mean"]).sum()) / (1 + n_perm)),
        "articles": len(per_article),
        "anchors": int(len(d)),
        "max_offset": k_max,
        "permutations": n_perm,
        "articles_p_above_half": float((p_art > 0.5).mean()),
        "least_ordered_articles": [
            {"article_id": a, "title": titles.get(a, ""), "chunks": n, "p_shuffled": round(p, 3)} for a, n, p in least
        ],
    }
    reference = params["reference_signal"]
    if reference:
        # a share s of shuffled articles reads (1 - s) x the reference signal of the profile's corpus in order
        lo, hi = metrics["order_signal_ci_low"] / reference, metrics["order_signal_ci_high"] / reference
        metrics.update(
            reference_signal=float(reference),
            in_order_share=signal / reference,
            shuffled_share_est=float(np.clip(1 - signal / reference, 0.0, 1.0)),
            shuffled_share_ci=[float(np.clip(1 - hi, 0.0, 1.0)), float(np.clip(1 - lo, 0.0, 1.0))],
        )
    step_metrics, why = _given_step(ds, profile, step)
    metrics.update(step_metrics)
    unmeasured = {"out_of_step_share": why} if why else None
    result = _step_cause(judge("order", metrics, profile, unmeasured=unmeasured, **where), profile)
    result = cap_thin(result, len(per_article), params["min_articles"], "articles of 3 or more chunks")
    notes = []
    if "order_signal_ci_low" in result.message or "in_order_share" in result.message:
        share = (
            f"an estimated {100 * metrics['shuffled_share_est']:.0f} % of the articles "
            f"(CI {100 * metrics['shuffled_share_ci'][0]:.0f}-{100 * metrics['shuffled_share_ci'][1]:.0f} %) "
            f"read as shuffled (signal {signal:+.4f} against {reference:+.4f} for the profile's corpus in order)"
            if reference
            else f"the order signal is {signal:+.4f} (permutation null {null_mean:+.4f} ± {null_sd:.4f})"
        )
        named = ", ".join(
            f"{t['article_id']} {t['title']!r} ({t['chunks']} chunks)" for t in metrics["least_ordered_articles"]
        )
        notes.append(
            f"Chunk order within articles: {share}; {len(per_article)} articles judged. "
            f"Least ordered against their own shuffles: {named}."
        )
    notes.append(_step_note(metrics))
    return _note(result, *notes)


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


def _leaked_pairs(groups: dict[str, dict[str, set]], apart: frozenset = frozenset()) -> set[tuple[str, str]]:
    """(article, article it repeats) across groups (splits), by source id or by text hash. Groups named
    together in ``apart`` (pairs of group names) are not compared with each other."""
    owners: dict = {}  # key -> [(group, article)], the first article of each group that holds it
    pairs: set[tuple[str, str]] = set()
    for group, articles in groups.items():
        for art, keys in articles.items():
            for key in keys:
                seen = owners.setdefault(key, [])
                twin = next((a for g, a in seen if g != group and frozenset((g, group)) not in apart), None)
                if twin is not None:
                    pairs.add((art, twin))
                if all(g != group for g, _ in seen):
                    seen.append((group, art))
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


NEAR_CANDIDATES = 4  # candidates per near-identical query: the query itself, a twin, and room to skip a few


def _as_cosines(ds: Dataset, sims: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Inner products of unit queries with stored rows ``found`` turned into cosines: divided by the
    stored rows' norms (a bank scaled by 1.5 scored pairs at cos 0.69-0.83 as 1.04-1.25, above 0.9999)."""
    ids = np.unique(found[found >= 0])
    if not len(ids):
        return sims
    norms = np.empty(len(ids))
    for s in range(0, len(ids), M.BLOCK):  # scattered rows, a block at a time
        norms[s : s + M.BLOCK] = M.vector_norms(np.asarray(ds.vectors[ids[s : s + M.BLOCK]]))
    at = np.searchsorted(ids, np.maximum(found, 0))
    out = np.asarray(sims, dtype=np.float64) / np.maximum(norms[at], 1e-12)
    return np.where(found >= 0, out, -np.inf)


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
    sims, found = _search_few_lists(index, q, NEAR_CANDIDATES, params["leak_nprobe"])
    sims = _as_cosines(ds, sims, found)  # the index holds the stored vectors as they are: unit or not
    hits: dict[str, list] = {}
    for (src, a, j), sim, idx in zip(rows, sims, found, strict=True):
        # the best match that is not the query itself, in another split than the query's article (a separate
        # OOD dataset is compared with train and val only: the main dataset's own OOD split is not used with it)
        for s_, i_ in sorted(zip(sim.tolist(), idx.tolist(), strict=True), reverse=True):
            other_split = SPLIT_NAMES[int(ds.split[i_])] if i_ >= 0 else ""
            if i_ < 0 or (src is ds and i_ == j) or (src is not ds and other_split == "ood"):
                continue
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

    With a separate OOD dataset, its articles are checked against the train and val splits of ``ds``
    (and the splits of ``ds`` against one another, as always); not against the OOD split of ``ds``,
    which it replaces.
    """
    from lvm.data.splits import OOD, SPLIT_NAMES, TRAIN

    params = gate_params(profile, "split_hygiene")
    groups = {name: _article_keys(ds, name) for name in SPLIT_NAMES}
    if ood is not None:
        groups["ood-dataset"] = _article_keys(ood)
    # a separate OOD dataset replaces the main one's OOD split (the OOD gates score it instead): sharing articles
    # with that split is no leak, sharing one with train or val is
    apart = frozenset({frozenset(("ood", "ood-dataset"))})
    pairs = _leaked_pairs(groups, apart) | _near_identical_pairs(ds, index, ood, params)
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
