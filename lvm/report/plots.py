"""The leaderboard's plots (training curves, adjacency-coherence histograms, offset-sweep profiles),
each a base64 PNG for the self-contained HTML page, or None when the results hold no data for it.

``coherence_histogram`` is the one coherence-histogram figure: the leaderboard draws one series per
dataset side by side, ``lvm coherence --png`` (``lvm.triage.plot_histograms``) overlays a dataset on
its baseline. matplotlib is imported inside the functions: reading results needs no plotting stack.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

from lvm.report.rows import MODEL, LeaderboardRow, trained_epochs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGSIZE = (7, 4)  # inches; 700 x 400 px at the PNG's 100 dpi
DPI = 100


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


def plot_training_curves(rows: list[LeaderboardRow], groups: list[dict]) -> str | None:
    """Train (dashed) and val (solid) cosine per epoch of every trained run."""
    runs = [(r, trained_epochs(r.history)) for r in rows if r.kind == MODEL and r.history]
    runs = [(r, ep) for r, ep in runs if ep]
    if not runs:
        return None
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    for i, (r, ep) in enumerate(runs):
        colour = f"C{i % 10}"
        x = [e["epoch"] for e in ep]
        ax.plot(x, [e.get("val_cosine") for e in ep], "-o", color=colour, label=f"{_label(r, groups)} val")
        if any("train_cosine" in e for e in ep):
            ax.plot(
                x,
                [e.get("train_cosine") for e in ep],
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
    if not hists:
        return None
    bins = list(dict.fromkeys(b for h in hists for b in h["histogram"]))
    series = [
        (f"{h['dataset']} ({str(h['dataset_hash'] or '')[:8]})", [h["histogram"].get(b) or 0.0 for b in bins])
        for h in hists
    ]
    return png_base64(coherence_histogram(bins, series))


def plot_offset_sweep(rows: list[LeaderboardRow], groups: list[dict]) -> str | None:
    """Mean cos(ŷ, chunk at target + k), k = −3…3, val split: a healthy model peaks at k = 0."""
    sweeps = [r for r in rows if r.kind == MODEL and r.sweep]
    if not sweeps:
        return None
    fig, ax = _figure()
    for i, r in enumerate(sweeps):
        pts = sorted((int(k), v) for k, v in r.sweep.items() if v is not None)
        ax.plot(
            [k for k, _ in pts],
            [v for _, v in pts],
            "-o",
            color=f"C{i % 10}",
            label=f"{_label(r, groups)} · {r.dataset}",
        )
    ax.axvline(0, color="grey", lw=1, ls=":")
    ax.set_xlabel("offset k from the true next chunk (k = −1: last context chunk)")
    ax.set_ylabel("mean cos(ŷ, chunk at k)")
    ax.set_title("Offset sweep (val)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png_base64(fig)
