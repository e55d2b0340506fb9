"""The leaderboard and the regression verdict: gate results files -> tables, plots, an exit code.

``lvm leaderboard RESULTS... --out DIR`` reads one or more results files (``lvm.report.results``, schema
``lvm-gate-results`` v1) and the run folders they point at (``config.json`` for the loss,
``training_history.json`` for the curves); it never re-runs a gate. It writes, each atomically:

- ``leaderboard.md``: one table per comparability group, fit for a pull request;
- ``leaderboard.csv``: every row with every column (one ``gate_<id>`` status column per gate);
- ``leaderboard.html``: a static, self-contained page (inline CSS, plots as base64 PNGs) with
  cells coloured by status, the training curves, the adjacency-coherence histograms and the
  offset-sweep profiles.

A row is one (checkpoint, dataset) of one comparability group, with the seeds' columns: in-dist
(val) cosine with its 95 % CI, OOD cosine, Δ = OOD − val, P95 latency, parameters, loss config,
date, margin over the best null baseline, retrieval metrics, and the overall status: the worst of
the checkpoint's gates and its dataset's data gates (SKIP ignored). The null baselines measured by
``beats_baselines`` are rows too, without a status. Rows whose comparability keys differ (other
encoder, dataset, profile or hardware) are never ranked together: each group is ranked by val
cosine on its own.

``lvm compare NEW BASELINE`` runs ``lvm.report.results.compare`` with the profile's ``[regression]``
tolerances, prints the Markdown table and a verdict, and exits 1 on a RED regression or when
NEW itself holds a RED gate.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path

from lvm.errors import LvmError
from lvm.gates.spec import DATA_GATES, GATES
from lvm.gates.status import AMBER, GREEN, RED, SKIP, worst
from lvm.io import utc_timestamp, write_text_atomic

STATUSES = (GREEN, AMBER, RED)
GATE_ORDER = tuple(g.id for g in GATES)
RETRIEVAL_METRICS = ("contain_at_50", "r_at_5", "eff_at_5", "mrr_at_50")
LOSS_TERMS = (("lambda_mse", "MSE"), ("lambda_cos", "Cos"), ("lambda_info", "InfoNCE"), ("lambda_moment", "Moment"), ("lambda_variance", "Var"))

# The CSV's columns, in order (gate_<id> status columns follow, in GATE_ORDER).
COLUMNS = (
    "group", "rank", "kind", "checkpoint", "dataset", "model_type", "val_cosine", "val_ci_low", "val_ci_high",
    "ood_cosine", "ood_ci_low", "ood_ci_high", "delta_ood_minus_val", "p95_ms", "n_params", "loss", "date",
    "margin", "margin_ci_low", "margin_ci_high", "best_baseline", *RETRIEVAL_METRICS, "status",
    "epochs", "checkpoint_path", "results_file", "comparability_key", "encoder_fingerprint", "dataset_hash",
    "hardware_class", "profile",
)


# ----------------------------------------------------------------------------- reading


def _load_documents(paths: list[Path]) -> list[tuple[Path, dict]]:
    from lvm.report.results import read_results

    if not paths:
        raise LvmError("no results files given (expected one or more gate results JSON files, e.g. reports/gate_results.json)")
    return [(Path(p), read_results(p)) for p in paths]


def _dataset_label(r: dict) -> str | None:
    """The dataset a result belongs to: its ``dataset`` field, else the name of its ``dataset_path``
    (``training_health`` records no dataset of its own)."""
    if r.get("dataset"):
        return r["dataset"]
    return Path(r["dataset_path"]).name if r.get("dataset_path") else None


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
    bases = [Path()] if p.is_absolute() else [Path.cwd(), results_file.parent, *results_file.resolve().parents]
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
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def loss_summary(loss: dict | None, model_type: str | None = None) -> str:
    """A run's loss in a few characters: ``MSE``, ``MSE+InfoNCE(0.5)``, ``MSE+InfoNCE(adaptive)``.

    A term shows its weight λ unless λ = 1; a null baseline has no loss.
    """
    from lvm.models.baselines import BASELINES

    if model_type in BASELINES:
        return "— (null baseline)"
    if not loss:
        return "?"
    parts = []
    for key, name in LOSS_TERMS:
        if key == "lambda_info" and loss.get("adaptive_info"):
            parts.append("InfoNCE(adaptive)")
            continue
        lam = float(loss.get(key) or 0.0)
        if lam > 0:
            parts.append(name if lam == 1.0 else f"{name}({lam:g})")
    return "+".join(parts) or "none"


def _attribute(r: dict, rows: dict[tuple, list], data: dict[str, list]) -> list:
    """Where a result without checkpoint and dataset (a crash or a setup skip) belongs.

    Its pytest node id names the parameters (``[DATASET-CHECKPOINT...]``); a result that cannot be
    placed goes to every row of its file, so that a crash is never hidden.
    """
    node = r.get("nodeid") or ""
    params = node[node.find("[") + 1:] if "[" in node else ""

    def named(prefix: str) -> bool:  # "wiki-minilm-amn" names [wiki-minilm-amn] and [wiki-minilm-amn-val], not [wiki-minilm-amn2]
        return params.startswith(prefix) and params[len(prefix):len(prefix) + 1] in ("]", "-")

    if "test_data_gates" in node:
        hits = [lst for ds, lst in data.items() if ds and named(ds)]
        return hits or list(rows.values())
    hits = [lst for (ck, ds), lst in rows.items() if named(f"{ds}-{ck}")]
    return hits or list(rows.values())


def _cell(results: list[dict], gate: str, split: str | None = None) -> dict | None:
    """The non-SKIP result of one gate (and split) among a row's results."""
    for r in results:
        if r["gate"] == gate and r["status"] != SKIP and (split is None or r.get("split") == split):
            return r
    return None


def _gate_statuses(results: list[dict]) -> dict[str, str]:
    """gate id -> worst status over its splits; SKIP only when every result of the gate skipped."""
    by_gate: dict[str, list[str]] = defaultdict(list)
    for r in results:
        by_gate[r["gate"]].append(r["status"])
    return {g: (worst(s) if any(x in STATUSES for x in s) else SKIP) for g, s in by_gate.items()}


def _rows_of_document(path: Path, doc: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """(model rows, baseline rows, coherence histograms) of one results file."""
    results = [r for r in doc.get("results", []) if isinstance(r, dict) and r.get("gate")]
    created = doc.get("created_at")
    data: dict[str, list] = defaultdict(list)
    per_ckpt: dict[tuple, list] = defaultdict(list)
    loose = []
    for r in results:
        ds = _dataset_label(r)
        if r.get("checkpoint"):
            per_ckpt[(r["checkpoint"], ds)].append(r)
        elif ds and r["gate"] in DATA_GATES:
            data[ds].append(r)
        else:
            loose.append(r)
    for r in loose:
        for lst in _attribute(r, per_ckpt, data):
            lst.append(r)

    rows, baselines, histograms = [], [], []
    for ds, res in data.items():
        coh = _cell(res, "coherence")
        if coh and isinstance(coh["metrics"].get("histogram"), dict):
            histograms.append({"dataset": ds, "group": _group_of(res, ds)[0], "dataset_hash": (coh.get("comparability") or {}).get("dataset_hash"),
                               "histogram": coh["metrics"]["histogram"], "created_at": created})
    for (ckpt, ds), res in per_ckpt.items():
        data_res = data.get(ds, [])
        key, comp = _group_of(res, ds, data_res)
        val, ood = _cell(res, "val_cosine"), _cell(res, "ood_cosine")
        integ, lat, ret = _cell(res, "checkpoint_integrity"), _cell(res, "latency"), _cell(res, "retrieval")
        beats_val, beats_ood = _cell(res, "beats_baselines", "val"), _cell(res, "beats_baselines", "ood")
        sweep = _cell(res, "offset_sweep", "val")
        ckpt_path = next((r.get("checkpoint_path") for r in res if r.get("checkpoint_path")), None)
        run, meta = _run_folder(ckpt_path, path)
        config = _read_json(run / "config.json") if run else None
        history = _read_json(run / "training_history.json") if run else None
        model_type = (meta or {}).get("model_type") or (config or {}).get("model")
        m = lambda r, k: (r or {}).get("metrics", {}).get(k)  # noqa: E731
        vc, oc = m(val, "val_cosine"), m(ood, "ood_cosine")
        n_params = m(integ, "n_params") or (meta or {}).get("n_params")
        gate_status = _gate_statuses(res + data_res)
        row = {
            "group": key, "kind": "model", "checkpoint": ckpt, "dataset": ds, "model_type": model_type,
            "val_cosine": vc, "val_ci_low": m(val, "val_cosine_ci_low"), "val_ci_high": m(val, "val_cosine_ci_high"),
            "ood_cosine": oc, "ood_ci_low": m(ood, "ood_cosine_ci_low"), "ood_ci_high": m(ood, "ood_cosine_ci_high"),
            "delta_ood_minus_val": m(ood, "ood_minus_val") if m(ood, "ood_minus_val") is not None else _minus(oc, vc),
            "p95_ms": m(lat, "p95_ms"), "n_params": n_params, "loss": loss_summary((config or {}).get("loss"), model_type),
            "date": created, "margin": m(beats_val, "margin"), "margin_ci_low": m(beats_val, "margin_ci_low"),
            "margin_ci_high": m(beats_val, "margin_ci_high"), "best_baseline": m(beats_val, "best_baseline"),
            **{k: m(ret, k) for k in RETRIEVAL_METRICS},
            "status": worst(r["status"] for r in res + data_res),
            "epochs": len([e for e in (history or {}).get("epochs", []) if e.get("epoch", 0) >= 1]) if history else None,
            "checkpoint_path": ckpt_path, "results_file": str(path), "comparability_key": key,
            "encoder_fingerprint": comp.get("encoder_fingerprint"), "dataset_hash": comp.get("dataset_hash"),
            "hardware_class": comp.get("hardware_class"), "profile": comp.get("profile"),
            # not columns: what the HTML colours and plots need
            "_gates": gate_status, "_comparability": comp, "_created": created or "",
            "_cell_status": {"val_cosine": _st(val), "ood_cosine": _st(ood), "p95_ms": _st(lat), "n_params": _st(integ),
                             "margin": _st(beats_val), **{k: _st(ret) for k in RETRIEVAL_METRICS}},
            "_history": history, "_sweep": (sweep or {}).get("metrics", {}).get("profile"), "_ctx": (meta or {}).get("ctx"),
        }
        rows.append(row)
        bval = m(beats_val, "baselines") or {}
        bood = m(beats_ood, "baselines") or {}
        for name in sorted(set(bval) | set(bood)):
            bv, bo = bval.get(name), bood.get(name)
            baselines.append({
                "group": key, "kind": "baseline", "checkpoint": name, "dataset": ds, "model_type": name,
                "val_cosine": bv, "ood_cosine": bo, "delta_ood_minus_val": _minus(bo, bv), "loss": loss_summary(None, name),
                "date": created, "status": None, "results_file": str(path), "comparability_key": key,
                "encoder_fingerprint": comp.get("encoder_fingerprint"), "dataset_hash": comp.get("dataset_hash"),
                "hardware_class": comp.get("hardware_class"), "profile": comp.get("profile"),
                "_gates": {}, "_comparability": comp, "_created": created or "", "_cell_status": {}, "_ctx": (meta or {}).get("ctx"),
                "_min_ctx": (meta or {}).get("min_ctx"),
            })
    return rows, baselines, histograms


def _minus(a, b):
    return a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def _st(r: dict | None) -> str | None:
    return r["status"] if r else None


def _group_of(res: list[dict], ds: str | None, data_res: list[dict] | None = None) -> tuple[str, dict]:
    """The comparability group of a row: its val_cosine result's key, else any key among its results
    or its dataset's data gates, else the dataset itself (nothing to compare by)."""
    order = [r for r in res if r["gate"] == "val_cosine"] + list(res) + list(data_res or [])
    for r in order:
        if r.get("comparability_key"):
            return r["comparability_key"], dict(r.get("comparability") or {})
    return f"dataset:{ds}", {}


def _dedupe(rows: list[dict], identity) -> list[dict]:
    """One row per identity: the one from the newest results file (later files win ties)."""
    best: dict = {}
    for i, row in enumerate(rows):
        k = identity(row)
        if k not in best or (row["_created"], i) >= (best[k][1]["_created"], best[k][0]):
            best[k] = (i, row)
    return [row for _, row in sorted(best.values(), key=lambda t: t[0])]


def collect_rows(results_paths: list[Path]) -> tuple[list[dict], list[dict], list[dict]]:
    """(groups, ranked rows, coherence histograms) of the given results files."""
    models, baselines, hists = [], [], []
    for path, doc in _load_documents(results_paths):
        m, b, h = _rows_of_document(path, doc)
        models += m
        baselines += b
        hists += h
    models = _dedupe(models, lambda r: (r["group"], r["checkpoint"], r["dataset"], r["checkpoint_path"]))
    baselines = _dedupe(baselines, lambda r: (r["group"], r["checkpoint"], r["dataset"], r["_ctx"], r.get("_min_ctx")))
    # the same baseline at several context lengths keeps its rows apart by name
    ctxs = defaultdict(set)
    for r in baselines:
        ctxs[(r["group"], r["checkpoint"], r["dataset"])].add(r["_ctx"])
    for r in baselines:
        if len(ctxs[(r["group"], r["checkpoint"], r["dataset"])]) > 1:
            r["checkpoint"] = f"{r['checkpoint']} (ctx {r['_ctx']})"
    hists = _dedupe([{**h, "_created": h["created_at"] or ""} for h in hists], lambda h: (h["dataset"], h["dataset_hash"] or h["group"]))

    groups: dict[str, dict] = {}
    for r in models + baselines:
        g = groups.setdefault(r["group"], {"key": r["group"], "comparability": r["_comparability"], "datasets": [], "rows": []})
        if r["dataset"] not in g["datasets"]:
            g["datasets"].append(r["dataset"])
        g["rows"].append(r)
    ranked = []
    for n, g in enumerate(groups.values(), start=1):
        g["number"] = n
        g["rows"].sort(key=lambda r: (r["val_cosine"] is None, -(r["val_cosine"] or 0.0), r["kind"] != "model", str(r["checkpoint"])))
        names = [r["checkpoint"] for r in g["rows"] if r["kind"] == "model"]
        for i, r in enumerate(g["rows"], start=1):
            r["rank"] = i if r["val_cosine"] is not None else None
            r["group_number"] = n
            # two run folders with the same name (runs/a/amn, runs/b/amn) show their paths
            r["_name"] = r["checkpoint_path"] if names.count(r["checkpoint"]) > 1 and r.get("checkpoint_path") else str(r["checkpoint"])
        ranked += g["rows"]
    return list(groups.values()), ranked, hists


# ----------------------------------------------------------------------------- formatting


def _f(v, fmt: str = ".4f") -> str:
    return "" if v is None else (format(v, fmt) if isinstance(v, (int, float)) else str(v))


def _params(n) -> str:
    if not isinstance(n, (int, float)):
        return ""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(int(n))


def _ci(r: dict, v: str, lo: str, hi: str) -> str:
    if r.get(v) is None:
        return ""
    return f"{r[v]:.4f} [{r[lo]:.4f}, {r[hi]:.4f}]" if r.get(lo) is not None and r.get(hi) is not None else f"{r[v]:.4f}"


def _margin(r: dict) -> str:
    return "" if r.get("margin") is None else f"{r['margin']:+.4f} ({r.get('best_baseline') or '?'})"


def _heading(g: dict) -> str:
    c = g["comparability"]
    fp = (c.get("encoder_fingerprint") or "?")[:12]
    dh = (c.get("dataset_hash") or "?")[:12]
    prof = f"{c.get('profile')} v{c.get('profile_version')}" if c.get("profile") else "?"
    return (f"Group {g['number']}: encoder {fp}… · dataset {', '.join(str(d) for d in g['datasets'])} ({dh}…) · "
            f"hardware {c.get('hardware_class') or '?'} · profile {prof}")


# (header, row -> text, key of the status that colours the cell)
DISPLAY = (
    ("#", lambda r: _f(r.get("rank"), "d"), None),
    ("checkpoint", lambda r: r["_name"], None),
    ("model", lambda r: r.get("model_type") or "", None),
    ("status", lambda r: r.get("status") or "", "status"),
    ("val cos [95 % CI]", lambda r: _ci(r, "val_cosine", "val_ci_low", "val_ci_high"), "val_cosine"),
    ("OOD cos", lambda r: _f(r.get("ood_cosine")), "ood_cosine"),
    ("Δ OOD−val", lambda r: _f(r.get("delta_ood_minus_val"), "+.4f"), None),
    ("P95 ms", lambda r: _f(r.get("p95_ms"), ".3f"), "p95_ms"),
    ("params", lambda r: _params(r.get("n_params")), "n_params"),
    ("loss", lambda r: r.get("loss") or "", None),
    ("date", lambda r: (r.get("date") or "")[:10], None),
    ("margin (best baseline)", _margin, "margin"),
    ("C@50", lambda r: _f(r.get("contain_at_50"), ".3f"), "contain_at_50"),
    ("R@5", lambda r: _f(r.get("r_at_5"), ".3f"), "r_at_5"),
    ("Eff@5", lambda r: _f(r.get("eff_at_5"), ".3f"), "eff_at_5"),
    ("MRR@50", lambda r: _f(r.get("mrr_at_50"), ".3f"), "mrr_at_50"),
)


def _gate_columns(rows: list[dict]) -> list[str]:
    present = {g for r in rows for g in r["_gates"]}
    return [g for g in GATE_ORDER if g in present] + sorted(present - set(GATE_ORDER))


def render_markdown(groups: list[dict], sources: list[tuple[Path, dict]], generated: str) -> str:
    lines = ["# LVM leaderboard", "", f"Generated {generated} from {len(sources)} results file(s): "
             + ", ".join(f"`{p}` ({d.get('created_at')}, commit {str((d.get('provenance') or {}).get('git_commit'))[:10]})" for p, d in sources) + ".", "",
             "Rows are ranked by val cosine within a group; groups differ in encoder, dataset, profile or hardware and are not "
             "ranked against each other. Baseline rows are the null baselines measured by `beats_baselines`.", ""]
    for g in groups:
        lines += [f"## {_heading(g)}", "", f"Comparability key `{g['key']}`.", ""]
        heads = [h for h, _, _ in DISPLAY] + ["not GREEN"]
        lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for r in g["rows"]:
            cells = [fn(r) for _, fn, _ in DISPLAY]
            if r["kind"] == "baseline":
                cells[1] = f"*{cells[1]} (baseline)*"
            bad = ", ".join(f"{k} {v}" for k, v in r["_gates"].items() if v in (AMBER, RED))
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells + [bad]) + " |")
        lines.append("")
    if not groups:
        lines.append("No checkpoint results in these files.")
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict]) -> str:
    import pandas as pd

    gates = _gate_columns(rows)
    records = [{**{c: r.get(c) for c in COLUMNS}, **{f"gate_{g}": r["_gates"].get(g) for g in gates}} for r in rows]
    frame = pd.DataFrame.from_records(records, columns=[*COLUMNS, *(f"gate_{g}" for g in gates)])
    frame["rank"] = frame["rank"].astype("Int64")
    frame["n_params"] = frame["n_params"].astype("Int64")
    frame["epochs"] = frame["epochs"].astype("Int64")
    return frame.to_csv(index=False)


# ----------------------------------------------------------------------------- plots


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label(r: dict, groups: list[dict]) -> str:
    return f"{r['_name']} [g{r['group_number']}]" if len(groups) > 1 else r["_name"]


def plot_training_curves(rows: list[dict], groups: list[dict]) -> str | None:
    """Train (dashed) and val (solid) cosine per epoch of every trained run."""
    from matplotlib.figure import Figure

    runs = [r for r in rows if r["kind"] == "model" and r.get("_history")]
    runs = [(r, [e for e in r["_history"].get("epochs", []) if e.get("epoch", 0) >= 1]) for r in runs]
    runs = [(r, ep) for r, ep in runs if ep]
    if not runs:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for i, (r, ep) in enumerate(runs):
        colour = f"C{i % 10}"
        x = [e["epoch"] for e in ep]
        ax.plot(x, [e.get("val_cosine") for e in ep], "-o", color=colour, label=f"{_label(r, groups)} val")
        if any("train_cosine" in e for e in ep):
            ax.plot(x, [e.get("train_cosine") for e in ep], "--", color=colour, alpha=0.7, label=f"{_label(r, groups)} train")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean cos(ŷ, y)")
    ax.set_title("Training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_coherence(hists: list[dict]) -> str | None:
    """Adjacency coherence cos(c_t, c_t+1) within articles: share of pairs per 0.1 bin, one series per dataset."""
    from matplotlib.figure import Figure

    if not hists:
        return None
    bins = list(dict.fromkeys(b for h in hists for b in h["histogram"]))
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    width = 0.8 / len(hists)
    for i, h in enumerate(hists):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(bins))]
        ax.bar(xs, [100 * (h["histogram"].get(b) or 0.0) for b in bins], width=width, label=f"{h['dataset']} ({str(h['dataset_hash'] or '')[:8]})")
    ax.set_xticks(range(len(bins)))
    ax.set_xticklabels(bins, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("adjacency cosine bin")
    ax.set_ylabel("% of adjacent pairs")
    ax.set_title("Adjacency coherence")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_offset_sweep(rows: list[dict], groups: list[dict]) -> str | None:
    """Mean cos(ŷ, chunk at target + k), k = −3…3, val split: a healthy model peaks at k = 0."""
    from matplotlib.figure import Figure

    sweeps = [r for r in rows if r["kind"] == "model" and r.get("_sweep")]
    if not sweeps:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for i, r in enumerate(sweeps):
        pts = sorted((int(k), v) for k, v in r["_sweep"].items() if v is not None)
        ax.plot([k for k, _ in pts], [v for _, v in pts], "-o", color=f"C{i % 10}", label=f"{_label(r, groups)} · {r['dataset']}")
    ax.axvline(0, color="grey", lw=1, ls=":")
    ax.set_xlabel("offset k from the true next chunk (k = −1: last context chunk)")
    ax.set_ylabel("mean cos(ŷ, chunk at k)")
    ax.set_title("Offset sweep (val)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


# ----------------------------------------------------------------------------- html

CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #1d1d1f; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 4px; }
p.meta, p.sources { color: #555; margin: 2px 0 8px; font-size: 12px; }
.wrap { overflow-x: auto; }
table.leaderboard { border-collapse: collapse; font-size: 12px; }
table.leaderboard th, table.leaderboard td { border: 1px solid #d0d0d0; padding: 3px 6px; white-space: nowrap; text-align: right; }
table.leaderboard th { background: #f2f2f4; vertical-align: bottom; }
table.leaderboard td.name, table.leaderboard td.text { text-align: left; }
table.leaderboard th.gate { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; font-weight: normal; padding: 6px 2px; }
td.GREEN { background: #c8ecc9; } td.AMBER { background: #ffe3a3; } td.RED { background: #f7b4ae; font-weight: 600; }
td.SKIP { background: #eee; color: #777; }
table.leaderboard td.gate { text-align: center; font-size: 10px; padding: 3px 2px; }
tr.baseline td { background: #f7f7f7; color: #555; font-style: italic; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; border: 1px solid #ccc; font-size: 12px; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; margin-top: 12px; }
figure { margin: 0; border: 1px solid #e2e2e2; padding: 8px; } figcaption { font-size: 12px; color: #555; max-width: 680px; }
figure img { display: block; max-width: 680px; height: auto; }
"""


def _td(text: str, cls: str | None = None, title: str | None = None) -> str:
    attrs = f' class="{cls}"' if cls else ""
    attrs += f' title="{html.escape(title)}"' if title else ""
    return f"<td{attrs}>{html.escape(text)}</td>"


def render_html(groups: list[dict], rows: list[dict], plots: list[tuple[str, str | None, str]], sources: list[tuple[Path, dict]], generated: str) -> str:
    gates = _gate_columns(rows)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>LVM leaderboard</title>",
           f"<style>{CSS}</style></head><body>", "<h1>LVM leaderboard</h1>",
           f'<p class="sources">Generated {html.escape(generated)} from '
           + ", ".join(f"<code>{html.escape(str(p))}</code> ({html.escape(str(d.get('created_at')))}, commit "
                       f"{html.escape(str((d.get('provenance') or {}).get('git_commit'))[:10])})" for p, d in sources) + "</p>",
           '<p class="legend"><span class="l" style="background:#c8ecc9">GREEN healthy</span><span style="background:#ffe3a3">AMBER look before you ship</span>'
           '<span style="background:#f7b4ae">RED do not merge</span><span style="background:#f7f7f7"><i>baseline</i> null baseline, no status</span></p>',
           '<p class="meta">Ranked by val cosine within a group; groups differ in encoder, dataset, profile or hardware and are never ranked '
           "against each other. Metric cells take the colour of the gate that measured them; the gate columns show every gate's status.</p>"]
    if not groups:
        out.append("<p>No checkpoint results in these files.</p>")
    for g in groups:
        out.append(f'<h2 id="group-{g["number"]}">{html.escape(_heading(g))}</h2>')
        out.append(f'<p class="meta">comparability key <code>{html.escape(g["key"])}</code></p>')
        out.append(f'<div class="wrap"><table class="leaderboard" id="leaderboard-group-{g["number"]}" data-comparability-key="{html.escape(g["key"])}">')
        out.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h, _, _ in DISPLAY)
                   + "".join(f'<th class="gate">{html.escape(x)}</th>' for x in gates) + "</tr></thead><tbody>")
        for r in g["rows"]:
            cells = []
            for h, fn, key in DISPLAY:
                text = fn(r)
                if h == "checkpoint":
                    cells.append(_td(text + (" (baseline)" if r["kind"] == "baseline" else ""), "name", r.get("checkpoint_path")))
                    continue
                status = r.get("status") if key == "status" else r["_cell_status"].get(key) if key else None
                cls = status if status in STATUSES else ("text" if h in ("model", "loss", "date") else None)
                cells.append(_td(text, cls))
            for x in gates:
                s = r["_gates"].get(x)
                cells.append(_td(s or "", f"gate {s}" if s else "gate", x))
            out.append(f'<tr class="{r["kind"]}">' + "".join(cells) + "</tr>")
        out.append("</tbody></table></div>")
    out.append("<h2>Plots</h2>")
    out.append('<div class="plots">')
    for title, png, caption in plots:
        if png:
            out.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{png}"><figcaption>{html.escape(caption)}</figcaption></figure>')
        else:
            out.append(f"<figure><figcaption>{html.escape(title)}: no data in these results.</figcaption></figure>")
    out.append("</div></body></html>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- entry points


def build_leaderboard(results_paths: list[Path], out_dir: Path) -> dict:
    """Read results files and write ``leaderboard.md``, ``.csv`` and ``.html`` into ``out_dir``.

    Returns ``{"groups", "rows", "files", "plots"}``: the comparability groups, every row (models
    and baselines, ranked within their group), the paths written, and which plots had data.
    """
    paths = [Path(p) for p in results_paths]
    sources = _load_documents(paths)
    groups, rows, hists = collect_rows(paths)
    generated = utc_timestamp()
    plots = [
        ("Training curves", plot_training_curves(rows, groups), "Mean cos(ŷ, y) per epoch from each run's training_history.json: val solid, train dashed."),
        ("Adjacency coherence", plot_coherence(hists), "Share of within-article adjacent chunk pairs per cosine bin (coherence gate), one series per dataset."),
        ("Offset sweep", plot_offset_sweep(rows, groups), "Mean cos(ŷ, chunk at target+k) on val (offset_sweep gate); k = 0 is the true next chunk, k = −1 the last context chunk."),
    ]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"md": out_dir / "leaderboard.md", "csv": out_dir / "leaderboard.csv", "html": out_dir / "leaderboard.html"}
    write_text_atomic(files["md"], render_markdown(groups, sources, generated))
    write_text_atomic(files["csv"], render_csv(rows))
    write_text_atomic(files["html"], render_html(groups, rows, plots, sources, generated))
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    return {"groups": [{k: g[k] for k in ("number", "key", "comparability", "datasets")} for g in groups], "rows": public,
            "files": files, "plots": {title: png is not None for title, png, _ in plots}}


def leaderboard_main(results_paths: list[str | Path], out_dir: str | Path) -> int:
    """``lvm leaderboard``: build the leaderboard and print where it went."""
    res = build_leaderboard([Path(p) for p in results_paths], Path(out_dir))
    n_models = sum(r["kind"] == "model" for r in res["rows"])
    n_base = len(res["rows"]) - n_models
    print(f"leaderboard: {n_models} checkpoint row(s), {n_base} baseline row(s) in {len(res['groups'])} comparability group(s)")
    for f in res["files"].values():
        print(f"  {f}")
    return 0


def compare_main(new: Path, baseline: Path, profile_name: str | None = None) -> int:
    """``lvm compare NEW BASELINE``: Markdown table, verdict, regressed gates; 1 on RED, else 0.

    Tolerances come from the ``[regression]`` table of ``profile_name``, else of the profile
    recorded in NEW. Exit 1 when any comparison is RED or NEW itself holds a RED gate.
    """
    from lvm.profiles import load_profile
    from lvm.report.results import compare, markdown_table, read_results

    new_doc, base_doc = read_results(new), read_results(baseline)
    name = profile_name or (new_doc.get("profile") or {}).get("name")
    if not name or name == "unknown":
        raise LvmError(f"{new} records no gate profile; pass one with --gate-profile")
    profile = load_profile(name)
    regressions = compare(new_doc, base_doc, profile.data.get("regression"))
    print(markdown_table(regressions))
    print()
    regressed = [(r, c) for r in regressions for c in r.metrics.get("comparisons", []) if c.get("status") == RED]
    not_comparable = [r for r in regressions if any(c.get("metric") == "(all)" for c in r.metrics.get("comparisons", []))]
    new_red = [r for r in new_doc.get("results", []) if r.get("status") == RED and r.get("gate") != "regression"]
    n_cmp = sum(len(r.metrics.get("comparisons", [])) for r in regressions)
    status = worst([r.status for r in regressions] + ([RED] if new_red else []))
    if regressed or new_red:
        verdict = f"**Verdict: RED** — {len(regressed)} regression(s) beyond tolerance, {len(new_red)} RED gate(s) in {Path(new).name}."
    elif status == AMBER:
        verdict = f"**Verdict: AMBER** — no regression beyond tolerance in {n_cmp} comparison(s); look at the AMBER rows."
    elif n_cmp == 0:
        verdict = f"**Verdict: AMBER** — nothing to compare: no (gate, checkpoint, dataset) of {Path(new).name} is in {Path(baseline).name}."
    else:
        verdict = f"**Verdict: GREEN** — no regression in {n_cmp} comparison(s) against {Path(baseline).name} (profile {profile.name})."
    print(verdict)
    if regressed:
        gate_names = list(dict.fromkeys(f"{c['gate']}/{c['split']}" if c.get("split") else c["gate"] for _, c in regressed))
        print()
        print(f"Regressed gates: {', '.join(gate_names)}")
        for r, c in regressed:
            gate = f"{c['gate']}/{c['split']}" if c.get("split") else c["gate"]
            if c["metric"] == "(status)":
                what = f"status {c['baseline_status']} -> {c['new_status']}"
            else:
                what = f"{c['metric']} {c['baseline']:.4g} -> {c['new']:.4g} (Δ {c['delta']:+.4g}, tolerance {c['tolerance']:.3g})"
            print(f"- {gate} · {what} · {r.checkpoint or '-'} on {r.dataset or '-'}" + (f" · {c['note']}" if c.get("note") else ""))
    if new_red:
        print()
        print(f"RED gates in {Path(new).name}:")
        for r in new_red:
            split = f"/{r['split']}" if r.get("split") else ""
            print(f"- {r['gate']}{split} ({r.get('checkpoint') or '-'} on {_dataset_label(r) or '-'}): {(r.get('message') or '').split('. Likely cause')[0][:200]}")
    if not_comparable:
        print()
        print(f"Not comparable (encoder, dataset, profile or hardware differ): {', '.join(sorted({f'{r.checkpoint} on {r.dataset}' for r in not_comparable}))}")
    return 1 if regressed or new_red or any(r.status == RED for r in regressions) else 0
