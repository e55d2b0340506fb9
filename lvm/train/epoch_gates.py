"""Epoch gates for any training loop: the gate profile's epoch rules (the kill switches of ``lvm
train``), callable after each epoch of a loop that lvm does not own.

::

    from lvm.train import EpochGates

    gates = EpochGates(dataset="data/wiki-minilm", samples_per_epoch=len(train_set))  # the dataset's profile
    for epoch in range(1, epochs + 1):
        train_one_epoch(model)
        decision = gates.after_epoch(epoch, model=model)  # or val_cosine=..., ood_cosine=...
        print(decision.message)
        if decision.kill:
            break

``lvm train`` judges its epochs through this class, so the trainer, ``lvm watch`` (a trainer's
checkpoints, from outside) and the Lightning callback cannot disagree: the same profile, the same
samples-per-epoch scaling of the schedule (a rule "at epoch E" falls due once E x the profile's
``reference_samples_per_epoch`` samples have been seen), the same events.

Rules whose due epoch was skipped (a watcher that saw epoch 1, then epoch 3) are judged on the next
epoch that is seen, with its values, and say so (``judged_on_epoch``); the trainer never skips one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lvm.errors import LvmError
from lvm.profiles import ACTION_STATUS, Profile, check_fits, load_profile, profile_for_dataset

ACTIONS = ("continue", "warn", "kill")  # a decision; a profile rule's "abort" is a kill, "warn" a warn
DECISION_STATUS = {"continue": "GREEN", "warn": ACTION_STATUS["warn"], "kill": ACTION_STATUS["abort"]}
TRIAGE_EPOCH = 2  # the seeds' critical gate: val cosine at epoch 2 (docs/EPOCH2_TRIAGE_PLAYBOOK.md)
# The seeds' epoch-2 triage playbook: the fixes to try, in order ("each is cheap"), when the epoch-2 gate
# misses (their τ → λ → batch → head → mixing); the lvm train option that applies each one is named beside it.
SEEDS_EPOCH2_TRIAGE = (
    "temperature: InfoNCE τ 0.07 -> 0.05 or 0.10 (--tau)",
    "λ: weight the loss terms again, e.g. contrastive 0.7 -> 0.85, MSE/AR 0.3 -> 0.15 (--lambda-info, --lambda-mse)",
    "effective batch: more in-batch negatives, e.g. 1024 -> 2048 (--batch-size, or gradient accumulation)",
    "projection head: LayerNorm before the last layer, no bias on it, L2-normalised output",
    "batch mixing: cross-article negatives, at most 2 items per article per batch (--max-per-article 2)",
)


def triage_text() -> str:
    """The seeds' epoch-2 fixes as one numbered line, in their order."""
    fixes = "; ".join(f"{i}) {fix}" for i, fix in enumerate(SEEDS_EPOCH2_TRIAGE, 1))
    return f"seeds' epoch-2 triage, in order: {fixes}"


def rule_events(
    profile: Profile,
    epoch: int,
    val_cos: float | None,
    ood_cos: float | None,
    samples_per_epoch: int | None = None,
    since: int | None = None,
) -> tuple[list[dict], list[dict]]:
    """The events of the epoch rules broken at ``epoch`` (those due after epoch ``since`` through
    ``epoch`` when ``since`` is given), as the training history records them, and the profile's raw
    violations beside them (with ``rule_epoch``)."""
    first = epoch if since is None or since >= epoch else since + 1
    rows = [{"epoch": e, "val_cosine": val_cos, "ood_cosine": ood_cos} for e in range(first, epoch + 1)]
    violations = profile.schedule_violations(rows, samples_per_epoch=samples_per_epoch)
    events = []
    for v in violations:
        event = {
            "gate": f"training.{v['metric']}",
            "epoch": v["epoch"],
            "value": round(float(v["value"]), 6),
            "threshold": v["threshold"],
            "action": v["action"],
            "status": v["status"],
            "why": v["why"],
            "profile": profile.name,
        }
        if v["epoch"] != epoch:  # a rule of a skipped epoch, judged on this one's values
            event["judged_on_epoch"] = epoch
        events.append(event)
    return events, violations


def check_kill_switches(
    profile: Profile, epoch: int, val_cos: float, ood_cos: float | None, samples_per_epoch: int | None = None
) -> tuple[list[dict], dict | None]:
    """Events (one per epoch rule broken, warnings included) and the first abort event (or None)."""
    events, _ = rule_events(profile, epoch, val_cos, ood_cos, samples_per_epoch)
    return events, next((e for e in events if e["action"] == "abort"), None)


@dataclass
class Decision:
    """What to do after an epoch: ``continue``, ``warn`` (an AMBER rule broke) or ``kill`` (an abort
    rule broke: stop training). ``rule`` names the rule that decided it (None when nothing broke)."""

    action: str
    rule: str | None
    message: str
    epoch: int
    val_cosine: float | None = None
    ood_cosine: float | None = None
    events: list[dict] = field(default_factory=list)  # as training_history.json records them
    triage: tuple[str, ...] = ()  # the seeds' epoch-2 fixes, in order, when the epoch-2 rule broke
    unjudged: list[str] = field(default_factory=list)  # rules due that had no value to judge

    @property
    def kill(self) -> bool:
        return self.action == "kill"

    @property
    def status(self) -> str:
        return DECISION_STATUS[self.action]

    @property
    def abort(self) -> dict | None:
        """The first abort event (what ``lvm train`` records as ``aborted``), or None."""
        return next((e for e in self.events if e["action"] == "abort"), None)

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "action": self.action,
            "status": self.status,
            "rule": self.rule,
            "message": self.message,
            "val_cosine": self.val_cosine,
            "ood_cosine": self.ood_cosine,
            "events": self.events,
            "triage": list(self.triage),
            "unjudged": self.unjudged,
        }


def _rule_name(event: dict, rule_epoch: int) -> str:
    return f"{event['gate']} (epoch {rule_epoch}, min {event['threshold']})"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


class EpochGates:
    """The profile's epoch rules for one training run.

    ``profile``: a ``Profile``, a profile name or ``.toml`` path, or None for the dataset's profile.
    ``samples_per_epoch``: training sequences seen per epoch (None with a dataset: its train sequences
    at ``ctx``/``min_ctx``; None without one: the rules fall due at their own epochs). ``dataset`` (a
    folder or an opened ``Dataset``): lets ``after_epoch`` score a model itself on its val (and, when
    a rule needs it, OOD) split. ``start_epoch``: the first epoch this run will report (a resumed run's).
    """

    def __init__(
        self,
        profile: Profile | str | Path | None = None,
        samples_per_epoch: int | None = None,
        dataset=None,
        *,
        ctx: int | None = None,
        min_ctx: int | None = None,
        start_epoch: int = 1,
        eval_batch_size: int = 2048,
        device=None,
    ):
        from lvm.train.config import TrainConfig

        if dataset is not None and not hasattr(dataset, "sequences"):
            from lvm.data.datasets import open_dataset

            dataset = open_dataset(dataset)
        self.dataset = dataset
        if isinstance(profile, Profile):
            self.profile = check_fits(profile, dataset.meta) if dataset is not None else profile
        elif profile is not None:
            self.profile = (
                profile_for_dataset(dataset.meta, str(profile)) if dataset is not None else load_profile(str(profile))
            )
        elif dataset is not None:
            self.profile = profile_for_dataset(dataset.meta)
        else:
            raise LvmError("EpochGates needs a gate profile (name, .toml path or Profile) or a dataset to take it from")
        declared = (dataset.meta.get("sequences") or {}) if dataset is not None else {}
        defaults = TrainConfig()
        self.ctx = ctx or declared.get("ctx") or defaults.ctx
        self.min_ctx = min_ctx or declared.get("min_ctx") or min(defaults.min_ctx, self.ctx)
        if samples_per_epoch is None and dataset is not None:
            samples_per_epoch = len(self._view("train"))
        if samples_per_epoch is not None and (isinstance(samples_per_epoch, bool) or int(samples_per_epoch) < 1):
            raise LvmError(f"samples_per_epoch must be a positive integer; got {samples_per_epoch!r}")
        self.samples_per_epoch = int(samples_per_epoch) if samples_per_epoch is not None else None
        self.judged_through = max(0, int(start_epoch) - 1)  # rules due up to here are judged already
        self.eval_batch_size = eval_batch_size
        self.device = device
        self.decisions: list[Decision] = []

    # -- what an epoch needs

    def _window(self, epoch: int) -> range:
        first = epoch if self.judged_through >= epoch else self.judged_through + 1
        return range(first, epoch + 1)

    def due(self, epoch: int) -> dict[str, list]:
        """The rules judged after ``epoch`` (those of skipped epochs included), by kind."""
        kinds = ("val_cosine", "ood_sentinel")
        return {
            k: [r for e in self._window(epoch) for r in self.profile.rules_at(k, e, self.samples_per_epoch)]
            for k in kinds
        }

    def needs_ood(self, epoch: int) -> bool:
        """Whether an OOD-sentinel rule falls due after ``epoch`` (evaluate OOD then, only then)."""
        return bool(self.due(epoch)["ood_sentinel"])

    def unreached(self, epochs: int) -> list[dict]:
        """Rules a run of ``epochs`` epochs never reaches (a dataset too small for the schedule)."""
        return self.profile.unreached(epochs, self.samples_per_epoch)

    # -- scoring a model on the dataset

    def _view(self, split: str):
        return self.dataset.sequences(split, self.ctx, self.min_ctx)

    def score(self, model, split: str) -> float | None:
        """Mean cos(ŷ, y) of ``model`` (``forward(x, mask) -> (B, D)``) over the dataset's ``split``
        sequences; None for an empty split."""
        from lvm.evaluation import evaluate

        if self.dataset is None:
            raise LvmError("EpochGates was built without a dataset: pass val_cosine (and ood_cosine) to after_epoch")
        view = self._view(split)
        if len(view) == 0:
            return None
        return float(evaluate(model, view, None, self.eval_batch_size, self.device)["cosine"])

    # -- the decision

    def after_epoch(
        self,
        epoch: int,
        model=None,
        val_cosine: float | None = None,
        ood_cosine: float | None = None,
    ) -> Decision:
        """Judge the rules due after ``epoch`` (1-based) and decide: continue, warn or kill.

        Values not given are scored on the dataset with ``model`` (val always; OOD only when an
        OOD-sentinel rule is due). A rule whose value is missing is not judged and is named in
        ``unjudged``; NaN breaks no rule (the profile's semantics).
        """
        if isinstance(epoch, bool) or int(epoch) != epoch or epoch < 1:
            raise LvmError(f"epoch must be an integer >= 1 (the epoch just finished); got {epoch!r}")
        epoch = int(epoch)
        due = self.due(epoch)
        if model is not None and val_cosine is None:
            val_cosine = self.score(model, "val")
        if model is not None and ood_cosine is None and due["ood_sentinel"]:
            ood_cosine = self.score(model, "ood")
        since = self.judged_through if self.judged_through < epoch else None
        events, violations = rule_events(
            self.profile, epoch, val_cosine, ood_cosine, self.samples_per_epoch, since=since
        )
        self.judged_through = max(self.judged_through, epoch)
        values = {"val_cosine": val_cosine, "ood_sentinel": ood_cosine}
        unjudged = [
            f"training.{kind} (epoch {r.epoch}, min {r.min}): no {'val' if kind == 'val_cosine' else 'OOD'} cosine"
            for kind, value in values.items()
            if value is None
            for r in due[kind]
        ]
        decision = self._decide(epoch, val_cosine, ood_cosine, events, violations, unjudged)
        self.decisions.append(decision)
        return decision

    def _decide(self, epoch, val_cosine, ood_cosine, events, violations, unjudged) -> Decision:
        kills = [(e, v) for e, v in zip(events, violations, strict=True) if e["action"] == "abort"]
        warns = [(e, v) for e, v in zip(events, violations, strict=True) if e["action"] == "warn"]
        deciding = kills[0] if kills else warns[0] if warns else None
        action = "kill" if kills else "warn" if warns else "continue"
        triage = (
            SEEDS_EPOCH2_TRIAGE
            if any(v["metric"] == "val_cosine" and v["rule_epoch"] == TRIAGE_EPOCH for v in violations)
            else ()
        )
        scores = f"val cos {_fmt(val_cosine)}" + (f", OOD cos {_fmt(ood_cosine)}" if ood_cosine is not None else "")
        if deciding is None:
            message = f"epoch {epoch}: {scores}; every rule due passes (profile {self.profile.name})"
        else:
            parts = [
                f"{e['gate']} {e['value']:.4f} < {e['threshold']} (rule of epoch {v['rule_epoch']}, {e['action']}"
                + (f", judged late on epoch {epoch}" if e.get("judged_on_epoch") else "")
                + ")"
                + (f": {e['why']}" if e["why"] else "")
                for e, v in (kills + warns)
            ]
            message = f"epoch {epoch}: {scores}; {'KILL' if kills else 'WARN'}: " + "; ".join(parts)
        if triage:
            message += "; " + triage_text()
        if unjudged:
            message += "; not judged: " + ", ".join(unjudged)
        return Decision(
            action=action,
            rule=_rule_name(deciding[0], deciding[1]["rule_epoch"]) if deciding else None,
            message=message,
            epoch=epoch,
            val_cosine=val_cosine,
            ood_cosine=ood_cosine,
            events=events,
            triage=triage,
            unjudged=unjudged,
        )
