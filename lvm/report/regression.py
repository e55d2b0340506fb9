"""The one regression verdict: a NEW results file against a BASELINE results file.

``compare`` lines up every gated metric of NEW with the same (gate, checkpoint, dataset, split) in
BASELINE and gives one ``regression`` ``GateResult`` per (checkpoint, dataset). ``check`` turns those
into a ``Verdict``: the counts, the one-line summary and the exit code. ``lvm compare`` prints the
verdict's Markdown and exits with its code; the pytest plugin's session finish acts on the same
verdict, so CI and a local run can never disagree on what a regression is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lvm.data.datasets import SKETCH_TOLERANCE
from lvm.gates.spec import HARDWARE_BOUND_GATES
from lvm.gates.status import AMBER, GREEN, RED, SKIP, GateResult, worst
from lvm.report.results import PAIRED_BOOTSTRAP_METRICS, as_number, dataset_label

# absolute tolerance of a metric the profile's [regression] table does not name
DEFAULT_TOLERANCE = 0.01
# The smallest drop of a per-sequence cosine that counts, when a profile sets none: the default data's,
# MIN_EFFECT_FACTOR x the run-to-run spread (sd of the mean cosine over retrains with other seeds, measured by
# `lvm calibrate --seeds`; see lvm/profiles/minilm-wiki-vital.toml [regression])
DEFAULT_MIN_EFFECT = {"val_cosine": 0.00175, "ood_cosine": 0.00125}
MIN_EFFECT_FACTOR = 5.0  # min effect = this x the measured seed spread (>= 3 x, as GATES.md asks)
Z_ALPHA, Z_POWER = 1.959964, 0.841621  # two-sided alpha 0.05; power 0.80
NULL_LEVEL_TOLERANCE = 1e-6  # a null baseline's cosine that moved less than this has not moved
# The latency gate's machine-independent figures: the only ones compared across machines
COST_METRICS = ("cost_flops", "cost_weight_bytes", "cost_params")
NOT_COMPARABLE = "(all)"  # the comparison row's metric when two results cannot be compared
TURNED_RED = "(status)"  # the comparison row's metric when a gate turned RED


# ----------------------------------------------------------------------------- comparison rows


def _key(r: dict) -> tuple:
    return (r["gate"], r.get("checkpoint"), r.get("dataset"), r.get("split"))


def _not_comparable(r: dict, b: dict) -> str | None:
    """Why result ``r`` cannot be compared with baseline result ``b``, or None when it can.

    Results compare when their comparability keys agree. A different hardware class alone does not
    stop a comparison: the only latency figures compared are the machine-independent ``cost_*``
    counts (wall-clock timings are judged on the machine that measured them and never compared).
    """
    if r.get("comparability_key") == b.get("comparability_key"):
        return _sketch_differs(r, b)
    nc, bc = r.get("comparability") or {}, b.get("comparability") or {}
    differs = {k for k in set(nc) | set(bc) if nc.get(k) != bc.get(k)}
    if differs - {"hardware_class"} or not differs:
        return f"not comparable: {', '.join(sorted(differs)) or 'comparability key'} differ(s)"
    return _sketch_differs(r, b)


def _sketch_differs(r: dict, b: dict) -> str | None:
    """Same key, but are they the same vectors? Their sketches agree within low-bit noise, or not."""
    rs, bs = r.get("vector_sketch"), b.get("vector_sketch")
    if not (isinstance(rs, list) and isinstance(bs, list)) or len(rs) != len(bs):
        return None  # a file without sketches: the key alone decides
    try:
        gap = max((abs(float(x) - float(y)) for x, y in zip(rs, bs, strict=True)), default=0.0)
    except (TypeError, ValueError, OverflowError):
        return "not comparable: unreadable vector sketch"
    if not math.isfinite(gap) or gap > SKETCH_TOLERANCE:
        return (
            "not comparable: same texts and ids but different vectors "
            f"(sketch differs by {gap:.2g} > {SKETCH_TOLERANCE:g})"
        )
    return None


def _tolerance(gate: str, metric: str, tolerances: dict, baseline_value: float) -> float:
    """The metric's tolerance: per gate and metric, per metric, else the default (absolute);
    ``latency_*`` tolerances are relative to the baseline value."""
    default_tol = float(tolerances.get("default_tolerance", DEFAULT_TOLERANCE))
    per_metric = tolerances.get("tolerances", {})
    tol_key = f"{gate}_{metric}" if f"{gate}_{metric}" in per_metric else metric
    tol = float(per_metric.get(tol_key, default_tol))
    if tol_key.startswith("latency_"):
        tol = tol * abs(baseline_value)  # relative tolerance
    return tol


def min_effect(tolerances: dict, cosine_gate: str) -> float:
    """The smallest drop of a per-sequence cosine metric that can be a regression: the profile's
    ``[regression] min_effect.<gate>``, else ``min_effect_factor`` × its measured ``seed_spread``,
    else the default data's (``DEFAULT_MIN_EFFECT``)."""
    explicit = (tolerances.get("min_effect") or {}).get(cosine_gate)
    if isinstance(explicit, (int, float)) and not isinstance(explicit, bool) and explicit >= 0:
        return float(explicit)
    spread = (tolerances.get("seed_spread") or {}).get(cosine_gate)
    if isinstance(spread, (int, float)) and not isinstance(spread, bool) and spread >= 0:
        return float(tolerances.get("min_effect_factor", MIN_EFFECT_FACTOR)) * float(spread)
    return DEFAULT_MIN_EFFECT.get(cosine_gate, max(DEFAULT_MIN_EFFECT.values()))


def _paired_source(r: dict, metric: str, by_key: dict) -> tuple[str, dict] | None:
    """(cosine gate, the result holding its per-sequence scores) when ``metric`` of ``r`` moves one
    for one with the mean of those scores: the cosine itself, or a margin over a null baseline
    (fixed on the same sequences; the caller checks it did not move)."""
    gate, m = r["gate"], r.get("metrics") or {}
    if gate in PAIRED_BOOTSTRAP_METRICS and metric in (gate, "margin_vs_baseline"):
        return gate, r
    if gate == "beats_baselines" and metric == "margin":
        cos_gate = {"val": "val_cosine", "ood": "ood_cosine"}.get(r.get("split") or "")
        src = by_key.get((cos_gate, r.get("checkpoint"), r.get("dataset"), r.get("split"))) if cos_gate else None
        if src is not None and as_number(m.get("sample")) == len(src.get("per_sequence") or []):
            return cos_gate, src  # type: ignore[return-value]
    return None


def _null_level(r: dict, metric: str) -> float | None:
    """The null baseline's cosine a margin is measured from (None for the cosine itself)."""
    m = r.get("metrics") or {}
    if metric == "margin_vs_baseline":
        return as_number(m.get("best_baseline_cosine"))
    if metric == "margin":
        base = m.get("baselines") if isinstance(m.get("baselines"), dict) else {}
        return as_number(base.get(m.get("best_baseline")))
    return None


def _paired_drop(metric: str, r: dict, b: dict, src: tuple[dict, dict], min_eff: float) -> dict | None:
    """The paired article-cluster bootstrap of a per-sequence metric: RED when the drop exceeds the
    minimum effect and its CI excludes 0; AMBER when it exceeds it without significance; else GREEN.
    Also the smallest drop this comparison could detect (80 % power at α = 0.05, two-sided).
    None when the two files do not hold the same sequences (the caller falls back to the tolerance)."""
    from lvm.metrics import paired_difference

    rs, bs = src
    ns, nb = rs.get("per_sequence"), bs.get("per_sequence")
    if not (isinstance(ns, list) and isinstance(nb, list) and ns and len(ns) == len(nb)):
        return None
    if _null_level(r, metric) != _null_level(b, metric) and not (
        _null_level(r, metric) is not None
        and _null_level(b, metric) is not None
        and abs(_null_level(r, metric) - _null_level(b, metric)) <= NULL_LEVEL_TOLERANCE  # type: ignore[operator]
    ):
        return None  # the baseline moved: the margin does not move one for one with the cosine
    arts, barts = rs.get("per_sequence_article"), bs.get("per_sequence_article")
    same_articles = isinstance(arts, list) and arts == barts and len(arts) == len(ns)
    try:
        new_v, base_v = np.asarray(ns, dtype=np.float64), np.asarray(nb, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return {"status": RED, "note": "not a number: unreadable per-sequence scores", "detectable_drop": None}
    if not (np.isfinite(new_v).all() and np.isfinite(base_v).all()):
        return {
            "status": RED,
            "note": "not a number: per-sequence scores hold NaN or infinity",
            "detectable_drop": None,
        }
    d = paired_difference(new_v, base_v, clusters=np.asarray(arts) if same_articles else None)
    se = (d["ci_high"] - d["ci_low"]) / (2 * Z_ALPHA)
    detectable = max(min_eff + Z_POWER * se, (Z_ALPHA + Z_POWER) * se)
    drop = -d["mean"]
    note = f"paired Δ {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" + (
        f" over {d['clusters']} articles" if same_articles else " (sequences, not clustered: article ids differ)"
    )
    note += f"; min effect {min_eff:.3g}, detects drops ≥ {detectable:.3g}"
    if drop > min_eff and d["ci_high"] < 0:
        status = RED
    elif drop > min_eff:
        status, note = AMBER, note + ": drop beyond the minimum effect but not significant"
    else:
        status = GREEN
        if d["ci_high"] < 0 and drop > 0:
            note += ": a significant drop, within the run-to-run spread"
    return {"status": status, "note": note, "detectable_drop": detectable, "paired_delta": d["mean"]}


def _typed_not_number_rows(row: dict, m: str, base_m: dict, new_m: dict, higher: bool) -> list[dict]:
    """Metric ``m`` absent from a file is not compared (no rows); held in either file as something that is
    not a number at all (a string, a bool, a list, or null: how a writer stores NaN) it is one RED row
    "not a number (SIDE holds TYPE)", never a silent skip."""
    side = " and ".join(
        f"{n} holds {'null' if ms[m] is None else type(ms[m]).__name__}"
        for n, ms in (("BASELINE", base_m), ("NEW", new_m))
        if m in ms and as_number(ms[m]) is None
    )
    if not side:
        return []
    cells = {"baseline": as_number(base_m.get(m)), "new": as_number(new_m.get(m)), "higher_is_better": higher}
    return [
        {
            **row,
            "metric": m,
            **cells,
            "delta": math.nan,
            "tolerance": 0.0,
            "status": RED,
            "note": f"not a number ({side})",
        }
    ]


def _cost_rows(r: dict, b: dict, row: dict, tolerances: dict) -> list[dict]:
    """A hardware-bound gate (latency) is compared on its machine-independent cost counts only, exactly:
    a count that rose (beyond ``cost_tolerance``, relative; 0 by default) is RED."""
    out = []
    rel = float(tolerances.get("cost_tolerance", 0.0))
    for m in COST_METRICS:
        new_m, base_m = r.get("metrics") or {}, b.get("metrics") or {}
        nv, bv = as_number(new_m.get(m)), as_number(base_m.get(m))
        if nv is None or bv is None:
            out += _typed_not_number_rows(row, m, base_m, new_m, higher=False)
            continue
        if math.isnan(nv) or math.isnan(bv):
            status, note = RED, "not a number"
        else:
            status = RED if nv > bv * (1 + rel) else GREEN
            note = "cost of one batch-1 call rose" if status == RED else ""
        out.append(
            {
                **row,
                "metric": m,
                "baseline": bv,
                "new": nv,
                "delta": nv - bv if not (math.isnan(nv) or math.isnan(bv)) else math.nan,
                "tolerance": rel * bv if not math.isnan(bv) else 0.0,
                "higher_is_better": False,
                "status": status,
                "note": note,
            }
        )
    return out


def _metric_rows(r: dict, b: dict, row: dict, tolerances: dict, new_by_key: dict, base_by_key: dict) -> list[dict]:
    """One comparison row per gated metric both results hold as a number."""
    if r["gate"] in HARDWARE_BOUND_GATES:
        return _cost_rows(r, b, row, tolerances)
    out = []
    for rule in r.get("thresholds", []):
        m = rule.get("metric") if isinstance(rule, dict) else None
        if not isinstance(m, str):
            continue
        new_m, base_m = r.get("metrics") or {}, b.get("metrics") or {}
        nv, bv = as_number(new_m.get(m)), as_number(base_m.get(m))
        if nv is None or bv is None:
            out += _typed_not_number_rows(row, m, base_m, new_m, higher="min_green" in rule)
            continue
        higher = "min_green" in rule  # the rule's direction: a floor means higher is better
        cells = {**row, "metric": m, "baseline": bv, "new": nv, "higher_is_better": higher}
        if math.isnan(nv) or math.isnan(bv):
            side = " and ".join(n for n, v in (("BASELINE", bv), ("NEW", nv)) if math.isnan(v))
            out.append({**cells, "delta": math.nan, "tolerance": 0.0, "status": RED, "note": f"not a number ({side})"})
            continue
        worse = (bv - nv) if higher else (nv - bv)
        source, base_source = _paired_source(r, m, new_by_key), _paired_source(b, m, base_by_key)
        paired = None
        if source and base_source and source[0] == base_source[0]:
            eff = min_effect(tolerances, source[0])
            paired = _paired_drop(m, r, b, (source[1], base_source[1]), eff)
        if paired is not None:
            out.append({**cells, "delta": nv - bv, "tolerance": eff, **paired})
            continue
        tol = _tolerance(r["gate"], m, tolerances, bv)
        out.append({**cells, "delta": nv - bv, "tolerance": tol, "status": RED if worse > tol else GREEN, "note": ""})
    return out


def _comparison_rows(r: dict, b: dict, tolerances: dict, new_by_key: dict, base_by_key: dict) -> list[dict]:
    """The comparison rows of one result against its baseline result."""
    row = {"gate": r["gate"], "split": r.get("split"), "baseline_status": b["status"], "new_status": r["status"]}
    why = _not_comparable(r, b)
    if why:
        return [{**row, "metric": NOT_COMPARABLE, "status": AMBER, "note": why}]
    turned_red = (
        [{**row, "metric": TURNED_RED, "status": RED, "note": "gate turned RED"}]
        if b["status"] != RED and r["status"] == RED
        else []
    )
    return turned_red + _metric_rows(r, b, row, tolerances, new_by_key, base_by_key)


def _regression_result(ckpt: str | None, ds: str | None, rows: list[dict]) -> GateResult:
    """The ``regression`` result of one (checkpoint, dataset): the worst of its comparison rows."""
    status = worst(r["status"] for r in rows)
    bad = [r for r in rows if r["status"] != GREEN]
    msg = "; ".join(
        (
            f"{r['gate']}.{r['metric']}: {r.get('baseline', r['baseline_status'])} -> "
            f"{r.get('new', r['new_status'])} [{r['status']}] {r['note']}"
        ).strip()
        for r in bad
    )
    return GateResult(
        "regression",
        status,
        {"comparisons": rows, "regressed": [f"{r['gate']}.{r['metric']}" for r in bad if r["status"] == RED]},
        [],
        f"regression {status}: {msg}" if bad else "",
        dataset=ds,
        checkpoint=ckpt,
    )


def compare(new: dict, base: dict, tolerances: dict | None = None) -> list[GateResult]:
    """Direction-aware comparison of every gated metric; one ``regression`` result per (checkpoint, dataset).

    Metrics that move one for one with a per-sequence cosine both files carry for the same sequences
    (val/OOD cosine, their margins over a null baseline that did not move) are compared by the paired
    article-cluster bootstrap: RED when the drop exceeds the profile's minimum effect (``min_effect``,
    else ``min_effect_factor`` × the measured ``seed_spread``) and its CI excludes 0; AMBER when it
    exceeds it without significance. Any other gated metric regresses when it moves the wrong way (the
    direction comes from its rule) by more than its tolerance (``default_tolerance`` absolute, or per
    metric). The latency gate is compared on its machine-independent cost counts only (``cost_*``,
    exactly; timings are never compared). A value that is NaN, infinite or beyond float range in either
    file is RED "not a number". A gate that was not RED and now is RED is a regression. Results with
    different comparability keys (a hardware class alone aside) are not compared (AMBER).
    """
    tolerances = tolerances or {}
    base_by_key = {_key(r): r for r in base.get("results", [])}
    new_by_key = {_key(r): r for r in new.get("results", [])}
    groups: dict[tuple, list[dict]] = {}
    for r in new.get("results", []):
        if r["gate"] == "regression" or r["status"] == SKIP:
            continue
        b = base_by_key.get(_key(r))
        if b is None or b["status"] == SKIP:
            continue
        rows = _comparison_rows(r, b, tolerances, new_by_key, base_by_key)
        if rows:
            groups.setdefault((r.get("checkpoint"), r.get("dataset")), []).extend(rows)
    ordered = sorted(groups.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1])))
    return [_regression_result(ckpt, ds, rows) for (ckpt, ds), rows in ordered]


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def markdown_table(regressions: list[GateResult]) -> str:
    """A pull-request-comment table: gate, baseline, new, Δ, status."""
    lines = [
        "| checkpoint | dataset | gate | metric | baseline | new | Δ | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in regressions:
        for r in res.metrics["comparisons"]:
            lines.append(
                f"| {res.checkpoint or '-'} | {res.dataset or '-'} | "
                f"{r['gate']}{'/' + r['split'] if r.get('split') else ''} | {r['metric']} | "
                f"{_cell(r.get('baseline', r['baseline_status']))} | {_cell(r.get('new', r['new_status']))} | "
                f"{_cell(r.get('delta'))} | {r['status']} |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the verdict


@dataclass
class Verdict:
    """The regression verdict of NEW against BASELINE.

    ``status`` is the summary's: RED when a comparison is RED (a metric beyond tolerance, a gate
    turned RED) or NEW itself holds a RED gate; AMBER when a comparison is AMBER (not comparable, a
    drop the paired bootstrap finds not significant) or nothing was compared; else GREEN.
    ``exit_code`` is 1 on RED, else 0. The pytest plugin, whose RED gates already fail the session,
    fails it for a regression on ``regressed > 0``.
    """

    regressions: list[GateResult]  # one ``regression`` result per (checkpoint, dataset), as ``compare`` returns them
    compared: int  # comparison rows
    regressed: int  # RED comparison rows
    not_comparable: int  # (checkpoint, dataset) pairs with at least one result not comparable
    status: str
    exit_code: int
    summary: str  # the one-line verdict, Markdown
    new_name: str = "NEW"
    regressed_rows: list[tuple[GateResult, dict]] = field(default_factory=list, repr=False)
    red_gates: list[dict] = field(default_factory=list, repr=False)  # RED gate results of NEW itself
    not_comparable_results: list[GateResult] = field(default_factory=list, repr=False)
    problems: list[str] = field(default_factory=list, repr=False)  # coverage: partial run, missing gates or checkpoints

    def markdown(self) -> str:
        """What ``lvm compare`` prints: the table, the summary, then what regressed, what is RED and
        what could not be compared."""
        lines = [markdown_table(self.regressions), "", self.summary]
        power = sensitivity_lines(self.regressions)
        if power:
            lines += [
                "",
                "Smallest drop each cosine comparison could detect (paired article-cluster bootstrap, "
                "80 % power at α = 0.05; never below the minimum effect):",
                *power,
            ]
        if self.regressed_rows:
            lines += ["", f"Regressed gates: {', '.join(dict.fromkeys(_gate_name(c) for _, c in self.regressed_rows))}"]
            lines += [_regressed_line(r, c) for r, c in self.regressed_rows]
        if self.red_gates:
            lines += ["", f"RED gates in {self.new_name}:"] + [_red_gate_line(r) for r in self.red_gates]
        if self.problems:
            lines += ["", "Coverage (pass --allow-missing to accept):"] + [f"- {p}" for p in self.problems]
        if self.not_comparable_results:
            pairs = sorted({f"{r.checkpoint} on {r.dataset}" for r in self.not_comparable_results})
            lines += ["", f"Not comparable (encoder, dataset, profile or hardware differ): {', '.join(pairs)}"]
        return "\n".join(lines)


def sensitivity_lines(regressions: list[GateResult]) -> list[str]:
    """One line per compared per-sequence metric: its paired Δ and the smallest drop it could detect."""
    out = []
    for res in regressions:
        for c in res.metrics.get("comparisons", []):
            if c.get("detectable_drop") is not None and c["metric"] in PAIRED_BOOTSTRAP_METRICS:
                out.append(
                    f"- {_gate_name(c)} · {c['metric']} · {res.checkpoint or '-'} on {res.dataset or '-'}: "
                    f"detects drops ≥ {c['detectable_drop']:.3g} (minimum effect {c['tolerance']:.3g}); "
                    f"paired Δ {c.get('paired_delta', c.get('delta', math.nan)):+.4f} [{c['status']}]"
                )
    return out


def _gate_name(c: dict) -> str:
    return f"{c['gate']}/{c['split']}" if c.get("split") else c["gate"]


def _regressed_line(r: GateResult, c: dict) -> str:
    if c["metric"] == TURNED_RED:
        what = f"status {c['baseline_status']} -> {c['new_status']}"
    else:
        b, n = (("-" if v is None else f"{v:.4g}") for v in (c["baseline"], c["new"]))
        what = f"{c['metric']} {b} -> {n} (Δ {c['delta']:+.4g}, tolerance {c['tolerance']:.3g})"
    return f"- {_gate_name(c)} · {what} · {r.checkpoint or '-'} on {r.dataset or '-'}" + (
        f" · {c['note']}" if c.get("note") else ""
    )


def _red_gate_line(r: dict) -> str:
    split = f"/{r['split']}" if r.get("split") else ""
    return (
        f"- {r['gate']}{split} ({r.get('checkpoint') or '-'} on {dataset_label(r) or '-'}): "
        f"{(r.get('message') or '').split('. Likely cause')[0][:200]}"
    )


def coverage_problems(new_doc: dict, base_doc: dict) -> list[str]:
    """Why NEW cannot stand for a full run against BASELINE: it is a partial run, or a gate result or
    a checkpoint of BASELINE is missing (or SKIPped) in NEW. One line each."""
    problems = []
    run = new_doc.get("run")
    run = run if isinstance(run, dict) else {}
    if run.get("complete") is False:
        sel = run.get("selection") or {}
        how = ", ".join(f"{k}={v}" for k, v in sel.items() if v) or "gates missing"
        problems.append(
            f"NEW comes from a partial run ({how}); gates not run: {', '.join(run.get('gates_missing') or []) or '-'}"
        )

    def present(doc: dict) -> dict:
        return {_key(r): r for r in doc.get("results", []) if r.get("gate") != "regression" and r.get("status") != SKIP}

    new_keys, base_keys = present(new_doc), present(base_doc)
    new_ckpts = {k[1] for k in new_keys if k[1]}
    lost_ckpts = sorted({k[1] for k in base_keys if k[1]} - new_ckpts)
    if lost_ckpts:
        problems.append(f"checkpoint(s) of BASELINE missing from NEW: {', '.join(lost_ckpts)}")
    lost = sorted(k for k in set(base_keys) - set(new_keys) if k[1] not in lost_ckpts)
    if lost:
        names = [f"{g}{'/' + sp if sp else ''} ({ck or '-'} on {ds or '-'})" for g, ck, ds, sp in lost]
        problems.append(
            f"{len(lost)} gate result(s) of BASELINE missing or SKIPped in NEW: "
            f"{', '.join(names[:8])}{' …' if len(names) > 8 else ''}"
        )
    return problems


def _summary(
    status: str,
    compared: int,
    regressed: int,
    red_gates: int,
    new_name: str,
    base_name: str,
    profile_name: str | None,
    not_comparable: int = 0,
    problems: list[str] | None = None,
) -> str:
    """The one-line verdict; ``status`` is the verdict's own (``_verdict_status``)."""
    counted = f"{compared} metric comparison(s)" + (
        f", {not_comparable} result(s) not comparable" if not_comparable else ""
    )
    if compared == 0:
        return (
            f"**Verdict: RED** — nothing was comparable between {new_name} and {base_name} "
            "(0 metrics compared): the check cannot pass."
        )
    if problems:
        return f"**Verdict: RED** — {new_name} does not cover {base_name}: {problems[0]} ({counted})."
    if status == RED:
        return (
            f"**Verdict: RED** — {regressed} regression(s) beyond tolerance, "
            f"{red_gates} RED gate(s) in {new_name} ({counted})."
        )
    if status == AMBER:
        return f"**Verdict: AMBER** — no regression beyond tolerance in {counted}; look at the AMBER rows."
    return f"**Verdict: GREEN** — no regression in {counted} against {base_name} (profile {profile_name})."


def _verdict_status(
    regressions: list[GateResult], compared: int, regressed: int, red_gates: int, problems: list[str]
) -> str:
    """RED on a regression, a RED gate in NEW, nothing compared or NEW not covering BASELINE.

    AMBER when a row is AMBER.
    """
    if regressed or red_gates or compared == 0 or problems:
        return RED
    return AMBER if worst(r.status for r in regressions) == AMBER else GREEN


def check(
    new_doc: dict,
    base_doc: dict,
    tolerances: dict | None = None,
    *,
    new_name: str = "NEW",
    base_name: str = "BASELINE",
    profile_name: str | None = None,
    allow_missing: bool = False,
) -> Verdict:
    """The regression verdict of results document ``new_doc`` against ``base_doc``.

    ``tolerances`` is a profile's ``[regression]`` table (see ``compare``); ``new_name``,
    ``base_name`` and ``profile_name`` (default: the profile recorded in ``new_doc``) only label
    the summary. A check that compared nothing fails; so does NEW from a partial run or missing a
    gate result or checkpoint of BASELINE, unless ``allow_missing``.
    """
    regressions = compare(new_doc, base_doc, tolerances)
    comparisons = [(r, c) for r in regressions for c in r.metrics.get("comparisons", [])]
    measured = [c for _, c in comparisons if c.get("metric") != NOT_COMPARABLE]
    regressed = [(r, c) for r, c in comparisons if c.get("status") == RED]
    not_comparable = [
        r for r in regressions if any(c.get("metric") == NOT_COMPARABLE for c in r.metrics.get("comparisons", []))
    ]
    n_not_comparable = sum(c.get("metric") == NOT_COMPARABLE for _, c in comparisons)
    red_gates = [r for r in new_doc.get("results", []) if r.get("status") == RED and r.get("gate") != "regression"]
    problems = [] if allow_missing else coverage_problems(new_doc, base_doc)
    status = _verdict_status(regressions, len(measured), len(regressed), len(red_gates), problems)
    if profile_name is None:
        profile_name = (new_doc.get("profile") or {}).get("name")
    summary = _summary(
        status,
        len(measured),
        len(regressed),
        len(red_gates),
        new_name,
        base_name,
        profile_name,
        n_not_comparable,
        problems,
    )
    exit_code = 1 if status == RED or any(r.status == RED for r in regressions) else 0
    verdict = Verdict(
        regressions,
        len(measured),
        len(regressed),
        len(not_comparable),
        status,
        exit_code,
        summary,
        new_name,
        regressed,
        red_gates,
        not_comparable,
    )
    verdict.problems = problems
    return verdict
