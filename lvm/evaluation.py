"""model -> predictions: streamed inference over sequence views, context ablations, latency, and
``ModelEval`` (one model on one view, predictions computed once and shared by every gate).

Predictions are computed in batches from the memory-mapped bank; nothing builds [N, ctx, D].
"""

from __future__ import annotations

import os
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
    """A fixed float32 matmul (about 0.05-0.1 ms on one core): the latency gate's unit of speed."""
    g = torch.Generator().manual_seed(seed)
    m, k, n = REFERENCE_PROBE
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    return lambda: torch.mm(a, b)


def _involuntary_switches() -> Callable[[], int]:
    """The calling thread's count of involuntary context switches (the scheduler took its core for
    another runnable task), where the OS reports it per thread (Linux); else a constant 0."""
    try:
        import resource

        who = resource.RUSAGE_THREAD  # type: ignore[attr-defined]  # Linux only
        resource.getrusage(who)
    except (ImportError, AttributeError, OSError, ValueError):
        return lambda: 0
    return lambda: resource.getrusage(who).ru_nivcsw


def _runnable_tasks() -> int | None:
    """Tasks runnable on the machine now, this one included (``/proc/loadavg``); None elsewhere."""
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def _timed(fn, switches: Callable[[], int], *args) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the calling thread, involuntary context switches) of one call.

    ``time.thread_time`` counts only this thread: not the spinning of worker threads (OpenMP, ONNX
    Runtime, FAISS pools left from other work), which ``time.process_time`` bills to every call, and
    not the time the thread waited for a core. A sleep costs wall time and no CPU time."""
    s0 = switches()
    c0, t0 = time.thread_time(), time.perf_counter()
    fn(*args)
    t1, c1 = time.perf_counter(), time.thread_time()
    return t1 - t0, c1 - c0, switches() - s0


@torch.no_grad()
def batch1_cost(model: nn.Module, view: SequenceView) -> dict:
    """``models.inference.call_cost`` of one eager batch-1 call at the full context (``view.ctx``
    real chunks, mask all True): ``cost_flops``, ``cost_weight_bytes``, ``cost_params``, the same
    integers on every CPU. When counting fails: ``{"cost_error": "..."}`` (the gate goes on)."""
    from lvm.models.inference import call_cost

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(1, view.ctx, view.dataset.dim, generator=g), dim=-1)
    mask = torch.ones(1, view.ctx, dtype=torch.bool)
    try:
        return call_cost(model, x, mask)
    except Exception as exc:  # noqa: BLE001 - a model the counter cannot follow still gets timed
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return {"cost_error": f"{type(exc).__name__}: {msg}"}


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
    rounds: int = 6,
) -> dict[str, np.ndarray]:
    """Batch-1 forward passes on real sequences, each beside one reference probe in the same thread,
    with ``threads`` torch threads: ``warmup`` pairs, then ``rounds`` rounds of the ``n_calls`` pairs
    (split evenly). The order alternates within a pair (model then probe, probe then model), so
    neither always runs on the other's caches. Returns per-call arrays: ``wall``, ``cpu`` (calling
    thread), ``switched`` (involuntary context switches) of the model, the same as ``ref_wall``,
    ``ref_cpu``, ``ref_switched`` for the probe, ``round`` (the round of each pair) and
    ``probe_first`` (the probe ran first in that pair);
    ``metrics.latency_rounds`` judges them. ``Timings.load`` holds the tasks runnable on the machine
    (sampled every 16 pairs; None where ``/proc/loadavg`` is missing) and the machine's core count.

    With ``fast`` the calls go through ``lvm.models.inference.fast_inference``: the first fp32 path
    of a fixed order (ONNX Runtime, TorchScript, eager) whose outputs equal the eager model's
    (cos ≥ 0.9999) on ``n_check`` sequences of the view (half of them re-padded). The returned
    ``Timings`` carries ``inference``: the path taken, the rule, its min cos and the eager figures."""
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
        switches = _involuntary_switches()
        keys = ("wall", "cpu", "switched", "ref_wall", "ref_cpu", "ref_switched")
        out = Timings({k: np.empty(n_calls) for k in keys})
        out["probe_first"] = np.arange(warmup, warmup + n_calls) % 2 == 1
        out["round"] = np.concatenate(
            [np.full(len(part), r) for r, part in enumerate(np.array_split(np.arange(n_calls), max(rounds, 1)))]
        ).astype(np.int64)
        out.inference = info
        runnable: list[int | None] = []
        for i in range(n_calls + warmup):
            if i >= warmup and (i - warmup) % 16 == 0:
                runnable.append(_runnable_tasks())
            if i % 2 == 0:
                model_t = _timed(fn, switches, xt[i : i + 1], mt[i : i + 1])
                probe_t = _timed(probe, switches)
            else:
                probe_t = _timed(probe, switches)
                model_t = _timed(fn, switches, xt[i : i + 1], mt[i : i + 1])
            if i >= warmup:
                for k, v in zip(keys, (*model_t, *probe_t), strict=True):
                    out[k][i - warmup] = v
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        out.load = {"runnable": [r for r in runnable if r is not None] or None, "cores": cores}
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
