"""Results files: versioned JSON, written atomically, with provenance and comparability keys.

The regression check between two of them is ``lvm.report.regression``.

Schema ``lvm-gate-results`` v2::

    {schema, schema_version, created_at,
     provenance: {git_commit, lvm, torch, faiss, numpy, sentence_transformers, python, hardware, seed, argv},
     profile: {name, version},
     run: {argv, seconds, gates_ran, gates_missing, selection: {keyword, markexpr, last_failed, deselected}, complete},
     models: {CHECKPOINT: {card: ModelCard, history: {epochs: [...], status, loss_config}}},
     results: [{gate, status, metrics, thresholds, message, dataset, checkpoint, split, seconds,
                spec_version, dataset_hash, vector_sketch, comparability: {encoder_fingerprint, dataset_id,
                profile, profile_version, hardware_class (latency only)}, comparability_key, profile, nodeid,
                checkpoint_path, dataset_path (relative to the results file), per_sequence?, per_sequence_article?}],
     summary: {GREEN, AMBER, RED, SKIP, overall}}

A row is ``lvm.schemas.ResultRow`` (the one typed row; ``lvm.report.recorder`` makes them, ``read_document``
reads them back); ``checkpoint`` is the checkpoint's name (its model card's, or ``--checkpoint NAME=PATH``),
so the same model gated from another folder compares with its baseline.
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
from lvm.gates.status import AMBER, GREEN, RED, SKIP, worst
from lvm.io import utc_timestamp, write_json_atomic

SCHEMA = "lvm-gate-results"
SCHEMA_VERSION = 2  # 2: machine-stable comparability (dataset_id, hardware only for latency), models, run
READABLE_VERSIONS = (1, 2)
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
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
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
    if hw is None and os.environ.get("LVM_HARDWARE_CLASS"):
        return os.environ["LVM_HARDWARE_CLASS"]  # a runner pool's own name for its machine class
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


def comparability(
    encoder_fingerprint: str | None,
    dataset_id: str | None,
    profile_name: str,
    profile_version: int,
    hw_class: str | None = None,
) -> tuple[dict, str]:
    """(comparability dict, its key). Two results compare when their keys agree (and their vector
    sketches agree within ``SKETCH_TOLERANCE``, see ``lvm.report.regression``).

    The key holds what must be equal on any machine: the encoder fingerprint, the dataset's
    machine-stable identity (``Dataset.identity``: texts, ids, positions, splits, encoder; not the
    vectors' low bits) and the profile. ``hw_class`` is given for hardware-bound gates (latency) only.
    """
    comp = {
        "encoder_fingerprint": encoder_fingerprint,
        "dataset_id": dataset_id,
        "profile": profile_name,
        "profile_version": profile_version,
    }
    if hw_class is not None:
        comp["hardware_class"] = hw_class
    key = hashlib.sha256(json.dumps(comp, sort_keys=True).encode()).hexdigest()[:16]
    return comp, key


def json_safe(obj):
    """JSON-safe: numpy scalars to Python, NaN/Inf to None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
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
    return json_safe(
        {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created_at": utc_timestamp(),
            "provenance": provenance(seed),
            "profile": {"name": profile_name, "version": profile_version},
            "results": results,
            "summary": summarize(results),
        }
    )


def write_results(path: str | Path, doc: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc)
    return path


def read_document(path: str | Path):
    """A results file as a checked ``lvm.schemas.ResultsDoc``: typed rows (``ResultRow``), every
    optional field filled in (metrics {}, thresholds [], ...). One line when it does not fit."""
    from lvm import schemas

    p = Path(path)
    if not p.is_file():
        raise LvmError(f"results file {p} not found")
    doc = schemas.read_json(p, "a gate results file")
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise LvmError(f"{p}: not an lvm gate results file")
    if doc.get("schema_version") not in READABLE_VERSIONS:
        raise LvmError(
            f"{p}: results schema version {doc.get('schema_version')}, "
            f"this lvm reads {', '.join(map(str, READABLE_VERSIONS))}"
        )
    return schemas.validate(schemas.ResultsDoc, doc, str(p))


def read_results(path: str | Path) -> dict:
    """``read_document`` as plain JSON-like dicts (what ``lvm.report.regression`` reads)."""
    return read_document(path).model_dump(by_alias=True)


def dataset_label(r) -> str | None:
    """The dataset a result (a ``ResultRow`` or its dict) belongs to: its ``dataset`` field, else the
    name of its ``dataset_path`` (``training_health`` records no dataset of its own)."""
    get = r.get if isinstance(r, dict) else (lambda k: getattr(r, k, None))
    dataset, path = get("dataset"), get("dataset_path")
    if dataset:
        return dataset
    return Path(path).name if path else None


def __getattr__(name: str):
    """``compare`` and ``markdown_table`` moved to ``lvm.report.regression``; old imports still work."""
    if name in ("compare", "markdown_table"):
        from lvm.report import regression

        return getattr(regression, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
