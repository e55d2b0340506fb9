"""Batch-1 inference benchmarks: eager vs the latency gate's inference path (lvm.models.inference).

Not part of `make test` (the file name does not match test_*.py). Run:

    .venv/bin/python -m pytest tests/bench_inference.py -p no:cacheprovider --benchmark-json=OUT.json

Each case: one architecture at 768-D, ctx 5, batch 1, 1 or 2 threads, 1,000 timed calls after 100
warm-up calls, on unit contexts whose masks cycle through every padding length; each call is
followed by the latency gate's reference probe (as in ``evaluation.batch1_latency``) unless
LVM_BENCH_NO_PROBE=1. ``extra_info`` holds P50/P95/P99 (ms), the path timed (for "fast": the first
fp32 path of the fixed order onnxruntime > torchscript > eager that equals eager, as the gate takes
it; never int8), its min cos against eager fp32 on 256 check contexts, and the machine-independent
cost of one call (``cost_flops``, ``cost_weight_bytes``, ``cost_params``: the same on any CPU).
Issue 15's budget: AMN fast-path P95 ≤ 0.35 ms on one thread. Figures are recorded, not asserted:
a benchmark measures.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

DIM, CTX = 768, 5
ARCHS = ("amn", "gru", "lstm", "transformer")


def _model(arch: str) -> nn.Module:
    from lvm.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, {"input_dim": DIM, "ctx": CTX}).eval()
    if arch == "amn":  # untrained, AMN's output layer is zero: give it weights, as training would
        nn.init.normal_(model.fc_out.weight, std=0.02)
        nn.init.normal_(model.fc_out.bias, std=0.01)
    return model


def _contexts(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, CTX, DIM, generator=g), dim=-1)
    mask = torch.ones(n, CTX, dtype=torch.bool)
    for i in range(n):
        mask[i, : i % CTX] = False
    return x, mask


@pytest.mark.parametrize("path", ["eager", "fast"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("arch", ARCHS)
def test_bench_inference_batch1_768(benchmark, arch, threads, path):
    """Batch-1 latency at 768-D through eager or the fast path: P50/P95/P99 in extra_info."""
    from lvm.evaluation import reference_probe
    from lvm.metrics import latency_percentiles
    from lvm.models.inference import call_cost, check_contexts, fast_inference

    model = _model(arch)
    info = {"path": "eager", "min_cos": 1.0}
    fn = model
    if path == "fast":
        chosen = fast_inference(model, *check_contexts(*_contexts(256, seed=1)), threads=threads)
        fn, info = (
            chosen.fn,
            {"path": chosen.path, "min_cos": chosen.min_cos, "reason": chosen.reason, "rule": chosen.rule},
        )
    info.update(call_cost(model, *(t[:1] for t in _contexts(CTX, seed=3))))
    x, mask = _contexts(256, seed=2)
    probe = (lambda: None) if os.environ.get("LVM_BENCH_NO_PROBE") == "1" else reference_probe()
    calls = iter(range(1 << 30))

    def call():
        i = next(calls) % len(x)
        fn(x[i : i + 1], mask[i : i + 1])

    def setup():
        probe()  # the gate's probe runs between calls (and evicts caches, as it does in the gate)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            benchmark.pedantic(call, setup=setup, rounds=1000, warmup_rounds=100, iterations=1)
    finally:
        torch.set_num_threads(previous)
    benchmark.extra_info.update(
        {
            **{k: round(v, 4) for k, v in latency_percentiles(np.asarray(benchmark.stats.stats.data)).items()},
            "arch": arch,
            "threads": threads,
            "dim": DIM,
            **info,
        }
    )
