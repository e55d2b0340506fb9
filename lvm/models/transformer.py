"""A small causal Transformer over the context chunks (pre-LN, nanoGPT-style blocks).

    h⁰ = W_in x + p            learned position embeddings, right-aligned: the last real chunk
                               always sits at position ctx−1, however short the context
    hˡ = hˡ⁻¹ + Attn(LN hˡ⁻¹);  hˡ += MLP(LN hˡ)     causal, padded keys masked out
    ŷ  = normalize(W_out LN(hᴸ[:, -1]))

Masking: a query attends to real keys at or before it. A padded query would then have no key at
all, a row of −inf that some PyTorch versions and attention backends turn into NaN; so every
position may also attend to itself. Padded rows stay finite and, masked as keys, never reach a
real position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvm.errors import LvmError
from lvm.models.baselines import masked_context


@dataclass
class TransformerConfig:
    input_dim: int  # D, the encoder's dimension
    ctx: int  # longest context (chunks) the model reads; position embeddings are this long
    d_model: int = 256  # residual stream width
    n_layers: int = 2  # blocks; contexts are ~5 chunks, depth buys little
    n_heads: int = 4  # attention heads, head size d_model / n_heads = 64
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * d_model, as in GPT-2
    dropout: float = 0.0  # on attention and MLP outputs

    def __post_init__(self):
        for name in ("input_dim", "ctx", "d_model", "n_layers", "n_heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise LvmError(f"transformer config: {name} must be >= 1; got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise LvmError(f"transformer config: d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise LvmError(f"transformer config: dropout must be in [0, 1); got {self.dropout}")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h: Tensor, allowed: Tensor) -> Tensor:
        B, T, C = h.shape
        q, k, v = self.qkv(h).split(C, dim=2)  # 3 × (B, T, C)
        hs = C // self.n_heads
        q, k, v = (t.view(B, T, self.n_heads, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.dropout(self.proj(y))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        hidden = config.mlp_ratio * config.d_model
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, hidden),
            nn.GELU(),
            nn.Linear(hidden, config.d_model),
            nn.Dropout(config.dropout),
        )

    def forward(self, h: Tensor, allowed: Tensor) -> Tensor:
        h = h + self.attn(self.ln_attn(h), allowed)
        return h + self.mlp(self.ln_mlp(h))


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.w_in = nn.Linear(config.input_dim, config.d_model)
        self.pos = nn.Parameter(torch.zeros(config.ctx, config.d_model))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_out = nn.LayerNorm(config.d_model)
        self.w_out = nn.Linear(config.d_model, config.input_dim)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = masked_context(x, mask, self.config.input_dim, self.config.ctx)  # (B, T, D)
        T = x.shape[1]
        h = self.w_in(x) + self.pos[self.config.ctx - T :]  # (B, T, C), right-aligned positions
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T) key ≤ query
        eye = torch.eye(T, dtype=torch.bool, device=x.device)
        allowed = (causal & mask[:, None, :]) | eye  # (B, T, T): real keys at or before the query
        allowed = allowed[:, None]  # (B, 1, T, T), broadcast over heads
        for block in self.blocks:
            h = block(h, allowed)
        return F.normalize(self.w_out(self.ln_out(h[:, -1])), dim=-1)  # (B, D)
