"""The two report entry points: ``lvm leaderboard`` and ``lvm compare``.

``lvm leaderboard RESULTS... --out DIR`` reads one or more results files (``lvm.report.results``,
schema ``lvm-gate-results`` v2, typed rows ``lvm.schemas.ResultRow``) into ranked rows
(``lvm.report.rows``), draws the plots (``lvm.report.plots``) and writes, each atomically
(``lvm.report.render``):

- ``leaderboard.md``: one table per comparability group, fit for a pull request;
- ``leaderboard.csv``: every row with every column (one ``gate_<id>`` status column per gate);
- ``leaderboard.html``: a static, self-contained page (one inline script: click a header to sort)
  with cells coloured by status, a compact gates column and, under each checkpoint that is not
  GREEN, a line naming those gates with their reasons; the training curves, the adjacency-coherence
  histograms and the offset-sweep profiles;
- with a samples file (``<results stem>.samples.json`` beside a results file, or ``--samples``):
  a collapsible failure-mode section per checkpoint on the page and ``samples.md``
  (``lvm.report.samples_view``). A damaged samples file is one warning; the leaderboard is still
  written (the results file is the authority).

It never re-runs a gate. ``lvm compare NEW BASELINE`` reads both files through the same rows and runs
the one regression verdict (``lvm.report.regression.check``, on their plain dicts) with the profile's
``[regression]`` tolerances, prints its Markdown and exits with its code: 1 on a RED regression or
when NEW itself holds a RED gate. Rows line up by checkpoint name (its model card's, see
``lvm.report.recorder``), not by the folder a checkpoint was gated from.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lvm.errors import LvmError
from lvm.io import utc_timestamp, write_text_atomic
from lvm.report.plots import plot_coherence, plot_offset_sweep, plot_training_curves
from lvm.report.regression import check
from lvm.report.render import COLUMNS, DISPLAY, GATE_ORDER, render_csv, render_html, render_markdown
from lvm.report.results import check_output_folder, read_results
from lvm.report.rows import (
    RETRIEVAL_METRICS,
    LeaderboardRow,
    collect_rows,
    dataset_identity,
    load_documents,
    loss_summary,
)
from lvm.report.samples_view import dataset_mismatches, load_samples, render_samples_html, render_samples_markdown

__all__ = [
    "COLUMNS",
    "DISPLAY",
    "GATE_ORDER",
    "RETRIEVAL_METRICS",
    "LeaderboardRow",
    "build_leaderboard",
    "collect_rows",
    "compare_main",
    "leaderboard_main",
    "loss_summary",
    "plot_coherence",
    "plot_offset_sweep",
    "plot_training_curves",
    "render_csv",
    "render_html",
    "render_markdown",
]

PLOT_CAPTIONS = (
    ("Training curves", "Mean cos(ŷ, y) per epoch from each run's training_history.json: val solid, train dashed."),
    (
        "Adjacency coherence",
        "Share of within-article adjacent chunk pairs per cosine bin (coherence gate), one series per dataset.",
    ),
    (
        "Offset sweep",
        "Mean cos(ŷ, chunk at target+k) on val minus the model's P(0) (offset_sweep gate); "
        "k = 0 is the true next chunk, k = −1 the last context chunk.",
    ),
)


def build_leaderboard(results_paths: list[Path], out_dir: Path, samples: Path | None = None) -> dict:
    """Read results files and write ``leaderboard.md``, ``.csv`` and ``.html`` into ``out_dir``
    (and ``samples.md`` when there are failure-mode samples: ``samples``, else each results file's
    ``<stem>.samples.json`` that exists).

    Returns ``{"groups", "rows", "files", "plots", "samples", "warnings"}``: the comparability groups,
    every row (models and baselines, ranked within their group, as ``LeaderboardRow.to_dict()``), the
    paths written, which plots had data, the samples files shown and one line per samples file that
    could not be used.
    """
    out_dir = check_output_folder(out_dir, "leaderboard")  # before any work: one line when it cannot be written
    paths = [Path(p) for p in results_paths]
    sources = load_documents(paths)  # typed rows (lvm.schemas.ResultRow), read once
    groups, rows, hists = collect_rows(paths, sources)
    generated = utc_timestamp()
    pngs = (plot_training_curves(rows, groups), plot_coherence(hists), plot_offset_sweep(rows, groups))
    plots = [(title, png, caption) for (title, caption), png in zip(PLOT_CAPTIONS, pngs, strict=False)]
    sample_docs, warnings = load_samples(paths, Path(samples) if samples is not None else None)
    identities = {  # content hash -> identity: a samples file names its dataset by the first
        r.dataset_hash: dataset_identity(r.comparability, r.dataset_hash) or r.dataset_hash
        for _, doc in sources
        for r in doc.results
        if r.dataset_hash
    }
    warnings += dataset_mismatches(sample_docs, identities)
    files = {"md": out_dir / "leaderboard.md", "csv": out_dir / "leaderboard.csv", "html": out_dir / "leaderboard.html"}
    texts = {
        "md": render_markdown(groups, sources, generated),
        "csv": render_csv(rows),
        "html": render_html(groups, rows, plots, sources, generated, render_samples_html(sample_docs, identities)),
    }
    if sample_docs:
        files["samples_md"] = out_dir / "samples.md"
        texts["samples_md"] = render_samples_markdown(sample_docs, generated, identities)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for kind, text in texts.items():
            if files[kind].is_dir():
                raise LvmError(f"{files[kind]} is a folder; the leaderboard writes a file there")
            write_text_atomic(files[kind], text)
    except OSError as exc:
        raise LvmError(f"{out_dir}: the leaderboard cannot be written ({exc.strerror or type(exc).__name__})") from None
    return {
        "groups": [{k: g[k] for k in ("number", "key", "comparability", "datasets")} for g in groups],
        "rows": [r.to_dict() for r in rows],
        "files": files,
        "plots": {title: png is not None for title, png, _ in plots},
        "samples": [str(p) for p, _ in sample_docs],
        "warnings": warnings,
    }


def leaderboard_main(results_paths: list[str | Path], out_dir: str | Path, samples: str | Path | None = None) -> int:
    """``lvm leaderboard``: build the leaderboard and print where it went (a samples file that
    could not be used: one warning line on stderr)."""
    res = build_leaderboard([Path(p) for p in results_paths], Path(out_dir), Path(samples) if samples else None)
    for w in res["warnings"]:
        print(f"lvm leaderboard: {w}", file=sys.stderr)
    n_models = sum(r["kind"] == "model" for r in res["rows"])
    n_base = len(res["rows"]) - n_models
    print(
        f"leaderboard: {n_models} checkpoint row(s), {n_base} baseline row(s) "
        f"in {len(res['groups'])} comparability group(s)"
    )
    for f in res["files"].values():
        print(f"  {f}")
    return 0


def compare_main(new: Path, baseline: Path, profile_name: str | None = None, allow_missing: bool = False) -> int:
    """``lvm compare NEW BASELINE``: Markdown table, verdict, regressed gates; 1 on RED, else 0.

    Tolerances come from the ``[regression]`` table of ``profile_name``, else of the profile
    recorded in NEW.
    """
    from lvm.profiles import load_profile

    new_doc, base_doc = read_results(new), read_results(baseline)
    name = profile_name or (new_doc.get("profile") or {}).get("name")
    if not name or name == "unknown":
        raise LvmError(f"{new} records no gate profile; pass one with --gate-profile")
    profile = load_profile(name)
    verdict = check(
        new_doc,
        base_doc,
        profile.data.get("regression"),
        new_name=Path(new).name,
        base_name=Path(baseline).name,
        profile_name=profile.name,
        allow_missing=allow_missing,
    )
    print(verdict.markdown())
    if verdict.exit_code:
        print(f"lvm compare: {verdict.summary.replace('**', '')}", file=sys.stderr)
    return verdict.exit_code
