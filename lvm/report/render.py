"""Leaderboard rows -> ``leaderboard.md`` (one table per comparability group, fit for a pull request),
``leaderboard.csv`` (every row, every column, one ``gate_<id>`` status column per gate) and
``leaderboard.html`` (a static, self-contained page: inline CSS, one inline script that sorts a table
by the clicked header, plots as base64 PNGs, cells coloured by status, the name, status and a
one-square-per-gate column kept at the left, and a "why not GREEN" line under each checkpoint with
an AMBER or RED gate).
"""

from __future__ import annotations

import html
from pathlib import Path

from lvm.gates.spec import GATES
from lvm.gates.status import AMBER, GREEN, RED
from lvm.report.results import finite, format_number
from lvm.report.rows import BASELINE, COLUMNS, REASON_CHARS, STATUSES, LeaderboardRow, dataset_identity, short_hash
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
    dh = short_hash(dataset_identity(c))
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


def _markdown_why(rows: list[LeaderboardRow]) -> list[str]:
    """One line per checkpoint that is not GREEN: each such gate, its status, splits and reason."""
    lines = []
    for r in rows:
        items = why_items(r)
        if r.kind == BASELINE or not items:
            continue
        text = "; ".join(f"**{g}** {st}{where}: {_short(reason, 2 * REASON_CHARS)}" for g, st, where, reason in items)
        lines.append(f"- why `{r.name}` is {r.status}: {text}")
    return (lines + [""]) if lines else []


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
        lines += _markdown_why(g["rows"])
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
.wrap { overflow-x: auto; max-width: 100%; }
table.leaderboard { border-collapse: separate; border-spacing: 0; font-size: 12px; }
table.leaderboard th, table.leaderboard td { border-right: 1px solid #d0d0d0; border-bottom: 1px solid #d0d0d0; \
padding: 3px 6px; white-space: nowrap; text-align: right; }
table.leaderboard tr:first-child th { border-top: 1px solid #d0d0d0; }
table.leaderboard th:first-child, table.leaderboard td:first-child { border-left: 1px solid #d0d0d0; }
table.leaderboard th { background: #f2f2f4; vertical-align: bottom; cursor: pointer; user-select: none; }
table.leaderboard th[aria-sort="ascending"]::after { content: " ▲"; font-size: 9px; }
table.leaderboard th[aria-sort="descending"]::after { content: " ▼"; font-size: 9px; }
table.leaderboard td.name, table.leaderboard td.text { text-align: left; }
table.leaderboard td.name { max-width: 150px; overflow: hidden; text-overflow: ellipsis; }
table.leaderboard th.gate { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; \
font-weight: normal; padding: 6px 2px; font-size: 10px; }
table.leaderboard .sticky { position: sticky; z-index: 1; }
table.leaderboard td.sticky:not(.GREEN):not(.AMBER):not(.RED) { background: #fff; }
table.leaderboard tr.baseline td.sticky:not(.GREEN):not(.AMBER):not(.RED) { background: #f7f7f7; }
table.leaderboard th.sticky { z-index: 2; }
table.leaderboard td.GREEN, span.GREEN { background: #c8ecc9; }
table.leaderboard td.AMBER, span.AMBER { background: #ffe3a3; }
table.leaderboard td.RED, span.RED { background: #f7b4ae; font-weight: 600; }
table.leaderboard td.SKIP, span.SKIP { background: #eee; color: #777; }
table.leaderboard td.gate { text-align: center; font-size: 10px; padding: 3px 2px; }
table.leaderboard td.gates { text-align: left; padding: 2px 4px; }
td.gates span { display: inline-block; width: 9px; height: 14px; margin-right: 1px; vertical-align: middle; \
border: 1px solid rgba(0, 0, 0, .15); }
td.gates span.none { border-color: transparent; }
tr.baseline td { background: #f7f7f7; color: #555; font-style: italic; }
tr.why td { text-align: left; white-space: normal; background: #fffdf6; border-left: 1px solid #d0d0d0; }
tr.why div { position: sticky; left: 6px; max-width: 1240px; font-size: 12px; }
tr.why b.RED { color: #b3261e; } tr.why b.AMBER { color: #8a5a00; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; border: 1px solid #ccc; font-size: 12px; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; margin-top: 12px; }
figure { margin: 0; border: 1px solid #e2e2e2; padding: 8px; } \
figcaption { font-size: 12px; color: #555; max-width: 680px; }
figure img { display: block; max-width: 100%; height: auto; }  /* the offset sweep with ablations is 1000 px */
figcaption span.note { display: block; margin-top: 4px; }
details.samples { margin: 8px 0; border: 1px solid #e2e2e2; padding: 4px 8px; max-width: 1340px; }
details.samples summary { cursor: pointer; font-weight: 600; }
table.samples { border-collapse: collapse; font-size: 12px; margin: 6px 0 10px; }
table.samples th, table.samples td { border: 1px solid #d0d0d0; padding: 3px 6px; text-align: left; \
vertical-align: top; max-width: 420px; }
table.samples td.num { text-align: right; white-space: nowrap; }
"""

# Click a header to sort its table (again: the other way); numbers as numbers (a cell's data-sort
# value when it has one), empty cells last either way. Each checkpoint is one <tbody> (its row and
# its "why" line), so the line moves with its row. ``#sort=KEY`` or ``#sort=KEY:desc`` in the page's
# address clicks the header whose data-key is KEY on load, once or twice (a link to a sorted view).
SORT_JS = """
(function () {
  function key(row, i) {
    var td = row && row.cells[i];
    if (!td) return null;
    var v = td.getAttribute("data-sort");
    if (v === null) v = td.textContent.trim();
    if (v === "") return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function sortBy(th, dir) {
    var table = th.closest("table"), i = Array.prototype.indexOf.call(th.parentNode.cells, th);
    var bodies = Array.prototype.slice.call(table.tBodies).map(function (b, n) {
      return { b: b, k: key(b.rows[0], i), n: n };
    });
    bodies.sort(function (x, y) {
      if (x.k === null || y.k === null) return (x.k === null) - (y.k === null) || x.n - y.n;
      if (typeof x.k !== typeof y.k) return (typeof x.k === "number" ? -1 : 1);
      return (x.k < y.k ? -1 : x.k > y.k ? 1 : x.n - y.n) * (dir === "descending" ? -1 : 1);
    });
    bodies.forEach(function (x) { table.appendChild(x.b); });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
  }
  document.querySelectorAll("table.leaderboard thead th").forEach(function (th) {
    th.title = th.title || "click to sort";
    th.addEventListener("click", function () {
      sortBy(th, th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending");
    });
  });
  var m = /^#sort=([\\w-]+)(?::(asc|desc))?$/.exec(location.hash);
  if (m) document.querySelectorAll('table.leaderboard th[data-key="' + m[1] + '"]').forEach(function (th) {
    th.click();  // the user's click: ascending first, a second click descending
    if (m[2] === "desc") th.click();
  });
})();
"""

STATUS_ORDER = {RED: 0, AMBER: 1, GREEN: 2}  # sorting the status column ascending puts RED first
# The columns that stay on screen while the table scrolls sideways: (header, data-key, width px).
STICKY = (("#", "rank", 30), ("checkpoint", "checkpoint", 150), ("status", "status", 60))


def _key(header: str) -> str:
    """A column's data-key (``#sort=KEY``): its header in lowercase letters, digits and dashes."""
    return "-".join("".join(c if c.isalnum() else " " for c in header.lower()).split()) or "col"


def _td(
    text: str, cls: str | None = None, title: str | None = None, sort=None, style: str | None = None, raw: bool = False
) -> str:
    attrs = f' class="{cls}"' if cls else ""
    attrs += f' title="{html.escape(title)}"' if title else ""
    if sort is not None and finite(sort) is not None:
        attrs += f' data-sort="{finite(sort)!r}"'
    elif sort is not None and isinstance(sort, str):
        attrs += f' data-sort="{html.escape(sort)}"'
    attrs += f' style="{style}"' if style else ""
    return f"<td{attrs}>{text if raw else html.escape(text)}</td>"


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
        "and are never ranked against each other; click a column header to sort by it. "
        "Metric cells take the colour of the gate that measured them; the <i>gates</i> column shows every gate's "
        "status as one square (hover for its name), and the line under a checkpoint names each gate that is not "
        "GREEN with its reason.</p>",
    ]


def _sort_value(h: str, r: LeaderboardRow):
    """The number a column sorts by, where its text is not one (a CI, "791.7k", "+0.04 (ridge)")."""
    return {
        "#": r.rank,
        "status": STATUS_ORDER.get(r.status or "", ""),
        "val cos [95 % CI]": r.val_cosine,
        "params": r.n_params,
        "margin (best baseline)": r.margin,
        "Δ OOD−val": r.delta_ood_minus_val,
    }.get(h)


def _sticky_style(i: int) -> str:
    left = sum(w for _, _, w in STICKY[:i])
    w = STICKY[i][2]
    return f"left:{left}px;min-width:{w - 13}px;max-width:{w - 13}px"


def gate_squares(r: LeaderboardRow, gates: list[str]) -> str:
    """The compact gates cell: one coloured square per gate, in the gate table's order."""
    out = []
    for g in gates:
        st = r.gates.get(g)
        if st is None:  # a blank square keeps every row's squares in the same places
            out.append(f'<span class="none" title="{html.escape(g)}: not run"></span>')
            continue
        reason = r.reasons.get(g, {}).get("reason")
        title = f"{g}: {st}" + (f" — {reason}" if reason else "")
        out.append(f'<span class="{html.escape(st)}" title="{html.escape(title)}"></span>')
    return "".join(out)


def why_items(r: LeaderboardRow) -> list[tuple[str, str, str, str]]:
    """(gate, status, where, reason) of every gate of the row that is not GREEN, RED first."""
    items = []
    for g, info in sorted(r.reasons.items(), key=lambda kv: (STATUS_ORDER.get(kv[1].get("status"), 3), kv[0])):
        splits = info.get("splits") or []
        where = f" ({', '.join(str(s) for s in splits)})" if splits else ""
        items.append((g, str(info.get("status")), where, str(info.get("reason") or "")))
    return items


def _short(text: str, n: int = REASON_CHARS) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _rules_part(reason: str) -> str:
    """A gate's reason without its "Likely cause: ..." tail (which the why line keeps in its title)."""
    return reason.split(" Likely cause: ", 1)[0].rstrip(".") or reason


def _html_why(r: LeaderboardRow, n_cols: int) -> str:
    items = why_items(r)
    if r.kind == BASELINE or not items:
        return ""
    parts = [  # the failed rules on the line; the gate's likely cause (and all of it) in the title
        f'<b class="{html.escape(st)}">{html.escape(g)}</b> {html.escape(st)}{html.escape(where)}: '
        f'<span title="{html.escape(reason)}">{html.escape(_short(_rules_part(reason)))}</span>'
        for g, st, where, reason in items
    ]
    return f'<tr class="why"><td colspan="{n_cols}"><div>why not GREEN: ' + "; ".join(parts) + "</div></td></tr>"


def _html_row(r: LeaderboardRow, gates: list[str]) -> str:
    cells = []
    sticky = {h: i for i, (h, _, _) in enumerate(STICKY)}
    order = [d for d in DISPLAY if d[0] in sticky] + [("gates", None, None)]
    order += [d for d in DISPLAY if d[0] not in sticky]
    for h, fn, key in order:
        if fn is None:
            n_bad = sum(STATUS_ORDER.get(s, 3) < 2 for s in r.gates.values())
            sort = -(10 * sum(s == RED for s in r.gates.values()) + n_bad) if r.kind != BASELINE else None
            squares = gate_squares(r, gates) if r.kind != BASELINE else ""
            cells.append(_td(squares, "gates", None, sort, raw=True))
            continue
        text = fn(r)
        style = _sticky_style(sticky[h]) if h in sticky else None
        if h == "checkpoint":
            name = text + (" (baseline)" if r.kind == BASELINE else "")
            cells.append(_td(name, "name sticky", r.checkpoint_path or name, style=style))
            continue
        status = r.status if key == "status" else r.cell_status.get(key) if key else None
        cls = status if status in STATUSES else ("text" if h in ("model", "loss", "date") else None)
        if h in sticky:
            cls = f"{cls or ''} sticky".strip()
        cells.append(_td(text, cls, None, _sort_value(h, r), style))
    for x in gates:
        s = r.gates.get(x)
        cells.append(_td(s or "", f"gate {s}" if s else "gate", x, STATUS_ORDER.get(s or "", "")))
    return f'<tbody><tr class="{r.kind}">' + "".join(cells) + "</tr>" + _html_why(r, len(cells)) + "</tbody>"


def _header_cells(gates: list[str]) -> str:
    sticky = {h: i for i, (h, _, _) in enumerate(STICKY)}
    heads = [h for h, _, _ in DISPLAY if h in sticky] + ["gates"] + [h for h, _, _ in DISPLAY if h not in sticky]
    out = []
    for h in heads:
        if h in sticky:
            style = _sticky_style(sticky[h])
            key = STICKY[sticky[h]][1]
            out.append(f'<th class="sticky" style="{style}" data-key="{key}">{html.escape(h)}</th>')
        elif h == "gates":
            title = "one square per gate, in this order: " + ", ".join(gates)
            out.append(f'<th data-key="gates" title="{html.escape(title)}">gates</th>')
        else:
            out.append(f'<th data-key="{_key(h)}">{html.escape(h)}</th>')
    out += [f'<th class="gate" data-key="gate-{_key(x)}">{html.escape(x)}</th>' for x in gates]
    return "".join(out)


def _html_group(g: dict, gates: list[str]) -> list[str]:
    key = html.escape(g["key"])
    return [
        f'<h2 id="group-{g["number"]}">{html.escape(_heading(g))}</h2>',
        f'<p class="meta">comparability key <code>{key}</code></p>',
        (
            f'<div class="wrap"><table class="leaderboard" id="leaderboard-group-{g["number"]}" '
            f'data-comparability-key="{key}">'
        ),
        "<thead><tr>" + _header_cells(gates) + "</tr></thead>",
        *(_html_row(r, gates) for r in g["rows"]),
        "</table></div>",
    ]


# What a plot's caption cannot say in a line: shown under the caption of the plot with that title.
PLOT_NOTES = {
    "Offset sweep": (
        "A model that peaks at k = −1 can be GREEN: healthy MSE models regress toward their context, so the gate "
        "checks the copy gap P(−1)−P(0) and the forward margin P(0)−max P(k>0), not the peak. "
        "Each curve is drawn relative to its own P(0) (given in the legend), so one set of bands judges every model: "
        "a band covers only the offsets its rule reads (k = −1 for the copy gap, k > 0 for the forward margin) and "
        "only the values that read AMBER (orange) or RED (red) there; dashed: the GREEN limit. A point inside a "
        "band has that status; a GREEN model has none inside. When context ablations ran, the right panel shows "
        "each ablation's Δcos with the profile's rules shaded over the bar they judge: a model whose cross-article "
        "bar sits in the red ignores its context."
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
    samples: list[str] | None = None,
) -> str:
    """The page: ``plots`` are (title, base64 PNG or None, caption); ``samples`` the failure-mode
    samples section's HTML (``lvm.report.samples_view``), when there is one."""
    gates = _gate_columns(rows)
    out = _html_head(sources, generated)
    if not groups:
        out.append("<p>No checkpoint results in these files.</p>")
    for g in groups:
        out += _html_group(g, gates)
    out += samples or []
    out += ["<h2>Plots</h2>", '<div class="plots">', *(_html_plot(*p) for p in plots), "</div>"]
    out += [f"<script>{SORT_JS}</script>", "</body></html>"]
    return "\n".join(out) + "\n"
