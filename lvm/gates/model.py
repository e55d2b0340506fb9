"""Model gates: does a model, scored on the dataset's sequences, do what a healthy LVM does?"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from lvm import metrics as M
from lvm.data.datasets import Dataset
from lvm.errors import LvmError
from lvm.evaluation import ABLATIONS, ModelEval, batch1_latency, predict
from lvm.gates.status import (
    AMBER,
    GREEN,
    RED,
    GateResult,
    judge,
    skipped,
    worst,
)
from lvm.profiles import Profile


def checkpoint_integrity(path: str | Path, ds: Dataset, profile: Profile, name: str) -> tuple[GateResult, object, dict | None]:
    """Load safely and check metadata, dims and fingerprint; returns (result, model or None, meta)."""
    from lvm.models.checkpoints import REQUIRED_KEYS, load_checkpoint

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
