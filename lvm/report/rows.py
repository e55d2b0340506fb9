"""Leaderboard rows: gate results files -> one ``LeaderboardRow`` per (checkpoint, dataset), ranked.

A row is one (checkpoint, dataset) of one comparability group, with the seeds' columns: in-dist
(val) cosine with its 95 % CI, OOD cosine, Δ = OOD − val, P95 latency, parameters, loss config,
date, margin over the best null baseline, retrieval metrics, and the overall status: the worst of
the checkpoint's gates and its dataset's data gates (SKIP ignored). The null baselines measured by
``beats_baselines`` are rows too, without a status. Rows whose comparability keys differ (other
encoder, dataset, profile or hardware) are never ranked together: each group is ranked by val
cosine on its own. Rows read the run folders results point at (``config.json`` for the loss,
``training_history.json`` for the curves); they never re-run a gate.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path

from lvm.errors import LvmError
from lvm.gates.spec import DATA_GATES
from lvm.gates.status import AMBER, GREEN, RED, SKIP, worst
from lvm.report.results import as_float, as_int, as_text, dataset_label, finite, read_document
from lvm.schemas import ResultRow, ResultsDoc

STATUSES = (GREEN, AMBER, RED)
MODEL, BASELINE = "model", "baseline"  # a row's kind
RETRIEVAL_METRICS = ("contain_at_50", "r_at_5", "eff_at_5", "mrr_at_50")
MAX_EPOCH = 1_000_000  # an epoch number beyond this is not one (the trainer's own limit)
LOSS_TERMS = (
    ("lambda_mse", "MSE"),
    ("lambda_cos", "Cos"),
    ("lambda_info", "InfoNCE"),
    ("lambda_moment", "Moment"),
    ("lambda_variance", "Var"),
    # the seeds' optional terms (app/lvm/train_unified.py and its siblings), shown when an imported
    # checkpoint's ``args`` turn them on
    ("lambda_mmd", "MMD"),
    ("lambda_stat", "Stat"),
    ("lambda_cycle", "Cycle"),
    ("lambda_con", "Con"),
    ("lambda_ar", "AR"),
)
# The seeds' argument names (``vars(args)`` saved in ``best_model.pt``; ``lvm import-checkpoint`` keeps
# them as the card's ``training``) -> lvm's loss_config names. Their ``LossWeights`` dataclass spells
# the same weights without the prefix (``loss_weights``: mse, info_nce, moment, variance, tau).
SEED_LOSS_ARGS = {
    "lambda_mse": "lambda_mse",
    "lambda_cos": "lambda_cos",
    "lambda_info": "lambda_info",
    "lambda_infonce": "lambda_info",
    "lambda_moment": "lambda_moment",
    "lambda_variance": "lambda_variance",
    "lambda_mmd": "lambda_mmd",
    "lambda_stat": "lambda_stat",
    "cycle_lambda": "lambda_cycle",
    "lambda_cycle": "lambda_cycle",
    "lambda_con": "lambda_con",
    "lambda_ar": "lambda_ar",
    "tau": "tau",
    "temperature": "tau",
    "adaptive_info": "adaptive_info",
    "adaptive_lambda": "adaptive_info",
}
SEED_LOSS_WEIGHTS = {
    "mse": "lambda_mse",
    "info_nce": "lambda_info",
    "moment": "lambda_moment",
    "variance": "lambda_variance",
}
REASON_CHARS = 160  # a gate's reason on the "why" line; the full message stays in the HTML title

# A row's public columns, in CSV order (gate_<id> status columns follow, in the gate table's order).
COLUMNS = (
    "group",
    "rank",
    "kind",
    "checkpoint",
    "dataset",
    "model_type",
    "val_cosine",
    "val_ci_low",
    "val_ci_high",
    "ood_cosine",
    "ood_ci_low",
    "ood_ci_high",
    "delta_ood_minus_val",
    "p95_ms",
    "n_params",
    "loss",
    "date",
    "margin",
    "margin_ci_low",
    "margin_ci_high",
    "best_baseline",
    *RETRIEVAL_METRICS,
    "status",
    "why",
    "epochs",
    "checkpoint_path",
    "results_file",
    "comparability_key",
    "encoder_fingerprint",
    "dataset_hash",
    "hardware_class",
    "profile",
)


@dataclass
class LeaderboardRow:
    """One checkpoint (or null baseline) on one dataset. The public fields are ``COLUMNS`` plus
    ``group_number``; the rest is what the HTML colours and the plots need."""

    group: str  # comparability key, or ``dataset:<name>`` when the results carry none
    kind: str  # MODEL or BASELINE
    checkpoint: str
    dataset: str | None
    model_type: str | None = None
    val_cosine: float | None = None
    val_ci_low: float | None = None
    val_ci_high: float | None = None
    ood_cosine: float | None = None
    ood_ci_low: float | None = None
    ood_ci_high: float | None = None
    delta_ood_minus_val: float | None = None
    p95_ms: float | None = None
    n_params: int | None = None
    loss: str | None = None  # ``loss_summary``
    date: str | None = None  # the results file's created_at
    margin: float | None = None  # val cosine over the best null baseline
    margin_ci_low: float | None = None
    margin_ci_high: float | None = None
    best_baseline: str | None = None
    contain_at_50: float | None = None
    r_at_5: float | None = None
    eff_at_5: float | None = None
    mrr_at_50: float | None = None
    status: str | None = None  # worst gate status; None for a baseline
    why: str | None = None  # each gate that is not GREEN: "<gate> <STATUS> (<splits>): <reason>", "; "-joined
    epochs: int | None = None  # trained epochs in training_history.json
    checkpoint_path: str | None = None
    results_file: str | None = None
    comparability_key: str | None = None
    encoder_fingerprint: str | None = None
    dataset_hash: str | None = None
    hardware_class: str | None = None
    profile: str | None = None
    rank: int | None = None  # within the group, by val cosine; None without one
    group_number: int | None = None
    # not columns
    gates: dict[str, str] = field(default_factory=dict, repr=False)  # gate id -> status
    comparability: dict = field(default_factory=dict, repr=False)
    created: str = field(default="", repr=False)  # for deduplication: the newest file wins
    cell_status: dict[str, str | None] = field(
        default_factory=dict, repr=False
    )  # column -> status of the gate that measured it
    history: dict | None = field(default=None, repr=False)
    sweep: dict | None = field(default=None, repr=False)  # offset-sweep profile on val: k -> mean cosine
    ctx: int | None = field(default=None, repr=False)
    min_ctx: int | None = field(default=None, repr=False)
    name: str = field(default="", repr=False)  # the name shown: the checkpoint, or its path when two share a name
    reasons: dict = field(default_factory=dict, repr=False)  # gate id -> {"status", "splits", "reason"}: not GREEN

    def __post_init__(self) -> None:
        """Values come from results files a user may have edited: a number column holding anything but
        a number is left empty (``as_float``: NaN and ±inf are kept, and shown as "nan", "inf"); an
        integer column holds a 64-bit integer or nothing (``as_int``); a text column shows other JSON
        as text; what the plots read (sweep points) keeps only finite numbers."""
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "float | None":
                setattr(self, f.name, as_float(v))
            elif f.type == "int | None":
                setattr(self, f.name, as_int(v))
            elif f.type in ("str", "str | None") and v is not None and not isinstance(v, str):
                setattr(self, f.name, as_text(v))
            elif f.type.startswith("dict") and not isinstance(v, dict):
                setattr(self, f.name, None if "None" in f.type else {})
        self.gates = {str(k): v for k, v in self.gates.items() if isinstance(v, str)}
        self.reasons = {str(k): v for k, v in self.reasons.items() if isinstance(v, dict)}
        if self.why is None and self.reasons:
            self.why = why_text(self.reasons)
        self.cell_status = {str(k): v if isinstance(v, str) else None for k, v in self.cell_status.items()}
        if self.sweep is not None:
            self.sweep = {k: finite(v) for k, v in self.sweep.items() if _int_key(k) and finite(v) is not None} or None

    def to_dict(self) -> dict:
        """The public columns (CSV, HTML, ``build_leaderboard``'s rows)."""
        return {**{c: getattr(self, c) for c in COLUMNS}, "group_number": self.group_number}


def _int_key(k) -> bool:
    try:
        int(k)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


# ----------------------------------------------------------------------------- reading


def load_documents(paths: list[Path]) -> list[tuple[Path, ResultsDoc]]:
    """Each results file as a checked document of typed rows (``lvm.schemas.ResultRow``)."""
    if not paths:
        raise LvmError(
            "no results files given (expected one or more gate results JSON files, e.g. reports/gate_results.json)"
        )
    return [(Path(p), read_document(p)) for p in paths]


def _run_folder(checkpoint_path: str | None, results_file: Path) -> tuple[Path | None, dict | None]:
    """The run folder and checkpoint metadata behind a result's ``checkpoint_path``.

    The path was recorded as given to pytest, usually relative to the repository root; it is
    resolved like ``lvm.models.checkpoints.resolve_checkpoint`` (a folder means its ``best.json``) against
    the current folder, then the results file's folder and its parents.
    """
    if not checkpoint_path:
        return None, None
    from lvm.models.checkpoints import read_checkpoint_meta, resolve_checkpoint

    p = Path(checkpoint_path)
    # v2 files store paths relative to the results file; v1 files as given to pytest (the cwd then)
    bases = [Path()] if p.is_absolute() else [results_file.parent, Path.cwd(), *results_file.resolve().parents]
    for base in bases:
        try:
            resolved = resolve_checkpoint(base / p)
        except LvmError:
            continue
        try:
            meta = read_checkpoint_meta(resolved)
        except LvmError:
            meta = None
        return resolved.parent, meta
    return None, None


def _read_json(path: Path) -> dict | None:
    """A run folder's JSON file (``config.json``, ``training_history.json``); None when it cannot be read."""
    from lvm.schemas import read_json

    try:
        obj = read_json(path, "a run folder's file")
    except LvmError:
        return None
    return obj if isinstance(obj, dict) else None


def trained_epochs(history: dict | None) -> list[dict]:
    """The epochs of a ``training_history.json`` after training began (epoch 0 is the untrained model):
    ``epoch`` a positive integer, every other field a finite number or None (what the plots draw)."""
    epochs = (history or {}).get("epochs") if isinstance(history, dict) else None
    out = []
    for e in epochs if isinstance(epochs, list) else []:
        epoch = as_int(e.get("epoch", 0)) if isinstance(e, dict) else None
        if epoch is not None and 1 <= epoch <= MAX_EPOCH:
            out.append({**{str(k): finite(v) for k, v in e.items()}, "epoch": epoch})
    return out


def loss_from_args(args: dict | None) -> dict | None:
    """The loss weights in a seeds' checkpoint's ``args`` (``vars(args)`` of their trainers, kept by
    ``lvm import-checkpoint`` as the card's ``training``), in lvm's loss_config names; None when it
    names none. Read: ``--lambda-mse/-info/-moment/-variance/-mmd/-stat``, ``--tau``, ``--cycle-lambda``
    (on only with ``--cycle-pct`` > 0), ``--lambda-con/-ar``, ``--temperature``, a ``loss_weights``
    dict (their ``LossWeights``: mse, info_nce, moment, variance, tau) and a nested ``loss`` dict."""
    if not isinstance(args, dict):
        return None
    out: dict = {}
    nested: list[dict] = [v for v in (args.get("loss_weights"), args.get("loss")) if isinstance(v, dict)]
    for source in (*nested, args):  # the top level wins
        for key, value in source.items():
            name = SEED_LOSS_ARGS.get(str(key)) or SEED_LOSS_WEIGHTS.get(str(key))
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if name and (is_number if name != "adaptive_info" else isinstance(value, bool)):
                out[name] = value
    pct = as_float(args.get("cycle_pct"))
    if "lambda_cycle" in out and pct is not None and not pct > 0:  # the seeds' cycle term runs only on a share
        out["lambda_cycle"] = 0.0
    return out if any(k.startswith("lambda_") for k in out) else None


def loss_summary(loss: dict | None, model_type: str | None = None) -> str:
    """A run's loss in a few characters: ``MSE``, ``MSE+InfoNCE(0.5)``, ``MSE+InfoNCE(0.5,τ=0.05)``,
    ``MSE+InfoNCE(adaptive)``.

    A term shows its weight λ unless λ = 1 (InfoNCE its temperature τ too, when the loss names one);
    a null baseline has no loss.
    """
    from lvm.models.baselines import BASELINES

    if isinstance(model_type, str) and model_type in BASELINES:
        return "— (null baseline)"
    if not loss or not isinstance(loss, dict):
        return "?"
    tau = finite(loss.get("tau"))
    parts = []
    for key, name in LOSS_TERMS:
        if key == "lambda_info" and loss.get("adaptive_info"):
            parts.append("InfoNCE(adaptive" + (f",τ={tau:g}" if tau is not None else "") + ")")
            continue
        lam = as_float(loss.get(key)) or 0.0
        if lam > 0 or math.isnan(lam):
            args = [] if lam == 1.0 else [f"{lam:g}"]
            if key == "lambda_info" and tau is not None:
                args.append(f"τ={tau:g}")
            parts.append(name + (f"({','.join(args)})" if args else ""))
    return "+".join(parts) or "none"


# ----------------------------------------------------------------------------- results -> rows


def _attribute(r: ResultRow, rows: dict[tuple, list], data: dict[str, list]) -> list:
    """Where a result without checkpoint and dataset (a crash or a setup skip) belongs.

    Its pytest node id names the parameters (``[DATASET-CHECKPOINT...]``); a result that cannot be
    placed goes to every row of its file, so that a crash is never hidden.
    """
    node = r.nodeid or ""
    params = node[node.find("[") + 1 :] if "[" in node else ""

    def named(
        prefix: str,
    ) -> bool:  # "wiki-minilm-amn" names [wiki-minilm-amn] and [wiki-minilm-amn-val], not [wiki-minilm-amn2]
        return params.startswith(prefix) and params[len(prefix) : len(prefix) + 1] in ("]", "-")

    if "test_data_gates" in node:
        hits = [lst for ds, lst in data.items() if ds and named(ds)]
        return hits or list(rows.values())
    hits = [lst for (ck, ds), lst in rows.items() if named(f"{ds}-{ck}")]
    return hits or list(rows.values())


def _cell(results: list[ResultRow], gate: str, split: str | None = None) -> ResultRow | None:
    """The non-SKIP result of one gate (and split) among a row's results."""
    for r in results:
        if r.gate == gate and r.status != SKIP and (split is None or r.split == split):
            return r
    return None


def _metric(result: ResultRow | None, name: str):
    """A metric of a result that may be missing."""
    return result.metrics.get(name) if result is not None else None


def _st(r: ResultRow | None) -> str | None:
    return r.status if r else None


def _minus(a, b) -> float | None:
    """a − b of two metric values (NaN when either is not finite), None when either is not a number."""
    fa, fb = as_float(a), as_float(b)
    if fa is None or fb is None:
        return None
    return fa - fb if math.isfinite(fa) and math.isfinite(fb) else math.nan


def _gate_statuses(results: list[ResultRow]) -> dict[str, str]:
    """gate id -> worst status over its splits; SKIP only when every result of the gate skipped."""
    by_gate: dict[str, list[str]] = defaultdict(list)
    for r in results:
        by_gate[r.gate].append(r.status)
    return {g: (worst(s) if any(x in STATUSES for x in s) else SKIP) for g, s in by_gate.items()}


def why_text(reasons: dict[str, dict]) -> str:
    """The CSV's ``why``: every gate that is not GREEN (RED first) with its splits and reason."""
    order = {RED: 0, AMBER: 1}
    parts = []
    for g, info in sorted(reasons.items(), key=lambda kv: (order.get(str(kv[1].get("status")), 2), kv[0])):
        splits = info.get("splits") or []
        where = f" ({', '.join(str(x) for x in splits)})" if splits else ""
        parts.append(f"{g} {info.get('status')}{where}: {info.get('reason')}")
    return "; ".join(parts)


def reason_text(gate: str, message: str | None) -> str:
    """A gate's message as one line: without the ``<gate> <STATUS>: `` prefix the judge puts first."""
    text = " ".join(str(message or "").split())
    for st in (RED, AMBER, GREEN):
        prefix = f"{gate} {st}: "
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text or "no reason recorded"


def _gate_reasons(results: list[ResultRow]) -> dict[str, dict]:
    """gate id -> {"status", "splits", "reason"} for every gate that is AMBER or RED: the worst
    status over its splits, the splits at that status, the message of the first such result."""
    out: dict[str, dict] = {}
    for g, st in _gate_statuses(results).items():
        if st not in (AMBER, RED):
            continue
        hits = [r for r in results if r.gate == g and r.status == st]
        splits = list(dict.fromkeys(r.split for r in hits if r.split))
        out[g] = {"status": st, "splits": splits, "reason": reason_text(g, hits[0].message if hits else "")}
    return out


def _group_of(res: list[ResultRow], ds: str | None, data_res: list[ResultRow] | None = None) -> tuple[str, dict]:
    """The comparability group of a row: its val_cosine result's key, else any key among its results
    or its dataset's data gates, else the dataset itself (nothing to compare by)."""
    order = [r for r in res if r.gate == "val_cosine"] + list(res) + list(data_res or [])
    for r in order:
        if r.comparability_key:
            return r.comparability_key, dict(r.comparability or {})
    return f"dataset:{ds}", {}


def _by_row(results: list[ResultRow]) -> tuple[dict[tuple, list], dict[str, list]]:
    """(checkpoint, dataset) -> its results, dataset -> its data-gate results; a result with neither
    (a crash, a setup skip) goes where its node id says (``_attribute``)."""
    data: dict[str, list] = defaultdict(list)
    per_ckpt: dict[tuple, list] = defaultdict(list)
    loose = []
    for r in results:
        ds = dataset_label(r)
        if r.checkpoint:
            per_ckpt[(r.checkpoint, ds)].append(r)
        elif ds and r.gate in DATA_GATES:
            data[ds].append(r)
        else:
            loose.append(r)
    for r in loose:
        for lst in _attribute(r, per_ckpt, data):
            lst.append(r)
    return per_ckpt, data


def dataset_identity(comp: dict | None, content_hash: str | None = None) -> str | None:
    """The one hash a dataset is shown by: its machine-stable identity (``Dataset.identity``, the
    ``dataset_id`` of the comparability key: texts, ids, splits, encoder), which is what groups rows;
    a v1 file's ``dataset_hash`` (the content hash, every byte of the vectors) only where that is missing.
    A row holds both (``dataset_hash`` is provenance): showing one here, the other there, made one
    dataset look like two."""
    comp = comp if isinstance(comp, dict) else {}
    for v in (comp.get("dataset_id"), comp.get("dataset_hash"), content_hash):
        if isinstance(v, str) and v:
            return v
    return None


def short_hash(h: str | None) -> str:
    """How a hash is shown everywhere (group headings, plot legends): its first 12 characters."""
    return str(h)[:12] if h else "?"


def _histograms(data: dict[str, list], created: str | None) -> list[dict]:
    """The coherence gate's 0.1-bin histogram of each dataset."""
    out = []
    for ds, res in data.items():
        coh = _cell(res, "coherence")
        hist = coh.metrics.get("histogram") if coh else None
        if coh is not None and isinstance(hist, dict) and hist:
            dataset_hash = dataset_identity(coh.comparability, coh.dataset_hash)
            out.append(
                {
                    "dataset": ds,
                    "group": _group_of(res, ds)[0],
                    "dataset_hash": dataset_hash if isinstance(dataset_hash, str) or dataset_hash is None else "?",
                    "histogram": {str(b): finite(v) for b, v in hist.items()},
                    "created_at": created,
                }
            )
    return out


def _shared(path: Path, ds: str | None, key: str, comp: dict, created: str | None, meta: dict | None) -> dict:
    """The fields a model row and its baseline rows share: group, dataset, provenance."""
    return {
        "group": key,
        "dataset": ds,
        "date": created,
        "results_file": str(path),
        "comparability_key": key,
        "encoder_fingerprint": comp.get("encoder_fingerprint"),
        "dataset_hash": dataset_identity(comp),
        "hardware_class": comp.get("hardware_class"),
        "profile": comp.get("profile"),
        "comparability": comp,
        "created": created or "",
        "ctx": (meta or {}).get("ctx"),
    }


def _model_info(path: Path, ckpt: str, ckpt_path: str | None, models: dict) -> tuple[dict | None, dict, dict | None]:
    """(card-like metadata, training config, history) of a checkpoint: from the results file's own
    ``models`` table (portable: the same page from any folder), else from its run folder (v1 files)."""
    entry = models.get(ckpt) if isinstance(models, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("card"), dict):
        card = entry["card"]
        meta = {
            "model_type": card.get("type"),
            "n_params": card.get("n_params"),
            "ctx": card.get("ctx"),
            "min_ctx": card.get("min_ctx"),
        }
        history = entry.get("history") if isinstance(entry.get("history"), dict) else None
        loss = card.get("loss_config") or (history or {}).get("loss_config") or loss_from_args(card.get("training"))
        return meta, {"loss": loss, "model": card.get("type")}, history
    run, meta = _run_folder(ckpt_path, path)
    config = (_read_json(run / "config.json") if run else None) or {}
    if not config.get("loss") and isinstance(meta, dict):  # an imported checkpoint's card keeps the seeds' args
        config = {**config, "loss": loss_from_args(meta.get("training"))}
    history = _read_json(run / "training_history.json") if run else None
    return meta, config, history


def _model_row(
    path: Path,
    ckpt: str,
    ds: str | None,
    res: list[ResultRow],
    data_res: list[ResultRow],
    created: str | None,
    models: dict | None = None,
) -> tuple[LeaderboardRow, dict | None]:
    """(the checkpoint's row, its checkpoint metadata) from its results and its dataset's data gates."""
    key, comp = _group_of(res, ds, data_res)
    val, ood = _cell(res, "val_cosine"), _cell(res, "ood_cosine")
    integ, lat, ret = _cell(res, "checkpoint_integrity"), _cell(res, "latency"), _cell(res, "retrieval")
    beats_val = _cell(res, "beats_baselines", "val")
    ckpt_path = next((r.checkpoint_path for r in res if r.checkpoint_path), None)
    meta, config, history = _model_info(path, ckpt, ckpt_path, models or {})
    model_type = (meta or {}).get("model_type") or config.get("model")
    vc, oc = _metric(val, "val_cosine"), _metric(ood, "ood_cosine")
    ood_minus_val = _metric(ood, "ood_minus_val")
    row = LeaderboardRow(
        kind=MODEL,
        checkpoint=ckpt,
        model_type=model_type,
        val_cosine=vc,
        val_ci_low=_metric(val, "val_cosine_ci_low"),
        val_ci_high=_metric(val, "val_cosine_ci_high"),
        ood_cosine=oc,
        ood_ci_low=_metric(ood, "ood_cosine_ci_low"),
        ood_ci_high=_metric(ood, "ood_cosine_ci_high"),
        delta_ood_minus_val=ood_minus_val if ood_minus_val is not None else _minus(oc, vc),
        p95_ms=_metric(lat, "p95_ms"),
        n_params=_metric(integ, "n_params") or (meta or {}).get("n_params"),
        loss=loss_summary(config.get("loss"), model_type),
        margin=_metric(beats_val, "margin"),
        margin_ci_low=_metric(beats_val, "margin_ci_low"),
        margin_ci_high=_metric(beats_val, "margin_ci_high"),
        best_baseline=_metric(beats_val, "best_baseline"),
        **{k: _metric(ret, k) for k in RETRIEVAL_METRICS},
        status=worst(r.status for r in res + data_res),
        epochs=len(trained_epochs(history)) if history else None,
        checkpoint_path=ckpt_path,
        gates=_gate_statuses(res + data_res),
        reasons=_gate_reasons(res + data_res),
        cell_status={
            "val_cosine": _st(val),
            "ood_cosine": _st(ood),
            "p95_ms": _st(lat),
            "n_params": _st(integ),
            "margin": _st(beats_val),
            **{k: _st(ret) for k in RETRIEVAL_METRICS},
        },
        history=history,
        sweep=_metric(_cell(res, "offset_sweep", "val"), "profile"),
        **_shared(path, ds, key, comp, created, meta),
    )
    return row, meta


def _baseline_rows(row: LeaderboardRow, res: list[ResultRow], meta: dict | None) -> list[LeaderboardRow]:
    """The null baselines ``beats_baselines`` measured beside a checkpoint, one row each."""
    bval, bood = (_metric(_cell(res, "beats_baselines", sp), "baselines") for sp in ("val", "ood"))
    bval, bood = (b if isinstance(b, dict) else {} for b in (bval, bood))
    shared = {
        k: getattr(row, k)
        for k in (
            "group",
            "dataset",
            "date",
            "results_file",
            "comparability_key",
            "encoder_fingerprint",
            "dataset_hash",
            "hardware_class",
            "profile",
            "comparability",
            "created",
            "ctx",
        )
    }
    out = []
    for name in sorted(set(bval) | set(bood)):
        bv, bo = bval.get(name), bood.get(name)
        out.append(
            LeaderboardRow(
                kind=BASELINE,
                checkpoint=name,
                model_type=name,
                val_cosine=bv,
                ood_cosine=bo,
                delta_ood_minus_val=_minus(bo, bv),
                loss=loss_summary(None, name),
                status=None,
                min_ctx=(meta or {}).get("min_ctx"),
                **shared,
            )
        )
    return out


def rows_of_document(path: Path, doc: ResultsDoc) -> tuple[list[LeaderboardRow], list[LeaderboardRow], list[dict]]:
    """(model rows, baseline rows, coherence histograms) of one results file."""
    created = doc.created_at
    per_ckpt, data = _by_row(doc.results)
    rows, baselines = [], []
    for (ckpt, ds), res in per_ckpt.items():
        row, meta = _model_row(path, ckpt, ds, res, data.get(ds, []), created, doc.models)
        rows.append(row)
        baselines += _baseline_rows(row, res, meta)
    return rows, baselines, _histograms(data, created)


# ----------------------------------------------------------------------------- groups and ranks


def _dedupe(items: list, identity, created) -> list:
    """One item per identity: the one from the newest results file (later files win ties)."""
    best: dict = {}
    for i, item in enumerate(items):
        k = identity(item)
        if k not in best or (created(item), i) >= (created(best[k][1]), best[k][0]):
            best[k] = (i, item)
    return [item for _, item in sorted(best.values(), key=lambda t: t[0])]


def _name_baselines_by_ctx(baselines: list[LeaderboardRow]) -> None:
    """The same baseline at several context lengths keeps its rows apart by name."""
    ctxs = defaultdict(set)
    for r in baselines:
        ctxs[(r.group, r.checkpoint, r.dataset)].add(r.ctx)
    for r in baselines:
        if len(ctxs[(r.group, r.checkpoint, r.dataset)]) > 1:
            r.checkpoint = f"{r.checkpoint} (ctx {r.ctx})"


def _rank(g: dict) -> None:
    """Rank a group's rows by val cosine (models before baselines on a tie) and name them; a row
    whose val cosine is missing or not finite is not ranked (it comes last)."""

    def key(r: LeaderboardRow) -> tuple:
        v = finite(r.val_cosine)
        return (v is None, -(v or 0.0), r.kind != MODEL, str(r.checkpoint))

    g["rows"].sort(key=key)
    names = [r.checkpoint for r in g["rows"] if r.kind == MODEL]
    for i, r in enumerate(g["rows"], start=1):
        r.rank = i if finite(r.val_cosine) is not None else None
        r.group_number = g["number"]
        # two run folders with the same name (runs/a/amn, runs/b/amn) show their paths
        r.name = r.checkpoint_path if names.count(r.checkpoint) > 1 and r.checkpoint_path else str(r.checkpoint)


def collect_rows(
    results_paths: list[Path], sources: list[tuple[Path, ResultsDoc]] | None = None
) -> tuple[list[dict], list[LeaderboardRow], list[dict]]:
    """(groups, ranked rows, coherence histograms) of the given results files (``sources``: already read).

    A group is ``{"number", "key", "comparability", "datasets", "rows"}``.
    """
    models, baselines, hists = [], [], []
    for path, doc in sources if sources is not None else load_documents(results_paths):
        m, b, h = rows_of_document(path, doc)
        models += m
        baselines += b
        hists += h
    models = _dedupe(models, lambda r: (r.group, r.checkpoint, r.dataset, r.checkpoint_path), lambda r: r.created)
    baselines = _dedupe(baselines, lambda r: (r.group, r.checkpoint, r.dataset, r.ctx, r.min_ctx), lambda r: r.created)
    _name_baselines_by_ctx(baselines)
    hists = _dedupe(hists, lambda h: (h["dataset"], h["dataset_hash"] or h["group"]), lambda h: h["created_at"] or "")

    groups: dict[str, dict] = {}
    for r in models + baselines:
        g = groups.setdefault(r.group, {"key": r.group, "comparability": r.comparability, "datasets": [], "rows": []})
        if r.dataset not in g["datasets"]:
            g["datasets"].append(r.dataset)
        g["rows"].append(r)
    ranked = []
    for n, g in enumerate(groups.values(), start=1):
        g["number"] = n
        _rank(g)
        ranked += g["rows"]
    return list(groups.values()), ranked, hists
