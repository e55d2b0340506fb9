"""Leaderboard rows -> ``leaderboard.md`` (one table per comparability group, fit for a pull request),
``leaderboard.csv`` (every row, every column, one ``gate_<id>`` status column per gate) and
``leaderboard.html`` (a static, self-contained page: inline CSS, plots as base64 PNGs, cells coloured
by status).
"""

from __future__ import annotations

import html
from pathlib import Path

from lvm.gates.spec import GATES
from lvm.gates.status import AMBER, RED
from lvm.report.results import finite, format_number
from lvm.report.rows import BASELINE, COLUMNS, STATUSES, LeaderboardRow
from lvm.schemas import ResultsDoc

GATE_ORDER = tuple(g.id for g in GATES)


# ----------------------------------------------------------------------------- cells


def _f(v, fmt: str = ".4f") -> str:
    """A cell: "" when absent, "nan" / "inf" when not finite (``format_number``)."""
    return format_number(v, fmt)


def _params(n) -> str:
    f = finite(n)
    if f is None:
        return format_number(n)
    return f"{f / 1e6:.2f}M" if f >= 1e6 else f"{f / 1e3:.1f}k" if f >= 1e3 else str(int(f))


def _ci(v: float | None, lo: float | None, hi: float | None) -> str:
    if v is None:
        return ""
    if lo is None or hi is None:
        return _f(v)
    return f"{_f(v)} [{_f(lo)}, {_f(hi)}]"


def _margin(r: LeaderboardRow) -> str:
    return "" if r.margin is None else f"{_f(r.margin, '+.4f')} ({r.best_baseline or '?'})"


def _heading(g: dict) -> str:
    """A comparability group's title: encoder, datasets, hardware, profile."""
    c = g["comparability"]
    fp = str(c.get("encoder_fingerprint") or "?")[:12]
    dh = str(c.get("dataset_id") or c.get("dataset_hash") or "?")[:12]
    prof = f"{c.get('profile')} v{c.get('profile_version')}" if c.get("profile") else "?"
    return (
        f"Group {g['number']}: encoder {fp}… · dataset {', '.join(str(d) for d in g['datasets'])} ({dh}…) · "
        f"hardware {c.get('hardware_class') or 'any (latency per machine)'} · profile {prof}"
    )


# (header, row -> text, key of the status that colours the cell)
DISPLAY = (
    ("#", lambda r: _f(r.rank, "d"), None),
    ("checkpoint", lambda r: r.name, None),
    ("model", lambda r: r.model_type or "", None),
    ("status", lambda r: r.status or "", "status"),
    ("val cos [95 % CI]", lambda r: _ci(r.val_cosine, r.val_ci_low, r.val_ci_high), "val_cosine"),
    ("OOD cos", lambda r: _f(r.ood_cosine), "ood_cosine"),
    ("Δ OOD−val", lambda r: _f(r.delta_ood_minus_val, "+.4f"), None),
    ("P95 ms", lambda r: _f(r.p95_ms, ".3f"), "p95_ms"),
    ("params", lambda r: _params(r.n_params), "n_params"),
    ("loss", lambda r: r.loss or "", None),
    ("date", lambda r: (r.date or "")[:10], None),
    ("margin (best baseline)", _margin, "margin"),
    ("C@50", lambda r: _f(r.contain_at_50, ".3f"), "contain_at_50"),
    ("R@5", lambda r: _f(r.r_at_5, ".3f"), "r_at_5"),
    ("Eff@5", lambda r: _f(r.eff_at_5, ".3f"), "eff_at_5"),
    ("MRR@50", lambda r: _f(r.mrr_at_50, ".3f"), "mrr_at_50"),
)


def _gate_columns(rows: list[LeaderboardRow]) -> list[str]:
    present = {g for r in rows for g in r.gates}
    return [g for g in GATE_ORDER if g in present] + sorted(present - set(GATE_ORDER))


def _commit(doc: ResultsDoc) -> str:
    prov = getattr(doc, "provenance", None)  # an extra field of the document (not declared by its schema)
    return str((prov if isinstance(prov, dict) else {}).get("git_commit"))[:10]


# ----------------------------------------------------------------------------- markdown and csv


def _markdown_row(r: LeaderboardRow) -> str:
    cells = [fn(r) for _, fn, _ in DISPLAY]
    if r.kind == BASELINE:
        cells[1] = f"*{cells[1]} (baseline)*"
    bad = ", ".join(f"{k} {v}" for k, v in r.gates.items() if v in (AMBER, RED))
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells + [bad]) + " |"


def render_markdown(groups: list[dict], sources: list[tuple[Path, ResultsDoc]], generated: str) -> str:
    lines = [
        "# LVM leaderboard",
        "",
        f"Generated {generated} from {len(sources)} results file(s): "
        + ", ".join(f"`{p}` ({d.created_at}, commit {_commit(d)})" for p, d in sources)
        + ".",
        "",
        "Rows are ranked by val cosine within a group; groups differ in encoder, dataset, profile or hardware "
        "and are not ranked against each other. "
        "Baseline rows are the null baselines measured by `beats_baselines`.",
        "",
    ]
    for g in groups:
        lines += [f"## {_heading(g)}", "", f"Comparability key `{g['key']}`.", ""]
        heads = [h for h, _, _ in DISPLAY] + ["not GREEN"]
        lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += [_markdown_row(r) for r in g["rows"]]
        lines.append("")
    if not groups:
        lines.append("No checkpoint results in these files.")
    return "\n".join(lines) + "\n"


def render_csv(rows: list[LeaderboardRow]) -> str:
    import pandas as pd

    gates = _gate_columns(rows)
    records = [{**{c: getattr(r, c) for c in COLUMNS}, **{f"gate_{g}": r.gates.get(g) for g in gates}} for r in rows]
    frame = pd.DataFrame.from_records(records, columns=[*COLUMNS, *(f"gate_{g}" for g in gates)])
    frame["rank"] = frame["rank"].astype("Int64")
    frame["n_params"] = frame["n_params"].astype("Int64")
    frame["epochs"] = frame["epochs"].astype("Int64")
    return frame.to_csv(index=False)


# ----------------------------------------------------------------------------- html

CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; \
color: #1d1d1f; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 4px; }
p.meta, p.sources { color: #555; margin: 2px 0 8px; font-size: 12px; }
.wrap { overflow-x: auto; }
table.leaderboard { border-collapse: collapse; font-size: 12px; }
table.leaderboard th, table.leaderboard td { border: 1px solid #d0d0d0; padding: 3px 6px; white-space: nowrap; \
text-align: right; }
table.leaderboard th { background: #f2f2f4; vertical-align: bottom; }
table.leaderboard td.name, table.leaderboard td.text { text-align: left; }
table.leaderboard th.gate { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; \
font-weight: normal; padding: 6px 2px; }
td.GREEN { background: #c8ecc9; } td.AMBER { background: #ffe3a3; } td.RED { background: #f7b4ae; font-weight: 600; }
td.SKIP { background: #eee; color: #777; }
table.leaderboard td.gate { text-align: center; font-size: 10px; padding: 3px 2px; }
tr.baseline td { background: #f7f7f7; color: #555; font-style: italic; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; border: 1px solid #ccc; font-size: 12px; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; margin-top: 12px; }
figure { margin: 0; border: 1px solid #e2e2e2; padding: 8px; } \
figcaption { font-size: 12px; color: #555; max-width: 680px; }
figure img { display: block; max-width: 100%; height: auto; }  /* the offset sweep with ablations is 1000 px */
figcaption span.note { display: block; margin-top: 4px; }
"""


def _td(text: str, cls: str | None = None, title: str | None = None) -> str:
    attrs = f' class="{cls}"' if cls else ""
    attrs += f' title="{html.escape(title)}"' if title else ""
    return f"<td{attrs}>{html.escape(text)}</td>"


def _html_head(sources: list[tuple[Path, ResultsDoc]], generated: str) -> list[str]:
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>LVM leaderboard</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>LVM leaderboard</h1>",
        f'<p class="sources">Generated {html.escape(generated)} from '
        + ", ".join(
            f"<code>{html.escape(str(p))}</code> ({html.escape(str(d.created_at))}, commit {html.escape(_commit(d))})"
            for p, d in sources
        )
        + "</p>",
        '<p class="legend"><span class="l" style="background:#c8ecc9">GREEN healthy</span>'
        '<span style="background:#ffe3a3">AMBER look before you ship</span>'
        '<span style="background:#f7b4ae">RED do not merge</span>'
        '<span style="background:#f7f7f7"><i>baseline</i> null baseline, no status</span></p>',
        '<p class="meta">Ranked by val cosine within a group; groups differ in encoder, dataset, profile or hardware '
        "and are never ranked against each other. "
        "Metric cells take the colour of the gate that measured them; the gate columns show every gate's status.</p>",
    ]


def _html_row(r: LeaderboardRow, gates: list[str]) -> str:
    cells = []
    for h, fn, key in DISPLAY:
        text = fn(r)
        if h == "checkpoint":
            cells.append(_td(text + (" (baseline)" if r.kind == BASELINE else ""), "name", r.checkpoint_path))
            continue
        status = r.status if key == "status" else r.cell_status.get(key) if key else None
        cls = status if status in STATUSES else ("text" if h in ("model", "loss", "date") else None)
        cells.append(_td(text, cls))
    for x in gates:
        s = r.gates.get(x)
        cells.append(_td(s or "", f"gate {s}" if s else "gate", x))
    return f'<tr class="{r.kind}">' + "".join(cells) + "</tr>"


def _html_group(g: dict, gates: list[str]) -> list[str]:
    key = html.escape(g["key"])
    return [
        f'<h2 id="group-{g["number"]}">{html.escape(_heading(g))}</h2>',
        f'<p class="meta">comparability key <code>{key}</code></p>',
        (
            f'<div class="wrap"><table class="leaderboard" id="leaderboard-group-{g["number"]}" '
            f'data-comparability-key="{key}">'
        ),
        "<thead><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h, _, _ in DISPLAY)
        + "".join(f'<th class="gate">{html.escape(x)}</th>' for x in gates)
        + "</tr></thead><tbody>",
        *(_html_row(r, gates) for r in g["rows"]),
        "</tbody></table></div>",
    ]


# What a plot's caption cannot say in a line: shown under the caption of the plot with that title.
PLOT_NOTES = {
    "Offset sweep": (
        "A model that peaks at k = −1 can be GREEN: healthy MSE models regress toward their context, so the gate "
        "checks the copy gap P(−1)−P(0) and the forward margin P(0)−max P(k>0), not the peak. "
        "Dashed: each rule's GREEN limit on the profile the gates ran with, relative to the model's P(0); "
        "a curve inside a shaded band reads AMBER (orange) or RED (red). When context ablations ran, the right "
        "panel shows each ablation's Δcos and the profile's delta_cross_article line: a model whose cross-article "
        "bar stays above it ignores its context."
    ),
}


def _html_plot(title: str, png: str | None, caption: str) -> str:
    if png:
        note = PLOT_NOTES.get(title)
        return (
            f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{html.escape(caption)}"
            + (f'<span class="note">{html.escape(note)}</span>' if note else "")
            + "</figcaption></figure>"
        )
    return f"<figure><figcaption>{html.escape(title)}: no data in these results.</figcaption></figure>"


def render_html(
    groups: list[dict],
    rows: list[LeaderboardRow],
    plots: list[tuple[str, str | None, str]],
    sources: list[tuple[Path, ResultsDoc]],
    generated: str,
) -> str:
    """The page: ``plots`` are (title, base64 PNG or None, caption)."""
    gates = _gate_columns(rows)
    out = _html_head(sources, generated)
    if not groups:
        out.append("<p>No checkpoint results in these files.</p>")
    for g in groups:
        out += _html_group(g, gates)
    out += ["<h2>Plots</h2>", '<div class="plots">', *(_html_plot(*p) for p in plots), "</div></body></html>"]
    return "\n".join(out) + "\n"
