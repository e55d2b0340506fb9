"""Gates: metrics -> status. Each gate turns the metrics of one concern (a dataset's integrity, a
model's quality) into GREEN / AMBER / RED with the thresholds of the active gate profile; no
threshold lives in code. ``status`` judges rules, ``data`` and ``model`` hold the gates of each
kind, and ``spec`` is the one table (kind, order, headline metric, marker) that the pytest plugin,
the leaderboard and the regression check read.

The model gates (``lvm.gates.model``) import torch; they load on first use, so the data-only
commands (``lvm coherence``, ``lvm filter``) start without it.
"""

from typing import Any

from lvm.gates.data import (
    alignment,
    batch_hygiene,
    coherence,
    coherence_drift,
    coherence_stats,
    encoder_fingerprint,
    normalization,
    oracle_recall,
    order,
    segment_breakdown,
    split_hygiene,
)
from lvm.gates.spec import DATA_GATES, GATES, MODEL_GATES, GateSpec
from lvm.gates.status import (
    AMBER,
    GREEN,
    RED,
    SKIP,
    GateResult,
    annotate,
    judge,
    judge_rule,
    skipped,
    worst,
)

__all__ = [
    "AMBER",
    "DATA_GATES",
    "GATES",
    "GREEN",
    "MODEL_GATES",
    "RED",
    "SKIP",
    "GateResult",
    "GateSpec",
    "alignment",
    "annotate",
    "batch_hygiene",
    "beats_baselines",
    "checkpoint_integrity",
    "coherence",
    "coherence_drift",
    "coherence_stats",
    "context_ablations",
    "cosine_gate",
    "encoder_fingerprint",
    "judge",
    "judge_rule",
    "latency",
    "no_collapse",
    "normalization",
    "offset_sweep",
    "oracle_recall",
    "order",
    "output_sanity",
    "retrieval",
    "segment_breakdown",
    "skipped",
    "split_hygiene",
    "training_health",
    "worst",
]

_MODEL_GATES = (
    "beats_baselines",
    "checkpoint_integrity",
    "context_ablations",
    "cosine_gate",
    "latency",
    "no_collapse",
    "offset_sweep",
    "output_sanity",
    "retrieval",
    "training_health",
)


def __getattr__(name: str) -> Any:
    """The model gates on first use (PEP 562): importing them pulls in torch."""
    if name in _MODEL_GATES:
        from lvm.gates import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
