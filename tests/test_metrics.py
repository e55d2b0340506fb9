"""Direct tests of every public function in lvm/metrics.py.

Each function gets a tiny array whose answer is worked out by hand from the formula in its
docstring (the arithmetic is in the comments), plus hypothesis properties where the formula
implies one (symmetry, bounds, invariance to row order or scale, agreement with a brute-force
version of the formula). Blockwise code paths are exercised by shrinking ``metrics.BLOCK``.
"""

from __future__ import annotations

import inspect
import math
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lvm import metrics as M

PROPS = settings(max_examples=50, deadline=None)

E0 = [1.0, 0.0]
E1 = [0.0, 1.0]
D = [0.6, 0.8]  # unit: 0.36 + 0.64 = 1; cos(E0, D) = 0.6, cos(E1, D) = 0.8


# ----------------------------------------------------------------------------- strategies

# |x| < 1e-3 snapped to 0: no subnormal products, whose rounding would break exact scaling identities
finite = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False, width=64).map(
    lambda v: v if abs(v) >= 1e-3 else 0.0
)


@st.composite
def matrices(draw, min_rows=1, max_rows=12, min_dim=1, max_dim=6):
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(min_dim, max_dim))
    return draw(hnp.arrays(np.float64, (n, d), elements=finite))


@st.composite
def unit_rows(draw, min_rows=1, max_rows=12, min_dim=1, max_dim=6):
    """Rows scaled to norm 1 (rows too short to normalise stably are rejected)."""
    x = draw(matrices(min_rows, max_rows, min_dim, max_dim))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    assume(bool((norms > 1e-3).all()))
    return x / norms


@st.composite
def unit_pairs(draw, min_rows=1, max_rows=12):
    """Two unit-row matrices of one shape."""
    a = draw(unit_rows(min_rows, max_rows))
    x = draw(hnp.arrays(np.float64, a.shape, elements=finite))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    assume(bool((norms > 1e-3).all()))
    return a, x / norms


def permutations_of(n):
    return st.permutations(list(range(n))).map(np.array)


# ----------------------------------------------------------------------------- coverage


TESTED = {
    "vector_norms",
    "norm_summary",
    "adjacency_coherence",
    "coherence_summary",
    "bootstrap_ci",
    "cluster_bootstrap",
    "paired_difference",
    "neighbour_indices",
    "similarity_profile",
    "rowwise_cos",
    "effective_rank",
    "mean_pairwise_cos",
    "other_article_cos",
    "retrieval_metrics",
    "row_hashes",
    "duplicate_canon",
    "ranks_of",
    "contrastive_accuracy",
    "latency_percentiles",
    "latency_ratio",
    "latency_rounds",
    "anchor_order_margins",
    "order_permutation_null",
    "cluster_bootstrap_difference",
}


# Functions that other work was adding to lvm.metrics while these tests were written: their tests
# skip until the function exists there. Empty this set once they have landed.
PENDING: set[str] = set()


def needs(name):
    return pytest.mark.skipif(not hasattr(M, name), reason=f"lvm.metrics has no {name} yet")


def test_every_public_function_has_direct_tests():
    public = {
        name
        for name, fn in inspect.getmembers(M, inspect.isfunction)
        if not name.startswith("_") and fn.__module__ == M.__name__
    }
    assert public - TESTED == set(), "new public metric without a direct test in tests/test_metrics.py"
    assert TESTED - PENDING - public == set(), "TESTED names a function that lvm.metrics no longer has"


# ----------------------------------------------------------------------------- vector_norms


def test_vector_norms_known():
    v = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [-2.0, 0.0]], dtype=np.float32)
    out = M.vector_norms(v)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [5.0, 0.0, 1.0, 2.0])  # sqrt(9 + 16) = 5


def test_vector_norms_empty():
    assert M.vector_norms(np.zeros((0, 3), dtype=np.float32)).shape == (0,)


def test_vector_norms_blockwise_matches_one_block(monkeypatch):
    rng = np.random.default_rng(1)
    v = rng.normal(size=(7, 3)).astype(np.float32)
    whole = M.vector_norms(v)
    monkeypatch.setattr(M, "BLOCK", 2)  # blocks of 2, 2, 2, 1
    np.testing.assert_allclose(M.vector_norms(v), whole)
    np.testing.assert_allclose(whole, np.linalg.norm(v.astype(np.float64), axis=1))


@PROPS
@given(matrices(), st.floats(0.01, 100.0))
def test_vector_norms_homogeneous_and_nonnegative(x, c):
    n = M.vector_norms(x)
    assert (n >= 0).all()
    np.testing.assert_allclose(M.vector_norms(c * x), c * n, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- norm_summary


def test_norm_summary_known():
    # norms 5, 0, NaN, inf, 1 -> finite ones {5, 0, 1}: mean 2, |2 - 1| = 1,
    # std = sqrt(((5-2)² + (0-2)² + (1-2)²) / 3) = sqrt(14/3), min 0, max 5; 2 non-finite, 1 zero
    v = np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, 0.0], [np.inf, 1.0], [0.0, 1.0]])
    s = M.norm_summary(v)
    assert s["mean"] == pytest.approx(2.0)
    assert s["abs_mean_minus_1"] == pytest.approx(1.0)
    assert s["std"] == pytest.approx(math.sqrt(14 / 3))
    assert s["min"] == 0.0
    assert s["max"] == pytest.approx(5.0)
    assert s["nonfinite"] == 2
    assert s["zero"] == 1


def test_norm_summary_unit_rows():
    s = M.norm_summary(np.array([E0, E1, D]))
    assert s["mean"] == pytest.approx(1.0)
    assert s["abs_mean_minus_1"] == pytest.approx(0.0, abs=1e-12)
    assert s["std"] == pytest.approx(0.0, abs=1e-12)
    assert (s["nonfinite"], s["zero"]) == (0, 0)


def test_norm_summary_all_nonfinite():
    s = M.norm_summary(np.array([[np.nan, 1.0], [np.inf, 0.0]]))
    for key in ("mean", "abs_mean_minus_1", "std", "min", "max"):
        assert math.isnan(s[key])
    assert s["nonfinite"] == 2
    assert s["zero"] == 0


@PROPS
@given(matrices(), permutations_of(12))
def test_norm_summary_row_order_invariant(x, perm):
    perm = perm[perm < len(x)]
    a, b = M.norm_summary(x), M.norm_summary(x[perm])
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12)
    assert a["min"] <= a["mean"] + 1e-9 and a["mean"] <= a["max"] + 1e-9


# ----------------------------------------------------------------------------- adjacency_coherence


def test_adjacency_coherence_known():
    # rows E0, D, E1 | E0 in articles 0, 0, 0 | 1: pairs (0,1) = 0.6, (1,2) = 0.8; (2,3) straddles
    v = np.array([E0, D, E1, E0], dtype=np.float32)
    out = M.adjacency_coherence(v, np.array([0, 0, 0, 1]))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [0.6, 0.8], rtol=1e-6)


def test_adjacency_coherence_degenerate():
    assert M.adjacency_coherence(np.zeros((0, 2), np.float32), np.zeros(0, int)).shape == (0,)
    assert M.adjacency_coherence(np.array([E0], np.float32), np.array([3])).shape == (0,)
    # every chunk its own article: no pair
    assert M.adjacency_coherence(np.array([E0, E1, D], np.float32), np.array([0, 1, 2])).shape == (0,)


def test_adjacency_coherence_across_block_boundaries(monkeypatch):
    rng = np.random.default_rng(2)
    v = rng.normal(size=(11, 4)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    art = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3])
    naive = [float(v[t].astype(np.float64) @ v[t + 1]) for t in range(10) if art[t] == art[t + 1]]
    monkeypatch.setattr(M, "BLOCK", 3)  # pairs (2,3), (5,6), (8,9) sit on block edges
    np.testing.assert_allclose(M.adjacency_coherence(v, art), naive, rtol=1e-5, atol=1e-6)


@PROPS
@given(unit_rows(min_rows=2), st.data())
def test_adjacency_coherence_bounds_and_count(v, data):
    art = np.sort(data.draw(hnp.arrays(np.int64, len(v), elements=st.integers(0, 3))))
    out = M.adjacency_coherence(v, art)
    assert len(out) == int((art[1:] == art[:-1]).sum())
    assert ((out >= -1 - 1e-5) & (out <= 1 + 1e-5)).all()
    # reversing the chunk order within the bank reverses the pairs; cos is symmetric
    np.testing.assert_allclose(M.adjacency_coherence(v[::-1], art[::-1]), out[::-1], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- coherence_summary


def test_coherence_summary_empty():
    assert M.coherence_summary(np.array([])) == {"n_pairs": 0}


def test_coherence_summary_known():
    cos = np.array([-0.2, 0.05, 0.25, 0.5, 1.0])
    s = M.coherence_summary(cos)
    assert s["n_pairs"] == 5
    assert s["mean"] == pytest.approx(0.32)  # 1.6 / 5
    # squared deviations from 0.32: .2704 + .0729 + .0049 + .0324 + .4624 = .843
    assert s["std"] == pytest.approx(math.sqrt(0.843 / 5))
    assert s["p10"] == pytest.approx(-0.1)  # position 0.4: -0.2 + 0.4 * 0.25
    assert s["p50"] == pytest.approx(0.25)
    assert s["p90"] == pytest.approx(0.8)  # position 3.6: 0.5 + 0.6 * 0.5
    assert s["low_share"] == pytest.approx(0.6)  # -0.2, 0.05, 0.25 < 0.30
    assert s["low_threshold"] == M.LOW_COHERENCE == 0.30
    h = s["histogram"]
    assert list(h) == [f"[{i / 10:.1f},{(i + 1) / 10:.1f})" for i in range(10)]
    # clipped to [0, 0.999999]: 0 and 0.05 -> first bin, 0.25 -> [0.2,0.3), 0.5 -> [0.5,0.6), 1.0 -> last
    expected = dict.fromkeys(h, 0.0)
    expected.update({"[0.0,0.1)": 0.4, "[0.2,0.3)": 0.2, "[0.5,0.6)": 0.2, "[0.9,1.0)": 0.2})
    assert h == pytest.approx(expected)


def test_coherence_summary_custom_threshold():
    s = M.coherence_summary(np.array([-0.2, 0.05, 0.25, 0.5, 1.0]), low=0.6)
    assert s["low_share"] == pytest.approx(0.8)
    assert s["low_threshold"] == 0.6


@PROPS
@given(hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(-1.0, 1.0)), st.randoms())
def test_coherence_summary_properties(cos, random):
    s = M.coherence_summary(cos)
    assert sum(s["histogram"].values()) == pytest.approx(1.0)
    assert all(0.0 <= share <= 1.0 for share in s["histogram"].values())
    assert 0.0 <= s["low_share"] <= 1.0
    assert s["p10"] <= s["p50"] + 1e-12 and s["p50"] <= s["p90"] + 1e-12
    assert -1.0 - 1e-12 <= s["mean"] <= 1.0 + 1e-12
    shuffled = cos.copy()
    random.shuffle(shuffled)
    t = M.coherence_summary(shuffled)
    for key in ("n_pairs", "p10", "p50", "p90", "low_share"):
        assert t[key] == pytest.approx(s[key])
    assert t["histogram"] == pytest.approx(s["histogram"])


# ----------------------------------------------------------------------------- bootstrap_ci


def test_bootstrap_ci_empty_is_nan():
    lo, hi = M.bootstrap_ci(np.array([]))
    assert math.isnan(lo) and math.isnan(hi)


def test_bootstrap_ci_constant_and_single_value():
    assert M.bootstrap_ci(np.full(9, 0.25)) == pytest.approx((0.25, 0.25))
    assert M.bootstrap_ci(np.array([3.0])) == pytest.approx((3.0, 3.0))


def test_bootstrap_ci_two_values():
    # means of n=2 resamples of {0, 1} take the values 0, 0.5, 1 with p = 1/4, 1/2, 1/4:
    # the 2.5th percentile is 0 and the 97.5th is 1 for any reasonable number of resamples
    assert M.bootstrap_ci(np.array([0.0, 1.0]), n_boot=2000) == (0.0, 1.0)


def test_bootstrap_ci_deterministic_per_seed_and_brackets_the_mean():
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 1.0, size=400)
    a = M.bootstrap_ci(x, n_boot=250, seed=5)  # 250: a last block of 50 resamples
    assert a == M.bootstrap_ci(x, n_boot=250, seed=5)
    assert a != M.bootstrap_ci(x, n_boot=250, seed=6)
    lo, hi = a
    assert lo < x.mean() < hi
    # the CI of a mean shrinks like 1/sqrt(n): about 2 * 1.96 * sd / sqrt(400) = 0.196 wide
    assert 0.12 < hi - lo < 0.28


@PROPS
@given(
    hnp.arrays(np.float64, st.integers(1, 30), elements=finite),
    st.floats(-100, 100),
    st.floats(0.1, 10),
    st.integers(0, 2**32 - 1),
)
def test_bootstrap_ci_bounds_and_equivariance(x, shift, scale, seed):
    lo, hi = M.bootstrap_ci(x, n_boot=200, seed=seed)
    assert x.min() - 1e-9 <= lo <= hi <= x.max() + 1e-9  # a mean of a resample lies within the data
    # the resampled indices depend only on the seed and N: the CI moves with the data
    lo2, hi2 = M.bootstrap_ci(scale * x + shift, n_boot=200, seed=seed)
    assert lo2 == pytest.approx(scale * lo + shift, abs=1e-7)
    assert hi2 == pytest.approx(scale * hi + shift, abs=1e-7)
    # a larger alpha takes inner percentiles of the same resampled means
    lo3, hi3 = M.bootstrap_ci(x, n_boot=200, alpha=0.5, seed=seed)
    assert lo - 1e-12 <= lo3 <= hi3 <= hi + 1e-12


# ----------------------------------------------------------------------------- cluster_bootstrap


def test_cluster_bootstrap_empty():
    r = M.cluster_bootstrap(np.array([]), np.array([]))
    assert math.isnan(r["mean"]) and math.isnan(r["ci_low"]) and math.isnan(r["ci_high"])
    assert (r["n"], r["clusters"], r["n_eff"]) == (0, 0, 0.0)


def test_cluster_bootstrap_known():
    # clusters a = {1, 2}, b = {3, 10}: S = (3, 13), n_c = (2, 2). A resample draws 2 clusters:
    # w = (2,0), (1,1), (0,2) with p = 1/4, 1/2, 1/4 -> means 1.5, 4, 6.5, so the 95 % CI is (1.5, 6.5)
    r = M.cluster_bootstrap(np.array([1.0, 2.0, 3.0, 10.0]), np.array(["a", "a", "b", "b"]), n_boot=2000)
    assert r["mean"] == pytest.approx(4.0)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((1.5, 6.5))
    assert (r["n"], r["clusters"]) == (4, 2)
    # Var(values) = (1 + 4 + 9 + 100)/4 - 16 = 12.5; Var(means) ≈ 2.5² · 1/2 = 3.125 -> n_eff ≈ 4
    assert 3.0 < r["n_eff"] <= 4.0


def test_cluster_bootstrap_repeated_values_are_worth_one_item_per_cluster():
    # two articles of three identical items: S = (0, 3), n_c = (3, 3); means 0, 0.5, 1 with
    # p = 1/4, 1/2, 1/4: Var(means) ≈ 1/8 and Var(values) = 1/4 -> n_eff ≈ 2 (the clusters), not 6
    r = M.cluster_bootstrap(np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), np.array([7, 7, 7, 9, 9, 9]), n_boot=4000)
    assert r["mean"] == pytest.approx(0.5)
    assert (r["ci_low"], r["ci_high"]) == (0.0, 1.0)
    assert r["n_eff"] == pytest.approx(2.0, rel=0.15)
    assert (r["n"], r["clusters"]) == (6, 2)


def test_cluster_bootstrap_constant_and_singletons():
    r = M.cluster_bootstrap(np.full(5, 0.25), np.array([0, 0, 1, 2, 2]))
    assert (r["mean"], r["ci_low"], r["ci_high"]) == (0.25, 0.25, 0.25)
    assert r["n_eff"] == 5.0  # no spread in the resampled means: every item counts
    # one item per cluster, iid values: the ordinary bootstrap, worth about n items
    x = np.random.default_rng(7).normal(size=300)
    r = M.cluster_bootstrap(x, np.arange(300), n_boot=1000, seed=2)
    assert 0.75 * 300 < r["n_eff"] <= 300
    assert r["ci_low"] < x.mean() < r["ci_high"]
    lo, hi = M.bootstrap_ci(x, n_boot=1000, seed=2)
    assert r["ci_high"] - r["ci_low"] == pytest.approx(hi - lo, rel=0.2)


def test_cluster_bootstrap_constant_inexact_values():
    r = M.cluster_bootstrap(np.full(5, 0.3), np.array([0, 0, 1, 2, 2]))
    assert r["n_eff"] == 5.0


@PROPS
@given(st.data(), st.integers(0, 2**32 - 1), st.floats(-100, 100))
def test_cluster_bootstrap_properties(data, seed, shift):
    n = data.draw(st.integers(1, 25))
    x = data.draw(hnp.arrays(np.float64, n, elements=finite))
    clusters = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, 5)))
    r = M.cluster_bootstrap(x, clusters, n_boot=200, seed=seed)
    labels = np.unique(clusters)
    cluster_means = [x[clusters == c].mean() for c in labels]
    # a resample's mean Σ w_c S_c / Σ w_c n_c is a weighted mean of cluster means
    assert min(cluster_means) - 1e-9 <= r["ci_low"] <= r["ci_high"] <= max(cluster_means) + 1e-9
    assert r["mean"] == pytest.approx(x.mean())
    assert (r["n"], r["clusters"]) == (n, len(labels))
    assert 0.0 <= r["n_eff"] <= n
    assert r == M.cluster_bootstrap(x, clusters, n_boot=200, seed=seed)
    # only the grouping matters: relabelling the clusters in the same order changes nothing
    assert r == M.cluster_bootstrap(x, clusters * 10 - 3, n_boot=200, seed=seed)
    # the weights depend only on the seed and the number of clusters: the CI moves with the data
    s = M.cluster_bootstrap(x + shift, clusters, n_boot=200, seed=seed)
    assert s["ci_low"] == pytest.approx(r["ci_low"] + shift, abs=1e-7)
    assert s["ci_high"] == pytest.approx(r["ci_high"] + shift, abs=1e-7)


# ----------------------------------------------------------------------------- paired_difference


def test_paired_difference_known():
    # d = (3-1, 5-2, 7-3) = (2, 3, 4): mean 3
    r = M.paired_difference(np.array([3.0, 5.0, 7.0]), np.array([1.0, 2.0, 3.0]), n_boot=300, seed=1)
    assert r["mean"] == pytest.approx(3.0)
    assert r["n"] == 3
    assert (r["ci_low"], r["ci_high"]) == M.bootstrap_ci(np.array([2.0, 3.0, 4.0]), 300, 0.05, 1)
    assert 2.0 <= r["ci_low"] <= 3.0 <= r["ci_high"] <= 4.0


def test_paired_difference_identical_is_zero():
    a = np.array([0.1, 0.7, 0.3])
    assert M.paired_difference(a, a) == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 3}


@PROPS
@given(st.data())
def test_paired_difference_antisymmetric(data):
    n = data.draw(st.integers(1, 20))
    a = data.draw(hnp.arrays(np.float64, n, elements=finite))
    b = data.draw(hnp.arrays(np.float64, n, elements=finite))
    ab, ba = M.paired_difference(a, b, n_boot=200), M.paired_difference(b, a, n_boot=200)
    assert ba["mean"] == pytest.approx(-ab["mean"], abs=1e-9)
    # negating every resampled mean swaps the 2.5th and 97.5th percentiles
    assert ba["ci_low"] == pytest.approx(-ab["ci_high"], abs=1e-9)
    assert ba["ci_high"] == pytest.approx(-ab["ci_low"], abs=1e-9)
    assert ab["ci_low"] <= ab["ci_high"]


def test_paired_difference_with_clusters():
    # d = (2, 3, 4, 5) in articles 0, 0, 1, 1: whole articles resampled on both sides at once
    a, b = np.array([3.0, 5.0, 7.0, 9.0]), np.array([1.0, 2.0, 3.0, 4.0])
    art = np.array([0, 0, 1, 1])
    r = M.paired_difference(a, b, n_boot=2000, seed=4, clusters=art)
    assert r == M.cluster_bootstrap(a - b, art, 2000, 0.05, 4)
    assert r["mean"] == pytest.approx(3.5)
    # cluster means 2.5 and 4.5; resampled means 2.5, 3.5, 4.5 -> CI (2.5, 4.5)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((2.5, 4.5))
    assert r["clusters"] == 2 and "n_eff" in r
    assert "n_eff" not in M.paired_difference(a, b)  # without clusters: the item bootstrap


# ----------------------------------------------------------------------------- neighbour_indices


ARTICLES = np.array([0, 0, 0, 1, 1])


def test_neighbour_indices_known():
    anchor = np.array([0, 2, 3, 4])
    j, ok = M.neighbour_indices(anchor, ARTICLES, 1)
    # 0+1 = 1 (art 0 ✓), 2+1 = 3 (art 1 ≠ 0), 3+1 = 4 (art 1 ✓), 4+1 = 5 (past the end)
    np.testing.assert_array_equal(ok, [True, False, True, False])
    np.testing.assert_array_equal(j, [1, 0, 4, 0])
    j, ok = M.neighbour_indices(anchor, ARTICLES, -1)
    # -1 (before the start), 1 (art 0 ✓), 2 (art 0 ≠ 1), 3 (art 1 ✓)
    np.testing.assert_array_equal(ok, [False, True, False, True])
    np.testing.assert_array_equal(j, [0, 1, 0, 3])
    j, ok = M.neighbour_indices(anchor, ARTICLES, 0)
    assert ok.all()
    np.testing.assert_array_equal(j, anchor)


@PROPS
@given(
    hnp.arrays(np.int64, st.integers(1, 15), elements=st.integers(0, 3)).map(np.sort),
    st.integers(-4, 4),
    st.data(),
)
def test_neighbour_indices_properties(article_id, k, data):
    n = len(article_id)
    anchor = data.draw(hnp.arrays(np.int64, st.integers(0, 10), elements=st.integers(0, n - 1)))
    j, ok = M.neighbour_indices(anchor, article_id, k)
    expected_ok = np.array([0 <= a + k < n and article_id[a + k] == article_id[a] for a in anchor.tolist()], dtype=bool)
    np.testing.assert_array_equal(ok, expected_ok)
    np.testing.assert_array_equal(j[ok], anchor[ok] + k)
    assert (j[~ok] == 0).all()


# ----------------------------------------------------------------------------- similarity_profile


def test_similarity_profile_known():
    vectors = np.array([E0, D, E1, E0], dtype=np.float32)
    art = np.array([0, 0, 0, 1])
    query = np.array([E0, E1])
    anchor = np.array([1, 3])
    p = M.similarity_profile(query, anchor, vectors, art, offsets=[-1, 0, 1, 2])
    # k=-1: item 0 -> row 0 = E0: cos 1; item 1 -> row 2 is another article: only item 0 counts
    assert p[-1] == pytest.approx(1.0)
    # k=0: cos(E0, D) = 0.6 and cos(E1, E0) = 0 -> mean 0.3
    assert p[0] == pytest.approx(0.3)
    # k=1: item 0 -> row 2 = E1: cos 0; item 1 -> row 4 does not exist
    assert p[1] == pytest.approx(0.0)
    # k=2: item 0 -> row 3 is another article; item 1 off the end: no item
    assert math.isnan(p[2])
    assert list(p) == [-1, 0, 1, 2]


def test_similarity_profile_default_offsets_and_adjacency():
    # query = the chunk itself at anchor t: P(0) = 1, and P(±1) = the mean adjacency coherence
    vectors = np.array([E0, D, E1, E0, D], dtype=np.float32)
    art = np.array([0, 0, 0, 1, 1])
    anchor = np.arange(5)
    p = M.similarity_profile(vectors, anchor, vectors, art)
    assert list(p) == [-3, -2, -1, 0, 1, 2, 3]
    assert p[0] == pytest.approx(1.0)
    adj = M.adjacency_coherence(vectors, art)  # 0.6, 0.8, 0.6
    assert p[1] == pytest.approx(adj.mean(), rel=1e-6)
    assert p[-1] == pytest.approx(adj.mean(), rel=1e-6)
    assert p[2] == pytest.approx(0.0, abs=1e-7)  # only pair at distance 2: rows 0 and 2, cos(E0, E1)
    assert math.isnan(p[3]) and math.isnan(p[-3])


@PROPS
@given(unit_rows(min_rows=2, max_rows=10), st.data())
def test_similarity_profile_bounds_and_item_order(vectors, data):
    n, d = vectors.shape
    art = np.sort(data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, 2))))
    m = data.draw(st.integers(1, 8))
    anchor = data.draw(hnp.arrays(np.int64, m, elements=st.integers(0, n - 1)))
    query = data.draw(unit_rows(min_rows=m, max_rows=m, min_dim=d, max_dim=d))
    perm = data.draw(permutations_of(m))
    p = M.similarity_profile(query, anchor, vectors, art)
    q = M.similarity_profile(query[perm], anchor[perm], vectors, art)
    for k, value in p.items():
        if math.isnan(value):
            assert math.isnan(q[k])
        else:
            assert -1 - 1e-5 <= value <= 1 + 1e-5
            assert q[k] == pytest.approx(value, abs=1e-5)


# ----------------------------------------------------------------------------- rowwise_cos


def test_rowwise_cos_known():
    out = M.rowwise_cos(np.array([E0, D, E1]), np.array([D, D, [0.0, -1.0]]))
    np.testing.assert_allclose(out, [0.6, 1.0, -1.0])


@PROPS
@given(unit_pairs(), st.floats(0.01, 100.0), st.data())
def test_rowwise_cos_properties(ab, c, data):
    a, b = ab
    out = M.rowwise_cos(a, b)
    assert out.shape == (len(a),)
    np.testing.assert_allclose(out, M.rowwise_cos(b, a))  # symmetric
    assert ((out >= -1 - 1e-9) & (out <= 1 + 1e-9)).all()  # unit rows
    np.testing.assert_allclose(M.rowwise_cos(a, a), 1.0, rtol=1e-9)
    np.testing.assert_allclose(M.rowwise_cos(a, -a), -1.0, rtol=1e-9)
    np.testing.assert_allclose(M.rowwise_cos(c * a, b), c * out, rtol=1e-9, atol=1e-12)  # bilinear
    # rescaled and re-normalised rows give the same cosine (a cosine ignores length)
    a2 = c * a
    a2 /= np.linalg.norm(a2, axis=1, keepdims=True)
    np.testing.assert_allclose(M.rowwise_cos(a2, b), out, atol=1e-9)
    perm = data.draw(permutations_of(len(a)))
    np.testing.assert_allclose(M.rowwise_cos(a[perm], b[perm]), out[perm])


# ----------------------------------------------------------------------------- effective_rank


def test_effective_rank_known():
    # centred already; orthogonal columns with norms sqrt(2) and sqrt(8): σ = (2√2, √2),
    # p = (2/3, 1/3), exp(H) = (3/2)^(2/3) · 3^(1/3) = 3 / 2^(2/3)
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    assert M.effective_rank(x) == pytest.approx(3 / 2 ** (2 / 3))
    assert M.effective_rank(x) == pytest.approx(1.8898815748423097)


def test_effective_rank_isotropic_and_degenerate():
    # ±e_i in 4-D: four equal singular values -> exp(log 4) = 4
    x = np.vstack([np.eye(4), -np.eye(4)])
    assert M.effective_rank(x) == pytest.approx(4.0)
    # every point on one line: one singular value -> 1
    assert M.effective_rank(np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])) == pytest.approx(1.0)
    # identical rows: nothing left after centring -> 0
    assert M.effective_rank(np.tile([[0.3, -0.1, 2.0]], (5, 1))) == 0.0
    assert M.effective_rank(np.array([[1.0, 2.0]])) == 0.0


@PROPS
@given(matrices(min_rows=2, max_rows=10, min_dim=1, max_dim=5), st.floats(0.01, 100.0), st.data())
def test_effective_rank_properties(x, c, data):
    er = M.effective_rank(x)
    n, d = x.shape
    # exp(H(p)) of a distribution over at most min(n, d) singular values
    assert er == 0.0 or 1 - 1e-9 <= er <= min(n, d) + 1e-9
    assume(np.linalg.svd(x - x.mean(axis=0), compute_uv=False).max() > 1e-3)  # clearly not constant
    assert M.effective_rank(c * x) == pytest.approx(er, rel=1e-6)  # scale invariant
    assert M.effective_rank(x + 3.0) == pytest.approx(er, rel=1e-6)  # rows are centred
    perm = data.draw(permutations_of(n))
    assert M.effective_rank(x[perm]) == pytest.approx(er, rel=1e-6)
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(d, d)))
    assert M.effective_rank(x @ q) == pytest.approx(er, rel=1e-6)  # rotation invariant


# ----------------------------------------------------------------------------- mean_pairwise_cos


def test_mean_pairwise_cos_known():
    # pairs: cos(E0, E1) = 0, cos(E0, D) = 0.6, cos(E1, D) = 0.8 -> 1.4 / 3
    # formula: s = (1.6, 1.8), ‖s‖² = 5.8, Σ‖x_i‖² = 3 -> 2.8 / (3·2)
    assert M.mean_pairwise_cos(np.array([E0, E1, D])) == pytest.approx(1.4 / 3)
    assert M.mean_pairwise_cos(np.array([E0, E0])) == pytest.approx(1.0)
    assert M.mean_pairwise_cos(np.array([E0, [-1.0, 0.0]])) == pytest.approx(-1.0)


def test_mean_pairwise_cos_fewer_than_two_rows():
    assert math.isnan(M.mean_pairwise_cos(np.array([E0])))
    assert math.isnan(M.mean_pairwise_cos(np.zeros((0, 2))))


@PROPS
@given(unit_rows(min_rows=2), st.data())
def test_mean_pairwise_cos_properties(x, data):
    n = len(x)
    m = M.mean_pairwise_cos(x)
    brute = np.mean([x[i] @ x[j] for i in range(n) for j in range(n) if i != j])
    assert m == pytest.approx(brute, abs=1e-9)
    # ‖Σx‖² ≥ 0 gives the lower bound -1/(n-1); unit rows give the upper bound 1
    assert -1 / (n - 1) - 1e-9 <= m <= 1 + 1e-9
    perm = data.draw(permutations_of(n))
    assert M.mean_pairwise_cos(x[perm]) == pytest.approx(m, abs=1e-9)


# ----------------------------------------------------------------------------- other_article_cos


def test_other_article_cos_two_articles():
    # the only pairing with another article's target is the swap: cos(E0, t1 = E0) = 1, cos(E1, t0 = D) = 0.8
    pred = np.array([E0, E1])
    target = np.array([D, E0])
    out = M.other_article_cos(pred, target, np.array([0, 1]))
    np.testing.assert_allclose(sorted(out), [0.8, 1.0])


def test_other_article_cos_one_article_has_no_pair():
    pred = np.eye(4)
    assert M.other_article_cos(pred, pred, np.zeros(4, dtype=int)).shape == (0,)


@PROPS
@given(hnp.arrays(np.int64, st.integers(2, 30), elements=st.integers(0, 5)), st.integers(0, 1000))
def test_other_article_cos_pairs_only_other_articles(article, seed):
    # target_j = e_j and pred_i = the sum of e_j over the other articles' items:
    # cos(pred_i, target_j) = 1 exactly when j is in another article, 0 when in i's own
    n = len(article)
    target = np.eye(n)
    pred = (article[None, :] != article[:, None]).astype(np.float64)
    out = M.other_article_cos(pred, target, article, seed=seed)
    assert len(out) <= n
    np.testing.assert_array_equal(out, np.ones(len(out)))
    if len(np.unique(article)) == 1:
        assert len(out) == 0
    assert np.array_equal(out, M.other_article_cos(pred, target, article, seed=seed))  # deterministic


def test_other_article_cos_keeps_almost_every_item():
    rng = np.random.default_rng(4)
    article = np.repeat(np.arange(50), 4)  # 200 items in 50 articles: clashes are re-drawn
    n = len(article)
    pred = (article[None, :] != article[:, None]).astype(np.float64)
    out = M.other_article_cos(pred, np.eye(n), article, seed=int(rng.integers(1000)))
    assert len(out) >= 0.95 * n
    assert (out == 1.0).all()


# ----------------------------------------------------------------------------- retrieval_metrics


def test_retrieval_metrics_known():
    # ranks 1, 3, miss, 7, 50 over 5 items
    r = M.retrieval_metrics(np.array([1, 3, 0, 7, 50]))
    assert r["r_at_1"] == pytest.approx(1 / 5)
    assert r["r_at_5"] == pytest.approx(2 / 5)  # 1, 3
    assert r["r_at_10"] == pytest.approx(3 / 5)  # 1, 3, 7
    assert r["contain_at_50"] == pytest.approx(4 / 5)
    assert r["eff_at_5"] == pytest.approx(0.5)  # (2/5) / (4/5)
    assert r["mrr_at_50"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 7 + 1 / 50) / 5)


def test_retrieval_metrics_k_max_and_all_missed():
    r = M.retrieval_metrics(np.array([1, 3, 0, 7, 50]), k_max=5)
    assert r["contain_at_50"] == pytest.approx(2 / 5)  # found within k_max = 5
    assert r["eff_at_5"] == pytest.approx(1.0)
    z = M.retrieval_metrics(np.zeros(4, dtype=int))
    assert z == {"r_at_1": 0.0, "r_at_5": 0.0, "r_at_10": 0.0, "contain_at_50": 0.0, "eff_at_5": 0.0, "mrr_at_50": 0.0}
    assert M.retrieval_metrics(np.ones(3, dtype=int)) == {
        "r_at_1": 1.0,
        "r_at_5": 1.0,
        "r_at_10": 1.0,
        "contain_at_50": 1.0,
        "eff_at_5": 1.0,
        "mrr_at_50": 1.0,
    }


@PROPS
@given(hnp.arrays(np.int64, st.integers(1, 40), elements=st.integers(0, 50)), st.randoms())
def test_retrieval_metrics_properties(ranks, random):
    r = M.retrieval_metrics(ranks)
    assert all(0.0 <= v <= 1.0 for v in r.values())
    assert r["r_at_1"] <= r["r_at_5"] <= r["r_at_10"] <= r["contain_at_50"]
    assert r["r_at_1"] - 1e-12 <= r["mrr_at_50"] <= r["contain_at_50"] + 1e-12  # 1/rank ∈ (0, 1], = 1 only at rank 1
    shuffled = ranks.copy()
    random.shuffle(shuffled)
    assert M.retrieval_metrics(shuffled) == pytest.approx(r)


# ----------------------------------------------------------------------------- row_hashes


def reference_hash(row: np.ndarray, seed: int = 0) -> int:
    """The docstring's formula in Python integers: Σ_j w_j · word_j mod 2⁶⁴ over 8-byte words."""
    raw = np.ascontiguousarray(row).tobytes()
    raw += b"\0" * (-len(raw) % 8)
    words = [int.from_bytes(raw[i : i + 8], sys.byteorder) for i in range(0, len(raw), 8)]
    w = np.random.default_rng(seed).integers(1, 2**63, size=len(words), dtype=np.uint64) | np.uint64(1)
    return sum(int(wj) * word for wj, word in zip(w.tolist(), words, strict=True)) % 2**64


@pytest.mark.parametrize(
    "dtype, d",
    [(np.float32, 4), (np.float32, 3), (np.float64, 2), (np.float16, 5)],  # 3·4 and 5·2 bytes are padded
)
def test_row_hashes_match_the_formula(dtype, d):
    v = np.random.default_rng(5).normal(size=(6, d)).astype(dtype)
    h = M.row_hashes(v, seed=7)
    assert h.dtype == np.uint64 and h.shape == (6,)
    assert [int(x) for x in h] == [reference_hash(row, seed=7) for row in v]


def test_row_hashes_identity_and_bytes():
    v = np.array([E0, D, E0, [-0.0, 0.0]], dtype=np.float32)
    h = M.row_hashes(v)
    assert h[0] == h[2]  # byte-identical rows
    assert len({h[0], h[1], h[3]}) == 3
    # -0.0 == 0.0 as numbers, but not as bytes: the hash is of bytes
    assert M.row_hashes(np.array([[0.0, 0.0]], np.float32))[0] != h[3]
    assert (M.row_hashes(v, seed=1) != h).any()
    assert M.row_hashes(np.zeros((0, 3), np.float32)).shape == (0,)


def test_row_hashes_blockwise(monkeypatch):
    v = np.random.default_rng(6).normal(size=(9, 3)).astype(np.float32)
    whole = M.row_hashes(v)
    monkeypatch.setattr(M, "BLOCK", 4)
    np.testing.assert_array_equal(M.row_hashes(v), whole)


@PROPS
@given(matrices(min_rows=1, max_rows=12).map(lambda x: x.astype(np.float32)), st.data())
def test_row_hashes_row_order_equivariant(v, data):
    h = M.row_hashes(v)
    perm = data.draw(permutations_of(len(v)))
    np.testing.assert_array_equal(M.row_hashes(v[perm]), h[perm])
    same_bytes = [[v[i].tobytes() == v[j].tobytes() for j in range(len(v))] for i in range(len(v))]
    np.testing.assert_array_equal(h[:, None] == h[None, :], same_bytes)


# ----------------------------------------------------------------------------- duplicate_canon


def test_duplicate_canon_known():
    a, b, c = E0, D, E1
    canon = M.duplicate_canon(np.array([a, b, a, c, b], dtype=np.float32))
    assert canon.dtype == np.int64
    np.testing.assert_array_equal(canon, [0, 1, 0, 3, 1])


def test_duplicate_canon_with_given_hashes():
    # identity comes from the hashes passed in, not from the vectors
    v = np.array([E0, E1, D], dtype=np.float32)
    np.testing.assert_array_equal(M.duplicate_canon(v, np.array([5, 5, 7], dtype=np.uint64)), [0, 0, 2])
    np.testing.assert_array_equal(M.duplicate_canon(v), [0, 1, 2])


@PROPS
@given(hnp.arrays(np.int64, st.integers(1, 30), elements=st.integers(0, 4)))
def test_duplicate_canon_properties(labels):
    # rows drawn from 5 distinct vectors
    v = np.eye(5, dtype=np.float32)[labels]
    canon = M.duplicate_canon(v)
    idx = np.arange(len(v))
    assert (canon <= idx).all()  # the first row of its group
    np.testing.assert_array_equal(canon[canon], canon)  # idempotent
    np.testing.assert_array_equal(canon[:, None] == canon[None, :], labels[:, None] == labels[None, :])
    np.testing.assert_array_equal(labels[canon], labels)


# ----------------------------------------------------------------------------- ranks_of


def test_ranks_of_known():
    truth = np.array([2, 0, 5, 3])
    retrieved = np.array([[2, 1, 3], [1, 2, 0], [1, 2, 3], [3, 3, 1]])
    np.testing.assert_array_equal(M.ranks_of(truth, retrieved), [1, 3, 0, 1])  # first occurrence counts


def test_ranks_of_with_canon():
    # bank of 6 rows where row 5 duplicates row 1: retrieving row 1 for truth 5 is a hit
    canon = np.array([0, 1, 2, 3, 4, 1])
    truth = np.array([5, 2, 0])
    retrieved = np.array([[3, 1, 4], [1, 5, 4], [-1, 0, 2]])  # -1: FAISS's "no result" padding
    np.testing.assert_array_equal(M.ranks_of(truth, retrieved, canon), [2, 0, 2])
    np.testing.assert_array_equal(M.ranks_of(truth, retrieved), [0, 0, 2])


@PROPS
@given(st.data())
def test_ranks_of_properties(data):
    n_bank = data.draw(st.integers(1, 20))
    m = data.draw(st.integers(1, 10))
    k = data.draw(st.integers(1, 8))
    truth = data.draw(hnp.arrays(np.int64, m, elements=st.integers(0, n_bank - 1)))
    retrieved = data.draw(hnp.arrays(np.int64, (m, k), elements=st.integers(-1, n_bank - 1)))
    ranks = M.ranks_of(truth, retrieved)
    assert ((ranks >= 0) & (ranks <= k)).all()
    for i in range(m):
        row = retrieved[i].tolist()
        assert ranks[i] == (row.index(truth[i]) + 1 if truth[i] in row else 0)
    # the identity canon changes nothing; a coarser canon can only find the truth earlier
    np.testing.assert_array_equal(M.ranks_of(truth, retrieved, np.arange(n_bank)), ranks)
    canon = data.draw(hnp.arrays(np.int64, n_bank, elements=st.integers(0, n_bank - 1)))
    coarse = M.ranks_of(truth, retrieved, canon)
    assert ((ranks == 0) | ((coarse >= 1) & (coarse <= ranks))).all()


# ----------------------------------------------------------------------------- contrastive_accuracy


def test_contrastive_accuracy_extremes():
    t = np.eye(3, dtype=np.float32)
    art = np.array([0, 1, 2])
    # pred = target: cos 1 with the true target, 0 with every other one -> every valid pair won
    assert M.contrastive_accuracy(t, t, art, n_neg=50) == 1.0
    # pred = -target: cos -1 with the true target, 0 with the others -> none won
    assert M.contrastive_accuracy(-t, t, art, n_neg=50) == 0.0
    # one article: no valid negative, and 0 rather than a division by zero
    assert M.contrastive_accuracy(t, t, np.zeros(3, dtype=int), n_neg=50) == 0.0


def test_contrastive_accuracy_ties_lose_and_shares():
    # targets e0, e1, e2 of three articles; pred_1 = e0 has cos 0 with its own target:
    # it loses to target 0 (cos 1) and ties target 2 (cos 0, not strictly farther): never wins.
    # Items 0 and 2 win every pair -> about 2/3 of the valid pairs
    t = np.eye(3, dtype=np.float32)
    pred = t[[0, 0, 2]]
    acc = M.contrastive_accuracy(pred, t, np.array([0, 1, 2]), n_neg=20000, seed=3)
    assert acc == pytest.approx(2 / 3, abs=0.02)


def test_contrastive_accuracy_across_blocks():
    # 600 items (blocks of 256, 256, 88), each its own article, one-hot targets: every pair won
    t = np.eye(600, dtype=np.float32)
    assert M.contrastive_accuracy(t, t, np.arange(600), n_neg=4) == 1.0


@PROPS
@given(
    unit_rows(min_rows=2, max_rows=10, min_dim=2, max_dim=4),
    st.integers(-3, 3),
    st.integers(0, 1000),
    st.data(),
)
def test_contrastive_accuracy_properties(pred, log2_scale, seed, data):
    n, d = pred.shape
    target = data.draw(unit_rows(min_rows=n, max_rows=n, min_dim=d, max_dim=d))
    art = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, 3)))
    acc = M.contrastive_accuracy(pred, target, art, n_neg=10, seed=seed)
    assert 0.0 <= acc <= 1.0
    assert acc == M.contrastive_accuracy(pred, target, art, n_neg=10, seed=seed)
    # scaling every prediction by a power of two scales both sides of each comparison exactly
    scaled = pred * 2.0**log2_scale
    assert M.contrastive_accuracy(scaled, target, art, n_neg=10, seed=seed) == acc


# ----------------------------------------------------------------------------- latency_percentiles


def test_latency_percentiles_known():
    # ms = 1, 2, 3, 4, 100: p50 = 3; p95 at position 3.8: 4 + 0.8·96 = 80.8; p99 at 3.96: 4 + 0.96·96
    p = M.latency_percentiles(np.array([0.001, 0.002, 0.003, 0.004, 0.1]))
    assert p == pytest.approx({"p50_ms": 3.0, "p95_ms": 80.8, "p99_ms": 96.16, "mean_ms": 22.0, "n_calls": 5})
    assert isinstance(p["n_calls"], int)


def test_latency_percentiles_single_call():
    assert M.latency_percentiles([0.25]) == pytest.approx(
        {"p50_ms": 250.0, "p95_ms": 250.0, "p99_ms": 250.0, "mean_ms": 250.0, "n_calls": 1}
    )


@PROPS
@given(
    hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(0.0, 10.0)),
    st.floats(0.01, 100.0),
    st.randoms(),
)
def test_latency_percentiles_properties(seconds, c, random):
    p = M.latency_percentiles(seconds)
    ms = seconds * 1e3
    assert ms.min() - 1e-9 <= p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] <= ms.max() + 1e-9
    assert ms.min() - 1e-9 <= p["mean_ms"] <= ms.max() + 1e-9
    assert p["n_calls"] == len(seconds)
    scaled = M.latency_percentiles(c * seconds)
    for key in ("p50_ms", "p95_ms", "p99_ms", "mean_ms"):
        assert scaled[key] == pytest.approx(c * p[key], rel=1e-9, abs=1e-9)
    shuffled = seconds.copy()
    random.shuffle(shuffled)
    assert M.latency_percentiles(shuffled) == pytest.approx(p)


# ----------------------------------------------------------------------------- latency_ratio


def timings(cpu, wall, ref_cpu, ref_wall):
    return {"cpu": cpu, "wall": wall, "ref_cpu": ref_cpu, "ref_wall": ref_wall}


@needs("latency_ratio")
def test_latency_ratio_cpu_bound():
    # cpu ms 1, 2, 3, 4, 100: P95 = 80.8 (see above) > wall P50 = 10 -> robust 80.8; ref P50 = 4 -> ratio 20.2
    t = timings([0.001, 0.002, 0.003, 0.004, 0.1], [0.01] * 5, [0.002, 0.004, 0.006], [0.005, 0.005, 0.007])
    r = M.latency_ratio(t)
    assert r == pytest.approx(
        {"p95_cpu_ms": 80.8, "robust_ms": 80.8, "reference_ms": 4.0, "reference_wall_ms": 5.0, "ratio": 20.2}
    )


@needs("latency_ratio")
def test_latency_ratio_waiting_model_and_zero_reference():
    # a model that sleeps: CPU P95 1 ms, wall P50 50 ms -> the wall time counts
    r = M.latency_ratio(timings([0.001] * 3, [0.05, 0.05, 0.06], [0.002] * 3, [0.002] * 3))
    assert r["p95_cpu_ms"] == pytest.approx(1.0)
    assert r["robust_ms"] == pytest.approx(50.0)
    assert r["ratio"] == pytest.approx(25.0)
    r = M.latency_ratio(timings([0.001] * 3, [0.001] * 3, [0.0] * 3, [0.0] * 3))
    assert r["reference_ms"] == 0.0
    assert math.isnan(r["ratio"])


@needs("latency_ratio")
@PROPS
@given(
    st.lists(hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(1e-4, 1.0)), min_size=4, max_size=4),
    st.sampled_from([0.25, 0.5, 2.0, 4.0]),
    st.randoms(),
)
def test_latency_ratio_properties(arrays, c, random):
    t = timings(*arrays)
    r = M.latency_ratio(t)
    assert r["robust_ms"] >= r["p95_cpu_ms"]
    assert r["robust_ms"] >= np.percentile(t["wall"], 50) * 1e3 - 1e-9
    assert r["ratio"] == pytest.approx(r["robust_ms"] / r["reference_ms"])
    # a machine c times slower scales every timing by c: the ratio is the machine-independent figure
    slow = M.latency_ratio({k: v * c for k, v in t.items()})
    assert slow["ratio"] == pytest.approx(r["ratio"], rel=1e-9)
    assert slow["robust_ms"] == pytest.approx(c * r["robust_ms"], rel=1e-9)
    for v in t.values():
        random.shuffle(v)
    assert M.latency_ratio(t) == pytest.approx(r)


# ----------------------------------------------------------------------------- order, rounds, differences


def test_anchor_order_margins_known():
    # one article of 4 chunks: cos(0,1)=0.9, cos(0,2)=0.5, cos(0,3)=0.3, cos(1,2)=0.8, cos(1,3)=0.4, cos(2,3)=0.7
    g = np.eye(4)
    for (i, j), v in {(0, 1): 0.9, (0, 2): 0.5, (0, 3): 0.3, (1, 2): 0.8, (1, 3): 0.4, (2, 3): 0.7}.items():
        g[i, j] = g[j, i] = v
    d = M.anchor_order_margins(g[None], max_offset=3)
    # anchor 0: 0.9 - mean(0.5, 0.3) = 0.5; anchor 1: 0.8 - 0.4 = 0.4
    np.testing.assert_allclose(d, [[0.5, 0.4]])
    # read in reverse order (a permutation): anchor 3 -> 2: 0.7 - mean(cos(3,1), cos(3,0)) = 0.7 - 0.35
    np.testing.assert_allclose(M.anchor_order_margins(g[None], 3, np.array([[3, 2, 1, 0]]))[0, 0], 0.35)
    assert M.anchor_order_margins(np.ones((2, 2, 2)), 3).shape == (2, 0)  # too short: no anchor


def test_order_permutation_null_is_centred_and_ranks_an_ordered_article_low():
    rng = np.random.default_rng(0)
    # 50 articles of 6 chunks whose similarity decays with distance: ordered
    idx = np.arange(6)
    g = np.broadcast_to(0.9 ** np.abs(idx[:, None] - idx[None, :]), (50, 6, 6)).copy()
    sums, above = M.order_permutation_null(g, 3, 200, rng)
    observed = M.anchor_order_margins(g, 3).sum()
    assert observed > 0 and abs(sums.mean()) < 0.2 * observed  # the shuffles' mean margin is near 0
    assert (above / 200 < 0.2).all()  # every ordered article ranks above most of its shuffles


def test_cluster_bootstrap_difference_known():
    a, b = np.array([1.0, 1.0, 3.0, 3.0]), np.array([0.0, 2.0])
    out = M.cluster_bootstrap_difference(a, np.array([0, 0, 1, 1]), b, np.array([0, 1]), n_boot=500)
    assert out["mean"] == pytest.approx(2.0 - 1.0)
    assert out["ci_low"] <= out["mean"] <= out["ci_high"]
    empty = M.cluster_bootstrap_difference(np.array([]), np.array([]), b, np.array([0, 1]))
    assert np.isnan(empty["mean"]) and np.isnan(empty["ci_low"])


def test_latency_rounds_picks_the_least_disturbed_round():
    n = 60
    rounds = np.repeat([0, 1, 2], 20)
    ref_wall = np.full(n, 1e-4)
    ref_wall[rounds == 1] = 3e-4  # round 1: the probe ran 3x slower (a busy neighbour)
    t = {
        "wall": np.full(n, 5e-4),
        "cpu": np.full(n, 5e-4),
        "ref_wall": ref_wall,
        "ref_cpu": np.full(n, 1e-4),
        "round": rounds,
    }
    out = M.latency_rounds(t)
    assert out["rounds"] == 3 and out["chosen_round"] in (0, 2)
    assert out["load_disturbance"] == pytest.approx(0.0, abs=1e-9)
    assert out["ratio"] == pytest.approx(5.0)  # 0.5 ms over a 0.1 ms probe
    assert max(out["round_disturbance"]) > 1.0  # round 1 read as disturbed
