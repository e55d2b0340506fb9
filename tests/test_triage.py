"""Data triage: the coherence report finds the diluted segment, the filter restores coherence."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import unit_rows
from lvm import gates as G
from lvm.data.datasets import open_dataset, write_dataset
from lvm.data.splits import SPLIT_NAMES
from lvm.data.synth import Segment, SynthConfig, synth_dataset
from lvm.errors import LvmError
from lvm.io import atomic_dir, write_json_atomic
from lvm.profiles import load_profile
from lvm.triage import (
    coherence_report,
    filter_dataset,
    format_filter_summary,
    format_report,
    plot_histograms,
)

SEGMENT = Segment(400, 600, 0.15, 0.1)  # the seeds' dilution, scaled down: articles 400-599 at 0.15 vs 0.48
N_CHUNKS, DIM = 15_000, 64  # ~1,000 articles of ~15 chunks


def same_encoder(path: Path, like: Path) -> Path:
    """Declare ``path`` encoded by ``like``'s encoder (a new data drop, same encoder as the baseline).

    Synthetic fingerprints name the space (dim and the space's seed); these fixtures use two seeds
    on purpose (two draws), so the diluted set is declared to share the clean set's space.
    meta.json is outside the content hash.
    """
    meta = json.loads((path / "meta.json").read_text())
    meta["encoder"] = json.loads((like / "meta.json").read_text())["encoder"]
    write_json_atomic(path / "meta.json", meta)
    return path


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triage") / "clean"
    synth_dataset(SynthConfig(n_chunks=N_CHUNKS, dim=DIM, seed=1), out, progress=False)
    return out


@pytest.fixture(scope="module")
def diluted(tmp_path_factory, clean) -> Path:
    out = tmp_path_factory.mktemp("triage") / "diluted"
    synth_dataset(SynthConfig(n_chunks=N_CHUNKS, dim=DIM, segments=(SEGMENT,), seed=2), out, progress=False)
    return same_encoder(out, clean)


def test_report_flags_drift_red_and_ranks_the_diluted_segment_first(diluted, clean, tmp_path):
    rep = coherence_report(diluted, clean, segment_width=200)
    assert rep["verdicts"]["coherence_drift"]["status"] == G.RED
    assert rep["drift"]["mean_drift_rel"] < -0.05 and rep["drift"]["low_share_delta_pp"] > 5
    top = rep["segments"]["rows"][0]
    assert (top["first_article"], top["last_article"]) == (400, 599)
    assert top["drop_vs_baseline"] > 0.2 and rep["segments"]["reference"] == "baseline mean"
    assert all(r["drop_vs_baseline"] < 0.05 for r in rep["segments"]["rows"][1:])
    # side-by-side 0.1 bins: both columns sum to 1 and the change is in percentage points
    hist = rep["histogram"]
    assert len(hist) == 10 and sum(h["dataset"] for h in hist) == pytest.approx(1) == sum(h["baseline"] for h in hist)
    assert all(h["change_pp"] == pytest.approx(100 * (h["dataset"] - h["baseline"])) for h in hist)
    assert rep["dataset"]["stats"] == G.coherence_stats(open_dataset(diluted))  # the gate's own statistics
    text = format_report(rep)
    assert "| Range | base | new | Change |" in text and "| 400-599 |" in text and "coherence_drift: RED" in text
    png = plot_histograms(rep, tmp_path / "plots" / "coherence.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(png.parent.glob(".*tmp*"))


def test_report_by_topic_and_default_segments(diluted):
    by_topic = coherence_report(diluted, by="topic")
    assert by_topic["segments"]["rows"][0]["segment"] == "segment-0"  # synth names the diluted range's topic
    assert by_topic["verdicts"]["coherence_drift"]["status"] == G.SKIP
    ten = coherence_report(diluted)["segments"]
    assert ten["count"] == 10 and ten["reference"] == "dataset mean" and len(ten["rows"]) == 10
    top = ten["rows"][0]
    assert top["first_article"] <= 599 and top["last_article"] >= 400


def test_filter_raises_coherence_and_writes_a_gated_dataset(diluted, clean, tmp_path):
    out = tmp_path / "filtered"
    summary = filter_dataset(diluted, out, baseline_path=clean)
    parent, ds = open_dataset(diluted), open_dataset(out)
    b, a = summary["before"], summary["after"]
    assert a["mean_coherence"] > b["mean_coherence"] + 0.02 and a["low_share"] < b["low_share"]
    assert abs(a["gap_to_baseline_pct"]) < abs(b["gap_to_baseline_pct"])
    assert a["chunks"] == ds.n_chunks < parent.n_chunks
    assert json.loads((out / "filter_summary.json").read_text())["after"] == a
    measured = G.coherence_stats(ds)  # the summary's "after" is what the gate measures on the output
    assert (a["mean_coherence"], a["low_share"]) == (
        pytest.approx(measured["mean"]),
        pytest.approx(measured["low_share"]),
    )
    assert a["sequences"] == sum(len(ds.sequences(s, 5, 1)) for s in SPLIT_NAMES) >= summary["sequences"]["kept"]
    assert "| mean coherence |" in format_filter_summary(summary)

    # mask: one bool per parent sequence (train, val, ood order); kept = score >= 0.35 by definition
    views = [parent.sequences(s, 5, 1) for s in SPLIT_NAMES]
    mask = np.load(out / "mask.npy")
    assert mask.dtype == bool and len(mask) == sum(map(len, views)) == summary["sequences"]["total"]
    assert mask.sum() == summary["sequences"]["kept"]
    t = np.concatenate([v.targets for v in views])
    n = np.concatenate([v.n_context for v in views])
    rng = np.random.default_rng(0)
    for i in rng.choice(len(t), 300, replace=False):  # score = mean cos of the n pairs in context + target
        chunks = parent.vectors[t[i] - n[i] : t[i] + 1].astype(np.float64)
        score = (chunks[:-1] * chunks[1:]).sum(axis=1).mean()
        assert mask[i] == (score >= 0.35)
    # every kept sequence is a sequence of the filtered dataset (same context and target vectors)
    new_seq = {
        ds.vectors[j - k : j + 1].tobytes()
        for v in (ds.sequences(s, 5, 1) for s in SPLIT_NAMES)
        for j, k in zip(v.targets, v.n_context, strict=False)
    }
    assert all(parent.vectors[t[i] - n[i] : t[i] + 1].tobytes() in new_seq for i in np.flatnonzero(mask))

    # provenance: parent, settings, same vector space and profile
    meta = ds.meta
    assert meta["parent"] == {
        "path": str(Path(diluted).resolve()),
        "relative": os.path.relpath(Path(diluted).resolve(), out.resolve()),
        "content_hash": parent.content_hash,
        "rows": "rows.npy",
    }
    assert not (out / "vectors.npy").exists() and not (out / "texts.jsonl").exists()  # a view: nothing copied
    assert meta["filter"]["min_coherence"] == 0.35 and meta["filter"]["blocklist"] == "List of|Disambiguation|Category:"
    assert ds.encoder_fingerprint == parent.encoder_fingerprint and meta["gate_profile"] == parent.meta["gate_profile"]
    assert meta["synthetic"] == parent.meta["synthetic"]
    ds.verify()

    # runs keep their parent article's split: article-disjoint, and the data gates pass
    split_of = {}
    for art in ds.articles:
        root, run = art["source_id"].rsplit("#", 1)
        assert split_of.setdefault(root, art["split"]) == art["split"]
    prof = load_profile("gtr-t5-wiki")
    results = [
        G.coherence(ds, prof),
        G.split_hygiene(ds, prof),
        G.normalization(ds, prof),
        G.alignment(ds.sequences("train", 5, 1), prof),
    ]
    assert [r.status for r in results if r.status == G.RED] == [], [r.message for r in results]
    assert results[1].metrics["shared_articles"] == 0


def test_filtered_synthetic_dataset_keeps_its_vector_space(clean, tmp_path):
    prof = load_profile("gtr-t5-wiki")
    filter_dataset(clean, tmp_path / "filtered")
    ds = open_dataset(tmp_path / "filtered")
    assert ds.encoder_fingerprint == open_dataset(clean).encoder_fingerprint
    assert G.encoder_fingerprint(ds, prof).status == G.GREEN  # synthetic params inherited: fingerprint reproduces


def test_filter_failure_leaves_nothing_behind(clean, tmp_path, monkeypatch):
    import lvm.triage

    def broken(*args, **kwargs):
        raise LvmError("disk full")

    monkeypatch.setattr(lvm.triage, "write_dataset", broken)
    with pytest.raises(LvmError, match="disk full"):
        filter_dataset(clean, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def _titled_dataset(out: Path, titles: list[str], texts: list[list[str]]) -> Path:
    """A dataset with the given article titles and chunk texts; coherent vectors (cos ≈ 0.9)."""
    rng = np.random.default_rng(0)
    article_id = np.repeat(np.arange(len(texts)), [len(t) for t in texts])
    position = np.concatenate([np.arange(len(t)) for t in texts])
    vec = unit_rows(rng, len(texts), 16)[article_id] + 0.2 * unit_rows(rng, len(article_id), 16)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    with atomic_dir(out) as tmp:
        np.save(tmp / "vectors.npy", vec.astype(np.float32))
        write_dataset(
            tmp,
            article_id=article_id,
            position=position,
            texts=[s for t in texts for s in t],
            articles=[{"source_id": f"s{i}", "title": title} for i, title in enumerate(titles)],
            article_split=np.zeros(len(titles), dtype=np.int8),
            meta={"encoder": {"fingerprint": "test"}},
        )
    return out


def test_blocklist_drops_matching_titles_and_texts(tmp_path):
    titles = ["List of rivers", "Paris", "Category:Physics", "Mercury (disambiguation)", "Jazz", "Chess"]
    texts = [[f"{title} sentence {p}." for p in range(4)] for title in titles]
    texts[5][2] = "Disambiguation page for chess variants."  # a chunk text matches: the article goes
    src = _titled_dataset(tmp_path / "titled", titles, texts)
    summary = filter_dataset(src, tmp_path / "out", min_coherence=-1.0)
    kept = [a["title"] for a in open_dataset(tmp_path / "out").articles]
    assert kept == ["Paris", "Mercury (disambiguation)", "Jazz"]  # the regex is case-sensitive, as given
    assert summary["blocklisted_articles"] == 3 and summary["sequences"]["dropped_blocklist"] == 9
    assert not np.load(tmp_path / "out" / "mask.npy")[[0, 1, 2, 6, 7, 8, 15, 16, 17]].any()
    everything = filter_dataset(src, tmp_path / "all", min_coherence=-1.0, blocklist=None)
    assert everything["sequences"]["kept"] == everything["sequences"]["total"] == 18


def test_bad_input_is_one_lvm_error_and_writes_nothing(clean, tmp_path):
    with pytest.raises(LvmError, match="not found"):
        coherence_report(tmp_path / "missing")
    with pytest.raises(LvmError, match="not found"):
        filter_dataset(tmp_path / "missing", tmp_path / "out")
    other = tmp_path / "other-seed"
    synth_dataset(SynthConfig(n_chunks=2_000, dim=DIM, seed=3), other, progress=False)
    with pytest.raises(LvmError, match="different encoders .*fingerprint .* vs .*refusing to compare"):
        coherence_report(clean, other)
    with pytest.raises(LvmError, match="different encoders"):
        filter_dataset(clean, tmp_path / "out", baseline_path=other)
    with pytest.raises(LvmError, match="not a valid regular expression"):
        filter_dataset(clean, tmp_path / "out", blocklist="List of (")
    with pytest.raises(LvmError, match="keeps no sequence"):
        filter_dataset(clean, tmp_path / "out", min_coherence=2.0)
    with pytest.raises(LvmError, match="is the dataset being filtered"):
        filter_dataset(clean, clean)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(LvmError, match="not a dataset folder"):
        filter_dataset(clean, tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(LvmError, match="segment width"):
        coherence_report(clean, segment_width=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "other-seed"]  # nothing half-written


def _timed(record_property, name: str, fn):
    t = time.perf_counter()
    fn()
    record_property(name, round(time.perf_counter() - t, 3))  # recorded, not asserted


def test_timing_default_dataset(default_dataset, tmp_path, record_property):
    _timed(record_property, "coherence_report_s", lambda: coherence_report(default_dataset))
    _timed(record_property, "filter_s", lambda: filter_dataset(default_dataset, tmp_path / "filtered"))


def test_timing_726k_if_present(tmp_path, record_property):
    big = Path("/tmp/syn726")
    if not (big / "meta.json").is_file():
        pytest.skip("no 726k x 768 dataset at /tmp/syn726 (not created by tests)")
    _timed(record_property, "coherence_report_726k_s", lambda: coherence_report(big))
    _timed(record_property, "filter_726k_s", lambda: filter_dataset(big, tmp_path / "filtered"))


def test_a_diluted_synthetic_set_and_its_clean_twin_share_a_space(tmp_path):
    """The synthetic fingerprint names the space (dim, seed), not the content: twins compare directly."""
    a, b = tmp_path / "clean", tmp_path / "diluted"
    synth_dataset(SynthConfig(n_chunks=3000, dim=32, seed=5), a, progress=False)
    synth_dataset(
        SynthConfig(n_chunks=3000, dim=32, seed=5, segments=(Segment(50, 120, 0.1, 0.05),)), b, progress=False
    )
    assert open_dataset(a).encoder_fingerprint == open_dataset(b).encoder_fingerprint
    rep = coherence_report(b, a)  # no "different encoders" refusal
    assert rep["drift"]["mean_drift_rel"] < 0
    other = tmp_path / "other-space"
    synth_dataset(SynthConfig(n_chunks=3000, dim=32, seed=6), other, progress=False)
    assert open_dataset(other).encoder_fingerprint != open_dataset(a).encoder_fingerprint


def test_a_filtered_dataset_is_a_view_of_its_parent(diluted, tmp_path):
    """No vector is copied: rows.npy maps the view's chunks to the parent's; moved together it still
    opens; a missing or changed parent is one line; --materialize writes the same data standalone."""
    import shutil

    view, copy = tmp_path / "view", tmp_path / "copy"
    filter_dataset(diluted, view)
    filter_dataset(diluted, copy, materialize=True)
    v, c, parent = open_dataset(view), open_dataset(copy), open_dataset(diluted)
    rows = np.load(view / "rows.npy")
    assert v.parent is not None and c.parent is None and (copy / "vectors.npy").is_file()
    np.testing.assert_array_equal(np.asarray(v.vectors), np.asarray(c.vectors))
    np.testing.assert_array_equal(np.asarray(v.vectors), np.asarray(parent.vectors)[rows])
    np.testing.assert_array_equal(v.vectors[rows[:50] * 0 + 3], c.vectors[np.full(50, 3)])  # scattered reads
    assert v.texts == c.texts and v.adjacency.tolist() == c.adjacency.tolist()
    x, mask, y = v.sequences("val", 5, 1).batch(np.arange(20))
    x2, mask2, y2 = c.sequences("val", 5, 1).batch(np.arange(20))
    assert (x == x2).all() and (mask == mask2).all() and (y == y2).all()
    assert v.identity != parent.identity and v.content_hash != c.content_hash
    v.verify()
    du = sum(f.stat().st_size for f in view.iterdir())
    assert du < 0.5 * (copy / "vectors.npy").stat().st_size  # the view holds indices, not vectors

    # a view of a view reads through both; the pair moved together still opens (relative path)
    filter_dataset(view, tmp_path / "view2", min_coherence=0.4)
    vv = open_dataset(tmp_path / "view2")
    assert vv.parent.parent is not None and np.isfinite(vv.adjacency).all()
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copytree(diluted, moved / "parent")
    shutil.copytree(view, moved / "kids" / "view")
    meta = json.loads((moved / "kids" / "view" / "meta.json").read_text())
    meta["parent"]["relative"] = "../../parent"
    meta["parent"]["path"] = str(tmp_path / "nowhere")
    write_json_atomic(moved / "kids" / "view" / "meta.json", meta)
    np.testing.assert_array_equal(np.asarray(open_dataset(moved / "kids" / "view").vectors), np.asarray(v.vectors))

    # parent gone, parent changed, garbage rows: one line each
    shutil.rmtree(moved / "parent")
    with pytest.raises(LvmError, match="reads its vectors from .* which is not there.*--materialize"):
        open_dataset(moved / "kids" / "view")
    shutil.copytree(diluted, moved / "parent")
    pmeta = json.loads((moved / "parent" / "meta.json").read_text())
    pmeta["content_hash"] = "0" * 64
    write_json_atomic(moved / "parent" / "meta.json", pmeta)
    with pytest.raises(LvmError, match="changed since the view was written"):
        open_dataset(moved / "kids" / "view")
    for bad in (rows[:-1], np.r_[rows[:-1], 10**9], rows.astype(np.float32), rows.reshape(1, -1)):
        np.save(view / "rows.npy", bad)
        with pytest.raises(LvmError, match="rows.npy"):
            open_dataset(view)


def test_view_cycles_are_refused(clean, tmp_path):
    filter_dataset(clean, tmp_path / "view")
    meta = json.loads((tmp_path / "view" / "meta.json").read_text())
    meta["parent"].update(relative=".", path=str(tmp_path / "view"))
    write_json_atomic(tmp_path / "view" / "meta.json", meta)
    with pytest.raises(LvmError, match="nested more than"):
        open_dataset(tmp_path / "view")


def test_texts_are_read_like_json(tmp_path):
    """The plain-string fast path of texts.jsonl gives json.loads' values, and refuses what it refuses."""
    from lvm.schemas import read_json_strings

    texts = ["plain", "", 'quote " inside', "back\\slash", "tab\there", "é☃ \u2028 x", "line\nbreak", "🙂"]
    p = tmp_path / "texts.jsonl"
    p.write_text("".join(json.dumps(t, ensure_ascii=a) + "\n" for t in texts for a in (True, False)))
    assert read_json_strings(p, "t") == [t for t in texts for _ in (0, 1)]
    for bad in ('"raw\ttab"\n', '"unterminated\n', '"a"b"\n', "\n", "plain\n", '"\n"""\n', '"\n', '\n""\n'):
        p.write_text('"ok"\n' + bad)
        with pytest.raises(LvmError, match=r"texts.jsonl:2: not valid JSON"):
            read_json_strings(p, "t")
    p.write_text("".join(json.dumps(t) + "\n" for t in ["a", "", "b c", "é"]))  # the whole-file fast path
    assert read_json_strings(p, "t") == ["a", "", "b c", "é"]
    p.write_text('"ok"\n3\n')  # valid JSON, not a string: check_texts refuses it
    assert read_json_strings(p, "t") == ["ok", 3]
