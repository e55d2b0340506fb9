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


# ----------------------------------------------------------------------------- metric values

# A results file may have been edited by hand or by another tool: a metric can hold anything JSON
# holds (a string, a list, null, an integer of 400 digits, NaN, ±Infinity). Every reader turns a
# metric value into a number through these, and nothing else.


def as_float(v) -> float | None:
    """A metric value as a float: None when it is not a number at all (absent, a string, a bool, a
    list, an object); NaN and ±inf kept; an integer beyond float range as ±inf."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:  # an integer such as 10**400
        return math.inf if v > 0 else -math.inf


def as_number(v) -> float | None:
    """A metric value as a float: None when it is not a number at all (absent, a string, a bool, a
    list), NaN for a number that is not finite (NaN, ±inf, an integer beyond float range). What the
    regression check compares: a value that is NaN on either side is RED "not a number"."""
    f = as_float(v)
    return f if f is None or math.isfinite(f) else math.nan


def finite(v) -> float | None:
    """A metric value as a finite float; None for anything else (what is ranked and plotted)."""
    f = as_float(v)
    return f if f is not None and math.isfinite(f) else None


INT64 = 2**63 - 1


def as_int(v) -> int | None:
    """A count (parameters, epochs, a rank) as an int: an integer, or a float with an integral
    value, within 64 bits; None for anything else (a CSV integer column holds 64 bits)."""
    f = finite(v)
    if f is None or f != int(f):
        return None
    i = v if isinstance(v, int) else int(f)
    return i if -INT64 <= i <= INT64 else None


def format_number(v, spec: str = ".4f") -> str:
    """A metric value in a table: "" when absent, the value as text when it is not a number,
    "nan" / "inf" / "-inf" when it is not finite, else ``format(v, spec)``."""
    if v is None:
        return ""
    f = as_float(v)
    if f is None:
        return str(v)
    if not math.isfinite(f):
        return "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")
    if spec.endswith("d"):  # an integer spec: an integer shows as one, anything else as a number
        return format(v, spec) if isinstance(v, int) else format(f, "g")
    return format(f, spec)


def as_text(v) -> str:
    """Any JSON value as one line of text (a column that should hold a string); never raises."""
    try:
        return json.dumps(v, default=str)
    except (ValueError, TypeError, RecursionError):  # nested too deep to print
        return f"<{type(v).__name__}>"


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


# ----------------------------------------------------------------------------- where reports go


def _lvm_output_folder(folder: Path) -> bool:
    """``folder`` is one of lvm's own output folders (a dataset, a filtered dataset, an imported
    checkpoint, a sequence manifest): it holds the ``.lvm-output`` marker, or is a dataset written
    before markers existed. lvm replaces such a folder as a whole, so nothing else is written into it."""
    from lvm.io import OUTPUT_MARKER

    if (folder / OUTPUT_MARKER).exists():
        return True
    return (folder / "meta.json").is_file() and ((folder / "vectors.npy").exists() or (folder / "rows.npy").exists())


def _writable_parent(path: Path, what: str) -> None:
    """Every existing folder above ``path`` is a folder (not a file), none is an lvm output folder,
    and the nearest existing one can be written (the rest are created). Messages name ``path`` as given."""
    nearest = None
    for above in path.absolute().parents:
        if above.exists() and not above.is_dir():
            raise LvmError(f"{path}: {above} is a file, not a folder, so the {what} cannot be written inside it")
        if above.is_dir():
            nearest = nearest or above
            if _lvm_output_folder(above):
                raise LvmError(
                    f"{path}: {above} is an lvm output folder (a dataset or another lvm output, replaced as a "
                    f"whole); write the {what} elsewhere"
                )
    if nearest is not None and not os.access(nearest, os.W_OK | os.X_OK):
        raise LvmError(f"{path}: folder {nearest} is not writable, so the {what} cannot be written there")


def check_results_path(path: str | Path, what: str = "results file") -> Path:
    """A path a results file can be written to (``pytest --results``), checked before anything runs:
    a file path, not an existing folder, not inside a file or an lvm output folder (a dataset), its
    folder existing or creatable and writable. One line (``LvmError``) naming the path otherwise."""
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise LvmError(f"{path}: expected a file path for the {what}, not a folder")
    if len(path.name.encode()) > 255 - 16:  # the atomic write's temporary name adds a suffix
        raise LvmError(f"{str(path)[:80]}…: file name too long for the {what} ({len(path.name.encode())} bytes)")
    if path.is_dir():
        raise LvmError(f"{path} is a folder; the {what} is a file (e.g. {path / 'gate_results.json'})")
    if path.exists() and not path.is_file():
        raise LvmError(f"{path} exists and is not a regular file; the {what} is written as a file")
    _writable_parent(path, what)
    return path


def check_output_folder(path: str | Path, what: str = "report") -> Path:
    """A folder reports can be written into (``lvm leaderboard --out``): not an existing file, not
    inside a file or an lvm output folder (a dataset), existing or creatable and writable. One line
    (``LvmError``) naming the path otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LvmError(f"{path} exists and is not a folder; the {what} is written into a folder")
    if path.is_dir():
        if _lvm_output_folder(path):
            raise LvmError(
                f"{path} is an lvm output folder (a dataset or another lvm output, replaced as a whole); "
                f"write the {what} elsewhere"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise LvmError(f"{path}: folder is not writable, so the {what} cannot be written there")
    _writable_parent(path, what)
    return path


def write_results(path: str | Path, doc: dict) -> Path:
    """Write the results document atomically (its path checked again: ``check_results_path``)."""
    path = check_results_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, doc)
    except OSError as exc:
        raise LvmError(f"{path}: the results file cannot be written ({exc.strerror or type(exc).__name__})") from None
    return path


def read_document(path: str | Path):
    """A results file as a checked ``lvm.schemas.ResultsDoc``: typed rows (``ResultRow``), every
    optional field filled in (metrics {}, thresholds [], ...). One line when it does not fit."""
    from lvm import schemas

    p = Path(path)
    if p.is_dir():
        raise LvmError(f"results file {p} is a folder; expected a gate results JSON file ({p / 'gate_results.json'}?)")
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
