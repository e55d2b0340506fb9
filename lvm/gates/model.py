"""Model gates: does a model, scored on the dataset's sequences, do what a healthy LVM does?"""

from __future__ import annotations

import math
import time

import numpy as np

from lvm import metrics as M
from lvm.data.datasets import Dataset
from lvm.evaluation import ABLATIONS, ModelEval, batch1_cost, batch1_latency, predict
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
    worst,
)
from lvm.profiles import Profile

CARD_REQUIRED = ("name", "type", "ctx", "input_dim", "encoder_fingerprint")
NOT_CALLABLE = "predictions only: there is no model to call"


def _load_failure_cause(load_error: str | None, default: str) -> str:
    """The likely cause of a model that did not load, from the loader's one-line reason."""
    text = load_error or ""
    if "do not match the SHA-256" in text:
        return "weights changed since the card was written (the weights file was replaced or edited after it was saved)"
    if "pickled checkpoints are not loaded" in text:
        return (
            "a pickled checkpoint (the seeds' best_model.pt): import it once with `lvm import-checkpoint FILE "
            "--factory py:models.py:YourClass --out DIR` and gate DIR"
        )
    if "missing" in text or "not found" in text:
        return "the checkpoint is incomplete: a file it needs is missing"
    return default


def _fp(v) -> str:
    return str(v)[:12] if v else "none"


def checkpoint_integrity(card, ds: Dataset, profile: Profile, name: str, load_error: str | None = None) -> GateResult:
    """The model (any adapter's ``ModelCard``) belongs to this data: it loaded, its card is complete,
    its input dim and encoder fingerprint match the dataset. ``load_error`` is why it did not load.

    The message names the exact failure: weights changed since the card was written, dims "384 vs 768",
    both fingerprints (first 12 characters), the card fields missing."""
    where = {"dataset": ds.path.name, "checkpoint": name}
    default_cause = profile.gate("checkpoint_integrity").get("cause", "")
    if card is None:
        # nothing else can be checked on a model that does not load: one failure, not four
        return GateResult(
            "checkpoint_integrity",
            RED,
            {"loads": 0.0},
            [],
            f"checkpoint_integrity RED: loads = 0: {load_error}. "
            f"Likely cause: {_load_failure_cause(load_error, default_cause)}",
            **where,
        )
    missing = [k for k in CARD_REQUIRED if getattr(card, k) is None]
    metrics = {
        "loads": 1.0,
        "metadata_complete": float(not missing),
        "dims_match": float(card.input_dim == ds.dim),
        "fingerprint_match": float(card.encoder_fingerprint == ds.encoder_fingerprint),
        "same_dataset": float(card.dataset_hash == ds.content_hash),
        "n_params": int(card.n_params or 0),
        "kind": card.kind,
        "gated_min_ctx": card.gated_min_ctx,
    }
    result = judge("checkpoint_integrity", metrics, profile, **where)
    found = []
    if missing:
        found.append(f"model card lacks {', '.join(missing)}")
    if not metrics["dims_match"]:
        found.append(f"dims {card.input_dim} vs {ds.dim} (model vs dataset): trained on another encoder's vectors")
    if not metrics["fingerprint_match"] and card.encoder_fingerprint is not None:
        found.append(
            f"encoder fingerprint {_fp(card.encoder_fingerprint)} (model) vs {_fp(ds.encoder_fingerprint)} "
            "(dataset): trained on vectors of another encoder or pipeline (pooling, normalisation, max length)"
        )
    if found and result.status != GREEN:  # the exact failure instead of the profile's generic cause
        result.message = result.message.split(". Likely cause:")[0] + ". Found: " + "; ".join(found)
    if card.encoder_fingerprint is None:
        result.message += (
            " (the model card has no encoder_fingerprint: add the dataset's, printed by `lvm inspect DATASET`)"
        )
    if not card.accepts_mask:
        result.message = (
            result.message + " " if result.message else ""
        ) + f"(model declares accepts_mask = false: gated on full contexts only, min_ctx = ctx = {card.ctx})"
    return result


def output_sanity(ev: ModelEval, profile: Profile) -> GateResult:
    """Finite, unit-norm and deterministic raw output (nothing is normalised for the model)."""
    p = ev.pred
    norms = np.linalg.norm(p.astype(np.float64), axis=1)
    metrics = {
        "nonfinite": int((~np.isfinite(p)).any(axis=1).sum()),
        "max_norm_error": float(np.abs(norms - 1.0).max()) if len(norms) else float("nan"),  # NaN if any row is NaN
    }
    if not ev.callable:
        return judge("output_sanity", metrics, profile, unmeasured={"max_repeat_diff": NOT_CALLABLE}, **ev.where())
    idx = np.arange(min(gate_params(profile, "output_sanity")["sample"], len(ev.view)))
    again = predict(ev.model, ev.view, idx)
    # NaN rows are output_sanity's nonfinite finding, not non-determinism: compare what is finite
    same_nan = np.isnan(again) & np.isnan(p[idx])
    metrics["max_repeat_diff"] = float(np.where(same_nan, 0.0, np.abs(again - p[idx])).max()) if len(idx) else 0.0
    return judge("output_sanity", metrics, profile, **ev.where())


def baseline_cosines(ev: ModelEval, baselines: dict, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sequence cos of each null baseline on sequences ``idx`` of the model's view, computed once
    per (view, sample) and shared by every gate that compares the model with them."""
    cache = ev.__dict__.setdefault("_baseline_cos", {})
    key = (len(idx), int(idx[:1].sum()) if len(idx) else 0, int(idx[-1:].sum()) if len(idx) else 0)
    if key not in cache:
        target = ev.target[idx]
        cache[key] = {
            name: M.rowwise_cos(predict(getattr(b, "model", b), ev.view, idx), target) for name, b in baselines.items()
        }
    return cache[key]


def _vs_best_baseline(ev: ModelEval, baselines: dict, profile: Profile, seed: int = 0) -> dict:
    """The model against the best null baseline on the same seeded sample (paired, articles resampled)."""
    idx = ev.sample(gate_params(profile, "beats_baselines")["sample"], seed)
    base_cos = baseline_cosines(ev, baselines, idx)
    scores = {name: float(c.mean()) for name, c in base_cos.items()}
    best = max(scores, key=lambda name: scores[name])
    diff = M.paired_difference(
        ev.cos[idx], base_cos[best], clusters=ev.view.article_ids[idx]
    )  # same articles both sides
    return {"idx": idx, "scores": scores, "best": best, "diff": diff}


def cosine_gate(
    gate: str, ev: ModelEval, profile: Profile, other: ModelEval | None = None, baselines: dict | None = None
) -> GateResult:
    """``val_cosine`` / ``ood_cosine``: mean cos(ŷ, y) with an article-cluster bootstrap 95 % CI and,
    given the null baselines, the margin over the best of them on the same sequences (the question
    a user asks on any domain: does the model beat what the data gives for free?)."""
    ci = M.cluster_bootstrap(ev.cos, ev.view.article_ids)  # articles resampled: their sequences overlap
    metrics = {
        gate: ci["mean"],
        f"{gate}_ci_low": ci["ci_low"],
        f"{gate}_ci_high": ci["ci_high"],
        "n": ci["n"],
        "articles": ci["clusters"],
        "n_eff": ci["n_eff"],
        "split_scored": ev.view.split,
        "dataset_scored": ev.view.dataset.path.name,
    }
    if other is not None:
        metrics["ood_minus_val"] = float(ev.cos.mean() - other.cos.mean())
    unmeasured = {}
    if baselines:
        vs = _vs_best_baseline(ev, baselines, profile)
        metrics.update(
            {
                "margin_vs_baseline": vs["diff"]["mean"],
                "margin_vs_baseline_ci_low": vs["diff"]["ci_low"],
                "best_baseline": vs["best"],
                "best_baseline_cosine": vs["scores"][vs["best"]],
            }
        )
    else:
        unmeasured = {"margin_vs_baseline": "no baselines given"}
    result = judge(gate, metrics, profile, unmeasured=unmeasured, **ev.where())
    return cap_thin(result, ci["n_eff"], gate_params(profile, gate)["min_sample"], "independent sequences (n_eff)")


def beats_baselines(ev: ModelEval, baselines: dict, profile: Profile, seed: int = 0) -> GateResult:
    """Paired per-sequence difference against the best null baseline, with an article-cluster CI.

    ``baselines`` maps a name to a model (or a ``ModelEval``); all are scored on the same seeded
    sample of sequences (the profile's ``sample``; all sequences when it is larger), streamed.
    A margin below the profile's minimum effect size is not a win, however significant.
    """
    vs = _vs_best_baseline(ev, baselines, profile, seed)
    diff = vs["diff"]
    metrics = {
        "model_cosine": float(ev.cos[vs["idx"]].mean()),
        "baselines": vs["scores"],
        "best_baseline": vs["best"],
        "sample": int(len(vs["idx"])),
        "margin": diff["mean"],
        "margin_ci_low": diff["ci_low"],
        "margin_ci_high": diff["ci_high"],
        "articles": diff["clusters"],
        "n_eff": diff["n_eff"],
    }
    result = judge("beats_baselines", metrics, profile, **ev.where())
    if result.status != GREEN:
        annotate(
            result,
            f"Best baseline: {vs['best']} ({vs['scores'][vs['best']]:.4f}) vs model {metrics['model_cosine']:.4f}.",
        )
    return cap_thin(
        result, diff["n_eff"], gate_params(profile, "beats_baselines")["min_sample"], "independent sequences (n_eff)"
    )


def _forward_margin_ci(ev: ModelEval, prof: dict, ahead: dict) -> dict:
    """The CI of the forward margin as reported, P(0) − P(k*), k* = the k > 0 of highest P(k).

    k* is fixed on the whole sample (the offset the margin names), not re-chosen per resample. P(0)
    is a mean over every sequence and P(k*) over the sequences whose target has a chunk k* steps on,
    as in the profile; both are recomputed on each article-cluster resample (the same articles on both
    sides: ``metrics.cluster_bootstrap_difference``), so the CI is that of the reported value (a paired
    CI on the subset with a chunk k* on, which it was, belongs to another number when k* > 1).
    ``forward_n_eff`` is the paired difference's effective sample size, as before.
    """
    ds = ev.view.dataset
    if not ahead:
        return {"forward_margin_ci_low": float("nan"), "forward_margin_ci_high": float("nan"), "forward_n_eff": 0.0}
    k = max(ahead, key=ahead.get)
    j, ok = M.neighbour_indices(ev.view.targets, ds.article_id, k)
    if not ok.any():
        return {"forward_margin_ci_low": float("nan"), "forward_margin_ci_high": float("nan"), "forward_n_eff": 0.0}
    at0 = M.rowwise_cos(ev.pred, ds.vectors, None, ev.view.targets)  # the terms of P(0), as the profile has them
    atk = M.rowwise_cos(ev.pred, ds.vectors, np.flatnonzero(ok), j[ok])  # ... and of P(k*)
    art = ev.view.article_ids
    ci = M.cluster_bootstrap_difference(at0, art, atk, art[ok])
    paired = M.cluster_bootstrap(at0[ok] - atk, art[ok])
    return {
        "forward_margin_ci_low": ci["ci_low"],
        "forward_margin_ci_high": ci["ci_high"],
        "forward_n_eff": paired["n_eff"],
        "forward_offset": int(k),
    }


def offset_sweep(ev: ModelEval, profile: Profile) -> GateResult:
    """P(k) = mean cos(ŷ, chunk at target+k), k = −3…3: the model must point at k = 0.

    The forward margin (P(0) over the closest later chunk, among the offsets with enough sequences:
    ``_supported_ahead``) is decided with an article-cluster CI; a sample too small for it is AMBER
    "too few sequences", not RED on noise.
    """
    ds = ev.view.dataset
    min_sample = gate_params(profile, "offset_sweep")["min_sample"]
    prof = M.similarity_profile(ev.pred, ev.view.targets, ds.vectors, ds.article_id)
    others = {k: v for k, v in prof.items() if k != 0 and not math.isnan(v)}
    ahead = _supported_ahead(ev, others, min_sample)
    metrics = {
        "profile": {str(k): v for k, v in prof.items()},
        "peak_offset": int(max(prof, key=lambda k: -1e9 if math.isnan(prof[k]) else prof[k])),
        "margin": prof[0] - max(others.values()) if others else float("nan"),
        "forward_margin": prof[0] - max(ahead.values()) if ahead else float("nan"),
        "forward_offsets": sorted(ahead),
        "copy_gap": prof.get(-1, float("nan")) - prof[0],
        **_forward_margin_ci(ev, prof, ahead),
    }
    result = judge("offset_sweep", metrics, profile, **ev.where())
    return cap_thin(result, metrics["forward_n_eff"], min_sample, "independent sequences (n_eff)")


def _supported_ahead(ev: ModelEval, others: dict, min_sample: int) -> dict:
    """The later offsets k > 0 the forward margin is taken over: those with at least ``min_sample``
    sequences whose target has a chunk k steps on, or else the best-supported one (k = 1). Full-window
    models are scored only on targets at position ≥ ctx, and few articles run 3 chunks past those:
    P(3) over 17 sequences would otherwise decide the margin, and cap the gate at "n = 17"."""
    ds = ev.view.dataset
    ahead = {k: v for k, v in others.items() if k > 0}
    support = {k: int(M.neighbour_indices(ev.view.targets, ds.article_id, k)[1].sum()) for k in ahead}
    kept = {k: v for k, v in ahead.items() if support[k] >= min_sample}
    if not kept and ahead:
        best = max(support, key=lambda k: (support[k], -k))
        kept = {best: ahead[best]}
    return kept


def no_collapse(ev: ModelEval, profile: Profile) -> GateResult:
    other = M.other_article_cos(ev.pred, ev.target, ev.view.article_ids)
    sub = ev.pred[: min(gate_params(profile, "no_collapse")["sample"], len(ev.pred))]
    metrics = {
        "margin": float(ev.cos.mean() - other.mean()),
        "mean_pairwise_cos": M.mean_pairwise_cos(sub),
        "effective_rank": M.effective_rank(sub),
        "target_effective_rank": M.effective_rank(ev.target[: len(sub)]),
    }
    return judge("no_collapse", metrics, profile, **ev.where())


def context_ablations(ev: ModelEval, profile: Profile, seed: int = 0) -> GateResult:
    if not ev.callable:
        return skipped("context_ablations", NOT_CALLABLE, **ev.where())
    idx = ev.sample(gate_params(profile, "context_ablations")["sample"], seed)
    base = float(ev.cos[idx].mean())
    metrics = {"sample": int(len(idx))}
    for kind in ABLATIONS:
        p = predict(ev.model, ev.view, idx, ablation=kind, seed=seed)
        metrics[f"delta_{kind}"] = float(M.rowwise_cos(p, ev.target[idx]).mean() - base)
    return judge("context_ablations", metrics, profile, **ev.where())


def retrieval(
    ev: ModelEval, index, profile: Profile, nprobe: int | None = None, baselines: dict | None = None
) -> GateResult:
    """R@k, Contain@50, Eff@5, MRR of the predictions in the bank; given the null baselines, each
    also relative to the best baseline's (same queries, same index)."""
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = nprobe
    params = gate_params(profile, "retrieval")
    k = params["k"]
    idx = ev.sample(params["sample"])
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
    unmeasured = {}
    if baselines:
        best = _vs_best_baseline(ev, baselines, profile)["best"]
        base_pred = predict(getattr(baselines[best], "model", baselines[best]), ev.view, idx)
        _, base_found = index.search(np.ascontiguousarray(base_pred, dtype=np.float32), k)
        base = M.retrieval_metrics(M.ranks_of(ev.view.targets[idx], base_found, ds.duplicate_canon), k)
        metrics["best_baseline"] = best
        for name in ("contain_at_50", "r_at_5", "eff_at_5"):
            if name in metrics and name in base:
                metrics[f"baseline_{name}"] = base[name]
                metrics[f"{name}_vs_baseline"] = metrics[name] - base[name]
    else:
        unmeasured = {f"{n}_vs_baseline": "no baselines given" for n in ("contain_at_50", "r_at_5", "eff_at_5")}
    return judge("retrieval", metrics, profile, unmeasured=unmeasured, **ev.where())


LOAD_METRICS = ("load_disturbance",)  # the latency rules that judge the machine, not the model


def latency(ev: ModelEval, profile: Profile, timings: dict | None = None, threads: int = 1) -> GateResult:
    """Two figures of one batch-1 call.

    1. Its machine-independent cost (``evaluation.batch1_cost``): ``cost_flops``,
       ``cost_weight_bytes``, ``cost_params``, identical on every CPU; what ``lvm compare`` compares
       across machines (``cost_error`` instead when the model cannot be counted).
    2. Its wall-clock cost on this machine, in units of a reference probe timed beside every call
       (``evaluation.batch1_latency``: interleaved probe, alternating order, ``rounds`` rounds), from
       the least-disturbed round (``metrics.latency_rounds``). When even that round is disturbed beyond
       the profile's ``load_disturbance`` rule, the machine is too busy to time: AMBER with the
       disturbance figures, and the ratio is not judged (neither GREEN nor RED on noise).

    The calls go through one inference path chosen by a fixed rule (``lvm.models.inference``):
    ``inference_path``, ``inference_rule``, ``inference_min_cos`` and the eager P50/P95 are recorded.
    Timings are judged here only; they are not compared across machines."""
    if not ev.callable:
        return skipped("latency", NOT_CALLABLE, **ev.where())
    params = gate_params(profile, "latency")
    if timings is None:
        timings = batch1_latency(ev.model, ev.view, params["calls"], params["warmup"], threads, rounds=params["rounds"])
    metrics = {**M.latency_rounds(timings, getattr(timings, "load", None)), "threads": threads}
    metrics["cpu_clock"] = "thread_time"
    metrics.update(_inference_metrics(timings))
    metrics.update(batch1_cost(ev.model, ev.view))
    busy = _too_busy(metrics, profile)
    unmeasured = {
        r["metric"]: busy for r in profile.gate("latency").get("rules", []) if r["metric"] not in LOAD_METRICS
    }
    result = judge("latency", metrics, profile, unmeasured=unmeasured if busy else None, **ev.where())
    if busy:  # the machine, not the model: no "likely cause" about the model
        result.message = f"latency {result.status}: {busy}; ratio {metrics['ratio']:.3g} from that round, not judged"
    if "cost_error" in metrics:
        annotate(result, f"(cost not counted: {metrics['cost_error']})")
    return result


def _too_busy(metrics: dict, profile: Profile) -> str | None:
    """Why the machine was too busy to time (a load rule of the profile is not GREEN), else None."""
    rules = [r for r in profile.gate("latency").get("rules", []) if r["metric"] in LOAD_METRICS]
    failed = [r for r in rules if judge_rule(metrics[r["metric"]], r) != GREEN]
    if not failed:
        return None
    bounds = ", ".join(f"{r['metric']} {metrics[r['metric']]:.2f} > {r.get('max_green')}" for r in failed)
    runnable = metrics.get("runnable_per_core")
    return (
        f"too busy to time: {bounds} (the least disturbed of {metrics['rounds']} rounds: reference probe "
        f"{100 * metrics['probe_slowdown']:.0f} % above the fastest seen, {100 * metrics['preempted_share']:.0f} % "
        "of calls preempted"
        + (f"; {runnable:.1f} other runnable tasks per core" if runnable is not None else "")
        + f"; disturbance by round: {', '.join(f'{d:.2f}' for d in metrics['round_disturbance'])})"
    )


def _inference_metrics(timings: dict) -> dict:
    """What the latency was timed through: ``batch1_latency``'s ``Timings.inference``, if recorded."""
    if not hasattr(timings, "inference"):
        return {"inference_path": "not recorded"}  # timings from elsewhere (a plain dict)
    info = timings.inference
    if info is None:  # batch1_latency(fast=False)
        return {"inference_path": "eager", "inference_rule": "eager requested (fast=False)", "inference_min_cos": 1.0}
    return {
        "inference_path": info["path"],
        "inference_rule": info["rule"],
        "inference_min_cos": info["min_cos"],
        "inference_reason": info["reason"],
        "eager_p50_ms": info["eager_p50_ms"],
        "eager_p95_ms": info["eager_p95_ms"],
    }


def training_health(history: dict | None, profile: Profile, epoch: int | None = None, **where) -> GateResult:
    """The run's history: epoch schedule, loss balance, NaN/Inf, InfoNCE logged, train–val gap."""
    if not history or not history.get("epochs"):
        return skipped("training_health", "no training_history.json beside the checkpoint", **where)
    epochs = [e for e in history["epochs"] if e.get("epoch", 0) >= 1]
    if not epochs:
        return skipped("training_health", "baseline without training epochs", **where)
    # the val-cosine schedule, judged as the trainer's kill switches judge it
    per_epoch = (history.get("sequences") or {}).get("train") if isinstance(history.get("sequences"), dict) else None
    violations = profile.schedule_violations(epochs, kinds=("val_cosine",), samples_per_epoch=per_epoch)
    schedule = [{k: v[k] for k in ("epoch", "value", "threshold", "action")} for v in violations]
    status_by_rule = worst([GREEN, *(v["status"] for v in violations)])
    ratios = []
    info_enabled = False
    for e in epochs:
        cfg_lambda = e.get("lambda_info", 0.0)
        if cfg_lambda > 0:
            info_enabled = True
            lambda_mse = (history.get("loss_config") or {}).get("lambda_mse", 1.0)
            ratios.append(
                cfg_lambda * e.get("train_loss_info", 0.0) / max(lambda_mse * e.get("train_loss_mse", 0.0), 1e-12)
            )
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
    unmeasured = {}
    lambda_mse = (history.get("loss_config") or {}).get("lambda_mse", 1.0)
    if info_enabled and not lambda_mse:
        unmeasured["loss_balance_max"] = "MSE is off (λ_mse = 0): there is no MSE term to balance InfoNCE against"
        metrics["loss_balance_max"] = float("nan")
    result = judge("training_health", metrics, profile, unmeasured=unmeasured, **where)
    if schedule:
        fired = "; ".join(
            f"epoch {v['epoch']}: val_cosine {v['value']:.4f} < {v['threshold']} ({v['action']})" for v in schedule
        )
        annotate(result, f"Kill-switch rules that fired: {fired}.")
    return result
