"""Results files (versioned JSON, written atomically) and the regression check between two of them.

Schema ``lvm-gate-results`` v1::

    {schema, schema_version, created_at,
     provenance: {git_commit, lvm, torch, faiss, numpy, sentence_transformers, python, hardware, seed, argv},
     profile: {name, version},
     results: [{gate, status, metrics, thresholds, message, dataset, checkpoint, split, seconds,
                spec_version, comparability: {encoder_fingerprint, dataset_hash, profile, profile_version,
                hardware_class}, comparability_key, per_sequence?}],
     summary: {GREEN, AMBER, RED, SKIP, overall}}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np

from lvm.errors import LvmError
from lvm.gates.spec import HARDWARE_BOUND_GATES
from lvm.gates.status import AMBER, GREEN, RED, SKIP, GateResult, worst
from lvm.io import utc_timestamp, write_json_atomic

SCHEMA = "lvm-gate-results"
SCHEMA_VERSION = 1
PAIRED_BOOTSTRAP_METRICS = ("val_cosine", "ood_cosine")  # per-sequence scores are stored for these


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=cwd)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install must not break the results file
        gpu = None
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "gpu": gpu}


def hardware_class(hw: dict | None = None) -> str:
    """Latency is only comparable on the same class of machine: CPU model and core count (or GPU)."""
    hw = hw or hardware()
    return f"{hw['gpu']}" if hw.get("gpu") else f"{hw['cpu']} x{hw['cores']}"


def provenance(seed: int = 0) -> dict:
    import sys

    return {
        "git_commit": git_commit(),
        "lvm": _version("lvm-gates"),
        "torch": _version("torch"),
        "faiss": _version("faiss-cpu"),
        "numpy": _version("numpy"),
        "sentence_transformers": _version("sentence-transformers"),
        "python": platform.python_version(),
        "hardware": hardware(),
        "seed": seed,
        "argv": sys.argv,
    }


def comparability(encoder_fingerprint: str | None, dataset_hash: str | None, profile_name: str, profile_version: int, hw_class: str) -> tuple[dict, str]:
    comp = {"encoder_fingerprint": encoder_fingerprint, "dataset_hash": dataset_hash, "profile": profile_name,
            "profile_version": profile_version, "hardware_class": hw_class}
    key = hashlib.sha256(json.dumps(comp, sort_keys=True).encode()).hexdigest()[:16]
    return comp, key


def _clean(obj):
    """JSON-safe: numpy scalars to Python, NaN/Inf to None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def summarize(results: list[dict]) -> dict:
    counts = {s: sum(r["status"] == s for r in results) for s in (GREEN, AMBER, RED, SKIP)}
    counts["overall"] = worst(r["status"] for r in results)
    return counts


def build_document(results: list[dict], profile_name: str, profile_version: int, seed: int = 0) -> dict:
    return _clean({
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_at": utc_timestamp(),
        "provenance": provenance(seed),
        "profile": {"name": profile_name, "version": profile_version},
        "results": results,
        "summary": summarize(results),
    })


def write_results(path: str | Path, doc: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc)
    return path


def read_results(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise LvmError(f"results file {p} not found")
    try:
        doc = json.loads(p.read_text())
    except ValueError as exc:
        raise LvmError(f"{p}: corrupt results JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise LvmError(f"{p}: not an lvm gate results file")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise LvmError(f"{p}: results schema version {doc.get('schema_version')}, this lvm reads {SCHEMA_VERSION}")
    return doc


# ----------------------------------------------------------------------------- regression


def _key(r: dict) -> tuple:
    return (r["gate"], r.get("checkpoint"), r.get("dataset"), r.get("split"))


def compare(new: dict, base: dict, tolerances: dict | None = None) -> list[GateResult]:
    """Direction-aware comparison of every gated metric; one ``regression`` result per (checkpoint, dataset).

    A metric regresses when it moves the wrong way (the direction comes from its rule) by more than
    its tolerance (``default_tolerance`` absolute, or per metric; ``latency_*`` tolerances are
    relative). Where both files carry per-sequence scores of the same sequences, a paired bootstrap
    must also find the drop significant, else it is AMBER. A gate that was not RED and now is RED is
    a regression. Results with different comparability keys are not compared (AMBER).
    """
    tolerances = tolerances or {}
    default_tol = float(tolerances.get("default_tolerance", 0.01))
    per_metric = tolerances.get("tolerances", {})
    base_by_key = {_key(r): r for r in base.get("results", [])}
    groups: dict[tuple, list[dict]] = {}
    for r in new.get("results", []):
        if r["gate"] == "regression" or r["status"] == SKIP:
            continue
        b = base_by_key.get(_key(r))
        if b is None or b["status"] == SKIP:
            continue
        row = {"gate": r["gate"], "split": r.get("split"), "baseline_status": b["status"], "new_status": r["status"]}
        differs = {k for k in set(r.get("comparability") or {}) | set(b.get("comparability") or {})
                   if (r.get("comparability") or {}).get(k) != (b.get("comparability") or {}).get(k)}
        if r.get("comparability_key") != b.get("comparability_key") and (differs - {"hardware_class"} or r["gate"] in HARDWARE_BOUND_GATES or not differs):
            row.update(metric="(all)", status=AMBER, note=f"not comparable: {', '.join(sorted(differs)) or 'comparability key'} differ(s)")
            groups.setdefault((r.get("checkpoint"), r.get("dataset")), []).append(row)
            continue
        if b["status"] != RED and r["status"] == RED:
            groups.setdefault((r.get("checkpoint"), r.get("dataset")), []).append({**row, "metric": "(status)", "status": RED, "note": "gate turned RED"})
        for rule in r.get("thresholds", []):
            m = rule["metric"]
            nv, bv = r["metrics"].get(m), b["metrics"].get(m)
            if not isinstance(nv, (int, float)) or not isinstance(bv, (int, float)):
                continue
            higher = "min_green" in rule
            worse = (bv - nv) if higher else (nv - bv)
            tol_key = f"{r['gate']}_{m}" if f"{r['gate']}_{m}" in per_metric else m
            tol = float(per_metric.get(tol_key, default_tol))
            if tol_key.startswith("latency_"):
                tol = tol * abs(bv)  # relative tolerance for timings
            status = GREEN
            note = ""
            if worse > tol:
                status = RED
                ns, bs = r.get("per_sequence"), b.get("per_sequence")
                if m in PAIRED_BOOTSTRAP_METRICS and ns and bs and len(ns) == len(bs):
                    from lvm.metrics import paired_difference

                    d = paired_difference(np.asarray(ns), np.asarray(bs))
                    note = f"paired Δ {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
                    if d["ci_high"] >= 0:
                        status, note = AMBER, note + ": drop not significant"
            groups.setdefault((r.get("checkpoint"), r.get("dataset")), []).append(
                {**row, "metric": m, "baseline": bv, "new": nv, "delta": nv - bv, "tolerance": tol, "higher_is_better": higher, "status": status, "note": note})
    out = []
    for (ckpt, ds), rows in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        status = worst(r["status"] for r in rows)
        bad = [r for r in rows if r["status"] != GREEN]
        msg = "; ".join(f"{r['gate']}.{r['metric']}: {r.get('baseline', r['baseline_status'])} -> {r.get('new', r['new_status'])} [{r['status']}] {r['note']}".strip() for r in bad)
        out.append(GateResult("regression", status, {"comparisons": rows, "regressed": [f"{r['gate']}.{r['metric']}" for r in bad if r["status"] == RED]},
                              [], f"regression {status}: {msg}" if bad else "", dataset=ds, checkpoint=ckpt))
    return out


def markdown_table(regressions: list[GateResult]) -> str:
    """A pull-request-comment table: gate, baseline, new, Δ, status."""
    lines = ["| checkpoint | dataset | gate | metric | baseline | new | Δ | status |", "|---|---|---|---|---|---|---|---|"]
    for res in regressions:
        for r in res.metrics["comparisons"]:
            fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
            lines.append(f"| {res.checkpoint or '-'} | {res.dataset or '-'} | {r['gate']}{'/' + r['split'] if r.get('split') else ''} | {r['metric']} | "
                         f"{fmt(r.get('baseline', r['baseline_status']))} | {fmt(r.get('new', r['new_status']))} | {fmt(r.get('delta'))} | {r['status']} |")
    return "\n".join(lines)
