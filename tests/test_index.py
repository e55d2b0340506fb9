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
