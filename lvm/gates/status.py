"""Gate status: a gate's metrics judged by the rules of the active gate profile.

A profile's ``[gates.ID]`` table holds ``cause`` (the runbooks' likely cause, quoted in RED/AMBER
messages), ``rules`` and gate parameters. A rule names a metric and either ``min_green`` /
``min_amber`` (higher is better) or ``max_green`` / ``max_amber`` (lower is better); ``worst``
caps the status (``"AMBER"`` for report-with-warning rules); ``split`` limits it to one split.
A metric below AMBER is RED; a NaN metric is RED (it could not be computed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from lvm.errors import LvmError
from lvm.gates.spec import BY_ID, PROFILE_KEYS
from lvm.profiles import Profile

GREEN, AMBER, RED, SKIP = "GREEN", "AMBER", "RED", "SKIP"
_ORDER = {GREEN: 0, AMBER: 1, RED: 2}
GATE_SPEC_VERSION = 1


@dataclass
class GateResult:
    gate: str
    status: str
    metrics: dict = field(default_factory=dict)
    thresholds: list = field(default_factory=list)
    message: str = ""
    dataset: str | None = None
    checkpoint: str | None = None
    split: str | None = None
    seconds: float = 0.0
    spec_version: int = GATE_SPEC_VERSION

    def to_dict(self) -> dict:
        return asdict(self)


def worst(statuses) -> str:
    statuses = [s for s in statuses if s in _ORDER]
    return max(statuses, key=_ORDER.__getitem__) if statuses else GREEN


def judge_rule(value, rule: dict) -> str:
    """GREEN / AMBER / RED of one metric value under one profile rule."""
    cap = rule.get("worst", RED)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return RED
    if "min_green" in rule:
        if value >= rule["min_green"]:
            return GREEN
        status = AMBER if "min_amber" in rule and value >= rule["min_amber"] else RED
    elif "max_green" in rule:
        if value <= rule["max_green"]:
            return GREEN
        status = AMBER if "max_amber" in rule and value <= rule["max_amber"] else RED
    else:
        raise LvmError(f"profile rule for {rule.get('metric')!r} has neither min_green nor max_green")
    return status if _ORDER[status] <= _ORDER[cap] else cap


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def judge(
    gate: str, metrics: dict, profile: Profile, split: str | None = None, unmeasured: dict | None = None, **where
) -> GateResult:
    """Apply every rule of ``[gates.<gate>]`` to ``metrics``; the message names what failed and why.

    ``unmeasured`` maps a metric that could not be measured for this model (e.g. determinism of a
    predictions-only model) to the reason; its rules are not applied and the message says so.
    """
    spec = profile.gate(gate)
    unmeasured = unmeasured or {}
    rules = [r for r in spec.get("rules", []) if r.get("split") in (None, split) and r.get("metric") not in unmeasured]
    statuses, failed = [], []
    for rule in rules:
        if rule["metric"] not in metrics:
            raise LvmError(f"profile {profile.name}: gate {gate} has a rule for unknown metric {rule['metric']!r}")
        value = metrics[rule["metric"]]
        st = judge_rule(value, rule)
        statuses.append(st)
        if st != GREEN:
            if "min_green" in rule:
                bound = f"< {rule['min_green']}" + (
                    f" (AMBER down to {rule['min_amber']})" if "min_amber" in rule else ""
                )
            else:
                bound = f"> {rule['max_green']}" + (
                    f" (AMBER up to {rule['max_amber']})" if "max_amber" in rule else ""
                )
            failed.append(
                f"{rule['metric']} = {_fmt(value)} {bound} [{st}]" + (f": {rule['why']}" if rule.get("why") else "")
            )
    status = worst(statuses)
    message = ""
    if failed:
        message = (
            f"{gate} {status}: " + "; ".join(failed) + (f". Likely cause: {spec['cause']}" if spec.get("cause") else "")
        )
    if unmeasured:
        note = "; ".join(f"{k} not measured ({why})" for k, why in unmeasured.items())
        message = f"{message} ({note})" if message else note
    return GateResult(gate, status, metrics, rules, message, split=split, **where)


def skipped(gate: str, reason: str, **where) -> GateResult:
    return GateResult(gate, SKIP, message=reason, **where)


def annotate(result: GateResult, text: str) -> GateResult:
    """Append context (why a metric could not be trusted) to a result's message."""
    result.message = f"{result.message} {text}".strip()
    return result


def gate_params(profile: Profile, gate: str) -> dict:
    """The gate's parameters: the defaults declared in ``lvm.gates.spec`` overridden by the profile's
    ``[gates.<gate>]`` table. A profile key the gate does not declare is an error (a typo would
    otherwise be ignored silently)."""
    declared = BY_ID[gate].params
    table = {k: v for k, v in profile.gate(gate).items() if k not in PROFILE_KEYS}
    unknown = sorted(set(table) - set(declared))
    if unknown:
        raise LvmError(
            f"gate profile {profile.name}: [gates.{gate}] has unknown parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(declared) or 'none'}"
        )
    return {**declared, **table}


def cap_thin(result: GateResult, n: float, min_n: int, what: str = "sequences") -> GateResult:
    """Too small a sample decides nothing: GREEN and RED both become AMBER "too few sequences"."""
    if min_n and n < min_n and result.status in (GREEN, RED):
        was = result.status
        result.status = AMBER
        result.message = (
            f"{result.gate} AMBER: too few {what} to decide (n = {n:.0f} < {min_n}); it would read {was}. "
            + (result.message or "")
        ).strip()
    return result
