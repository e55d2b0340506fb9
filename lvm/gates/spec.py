"""The gate table: one ``GateSpec`` per gate (kind, order, headline metric, pytest marker). The
pytest plugin (markers, stoplight order and headlines), the leaderboard (column order, which rows
are per dataset) and the regression check all read it; nothing else lists the gates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lvm.bounds import Bound, check_number

DATA, MODEL = "data", "model"
N1 = Bound(int, 1, 2**31 - 1)  # a sample size, a count of batches: at least one
N0 = Bound(int, 0, 2**31 - 1)  # a minimum count (0: none required)
CTX = Bound(int, 1, 4096)  # a context length, as the CLI's --ctx


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
    # the range of each parameter, declared beside its default: a ``Bound`` (for a list: of each element),
    # or a tuple of the allowed strings. ``check_params`` holds a profile's values to them when it loads.
    bounds: dict = field(default_factory=dict)

    @property
    def marker(self) -> str:
        """pytest marker applied to the gate's tests (``-m data``, ``-m model``, ``-m latency``)."""
        return self.kind


GATES: tuple[GateSpec, ...] = (
    GateSpec("encoder_fingerprint", DATA, "fingerprint_match", params={"text_sample": 64}, bounds={"text_sample": N0}),
    GateSpec("normalization", DATA, "abs_mean_minus_1"),
    GateSpec(
        "oracle_recall",
        DATA,
        "recall_at_5",
        params={"sample": 1000, "ks": [1, 5, 1000]},
        bounds={"sample": N1, "ks": Bound(int, 1, 4096)},
    ),
    GateSpec(
        "alignment",
        DATA,
        "skip_margin",
        params={"sample": 5000, "tie_tolerance": 0.0, "ctx": 5, "min_ctx": 1},
        bounds={"sample": N1, "tie_tolerance": Bound(float, 0, 2), "ctx": CTX, "min_ctx": CTX},
    ),
    GateSpec(
        "order",
        DATA,
        "order_signal",
        params={"sample": 20000, "max_offset": 3, "permutations": 100, "min_articles": 100, "reference_signal": 0.0},
        bounds={
            "sample": N1,
            "max_offset": Bound(int, 1, 4096),
            "permutations": Bound(int, 1, 1_000_000),
            "min_articles": N0,
            "reference_signal": Bound(float, 0, 2),
        },
    ),
    GateSpec("coherence", DATA, "mean"),
    GateSpec(
        "coherence_drift",
        DATA,
        "mean_drift_rel",
        params={"segments": 10, "segment_by": "article_range"},
        bounds={"segments": Bound(int, 1, 1_000_000), "segment_by": ("article_range", "topic")},
    ),
    GateSpec(
        "split_hygiene",
        DATA,
        "shared_articles",
        params={"near_identical_cos": 0.9999, "leak_sample": 5000, "leak_nprobe": 4, "leak_chunks": 4},
        bounds={
            "near_identical_cos": Bound(float, -1, 1),
            "leak_sample": N1,
            "leak_nprobe": Bound(int, 1, 65_536),
            "leak_chunks": N1,
        },
    ),
    GateSpec(
        "batch_hygiene",
        DATA,
        "same_article_negatives",
        params={"batches": 50, "batch_size": 256, "max_per_article": 2},
        bounds={"batches": N1, "batch_size": Bound(int, 1, 1 << 24), "max_per_article": Bound(int, 0, 1 << 24)},
    ),
    GateSpec("checkpoint_integrity", MODEL, "fingerprint_match"),
    GateSpec("output_sanity", MODEL, "max_norm_error", calls_model=True, params={"sample": 512}, bounds={"sample": N1}),
    GateSpec("val_cosine", MODEL, "val_cosine", params={"min_sample": 200}, bounds={"min_sample": N0}),
    GateSpec("ood_cosine", MODEL, "ood_cosine", params={"min_sample": 200}, bounds={"min_sample": N0}),
    GateSpec(
        "beats_baselines",
        MODEL,
        "margin",
        params={"sample": 20000, "ridge_fit_sample": 8000, "min_sample": 200},
        bounds={"sample": N1, "ridge_fit_sample": N1, "min_sample": N0},
    ),
    GateSpec("offset_sweep", MODEL, "copy_gap", params={"min_sample": 200}, bounds={"min_sample": N0}),
    GateSpec("no_collapse", MODEL, "margin", params={"sample": 4096}, bounds={"sample": Bound(int, 2, N1.hi)}),
    GateSpec(
        "context_ablations",
        MODEL,
        "delta_cross_article",
        calls_model=True,
        params={"sample": 10000},
        bounds={"sample": N1},
    ),
    GateSpec(
        "retrieval",
        MODEL,
        "contain_at_50",
        params={"sample": 2000, "k": 50},
        bounds={"sample": N1, "k": Bound(int, 1, 4096)},
    ),
    GateSpec(
        "latency",
        MODEL,
        "ratio",
        calls_model=True,
        hardware_bound=True,
        params={"calls": 500, "warmup": 50, "rounds": 6},
        bounds={"calls": Bound(int, 1, 1_000_000), "warmup": Bound(int, 0, 1_000_000), "rounds": Bound(int, 1, 1000)},
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


def check_params(gate: str, table: dict, where: str) -> None:
    """A profile's ``[gates.<gate>]`` table against the gate's declared parameters: no unknown key,
    every value of its declared range (``GateSpec.bounds``); ``LvmError`` naming ``where``, the gate
    and the parameter otherwise. A gate the table does not know is not checked here."""
    from lvm.errors import LvmError

    gs = BY_ID.get(gate)
    if gs is None:
        return
    values = {k: v for k, v in table.items() if k not in PROFILE_KEYS}
    unknown = sorted(str(k) for k in set(values) - set(gs.params))
    if unknown:
        raise LvmError(
            f"{where}: [gates.{gate}] has unknown parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(gs.params) or 'none'}"
        )
    for name, value in values.items():
        at = f"{where}: gates.{gate}.{name}"
        bound, default = gs.bounds.get(name), gs.params[name]
        if isinstance(bound, tuple):
            if value not in bound or not isinstance(value, str):
                raise LvmError(f"{at}: expected one of {', '.join(map(repr, bound))}; got {value!r:.60}")
        elif isinstance(default, list):
            if not isinstance(value, list) or not value:
                raise LvmError(f"{at}: expected a non-empty list; got {value!r:.60}")
            for i, v in enumerate(value):
                check_number(v, bound or Bound(type(default[0])), f"{at}[{i}]")
        else:
            check_number(value, bound or Bound(type(default)), at)
    if gate == "alignment":
        ctx, min_ctx = (values.get(k, gs.params[k]) for k in ("ctx", "min_ctx"))
        if min_ctx > ctx:
            raise LvmError(f"{where}: gates.alignment.min_ctx ({min_ctx}) must not exceed ctx ({ctx})")
