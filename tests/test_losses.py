"""Losses: values on hand-computed examples, same-article masking, adaptive λ, compute_loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lvm.losses import (
    COMPONENTS,
    AdaptiveLambda,
    LossConfig,
    compute_loss,
    cosine_loss,
    info_nce_loss,
    moment_loss,
    mse_loss,
    variance_penalty,
)

HYPOTHESIS = settings(max_examples=25, deadline=None, derandomize=True, database=None)

# A tiny example worked by hand. Dot products p_i·t_j (unequal diagonal, so that the two InfoNCE
# directions differ):
#   p0·t0 = 0.8   p0·t1 = 0.6
#   p1·t0 = 0.96  p1·t1 = 1.0
PRED = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
TARGET = torch.tensor([[0.8, 0.6], [0.6, 0.8]])


def unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_mse_is_the_elementwise_mean_of_squared_differences():
    # ‖p0 − t0‖² = 0.04 + 0.36, ‖p1 − t1‖² = 0; 4 elements.
    assert mse_loss(PRED, TARGET).item() == pytest.approx(0.4 / 4)


def test_cosine_loss_is_one_minus_mean_cosine():
    assert cosine_loss(PRED, TARGET).item() == pytest.approx(1 - (0.8 + 1.0) / 2)
    assert cosine_loss(PRED, PRED).item() == pytest.approx(0.0, abs=1e-7)
    assert cosine_loss(PRED, -PRED).item() == pytest.approx(2.0)


def test_info_nce_matches_the_hand_computed_value():
    # Logits at τ = 0.5: [[1.6, 1.2], [1.92, 2.0]]. With two candidates, −log softmax of the
    # positive is log(1 + e^(negative − positive)).
    rows = math.log(1 + math.exp(1.2 - 1.6)) + math.log(1 + math.exp(1.92 - 2.0))  # ŷ_i → y_j
    cols = math.log(1 + math.exp(1.92 - 1.6)) + math.log(1 + math.exp(1.2 - 2.0))  # y_j → ŷ_i
    assert rows / 2 == pytest.approx(0.58349, abs=1e-5)  # worked on paper
    assert cols / 2 == pytest.approx(0.61850, abs=1e-5)
    expected = 0.5 * (rows / 2 + cols / 2)
    assert info_nce_loss(PRED, TARGET, tau=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_symmetric_in_its_two_directions():
    """Swapping predictions and targets transposes the logits: the symmetric loss is unchanged,
    while a one-directional one would not be (0.5835 against 0.6185 in this example)."""
    assert info_nce_loss(TARGET, PRED, tau=0.5).item() == pytest.approx(info_nce_loss(PRED, TARGET, tau=0.5).item())


def test_same_article_negative_is_masked_out():
    """Items 0 and 1 share an article: their pair leaves both denominators, lowering the loss."""
    pred = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    target = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
    s = (pred @ target.T).tolist()  # logits at τ = 1

    def ce(logits_row, positive, allowed):
        return -logits_row[positive] + math.log(sum(math.exp(logits_row[j]) for j in allowed))

    all_ = range(3)
    keep = {0: [0, 2], 1: [1, 2], 2: [0, 1, 2]}  # drop (0,1) and (1,0)
    cols = [[s[i][j] for i in all_] for j in all_]
    unmasked = 0.5 * (sum(ce(s[i], i, all_) for i in all_) + sum(ce(cols[j], j, all_) for j in all_)) / 3
    masked = 0.5 * (sum(ce(s[i], i, keep[i]) for i in all_) + sum(ce(cols[j], j, keep[j]) for j in all_)) / 3

    ids = torch.tensor([7, 7, 3])
    assert info_nce_loss(pred, target, tau=1.0).item() == pytest.approx(unmasked, rel=1e-6)
    assert info_nce_loss(pred, target, tau=1.0, article_ids=ids).item() == pytest.approx(masked, rel=1e-6)
    assert masked < unmasked


@HYPOTHESIS
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(2, 8))
def test_article_masking_only_acts_on_shared_articles(seed, B):
    pred, target = unit(B, 6, seed=seed), unit(B, 6, seed=seed + 1)
    plain = info_nce_loss(pred, target)
    # Distinct articles: nothing to mask.
    distinct = info_nce_loss(pred, target, article_ids=torch.arange(B))
    assert distinct.item() == pytest.approx(plain.item(), rel=1e-6)
    # One article for the whole batch: only the positives remain, so every softmax is certain.
    one_article = info_nce_loss(pred, target, article_ids=torch.zeros(B, dtype=torch.long))
    assert one_article.item() == pytest.approx(0.0, abs=1e-6)
    # Any shared pair removes positive terms from denominators: strictly lower.
    ids = torch.arange(B)
    ids[1] = ids[0]
    assert info_nce_loss(pred, target, article_ids=ids).item() < plain.item()


def test_info_nce_rejects_article_ids_of_the_wrong_length():
    with pytest.raises(ValueError, match="article_ids must have shape"):
        info_nce_loss(unit(3, 4, seed=0), unit(3, 4, seed=1), article_ids=torch.tensor([1, 2]))


def test_info_nce_gradient_is_finite_with_masked_pairs():
    pred = unit(4, 6, seed=0).requires_grad_()
    info_nce_loss(pred, unit(4, 6, seed=1), article_ids=torch.tensor([1, 1, 2, 2])).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_moment_loss_measures_mean_and_std_gaps():
    target = torch.tensor([[1.0, 0.0], [-1.0, 2.0]])  # μ = (0, 1), σ = (1, 1)
    assert moment_loss(target, target).item() == 0.0
    shifted = target + torch.tensor([0.5, 0.0])  # mean gap 0.5 in dim 0
    assert moment_loss(shifted, target).item() == pytest.approx(0.25 / 2)
    scaled = target * torch.tensor([3.0, 1.0])  # std 3 vs 1 in dim 0, mean gap 0 there
    assert moment_loss(scaled, target).item() == pytest.approx(4.0 / 2)


def test_variance_penalty_fires_on_collapse_only():
    target = unit(64, 8, seed=2)
    assert variance_penalty(target, target).item() == 0.0
    collapsed = target.mean(0, keepdim=True).expand(64, 8).clone().requires_grad_()
    penalty = variance_penalty(collapsed, target)
    floor = 0.5 * target.std(0, correction=0)
    assert penalty.item() == pytest.approx((floor - math.sqrt(1e-4)).clamp_min(0).mean().item(), rel=1e-5)
    assert penalty.item() > 0


def test_variance_penalty_gradient_spreads_collapsing_predictions():
    target = unit(64, 8, seed=3)
    pred = (0.1 * target).requires_grad_()  # a tenth of the targets' spread, below the floor
    variance_penalty(pred, target).backward()
    # Descending the gradient must increase the spread.
    stepped = (pred - 0.1 * pred.grad).detach()
    assert stepped.std(0).mean() > pred.detach().std(0).mean()


def test_adaptive_lambda_follows_the_ratio_between_its_clamps():
    adaptive = AdaptiveLambda(base=0.5, min_lambda=0.01, max_lambda=0.5)
    assert adaptive.update(mse=0.2, info=1.0) == pytest.approx(0.5 * 0.2 / 1.0)


@pytest.mark.parametrize(
    ("mse", "info", "expected"),
    [
        (0.002, 1.39, 0.01),  # the seeds' failed run: 0.5·0.002/1.39 ≈ 7e-4, clamped up
        (5.0, 1.0, 0.5),  # MSE dominant: 2.5, clamped down
        (0.0, 0.0, 0.01),  # degenerate: 0 / (0 + 1e-8) = 0, no division error
    ],
)
def test_adaptive_lambda_is_clamped(mse, info, expected):
    assert AdaptiveLambda(base=0.5, min_lambda=0.01, max_lambda=0.5).update(mse, info) == pytest.approx(expected)


def test_adaptive_lambda_emas_decay_and_resume():
    adaptive = AdaptiveLambda(decay=0.9)
    adaptive.update(mse=1.0, info=10.0)  # EMAs start at the first values
    adaptive.update(mse=2.0, info=20.0)
    assert adaptive.ema_mse == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
    assert adaptive.ema_info == pytest.approx(0.9 * 10.0 + 0.1 * 20.0)
    resumed = AdaptiveLambda(decay=0.9)
    resumed.load_state_dict(adaptive.state_dict())
    assert resumed.update(0.3, 2.0) == adaptive.update(0.3, 2.0)


def test_compute_loss_reports_every_component_even_with_zero_weights():
    pred, target = unit(6, 8, seed=4).requires_grad_(), unit(6, 8, seed=5)
    total, components = compute_loss(pred, target, LossConfig())  # MSE only
    assert set(components) == set(COMPONENTS) | {"lambda_info", "total"}
    assert components["info"] == pytest.approx(info_nce_loss(pred, target).item(), rel=1e-6)
    assert components["cos"] == pytest.approx(cosine_loss(pred, target).item(), rel=1e-6)
    assert components["info"] > 0 and components["lambda_info"] == 0.0
    assert total.item() == pytest.approx(mse_loss(pred, target).item(), rel=1e-6)
    # The unweighted components carry no gradient: the total's is exactly the MSE's.
    total.backward()
    expected = torch.autograd.grad(mse_loss(pred, target), pred)[0]
    torch.testing.assert_close(pred.grad, expected)


def test_compute_loss_weights_and_sums_the_components():
    pred, target = unit(6, 8, seed=6), unit(6, 8, seed=7)
    cfg = LossConfig(lambda_mse=1.0, lambda_cos=0.3, lambda_info=0.2, lambda_moment=0.1, lambda_variance=0.05, tau=0.1)
    ids = torch.tensor([0, 0, 1, 2, 3, 3])
    total, c = compute_loss(pred, target, cfg, article_ids=ids)
    assert c["info"] == pytest.approx(info_nce_loss(pred, target, tau=0.1, article_ids=ids).item(), rel=1e-6)
    weighted = c["mse"] + 0.3 * c["cos"] + 0.2 * c["info"] + 0.1 * c["moment"] + 0.05 * c["variance"]
    assert total.item() == pytest.approx(weighted, rel=1e-6)
    assert c["total"] == pytest.approx(total.item())
    assert c["lambda_info"] == 0.2


def test_compute_loss_with_adaptive_lambda_uses_and_advances_it():
    pred, target = unit(6, 8, seed=8).requires_grad_(), unit(6, 8, seed=9)
    cfg = LossConfig(adaptive_info=True, lambda_info=123.0)  # the fixed λ_info is ignored
    adaptive = cfg.make_adaptive()
    total, c = compute_loss(pred, target, cfg, adaptive=adaptive)
    assert adaptive.ema_mse == pytest.approx(c["mse"]) and adaptive.ema_info == pytest.approx(c["info"])
    expected_lambda = min(max(0.5 * c["mse"] / c["info"], 0.01), 0.5)  # seeds' base and clamp
    assert c["lambda_info"] == pytest.approx(expected_lambda, rel=1e-6)
    assert total.item() == pytest.approx(c["mse"] + expected_lambda * c["info"], rel=1e-6)
    total.backward()
    assert pred.grad is not None


def test_compute_loss_refuses_adaptive_config_without_its_state():
    with pytest.raises(ValueError, match="adaptive"):
        compute_loss(unit(2, 4, seed=0), unit(2, 4, seed=1), LossConfig(adaptive_info=True))


def test_compute_loss_with_every_weight_zero_still_backpropagates():
    pred = unit(3, 4, seed=0).requires_grad_()
    total, components = compute_loss(pred, unit(3, 4, seed=1), LossConfig(lambda_mse=0.0))
    total.backward()
    assert total.item() == 0.0 and components["mse"] > 0 and torch.equal(pred.grad, torch.zeros_like(pred))
