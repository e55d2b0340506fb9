"""The one regression verdict: a NEW results file against a BASELINE results file.

``compare`` lines up every gated metric of NEW with the same (gate, checkpoint, dataset, split) in
BASELINE and gives one ``regression`` ``GateResult`` per (checkpoint, dataset). ``check`` turns those
into a ``Verdict``: the counts, the one-line summary and the exit code. ``lvm compare`` prints the
verdict's Markdown and exits with its code; the pytest plugin's session finish acts on the same
verdict, so CI and a local run can never disagree on what a regression is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lvm.data.datasets import SKETCH_TOLERANCE
from lvm.gates.spec import HARDWARE_BOUND_GATES
from lvm.gates.status import AMBER, GREEN, RED, SKIP, GateResult, worst
from lvm.report.results import PAIRED_BOOTSTRAP_METRICS, dataset_label

# absolute tolerance of a metric the profile's [regression] table does not name
DEFAULT_TOLERANCE = 0.01
NOT_COMPARABLE = "(all)"  # the comparison row's metric when two results cannot be compared
TURNED_RED = "(status)"  # the comparison row's metric when a gate turned RED


# ----------------------------------------------------------------------------- comparison rows


def _key(r: dict) -> tuple:
    return (r["gate"], r.get("checkpoint"), r.get("dataset"), r.get("split"))


def _not_comparable(r: dict, b: dict) -> str | None:
    """Why result ``r`` cannot be compared with baseline result ``b``, or None when it can.

    Results compare when their comparability keys agree; a different hardware class alone only
    stops the comparison of hardware-bound gates (latency).
    """
    if r.get("comparability_key") == b.get("comparability_key"):
        return _sketch_differs(r, b)
    nc, bc = r.get("comparability") or {}, b.get("comparability") or {}
    differs = {k for k in set(nc) | set(bc) if nc.get(k) != bc.get(k)}
    if differs - {"hardware_class"} or r["gate"] in HARDWARE_BOUND_GATES or not differs:
        return f"not comparable: {', '.join(sorted(differs)) or 'comparability key'} differ(s)"
    return None


def _sketch_differs(r: dict, b: dict) -> str | None:
    """Same key, but are they the same vectors? Their sketches agree within low-bit noise, or not."""
    rs, bs = r.get("vector_sketch"), b.get("vector_sketch")
    if not (isinstance(rs, list) and isinstance(bs, list)) or len(rs) != len(bs):
        return None  # a file without sketches: the key alone decides
    try:
        gap = max((abs(float(x) - float(y)) for x, y in zip(rs, bs, strict=True)), default=0.0)
    except (TypeError, ValueError):
        return "not comparable: unreadable vector sketch"
    if gap > SKETCH_TOLERANCE:
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
        tol = tol * abs(baseline_value)  # relative tolerance for timings
    return tol


def _drop_status(metric: str, r: dict, b: dict) -> tuple[str, str]:
    """(status, note) of a drop beyond tolerance: RED, unless a paired bootstrap over the per-sequence
    scores both files carry finds it not significant (AMBER)."""
    ns, bs = r.get("per_sequence"), b.get("per_sequence")
    if metric not in PAIRED_BOOTSTRAP_METRICS or not (ns and bs and len(ns) == len(bs)):
        return RED, ""
    from lvm.metrics import paired_difference

    arts = r.get("per_sequence_article")
    same_articles = isinstance(arts, list) and arts == b.get("per_sequence_article") and len(arts) == len(ns)
    # the same articles resampled on both sides (sequences of one article overlap: a cluster bootstrap)
    d = paired_difference(np.asarray(ns), np.asarray(bs), clusters=np.asarray(arts) if same_articles else None)
    note = f"paired Δ {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" + (
        f" over {d['clusters']} articles (n_eff {d['n_eff']:.0f})" if same_articles else ""
    )
    if d["ci_high"] >= 0:
        return AMBER, note + ": drop not significant"
    return RED, note


def _metric_rows(r: dict, b: dict, row: dict, tolerances: dict) -> list[dict]:
    """One comparison row per gated metric both results hold as a number."""
    out = []
    for rule in r.get("thresholds", []):
        m = rule["metric"]
        nv, bv = r["metrics"].get(m), b["metrics"].get(m)
        if not isinstance(nv, (int, float)) or not isinstance(bv, (int, float)):
            continue
        higher = "min_green" in rule  # the rule's direction: a floor means higher is better
        worse = (bv - nv) if higher else (nv - bv)
        tol = _tolerance(r["gate"], m, tolerances, bv)
        status, note = _drop_status(m, r, b) if worse > tol else (GREEN, "")
        out.append(
            {
                **row,
                "metric": m,
                "baseline": bv,
                "new": nv,
                "delta": nv - bv,
                "tolerance": tol,
                "higher_is_better": higher,
                "status": status,
                "note": note,
            }
        )
    return out


def _comparison_rows(r: dict, b: dict, tolerances: dict) -> list[dict]:
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
    return turned_red + _metric_rows(r, b, row, tolerances)


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

    A metric regresses when it moves the wrong way (the direction comes from its rule) by more than
    its tolerance (``default_tolerance`` absolute, or per metric; ``latency_*`` tolerances are
    relative). Where both files carry per-sequence scores of the same sequences, a paired bootstrap
    must also find the drop significant, else it is AMBER. A gate that was not RED and now is RED is
    a regression. Results with different comparability keys are not compared (AMBER).
    """
    tolerances = tolerances or {}
    base_by_key = {_key(r): r for r in base.get("results", [])}
    groups: dict[tuple, list[dict]] = {}
    for r in new.get("results", []):
        if r["gate"] == "regression" or r["status"] == SKIP:
            continue
        b = base_by_key.get(_key(r))
        if b is None or b["status"] == SKIP:
            continue
        rows = _comparison_rows(r, b, tolerances)
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


def _gate_name(c: dict) -> str:
    return f"{c['gate']}/{c['split']}" if c.get("split") else c["gate"]


def _regressed_line(r: GateResult, c: dict) -> str:
    if c["metric"] == TURNED_RED:
        what = f"status {c['baseline_status']} -> {c['new_status']}"
    else:
        what = (
            f"{c['metric']} {c['baseline']:.4g} -> {c['new']:.4g} (Δ {c['delta']:+.4g}, tolerance {c['tolerance']:.3g})"
        )
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
    run = new_doc.get("run") if isinstance(new_doc.get("run"), dict) else {}
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
