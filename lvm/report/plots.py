"""The leaderboard's plots (training curves, adjacency-coherence histograms, offset-sweep profiles),
each a base64 PNG for the self-contained HTML page, or None when the results hold no data for it.

The offset sweep draws each model's profile relative to its own P(0), so one set of bands judges
every curve: the ``offset_sweep`` rules (copy gap at k = −1, forward margin over k > 0, the seeds'
peak margin over k ≠ 0) shaded only where they judge and only over the values that read AMBER or RED
there (``sweep_bands``); when a ``context_ablations`` result is there, a panel of its deltas with each
rule's zones over the bar it judges.
Thresholds are the ones recorded beside each result (what the gate ran with), else the rules of the
profile named in the results file when it loads; without either the sweep is drawn alone.

``coherence_histogram`` is the one coherence-histogram figure: the leaderboard draws one series per
dataset side by side, ``lvm coherence --png`` (``lvm.triage.plot_histograms``) overlays a dataset on
its baseline. matplotlib is imported inside the functions: reading results needs no plotting stack.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING

from lvm.gates.status import AMBER, RED
from lvm.report.results import finite
from lvm.report.rows import MODEL, LeaderboardRow, short_hash, trained_epochs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGSIZE = (7, 4)  # inches; 700 x 400 px at the PNG's 100 dpi
WIDE_FIGSIZE = (10, 4)  # the offset sweep with its context-ablation panel
DPI = 100
ABLATIONS = ("shuffle", "reverse", "leave_one_out", "repeat_pad", "cross_article")  # delta_<name> metrics
SWEEP_RULES = ("copy_gap", "forward_margin", "margin")  # offset_sweep metrics drawn as bands
AMBER_FILL, RED_FILL = "#f5b942", "#e0584a"
# What a plot draws is a value its axis can hold: a cosine (or a difference of cosines, a threshold
# relative to one) within ±COSINE_SPAN, a share within [0, 1]. Anything else a results file holds
# (NaN, ±inf, 1e308, a string) is skipped, never drawn and never a crash.
COSINE_SPAN = 2.0


def _cosine(v) -> float | None:
    """``v`` as a plottable cosine (or difference of cosines); None when it is not one."""
    f = finite(v)
    return f if f is not None and abs(f) <= COSINE_SPAN else None


def _share(v) -> float | None:
    """``v`` as a plottable share (0–1); None when it is not one."""
    f = finite(v)
    return f if f is not None and 0.0 <= f <= 1.0 else None


def png_base64(fig: Figure) -> str:
    """The figure as a base64 PNG, for an ``<img src="data:image/png;base64,...">``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label(r: LeaderboardRow, groups: list[dict]) -> str:
    return f"{r.name} [g{r.group_number}]" if len(groups) > 1 else r.name


def _figure() -> tuple[Figure, object]:
    """A figure with an Agg canvas (no GUI backend) and its one axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def coherence_histogram(
    bins: list[str],
    series: list[tuple[str, list[float]]],
    *,
    overlay: bool = False,
    xlabel: str = "adjacency cosine bin",
    marker_x: float | None = None,
) -> Figure:
    """Share of within-article adjacent pairs per cosine bin, in %, one bar series per (label, shares).

    ``shares`` are fractions (0–1) per bin. The series stand side by side, or with ``overlay`` on top
    of each other, half transparent (a dataset against its baseline). ``marker_x``, in bin
    positions, draws a dotted vertical line (the low-coherence boundary).
    """
    fig, ax = _figure()
    width = 0.8 if overlay else 0.8 / len(series)
    for i, (label, shares) in enumerate(series):
        if overlay:
            ax.bar(range(len(bins)), [100 * v for v in shares], width=width, alpha=0.5, color=f"C{i}", label=label)
        else:
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(bins))]
            ax.bar(xs, [100 * v for v in shares], width=width, label=label)
    if marker_x is not None:
        ax.axvline(marker_x, color="grey", ls=":", lw=1)
    ax.set_xticks(range(len(bins)))
    ax.set_xticklabels(bins, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("% of adjacent pairs")
    ax.set_title("Adjacency coherence")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _points(epochs: list[dict], key: str) -> list[tuple[int, float]]:
    """(epoch, value) of one per-epoch cosine, its unplottable values skipped."""
    out = []
    for e in epochs:
        y = _cosine(e.get(key))
        if y is not None:
            out.append((e["epoch"], y))
    return out


def plot_training_curves(rows: list[LeaderboardRow], groups: list[dict]) -> str | None:
    """Train (dashed) and val (solid) cosine per epoch of every trained run."""
    runs = [(r, trained_epochs(r.history)) for r in rows if r.kind == MODEL and r.history]
    runs = [(r, ep) for r, ep in runs if any(_cosine(e.get("val_cosine")) is not None for e in ep)]
    if not runs:
        return None
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    for i, (r, ep) in enumerate(runs):
        colour = f"C{i % 10}"
        val, train = (_points(ep, key) for key in ("val_cosine", "train_cosine"))
        ax.plot([x for x, _ in val], [y for _, y in val], "-o", color=colour, label=f"{_label(r, groups)} val")
        if train:
            ax.plot(
                [x for x, _ in train],
                [y for _, y in train],
                "--",
                color=colour,
                alpha=0.7,
                label=f"{_label(r, groups)} train",
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean cos(ŷ, y)")
    ax.set_title("Training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_base64(fig)


def plot_coherence(hists: list[dict]) -> str | None:
    """Adjacency coherence cos(c_t, c_t+1) within articles: share of pairs per 0.1 bin, one series per dataset."""
    hists = [h for h in hists if any(_share(v) is not None for v in h["histogram"].values())]
    if not hists:
        return None
    bins = list(dict.fromkeys(b for h in hists for b in h["histogram"]))
    series = [
        (f"{h['dataset']} ({short_hash(h['dataset_hash'])}…)", [_share(h["histogram"].get(b)) or 0.0 for b in bins])
        for h in hists
    ]
    return png_base64(coherence_histogram(bins, series))


# ----------------------------------------------------------------------------- offset sweep


def _results_doc(path: str | None, cache: dict) -> dict | None:
    """A results file as JSON (already validated by the rows that name it), read once; None if unreadable."""
    if not path:
        return None
    if path not in cache:
        from lvm.errors import LvmError
        from lvm.schemas import read_json

        try:
            doc = read_json(Path(path), "a gate results file")
        except LvmError:
            doc = None
        cache[path] = doc if isinstance(doc, dict) else None
    return cache[path]


def gate_result(r: LeaderboardRow, gate: str, split: str | None = "val", cache: dict | None = None) -> dict | None:
    """The result of ``gate`` (on ``split``) for the row's checkpoint and dataset in its results file."""
    from lvm.report.results import dataset_label

    doc = _results_doc(r.results_file, {} if cache is None else cache)
    for res in (doc or {}).get("results") or []:
        if (
            isinstance(res, dict)
            and res.get("gate") == gate
            and res.get("checkpoint") == r.checkpoint
            and (split is None or res.get("split") == split)
            and dataset_label(res) == r.dataset
            and isinstance(res.get("metrics"), dict)
        ):
            return res
    return None


def _profile_rules(name: str | None, gate: str, cache: dict) -> list[dict]:
    """The rules of ``gate`` in the profile named ``name``; [] when it does not load (a calibrated
    profile elsewhere on disk, a profile of another lvm version)."""
    from lvm.errors import LvmError
    from lvm.profiles import load_profile

    if not name or name == "unknown":
        return []
    key = ("profile", name)
    if key not in cache:
        try:
            cache[key] = load_profile(name)
        except (LvmError, OSError, ValueError):
            cache[key] = None
    prof = cache[key]
    try:
        return list(prof.gate(gate).get("rules", [])) if prof else []
    except LvmError:
        return []


def rules_for(r: LeaderboardRow, gate: str, split: str = "val", cache: dict | None = None) -> tuple[list[dict], str]:
    """(rules, where they came from) of ``gate`` for a row: recorded beside its result, else the named
    profile's; only well-formed rules of ``split`` (or of every split)."""
    cache = {} if cache is None else cache
    res = gate_result(r, gate, split, cache)
    recorded = (res or {}).get("thresholds")
    if isinstance(recorded, list) and recorded:
        rules, source = recorded, "recorded"
    else:
        doc = _results_doc(r.results_file, cache) or {}
        name = doc.get("profile", {}).get("name") if isinstance(doc.get("profile"), dict) else None
        name = name if isinstance(name, str) and name else r.profile
        rules, source = _profile_rules(name, gate, cache), "profile"
    keep = [
        x for x in rules if isinstance(x, dict) and isinstance(x.get("metric"), str) and x.get("split") in (None, split)
    ]
    return keep, (source if keep else "none")


def _offsets(sweep: dict | None) -> list[tuple[int, float]]:
    """The sweep's (k, P(k)) points in k order, finite values and sane offsets only."""
    pts = []
    for k, v in (sweep or {}).items():
        k, v = int(k), _cosine(v)  # keys are integers (LeaderboardRow keeps only those)
        if v is not None and abs(k) <= 100:
            pts.append((k, v))
    return sorted(pts)


def _limits(rule: dict) -> tuple[float | None, float | None]:
    """(GREEN limit, AMBER limit) of a rule, as finite numbers (None when absent)."""
    lo = "min" if "min_green" in rule else "max"
    return _cosine(rule.get(f"{lo}_green")), _cosine(rule.get(f"{lo}_amber"))


def rule_zones(rule: dict) -> list[tuple[str, float, float]]:
    """Where a rule's metric reads AMBER and RED: (status, low, high) intervals of the metric's value
    (``lvm.gates.status.judge_rule``: GREEN at or beyond the GREEN limit, AMBER down (up) to the AMBER
    limit, RED past it; a rule's ``worst`` caps RED to AMBER), within ±COSINE_SPAN."""
    green, amber = _limits(rule)
    if green is None:
        return []
    cap_amber = rule.get("worst") == AMBER
    amber = green if amber is None else amber
    if "min_green" in rule:
        zones = [(AMBER, min(amber, green), green), (RED, -COSINE_SPAN, min(amber, green))]
    else:
        zones = [(AMBER, green, max(amber, green)), (RED, max(amber, green), COSINE_SPAN)]
    out = []
    for st, lo, hi in zones:
        if hi > lo:
            out.append((AMBER if cap_amber else st, lo, hi))
    return out


# offset_sweep metric -> (offsets it judges, sign): y = sign * value on the plot's P(k) − P(0) axis.
# copy_gap = P(−1) − P(0) is read at k = −1 as it is; forward_margin = P(0) − max_{k>0} P(k) (and the
# seeds' peak margin over every k ≠ 0) is crossed by a curve point at y = −margin.
SWEEP_AXES = {"copy_gap": ("before", 1.0), "forward_margin": ("after", -1.0), "margin": ("both", -1.0)}
SWEEP_TEXT = {
    "copy_gap": "copy gap P(−1)−P(0) ≤ {g:g}",
    "forward_margin": "forward margin P(0)−max P(k>0) ≥ {g:g}",
    "margin": "peak margin P(0)−max P(k≠0) ≥ {g:g}",
}


def sweep_bands(rules: list[dict], ks: list[int], p0s: list[float] | None = None) -> list[dict]:
    """The offset_sweep rules as bands on the plot's P(k) − P(0) axis, each only where it judges:
    ``{"metric", "status", "x": (x0, x1), "y": (y0, y1), "limit", "text"}``. The copy gap is judged
    at k = −1, the forward margin over k > 0, the seeds' peak margin over every k ≠ 0; y runs from the
    rule's limit to the highest a curve can reach there (cos ≤ 1: 1 − P(0), for the lowest ``p0s``)
    and never across a GREEN value. ``limit`` is the GREEN limit's y (the dashed line)."""
    if not ks:
        return []
    top = 1.0 - min(p0s) if p0s else COSINE_SPAN
    out = []
    for rule in rules:
        metric = rule.get("metric")
        if metric not in SWEEP_AXES:
            continue
        green, _ = _limits(rule)
        if green is None:
            continue
        where, sign = SWEEP_AXES[metric]
        spans = []
        if where in ("before", "both") and (-1 in ks if where == "before" else min(ks) < 0):
            spans.append((-1.35, -0.65) if where == "before" else (min(ks) - 0.35, -0.65))
        if where in ("after", "both") and max(ks) > 0:
            spans.append((0.65, max(ks) + 0.35))
        for st, lo, hi in rule_zones(rule):
            y0, y1 = sorted((sign * lo, sign * hi))
            y1 = min(y1, top)
            if y1 <= y0:
                continue  # beyond what a cosine can reach
            for xs in spans:
                out.append(
                    {
                        "metric": metric,
                        "status": st,
                        "x": xs,
                        "y": (y0, y1),
                        "limit": sign * green,
                        "text": SWEEP_TEXT[metric].format(g=green),
                    }
                )
    return out


def _draw_bands(ax, bands: list[dict]) -> None:
    """Shade each band (AMBER orange, RED red) and dash its GREEN limit over the same offsets."""
    for b in bands:
        colour, alpha = (AMBER_FILL, 0.3) if b["status"] == AMBER else (RED_FILL, 0.18)
        ax.fill_between(b["x"], b["y"][0], b["y"][1], color=colour, alpha=alpha, lw=0)
    for xs, limit in dict.fromkeys((b["x"], b["limit"]) for b in bands):
        ax.plot(xs, (limit, limit), ls="--", lw=1.2, color="black")


def _ablation_bands(rules: list[dict]) -> list[dict]:
    """The context_ablations rules as bands over the bar they judge (delta_<ablation>), in Δcos."""
    out = []
    for rule in rules:
        metric = str(rule.get("metric"))
        name = metric.removeprefix("delta_")
        if not metric.startswith("delta_") or name not in ABLATIONS:
            continue
        j = ABLATIONS.index(name)
        for st, lo, hi in rule_zones(rule):
            out.append(
                {"metric": metric, "status": st, "x": (j - 0.45, j + 0.45), "y": (lo, hi), "limit": _limits(rule)[0]}
            )
    return out


def _ablation_panel(ax, ablated: list[tuple[LeaderboardRow, dict, list[dict], str]], groups: list[dict]) -> None:
    """Δcos per context ablation, one bar series per model; each rule of the profile shaded over the
    bar it judges (AMBER and RED zones, clipped to the axis), its GREEN limit dashed."""
    width = 0.8 / len(ablated)
    ys_all = []
    for i, (r, metrics, _rules, colour) in enumerate(ablated):
        xs = [k - 0.4 + width * (i + 0.5) for k in range(len(ABLATIONS))]
        ys = [_cosine(metrics.get(f"delta_{a}")) for a in ABLATIONS]
        ys_all += [y for y in ys if y is not None]
        ax.bar(xs, [y if y is not None else 0.0 for y in ys], width=width, color=colour, label=_label(r, groups))
    bands = [b for *_, rules, _ in ablated for b in _ablation_bands(rules)]
    bands = list({(b["metric"], b["status"], b["x"], b["y"]): b for b in bands}.values())
    limits = [b["limit"] for b in bands if b["limit"] is not None]
    lo = min([*ys_all, *limits, 0.0]) - 0.03
    hi = max([*ys_all, *limits, 0.0]) + 0.03
    for b in bands:
        colour, alpha = (AMBER_FILL, 0.3) if b["status"] == AMBER else (RED_FILL, 0.18)
        y0, y1 = max(b["y"][0], lo), min(b["y"][1], hi)
        if y1 > y0:  # under the bars: a bar is judged by where its tip ends
            ax.fill_between(b["x"], y0, y1, color=colour, alpha=alpha, lw=0, zorder=0)
    for xs, limit in dict.fromkeys((b["x"], b["limit"]) for b in bands if b["limit"] is not None):
        ax.plot(xs, (limit, limit), ls="--", lw=1.2, color="black")
    ax.set_ylim(lo, hi)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(ABLATIONS)))
    ax.set_xticklabels([a.replace("_", " ") for a in ABLATIONS], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Δ mean cos vs intact context")
    ax.set_title("Context ablations (val)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)


def sweep_layout(rows: list[LeaderboardRow]) -> dict | None:
    """What the offset-sweep plot draws, as data: ``{"curves": [(row, [(k, P(k) − P(0))], P(0))],
    "bands": sweep_bands(...)}`` over every model with a sweep; None when none has one. Each model's
    curve is drawn relative to its own P(0), so one set of bands (one per distinct rule set) judges
    every curve: a curve point inside a band reads that band's status, a GREEN model has none inside."""
    cache: dict = {}
    curves = []
    rule_sets: list[list[dict]] = []
    for r in rows:
        pts = dict(_offsets(r.sweep)) if r.kind == MODEL and r.sweep else {}
        if 0 not in pts:
            continue
        p0 = pts[0]
        curves.append((r, [(k, v - p0) for k, v in sorted(pts.items())], p0))
        rules = [x for x in rules_for(r, "offset_sweep", "val", cache)[0] if x["metric"] in SWEEP_RULES]
        if rules and rules not in rule_sets:
            rule_sets.append(rules)
    if not curves:
        return None
    ks = sorted({k for _, pts, _ in curves for k, _ in pts})
    p0s = [p0 for *_, p0 in curves]
    bands = [b for rules in rule_sets for b in sweep_bands(rules, ks, p0s)]
    return {"curves": curves, "bands": bands, "cache": cache}


def plot_offset_sweep(rows: list[LeaderboardRow], groups: list[dict]) -> str | None:
    """Mean cos(ŷ, chunk at target + k) − P(0), k = −3…3, val split, each model relative to its own
    P(0) (named in its legend entry), with the active profile's rules as bands where they judge: the
    copy gap at k = −1, the forward margin over k > 0 (``sweep_layout``). A healthy MSE model may peak
    at k = −1 (it regresses toward its context); the bands show what the gate checks instead. With a
    context-ablation result, a second panel shows its deltas and the profile's rules for them."""
    layout = sweep_layout(rows)
    if layout is None:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cache = layout["cache"]
    ablated = []
    for i, (r, _, _) in enumerate(layout["curves"]):
        metrics = (gate_result(r, "context_ablations", "val", cache) or {}).get("metrics") or {}
        if any(_cosine(metrics.get(f"delta_{a}")) is not None for a in ABLATIONS):
            ablated.append((r, metrics, rules_for(r, "context_ablations", "val", cache)[0], f"C{i % 10}"))
    fig = Figure(figsize=WIDE_FIGSIZE if ablated else FIGSIZE)
    FigureCanvasAgg(fig)
    if ablated:
        ax, ax_abl = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    else:
        ax, ax_abl = fig.add_subplot(), None
    bands = layout["bands"]
    values = [y for _, pts, _ in layout["curves"] for _, y in pts] + [b["limit"] for b in bands] + [0.0]
    low, top = min(values) - 0.04, max(values) + 0.06
    for b in bands:  # clipped to the axis: a band never reaches past the region it judges
        b["y"] = (max(b["y"][0], low), min(b["y"][1], top))
    bands = [b for b in bands if b["y"][1] > b["y"][0]]
    _draw_bands(ax, bands)
    for i, (r, pts, p0) in enumerate(layout["curves"]):
        label = f"{_label(r, groups)} · {r.dataset} (P(0) = {p0:.3f})"
        ax.plot([k for k, _ in pts], [v for _, v in pts], "-o", color=f"C{i % 10}", label=label)
    ax.set_ylim(low, top)
    ax.axvline(0, color="grey", lw=1, ls=":")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("offset k from the true next chunk (k = −1: last context chunk)")
    ax.set_ylabel("mean cos(ŷ, chunk at k) − P(0)")
    limits = list(dict.fromkeys(b["text"] for b in bands))
    ax.set_title("Offset sweep (val)" + (": dashed = GREEN limit of the profile's rule" if limits else ""))
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], ls="--", color="black", lw=1.2, label=t) for t in limits]
    statuses = {b["status"] for b in bands}
    handles += [Patch(color=AMBER_FILL, alpha=0.5, label="AMBER there")] if AMBER in statuses else []
    handles += [Patch(color=RED_FILL, alpha=0.35, label="RED there")] if RED in statuses else []
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    if ax_abl is not None:
        _ablation_panel(ax_abl, ablated, groups)
    fig.tight_layout()
    return png_base64(fig)
