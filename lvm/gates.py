"""Gates: metrics -> status. Each gate computes metrics (``lvm.metrics``) and judges them with the
thresholds of the active gate profile (``lvm.profiles``); no threshold lives here.

A profile's ``[gates.ID]`` table holds ``cause`` (the runbooks' likely cause, quoted in RED/AMBER
messages), ``rules`` and gate parameters. A rule names a metric and either ``min_green`` /
``min_amber`` (higher is better) or ``max_green`` / ``max_amber`` (lower is better); ``worst``
caps the status (``"AMBER"`` for report-with-warning rules); ``split`` limits it to one split.
A metric below AMBER is RED; a NaN metric is RED (it could not be computed).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from lvm import metrics as M
from lvm.datasets import Dataset, SequenceView
from lvm.errors import LvmError
from lvm.profiles import Profile

GREEN, AMBER, RED, SKIP = "GREEN", "AMBER", "RED", "SKIP"
_ORDER = {GREEN: 0, AMBER: 1, RED: 2}
GATE_SPEC_VERSION = 1

DATA_GATES = ("encoder_fingerprint", "normalization", "oracle_recall", "alignment", "coherence", "coherence_drift", "split_hygiene", "batch_hygiene")
MODEL_GATES = ("checkpoint_integrity", "output_sanity", "val_cosine", "ood_cosine", "beats_baselines", "offset_sweep", "no_collapse",
               "context_ablations", "retrieval", "latency", "training_health", "regression")


@dataclass
class GateResult:
    gate: str
    status: str
    metrics: dict = field(default_factory=dict)
    thresholds: list = field(default_factory=list)
    message: str = ""
    dataset: str | None = None
    checkpoint: str | None = None
    split: str | None = None
    seconds: float = 0.0
    spec_version: int = GATE_SPEC_VERSION

    def to_dict(self) -> dict:
        return asdict(self)


def worst(statuses) -> str:
    statuses = [s for s in statuses if s in _ORDER]
    return max(statuses, key=_ORDER.__getitem__) if statuses else GREEN


def judge_rule(value, rule: dict) -> str:
    """GREEN / AMBER / RED of one metric value under one profile rule."""
    cap = rule.get("worst", RED)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return RED
    if "min_green" in rule:
        if value >= rule["min_green"]:
            return GREEN
        status = AMBER if "min_amber" in rule and value >= rule["min_amber"] else RED
    elif "max_green" in rule:
        if value <= rule["max_green"]:
            return GREEN
        status = AMBER if "max_amber" in rule and value <= rule["max_amber"] else RED
    else:
        raise LvmError(f"profile rule for {rule.get('metric')!r} has neither min_green nor max_green")
    return status if _ORDER[status] <= _ORDER[cap] else cap


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def judge(gate: str, metrics: dict, profile: Profile, split: str | None = None, **where) -> GateResult:
    """Apply every rule of ``[gates.<gate>]`` to ``metrics``; the message names what failed and why."""
    spec = profile.gate(gate)
    rules = [r for r in spec.get("rules", []) if r.get("split") in (None, split)]
    statuses, failed = [], []
    for rule in rules:
        if rule["metric"] not in metrics:
            raise LvmError(f"profile {profile.name}: gate {gate} has a rule for unknown metric {rule['metric']!r}")
        value = metrics[rule["metric"]]
        st = judge_rule(value, rule)
        statuses.append(st)
        if st != GREEN:
            if "min_green" in rule:
                bound = f"< {rule['min_green']}" + (f" (AMBER down to {rule['min_amber']})" if "min_amber" in rule else "")
            else:
                bound = f"> {rule['max_green']}" + (f" (AMBER up to {rule['max_amber']})" if "max_amber" in rule else "")
            failed.append(f"{rule['metric']} = {_fmt(value)} {bound} [{st}]" + (f": {rule['why']}" if rule.get("why") else ""))
    status = worst(statuses)
    message = ""
    if failed:
        message = f"{gate} {status}: " + "; ".join(failed) + (f". Likely cause: {spec['cause']}" if spec.get("cause") else "")
    return GateResult(gate, status, metrics, rules, message, split=split, **where)


def skipped(gate: str, reason: str, **where) -> GateResult:
    return GateResult(gate, SKIP, message=reason, **where)


# ----------------------------------------------------------------------------- data gates


def encoder_fingerprint(ds: Dataset, profile: Profile, checkpoint_fingerprints: dict | None = None) -> GateResult:
    """Re-encode the probes with the dataset's declared encoder; compare fingerprint and probe vectors."""
    from lvm.encoders import EncoderSpec, load_encoder

    enc_meta = ds.meta.get("encoder") or {}
    spec = enc_meta.get("spec") or {}
    stored = enc_meta.get("fingerprint")
    where = {"dataset": ds.path.name}
    if not stored:
        # imported legacy data: nothing to compare against. Not GREEN (the space is unverified), not
        # RED (nothing contradicts it): AMBER, and checkpoints must still agree with the dataset.
        return GateResult("encoder_fingerprint", AMBER, {"fingerprint_recorded": 0.0, "declared_encoder": spec.get("name")}, [],
                          "encoder_fingerprint AMBER: the dataset records no encoder fingerprint (imported data), so its vector "
                          "space cannot be verified; rebuild it with `lvm build-data` to gate the encoder", **where)
    mismatched = sorted(name for name, fp in (checkpoint_fingerprints or {}).items() if fp != stored)
    if ds.meta.get("synthetic"):
        # synthetic data has no encoder: its "space" is the generator config, recomputed here
        from lvm.synth import Segment, SynthConfig

        params = dict(ds.meta["synthetic"])
        params["segments"] = tuple(Segment(**g) for g in params.get("segments", []))
        recomputed = SynthConfig(**params).fingerprint()
        ok = recomputed == stored and not mismatched
        return GateResult("encoder_fingerprint", GREEN if ok else RED, {"fingerprint_match": float(recomputed == stored),
                          "checkpoints_match": float(not mismatched), "stored": stored, "recomputed": recomputed}, [],
                          "" if ok else f"encoder_fingerprint RED: synthetic generator config does not reproduce the stored fingerprint "
                          f"or a checkpoint comes from another space ({', '.join(mismatched)})", **where)
    try:
        encoder = load_encoder(EncoderSpec.from_dict(spec))
    except LvmError as exc:
        return skipped("encoder_fingerprint", f"declared encoder not available here: {exc}", **where)
    probe = ds.probe_vectors
    min_cos = float(M.rowwise_cos(probe, encoder.probe_vectors).min()) if probe is not None and probe.shape == encoder.probe_vectors.shape else float("nan")
    metrics = {
        "fingerprint_match": float(encoder.fingerprint == stored),
        "probe_min_cos": min_cos,
        "checkpoints_match": float(not mismatched),
        "stored": stored,
        "recomputed": encoder.fingerprint,
        "mismatched_checkpoints": mismatched,
    }
    return judge("encoder_fingerprint", metrics, profile, **where)


def annotate(result: GateResult, text: str) -> GateResult:
    """Append context (why a metric could not be trusted) to a result's message."""
    result.message = f"{result.message} {text}".strip()
    return result


def normalization(ds: Dataset, profile: Profile) -> GateResult:
    return judge("normalization", M.norm_summary(ds.vectors), profile, dataset=ds.path.name)


def oracle_recall(ds: Dataset, index, profile: Profile, sample: int | None = None, seed: int = 0) -> GateResult:
    """Query the index with a seeded sample of stored vectors; Recall@k of the query's own id.

    An exact duplicate of the query counts as found (its duplicate rate is reported). Sequence
    targets must point into the bank: the top hit for a sample of val targets has cos ≥ 0.999.
    """
    params = profile.gate("oracle_recall")
    n = min(sample or params.get("sample", 1000), ds.n_chunks)
    ks = params.get("ks", [1, 5, 1000])
    k = min(max(ks), ds.n_chunks)
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(ds.n_chunks, size=n, replace=False))
    q = np.ascontiguousarray(ds.vectors[ids], dtype=np.float32)
    _, found = index.search(q, k)
    canon = ds.duplicate_canon
    ranks = M.ranks_of(ids, found, canon)
    metrics = {f"recall_at_{kk}": float(((ranks > 0) & (ranks <= kk)).mean()) for kk in ks}
    metrics["self_at_1"] = float((found[:, 0] == ids).mean())
    metrics["duplicate_rate"] = float((np.bincount(canon, minlength=len(canon))[canon[ids]] > 1).mean())  # queries with a twin
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
    params = profile.gate("alignment")
    n = min(sample or params.get("sample", 5000), len(view))
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
    tie = params.get("tie_tolerance", 0.0)
    peak = max(others.items(), key=lambda kv: kv[1]) if others else (None, float("nan"))
    metrics = {
        "target_is_next": structural,
        "declared_target_cos": declared,
        "profile": {str(k): v for k, v in prof.items()},
        "next_margin": declared - peak[1],
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


def segment_breakdown(ds: Dataset, baseline_mean: float, n_segments: int = 10, by: str = "article_range",
                      width: int | None = None) -> list[dict]:
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
        groups = {f"{lo}-{hi - 1}": (art >= lo) & (art < hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo}
    for name, sel in groups.items():
        if sel.any():
            c = cos[sel]
            rows.append({"segment": str(name), "pairs": int(sel.sum()), "mean": float(c.mean()), "low_share": float((c < M.LOW_COHERENCE).mean()),
                         "drop_vs_baseline": float(baseline_mean - c.mean())})
    return sorted(rows, key=lambda r: -r["drop_vs_baseline"])


def coherence_drift(ds: Dataset, baseline: Dataset | None, profile: Profile) -> GateResult:
    where = {"dataset": ds.path.name}
    if baseline is None:
        return skipped("coherence_drift", "no --baseline-dataset given", **where)
    if baseline.encoder_fingerprint != ds.encoder_fingerprint:
        return annotate(judge("coherence_drift", {"comparable": 0.0, "mean_drift_rel": float("nan"), "low_share_delta_pp": float("nan")}, profile, **where),
                        f"Baseline {baseline.path.name} was encoded with another encoder (fingerprints differ): coherence is not comparable.")
    new, base = coherence_stats(ds), coherence_stats(baseline)
    params = profile.gate("coherence_drift")
    metrics = {
        "comparable": 1.0,
        "mean": new["mean"], "baseline_mean": base["mean"],
        "mean_drift_rel": (new["mean"] - base["mean"]) / base["mean"],
        "low_share": new["low_share"], "baseline_low_share": base["low_share"],
        "low_share_delta_pp": 100 * (new["low_share"] - base["low_share"]),
        "segments": segment_breakdown(ds, base["mean"], params.get("segments", 10), params.get("segment_by", "article_range"))[:5],
    }
    return judge("coherence_drift", metrics, profile, **where)


def _article_signatures(ds: Dataset) -> dict[int, bytes]:
    """Each article's sequence of row hashes (identical articles under different ids collide)."""
    h = ds.row_hashes
    return {a["article_id"]: h[a["first_chunk"] : a["first_chunk"] + a["n_chunks"]].tobytes() for a in ds.articles if a["n_chunks"]}


def _article_keys(ds: Dataset, split: str | None = None) -> dict[str, set]:
    """Per article of ``split`` (all articles if None): its source id and a hash of its vectors."""
    sig = _article_signatures(ds)
    keys: dict[str, set] = {}
    for a in ds.articles:
        if a["n_chunks"] and (split is None or a["split"] == split):
            keys[f"{ds.path.name}:{a['article_id']}"] = {("source", a["source_id"]), ("content", sig[a["article_id"]])}
    return keys


def _leaks(groups: dict[str, dict[str, set]]) -> set[str]:
    """Articles whose source id or content also occurs in another group (split)."""
    owner: dict = {}
    leaked: set[str] = set()
    for group, articles in groups.items():
        for art, keys in articles.items():
            for key in keys:
                first = owner.setdefault(key, (group, art))
                if first[0] != group:
                    leaked.update({art, first[1]})
    return leaked


def split_hygiene(ds: Dataset, profile: Profile, ood: Dataset | None = None) -> GateResult:
    """No article in two of train / val / OOD: not by id, not by source id, not by identical content.

    With a separate OOD dataset, its articles are checked against every split of ``ds``.
    """
    from lvm.splits import OOD, SPLIT_NAMES, TRAIN

    groups = {name: _article_keys(ds, name) for name in SPLIT_NAMES}
    if ood is not None:
        groups["ood"] = {**groups["ood"], **_article_keys(ood)}
    leaked = _leaks(groups)
    article_code = np.array([SPLIT_NAMES.index(a["split"]) for a in ds.articles], dtype=np.int8)
    chunk_conflicts = int((ds.split != article_code[ds.article_id]).sum())  # a chunk in another split than its article
    # exact duplicate chunk vectors between train and OOD (counted: repeated sentences happen)
    ood_hashes = ood.row_hashes if ood is not None else ds.row_hashes[ds.split == OOD]
    dup = int(np.isin(ood_hashes, ds.row_hashes[ds.split == TRAIN]).sum())
    train_coh = coherence_stats(ds, TRAIN).get("mean", float("nan"))
    ood_coh = (coherence_stats(ds, OOD) if ood is None else coherence_stats(ood)).get("mean", float("nan"))
    metrics = {
        "shared_articles": len(leaked) + chunk_conflicts,
        "leaked_articles": sorted(leaked)[:20],
        "chunks_outside_article_split": chunk_conflicts,
        "train_ood_duplicate_vectors": int(dup),
        "train_ood_duplicate_share": float(dup / max(len(ood_hashes), 1)),
        "train_coherence": train_coh,
        "ood_coherence": ood_coh,
        "ood_train_coherence_gap": abs(ood_coh - train_coh) if not (math.isnan(ood_coh) or math.isnan(train_coh)) else 0.0,
        "splits": {name: int((ds.split == c).sum()) for c, name in enumerate(SPLIT_NAMES)},
    }
    return judge("split_hygiene", metrics, profile, dataset=ds.path.name)


def batch_hygiene(view: SequenceView, profile: Profile, batch_size: int = 256, max_per_article: int | None = 2, seed: int = 0,
                  n_batches: int | None = None, masked=None) -> GateResult:
    """Batches from the trainer's sampler: no same-article pair left among InfoNCE negatives.

    ``masked(ids, B)`` is the loss's (B, B) mask of removed negatives (default: InfoNCE's own).
    """
    import torch

    from lvm.losses import masked_negatives
    from lvm.sampler import article_capped_batches

    masked = masked if masked is not None else masked_negatives
    n_batches = n_batches or profile.gate("batch_hygiene").get("batches", 50)
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
    metrics = {"same_article_negatives": exposed, "same_article_pairs": pairs, "max_items_per_article": max_items,
               "cap": max_per_article or 0, "batches": len(batches)}
    metrics["cap_respected"] = float(not max_per_article or max_items <= max_per_article)
    return judge("batch_hygiene", metrics, profile, dataset=view.dataset.path.name, split=view.split)


# ----------------------------------------------------------------------------- model gates


class ModelEval:
    """One model on one sequence view: predictions and targets computed once, shared by gates."""

    def __init__(self, model, view: SequenceView, name: str):
        self.model, self.view, self.name = model, view, name

    @cached_property
    def pred(self) -> np.ndarray:
        from lvm.evaluation import predict

        return predict(self.model, self.view)

    @property
    def target(self) -> np.ndarray:
        return self.view.target_vectors  # shared by every model evaluated on this view

    @cached_property
    def cos(self) -> np.ndarray:
        return M.rowwise_cos(self.pred, self.target)

    def where(self) -> dict:
        return {"dataset": self.view.dataset.path.name, "checkpoint": self.name, "split": self.view.split}

    def sample(self, n: int | None, seed: int = 0) -> np.ndarray:
        """Sorted seeded sample of ``n`` sequence indices (all of them when ``n`` is None or larger)."""
        if n is None or n >= len(self.view):
            return np.arange(len(self.view))
        return np.sort(np.random.default_rng(seed).choice(len(self.view), size=n, replace=False))


def checkpoint_integrity(path: str | Path, ds: Dataset, profile: Profile, name: str) -> tuple[GateResult, object, dict | None]:
    """Load safely and check metadata, dims and fingerprint; returns (result, model or None, meta)."""
    from lvm.checkpoints import REQUIRED_KEYS, load_checkpoint

    where = {"dataset": ds.path.name, "checkpoint": name}
    try:
        model, meta = load_checkpoint(path)
    except LvmError as exc:
        # nothing else can be checked on a file that does not load: one failure, not four
        cause = profile.gate("checkpoint_integrity").get("cause", "")
        return GateResult("checkpoint_integrity", RED, {"loads": 0.0}, [], f"checkpoint_integrity RED: loads = 0: {exc}. Likely cause: {cause}", **where), None, None
    metrics = {
        "loads": 1.0,
        "metadata_complete": float(all(k in meta for k in REQUIRED_KEYS)),
        "dims_match": float(int(meta["input_dim"]) == ds.dim),
        "fingerprint_match": float(meta["encoder_fingerprint"] == ds.encoder_fingerprint),
        "same_dataset": float(meta.get("dataset_hash") == ds.content_hash),
        "n_params": int(meta.get("n_params", 0)),
    }
    return judge("checkpoint_integrity", metrics, profile, **where), model, meta


def output_sanity(ev: ModelEval, profile: Profile, sample: int = 512) -> GateResult:
    from lvm.evaluation import predict

    p = ev.pred
    norms = np.linalg.norm(p.astype(np.float64), axis=1)
    idx = np.arange(min(sample, len(ev.view)))
    again = predict(ev.model, ev.view, idx)
    metrics = {
        "nonfinite": int((~np.isfinite(p)).any(axis=1).sum()),
        "max_norm_error": float(np.abs(norms - 1.0).max()) if len(norms) else float("nan"),  # NaN if any row is NaN
        "max_repeat_diff": float(np.abs(again - p[idx]).max()) if len(idx) else 0.0,
    }
    return judge("output_sanity", metrics, profile, **ev.where())


def cosine_gate(gate: str, ev: ModelEval, profile: Profile, other: ModelEval | None = None) -> GateResult:
    """``val_cosine`` / ``ood_cosine``: mean cos(ŷ, y) with a bootstrap 95 % CI."""
    lo, hi = M.bootstrap_ci(ev.cos)
    metrics = {gate: float(ev.cos.mean()), f"{gate}_ci_low": lo, f"{gate}_ci_high": hi, "n": int(len(ev.cos))}
    if other is not None:
        metrics["ood_minus_val"] = float(ev.cos.mean() - other.cos.mean())
    return judge(gate, metrics, profile, **ev.where())


def beats_baselines(ev: ModelEval, baselines: dict, profile: Profile, seed: int = 0) -> GateResult:
    """Paired per-sequence difference against the best null baseline, with a bootstrap CI.

    ``baselines`` maps a name to a model (or a ``ModelEval``); all are scored on the same seeded
    sample of sequences (the profile's ``sample``; all sequences when it is larger), streamed.
    """
    from lvm.evaluation import predict

    idx = ev.sample(profile.gate("beats_baselines").get("sample"), seed)
    target = ev.target[idx]
    base_cos = {name: M.rowwise_cos(predict(getattr(b, "model", b), ev.view, idx), target) for name, b in baselines.items()}
    scores = {name: float(c.mean()) for name, c in base_cos.items()}
    best = max(scores, key=scores.get)
    diff = M.paired_difference(ev.cos[idx], base_cos[best])
    metrics = {"model_cosine": float(ev.cos[idx].mean()), "baselines": scores, "best_baseline": best, "sample": int(len(idx)),
               "margin": diff["mean"], "margin_ci_low": diff["ci_low"], "margin_ci_high": diff["ci_high"]}
    return judge("beats_baselines", metrics, profile, **ev.where())


def offset_sweep(ev: ModelEval, profile: Profile) -> GateResult:
    """P(k) = mean cos(ŷ, chunk at target+k), k = −3…3: the model must point at k = 0."""
    ds = ev.view.dataset
    prof = M.similarity_profile(ev.pred, ev.view.targets, ds.vectors, ds.article_id)
    others = {k: v for k, v in prof.items() if k != 0 and not math.isnan(v)}
    ahead = {k: v for k, v in others.items() if k > 0}
    metrics = {
        "profile": {str(k): v for k, v in prof.items()},
        "peak_offset": int(max(prof, key=lambda k: -1e9 if math.isnan(prof[k]) else prof[k])),
        "margin": prof[0] - max(others.values()) if others else float("nan"),
        "forward_margin": prof[0] - max(ahead.values()) if ahead else float("nan"),
        "copy_gap": prof.get(-1, float("nan")) - prof[0],
    }
    return judge("offset_sweep", metrics, profile, **ev.where())


def no_collapse(ev: ModelEval, profile: Profile, sample: int = 4096) -> GateResult:
    other = M.other_article_cos(ev.pred, ev.target, ev.view.article_ids)
    sub = ev.pred[: min(sample, len(ev.pred))]
    metrics = {
        "margin": float(ev.cos.mean() - other.mean()),
        "mean_pairwise_cos": M.mean_pairwise_cos(sub),
        "effective_rank": M.effective_rank(sub),
        "target_effective_rank": M.effective_rank(ev.target[: len(sub)]),
    }
    return judge("no_collapse", metrics, profile, **ev.where())


def context_ablations(ev: ModelEval, profile: Profile, seed: int = 0) -> GateResult:
    from lvm.evaluation import ABLATIONS, predict

    idx = ev.sample(profile.gate("context_ablations").get("sample"), seed)
    base = float(ev.cos[idx].mean())
    metrics = {"sample": int(len(idx))}
    for kind in ABLATIONS:
        p = predict(ev.model, ev.view, idx, ablation=kind, seed=seed)
        metrics[f"delta_{kind}"] = float(M.rowwise_cos(p, ev.target[idx]).mean() - base)
    return judge("context_ablations", metrics, profile, **ev.where())


def retrieval(ev: ModelEval, index, profile: Profile, nprobe: int | None = None, k: int = 50) -> GateResult:
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = nprobe
    idx = ev.sample(profile.gate("retrieval").get("sample"))
    pred, target = ev.pred[idx], ev.target[idx]
    t0 = time.perf_counter()
    _, found = index.search(np.ascontiguousarray(pred, dtype=np.float32), k)
    search_ms = 1e3 * (time.perf_counter() - t0) / max(len(pred), 1)
    ds = ev.view.dataset
    metrics = M.retrieval_metrics(M.ranks_of(ev.view.targets[idx], found, ds.duplicate_canon), k)
    metrics["contrastive_accuracy"] = M.contrastive_accuracy(pred, target, ev.view.article_ids[idx])
    metrics["sample"] = int(len(idx))
    metrics["search_ms_per_query"] = search_ms
    metrics["nprobe"] = int(getattr(index, "nprobe", 0))
    return judge("retrieval", metrics, profile, **ev.where())


def latency(ev: ModelEval, profile: Profile, seconds: np.ndarray | None = None, threads: int = 1) -> GateResult:
    from lvm.evaluation import batch1_latency

    params = profile.gate("latency")
    if seconds is None:
        seconds = batch1_latency(ev.model, ev.view, params.get("calls", 500), params.get("warmup", 50), threads)
    metrics = {**M.latency_percentiles(seconds), "threads": threads}
    return judge("latency", metrics, profile, **ev.where())


def training_health(history: dict | None, profile: Profile, epoch: int | None = None, **where) -> GateResult:
    """The run's history: epoch schedule, loss balance, NaN/Inf, InfoNCE logged, train–val gap."""
    if not history or not history.get("epochs"):
        return skipped("training_health", "no training_history.json beside the checkpoint", **where)
    epochs = [e for e in history["epochs"] if e.get("epoch", 0) >= 1]
    if not epochs:
        return skipped("training_health", "baseline without training epochs", **where)
    schedule = []
    status_by_rule = GREEN
    for e in epochs:
        for rule in profile.rules_at("val_cosine", e["epoch"]):
            if e["val_cosine"] < rule.min:
                schedule.append({"epoch": e["epoch"], "value": e["val_cosine"], "threshold": rule.min, "action": rule.action})
                status_by_rule = worst([status_by_rule, RED if rule.action == "abort" else AMBER])
    ratios = []
    info_enabled = False
    for e in epochs:
        cfg_lambda = e.get("lambda_info", 0.0)
        if cfg_lambda > 0:
            info_enabled = True
            lambda_mse = (history.get("loss_config") or {}).get("lambda_mse", 1.0)
            ratios.append(cfg_lambda * e.get("train_loss_info", 0.0) / max(lambda_mse * e.get("train_loss_mse", 0.0), 1e-12))
    nonfinite = sum(1 for e in epochs for k, v in e.items() if isinstance(v, float) and not math.isfinite(v))
    # the train–val gap of the epoch whose weights are gated (best checkpoint), else of the last one
    last = next((e for e in epochs if e["epoch"] == epoch), epochs[-1])
    metrics = {
        "schedule_status": {GREEN: 0, AMBER: 1, RED: 2}[status_by_rule],
        "schedule_violations": schedule,
        "loss_balance_max": max(ratios) if ratios else 0.0,
        "info_logged_nonzero": float(not info_enabled or all(e.get("train_loss_info", 0.0) > 0 for e in epochs)),
        "nonfinite_values": nonfinite,
        "train_val_gap": float(last.get("train_cosine", float("nan")) - last.get("val_cosine", float("nan"))),
        "gap_epoch": int(last["epoch"]),
        "aborted": float(history.get("status") == "aborted"),
        "epochs": len(epochs),
    }
    return judge("training_health", metrics, profile, **where)
