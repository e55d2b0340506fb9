"""lvm.models.inference: the latency gate's batch-1 path is chosen by a fixed fp32 rule (never int8,
never by speed), equals eager fp32, falls back to eager when it cannot be built or does not pass, and
cannot optimise away a model that sleeps."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lvm import gates
from lvm.evaluation import ModelEval, batch1_latency
from lvm.models import build_model
from lvm.models.adapters import Predictor
from lvm.models.inference import (
    BUILDERS,
    CANDIDATES,
    DEFAULT_MIN_COS,
    INFERENCE_RULE,
    PREFERENCE,
    FusedAMN,
    UnrolledRecurrent,
    check_contexts,
    fast_inference,
    graph_safety,
)
from lvm.profiles import load_profile

ARCHS = ("amn", "gru", "lstm", "transformer")
CTX = 5


def _model(arch: str, dim: int) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, {"input_dim": dim, "ctx": CTX}).eval()
    if arch == "amn":  # an untrained AMN's correction is exactly 0: give the MLP's output layer weights
        nn.init.normal_(model.fc_out.weight, std=0.02)
        nn.init.normal_(model.fc_out.bias, std=0.01)
    return model


def _contexts(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, CTX, dim, generator=g), dim=-1)
    return x, torch.ones(n, CTX, dtype=torch.bool)


def _every_padding(dim: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh contexts (not the check's) with every number of padded slots, noise in the padding."""
    x, mask = _contexts(4 * CTX, dim, seed)
    for i in range(len(x)):
        pads = i % CTX
        mask[i, :pads] = False
        x[i, :pads] = 3.0 * torch.randn(pads, dim)
    return x, mask


def _min_cos_vs_eager(fn, model, x, mask) -> float:
    with torch.no_grad():
        out = torch.cat([torch.as_tensor(fn(x[i : i + 1], mask[i : i + 1])) for i in range(len(x))])
        ref = torch.cat([model(x[i : i + 1], mask[i : i + 1]) for i in range(len(x))])
    return float(F.cosine_similarity(out.double(), ref.double()).min())


@pytest.mark.parametrize("dim", [384, 768])
@pytest.mark.parametrize("arch", ARCHS)
def test_fast_path_equals_eager(arch, dim):
    model = _model(arch, dim)
    chosen = fast_inference(model, *check_contexts(*_contexts(64, dim)))
    # a compiled candidate builds and passes for every lvm architecture: the first of the fixed order
    passing = [k for k, v in chosen.candidates.items() if v.get("min_cos", 0.0) >= DEFAULT_MIN_COS]
    assert passing == [chosen.path], chosen.candidates
    assert list(chosen.candidates) == list(CANDIDATES[: CANDIDATES.index(chosen.path) + 1])  # earlier ones failed
    assert "int8" not in chosen.path and not any("int8" in k for k in chosen.candidates)
    assert chosen.path in PREFERENCE and chosen.min_cos >= DEFAULT_MIN_COS
    assert chosen.rule == INFERENCE_RULE.format(min_cos=DEFAULT_MIN_COS)
    assert chosen.n_checked == 64 and chosen.eager_p95_ms > 0
    # equal on contexts it was not checked on, every padding length, noise in the padded slots
    assert _min_cos_vs_eager(chosen.fn, model, *_every_padding(dim)) >= DEFAULT_MIN_COS
    info = chosen.info()
    assert "fn" not in info and info["path"] == chosen.path


def test_fused_amn_is_amn():
    model = _model("amn", 384)
    x, mask = _every_padding(384)
    with torch.no_grad():
        assert torch.allclose(FusedAMN(model)(x, mask), model(x, mask), atol=1e-5)
        assert torch.allclose(FusedAMN(model)(x[:, 2:], mask[:, 2:]), model(x[:, 2:], mask[:, 2:]), atol=1e-5)


@pytest.mark.parametrize("arch", ["gru", "lstm"])
def test_unrolled_recurrent_is_the_packed_stack(arch):
    model = _model(arch, 64)
    x, mask = _every_padding(64)
    with torch.no_grad():
        assert torch.allclose(UnrolledRecurrent(model)(x, mask), model(x, mask), atol=1e-5)


def test_check_contexts_pad_every_other_row():
    x, mask = _contexts(10, 16)
    cx, cm = check_contexts(x, mask)
    assert cm[:, -1].all() and cm[0::2].all() and not cm[1::2].all(axis=1).any()
    assert torch.equal(cx[0::2], x[0::2])


def test_without_onnxruntime_torchscript_is_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    model = _model("amn", 384)
    chosen = fast_inference(model, *check_contexts(*_contexts(32, 384)))
    assert chosen.candidates["onnxruntime"]["error"].startswith("ModuleNotFoundError")
    assert chosen.candidates["torchscript"]["min_cos"] >= DEFAULT_MIN_COS
    assert chosen.path == "torchscript" and "onnxruntime (ModuleNotFoundError" in chosen.reason


def test_the_choice_does_not_depend_on_speed(monkeypatch):
    """A first path in the order that is slower than the second (and than eager) is still the one taken."""
    build = BUILDERS[CANDIDATES[0]]

    def slow_build(*args, **kwargs):
        fn = build(*args, **kwargs)

        def slower(x, mask):
            time.sleep(0.002)
            return fn(x, mask)

        return slower

    monkeypatch.setitem(BUILDERS, CANDIDATES[0], slow_build)
    chosen = fast_inference(_model("amn", 64), *check_contexts(*_contexts(16, 64)))
    assert chosen.path == CANDIDATES[0] and list(chosen.candidates) == [CANDIDATES[0]]


def test_no_int8_candidate_remains():
    assert not any("int8" in name for name in (*PREFERENCE, *BUILDERS)), (PREFERENCE, list(BUILDERS))


class Untraceable(nn.Module):
    """An lvm AMN inside code that refuses to be traced."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, mask):
        if torch.jit.is_tracing():
            raise RuntimeError("this model cannot be traced")
        return self.inner(x, mask)


class ConstantWhenTraced(nn.Module):
    """Goes through numpy: a trace records its output as a constant, which the equality check catches."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, mask):
        return torch.from_numpy(self.inner(x, mask).numpy().copy())


class Slow(nn.Module):
    """A model plus 3 ms of sleep per call (the latency negative control)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, mask=None):
        time.sleep(0.003)
        return self.inner(x, mask)


def test_untraceable_model_falls_back_to_eager():
    model = Untraceable(_model("amn", 64))
    assert "user code" in graph_safety(model)
    chosen = fast_inference(model, *check_contexts(*_contexts(16, 64)), trust_code=True)
    assert chosen.path == "eager" and chosen.fn is model and chosen.min_cos == 1.0
    assert all("cannot be traced" in v["error"] for v in chosen.candidates.values()), chosen.candidates
    assert "no candidate" in chosen.reason


def test_trace_that_bakes_a_constant_fails_the_equality_check():
    model = ConstantWhenTraced(_model("amn", 64))
    chosen = fast_inference(model, *check_contexts(*_contexts(16, 64)), trust_code=True)
    assert chosen.path == "eager"
    assert chosen.candidates["torchscript"]["min_cos"] < DEFAULT_MIN_COS


def test_user_code_and_plain_callables_are_timed_eagerly():
    amn = _model("amn", 64)
    assert graph_safety(amn) is None and graph_safety(Predictor(amn)) is None  # lvm's own code
    plain = Predictor(lambda x, mask: amn(x, mask))
    assert "plain callable" in graph_safety(plain)
    chosen = fast_inference(plain, *check_contexts(*_contexts(8, 64)))
    assert chosen.path == "eager" and chosen.candidates == {} and "plain callable" in chosen.reason


def test_export_program_may_take_a_fast_path():
    amn = _model("amn", 64)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    x, mask = _contexts(4, 64)
    program = torch.export.export(amn, (x, mask), dynamic_shapes={"x": {0: batch}, "mask": {0: batch}})
    loaded = Predictor(program.module(), trainable=False)  # what adapters.load_export returns
    assert graph_safety(loaded) is None
    chosen = fast_inference(loaded, *check_contexts(*_contexts(32, 64)))
    assert any(v.get("min_cos", 0.0) >= DEFAULT_MIN_COS for v in chosen.candidates.values()), chosen.candidates
    assert _min_cos_vs_eager(chosen.fn, amn, *_every_padding(64)) >= DEFAULT_MIN_COS


def _nap(x):
    time.sleep(0.003)
    return x


torch.fx.wrap("_nap")


class NapGraph(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, mask):
        return _nap(self.inner.fc_out.bias) * 0 + x[:, -1]


def test_fx_graph_calling_python_is_refused():
    gm = torch.fx.symbolic_trace(NapGraph(_model("amn", 64)))
    assert "_nap" in graph_safety(gm)


def test_sleeping_model_cannot_be_optimised_away():
    slow = Slow(_model("amn", 64))
    x, mask = check_contexts(*_contexts(16, 64))
    # the hazard: a trace drops the sleep
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core machine make a tiny graph take tens of ms
    with torch.no_grad():
        traced = torch.jit.trace(slow, (x[:1], mask[:1]), check_trace=False)
        calls = []
        for _ in range(10):  # the first calls of a TorchScript graph optimise it
            t0 = time.perf_counter()
            traced(x[:1], mask[:1])
            calls.append(time.perf_counter() - t0)
    torch.set_num_threads(previous)
    assert min(calls) < 0.003
    # guard 1: user code is timed eagerly
    chosen = fast_inference(slow, x, mask)
    assert chosen.path == "eager" and chosen.fn is slow and "user code" in chosen.reason
    # guard 2: even when the code is trusted, a model whose calls wait keeps its eager path
    chosen = fast_inference(slow, x, mask, trust_code=True)
    assert chosen.path == "eager" and "waits" in chosen.reason and chosen.candidates == {}
    assert chosen.eager_p50_ms >= 3.0


# ----------------------------------------------------------------------------- the latency gate


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    from lvm.data.datasets import open_dataset
    from lvm.data.synth import SynthConfig, synth_dataset

    out = tmp_path_factory.mktemp("synth") / "syn"
    synth_dataset(SynthConfig(n_chunks=3000, dim=64), out, progress=False)
    return open_dataset(out).sequences("val", ctx=CTX)


@pytest.fixture(scope="module")
def profile():
    return load_profile("gtr-t5-wiki")


def test_latency_gate_records_the_path(view, profile):
    amn = _model("amn", 64)
    res = gates.latency(ModelEval(amn, view, "amn"), profile)
    m = res.metrics
    assert m["n_calls_total"] == 500 and m["rounds"] == 6 and m["threads"] == 1 and 0 < m["n_calls"] <= 84
    assert m["inference_path"] in PREFERENCE and m["inference_min_cos"] >= DEFAULT_MIN_COS
    assert m["inference_rule"] == INFERENCE_RULE.format(min_cos=DEFAULT_MIN_COS)
    assert m["eager_p95_ms"] > 0 and m["inference_reason"].startswith(m["inference_path"])
    assert (
        m["cost_flops"] > 0
        and m["cost_weight_bytes"] > 0
        and m["cost_params"] == sum(p.numel() for p in amn.parameters())
    )
    timings = batch1_latency(amn, view, n_calls=20, warmup=2, fast=False)
    assert gates.latency(ModelEval(amn, view, "amn"), profile, timings=timings).metrics["inference_path"] == "eager"
    plain = {k: timings[k] for k in timings}
    assert gates.latency(ModelEval(amn, view, "amn"), profile, timings=plain).metrics["inference_path"] == (
        "not recorded"
    )


def test_sleeping_model_stays_red(view, profile):
    slow = Slow(_model("amn", 64))
    timings = batch1_latency(slow, view, n_calls=60, warmup=5, n_check=16)
    res = gates.latency(ModelEval(slow, view, "slow"), profile, timings=timings)
    if res.status == "AMBER":  # a machine too busy to time never reads GREEN
        assert "too busy to time" in res.message, res.message
        return
    assert res.status == "RED", res.message
    assert res.metrics["inference_path"] == "eager" and res.metrics["p50_ms"] > 3.0
    assert np.median(timings["wall"]) > 0.003


def test_patched_forward_is_user_code():
    amn = _model("amn", 64)
    amn.forward = lambda x, mask: x[:, -1]
    assert "patched" in graph_safety(amn)
