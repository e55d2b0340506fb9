"""Null baselines: exact copy-last, padding-blind context mean, ridge that recovers a linear map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from lvm.errors import LvmError
from lvm.models.baselines import (
    BASELINES,
    DEFAULT_RIDGE_ALPHAS,
    ContextMean,
    CopyLast,
    Ridge,
    masked_context,
)

D, CTX = 8, 3
HYPOTHESIS = settings(max_examples=25, deadline=None, derandomize=True, database=None)


def unit(*shape: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(shape).astype(np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def left_padded(lengths: np.ndarray, T: int) -> np.ndarray:
    return np.arange(T)[None, :] >= (T - lengths)[:, None]


@st.composite
def contexts(draw):
    """(x, mask) torch tensors: left-padded unit vectors, last position always real."""
    B, T = draw(st.integers(1, 6)), draw(st.integers(1, CTX))
    lengths = np.array(draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return torch.from_numpy(unit(B, T, D, rng=rng)), torch.from_numpy(left_padded(lengths, T))


def sequences(n: int, rng: np.random.Generator, w: np.ndarray | None = None, noise_mean=None):
    """Synthetic sequences: random left-padded contexts and targets y = normalize(x_last @ W),
    or, with ``noise_mean``, targets unrelated to the context around a common direction."""
    x = unit(n, CTX, D, rng=rng)
    mask = left_padded(rng.integers(1, CTX + 1, n), CTX)
    x[~mask] = 0.0  # as the dataset stores padding
    if noise_mean is None:
        y = x[:, -1] @ w
    else:
        y = noise_mean + rng.standard_normal((n, D)).astype(np.float32)
    return x, mask, (y / np.linalg.norm(y, axis=-1, keepdims=True)).astype(np.float32)


def batches(x, mask, y, size: int = 128):
    for i in range(0, len(x), size):
        yield x[i : i + size], mask[i : i + size], y[i : i + size]


def mean_cosine(model, x, mask, y) -> float:
    with torch.no_grad():
        pred = model(torch.as_tensor(x), torch.as_tensor(mask))
    return float((pred * torch.as_tensor(y)).sum(-1).mean())


@HYPOTHESIS
@given(batch=contexts())
def test_copy_last_returns_the_last_context_vector_exactly(batch):
    x, mask = batch
    assert torch.equal(CopyLast()(x, mask), x[:, -1])


@HYPOTHESIS
@given(batch=contexts())
def test_context_mean_is_the_normalized_mean_of_real_chunks_only(batch):
    x, mask = batch
    x_junk = x.clone()
    x_junk[~mask] = 100.0  # padding with large values must not leak into the mean
    got = ContextMean()(x_junk, mask)
    for b in range(x.shape[0]):
        real = x[b][mask[b]].numpy().astype(np.float64)  # (n_real, D)
        expected = real.mean(0) / np.linalg.norm(real.mean(0))
        np.testing.assert_allclose(got[b].numpy(), expected, atol=1e-6)


def test_baselines_have_no_trainable_parameters():
    assert set(BASELINES) == {"copy_last", "context_mean", "ridge"}
    for name, cls in BASELINES.items():
        model = cls(input_dim=D, ctx=CTX)
        assert list(model.parameters()) == [], name


@pytest.fixture(scope="module")
def linear_problem():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((D, D)).astype(np.float32)
    return sequences(2000, rng, w), sequences(500, rng, w), sequences(500, rng, w)


def test_ridge_recovers_a_linear_map_and_beats_the_context_mean(linear_problem):
    train, val, test = linear_problem
    ridge = Ridge(D, CTX).fit(batches(*train), batches(*val))
    ridge_cos = mean_cosine(ridge, *test)
    mean_cos = mean_cosine(ContextMean(), *test)
    # y is a normalized linear map of x_last: linear regression gets close; the mean does not.
    assert ridge_cos > 0.95, ridge_cos
    assert ridge_cos > mean_cos + 0.3, (ridge_cos, mean_cos)
    # Noise-free targets need little shrinkage: a small alpha, well inside the grid.
    assert set(ridge.val_scores) == set(DEFAULT_RIDGE_ALPHAS)
    assert ridge.alpha <= 10.0, ridge.val_scores
    assert ridge.val_scores[ridge.alpha] == max(ridge.val_scores.values())
    assert ridge.val_scores[ridge.alpha] > ridge.val_scores[max(DEFAULT_RIDGE_ALPHAS)] + 0.1


def test_ridge_shrinks_to_the_mean_target_when_the_context_is_useless():
    rng = np.random.default_rng(1)
    direction = np.zeros(D, dtype=np.float32)
    direction[0] = 1.5  # targets scatter around one direction, independent of the context
    train, val = sequences(400, rng, noise_mean=direction), sequences(400, rng, noise_mean=direction)
    ridge = Ridge(D, CTX).fit(batches(*train), batches(*val))
    # Strong shrinkage wins (the Gram's eigenvalues here are in the tens) and clearly beats none; among
    # the largest alphas the predictions are all ≈ the mean target and the choice is noise.
    assert ridge.alpha >= 1000.0, ridge.val_scores
    assert ridge.val_scores[ridge.alpha] > ridge.val_scores[min(DEFAULT_RIDGE_ALPHAS)] + 0.02


def test_ridge_fits_the_same_from_numpy_and_torch_batches(linear_problem):
    train, val, test = linear_problem
    from_numpy = Ridge(D, CTX).fit(batches(*train), batches(*val), alphas=(0.1, 1.0))
    as_torch = [tuple(map(torch.from_numpy, b)) for b in batches(*train)]
    from_torch = Ridge(D, CTX).fit(as_torch, [tuple(map(torch.from_numpy, val))], alphas=(0.1, 1.0))
    torch.testing.assert_close(from_numpy.weight, from_torch.weight)
    torch.testing.assert_close(from_numpy.bias, from_torch.bias)


def test_ridge_reads_short_contexts_as_left_padded(linear_problem):
    train, val, test = linear_problem
    ridge = Ridge(D, CTX).fit(batches(*train), batches(*val))
    x = torch.from_numpy(test[0][:4])
    full_mask = torch.ones(4, CTX, dtype=torch.bool)
    short = ridge(x[:, -2:], full_mask[:, -2:])
    padded = ridge(x, torch.tensor([[False] * (CTX - 2) + [True, True]] * 4))
    torch.testing.assert_close(short, padded)


def test_ridge_saves_and_loads_with_safetensors(linear_problem, tmp_path):
    train, val, test = linear_problem
    ridge = Ridge(D, CTX).fit(batches(*train), batches(*val))
    save_file(ridge.state_dict(), tmp_path / "ridge.safetensors")
    reloaded = Ridge(D, CTX)
    reloaded.load_state_dict(load_file(tmp_path / "ridge.safetensors"))
    assert reloaded.alpha == ridge.alpha
    x, mask = torch.from_numpy(test[0]), torch.from_numpy(test[1])
    torch.testing.assert_close(reloaded(x, mask), ridge(x, mask))


def test_unfitted_ridge_refuses_to_predict():
    with pytest.raises(LvmError, match="not fitted"):
        Ridge(D, CTX)(torch.zeros(1, CTX, D) + 1, None)


@pytest.mark.parametrize(
    ("train", "val", "alphas", "message"),
    [
        (None, None, (), "non-empty list of positive"),
        (None, None, (0.0, 1.0), "non-empty list of positive"),
        (None, [], (1.0,), "needs validation sequences"),
        ([], None, (1.0,), "at least 2 training sequences"),
        (None, [(np.zeros((2, CTX, D + 1)), np.ones((2, CTX), bool), np.zeros((2, D)))], (1.0,), "for 8-D"),
        (None, [(np.zeros((2, CTX, D)), np.ones((2, CTX), bool), np.zeros((2, D + 1)))], (1.0,), "targets must"),
    ],
)
def test_ridge_fit_rejects_bad_input_with_one_line(linear_problem, train, val, alphas, message):
    train_seq, val_seq, _ = linear_problem
    train = batches(*train_seq) if train is None else train
    val = batches(*val_seq) if val is None else val
    with pytest.raises(LvmError, match=message) as error:
        Ridge(D, CTX).fit(train, val, alphas=alphas)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.tensor([[True, True, False]]), "last context position"),
        (torch.tensor([[True, False, True]]), "left padding"),
        (torch.ones(1, CTX + 1, dtype=torch.bool), "mask must have shape"),
    ],
)
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_reject_a_bad_mask(name, mask, message):
    x = torch.from_numpy(unit(1, CTX, D, rng=np.random.default_rng(2)))
    with pytest.raises(LvmError, match=message):
        masked_context(x, mask)
    if name != "ridge":  # an unfitted ridge refuses any input; its checks are masked_context's
        with pytest.raises(LvmError, match=message):
            BASELINES[name](input_dim=D, ctx=CTX)(x, mask)


def test_the_ridge_baseline_is_fitted_once_per_dataset_and_cached_beside_it(tmp_path):
    """null_baselines keys its ridge by the dataset's content hash, ctx, min_ctx, sample and seed."""
    from lvm.data.datasets import open_dataset
    from lvm.data.synth import SynthConfig, synth_dataset
    from lvm.models.baselines import null_baselines

    synth_dataset(SynthConfig(n_chunks=2000, dim=16, seed=3), tmp_path / "ds", progress=False)
    ds = open_dataset(tmp_path / "ds")
    first = null_baselines(ds, 3, 1, 500)["ridge"]
    cached = sorted((tmp_path / "ds" / "cache").glob("ridge-*.safetensors"))
    assert len(cached) == 1
    again = null_baselines(ds, 3, 1, 500)["ridge"]
    assert torch.equal(first.weight, again.weight) and first.alpha == again.alpha
    null_baselines(ds, 2, 1, 500)  # another context: another fit, another file
    assert len(list((tmp_path / "ds" / "cache").glob("ridge-*.safetensors"))) == 2
    cached[0].write_bytes(b"garbage")  # a damaged cache is refitted, not trusted
    assert torch.equal(null_baselines(ds, 3, 1, 500)["ridge"].weight, first.weight)
