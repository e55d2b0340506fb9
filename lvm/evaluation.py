"""model -> predictions: streamed inference over sequence views, context ablations, latency, and
``ModelEval`` (one model on one view, predictions computed once and shared by every gate).

Predictions are computed in batches from the memory-mapped bank; nothing builds [N, ctx, D].
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cached_property

import numpy as np
import torch
from torch import nn

from lvm import metrics as M
from lvm.data.datasets import SequenceView

ABLATIONS = ("shuffle", "reverse", "leave_one_out", "repeat_pad", "cross_article")


@torch.no_grad()
def predict(
    model: nn.Module,
    view: SequenceView,
    idx: np.ndarray | None = None,
    batch_size: int = 2048,
    ablation: str | None = None,
    seed: int = 0,
) -> np.ndarray:
    """ŷ for sequences ``idx`` of ``view`` (all by default), optionally on an ablated context."""
    model.eval()
    idx = np.arange(len(view)) if idx is None else np.asarray(idx)
    out = np.empty((len(idx), view.dataset.dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for s in range(0, len(idx), batch_size):
        part = idx[s : s + batch_size]
        x, mask, _ = view.batch(part)
        if ablation is not None:
            x, mask = ablate(x, mask, ablation, rng, view, part)
        out[s : s + len(part)] = model(torch.from_numpy(x), torch.from_numpy(mask)).float().numpy()
    return out


def ablate(x: np.ndarray, mask: np.ndarray, kind: str, rng: np.random.Generator, view: SequenceView, idx: np.ndarray):
    """Perturb contexts (left-padded, mask True = real) the way GATES.md ``context_ablations`` lists.

    shuffle: real chunks in random order; reverse: real chunks in reverse order; leave_one_out: one
    random real chunk removed (context re-left-padded); repeat_pad: padding slots filled with the
    first real chunk (mask True, as a loader that pads by repetition would); cross_article: the
    last chunk replaced by a chunk of another article.
    """
    x, mask = x.copy(), mask.copy()
    b, ctx, _ = x.shape
    n_real = mask.sum(axis=1)
    if kind in ("shuffle", "reverse"):
        for i in range(b):
            slots = np.flatnonzero(mask[i])
            order = slots[::-1] if kind == "reverse" else rng.permutation(slots)
            x[i, slots] = x[i, order]
    elif kind == "leave_one_out":
        for i in range(b):
            slots = np.flatnonzero(mask[i])
            if len(slots) < 2:
                continue  # a single-chunk context has nothing to leave out
            keep = np.delete(slots, rng.integers(len(slots)))
            kept = x[i, keep].copy()
            x[i] = 0.0
            mask[i] = False
            x[i, ctx - len(keep) :] = kept
            mask[i, ctx - len(keep) :] = True
    elif kind == "repeat_pad":
        first = ctx - n_real  # index of the first real slot per row
        for i in range(b):
            x[i, : first[i]] = x[i, first[i]]
        mask[:] = True
    elif kind == "cross_article":
        articles = view.dataset.article_id
        own = articles[view.targets[idx]]
        other = rng.integers(0, view.dataset.n_chunks, size=b)
        for _ in range(10):
            clash = articles[other] == own
            if not clash.any():
                break
            other[clash] = rng.integers(0, view.dataset.n_chunks, size=int(clash.sum()))
        x[:, -1] = np.asarray(view.dataset.vectors[other], dtype=np.float32)
    else:
        raise ValueError(f"unknown ablation {kind!r}; expected one of {', '.join(ABLATIONS)}")
    return x, mask


REFERENCE_PROBE = (32, 384, 384)  # (m, k, n) float32 matmul timed beside every model call: the machine's unit of speed


def reference_probe(seed: int = 0):
    """A fixed float32 matmul (about 0.1 ms on one core of the CI machine): the latency gate's unit."""
    g = torch.Generator().manual_seed(seed)
    m, k, n = REFERENCE_PROBE
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    return lambda: torch.mm(a, b)


def _timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call: CPU time does not count time the process
    waited for a core, so a busy neighbour inflates wall time but hardly CPU time."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0, time.process_time() - c0


@torch.no_grad()
def batch1_latency(
    model: nn.Module,
    view: SequenceView,
    n_calls: int = 500,
    warmup: int = 50,
    threads: int = 1,
    seed: int = 0,
    fast: bool = True,
    n_check: int = 256,
) -> dict[str, np.ndarray]:
    """Batch-1 forward passes on real sequences after ``warmup`` calls, with ``threads``; each call
    is followed by one reference probe in the same process. Returns per-call seconds:
    ``wall``, ``cpu`` (the model) and ``ref_wall``, ``ref_cpu`` (the probe).

    With ``fast`` the calls go through ``lvm.models.inference.fast_inference``: the fastest path
    (ONNX Runtime, TorchScript, int8 weights) whose outputs equal the eager model's (cos ≥ 0.9999)
    on ``n_check`` sequences of the view (half of them re-padded), else the eager model. The
    returned ``Timings`` carries ``inference``: the path taken, its min cos and the eager figures."""
    from lvm.models.inference import Timings, check_contexts, fast_inference

    model.eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(view), size=n_calls + warmup)
        x, mask, _ = view.batch(idx)
        xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = model
        info = None
        if fast:
            cx, cm, _ = view.batch(np.sort(rng.choice(len(view), size=min(n_check, len(view)), replace=False)))
            chosen = fast_inference(model, *check_contexts(cx, cm, seed=seed), threads=threads)
            fn, info = chosen.fn, chosen.info()
        probe = reference_probe(seed)
        out = Timings({k: np.empty(n_calls) for k in ("wall", "cpu", "ref_wall", "ref_cpu")})
        out.inference = info
        for i in range(n_calls + warmup):
            wall, cpu = _timed(fn, xt[i : i + 1], mt[i : i + 1])
            ref_wall, ref_cpu = _timed(probe)
            if i >= warmup:
                j = i - warmup
                out["wall"][j], out["cpu"][j], out["ref_wall"][j], out["ref_cpu"][j] = wall, cpu, ref_wall, ref_cpu
        return out
    finally:
        torch.set_num_threads(previous)


class ModelEval:
    """One model on one sequence view: predictions and targets computed once, shared by gates."""

    def __init__(self, model, view: SequenceView, name: str, card=None):
        self.model, self.view, self.name, self.card = model, view, name, card

    @property
    def callable(self) -> bool:
        """False for predictions-only models: gates that must call the model SKIP."""
        return self.model is not None

    @cached_property
    def pred(self) -> np.ndarray:
        return predict(self.model, self.view)

    def use_predictions(self, pred: np.ndarray) -> None:
        """Predictions made elsewhere, aligned to this view's sequences (checked by the caller)."""
        if pred.shape != (len(self.view), self.view.dataset.dim):
            raise ValueError(
                f"predictions of shape {pred.shape} for {len(self.view)} sequences of dim {self.view.dataset.dim}"
            )
        self.__dict__["pred"] = pred

    @property
    def target(self) -> np.ndarray:
        return self.view.target_vectors  # shared by every model evaluated on this view

    @cached_property
    def cos(self) -> np.ndarray:
        return M.rowwise_cos(self.pred, self.target)

    def where(self) -> dict:
        return {"dataset": self.view.dataset.path.name, "checkpoint": self.name, "split": self.view.split}

    def sample(self, n: int | None, seed: int = 0) -> np.ndarray:
        """Sorted seeded sample of ``n`` sequence indices (all of them when ``n`` is None or larger)."""
        if n is None or n >= len(self.view):
            return np.arange(len(self.view))
        return np.sort(np.random.default_rng(seed).choice(len(self.view), size=n, replace=False))


@torch.no_grad()
def evaluate(model: nn.Module, view: SequenceView, loss_cfg=None, batch_size: int = 2048, device=None) -> dict:
    """Mean cos(ŷ, y) over every sequence of ``view`` (streamed in batches), plus the mean loss
    under ``loss_cfg`` (a ``lvm.losses.LossConfig``; NaN without one)."""
    from dataclasses import asdict

    from lvm.losses import LossConfig, compute_loss

    device = device or next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    cos_sum, loss_sum, n = 0.0, 0.0, 0
    # eval loss with a fixed λ_info: the adaptive EMA must only advance on training steps
    cfg = LossConfig(**{**asdict(loss_cfg), "adaptive_info": False}) if loss_cfg is not None else None
    for idx, x, mask, y in view.iter_batches(batch_size):
        xt, mt, yt = (torch.from_numpy(a).to(device) for a in (x, mask, y))
        pred = model(xt, mt)
        cos_sum += float((pred * yt).sum())
        if cfg is not None:
            total, _ = compute_loss(pred, yt, cfg, torch.from_numpy(view.article_ids[idx]).to(device))
            loss_sum += float(total) * len(idx)
        n += len(idx)
    model.train(was_training)
    if n == 0:
        return {"cosine": float("nan"), "loss": float("nan"), "n": 0}
    return {"cosine": cos_sum / n, "loss": loss_sum / n if loss_cfg is not None else float("nan"), "n": n}
