"""GRU stack: input projection, residual recurrent layers, output projection from the last step.

    h⁰ = W_in x                                  (B, T, H)
    hˡ = hˡ⁻¹ + dropout(GRUˡ(hˡ⁻¹))               residual between layers, l = 1…L
    ŷ  = normalize(W_out LN(hᴸ at the last real chunk))

Left padding and recurrence: zeroing the padded inputs is not enough, because a GRU step on a
zero input still moves the hidden state (biases). The padded context is therefore right-aligned
and packed (``pack_padded_sequence``), so the recurrence starts at the first real chunk and padded
steps never run. ``RecurrentStack`` is shared with the LSTM (lstm.py), which differs only in cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lvm.errors import LvmError
from lvm.models.baselines import masked_context


@dataclass
class RecurrentConfig:
    input_dim: int  # D, the encoder's dimension
    ctx: int  # longest context (chunks) the model reads
    hidden_dim: int = 256  # recurrent width H; keeps the stack near AMN's size at D=768
    n_layers: int = 2  # recurrent layers, residual between them
    dropout: float = 0.0  # on each layer's output before the residual add

    def __post_init__(self):
        for name in ("input_dim", "ctx", "hidden_dim", "n_layers"):
            if getattr(self, name) < 1:
                raise LvmError(f"{self.kind} config: {name} must be >= 1; got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise LvmError(f"{self.kind} config: dropout must be in [0, 1); got {self.dropout}")

    @property
    def kind(self) -> str:
        return type(self).__name__.removesuffix("Config").lower()


@dataclass
class GRUConfig(RecurrentConfig):
    pass


def right_align(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Left-padded (B, T, ·) -> right-padded, plus lengths (B,): row b is rolled left by its pads."""
    B, T = mask.shape
    lengths = mask.sum(dim=1)  # (B,)
    src = (torch.arange(T, device=x.device)[None, :] + (T - lengths)[:, None]) % T  # (B, T)
    return x.gather(1, src[..., None].expand(-1, -1, x.shape[-1])), lengths


class RecurrentStack(nn.Module):
    rnn_class: type[nn.RNNBase]  # nn.GRU or nn.LSTM, set by the subclass

    def __init__(self, config: RecurrentConfig):
        super().__init__()
        self.config = config
        D, H = config.input_dim, config.hidden_dim
        self.w_in = nn.Linear(D, H)
        # One single-layer RNN per layer, so that the residual can be added between layers.
        self.layers = nn.ModuleList(self.rnn_class(H, H, batch_first=True) for _ in range(config.n_layers))
        self.dropout = nn.Dropout(config.dropout)
        self.ln_out = nn.LayerNorm(H)
        self.w_out = nn.Linear(H, D)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, mask = masked_context(x, mask, self.config.input_dim, self.config.ctx)  # (B, T, D)
        x, lengths = right_align(x, mask)  # (B, T, D), real chunks first
        h = self.w_in(x)  # (B, T, H)
        # lengths live on the CPU for packing; enforce_sorted=False keeps the batch order.
        packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        data = packed.data  # (Σ lengths, H): only real steps
        for rnn in self.layers:
            out, _ = rnn(packed._replace(data=data))
            data = data + self.dropout(out.data)  # residual, step by step in packed order
        h, _ = pad_packed_sequence(packed._replace(data=data), batch_first=True)  # (B, T_max, H), batch order
        last = h[torch.arange(h.shape[0], device=h.device), lengths.to(h.device) - 1]  # (B, H)
        return F.normalize(self.w_out(self.ln_out(last)), dim=-1)  # (B, D)


class GRU(RecurrentStack):
    rnn_class = nn.GRU
