"""Models of the seeds' shape, written here for the tests (not the seeds' code): each class is built
from keyword arguments (the ``model_config`` its trainer saves), ``forward(x, return_raw=False)`` reads
full windows ``x`` (B, T, D) without a mask and returns the normalised prediction (B, D), or
``(raw, normalised)`` when ``return_raw`` is set. ``SelectiveScan`` is a Mamba-like model in plain torch
whose ``forward(x)`` returns a prediction per position (B, T, D), as the seeds' Mamba variants do.

``train_full_windows`` trains one a few steps on full windows of a dataset, and ``save_seeds_way``
writes it the way the seeds' trainer does: ``torch.save({'model_state_dict', 'model_config', 'args',
'epoch', 'val_cosine'}, 'best_model.pt')``. This file imports nothing from lvm at module level: it is
what a user's ``models.py`` looks like.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _out(raw: Tensor, return_raw: bool):
    unit = F.normalize(raw, p=2, dim=-1)
    return (raw, unit) if return_raw else unit


class MixtureOfContext(nn.Module):
    """Attention-mixture shape: the context mean is the baseline, one attention read with the mean as
    query, and a residual MLP over [mean, attended]; ŷ = normalize(mean + residual)."""

    def __init__(self, input_dim: int = 384, d_model: int = 128, hidden_dim: int = 256):
        super().__init__()
        self.keys = nn.Linear(input_dim, d_model)
        self.query = nn.Linear(input_dim, d_model)
        self.d_model = d_model
        self.residual = nn.Sequential(
            nn.Linear(2 * input_dim, hidden_dim),
            nn.GELU(),
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, input_dim),
        )
        nn.init.zeros_(self.residual[-1].weight)  # untrained: the context mean
        nn.init.zeros_(self.residual[-1].bias)

    def forward(self, x: Tensor, return_raw: bool = False, return_attention: bool = False):
        mean = x.mean(dim=1)
        scores = torch.einsum("bd,btd->bt", self.query(mean), self.keys(x)) / math.sqrt(self.d_model)
        weights = scores.softmax(dim=-1)
        attended = torch.einsum("bt,btd->bd", weights, x)
        raw = mean + self.residual(torch.cat([mean, attended], dim=-1))
        if return_attention:
            return F.normalize(raw, dim=-1), weights
        return _out(raw, return_raw)


class RecurrentStack(nn.Module):
    """GRU-stack shape: projection, residual GRU blocks with LayerNorm, the last step projected back."""

    def __init__(self, input_dim: int = 384, d_model: int = 128, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(input_dim, d_model)
        self.grus = nn.ModuleList(nn.GRU(d_model, d_model, batch_first=True) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_layers))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, input_dim)

    def forward(self, x: Tensor, return_raw: bool = False):
        h = self.inp(x)
        for gru, norm in zip(self.grus, self.norms, strict=True):
            h = norm(h + self.drop(gru(h)[0]))
        return _out(self.out(h[:, -1]), return_raw)


class LongShortTerm(nn.Module):
    """LSTM shape: a stacked LSTM, its last step projected to the input dim."""

    def __init__(self, input_dim: int = 384, hidden_dim: int = 256, num_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.lstm = nn.LSTM(
            input_dim, hidden_dim, num_layers=num_layers, dropout=dropout if num_layers > 1 else 0.0, batch_first=True
        )
        self.proj = nn.Linear(hidden_dim, input_dim)

    def forward(self, x: Tensor, return_raw: bool = False):
        return _out(self.proj(self.lstm(x)[0][:, -1]), return_raw)


class CausalEncoderPredictor(nn.Module):
    """Transformer shape: projection, sinusoidal positions, a causal ``nn.TransformerEncoder`` (its
    causal mask detected by torch, which ``torch.export`` cannot trace), a head on the last step."""

    def __init__(
        self, input_dim: int = 384, d_model: int = 128, nhead: int = 4, num_layers: int = 2, dropout: float = 0.1
    ):
        super().__init__()
        self.inp = nn.Linear(input_dim, d_model)
        pos = torch.arange(64, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(64, d_model)
        table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
        self.register_buffer("positions", table)
        layer = nn.TransformerEncoderLayer(d_model, nhead, 2 * d_model, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, input_dim))

    def forward(self, x: Tensor, return_raw: bool = False):
        t = x.shape[1]
        h = self.inp(x) + self.positions[:t]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=x.device)
        h = self.encoder(h, mask=causal)
        return _out(self.head(h[:, -1]), return_raw)


class SelectiveScan(nn.Module):
    """Mamba-like shape in plain torch: per block, an input-dependent step size and gates drive a
    diagonal state-space scan over time (a Python loop over T), a SiLU gate, a residual; ``forward(x)``
    returns a normalised prediction at every position (B, T, D)."""

    def __init__(self, input_dim: int = 384, d_model: int = 96, d_state: int = 8, n_layers: int = 2):
        super().__init__()
        self.inp = nn.Linear(input_dim, d_model)
        self.blocks = nn.ModuleList(_ScanBlock(d_model, d_state) for _ in range(n_layers))
        self.out = nn.Linear(d_model, input_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return F.normalize(self.out(h), p=2, dim=-1)


class _ScanBlock(nn.Module):
    def __init__(self, d_model: int, d_state: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_model)
        self.dt = nn.Linear(d_model, d_model)
        self.b = nn.Linear(d_model, d_state)
        self.c = nn.Linear(d_model, d_state)
        self.log_a = nn.Parameter(torch.log(torch.linspace(1.0, 4.0, d_state)).repeat(d_model, 1))  # (d, n)
        self.skip = nn.Parameter(torch.ones(d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, h: Tensor) -> Tensor:
        u, gate = self.in_proj(self.norm(h)).chunk(2, dim=-1)  # (B, T, d) each
        u = F.silu(u)
        step = F.softplus(self.dt(u))  # (B, T, d)
        a = -torch.exp(self.log_a)  # (d, n)
        b, c = self.b(u), self.c(u)  # (B, T, n)
        state = h.new_zeros(h.shape[0], h.shape[2], a.shape[1])  # (B, d, n)
        ys = []
        for t in range(h.shape[1]):
            decay = torch.exp(step[:, t, :, None] * a)  # (B, d, n)
            state = decay * state + (step[:, t, :, None] * b[:, t, None, :]) * u[:, t, :, None]
            ys.append(torch.einsum("bdn,bn->bd", state, c[:, t]) + self.skip * u[:, t])
        y = torch.stack(ys, dim=1) * F.silu(gate)
        return h + self.out_proj(y)


SEEDS_SHAPED = {
    "MixtureOfContext": {"input_dim": 384, "d_model": 128, "hidden_dim": 256},
    "RecurrentStack": {"input_dim": 384, "d_model": 128, "num_layers": 2, "dropout": 0.0},
    "LongShortTerm": {"input_dim": 384, "hidden_dim": 256, "num_layers": 2, "dropout": 0.1},
    "CausalEncoderPredictor": {"input_dim": 384, "d_model": 128, "nhead": 4, "num_layers": 2, "dropout": 0.1},
    "SelectiveScan": {"input_dim": 384, "d_model": 96, "d_state": 8, "n_layers": 2},
}


def _last(out: Tensor) -> Tensor:
    return out[:, -1] if out.dim() == 3 else out


def full_windows(dataset_dir: str | Path, split: str, ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """(contexts (N, ctx, D), targets (N, D)) of every full window of a split: the seeds' training npz."""
    from lvm.data.datasets import open_dataset

    view = open_dataset(dataset_dir).sequences(split, ctx, ctx)
    x, _, y = view.batch(np.arange(len(view)))
    return x, y


def train_full_windows(
    model: nn.Module, dataset_dir: str | Path, ctx: int, steps: int = 60, batch_size: int = 64, lr: float = 2e-3
) -> float:
    """AdamW on 1 − cos over full train windows, as a seeds trainer would; returns the val cosine it
    computes itself (mean over every full val window, the model called as the seeds call it)."""
    x, y = full_windows(dataset_dir, "train", ctx)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for _ in range(steps):
        idx = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
        pred = _last(model(torch.from_numpy(x[idx])))
        loss = 1.0 - F.cosine_similarity(pred, torch.from_numpy(y[idx]), dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    vx, vy = full_windows(dataset_dir, "val", ctx)
    with torch.no_grad():
        pred = _last(model(torch.from_numpy(vx)))
    return float(F.cosine_similarity(pred, torch.from_numpy(vy), dim=-1).mean())


def save_seeds_way(model: nn.Module, config: dict, path: str | Path, val_cosine: float, ctx: int) -> Path:
    """``best_model.pt`` as the seeds' trainer writes it (a pickled dict; args an argparse.Namespace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(
        model_type=type(model).__name__,
        data=f"artifacts/lvm/training_sequences_ctx{ctx}.npz",
        context_length=ctx,
        epochs=1,
        batch_size=64,
        lr=2e-3,
        output_dir=Path("artifacts/lvm/models") / type(model).__name__,
    )
    torch.save(
        {
            "epoch": 1,
            "model_type": type(model).__name__,
            "model_state_dict": model.state_dict(),
            "val_cosine": val_cosine,
            "model_config": dict(config),
            "args": args,
        },
        path,
    )
    return path
