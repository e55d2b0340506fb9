"""The failure-mode samples on the leaderboard: ``<results stem>.samples.json`` -> a collapsible
section per checkpoint on ``leaderboard.html`` and a Markdown digest ``samples.md``.

The samples file (schema ``lvm-samples`` v1, written beside the results file by the gate suite, see
``lvm.report.samples``) holds per checkpoint the category counts and the worst and random val
sequences with their texts. It is read, checked and shown; it is never the authority: the results
file is. A missing samples file shows nothing; a damaged one (not JSON, another schema, a wrong
type, a non-finite number) is one warning line and the leaderboard is written without it.

Every text is HTML-escaped and shortened to ``TEXT_CHARS`` on the page, the whole text in the
cell's title attribute.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from lvm.errors import LvmError
from lvm.report.samples import CATEGORIES, SCHEMA, VERSION, samples_path

CATEGORY_TEXT = {  # shown when the file carries no category_rules of its own
    "copied_last": "the prediction stayed on the last context chunk instead of moving on",
    "drifted": "the bank text nearest to the prediction belongs to another article",
    "near_miss": "the nearest bank text is from the target's article but is not the target",
    "generic": "anything else (the nearest text is the target, or nothing was found)",
}
TEXT_CHARS = 200  # a text on the page; the full text is in its title attribute
MD_TEXT_CHARS = 200
MD_WORST = 10  # worst samples per checkpoint in samples.md
MAX_SAMPLES = 10_000  # per list: more is not a samples file
MAX_NEAREST = 20


# ----------------------------------------------------------------------------- reading


class _Bad(ValueError):
    """What is wrong with a samples file, as the rest of one line."""


def _text(v, where: str) -> str:
    if not isinstance(v, str):
        raise _Bad(f"{where} is not a string")
    return v


def _id(v, where: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise _Bad(f"{where} is not a string")
    return str(v)


def _int(v, where: str, low: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise _Bad(f"{where} is not an integer ≥ {low}")
    return v


def _num(v, where: str, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(f"{where} is not a number")
    try:
        f = float(v)
    except OverflowError:
        raise _Bad(f"{where} is not a finite number (an integer of {len(str(abs(v)))} digits)") from None
    if not math.isfinite(f):
        raise _Bad(f"{where} is not a finite number ({v})")
    return f


def _sample(s, where: str) -> dict:
    if not isinstance(s, dict):
        raise _Bad(f"{where} is not an object")
    ctx = s.get("context_texts")
    if not isinstance(ctx, list):
        raise _Bad(f"{where}.context_texts is not a list")
    nearest = s.get("nearest", [])
    if not isinstance(nearest, list) or len(nearest) > MAX_NEAREST:
        raise _Bad(f"{where}.nearest is not a list of at most {MAX_NEAREST}")
    near = []
    for j, n in enumerate(nearest):
        w = f"{where}.nearest[{j}]"
        if not isinstance(n, dict):
            raise _Bad(f"{w} is not an object")
        same = n.get("same_article")
        if same is not None and not isinstance(same, bool):
            raise _Bad(f"{w}.same_article is not true/false")
        near.append(
            {
                "text": _text(n.get("text"), f"{w}.text"),
                "article_id": _id(n.get("article_id"), f"{w}.article_id") if n.get("article_id") is not None else "",
                "cosine": _num(n.get("cosine"), f"{w}.cosine"),
                "same_article": same,
            }
        )
    category = s.get("category")
    if not isinstance(category, str) or not category:
        raise _Bad(f"{where}.category is not a string")
    title = s.get("title")
    return {
        "title": title if isinstance(title, str) else None,
        "cosine_to_last": _num(s.get("cosine_to_last"), f"{where}.cosine_to_last", optional=True),
        "article_id": _id(s.get("article_id"), f"{where}.article_id"),
        "target_position": _int(s.get("target_position"), f"{where}.target_position"),
        "context_texts": [_text(t, f"{where}.context_texts[{i}]") for i, t in enumerate(ctx)],
        "target_text": _text(s.get("target_text"), f"{where}.target_text"),
        "cosine": _num(s.get("cosine"), f"{where}.cosine"),
        "baseline_cosine": _num(s.get("baseline_cosine"), f"{where}.baseline_cosine", optional=True),
        "nearest": near,
        "category": category,
    }


def check_samples(doc) -> dict:
    """The samples document, checked (``_Bad`` names the first problem) and normalised."""
    if not isinstance(doc, dict):
        raise _Bad("not a JSON object")
    if doc.get("schema") != SCHEMA:
        raise _Bad(f"schema {doc.get('schema')!r}, expected {SCHEMA!r}")
    if doc.get("version") != VERSION:
        raise _Bad(f"version {doc.get('version')!r}, this lvm reads {VERSION}")
    ckpts = doc.get("checkpoints")
    if not isinstance(ckpts, dict):
        raise _Bad("checkpoints is not an object")
    out = {}
    for name, entry in ckpts.items():
        w = f"checkpoints[{name!r}]"
        if not isinstance(entry, dict):
            raise _Bad(f"{w} is not an object")
        counts = entry.get("category_counts", {})
        if not isinstance(counts, dict):
            raise _Bad(f"{w}.category_counts is not an object")
        lists = {}
        for kind in ("worst", "random"):
            lst = entry.get(kind, [])
            if not isinstance(lst, list) or len(lst) > MAX_SAMPLES:
                raise _Bad(f"{w}.{kind} is not a list of at most {MAX_SAMPLES:,} samples")
            lists[kind] = [_sample(s, f"{w}.{kind}[{i}]") for i, s in enumerate(lst)]
        baseline = entry.get("baseline")
        out[str(name)] = {
            "baseline": _text(baseline, f"{w}.baseline") if baseline is not None else None,
            "category_counts": {str(k): _int(v, f"{w}.category_counts[{k!r}]") for k, v in counts.items()},
            **lists,
        }
    rules = doc.get("category_rules")
    rules = rules if isinstance(rules, dict) else {}
    errors = doc.get("errors")
    errors = errors if isinstance(errors, dict) else {}

    def count(key: str) -> int | None:
        v = doc.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    return {
        "dataset": str(doc.get("dataset") or "?"),
        "dataset_fingerprint": str(doc.get("dataset_fingerprint") or ""),
        "split": str(doc.get("split") or "val"),
        "n": count("n"),
        "seed": count("seed"),
        "category_rules": {str(k): v for k, v in rules.items() if isinstance(v, str)},
        "counts_over": doc.get("counts_over") if isinstance(doc.get("counts_over"), str) else None,
        "errors": {str(k): str(v) for k, v in errors.items()},
        "checkpoints": out,
    }


def read_samples(path: Path) -> dict:
    """A samples file, checked; ``LvmError`` (one line) when it cannot be read or is damaged."""
    from lvm.schemas import read_json

    doc = read_json(Path(path), "a gate samples file")
    try:
        return check_samples(doc)
    except _Bad as exc:
        raise LvmError(f"{path}: not a usable samples file: {exc}") from None
    except RecursionError:
        raise LvmError(f"{path}: not a usable samples file: nested too deeply") from None
    except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:  # never the leaderboard's end
        raise LvmError(f"{path}: not a usable samples file ({type(exc).__name__}: {str(exc)[:120]})") from None


def dataset_mismatches(docs: list[tuple[Path, dict]], identities: dict[str, str]) -> list[str]:
    """One warning per samples file whose dataset (content hash) is none of the results' datasets."""
    return [
        f"warning: {p}: its dataset ({d['dataset']}, content hash {d['dataset_fingerprint'][:12]}…) is not one "
        "these results were gated on; shown anyway"
        for p, d in docs
        if identities and d["dataset_fingerprint"] and d["dataset_fingerprint"] not in identities
    ]


def load_samples(results_paths: list[Path], explicit: Path | None = None) -> tuple[list[tuple[Path, dict]], list[str]]:
    """(samples documents, warnings): ``explicit`` when given, else each results file's
    ``<stem>.samples.json`` that exists. A file that cannot be used is one warning, never an error;
    an explicit file that does not exist is one too."""
    paths = [Path(explicit)] if explicit is not None else [samples_path(p) for p in results_paths]
    docs, warnings = [], []
    for p in dict.fromkeys(paths):
        if explicit is None and not p.exists():
            continue
        try:
            docs.append((p, read_samples(p)))
        except LvmError as exc:
            warnings.append(f"warning: {exc}; the leaderboard is written without its samples")
    return docs, warnings


# ----------------------------------------------------------------------------- shared


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _cos(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def _counts(entry: dict) -> list[tuple[str, int]]:
    counts = entry["category_counts"]
    names = [c for c in CATEGORIES if c in counts] + sorted(set(counts) - set(CATEGORIES))
    return [(c, counts[c]) for c in names]


def _rule(doc: dict, category: str) -> str:
    return doc["category_rules"].get(category) or CATEGORY_TEXT.get(category, "")


def _where(doc: dict, identities: dict[str, str] | None = None) -> str:
    """Where the samples come from. The file names its dataset by content hash; the leaderboard shows
    a dataset by its identity (``lvm.report.rows.dataset_identity``), so a content hash the results
    know is shown as that identity: one dataset, one hash."""
    fp = doc["dataset_fingerprint"]
    known = (identities or {}).get(fp)
    if known:
        shown = f" ({known[:12]}…)"
    elif fp and identities:
        shown = f" (content hash {fp[:12]}…: not a dataset of these results)"
    else:
        shown = f" ({fp[:12]}…)" if fp else ""
    return (
        f"dataset {doc['dataset']}"
        + shown
        + f", split {doc['split']}"
        + (f", n = {doc['n']} per list" if doc["n"] is not None else "")
        + (f", seed {doc['seed']}" if doc["seed"] is not None else "")
    )


# ----------------------------------------------------------------------------- html


def _cell(text: str, n: int = TEXT_CHARS, cls: str | None = None) -> str:
    """A text cell: escaped, shortened to ``n``, the whole text in its title."""
    short = _short(text, n)
    title = f' title="{html.escape(text)}"' if short != " ".join(text.split()) else ""
    c = f' class="{cls}"' if cls else ""
    return f"<td{c}{title}>{html.escape(short)}</td>"


def _nearest_html(s: dict) -> str:
    items = []
    for n in s["nearest"]:
        mark = "same article" if n["same_article"] else "other article" if n["same_article"] is False else ""
        full = f"{n['text']} ({n['cosine']:.3f}; {mark}, article {n['article_id']})"
        short = f"{_cos(n['cosine'])} {'≡' if n['same_article'] else '≠'} {_short(n['text'], 80)}"
        items.append(f'<li title="{html.escape(full)}">{html.escape(short)}</li>')
    return '<td><ol style="margin:0;padding-left:16px">' + "".join(items) + "</ol></td>"


def _sample_rows(samples: list[dict]) -> str:
    rows = []
    for i, s in enumerate(samples, start=1):
        ctx = s["context_texts"]
        tail = ctx[-1] if ctx else ""
        full_ctx = " ⏎ ".join(ctx)
        base = s["baseline_cosine"]
        delta = "" if base is None else f"{s['cosine'] - base:+.3f}"
        rows.append(
            "<tr>"
            f'<td class="num">{i}</td>'
            f'<td title="{html.escape(s["title"] or "")}">{html.escape(s["article_id"])} @ {s["target_position"]}</td>'
            f'<td title="{html.escape(full_ctx)}">{html.escape(_short(tail, TEXT_CHARS))}'
            + (f" <i>(+{len(ctx) - 1} earlier)</i>" if len(ctx) > 1 else "")
            + "</td>"
            + _cell(s["target_text"])
            + f'<td class="num">{_cos(s["cosine"])}</td><td class="num">{_cos(base)}</td>'
            f'<td class="num">{delta}</td><td class="num">{_cos(s["cosine_to_last"])}</td>'
            + _nearest_html(s)
            + f"<td>{html.escape(s['category'])}</td></tr>"
        )
    return "".join(rows)


SAMPLE_HEAD = (
    "<tr><th>#</th><th>article @ pos</th><th>last context chunk</th><th>target</th><th>cos</th>"
    "<th>baseline cos</th><th>Δ</th><th>cos to last</th>"
    "<th>nearest bank texts (cos, ≡ same / ≠ other article)</th><th>category</th></tr>"
)


def _anchor(name: str) -> str:
    return "samples-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def render_samples_html(docs: list[tuple[Path, dict]], identities: dict[str, str] | None = None) -> list[str]:
    """The page's "Failure-mode samples" section: one closed ``<details>`` per checkpoint
    (``identities``: content hash -> dataset identity, of the results shown)."""
    if not docs:
        return []
    out = ['<h2 id="samples">Failure-mode samples</h2>']
    for path, doc in docs:
        out.append(
            f'<p class="meta">From <code>{html.escape(str(path))}</code>: {html.escape(_where(doc, identities))}. '
            "The worst sequences (lowest cos to the target) and random ones, per checkpoint; hover a text for "
            "all of it"
            + (f"; category counts over {html.escape(doc['counts_over'])}" if doc["counts_over"] else "")
            + ".</p>"
        )
        for name, why in sorted(doc["errors"].items()):
            out.append(f'<p class="meta">No samples recorded for {html.escape(name)}: {html.escape(why)}</p>')
        for name, entry in sorted(doc["checkpoints"].items()):
            counts = _counts(entry)
            summary = " · ".join(f"{c} {n}" for c, n in counts)
            base = entry["baseline"]
            out.append(
                f'<details class="samples" id="{html.escape(_anchor(name))}"><summary>{html.escape(name)}: '
                f"{len(entry['worst'])} worst, {len(entry['random'])} random"
                + (f" · {html.escape(summary)}" if summary else "")
                + (f" · baseline {html.escape(base)}" if base else "")
                + "</summary>"
            )
            if counts:
                out.append(
                    '<table class="samples"><tr><th>category</th><th>count</th><th>meaning</th></tr>'
                    + "".join(
                        f'<tr><td>{html.escape(c)}</td><td class="num">{n}</td>'
                        f"<td>{html.escape(_rule(doc, c))}</td></tr>"
                        for c, n in counts
                    )
                    + "</table>"
                )
            for kind, title in (("worst", "Worst"), ("random", "Random")):
                if entry[kind]:
                    out.append(
                        f"<p><b>{title}</b> ({len(entry[kind])})</p>"
                        f'<table class="samples">{SAMPLE_HEAD}{_sample_rows(entry[kind])}</table>'
                    )
            out.append("</details>")
    return out


# ----------------------------------------------------------------------------- markdown


def _md(text: str, n: int = MD_TEXT_CHARS) -> str:
    """A text in a Markdown table cell: one line, shortened, pipes and markup escaped."""
    short = _short(text, n)
    for ch in ("\\", "|", "*", "_", "`", "<", ">", "[", "]"):
        short = short.replace(ch, "\\" + ch)
    return short


def render_samples_markdown(
    docs: list[tuple[Path, dict]], generated: str, identities: dict[str, str] | None = None
) -> str:
    """``samples.md``: per checkpoint the category counts, the ``MD_WORST`` worst samples with their
    context tail, target and nearest texts, and where the rest is (the JSON file)."""
    lines = ["# Failure-mode samples", "", f"Generated {generated}.", ""]
    for path, doc in docs:
        lines += [f"From `{path}`: {_where(doc, identities)}.", ""]
        lines += [f"Not recorded for `{k}`: {v}" for k, v in sorted(doc["errors"].items())]
        lines += [""] if doc["errors"] else []
        for name, entry in sorted(doc["checkpoints"].items()):
            lines += [f"## {name}", ""]
            if entry["baseline"]:
                lines += [f"Best null baseline: {entry['baseline']}.", ""]
            counts = _counts(entry)
            if counts:
                lines += ["| category | count | meaning |", "|---|---|---|"]
                lines += [f"| {c} | {n} | {_md(_rule(doc, c), 300)} |" for c, n in counts]
                lines.append("")
            worst = entry["worst"][:MD_WORST]
            if worst:
                lines += [
                    f"The {len(worst)} worst of {len(entry['worst'])}:",
                    "",
                    "| # | article @ pos | context tail | target | cos | baseline cos | nearest | category |",
                    "|---|---|---|---|---|---|---|---|",
                ]
                for i, s in enumerate(worst, start=1):
                    tail = s["context_texts"][-1] if s["context_texts"] else ""
                    near = "; ".join(
                        f"{n['cosine']:.3f} {'same' if n['same_article'] else 'other'}: {_md(n['text'], 80)}"
                        for n in s["nearest"]
                    )
                    lines.append(
                        f"| {i} | {_md(s['article_id'], 40)} @ {s['target_position']} | {_md(tail)} | "
                        f"{_md(s['target_text'])} | {_cos(s['cosine'])} | {_cos(s['baseline_cosine'])} | "
                        f"{near} | {_md(s['category'], 40)} |"
                    )
                lines.append("")
            rest = len(entry["worst"]) - len(worst) + len(entry["random"])
            lines += [
                f"The rest ({rest} more: the other worst and the random samples, full texts) is in `{path}`.",
                "",
            ]
    return "\n".join(lines) + "\n"
