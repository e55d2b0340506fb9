"""Null baselines: predictors with no trained parameters, behind the same interface as the models.

Every predictor in lvm is an ``nn.Module`` whose ``forward(x, mask)`` maps a left-padded context
``x`` (B, T, D) of unit chunk vectors, with ``mask`` (B, T) True for real chunks, to unit
predictions (B, D). A baseline can therefore go wherever a trained model goes (gates, leaderboard):
a model that does not beat these has learned nothing (GATES.md, ``beats_baselines``).

- ``CopyLast``: ŷ = x[:, -1], the last real chunk (always real by the padding convention).
- ``ContextMean``: ŷ = normalize(Σ_t m_t x_t / Σ_t m_t). The seeds' strongest null (0.5462).
- ``Ridge``: ŷ = normalize(W ᵀ flat(x) + b), closed-form ridge on the zero-padded context.

This module also owns the context convention itself (``masked_context``, ``context_mean``), which
the models import, so that every predictor checks and masks its input the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvm.errors import LvmError

# Log-spaced ridge penalties. The features are unit chunk vectors, so the Gram matrix grows with
# the number of training sequences (trace = number of real chunks); 1e-3 … 1e5 spans "almost
# unregularized" to "shrink to the mean target" for datasets from a few hundred to ~1e6 sequences.
DEFAULT_RIDGE_ALPHAS = tuple(10.0**k for k in range(-3, 6))


def masked_context(
    x: Tensor, mask: Tensor | None, input_dim: int | None = None, ctx: int | None = None
) -> tuple[Tensor, Tensor]:
    """Check a left-padded context and zero its padding: returns (x with padded rows = 0, mask).

    ``mask=None`` means every position is real. Raises ``LvmError`` when the shapes disagree,
    the last position is padding, or the mask is not left-padding (a real chunk before a pad).
    Zeroing the padding here (rather than trusting the caller) makes every predictor's output
    independent of whatever the padded slots hold, NaN included.
    """
    if x.dim() != 3:
        raise LvmError(f"context must have shape (batch, ctx, dim); got {tuple(x.shape)}")
    B, T, D = x.shape
    if input_dim is not None and input_dim != D:
        raise LvmError(
            f"context vectors are {D}-D but the model was built for {input_dim}-D; "
            "use a dataset encoded with the model's encoder"
        )
    if ctx is not None and ctx < T:
        raise LvmError(
            f"context has {T} chunks but the model was built for ctx={ctx}; "
            f"pass at most {ctx} chunks (sequences(ctx={ctx}))"
        )
    if mask is None:
        return x, torch.ones(B, T, dtype=torch.bool, device=x.device)
    if mask.shape != (B, T):
        raise LvmError(f"mask must have shape {(B, T)} to match the context; got {tuple(mask.shape)}")
    mask = mask.to(device=x.device, dtype=torch.bool)
    if torch.compiler.is_exporting():  # data-dependent checks cannot be traced into a torch.export graph
        return x.masked_fill(~mask[..., None], 0.0), mask
    if B and not bool(mask[:, -1].all()):
        raise LvmError("the last context position must be a real chunk (mask[:, -1] all True)")
    # Left padding: once a row turns real it stays real, i.e. no True followed by a False.
    if T > 1 and bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        raise LvmError("mask must be left padding: padded positions (False) only before real ones")
    return x.masked_fill(~mask[..., None], 0.0), mask


def context_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Masked mean over real chunks: Σ_t m_t x_t / Σ_t m_t, (B, T, D) -> (B, D), not normalized.

    Expects ``x`` already zero at padded positions (``masked_context``).
    """
    n_real = mask.sum(dim=1, keepdim=True).to(x.dtype)  # (B, 1), >= 1 by the padding convention
    return x.sum(dim=1) / n_real  # (B, D)


@dataclass
class BaselineConfig:
    input_dim: int | None = None  # D; informative for copy-last / mean, required by ridge
    ctx: int | None = None  # context length the baseline was built for


class CopyLast(nn.Module):
    """ŷ = x[:, -1]: predicts that the next chunk is the last one.

    Returned exactly, not re-normalized: inputs are unit vectors already, and an exact copy keeps
    this negative control sharp (its offset sweep peaks at k = −1 with cos = 1 exactly).
    """

    def __init__(self, input_dim: int | None = None, ctx: int | None = None):
        super().__init__()
        self.config = BaselineConfig(input_dim, ctx)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        masked_context(x, mask, self.config.input_dim, self.config.ctx)  # checks only
        return x[:, -1].clone()  # (B, D)


class ContextMean(nn.Module):
    """ŷ = normalize(Σ_t m_t x_t / Σ_t m_t): the mean of the real context chunks."""

    def __init__(self, input_dim: int | None = None, ctx: int | None = None):
        super().__init__()
        self.config = BaselineConfig(input_dim, ctx)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = masked_context(x, mask, self.config.input_dim, self.config.ctx)
        return F.normalize(context_mean(x, mask), dim=-1)  # (B, D)


def _as_tensor(a, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a).to("cpu", dtype)


class Ridge(nn.Module):
    """Closed-form ridge regression from the flattened zero-padded context to the next chunk.

    Features f = flat(x) ∈ R^{ctx·D} (padding zero, short contexts left-padded to ``ctx``).
    With centred statistics S_ff = Σ (f − f̄)(f − f̄)ᵀ and S_fy = Σ (f − f̄)(y − ȳ)ᵀ:

        W_α = (S_ff + α I)⁻¹ S_fy,   b = ȳ − W_αᵀ f̄,   ŷ = normalize(W_αᵀ f + b)

    The bias is fitted by centring, so it is not shrunk by α. α is chosen from a grid by the mean
    validation cosine. ``weight`` and ``bias`` are buffers: ``state_dict()`` saves with safetensors.
    """

    def __init__(self, input_dim: int, ctx: int):
        super().__init__()
        integral = (int, np.integer)
        if not (isinstance(input_dim, integral) and input_dim > 0 and isinstance(ctx, integral) and ctx > 0):
            raise LvmError(f"Ridge needs positive integer input_dim and ctx; got {input_dim}, {ctx}")
        input_dim, ctx = int(input_dim), int(ctx)
        self.config = BaselineConfig(input_dim, ctx)
        n_features = ctx * input_dim
        self.register_buffer("weight", torch.zeros(n_features, input_dim))  # (ctx*D, D)
        self.register_buffer("bias", torch.zeros(input_dim))  # (D,)
        # NaN until fitted; a buffer so that a reloaded model knows its alpha and that it is fitted.
        self.register_buffer("fitted_alpha", torch.tensor(float("nan"), dtype=torch.float64))
        self.val_scores: dict[float, float] = {}  # alpha -> mean val cosine, from the last fit

    @property
    def alpha(self) -> float | None:
        a = float(self.fitted_alpha)
        return None if math.isnan(a) else a

    def _features(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """(B, T, D) context -> (B, ctx*D) flattened features, zero-padded on the left to ctx."""
        x, _ = masked_context(x, mask, self.config.input_dim, self.config.ctx)
        B, T, D = x.shape
        if self.config.ctx > T:
            x = F.pad(x, (0, 0, self.config.ctx - T, 0))  # (B, ctx, D): more left padding
        return x.reshape(B, self.config.ctx * D)

    def _batch(self, batch) -> tuple[Tensor, Tensor]:
        try:
            x, mask, y = batch
        except (TypeError, ValueError):
            raise LvmError("Ridge.fit expects batches of (x, mask, y)") from None
        x, mask, y = _as_tensor(x, torch.float64), _as_tensor(mask, torch.bool), _as_tensor(y, torch.float64)
        if y.shape != (x.shape[0], self.config.input_dim):
            raise LvmError(f"targets must have shape (batch, {self.config.input_dim}); got {tuple(y.shape)}")
        return self._features(x, mask), y

    @torch.no_grad()
    def fit(
        self,
        train_batches: Iterable,
        val_batches: Iterable,
        alphas: Iterable[float] = DEFAULT_RIDGE_ALPHAS,
    ) -> Ridge:
        """Fit on ``train_batches``, choose α on ``val_batches``; each yields (x, mask, y) arrays.

        One pass over train accumulates Σf, Σy, ΣffT, ΣfyT in float64; S_ff = V Λ Vᵀ is
        eigendecomposed once, so every α costs only a rescaling: W_α = V diag(1/(λ+α)) Vᵀ S_fy.
        One pass over val scores every α. Returns self.
        """
        alphas = sorted(float(a) for a in alphas)
        if not alphas or any(not math.isfinite(a) or a <= 0 for a in alphas):
            raise LvmError(f"ridge alphas must be a non-empty list of positive numbers; got {alphas}")
        n_features, D = self.weight.shape
        n = 0
        sum_f = torch.zeros(n_features, dtype=torch.float64)
        sum_y = torch.zeros(D, dtype=torch.float64)
        gram = torch.zeros(n_features, n_features, dtype=torch.float64)  # Σ f fᵀ
        cross = torch.zeros(n_features, D, dtype=torch.float64)  # Σ f yᵀ
        for batch in train_batches:
            f, y = self._batch(batch)  # (B, ctx*D), (B, D)
            n += f.shape[0]
            sum_f += f.sum(0)
            sum_y += y.sum(0)
            gram += f.T @ f
            cross += f.T @ y
        if n < 2:
            raise LvmError(f"Ridge.fit needs at least 2 training sequences; got {n}")
        mean_f, mean_y = sum_f / n, sum_y / n
        s_ff = gram - n * torch.outer(mean_f, mean_f)  # centred Gram
        s_fy = cross - n * torch.outer(mean_f, mean_y)
        eigvals, eigvecs = torch.linalg.eigh(s_ff)  # S_ff = V diag(λ) Vᵀ
        eigvals = eigvals.clamp_min(0.0)  # round-off can make the null space slightly negative
        proj = eigvecs.T @ s_fy  # (F, D): Vᵀ S_fy, shared by every α

        cos_sum = torch.zeros(len(alphas), dtype=torch.float64)
        n_val = 0
        for batch in val_batches:
            f, y = self._batch(batch)
            z = (f - mean_f) @ eigvecs  # (B, F): centred features in the eigenbasis
            y = F.normalize(y, dim=-1)
            for i, a in enumerate(alphas):
                pred = (z / (eigvals + a)) @ proj + mean_y  # (B, D)
                cos_sum[i] += (F.normalize(pred, dim=-1) * y).sum()
            n_val += f.shape[0]
        if n_val == 0:
            raise LvmError("Ridge.fit needs validation sequences to choose alpha; got none")
        scores = (cos_sum / n_val).tolist()
        self.val_scores = dict(zip(alphas, scores, strict=False))
        # On a tie prefer the larger alpha: the same validation score with a smaller weight norm.
        best = max(range(len(alphas)), key=lambda i: (scores[i], alphas[i]))

        w = eigvecs @ (proj / (eigvals + alphas[best])[:, None])  # (F, D)
        b = mean_y - mean_f @ w  # (D,)
        self.weight.copy_(w.to(self.weight))
        self.bias.copy_(b.to(self.bias))
        self.fitted_alpha.fill_(alphas[best])
        return self

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.alpha is None:
            raise LvmError("the ridge baseline is not fitted: call Ridge.fit(train, val) first")
        f = self._features(x, mask).to(self.weight.dtype)  # (B, ctx*D)
        return F.normalize(f @ self.weight + self.bias, dim=-1)  # (B, D)


BASELINES = {"copy_last": CopyLast, "context_mean": ContextMean, "ridge": Ridge}


RIDGE_CACHE = "cache"  # folder beside a dataset's arrays (outside its content hash) for fitted baselines


def null_baselines(ds, ctx: int, min_ctx: int, fit_sample: int | None = None, seed: int = 0) -> dict[str, nn.Module]:
    """The null baselines of a dataset at one context: copy-last, context mean, and a ridge fitted
    in closed form on a seeded sample of ``fit_sample`` train sequences (alpha chosen on val): its
    cost is N·(ctx·D)², so a sample bounds it at any dataset size. The fitted ridge is cached beside
    the dataset (``cache/``, keyed by the dataset's content hash, ctx, min_ctx, sample and seed):
    fitted once per dataset, not once per gate run."""
    return {
        "copy_last": CopyLast(),
        "context_mean": ContextMean(),
        "ridge": _cached_ridge(ds, ctx, min_ctx, fit_sample, seed),
    }


def _cached_ridge(ds, ctx: int, min_ctx: int, fit_sample: int | None, seed: int) -> Ridge:
    import hashlib
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from lvm.io import write_atomic

    key = hashlib.sha256(json.dumps([ds.content_hash, ctx, min_ctx, fit_sample, seed]).encode()).hexdigest()[:20]
    path = ds.path / RIDGE_CACHE / f"ridge-{key}.safetensors"
    ridge = Ridge(ds.dim, ctx)
    if path.is_file():
        try:
            ridge.load_state_dict(load_file(str(path)), strict=True)
            return ridge
        except (SafetensorError, OSError, RuntimeError, ValueError):
            pass  # a damaged cache is refitted
    _fit_ridge(ridge, ds, ctx, min_ctx, fit_sample, seed)
    try:  # best effort: a read-only dataset folder just refits next time
        path.parent.mkdir(exist_ok=True)
        state = {k: v.contiguous() for k, v in ridge.state_dict().items()}
        write_atomic(path, lambda tmp: save_file(state, str(tmp)))
    except OSError:
        pass
    return ridge


def _fit_ridge(ridge: Ridge, ds, ctx: int, min_ctx: int, fit_sample: int | None, seed: int) -> None:
    import numpy as np

    train, val = ds.sequences("train", ctx, min_ctx), ds.sequences("val", ctx, min_ctx)
    rng = np.random.default_rng(seed)

    def pick(v):
        return np.sort(rng.choice(len(v), size=min(fit_sample or len(v), len(v)), replace=False))

    def batches(v, idx):
        return (v.batch(idx[s : s + 4096]) for s in range(0, len(idx), 4096))

    ridge.fit(batches(train, pick(train)), batches(val, pick(val)))
