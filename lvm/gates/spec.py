"""The gate table: one ``GateSpec`` per gate (kind, order, headline metric, pytest marker). The
pytest plugin (markers, stoplight order and headlines), the leaderboard (column order, which rows
are per dataset) and the regression check all read it; nothing else lists the gates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DATA, MODEL = "data", "model"


@dataclass(frozen=True)
class GateSpec:
    id: str
    kind: str  # DATA: per dataset; MODEL: per checkpoint x dataset
    headline: str | None = None  # the one metric a reader wants in the stoplight table
    calls_model: bool = False  # needs to call the model (SKIPs for predictions-only checkpoints)
    hardware_bound: bool = False  # its numbers depend on the machine (compared within a hardware class only)
    # the gate's parameters and their defaults, declared here only; a profile's [gates.ID] table overrides them.
    # alignment's ctx/min_ctx are the sequences the data gates read when no model is gated (else the models')
    params: dict = field(default_factory=dict)

    @property
    def marker(self) -> str:
        """pytest marker applied to the gate's tests (``-m data``, ``-m model``, ``-m latency``)."""
        return self.kind


GATES: tuple[GateSpec, ...] = (
    GateSpec("encoder_fingerprint", DATA, "fingerprint_match", params={"text_sample": 64}),
    GateSpec("normalization", DATA, "abs_mean_minus_1"),
    GateSpec("oracle_recall", DATA, "recall_at_5", params={"sample": 1000, "ks": [1, 5, 1000]}),
    GateSpec("alignment", DATA, "skip_margin", params={"sample": 5000, "tie_tolerance": 0.0, "ctx": 5, "min_ctx": 1}),
    GateSpec(
        "order",
        DATA,
        "order_signal",
        params={"sample": 20000, "max_offset": 3, "permutations": 100, "min_articles": 100, "reference_signal": 0.0},
    ),
    GateSpec("coherence", DATA, "mean"),
    GateSpec("coherence_drift", DATA, "mean_drift_rel", params={"segments": 10, "segment_by": "article_range"}),
    GateSpec(
        "split_hygiene",
        DATA,
        "shared_articles",
        params={"near_identical_cos": 0.9999, "leak_sample": 5000, "leak_nprobe": 4, "leak_chunks": 4},
    ),
    GateSpec(
        "batch_hygiene", DATA, "same_article_negatives", params={"batches": 50, "batch_size": 256, "max_per_article": 2}
    ),
    GateSpec("checkpoint_integrity", MODEL, "fingerprint_match"),
    GateSpec("output_sanity", MODEL, "max_norm_error", calls_model=True, params={"sample": 512}),
    GateSpec("val_cosine", MODEL, "val_cosine", params={"min_sample": 200}),
    GateSpec("ood_cosine", MODEL, "ood_cosine", params={"min_sample": 200}),
    GateSpec("beats_baselines", MODEL, "margin", params={"sample": 20000, "ridge_fit_sample": 8000, "min_sample": 200}),
    GateSpec("offset_sweep", MODEL, "copy_gap", params={"min_sample": 200}),
    GateSpec("no_collapse", MODEL, "margin", params={"sample": 4096}),
    GateSpec("context_ablations", MODEL, "delta_cross_article", calls_model=True, params={"sample": 10000}),
    GateSpec("retrieval", MODEL, "contain_at_50", params={"sample": 2000, "k": 50}),
    GateSpec(
        "latency",
        MODEL,
        "ratio",
        calls_model=True,
        hardware_bound=True,
        params={"calls": 500, "warmup": 50, "rounds": 6},
    ),
    GateSpec("training_health", MODEL, "loss_balance_max"),
    GateSpec("regression", MODEL, None),
)

BY_ID: dict[str, GateSpec] = {g.id: g for g in GATES}
ORDER: dict[str, int] = {g.id: i for i, g in enumerate(GATES)}
DATA_GATES: tuple[str, ...] = tuple(g.id for g in GATES if g.kind == DATA)
MODEL_GATES: tuple[str, ...] = tuple(g.id for g in GATES if g.kind == MODEL)
HARDWARE_BOUND_GATES: tuple[str, ...] = tuple(g.id for g in GATES if g.hardware_bound)
MARKERS: dict[str, str] = {
    DATA: "data: a data gate (per dataset)",
    MODEL: "model: a model gate (per checkpoint x dataset)",
    "latency": "latency: a gate whose numbers are timings (machine-dependent)",
}


def spec(gate: str) -> GateSpec | None:
    return BY_ID.get(gate)


PROFILE_KEYS = ("cause", "rules")  # the parts of a [gates.ID] table that are not parameters
