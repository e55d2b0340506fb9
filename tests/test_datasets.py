import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import unit_rows
from lvm.data.build import ChunkTable, chunk_corpus
from lvm.data.chunking import ChunkerConfig
from lvm.data.corpora import Article, Corpus
from lvm.data.datasets import open_dataset, write_dataset
from lvm.data.splits import OOD, TRAIN, VAL, SplitPolicy, assign_splits
from lvm.errors import LvmError
from lvm.io import atomic_dir


def write_table(out: Path, table: ChunkTable, split: np.ndarray, dim: int = 8, seed: int = 0):
    """Write a dataset folder from a chunk table with random unit vectors (indexing tests)."""
    with atomic_dir(out) as tmp:
        np.save(tmp / "vectors.npy", unit_rows(np.random.default_rng(seed), len(table.texts), dim))
        write_dataset(
            tmp,
            article_id=table.article_id,
            position=table.position,
            texts=table.texts,
            articles=table.articles,
            article_split=split,
            meta={"encoder": {}},
        )
    return open_dataset(out)


# Random corpora: articles of 1..12 sentences, each sentence unique so texts identify chunks.
article_lengths = st.lists(st.integers(1, 12), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(article_lengths, st.integers(1, 7), st.data())
def test_every_target_is_the_chunk_right_after_its_last_context(tmp_path_factory, lengths, ctx, data):
    min_ctx = data.draw(st.integers(1, ctx))
    corpus = Corpus(
        "random",
        [
            Article(
                f"art{a}",
                f"Title {a}",
                "",
                text=" ".join(f"Article {a} sentence number {p} is here." for p in range(n)),
            )
            for a, n in enumerate(lengths)
        ],
        "x",
    )
    table = chunk_corpus(corpus, ChunkerConfig(min_chars=5))
    split = assign_splits(
        len(table.articles), [""] * len(table.articles), SplitPolicy(ood_fraction=0.2, val_fraction=0.2)
    )
    ds = write_table(tmp_path_factory.mktemp("prop") / "ds", table, split)
    total = 0
    for name in ("train", "val", "ood"):
        view = ds.sequences(name, ctx=ctx, min_ctx=min_ctx)
        total += len(view)
        if len(view) == 0:
            continue
        idx = np.arange(len(view))
        x, mask, y = view.batch(idx)
        ci = view.context_indices(idx)
        for i in idx:
            t = view.targets[i]
            a, p = int(ds.article_id[t]), int(ds.position[t])
            real = ci[i][mask[i]]
            # the target is sentence p of article a; the context is sentences p-n .. p-1 of article a
            assert ds.texts[t] == f"Article {a} sentence number {p} is here."
            n = min(p, ctx)
            assert n >= min_ctx and len(real) == n and mask[i, -1]
            assert [ds.texts[c] for c in real] == [f"Article {a} sentence number {q} is here." for q in range(p - n, p)]
            assert (ds.article_id[real] == a).all() and ds.split[t] == ds.split[real].max() == ds.split[real].min()
            np.testing.assert_array_equal(x[i][mask[i]], ds.vectors[real])
            assert not x[i][~mask[i]].any()
            np.testing.assert_array_equal(y[i], ds.vectors[t])
    # one sequence per chunk with at least min_ctx predecessors in its article
    assert total == sum(max(0, n - min_ctx) for n in lengths)


@given(st.integers(1, 500), st.floats(0.0, 0.5), st.floats(0.0, 0.5), st.integers(0, 10))
def test_splits_are_article_disjoint_deterministic_and_ood_is_the_last_ids(n, ood, val, seed):
    pol = SplitPolicy(ood_fraction=ood, val_fraction=val, seed=seed)
    try:
        a = assign_splits(n, [""] * n, pol)
    except LvmError:
        return  # tiny n with large fractions may leave no training article: refused, not silent
    assert np.array_equal(a, assign_splits(n, [""] * n, pol))
    n_ood = int((a == OOD).sum())
    assert (a[n - n_ood :] == OOD).all() and not (a[: n - n_ood] == OOD).any()
    assert set(np.unique(a)) <= {TRAIN, VAL, OOD}


def test_topic_policy_holds_out_whole_topics():
    topics = ["Arts", "Science", "Arts", "History", "Science"] * 4
    a = assign_splits(len(topics), topics, SplitPolicy(ood="topics", ood_topics=("Arts",), val_fraction=0.25))
    assert all((s == OOD) == (t == "Arts") for s, t in zip(a, topics, strict=False))
    with pytest.raises(LvmError, match="not in the corpus"):
        assign_splits(len(topics), topics, SplitPolicy(ood="topics", ood_topics=("Sport",)))


def test_small_dataset_built_with_the_real_encoder(small_dataset):
    ds = open_dataset(small_dataset)
    meta = ds.meta
    assert ds.dim == 384 and meta["encoder"]["pipeline"]["pooling"] == "mean"
    assert len(meta["encoder"]["fingerprint"]) == 64
    norms = np.linalg.norm(ds.vectors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)
    # splits: article-disjoint and recorded per chunk and per article
    by_article = {}
    for a, s in zip(ds.article_id.tolist(), ds.split.tolist(), strict=False):
        by_article.setdefault(a, set()).add(s)
    assert all(len(s) == 1 for s in by_article.values())
    assert {row["split"] for row in ds.articles} == {"train", "val", "ood"}
    assert meta["counts"]["chunks"] == len(ds.texts) == ds.n_chunks
    # texts are the real sentences, in order
    first = ds.articles[0]
    assert ds.texts[first["first_chunk"]] == "Mercury is the smallest planet in the Solar System."
    ds.verify()
    # a neighbouring sentence of the same article is closer than a sentence of another topic
    coh = float(ds.vectors[0] @ ds.vectors[1])
    other = float(ds.vectors[0] @ ds.vectors[ds.articles[5]["first_chunk"]])
    assert coh > other


def test_rebuild_reuses_the_dataset_and_a_split_change_reuses_the_vectors(small_dataset, small_corpus, tmp_path):
    from lvm.data.build import BuildConfig, build_dataset

    cfg = BuildConfig(corpus=str(small_corpus), split=SplitPolicy(ood_fraction=0.25, val_fraction=0.2, seed=1))
    again = build_dataset(cfg, small_dataset, progress=False, log=lambda m: None)
    assert again.reused == "dataset"
    before = open_dataset(small_dataset).meta
    changed = build_dataset(
        BuildConfig(corpus=str(small_corpus), split=SplitPolicy(ood="none", val_fraction=0.3)),
        small_dataset,
        progress=False,
        log=lambda m: None,
    )
    assert changed.reused == "vectors" and "encode" not in changed.seconds
    after = open_dataset(small_dataset)
    assert after.meta["vectors_key"] == before["vectors_key"] and after.meta["counts"]["ood_articles"] == 0
    # restore the fixture's split for other tests
    build_dataset(cfg, small_dataset, progress=False, log=lambda m: None)


def test_sequence_views_share_the_bank(small_dataset):
    ds = open_dataset(small_dataset)
    view = ds.sequences("train", ctx=5, min_ctx=1)
    from lvm.data.datasets import VectorBank

    assert isinstance(ds.vectors, VectorBank) and isinstance(ds.vectors._map, np.memmap)
    np.testing.assert_array_equal(ds.vectors[3:7], np.asarray(ds.vectors._map[3:7]))  # file read == mapped view
    # a view holds only index arrays (no [N, ctx, D] copy)
    assert view.targets.nbytes + view.n_context.nbytes < ds.vectors.nbytes
    with pytest.raises(LvmError, match="min_ctx"):
        ds.sequences("train", ctx=2, min_ctx=3)


def test_big_endian_columns_read_as_native(small_dataset, tmp_path):
    """A big-endian .npy is a valid file: the columns come back in native order (torch refuses others)."""
    import shutil

    import torch

    copy = tmp_path / "be"
    shutil.copytree(small_dataset, copy)
    for name in ("article_id", "position", "split"):
        arr = np.load(copy / f"{name}.npy")
        np.save(copy / f"{name}.npy", arr.astype(arr.dtype.newbyteorder(">")))
    with pytest.raises(LvmError, match="article_id.npy, position.npy, split.npy changed"):
        open_dataset(copy)  # other bytes than the content hash names
    reseal(copy)
    ds, ref = open_dataset(copy), open_dataset(small_dataset)
    assert ds.article_id.dtype.isnative and (ds.article_id == ref.article_id).all()
    assert torch.from_numpy(ds.sequences("train", 5, 1).article_ids).numel() > 0


def test_a_tampered_or_truncated_dataset_is_refused(small_dataset, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    with open(copy / "texts.jsonl", "a") as fh:
        fh.write(json.dumps("extra") + "\n")
    with pytest.raises(LvmError, match="content hash"):
        open_dataset(copy).verify()
    np.save(copy / "position.npy", np.load(copy / "position.npy")[:-1])
    with pytest.raises(LvmError, match="disagree"):
        open_dataset(copy)
    (copy / "meta.json").unlink()
    with pytest.raises(LvmError, match="not a dataset folder"):
        open_dataset(copy)


def test_chunk_order_is_validated(tmp_path):
    table = ChunkTable(["a", "b", "c"], np.array([0, 1, 0]), np.array([0, 0, 1], dtype=np.int32), [{}, {}])
    with pytest.raises(LvmError, match="contiguously"):
        write_table(tmp_path / "x", table, np.zeros(2, dtype=np.int8))
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_finiteness_is_checked_on_every_open(small_dataset, tmp_path):
    """The sketch pass of every open is the finiteness check; a NaN is named before the hash."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    shutil.rmtree(copy / "cache", ignore_errors=True)
    open_dataset(copy)
    assert (copy / "cache" / "verified.json").is_file()  # recorded: later opens skip the full hash
    vec = np.load(copy / "vectors.npy")
    vec[3, 0] = np.nan
    np.save(copy / "vectors.npy", vec)  # same size, new mtime
    with pytest.raises(LvmError, match="vector 3 is NaN"):
        open_dataset(copy)
    reseal(copy)  # even with the content hash recomputed to match
    with pytest.raises(LvmError, match="vector 3 is NaN"):
        open_dataset(copy)


def reseal(folder: Path) -> Path:
    """A dataset folder edited on purpose, made self-consistent: content hash recomputed, record dropped."""
    import shutil

    from lvm.data.datasets import _HASHED_FILES
    from lvm.io import sha256_files

    meta = json.loads((folder / "meta.json").read_text())
    meta["content_hash"] = sha256_files([folder / f for f in _HASHED_FILES])
    (folder / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(folder / "cache", ignore_errors=True)
    return folder
