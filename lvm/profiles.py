"""Gate profiles: TOML files of thresholds, one per encoder/corpus family. No threshold lives in code.

A profile is chosen by name (a file shipped in ``lvm/profiles/``), by path, or from a dataset's
metadata: the first shipped profile that lists the dataset's encoder model id.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from lvm.bounds import Bound, check_number
from lvm.errors import LvmError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
ACTIONS = ("abort", "warn")
# The status a broken epoch rule gives: an abort is a RED kill switch, a warning AMBER.
ACTION_STATUS = {"abort": "RED", "warn": "AMBER"}
# Epoch-rule tables under ``[training]`` and the training-history field each one judges.
SCHEDULE_METRICS = {"val_cosine": "val_cosine", "ood_sentinel": "ood_cosine"}


@dataclass(frozen=True)
class EpochRule:
    """``value < min`` at ``epoch`` triggers ``action`` (abort = RED kill switch, warn = AMBER)."""

    epoch: int
    min: float
    action: str
    why: str = ""


@dataclass
class Profile:
    name: str
    version: int
    path: Path
    data: dict = field(repr=False)
    val_cosine: list[EpochRule] = field(default_factory=list)
    ood_sentinel: list[EpochRule] = field(default_factory=list)

    def gate(self, gate_id: str) -> dict:
        """The ``[gates.<id>]`` table (cause, rules, parameters); an error if the profile lacks it."""
        spec = self.data.get("gates", {}).get(gate_id)
        if spec is None:
            raise LvmError(f"gate profile {self.name} ({self.path.name}) has no [gates.{gate_id}] table")
        return spec

    @property
    def reference_samples(self) -> int | None:
        """Training sequences per epoch of the runs the epoch schedule was calibrated on (``[training]
        reference_samples_per_epoch``): a rule "at epoch E" means after E x this many samples seen."""
        ref = self.data.get("training", {}).get("reference_samples_per_epoch")
        return int(ref) if ref else None

    def due_epoch(self, rule: EpochRule, samples_per_epoch: int | None = None) -> int:
        """The epoch of *this* run at which ``rule`` is judged: the first whose samples seen reach the
        rule's (so the schedule means the same on 5k and 500k sequences); the rule's own epoch when
        the run's or the profile's epoch size is unknown."""
        ref = self.reference_samples
        if not ref or not samples_per_epoch:
            return rule.epoch
        return max(1, math.ceil(rule.epoch * ref / samples_per_epoch))

    def rules_at(self, kind: str, epoch: int, samples_per_epoch: int | None = None) -> list[EpochRule]:
        return [r for r in getattr(self, kind) if self.due_epoch(r, samples_per_epoch) == epoch]

    def unreached(self, epochs: int, samples_per_epoch: int | None = None) -> list[dict]:
        """Rules a run of ``epochs`` epochs never reaches (a dataset too small for the schedule)."""
        return [
            {
                "metric": kind,
                "rule_epoch": r.epoch,
                "due_epoch": self.due_epoch(r, samples_per_epoch),
                "threshold": r.min,
            }
            for kind in SCHEDULE_METRICS
            for r in getattr(self, kind)
            if self.due_epoch(r, samples_per_epoch) > epochs
        ]

    def schedule_violations(
        self,
        epochs: Iterable[Mapping],
        kinds: Sequence[str] = tuple(SCHEDULE_METRICS),
        samples_per_epoch: int | None = None,
    ) -> list[dict]:
        """The epoch rules (kill switches) that training-history rows break, in row, kind, rule order.

        A row (``epoch``, ``val_cosine``, optionally ``ood_cosine``) breaks a ``training.<kind>``
        rule of its epoch when ``value < min``; a row without the rule's field (no OOD evaluation
        that epoch) is not judged by it, and NaN breaks no rule. Each violation holds ``epoch``,
        ``metric`` (the rule table: ``val_cosine`` or ``ood_sentinel``), ``value``, ``threshold``,
        ``action``, ``status`` (RED for abort, AMBER for warn) and ``why``. The trainer and the
        ``training_health`` gate both judge the schedule here.
        """
        violations = []
        for row in epochs:
            for kind in kinds:
                value = row.get(SCHEDULE_METRICS[kind])
                if value is None:
                    continue
                for rule in self.rules_at(kind, row["epoch"], samples_per_epoch):
                    if value < rule.min:
                        violations.append(
                            {
                                "epoch": row["epoch"],
                                "rule_epoch": rule.epoch,
                                "metric": kind,
                                "value": value,
                                "threshold": rule.min,
                                "action": rule.action,
                                "status": ACTION_STATUS[rule.action],
                                "why": rule.why,
                            }
                        )
        return violations


def _rules(data: dict, key: str, path: Path) -> list[EpochRule]:
    rules = []
    for i, raw in enumerate(data.get("training", {}).get(key, [])):
        try:
            rule = EpochRule(int(raw["epoch"]), float(raw["min"]), str(raw["action"]), str(raw.get("why", "")))
        except (KeyError, TypeError, ValueError):
            raise LvmError(f"{path}: training.{key}[{i}] needs epoch (int), min (number) and action") from None
        if rule.action not in ACTIONS:
            raise LvmError(f"{path}: training.{key}[{i}].action must be one of {', '.join(ACTIONS)}")
        rules.append(rule)
    return rules


# The ``[regression]`` table (read by ``lvm.report.regression``): each number's range, declared once.
# A key holding a table (``min_effect``, ``seed_spread``, ``tolerances``) bounds each of its values.
REGRESSION_BOUNDS = {
    "default_tolerance": Bound(float, 0),  # absolute drop allowed in a metric without per-sequence scores
    "cost_tolerance": Bound(float, 0),  # relative rise allowed in a latency cost count
    "min_effect_factor": Bound(float, 1),  # minimum effect = this x the seed spread (at least the spread)
    "spread_seeds": Bound(int, 1),  # trainings the spread was measured on (recorded by lvm calibrate)
    "min_effect": Bound(float, 0),  # per cosine gate: the smallest drop that can be a regression
    "seed_spread": Bound(float, 0),  # per cosine gate: sd of the mean cosine over retrains
    "tolerances": Bound(float, 0),  # per metric (or gate_metric): its own tolerance
}
REGRESSION_TABLES = ("min_effect", "seed_spread", "tolerances")


def check_values(data: dict, where: str) -> None:
    """Every number of a profile within its declared range, when it loads (``LvmError``, one line
    naming the file and the key): the gate parameters (``lvm.gates.spec``: ``GateSpec.bounds``) and
    the ``[regression]`` table (``REGRESSION_BOUNDS``). Rule thresholds are finite numbers
    (``lvm.schemas.Rule``)."""
    from lvm.gates.spec import check_params

    for gate, table in (data.get("gates") or {}).items():
        check_params(gate, table, where)
    regression = data.get("regression") or {}
    unknown = sorted(str(k) for k in set(regression) - set(REGRESSION_BOUNDS))
    if unknown:
        raise LvmError(
            f"{where}: [regression] has unknown key(s) {', '.join(unknown)}; known: {', '.join(REGRESSION_BOUNDS)}"
        )
    for key, value in regression.items():
        bound = REGRESSION_BOUNDS[key]
        if key in REGRESSION_TABLES:
            if not isinstance(value, dict):
                raise LvmError(f"{where}: regression.{key} must be a table of numbers; got {value!r:.60}")
            for name, v in value.items():
                check_number(v, bound, f"{where}: regression.{key}.{name}")
        else:
            check_number(value, bound, f"{where}: regression.{key}")


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str, _chain: tuple = ()) -> Profile:
    path = Path(name_or_path)
    if path.suffix != ".toml" or not path.is_file():
        path = PROFILE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise LvmError(f"gate profile {name_or_path!r} not found; shipped profiles: {', '.join(shipped_profiles())}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise LvmError(f"{path}: invalid TOML ({str(exc)[:160]})") from None
    from lvm import schemas

    schemas.validate(schemas.ProfileDoc, data, str(path))
    check_values(data, str(path))
    head = data.get("profile", {})
    if head.get("extends"):
        # a profile overrides whole tables of the profile it extends: gates.<id>, training, regression
        if str(path.resolve()) in _chain or len(_chain) > 8:
            raise LvmError(f"{path}: profile.extends forms a cycle ({' -> '.join(map(str, (*_chain, path)))})")
        base = load_profile(head["extends"], (*_chain, str(path.resolve()))).data
        merged = {**base, **{k: v for k, v in data.items() if k != "gates"}}
        merged["gates"] = {**base.get("gates", {}), **data.get("gates", {})}
        merged["training"] = data.get("training", base.get("training", {}))
        data = merged
    return Profile(
        name=str(head.get("name", path.stem)),
        version=int(head.get("version", 1)),
        path=path,
        data=data,
        val_cosine=_rules(data, "val_cosine", path),
        ood_sentinel=_rules(data, "ood_sentinel", path),
    )


def _model_id(meta: dict) -> str | None:
    enc = meta.get("encoder") or {}
    return (enc.get("pipeline") or {}).get("model_id") or (enc.get("spec") or {}).get("name")


def check_fits(profile: Profile, meta: dict) -> Profile:
    """Refuse a profile calibrated for another encoder or dimension than the dataset's (its thresholds
    would judge another vector space). Synthetic data, which names its own profile, is exempt."""
    if meta.get("synthetic"):
        return profile
    head = profile.data.get("profile", {})
    dim, want_dim = meta.get("dim"), head.get("dim")
    if want_dim is not None and dim is not None and dim != want_dim:
        raise LvmError(
            f"gate profile {profile.name} is calibrated for {want_dim}-D vectors but the dataset has {dim}-D "
            "vectors; pick the profile of its encoder or write one with `lvm calibrate`"
        )
    model_id, encoders = _model_id(meta), head.get("encoders") or []
    if model_id and encoders and model_id not in encoders and not head.get("any_encoder"):
        raise LvmError(
            f"gate profile {profile.name} is calibrated for {', '.join(encoders)}, not for the dataset's encoder "
            f"{model_id}; pick the profile of its encoder or write one with `lvm calibrate`"
        )
    return profile


def profile_for_dataset(meta: dict, explicit: str | None = None) -> Profile:
    """The explicit profile, else the first shipped one whose ``encoders`` lists the dataset's encoder;
    either way one whose encoder and dimension fit the dataset (``check_fits``)."""
    if explicit:
        return check_fits(load_profile(explicit), meta)
    if meta.get("gate_profile"):  # a dataset may name its profile (synthetic data does)
        return check_fits(load_profile(meta["gate_profile"]), meta)
    model_id = _model_id(meta)
    for name in shipped_profiles():
        prof = load_profile(name)
        if model_id and model_id in prof.data.get("profile", {}).get("encoders", []):
            return prof
    raise LvmError(
        f"no shipped gate profile matches encoder {model_id!r}; pass one with --gate-profile "
        f"({', '.join(shipped_profiles())} or a .toml path)"
    )
