"""Acceptance on the real default dataset (Wikipedia vital-article leads, packaged MiniLM).

The first run encodes ~36,000 sentences (~2.5 min on 2 cores); the folder is cached and shared
with `make smoke`.
"""

import time

import numpy as np
import pytest

from lvm.data.build import BuildConfig, build_dataset
from lvm.data.datasets import open_dataset
from lvm.metrics import norm_summary

pytestmark = pytest.mark.slow


def test_default_dataset_size_dims_norms_and_splits(default_dataset):
    ds = open_dataset(default_dataset)
    assert ds.n_chunks >= 30_000 and ds.dim == 384
    norms = norm_summary(ds.vectors)
    assert norms["abs_mean_minus_1"] < 1e-4 and norms["std"] < 1e-4 and norms["nonfinite"] == 0
    splits_of_article = {}
    for a, s in zip(ds.article_id.tolist(), ds.split.tolist(), strict=False):
        splits_of_article.setdefault(a, set()).add(s)
    assert all(len(s) == 1 for s in splits_of_article.values())
    assert set(np.unique(ds.split)) == {0, 1, 2}
    assert ds.meta["corpus"]["name"] == "wiki-vital-en"


def test_default_train_split_has_enough_sequences(default_dataset):
    ds = open_dataset(default_dataset)
    view = ds.sequences("train", ctx=5, min_ctx=1)
    assert len(view) >= 15_000
    x, mask, y = view.batch(np.arange(0, len(view), 97))
    assert mask[:, -1].all() and np.allclose(np.linalg.norm(y, axis=1), 1, atol=1e-4)


def test_second_build_reuses_the_cache(default_dataset):
    start = time.perf_counter()
    res = build_dataset(BuildConfig(), default_dataset, progress=False, log=lambda m: None)
    assert res.reused == "dataset"
    assert time.perf_counter() - start < 60  # seconds, not the minutes of a re-encode
