"""One recorder: gate results become typed rows, the rows one results file and one stoplight table.

The pytest plugin (``lvm.pytest_plugin``) keeps its options, the session cache and the fixtures; its
hooks hand everything about results to a ``Recorder`` (as pytest-benchmark's hooks delegate to its
session object): ``row`` turns a ``GateResult`` and where it ran into the one typed row,
``lvm.schemas.ResultRow``; ``add_json`` / ``add_outcome`` collect rows from test reports (also from
xdist workers, as JSON user properties); ``finish`` makes the run record, moves model cards and
training-history summaries into the ``models`` table, makes paths relative to the file, runs the
regression check against a baseline results file and writes the file (``lvm.report.results``,
schema ``lvm-gate-results`` v2) atomically; ``write_summary`` prints the stoplights. ``lvm compare``
and ``lvm leaderboard`` read the same rows back (``lvm.report.results.read_document``).

**Checkpoint identity.** A checkpoint is named by its model card's ``name``, not by its folder, so
the same model gated from ``runs/amn_s1`` compares with a baseline gated from ``runs/smoke/amn``.
``--checkpoint NAME=PATH`` (and ``--predictions NAME=DIR``) names it explicitly. The card is read at
collection time when that is cheap, from JSON only: an lvm checkpoint's config (its ``name``, else
its model type: ``lvm train`` writes no name), a ``.pt2``'s ``NAME.json`` (else ``--model-card``),
an imported folder's ``model.json``, a predictions folder's ``card.json`` (else the folder's name),
a ``py:`` factory's ``--model-card``. A ``py:`` factory without one is named by the card it returns,
known only once its code has run: its pytest ids use the path label, its rows the card's name. Two
checkpoints with one name are refused (``NameClash``, one line naming both paths).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lvm.errors import LvmError
from lvm.schemas import ResultRow

if TYPE_CHECKING:
    from lvm.report.regression import Verdict

PER_SEQUENCE_LIMIT = 200_000  # per-sequence scores kept for the paired regression check
RUN_ONLY = ("model_card", "training_history", "per_sequence_file")  # row fields never written to the file
PREDICTIONS = "predictions:"
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")  # what NAME= may be: no '/', ':' or '=' (a path or a py: spec)


# ----------------------------------------------------------------------------- checkpoint identity


class NameClash(LvmError):
    """Two checkpoints of one run would carry the same name (the plugin's ``pytest.UsageError``)."""


def split_name(value: str) -> tuple[str | None, str]:
    """``NAME=SPEC`` -> ``(NAME, SPEC)``; anything else -> ``(None, value)``. NAME must look like a
    name (letters, digits, ``_.+-``; a ``py:`` spec has a ':' first) and ``value`` must not be an
    existing path (a folder may be called ``a=b``)."""
    head, sep, tail = value.partition("=")
    if sep and tail and NAME.fullmatch(head) and not Path(value).exists():
        return head, tail
    return None, value


def path_label(spec: str) -> str:
    """The name a spec's path gives it (a ``py:`` spec's before its code runs, a card that cannot be read)."""
    from lvm.models.adapters import model_label

    return Path(spec.removeprefix(PREDICTIONS)).name if spec.startswith(PREDICTIONS) else model_label(spec)


def _named(card: dict, default: str | None = None) -> str | None:
    name = card.get("name")
    return name if isinstance(name, str) and name.strip() else default


def card_name(spec: str, model_card: str | Path | None = None) -> str | None:
    """The name a checkpoint's card gives it, read from JSON without loading the model; None when only
    loading can tell (a ``py:`` factory's own card) or the card cannot be read (its load error is the
    ``checkpoint_integrity`` gate's)."""
    from lvm.models.adapters import EXPORT_SUFFIX, PY_PREFIX, _imported_card, read_card_file
    from lvm.models.checkpoints import read_checkpoint_meta

    try:
        if spec.startswith(PREDICTIONS):
            folder = Path(spec.removeprefix(PREDICTIONS))
            return _named(read_card_file(folder / "card.json"), folder.name)
        if spec.startswith(PY_PREFIX):
            return _named(read_card_file(model_card)) if model_card else None
        if spec.endswith(EXPORT_SUFFIX):
            own = Path(spec).with_suffix(".json")
            return _named(read_card_file(own if own.is_file() or not model_card else model_card))
        imported = _imported_card(spec)
        if imported is not None:
            return _named(read_card_file(imported))
        meta = read_checkpoint_meta(spec)
        return _named(meta, str(meta["model_type"]))
    except (LvmError, OSError, KeyError):
        return None


def clash(name: str, first: str, second: str) -> str:
    a, b = first.removeprefix(PREDICTIONS), second.removeprefix(PREDICTIONS)
    if a == b:
        return f"checkpoint {a} is given twice (as {name!r}); gate it once"
    return (
        f"checkpoints {a} and {b} are both named {name!r}; name them apart with --checkpoint NAME=PATH "
        f"(e.g. --checkpoint {name}_2={b})"
    )


def checkpoint_names(entries: list[tuple[str | None, str]], model_card: str | Path | None = None) -> dict:
    """spec -> its name (None: a ``py:`` factory named by its card once loaded) for ``(NAME or None,
    spec)`` entries; ``NameClash`` when two share a name (or a path label, for one not yet named)."""
    names: dict[str, str | None] = {}
    seen: dict[str, str] = {}
    for explicit, spec in entries:
        name = explicit or card_name(spec, model_card)
        key = name or path_label(spec)
        if key in seen or spec in names:
            raise NameClash(clash(key, seen.get(key, spec), spec))
        names[spec], seen[key] = name, spec
    return names


# ----------------------------------------------------------------------------- rows


def history_summary(path: str | None) -> dict | None:
    """What the leaderboard needs of a run's training_history.json (per-epoch scalars, status, loss)."""
    from lvm.schemas import read_json

    if not path or not Path(path).is_file():
        return None
    try:
        hist = read_json(Path(path), "a training history")
    except LvmError:  # unreadable, not JSON, nested too deep: no history to show (training_health says why)
        return None
    if not isinstance(hist, dict):
        return None
    listed = hist.get("epochs")
    epochs = [
        {k: v for k, v in e.items() if isinstance(v, (int, float, str, bool)) or v is None}
        for e in (listed if isinstance(listed, list) else [])
        if isinstance(e, dict)
    ]
    return {
        "epochs": epochs,
        "status": hist.get("status"),
        "loss_config": hist.get("loss_config"),
        "aborted": hist.get("aborted"),
    }


def gate_of(nodeid: str) -> str:
    """The gate id of a pytest node id: ``gates/test_model_gates.py::test_val_cosine[...]`` -> ``val_cosine``."""
    return nodeid.split("::")[-1].split("[")[0].removeprefix("test_")


def dump(row: ResultRow) -> dict:
    """A row as the results file holds it: the fields it was given (a crash row has no comparability
    key, as before), without the run-only ones."""
    return row.model_dump(exclude_unset=True, exclude=set(RUN_ONLY))


def _relative(value: str | None, base: Path) -> str | None:
    if not value or value.startswith("py:"):
        return value
    if value.startswith(PREDICTIONS):
        return PREDICTIONS + os.path.relpath(Path(value.removeprefix(PREDICTIONS)).resolve(), base.resolve())
    return os.path.relpath(Path(value).resolve(), base.resolve())


def portable(rows: list[ResultRow], results_dir: Path) -> tuple[list[dict], dict]:
    """(the rows as written, the ``models`` table): paths relative to the results file's folder, model
    cards and training-history summaries moved from the rows into one table (checkpoint -> both)."""
    models: dict = {}
    out = []
    for r in rows:
        if r.checkpoint and r.model_card is not None:
            entry = models.setdefault(r.checkpoint, {"card": r.model_card, "history": None})
            entry["history"] = entry["history"] or r.training_history
        d = dump(r)
        for key in ("checkpoint_path", "dataset_path"):
            if key in d:
                d[key] = _relative(d[key], results_dir)
        out.append(d)
    return out, models


@dataclass
class Finish:
    """What the end of a run needs from pytest: the options and the selection."""

    target: Path  # --results
    argv: list
    selection: dict  # keyword, markexpr, last_failed (deselected is counted by the recorder)
    models_gated: bool
    explicit_profile: str | None = None  # --gate-profile
    baseline: str | None = None  # --baseline-results


class Recorder:
    """Every row of a run, collected on the controller; the results file and the stoplights at the end.

    Per-sequence scores travel beside the reports, not in them (JUnit properties stay small): a
    worker writes them into ``parts`` (the controller's folder, made on first use and removed by
    ``close``) and the controller reads them back into the row.
    """

    def __init__(self, parts: str | Path | None = None):
        self.rows: list[ResultRow] = []
        self.regressions: list[ResultRow] = []
        self.verdict: Verdict | None = None  # when a baseline was given
        self.results_path: Path | None = None
        self.finish_error: str | None = None
        self.partial_note: str | None = None
        self.deselected = 0
        self.started = time.time()
        self._parts = Path(parts) if parts else None
        self._own_parts = self._parts is None  # the controller owns (and removes) the folder

    # -- per-sequence scores
    @property
    def parts(self) -> Path:
        if self._parts is None:
            self._parts = Path(tempfile.mkdtemp(prefix="lvm-gates-"))
        return self._parts

    def close(self) -> None:
        if self._own_parts and self._parts is not None:
            shutil.rmtree(self._parts, ignore_errors=True)

    def save_per_sequence(self, nodeid: str, values, articles=None) -> str | None:
        import numpy as np

        if len(values) > PER_SEQUENCE_LIMIT:
            return None
        name = hashlib.sha1(nodeid.encode()).hexdigest()[:16] + ".npz"
        arts = np.asarray(articles if articles is not None else np.arange(len(values)), dtype=np.int64)
        np.savez(self.parts / name, values=np.asarray(values, dtype=np.float64), articles=arts)
        return name

    def _load_per_sequence(self, row: ResultRow) -> ResultRow:
        import numpy as np

        name, row.per_sequence_file = row.per_sequence_file, None
        if name and (self.parts / name).is_file():
            with np.load(self.parts / name) as f:
                row.per_sequence = [round(float(v), 5) for v in f["values"]]
                row.per_sequence_article = [int(a) for a in f["articles"]]
        return row

    # -- one row
    def row(
        self,
        result,
        nodeid: str,
        dataset=None,
        profile=None,
        checkpoint_path: str | None = None,
        dataset_path: str | None = None,
        card=None,
    ) -> ResultRow:
        """A ``GateResult`` with where it ran: the comparability key (encoder, dataset identity, profile;
        the hardware class for hardware-bound gates), the data's provenance, the model card."""
        from lvm.gates.spec import spec as gate_spec
        from lvm.report.results import comparability, hardware_class, json_safe

        extra: dict = {}
        if dataset is not None:  # provenance, not the key
            extra.update(dataset_hash=dataset.content_hash, vector_sketch=dataset.vector_sketch)
        gs = gate_spec(result.gate)
        hw = hardware_class() if gs is not None and gs.hardware_bound else None
        comp, key = comparability(
            dataset.encoder_fingerprint if dataset is not None else None,
            dataset.identity if dataset is not None else None,
            profile.name if profile is not None else "unknown",
            profile.version if profile is not None else 0,
            hw,
        )
        if card is not None:
            extra.update(model_card=card.to_dict(), training_history=history_summary(card.history_path))
        return ResultRow(
            **json_safe(result.to_dict()),
            **json_safe(extra),
            comparability=comp,
            comparability_key=key,
            profile=profile.name if profile is not None else "unknown",
            nodeid=nodeid,
            checkpoint_path=str(checkpoint_path) if checkpoint_path else None,
            dataset_path=str(dataset_path) if dataset_path else None,
        )

    @staticmethod
    def to_json(row: ResultRow) -> str:
        """The row as one JSON text (a JUnit property: CI systems read it; no NaN, no per-sequence lists)."""
        return json.dumps(row.model_dump(exclude_unset=True), allow_nan=False)

    def add_json(self, text: str) -> None:
        self.rows.append(self._load_per_sequence(ResultRow.model_validate(json.loads(text))))

    def add_outcome(self, nodeid: str, outcome: str, text: str, seconds: float, where: dict | None) -> None:
        """A gate test that recorded no row: a crash (``failed``) is RED, never silently missing; a
        ``skipped`` one is SKIP with its reason. ``where``: checkpoint, dataset, split of the test."""
        from lvm.gates.status import RED, SKIP, GateResult

        if outcome == "failed":
            lines = [line for line in text.splitlines() if line.strip()]
            last = lines[-1][:300] if lines else ""
            status, why = RED, last if len(lines) == 1 else f"gate crashed: {last}"  # pytest.fail is one line
        else:
            status, why = SKIP, text.removeprefix("Skipped: ")
        result = GateResult(gate_of(nodeid), status, message=why, seconds=round(seconds, 4), **(where or {}))
        self.rows.append(ResultRow(**result.to_dict(), nodeid=nodeid))

    # -- the end
    def run_record(self, fin: Finish) -> dict:
        """What ran: the gates, whether the run was partial (-k, -m, --lf, a deselection, missing gates)."""
        from lvm.gates.spec import DATA_GATES, MODEL_GATES

        ran = sorted({r.gate for r in self.rows if r.gate != "regression"})
        expected = set(DATA_GATES) | (set(MODEL_GATES) - {"regression"} if fin.models_gated else set())
        selection = {**fin.selection, "deselected": self.deselected}
        missing = sorted(expected - set(ran))
        partial = bool(
            selection.get("keyword")
            or selection.get("markexpr")
            or selection.get("last_failed")
            or self.deselected
            or missing
        )
        return {
            "argv": list(fin.argv),
            "seconds": round(time.time() - self.started, 3),
            "gates_ran": ran,
            "gates_missing": missing,
            "selection": selection,
            "complete": not partial,
        }

    def results_target(self, target: Path, complete: bool) -> Path:
        """The results file; a partial run never replaces a complete one: it is written beside it."""
        if complete or not target.is_file():
            return target
        from lvm.schemas import read_json

        try:
            existing = read_json(target, "a gate results file")
            existing_complete = (existing.get("run") or {}).get("complete", True)
        except (LvmError, AttributeError):
            existing_complete = False  # unreadable: nothing worth keeping
        if existing_complete:
            self.partial_note = f"partial run: written beside {target} (kept, it holds a complete run)"
            return target.with_name(target.stem + ".partial.json")
        return target

    def _profile(self, explicit: str | None):
        """The profile the gates ran with: the explicit file, else the shipped one they recorded."""
        from lvm.profiles import load_profile

        name = next((r.profile for r in self.rows if r.profile and r.profile != "unknown"), None)
        try:
            return load_profile(explicit) if explicit else (load_profile(name) if name else None)
        except LvmError:
            return None

    def _regressions(self, doc: dict, profile, base_path: str | None) -> list[ResultRow]:
        """The regression verdict against the baseline results (``lvm.report.regression.check``)."""
        if not base_path:
            return []
        from lvm.report.regression import check
        from lvm.report.results import read_results

        self.verdict = check(
            doc,
            read_results(base_path),
            (profile.data.get("regression") if profile else None),
            new_name="this run",
            base_name=Path(base_path).name,
            profile_name=profile.name if profile else None,
        )
        return [ResultRow(**r.to_dict(), comparability_key=None) for r in self.verdict.regressions]

    @property
    def failed(self) -> bool:
        """The run fails beyond its tests: a regression, or a regression check that could not run."""
        return bool((self.verdict is not None and self.verdict.regressed) or self.finish_error)

    def finish(self, fin: Finish) -> Path | None:
        """The results file: run record, portable rows, ``models``, the regression rows; written atomically,
        also when the regression check cannot run (``finish_error`` says why)."""
        from lvm.report.results import build_document, json_safe, write_results

        profile = self._profile(fin.explicit_profile)
        run = self.run_record(fin)
        target = self.results_target(Path(fin.target), run["complete"])
        rows, models = portable(self.rows, target.parent)
        doc = build_document(rows, profile.name if profile else "unknown", profile.version if profile else 0)
        doc["run"], doc["models"] = run, json_safe(models)
        try:
            self.regressions = self._regressions(doc, profile, fin.baseline)
            doc["results"] += [dump(r) for r in self.regressions]
        except LvmError as exc:  # the regression check could not run: say so, still write what ran
            self.finish_error = f"regression check failed: {exc}"
        try:
            self.results_path = write_results(target, doc)
        except LvmError as exc:  # checked when the run started; the folder changed since
            self.finish_error = f"results file not written: {exc}"
        return self.results_path

    def write_summary(self, tr) -> None:
        """The stoplights and the lines after them, on pytest's terminal reporter (or anything with
        ``section``, ``write`` and ``write_line``)."""
        write_stoplights(tr, self.rows + self.regressions)
        if self.results_path:
            tr.write_line(f"results: {self.results_path}")
        if self.partial_note:
            tr.write_line(self.partial_note, yellow=True)
        if self.verdict is not None:
            tr.write_line(f"regression check: {self.verdict.summary}")
        if self.finish_error:
            tr.write_line(f"ERROR: {self.finish_error}", red=True, bold=True)


# ----------------------------------------------------------------------------- stoplights

COLOUR = {"GREEN": {"green": True}, "AMBER": {"yellow": True}, "RED": {"red": True, "bold": True}, "SKIP": {}}


def write_stoplights(tr, rows: list[ResultRow]) -> None:
    """The one stoplight table: gate × checkpoint × dataset, status and headline."""
    from lvm.gates.spec import ORDER

    def gate(r: ResultRow) -> str:
        return r.gate + (f"/{r.split}" if r.split else "")

    tr.section("lvm gates: stoplights")
    w_gate = max(len("gate"), *(len(gate(r)) for r in rows))
    w_ck = max(len("checkpoint"), *(len(r.checkpoint or "-") for r in rows))
    w_ds = max(len("dataset"), *(len(r.dataset or "-") for r in rows))
    tr.write_line(f"{'gate':<{w_gate}}  {'checkpoint':<{w_ck}}  {'dataset':<{w_ds}}  status  headline")
    for r in sorted(rows, key=lambda r: (r.checkpoint is not None, str(r.checkpoint), ORDER.get(r.gate, len(ORDER)))):
        tr.write(f"{gate(r):<{w_gate}}  {r.checkpoint or '-':<{w_ck}}  {r.dataset or '-':<{w_ds}}  ")
        tr.write(f"{r.status:<6}", **COLOUR.get(r.status, {}))
        tr.write_line(f"  {headline(r)}")
    counts = {s: sum(r.status == s for r in rows) for s in COLOUR}
    tr.write_line(" ".join(f"{k} {v}" for k, v in counts.items()))


def headline(r: ResultRow) -> str:
    """The one number a reader wants per gate."""
    from lvm.gates.spec import spec
    from lvm.report.results import as_float, as_text, format_number

    m = r.metrics
    if r.status in ("AMBER", "RED") and r.message:
        return r.message.split(": ", 1)[-1][:110]
    if r.gate in ("val_cosine", "ood_cosine"):
        v, lo, hi = (m.get(r.gate + s) for s in ("", "_ci_low", "_ci_high"))
        if all(as_float(x) is not None for x in (v, lo, hi)):
            return f"{format_number(v)} [{format_number(lo)}, {format_number(hi)}]"
    gs = spec(r.gate)
    k = gs.headline if gs else None
    if k and m.get(k) is not None:
        v = m[k]
        if isinstance(v, float):
            return f"{k}={format_number(v, '.4g')}"
        return f"{k}={as_text(v) if isinstance(v, (list, dict)) else v}"
    if r.status == "SKIP":
        return r.message[:100]
    return ""
