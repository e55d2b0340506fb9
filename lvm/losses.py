"""Training losses: pure functions of predictions ŷ (B, D) and targets y (B, D), both unit vectors.

``compute_loss`` combines them with the weights of a ``LossConfig`` and always reports every
component, weighted or not, so that a training history can show (and the ``training_health``
gate can check) the balance between them: the seeds' failed run had InfoNCE ~700× the MSE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

# Floor of the variance penalty, as a share of the targets' own per-dimension spread. A regression
# model's predictions are legitimately less spread than its targets (it predicts conditional
# means), so the floor sits well below them; a collapsing model (spread → 0) is far under it.
DEFAULT_VARIANCE_FLOOR_RATIO = 0.5
# Added under the square root of the variance, as in VICReg, so the std has a finite gradient at 0.
VARIANCE_EPS = 1e-4


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L_mse = 1/(B·D) Σ_b ‖ŷ_b − y_b‖² (elementwise mean, the seeds' scale: ~2e-3 at D=768)."""
    return F.mse_loss(pred, target)


def cosine_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L_cos = 1 − 1/B Σ_b cos(ŷ_b, y_b)."""
    return 1.0 - F.cosine_similarity(pred, target, dim=-1).mean()


def masked_negatives(article_ids, batch_size: int, device=None) -> Tensor:
    """(B, B) bool: the in-batch pairs InfoNCE removes from the negatives (i ≠ j, same article).

    The ``batch_hygiene`` gate checks against this very mask that no same-article pair remains.
    """
    ids = torch.as_tensor(article_ids, device=device)
    if ids.shape != (batch_size,):
        raise ValueError(f"article_ids must have shape ({batch_size},); got {tuple(ids.shape)}")
    same_article = ids[:, None] == ids[None, :]  # (B, B), diagonal True
    same_article.fill_diagonal_(False)  # the positive pair stays
    return same_article


def info_nce_loss(pred: Tensor, target: Tensor, tau: float = 0.07, article_ids: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE with in-batch negatives.

        s_ij = cos(ŷ_i, y_j) / τ,   s_ij = −∞ for i ≠ j from the same article
        L = ½ [ 1/B Σ_i −log softmax_j(s_ij)[i]  +  1/B Σ_j −log softmax_i(s_ij)[j] ]

    The first term ranks each prediction's own target above the other targets, the second each
    target's own prediction above the other predictions. Chunks of one article are semantically
    close, so as negatives they would punish the model for being right about the topic: they are
    masked out (GATES.md ``batch_hygiene`` checks that none remain).
    """
    logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).T / tau  # (B, B)
    if article_ids is not None:
        logits = logits.masked_fill(masked_negatives(article_ids, logits.shape[0], logits.device), float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def moment_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L_moment = 1/D Σ_d [(μ̂_d − μ_d)² + (σ̂_d − σ_d)²], batch mean μ and std σ per dimension.

    Matches the first two moments of the predictions to the targets' (std with 1/B, so a batch
    of one gives 0 rather than NaN).
    """
    mean_gap = pred.mean(dim=0) - target.mean(dim=0)  # (D,)
    std_gap = pred.std(dim=0, correction=0) - target.std(dim=0, correction=0)  # (D,)
    return (mean_gap.square() + std_gap.square()).mean()


def variance_penalty(pred: Tensor, target: Tensor, floor_ratio: float = DEFAULT_VARIANCE_FLOOR_RATIO) -> Tensor:
    """VICReg-style hinge on the spread of the predictions, per dimension:

        L_var = 1/D Σ_d max(0, r·σ_d(y) − √(Var_b(ŷ_d) + ε))

    The floor r·σ_d(y) is relative to the targets' spread, so it needs no tuning per encoder or
    dimension (unit vectors have per-dimension std ~1/√D). Zero for a healthy spread; positive,
    with gradient, when the predictions collapse towards a constant.
    """
    floor = floor_ratio * target.detach().std(dim=0, correction=0)  # (D,)
    spread = torch.sqrt(pred.var(dim=0, correction=0) + VARIANCE_EPS)  # (D,)
    return F.relu(floor - spread).mean()


class AdaptiveLambda:
    """The seeds' adaptive InfoNCE weight: scale λ_info so that λ_info·L_info tracks L_mse.

        ema ← decay·ema + (1 − decay)·value      for L_mse and L_info
        λ_info = clamp(base · ema_mse / (ema_info + 1e-8), min_lambda, max_lambda)

    The EMAs start at the first observed values (not 0), so early λ is not biased by a warm-up.
    """

    def __init__(self, base: float = 0.5, min_lambda: float = 0.01, max_lambda: float = 0.5, decay: float = 0.99):
        if not 0.0 <= decay < 1.0 or not 0.0 <= min_lambda <= max_lambda:
            raise ValueError(
                "AdaptiveLambda needs 0 <= decay < 1 and 0 <= min_lambda <= max_lambda; "
                f"got decay={decay}, min_lambda={min_lambda}, max_lambda={max_lambda}"
            )
        self.base, self.min_lambda, self.max_lambda, self.decay = base, min_lambda, max_lambda, decay
        self.ema_mse: float | None = None
        self.ema_info: float | None = None

    @property
    def value(self) -> float:
        """Current λ_info; ``max_lambda`` before any update (no evidence of an imbalance yet)."""
        if self.ema_mse is None:
            return self.max_lambda
        ratio = self.base * self.ema_mse / (self.ema_info + 1e-8)
        return min(max(ratio, self.min_lambda), self.max_lambda)

    def update(self, mse: float, info: float) -> float:
        """Fold in one step's L_mse and L_info; returns the new λ_info."""
        mse, info = float(mse), float(info)
        if self.ema_mse is None:
            self.ema_mse, self.ema_info = mse, info
        else:
            self.ema_mse = self.decay * self.ema_mse + (1.0 - self.decay) * mse
            self.ema_info = self.decay * self.ema_info + (1.0 - self.decay) * info
        return self.value

    def state_dict(self) -> dict:
        """EMAs for a checkpoint, so that a resumed run continues with the same λ."""
        return {"ema_mse": self.ema_mse, "ema_info": self.ema_info}

    def load_state_dict(self, state: dict) -> None:
        self.ema_mse, self.ema_info = state["ema_mse"], state["ema_info"]


@dataclass
class LossConfig:
    lambda_mse: float = field(
        default=1.0, metadata={"help": "weight of the MSE (the seeds' working runs were MSE-led)"}
    )
    lambda_cos: float = field(default=0.0, metadata={"help": "weight of 1 − mean cos"})
    lambda_info: float = field(
        default=0.0, metadata={"help": "weight of InfoNCE (the seeds' 0.5 made it dominate: 700× the MSE)"}
    )
    lambda_moment: float = field(
        default=0.0, metadata={"help": "weight of the moment matching (seeds: 0.001 when used)"}
    )
    lambda_variance: float = field(
        default=0.0, metadata={"help": "weight of the variance penalty (seeds: 0.001 when used)"}
    )
    tau: float = field(default=0.07, metadata={"help": "InfoNCE temperature, as in the seeds"})
    adaptive_info: bool = field(
        default=False, metadata={"help": "scale λ_info by the EMA ratio of MSE to InfoNCE (clamped; AdaptiveLambda)"}
    )
    adaptive_base: float = field(default=0.5, metadata={"help": "base of the adaptive λ_info, as in the seeds"})
    adaptive_min: float = field(default=0.01, metadata={"help": "lower clamp of the adaptive λ_info, as in the seeds"})
    adaptive_max: float = field(default=0.5, metadata={"help": "upper clamp of the adaptive λ_info, as in the seeds"})
    adaptive_decay: float = field(default=0.99, metadata={"help": "EMA decay of the adaptive λ_info, as in the seeds"})
    variance_floor_ratio: float = field(
        default=DEFAULT_VARIANCE_FLOOR_RATIO,
        metadata={"help": "floor of the variance penalty, as a share of the targets' per-dimension std"},
    )

    def make_adaptive(self) -> AdaptiveLambda | None:
        """The ``AdaptiveLambda`` this config asks for (None when ``adaptive_info`` is off)."""
        if not self.adaptive_info:
            return None
        return AdaptiveLambda(self.adaptive_base, self.adaptive_min, self.adaptive_max, self.adaptive_decay)


COMPONENTS = ("mse", "cos", "info", "moment", "variance")


def compute_loss(
    pred: Tensor,
    target: Tensor,
    cfg: LossConfig,
    article_ids: Tensor | None = None,
    adaptive: AdaptiveLambda | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """total = Σ_c λ_c L_c over mse, cos, info, moment, variance; returns (total, components).

    ``components`` always holds every L_c (unweighted), ``lambda_info`` (the weight actually used)
    and ``total``. A component with λ = 0 is still computed, under ``no_grad``, for the log. With
    ``cfg.adaptive_info`` the InfoNCE weight comes from ``adaptive.update(L_mse, L_info)``, which
    advances its EMAs: call it with ``adaptive`` on training steps only.
    """
    if cfg.adaptive_info and adaptive is None:
        raise ValueError("LossConfig.adaptive_info is on: pass adaptive=cfg.make_adaptive(), kept across steps")
    functions = {
        "mse": lambda: mse_loss(pred, target),
        "cos": lambda: cosine_loss(pred, target),
        "info": lambda: info_nce_loss(pred, target, cfg.tau, article_ids),
        "moment": lambda: moment_loss(pred, target),
        "variance": lambda: variance_penalty(pred, target, cfg.variance_floor_ratio),
    }
    lambdas = {
        "mse": cfg.lambda_mse,
        "cos": cfg.lambda_cos,
        "info": cfg.lambda_info,
        "moment": cfg.lambda_moment,
        "variance": cfg.lambda_variance,
    }
    if cfg.adaptive_info:
        # λ_info depends on the current losses, so InfoNCE always needs its graph here.
        values = {"mse": functions["mse"](), "info": functions["info"]()}
        lambdas["info"] = adaptive.update(values["mse"].item(), values["info"].item())
    else:
        values = {}
    for name in COMPONENTS:
        if name in values:
            continue
        if lambdas[name] != 0.0:
            values[name] = functions[name]()
        else:
            with torch.no_grad():
                values[name] = functions[name]()

    total = sum(lambdas[name] * values[name] for name in COMPONENTS if lambdas[name] != 0.0)
    if not isinstance(total, Tensor):  # every λ is 0: a zero that still belongs to the graph
        total = pred.sum() * 0.0
    logged = torch.stack([values[n].detach().float() for n in COMPONENTS] + [total.detach().float()])
    components = dict(zip(COMPONENTS + ("total",), logged.tolist(), strict=False))  # one device sync, not six
    components["lambda_info"] = float(lambdas["info"])
    return total, components
