import numpy as np
import pytest

from conftest import unit_rows
from lvm.data.datasets import open_dataset
from lvm.data.index import build_index, load_index, load_or_build_index, save_index
from lvm.errors import LvmError


def test_small_bank_gets_an_exact_index_that_finds_every_vector(small_dataset):
    ds = open_dataset(small_dataset)
    index, params = load_index(ds)
    assert params.kind == "flat-ip" and params.ntotal == ds.n_chunks
    _, ids = index.search(np.ascontiguousarray(ds.vectors, dtype=np.float32), 1)
    assert (ids[:, 0] == np.arange(ds.n_chunks)).mean() == 1.0


def test_ivf_index_records_nlist_and_nprobe_and_recalls_well():
    vecs = unit_rows(np.random.default_rng(0), 4000, 32)
    index, params = build_index(vecs, kind="ivf-flat-ip", nprobe=16)
    assert params.kind == "ivf-flat-ip" and params.nlist == round(4 * np.sqrt(4000)) and params.nprobe == 16
    _, ids = index.search(vecs[:500], 5)
    assert (ids == np.arange(500)[:, None]).any(axis=1).mean() > 0.9


def test_a_stale_index_is_refused_and_rebuilt(small_dataset, tmp_path):
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(small_dataset, copy)
    ds = open_dataset(copy)
    index, params = build_index(unit_rows(np.random.default_rng(1), 10, ds.dim))
    params.dataset_hash = "something-else"
    save_index(copy, index, params)
    with pytest.raises(LvmError, match="stale index"):
        load_index(ds)
    index, params = load_or_build_index(ds)
    assert params.ntotal == ds.n_chunks and params.dataset_hash == ds.content_hash


def test_sq8_index_with_exact_rerank_matches_the_exact_search(tmp_path):
    """ivf-sq8-ip (a quarter of the bank's bytes) searched through the re-rank gives the exact
    similarities and the exact leading order of an exhaustive search over the same lists."""
    from lvm.data.index import RerankedIndex

    rng = np.random.default_rng(3)
    vecs = unit_rows(rng, 6000, 48)
    vecs[100] = vecs[7]  # an exact twin
    sq8, params = build_index(vecs, kind="ivf-sq8-ip", nlist=20, nprobe=20)  # every list probed: exhaustive
    flat, _ = build_index(vecs, kind="flat-ip")
    assert params.kind == "ivf-sq8-ip" and params.nlist == 20
    q = unit_rows(rng, 300, 48)
    q[:50] = vecs[:50] + 0.01 * unit_rows(rng, 50, 48)
    want_s, want_i = flat.search(q, 10)
    got_s, got_i = RerankedIndex(sq8, vecs).search(q, 10)
    np.testing.assert_allclose(got_s, np.einsum("qd,qkd->qk", q, vecs[got_i]), atol=1e-6)  # exact scores
    assert (np.diff(got_s, axis=1) <= 0).all()  # in exact order
    assert (got_i[:, 0] == want_i[:, 0]).all() or (got_s[:, 0] == want_s[:, 0]).all()  # the exact top hit
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_i, want_i, strict=True)])
    assert overlap > 0.99, overlap  # the exact top 10 (random 48-D vectors: dense near-ties the codes may swap)
    raw_s, _ = sq8.search(q, 10)
    assert np.abs(raw_s - want_s).max() > 1e-4  # the codes alone are not exact: the re-rank is doing work
    s2, i2 = RerankedIndex(sq8, vecs).search(q[:5], 1000)  # k beyond the re-rank depth
    assert i2.shape == (5, 1000) and (i2 >= 0).all() and (np.diff(s2[:, :16], axis=1) <= 1e-6).all()
