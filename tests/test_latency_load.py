"""The latency gate travels: a cost of one call that is the same on any CPU, and wall-clock timing
that holds under load (issue 19 item 1).

- ``cost_flops`` / ``cost_weight_bytes`` / ``cost_params`` are integers computed from shapes: the same
  on every call and at any thread count, the analytic count for a plain ``nn.Linear``.
- The inference path is chosen by a fixed fp32 rule: never int8, never the faster of two.
- A healthy AMN and the 3 ms sleeping control go through the real ``latency`` gate while 2 and then
  4 busy processes (a Python loop, a torch matmul loop) compete for the cores: the healthy model is
  never RED and the sleeper never GREEN (RED when timed, AMBER "too busy to time" when not).
- A machine too busy to time (every round disturbed) gives AMBER, never a verdict on noise.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from lvm import gates
from lvm import metrics as M
from lvm.evaluation import ModelEval, batch1_cost
from lvm.gates import AMBER, GREEN, RED
from lvm.models.inference import CANDIDATES, COST_METRICS, INFERENCE_RULE, PREFERENCE, Timings, call_cost
from lvm.profiles import load_profile

CTX, DIM = 5, 384
LIMIT = 14.5  # the profile's ratio limit (minilm-wiki-vital extends gtr-t5-wiki)

BUSY = {
    "spin": "import time\nend = time.time() + {s}\nx = 0\nwhile time.time() < end:\n    x += 1\n",
    "matmul": (
        "import time, torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\n"
        "end = time.time() + {s}\nwhile time.time() < end:\n    torch.mm(a, a)\n"
    ),
}


@pytest.fixture(scope="module")
def profile():
    return load_profile("minilm-wiki-vital")


@pytest.fixture(scope="module")
def view(tmp_path_factory):
    from lvm.data.datasets import open_dataset
    from lvm.data.synth import SynthConfig, synth_dataset

    out = tmp_path_factory.mktemp("synth") / "syn"
    synth_dataset(SynthConfig(n_chunks=1200, dim=DIM), out, progress=False)
    return open_dataset(out).sequences("val", ctx=CTX, min_ctx=1)


@pytest.fixture(scope="module")
def amn(view, tmp_path_factory):
    """A real AMN (384-D, ctx 5), trained one epoch as the other tests train theirs."""
    from lvm.models.checkpoints import load_checkpoint
    from lvm.train.trainer import TrainConfig, Trainer

    run = tmp_path_factory.mktemp("amn") / "run"
    cfg = TrainConfig(dataset=str(view.dataset.path), epochs=1, kill_switches=False)
    Trainer(cfg, run, progress=False).run()
    return load_checkpoint(run)[0]


class Slow(nn.Module):
    """The model plus 3 ms of sleep per call (the latency negative control)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, mask=None):
        time.sleep(0.003)
        return self.inner(x, mask)


class LastLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x, mask):
        return self.lin(x[:, -1])


def _summary(res) -> dict:
    keys = ("ratio", "p50_ms", "robust_ms", "reference_ms", "load_disturbance", "probe_slowdown", "preempted_share")
    return {"status": res.status, **{k: res.metrics.get(k) for k in keys}, "message": res.message}


# ----------------------------------------------------------------------------- cost of one call


def test_cost_of_a_linear_model_is_the_analytic_count():
    torch.manual_seed(0)
    model = LastLinear(DIM, 256).eval()
    x, mask = torch.randn(1, CTX, DIM), torch.ones(1, CTX, dtype=torch.bool)
    cost = call_cost(model, x, mask)
    assert cost == {
        "cost_flops": 2 * DIM * 256,  # one multiply-add per weight
        "cost_weight_bytes": 4 * (DIM * 256 + 256),  # fp32 weight and bias
        "cost_params": DIM * 256 + 256,
    }
    assert all(type(v) is int for v in cost.values())


def test_cost_is_the_same_on_every_call_and_thread_count(amn, view):
    previous = torch.get_num_threads()
    try:
        costs = []
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            costs.append(batch1_cost(amn, view))
    finally:
        torch.set_num_threads(previous)
    assert costs[0] == costs[1] == costs[2], costs
    assert set(costs[0]) == set(COST_METRICS)
    assert costs[0]["cost_params"] == sum(p.numel() for p in amn.parameters())
    assert costs[0]["cost_flops"] > costs[0]["cost_params"]  # 2 FLOPs per weight of a matrix product


def test_cost_of_an_exported_program_equals_eager(amn):
    from lvm.models.adapters import Predictor

    x, mask = torch.randn(1, CTX, DIM), torch.ones(1, CTX, dtype=torch.bool)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    xs, ms = torch.randn(4, CTX, DIM), torch.ones(4, CTX, dtype=torch.bool)
    program = torch.export.export(amn, (xs, ms), dynamic_shapes={"x": {0: batch}, "mask": {0: batch}})
    assert call_cost(Predictor(program.module(), trainable=False), x, mask) == call_cost(amn, x, mask)


def test_a_model_that_cannot_be_counted_gets_cost_error_not_a_crash(amn, view, profile, monkeypatch):
    import lvm.models.inference as inference

    def refuse(*args, **kwargs):
        raise RuntimeError("no counter for this model")

    monkeypatch.setattr(inference, "call_cost", refuse)
    timings = _synthetic(model_ms=0.3, ref_ms=0.07)
    res = gates.latency(ModelEval(amn, view, "amn"), profile, timings=timings)
    assert res.status == GREEN, _summary(res)
    assert res.metrics["cost_error"] == "RuntimeError: no counter for this model"
    assert not any(k in res.metrics for k in COST_METRICS)


# ----------------------------------------------------------------------------- the inference path


def test_the_chosen_path_is_fp32_and_first_in_the_fixed_order(amn, view, profile):
    assert not any("int8" in p for p in PREFERENCE)
    res = gates.latency(ModelEval(amn, view, "amn"), profile, timings=None)
    m = res.metrics
    assert "int8" not in m["inference_path"] and m["inference_path"] in PREFERENCE
    assert m["inference_rule"] == INFERENCE_RULE.format(min_cos=0.9999)
    assert m["inference_min_cos"] >= 0.9999
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return
    assert m["inference_path"] == CANDIDATES[0] == "onnxruntime"  # lvm's AMN exports: the first path passes


# ----------------------------------------------------------------------------- wall clock under load


def _busy(n: int, seconds: float = 300.0) -> list[subprocess.Popen]:
    kinds = ["spin", "matmul"] * n
    return [
        subprocess.Popen([sys.executable, "-c", BUSY[kinds[i]].format(s=seconds)], stdout=subprocess.DEVNULL)
        for i in range(n)
    ]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait(timeout=30)


@pytest.mark.parametrize("n_busy", [2, 4])
def test_healthy_never_red_and_sleeper_never_green_under_load(amn, view, profile, n_busy):
    procs = _busy(n_busy)
    try:
        time.sleep(0.5)  # let them start
        healthy = gates.latency(ModelEval(amn, view, "amn"), profile)
        slow = gates.latency(ModelEval(Slow(amn), view, "slow"), profile)
    finally:
        _stop(procs)
    assert healthy.status in (GREEN, AMBER), _summary(healthy)
    assert slow.status in (RED, AMBER), _summary(slow)
    for res in (healthy, slow):
        if res.status == AMBER:  # the only AMBER this gate gives: the machine, not the model
            assert "too busy to time" in res.message, _summary(res)
    if slow.status == RED:
        assert slow.metrics["p50_ms"] > 3.0 and slow.metrics["ratio"] > LIMIT, _summary(slow)
    assert slow.metrics["inference_path"] == "eager"  # user code: never compiled, the sleep stays


# ----------------------------------------------------------------------------- the protocol, on known timings


def _synthetic(
    model_ms: float, ref_ms: float, rounds: int = 6, per_round: int = 40, bad_rounds=(), switched_share: float = 0.0
):
    """Timings as ``batch1_latency`` records them: the model and the probe take ``model_ms`` / ``ref_ms``
    (wall = CPU, but for a model that sleeps); in ``bad_rounds`` the probe runs 3x slower and a share
    of the calls is preempted."""
    rng = np.random.default_rng(0)
    n = rounds * per_round
    t = Timings(
        {
            "wall": np.full(n, model_ms * 1e-3),
            "cpu": np.full(n, min(model_ms, 0.5) * 1e-3),
            "switched": np.zeros(n),
            "ref_wall": ref_ms * 1e-3 * (1 + 0.02 * rng.random(n)),
            "ref_switched": np.zeros(n),
            "round": np.repeat(np.arange(rounds), per_round),
            "probe_first": np.arange(n) % 2 == 1,
        }
    )
    t["ref_cpu"] = t["ref_wall"].copy()
    for r in bad_rounds:
        sel = t["round"] == r
        t["ref_wall"][sel] *= 3.0
        t["ref_cpu"][sel] *= 3.0
        t["switched"][sel] = rng.random(sel.sum()) < switched_share
        t["ref_switched"][sel] = rng.random(sel.sum()) < switched_share
    return t


def test_a_slowed_probe_in_some_rounds_cannot_hide_a_sleeper(amn, view, profile):
    # the issue-19 failure: the probe slowed by load, a 3 ms sleeper read GREEN. One quiet round is enough.
    timings = _synthetic(model_ms=4.8, ref_ms=0.1, bad_rounds=(0, 1, 2, 4, 5), switched_share=0.3)
    res = gates.latency(ModelEval(Slow(amn), view, "slow"), profile, timings=timings)
    assert res.status == RED and res.metrics["chosen_round"] == 3, _summary(res)
    assert res.metrics["ratio"] == pytest.approx(48.0, rel=0.05)


def test_a_machine_too_busy_to_time_is_amber_with_the_figures(amn, view, profile):
    # every round disturbed: half the calls preempted, so neither verdict (healthy or not) is made
    for model_ms in (0.3, 4.8):
        timings = _synthetic(model_ms=model_ms, ref_ms=0.1, bad_rounds=range(6), switched_share=0.7)
        res = gates.latency(ModelEval(amn, view, "m"), profile, timings=timings)
        assert res.status == AMBER, _summary(res)
        assert "too busy to time" in res.message and "load_disturbance" in res.message, res.message
        assert "% of calls preempted" in res.message
        assert res.metrics["load_disturbance"] > 0.5


def test_rounds_of_one_plain_dict_are_the_old_ratio():
    rng = np.random.default_rng(1)
    t = {k: rng.uniform(1e-4, 1e-3, 50) for k in ("cpu", "wall", "ref_cpu")}
    t["ref_wall"] = t["ref_cpu"] * 1.001
    r = M.latency_rounds(t)
    old = M.latency_ratio(t)
    assert r["rounds"] == 1 and r["n_calls"] == 50
    for k in ("p95_cpu_ms", "robust_ms", "reference_ms", "ratio"):
        assert r[k] == pytest.approx(old[k])


def test_the_clock_is_the_calling_thread(amn, view, profile):
    """CPU time is the calling thread's: a busy thread in the same process is not billed to the calls."""
    import threading

    stop = threading.Event()

    def burn():
        a = torch.randn(512, 512)
        while not stop.is_set():
            torch.mm(a, a)  # releases the GIL: CPU time of this process, on the other core

    th = threading.Thread(target=burn, daemon=True)
    th.start()
    try:
        res = gates.latency(ModelEval(amn, view, "amn"), profile)
    finally:
        stop.set()
        th.join()
    assert res.metrics["cpu_clock"] == "thread_time"
    # process_time billed the burning thread's CPU to every call: this AMN read 14.8 units, RED (measured)
    assert res.status in (GREEN, AMBER), _summary(res)


def test_profile_holds_the_load_rule(profile):
    rules = {r["metric"]: r for r in profile.gate("latency")["rules"]}
    assert rules["load_disturbance"]["worst"] == AMBER and "max_green" in rules["load_disturbance"]
    assert rules["ratio"]["max_green"] == LIMIT
