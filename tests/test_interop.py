import os
from pathlib import Path

import numpy as np
import pytest

from conftest import run_lvm, unit_rows
from lvm.data.datasets import open_dataset
from lvm.data.interop import import_npz, read_npz
from lvm.errors import LvmError

CTX = 5


def legacy_rows(lengths, dim=16, seed=0):
    """The seeds' format: one row per full-context window, each vector stored up to ctx+1 times."""
    rng = np.random.default_rng(seed)
    bank = {a: unit_rows(rng, n, dim) for a, n in enumerate(lengths)}
    ctxs, tgts, arts, poss = [], [], [], []
    for a, vecs in bank.items():
        for p in range(CTX, len(vecs)):
            ctxs.append(vecs[p - CTX : p])
            tgts.append(vecs[p])
            arts.append(100 + a)  # source ids need not start at 0
            poss.append(p)
    return bank, np.stack(ctxs), np.stack(tgts), np.array(arts), np.array(poss)


LENGTHS = [8, 12, 6, 9, 15, 7, 10, 11, 6, 13]


def check_round_trip(out: Path, bank):
    ds = open_dataset(out)
    assert ds.n_chunks == sum(len(v) for v in bank.values())  # every chunk stored once
    for a, vecs in bank.items():
        row = ds.articles[a]
        assert row["source_id"] == str(100 + a) and row["n_chunks"] == len(vecs)
        np.testing.assert_array_equal(ds.vectors[row["first_chunk"] : row["first_chunk"] + len(vecs)], vecs)
    view = ds.sequences("train", ctx=CTX, min_ctx=CTX)
    x, mask, y = view.batch(np.arange(len(view)))
    assert mask.all()
    np.testing.assert_array_equal(x[:, -1], ds.vectors[view.targets - 1])
    return ds


def test_import_rebuilds_the_bank_and_sequences(tmp_path):
    bank, c, t, a, p = legacy_rows(LENGTHS)
    np.savez(tmp_path / "seq.npz", context_sequences=c, target_vectors=t, article_ids=a, target_positions=p)
    meta = import_npz(tmp_path / "seq.npz", tmp_path / "ds", progress=False)
    assert (
        meta["import"]["rows"] == len(t)
        and meta["import"]["duplicates_removed"] == len(t) * (CTX + 1) - meta["counts"]["chunks"]
    )
    ds = check_round_trip(tmp_path / "ds", bank)
    assert (ds.split[ds.article_id == len(LENGTHS) - 1] == 2).all()  # OOD = highest source ids
    res = run_lvm("inspect", str(tmp_path / "ds"))
    assert res.returncode == 0 and "fingerprint  None" in res.stdout, res.stderr


def test_import_without_positions_derives_them_from_the_sliding_windows(tmp_path):
    bank, c, t, a, _ = legacy_rows(LENGTHS, seed=1)
    np.savez(tmp_path / "seq.npz", context_sequences=c, target_vectors=t, article_ids=a)
    import_npz(tmp_path / "seq.npz", tmp_path / "ds", progress=False)
    check_round_trip(tmp_path / "ds", bank)


def test_metadata_dicts_are_read_without_unsafe_pickle(tmp_path):
    bank, c, t, a, p = legacy_rows(LENGTHS, seed=2)
    meta = np.array(
        [
            {"article_index": int(ai), "chunk_index": int(pi), "text": f"s{ai}-{pi}", "title": f"T{ai}"}
            for ai, pi in zip(a, p, strict=False)
        ],
        dtype=object,
    )
    np.savez(tmp_path / "seq.npz", context_sequences=c, target_vectors=t, metadata=meta)
    import_npz(tmp_path / "seq.npz", tmp_path / "ds", progress=False)
    ds = check_round_trip(tmp_path / "ds", bank)
    assert ds.texts[ds.articles[0]["first_chunk"] + CTX] == f"s100-{CTX}" and ds.articles[0]["title"] == "T100"


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    _, c, t, a, _ = legacy_rows(LENGTHS)
    evil = np.empty(1, dtype=object)
    evil[0] = _Exploit(marker)
    np.savez(tmp_path / "evil.npz", context_sequences=c, target_vectors=t, article_ids=a, metadata=evil)
    with pytest.raises(LvmError, match="refusing to unpickle"):
        read_npz(tmp_path / "evil.npz")
    res = run_lvm("import-npz", str(tmp_path / "evil.npz"), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "refusing to unpickle" in res.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_inconsistent_rows_and_missing_article_ids_are_refused(tmp_path):
    _, c, t, a, p = legacy_rows(LENGTHS)
    np.savez(tmp_path / "noart.npz", context_sequences=c, target_vectors=t)
    with pytest.raises(LvmError, match="article-disjoint"):
        import_npz(tmp_path / "noart.npz", tmp_path / "x", progress=False)
    np.savez(tmp_path / "gap.npz", context_sequences=c, target_vectors=t, article_ids=a, target_positions=p + 1)
    with pytest.raises(LvmError, match="article 100 has gaps"):
        import_npz(tmp_path / "gap.npz", tmp_path / "x", progress=False)
    off_by_one = p.copy()
    off_by_one[3] += 1  # one row claims its target sits where the next row's target is
    np.savez(
        tmp_path / "shifted.npz", context_sequences=c, target_vectors=t, article_ids=a, target_positions=off_by_one
    )
    with pytest.raises(LvmError, match="different vectors"):
        import_npz(tmp_path / "shifted.npz", tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def stream_rows(lengths, dim=16, seed=0):
    """The seeds' real builder: one window slid over all articles back to back, so windows near an
    article's start cross into the previous article; the target's article id, no positions."""
    rng = np.random.default_rng(seed)
    bank = {a: unit_rows(rng, n, dim) for a, n in enumerate(lengths)}
    stream = np.concatenate(list(bank.values()))
    owner = np.concatenate([np.full(n, 100 + a) for a, n in enumerate(lengths)])
    idx = np.arange(CTX, len(stream))
    ctxs = np.stack([stream[i - CTX : i] for i in idx])
    return bank, stream, ctxs, stream[idx], owner[idx]


def test_the_seeds_stream_layout_rebuilds_the_stream_and_gates_within_article_windows(tmp_path):
    bank, stream, ctxs, tgts, arts = stream_rows(LENGTHS)
    npz = tmp_path / "stream.npz"
    np.savez(npz, context_sequences=ctxs, target_vectors=tgts, article_ids=arts)  # no positions
    meta = import_npz(npz, tmp_path / "ds", progress=False)
    ds = open_dataset(tmp_path / "ds")
    np.testing.assert_array_equal(np.asarray(ds.vectors), stream)  # the stream, exactly, each chunk once
    for a, vecs in bank.items():  # articles and positions rebuilt
        row = next(r for r in ds.articles if r["source_id"] == str(100 + a))
        assert row["n_chunks"] == len(vecs)
        assert list(ds.position[row["first_chunk"] : row["first_chunk"] + len(vecs)]) == list(range(len(vecs)))
    crossing = sum(
        min(CTX, n) for n in LENGTHS[1:]
    )  # every window whose first context chunk is in the previous article
    assert meta["import"]["cross_article_windows"] == crossing and meta["import"]["layout"] == "stream"
    assert meta["sequences"] == {"ctx": CTX, "min_ctx": CTX, "why": "the file holds full-context windows only"}
    # the gated sequences are exactly the within-article windows, none invented with shorter contexts
    n_views = sum(len(ds.sequences(s, CTX, CTX)) for s in ("train", "val", "ood"))
    assert n_views == meta["import"]["within_article_windows"] == len(tgts) - crossing


def test_import_records_a_real_fingerprint_when_the_encoder_is_installed(tmp_path, small_dataset):
    """--encoder-name of an encoder available here re-encodes the probes: the fingerprint gate can verify."""
    small = open_dataset(small_dataset)
    view = small.sequences("train", 2, 2)  # its articles are 3-7 sentences long
    x, _, y = view.batch(np.arange(len(view)))
    np.savez(
        tmp_path / "s.npz",
        context_sequences=x,
        target_vectors=y,
        article_ids=view.article_ids,
        target_positions=small.position[view.targets],
    )
    meta = import_npz(tmp_path / "s.npz", tmp_path / "ds", encoder_name="all-MiniLM-L6-v2", progress=False)
    assert meta["encoder"]["fingerprint"] == small.encoder_fingerprint


def test_training_on_imported_windows_uses_their_context_unless_told(tmp_path):
    """min_ctx defaults to the file's ctx: no sequences the file never had are invented."""
    import json

    _, _, ctxs, tgts, arts = stream_rows([12, 14, 11, 13, 15, 12, 16, 14, 13, 12] * 3)
    np.savez(tmp_path / "s.npz", context_sequences=ctxs, target_vectors=tgts, article_ids=arts)
    import_npz(tmp_path / "s.npz", tmp_path / "ds", progress=False)
    res = run_lvm(
        "train",
        "--dataset",
        str(tmp_path / "ds"),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--no-kill-switches",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["ctx"], cfg["min_ctx"]) == (CTX, CTX)


def left_padded_rows(ds, n_articles: int = 150, ctx: int = CTX):
    """Real text's windows as the seeds' exporter writes them with min_ctx = 1: every target from position 1
    on, its context left-padded with zero vectors at the article's start; no positions in the file."""
    ctxs, tgts, arts, bank = [], [], [], {}
    for row in ds.articles[:n_articles]:
        first, n = row["first_chunk"], row["n_chunks"]
        if n < 2:
            continue
        vecs = np.asarray(ds.vectors[first : first + n], dtype=np.float32)
        bank[len(bank)] = vecs
        for p in range(1, n):
            window = np.zeros((ctx, vecs.shape[1]), np.float32)
            real = vecs[max(0, p - ctx) : p]
            window[ctx - len(real) :] = real
            ctxs.append(window)
            tgts.append(vecs[p])
            arts.append(100 + len(bank) - 1)
    return bank, np.stack(ctxs), np.stack(tgts), np.array(arts)


@pytest.mark.slow
def test_left_padded_rows_of_real_text_import_without_positions(tmp_path, default_dataset):
    """Issue 21: a clean .npz of left-padded contexts (short contexts at article starts) was refused with
    "article 0 has gaps in its chunk positions"; the order is rebuilt from the windows instead."""
    bank, c, t, a = left_padded_rows(open_dataset(default_dataset))
    np.savez(tmp_path / "padded.npz", context_sequences=c, target_vectors=t, article_ids=a)
    meta = import_npz(tmp_path / "padded.npz", tmp_path / "ds", progress=False)
    ds = open_dataset(tmp_path / "ds")
    assert meta["counts"]["chunks"] == ds.n_chunks == sum(len(v) for v in bank.values())
    for i, vecs in bank.items():
        row = ds.articles[i]
        assert row["n_chunks"] == len(vecs)
        np.testing.assert_array_equal(ds.vectors[row["first_chunk"] : row["first_chunk"] + len(vecs)], vecs)
    assert len(ds.sequences("all", CTX, 1)) == len(t)  # every row is a sequence again

    # truly ambiguous: a padded row placed after a full one of the same article
    ids, counts = np.unique(a, return_counts=True)
    rows = np.flatnonzero(a == ids[np.argmax(counts)])  # the longest article
    assert len(rows) > CTX + 1
    swapped = np.arange(len(a))
    swapped[rows[0]], swapped[rows[-1]] = rows[-1], rows[0]
    np.savez(tmp_path / "bad.npz", context_sequences=c[swapped], target_vectors=t[swapped], article_ids=a[swapped])
    with pytest.raises(LvmError, match="not consecutive sliding windows|left-padding and row order disagree"):
        import_npz(tmp_path / "bad.npz", tmp_path / "bad", progress=False)
    # padding that is not on the left
    inner = c.copy()
    inner[rows[-1], 1] = 0.0
    np.savez(tmp_path / "inner.npz", context_sequences=inner, target_vectors=t, article_ids=a)
    with pytest.raises(LvmError, match="padding .* is not on the left"):
        import_npz(tmp_path / "inner.npz", tmp_path / "inner", progress=False)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "inner").exists()
