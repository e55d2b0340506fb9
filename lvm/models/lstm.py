"""LSTM stack: the GRU stack's structure (gru.py) with LSTM cells.

    h⁰ = W_in x                                  (B, T, H)
    hˡ = hˡ⁻¹ + dropout(LSTMˡ(hˡ⁻¹))              residual between layers, l = 1…L
    ŷ  = normalize(W_out LN(hᴸ at the last real chunk))

Padded steps never run (packed sequences), see gru.py. The cell state gives the LSTM a separate
memory path, at 4/3 of the GRU's recurrent parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lvm.models.gru import RecurrentConfig, RecurrentStack


@dataclass
class LSTMConfig(RecurrentConfig):
    pass


class LSTM(RecurrentStack):
    rnn_class = nn.LSTM
