"""Two models written outside lvm, the way a user brings their own to the gates.

Both follow the one contract the gates call: ``forward(x, mask) -> (B, D)`` with ``x`` (B, T, D)
float32 context vectors, left-padded, and ``mask`` (B, T) bool, True for real chunks (the last
position is always real). Neither class imports lvm; only ``train_briefly`` does, to read
sequences.

- ``FlatMLP``: an MLP over the flattened context. It cannot take padding, so its card declares
  ``accepts_mask: false`` and the gates score it on full contexts only (min_ctx = ctx).
- ``AttentionMixture``: the seeds' published AMN structure: context-mean baseline + single-head
  attention over the context (query from the last chunk) + a residual MLP,
  ``ŷ = normalize(mean + attention + MLP([mean, attention]))``, padded positions ignored.

Gate them (see examples/README.md):

    pytest gates/ --checkpoint=py:examples/user_models.py:attention_mixture --model-card CARD.json --dataset=DIR
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FlatMLP(nn.Module):
    """ŷ = normalize(MLP(flatten(x))): every slot has its own weights, so padding would be read as
    content; hence ``accepts_mask = False`` (the mask only zeroes what it marks)."""

    def __init__(self, dim: int, ctx: int, hidden: int = 512):
        super().__init__()
        self.dim, self.ctx = dim, ctx
        self.net = nn.Sequential(nn.Linear(ctx * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # (B, T, D), (B, T) -> (B, D)
        x = x * mask.unsqueeze(-1).to(x.dtype)
        return F.normalize(self.net(x.reshape(x.shape[0], self.ctx * self.dim)), dim=-1)


class AttentionMixture(nn.Module):
    """Context mean + single-head attention (query from the last chunk) + residual MLP."""

    def __init__(self, dim: int, ctx: int, hidden: int = 256, d_attn: int = 128):
        super().__init__()
        self.dim, self.ctx, self.d_attn = dim, ctx, d_attn
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, d_attn)
        self.key = nn.Linear(dim, d_attn)
        self.key_pos = nn.Parameter(0.02 * torch.randn(ctx, d_attn))  # right-aligned: slot ctx-1 = last chunk
        self.mlp = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[-1].weight)  # untrained: normalize(mean + attention)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # (B, T, D), (B, T) -> (B, D)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        x = x * m  # padded slots contribute nothing, whatever they hold
        mean = x.sum(dim=1) / m.sum(dim=1).clamp_min(1.0)  # (B, D)
        h = self.norm(x)
        q = self.query(h[:, -1])  # (B, d): the last chunk asks
        k = self.key(h) + self.key_pos[self.ctx - x.shape[1] :]  # (B, T, d)
        scores = torch.einsum("bd,btd->bt", q, k) / math.sqrt(self.d_attn)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # 0 on padding
        attended = torch.einsum("bt,btd->bd", weights, x)  # (B, D)
        residual = self.mlp(torch.cat([mean, attended], dim=-1))
        return F.normalize(mean + attended + residual, dim=-1)


# ----------------------------------------------------------------------------- factories (py:FILE:NAME)


def flat_mlp(dim: int = 384, ctx: int = 4, hidden: int = 512):
    """``py:examples/user_models.py:flat_mlp``: an untrained FlatMLP and its card."""
    model = FlatMLP(dim, ctx, hidden)
    return model, {
        "name": "flat_mlp",
        "type": "FlatMLP",
        "ctx": ctx,
        "min_ctx": ctx,
        "input_dim": dim,
        "accepts_mask": False,
        "model_config": {"dim": dim, "ctx": ctx, "hidden": hidden},
    }


def attention_mixture(dim: int = 384, ctx: int = 5, hidden: int = 256, d_attn: int = 128):
    """``py:examples/user_models.py:attention_mixture``: an untrained AttentionMixture and its card."""
    model = AttentionMixture(dim, ctx, hidden, d_attn)
    return model, {
        "name": "attention_mixture",
        "type": "AttentionMixture",
        "ctx": ctx,
        "min_ctx": 1,
        "input_dim": dim,
        "model_config": {"dim": dim, "ctx": ctx, "hidden": hidden, "d_attn": d_attn},
    }


def save_for_gates(model: nn.Module, folder: str | Path, card: dict) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/card.json`` (``card`` + ``"weights"``).

    Gate with ``--checkpoint=py:examples/user_models.py:FACTORY --model-card folder/card.json``:
    the factory is called with ``card["model_config"]`` and the weights are loaded strictly.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors")
    )
    (folder / "card.json").write_text(json.dumps({**card, "weights": "model.safetensors"}, indent=2))
    return folder / "card.json"


# ----------------------------------------------------------------------------- a short training loop


def train_briefly(
    model: nn.Module,
    dataset_dir: str | Path,
    ctx: int,
    min_ctx: int,
    steps: int = 300,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """A plain PyTorch loop: AdamW on 1 − cos(ŷ, y) over random train sequences; returns the model in eval mode."""
    from lvm.data.datasets import open_dataset

    view = open_dataset(dataset_dir).sequences("train", ctx, min_ctx)
    if not len(view):
        raise ValueError(f"{dataset_dir}: no train sequences at ctx={ctx}, min_ctx={min_ctx}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for _ in range(steps):
        x, mask, y = view.batch(np.sort(rng.choice(len(view), size=min(batch_size, len(view)), replace=False)))
        pred = model(torch.from_numpy(x), torch.from_numpy(mask))
        loss = 1.0 - F.cosine_similarity(pred, torch.from_numpy(y), dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
