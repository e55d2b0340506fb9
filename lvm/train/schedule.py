"""The learning-rate schedule (linear warm-up, then cosine decay to a floor) and EMA weights."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

EMA_WARMUP = 10  # EMA decay ramps as (1+t)/(EMA_WARMUP+t) so early epochs are not the init weights


def lr_lambda(total_steps: int, warmup_frac: float, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier for ``LambdaLR``, with W = max(1, ⌊total_steps·warmup_frac⌋) warm-up steps:

    f(s) = (s + 1) / W                                      s < W
    f(s) = r + (1 − r)·½·(1 + cos(π·min(1, (s − W)/(T − W))))   otherwise, r = min_ratio
    """
    warm = max(1, int(total_steps * warmup_frac))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class EMA:
    """Exponential moving average of the weights: θ̄ ← d·θ̄ + (1−d)·θ, d = min(decay, (1+t)/(10+t))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.steps = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (EMA_WARMUP + self.steps))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)
