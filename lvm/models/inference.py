"""Batch-1 inference paths for the latency gate: the fastest callable whose outputs equal eager fp32.

``fast_inference(model, x, mask)`` builds candidate paths for one loaded model, checks each
against the model's own eager fp32 outputs on every check context (batch 1, padded masks
included), times the ones that pass, and returns the fastest with what it chose and why
(int8 paths must pass with a margin, ``LOSSY_MARGIN``):

- ``onnxruntime``: the model traced and exported to ONNX, run by ONNX Runtime (one intra-op
  thread per gate thread, graph optimisations on); ``onnxruntime-int8``: the same graph with
  int8 per-channel dynamic-quantised weights. Needs the ``onnxruntime`` and ``onnx`` packages
  (imported lazily; without them these candidates are skipped).
- ``torchscript``: ``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference``;
  ``torchscript-int8``: the Linear layers dynamic-quantised to int8 first.
- ``eager``: the model as called by the quality gates; the fallback whenever nothing else
  builds, passes or is faster.

AMN is traced in an algebraically fused form (``FusedAMN``): the attention scores are
``LN(x_t)·(W_kᵀ q) + (b_k + p_t)·q``, so the keys (T x d) never materialise and the key projection
is one matrix-vector product.

Only the latency measurement uses these paths; predictions for every quality gate come from the
eager model. A path is used only when its minimum cosine to the eager outputs is at least
``min_cos`` (0.9999) on every check context.

What a trace may not drop. A trace records tensor operations and nothing else: a model that
sleeps, waits on I/O or does work in Python would be "optimised" into a model that does not.
So compiled paths are offered only for code lvm knows (``graph_safety``): lvm's own modules and
``torch`` modules, and graphs (``torch.export`` programs, FX graphs) whose every call is a torch
operator. Any other model (a user's ``py:`` code) is timed eagerly, as written; exporting it
(``lvm export``) makes it a graph that may take a compiled path. When such code is compiled anyway
(``trust_code=True``, for experiments), a model whose eager calls wait (wall minus CPU time above
0.5 ms on 90 % of the calls: a sleep, I/O) keeps the eager path. The wait check is not applied to
lvm's own code: there, under an oversubscribed machine, torch's worker threads waiting for each
other read as waits too (2 threads on a busy 2-core runner: 24 ms of a 47 ms median eager call).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import operator
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_MIN_COS = 0.9999  # issue 15: fast-path outputs equal eager fp32 within this cosine
CANDIDATES = ("onnxruntime-int8", "onnxruntime", "torchscript-int8", "torchscript")
LOSSY = ("onnxruntime-int8", "torchscript-int8")  # candidates whose outputs are not fp32's up to rounding
# A lossy path's error varies by input, so passing on the check contexts must leave room for others:
# it must reach 1 − LOSSY_MARGIN·(1 − min_cos) there (0.99995 for 0.9999). An int8 AMN passed at
# 0.999907 on 32 contexts and read 0.999895 on 20 others.
LOSSY_MARGIN = 0.5
WAIT_MS = 0.5  # eager wall − CPU above this on 90 % of the check calls: the model waits
CHECK_WARMUP = 8  # eager check calls not counted in the eager timings


@dataclass
class InferencePath:
    """The callable the latency gate times, and the evidence for choosing it."""

    fn: Callable[[Tensor, Tensor], Tensor]  # (1, T, D), (1, T) -> (1, D)
    path: str  # "eager" or one of CANDIDATES
    min_cos: float  # min over check contexts of cos(path output, eager output); 1.0 for eager
    reason: str  # why this path, and why each other candidate was not taken
    candidates: dict = field(default_factory=dict)  # name -> {"min_cos", "p50_ms"} or {"error"}
    eager_p50_ms: float = float("nan")  # eager batch-1 wall time over the check calls
    eager_p95_ms: float = float("nan")
    n_checked: int = 0

    def info(self) -> dict:
        """JSON-friendly summary (everything but the callable)."""
        return {
            "path": self.path,
            "min_cos": self.min_cos,
            "reason": self.reason,
            "candidates": self.candidates,
            "eager_p50_ms": self.eager_p50_ms,
            "eager_p95_ms": self.eager_p95_ms,
            "n_checked": self.n_checked,
        }


class Timings(dict):
    """``batch1_latency``'s per-call arrays, plus ``inference``: the path they were timed through."""

    inference: dict | None = None


# ----------------------------------------------------------------------------- check contexts


def check_contexts(x, mask, n: int = 256, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Up to ``n`` contexts for the equality check: the given (real) ones, every other one re-padded
    on the left with a random number of slots (mask False, the slot filled with noise), so that the
    check covers padded masks whatever the data holds. The last slot always stays real."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))[:n].clone()
    mask = torch.as_tensor(np.asarray(mask, dtype=bool))[:n].clone()
    g = torch.Generator().manual_seed(seed)
    T = x.shape[1]
    for i in range(1, len(x), 2):
        if T < 2:
            break
        pads = int(torch.randint(1, T, (1,), generator=g))
        mask[i, :pads] = False
        x[i, :pads] = torch.randn(pads, x.shape[2], generator=g)  # padding must not reach the output
    return x, mask


# ----------------------------------------------------------------------------- which code may be traced


def _inner(model):
    from lvm.models.adapters import Predictor

    return model.fn if isinstance(model, Predictor) else model


_SAFE_FX_TARGETS = {operator.getitem}


def _graph_reason(gm: torch.fx.GraphModule) -> str | None:
    """None when every call of the FX graph is a torch operator, else the first one that is not."""
    for node in gm.graph.nodes:
        if node.op == "call_function":
            t = node.target
            if t in _SAFE_FX_TARGETS or isinstance(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
                continue
            if getattr(t, "__module__", "") and str(getattr(t, "__module__", "")).startswith("torch"):
                continue
            return f"its graph calls {getattr(t, '__name__', t)!r}, not a torch operator"
        if node.op == "call_method" and not hasattr(Tensor, str(node.target)):
            return f"its graph calls method {node.target!r}"
    return None


def graph_safety(model) -> str | None:
    """None when ``model``'s forward is code a trace reproduces (lvm's and torch's modules, graphs of
    torch operators), else why it must be timed eagerly (user code may sleep, wait or compute in
    Python; a trace would drop that)."""
    inner = _inner(model)
    if not isinstance(inner, nn.Module):
        return f"{type(inner).__name__} is a plain callable (user code)"
    for sub in inner.modules():
        cls = type(sub)
        where = cls.__module__ or ""
        if not where.startswith(("torch.", "lvm.models.")):
            return f"{cls.__name__} ({where}) is user code: a trace could drop its Python (sleep, I/O)"
        patched = vars(sub).get("forward")
        if patched is not None and not str(getattr(patched, "__module__", "")).startswith(("torch.", "lvm.models.")):
            return f"{cls.__name__} has a forward patched with user code"
        if isinstance(sub, torch.fx.GraphModule):
            why = _graph_reason(sub)
            if why:
                return why
    return None


# ----------------------------------------------------------------------------- AMN, fused


class FusedAMN(nn.Module):
    """AMN's forward with the key projection folded into the query (same outputs, fp32 rounding).

    scores_t = q·(W_k h_t + b_k + p_t)/√d = h_t·(W_kᵀ q') + (b_k + p_t)·q',  q' = q/√d
    """

    wq: Tensor
    bq: Tensor
    wk: Tensor
    kb: Tensor

    def __init__(self, amn):
        super().__init__()
        c = amn.config
        self.ctx = c.ctx
        s = 1.0 / math.sqrt(c.d_model)
        with torch.no_grad():
            self.register_buffer("wq", (amn.w_q.weight * s).clone())  # (d, D), pre-scaled by 1/√d
            self.register_buffer("bq", ((amn.w_q.bias + amn.query) * s).clone())  # (d,)
            self.register_buffer("wk", amn.w_k.weight.clone())  # (d, D)
            self.register_buffer("kb", (amn.w_k.bias[None] + amn.key_pos).clone())  # (ctx, d)
        self.ln_ctx, self.ln_mlp, self.fc_in, self.fc_out = amn.ln_ctx, amn.ln_mlp, amn.fc_in, amn.fc_out

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        T = x.shape[1]
        x = x.masked_fill(~mask[..., None], 0.0)  # (B, T, D)
        mean = x.sum(1) / mask.sum(1, keepdim=True).to(x.dtype)  # (B, D)
        h = self.ln_ctx(x)  # (B, T, D)
        q = F.linear(h[:, -1], self.wq, self.bq)  # (B, d), scaled
        u = q @ self.wk  # (B, D): W_kᵀ q
        scores = (h @ u[:, :, None]).squeeze(-1) + q @ self.kb[self.ctx - T :].t()  # (B, T)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        attended = (weights[:, None, :] @ x).squeeze(1)  # (B, D)
        delta = self.fc_out(F.gelu(self.fc_in(self.ln_mlp(torch.cat([mean, attended], -1)))))
        return F.normalize(mean + delta, dim=-1)


RNN_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class UnrolledRecurrent(nn.Module):
    """The GRU/LSTM stack (gru.py) without packed sequences: the T steps unrolled, the state reset
    to zero after every padded step. Left padding puts the padded steps first, so the recurrence
    starts from a zero state at the first real chunk, as the packed sequence does; outputs at padded
    positions never reach a real one. Traceable and exportable to ONNX (packing is neither)."""

    def __init__(self, stack):
        super().__init__()
        self.lstm = isinstance(stack.layers[0], nn.LSTM)
        self.w_in, self.ln_out, self.w_out = stack.w_in, stack.ln_out, stack.w_out
        self.n_layers = len(stack.layers)
        with torch.no_grad():  # buffers, not parameters: a trace may fold them into its graph
            for k, r in enumerate(stack.layers):
                for name in RNN_WEIGHTS:
                    self.register_buffer(f"{name}_{k}", getattr(r, f"{name}_l0").detach().clone())

    def _gru(self, gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor]:
        ir, iz, i_n = gi.chunk(3, dim=-1)
        hr, hz, hn = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        return (1 - z) * torch.tanh(i_n + r * hn) + z * h, h

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        B, T, _ = x.shape
        keep = mask[..., None].to(x.dtype)  # (B, T, 1)
        h_seq = self.w_in(x.masked_fill(~mask[..., None], 0.0))  # (B, T, H)
        for k in range(self.n_layers):
            w_ih, w_hh, b_ih, b_hh = (getattr(self, f"{n}_{k}") for n in RNN_WEIGHTS)
            gi = F.linear(h_seq, w_ih, b_ih)  # (B, T, 3H or 4H): every step's input gates at once
            h = h_seq.new_zeros(B, w_hh.shape[1])
            c = h
            outs = []
            for t in range(T):
                if self.lstm:
                    i, f, g, o = (gi[:, t] + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    c = c * keep[:, t]
                else:
                    h, _ = self._gru(gi[:, t], h, w_hh, b_hh)
                h = h * keep[:, t]  # a padded step leaves the state at zero
                outs.append(h)
            h_seq = h_seq + torch.stack(outs, dim=1)
        return F.normalize(self.w_out(self.ln_out(h_seq[:, -1])), dim=-1)


def _traceable(model) -> nn.Module:
    """The module to trace: AMN in its fused form, GRU/LSTM unrolled, anything else as is."""
    from lvm.models.amn import AMN
    from lvm.models.gru import GRU
    from lvm.models.lstm import LSTM

    inner = _inner(model)
    if type(inner) is AMN:
        return FusedAMN(inner).eval()
    if type(inner) in (GRU, LSTM):
        return UnrolledRecurrent(inner).eval()
    return model


# ----------------------------------------------------------------------------- candidate builders


@contextlib.contextmanager
def _quiet():
    """Tracer and exporter warnings say what a trace cannot see; the equality check judges that."""
    disabled = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(disabled)


def _trace(module: nn.Module, x: Tensor, mask: Tensor):
    with torch.no_grad():
        traced = torch.jit.trace(module, (x, mask), check_trace=False)
    return traced


def _build_torchscript(model, x, mask, threads, cache, int8: bool = False):
    module = _traceable(model)
    if int8:
        if not any(isinstance(m, nn.Linear) for m in module.modules()):
            raise RuntimeError("no nn.Linear layers to quantise")
        module = torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)
    frozen = torch.jit.freeze(_trace(module, x, mask).eval())
    with contextlib.suppress(Exception):  # an optional pass: the frozen graph is already a candidate
        frozen = torch.jit.optimize_for_inference(frozen)
    return frozen


@contextlib.contextmanager
def _silent_fds():
    """File descriptors 1 and 2 to /dev/null: the TorchScript ONNX exporter prints the whole graph
    from C++ when it fails (its logging switch is stuck on in torch 2.x)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _patch_onnx(data: bytes) -> bytes:
    """ONNX Runtime has no boolean EyeLike (the Transformer's ``torch.eye(T, dtype=bool)``): compute
    it in float and cast to bool, which is the same tensor."""
    import onnx

    proto = onnx.load_from_string(data)
    if not any(n.op_type == "EyeLike" for n in proto.graph.node):
        return data
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *inferred.input, *inferred.output)}
    BOOL, FLOAT = onnx.TensorProto.BOOL, onnx.TensorProto.FLOAT
    nodes = []
    for node in proto.graph.node:
        dtype = next((a.i for a in node.attribute if a.name == "dtype"), None)
        if node.op_type != "EyeLike" or (dtype if dtype is not None else types.get(node.input[0])) != BOOL:
            nodes.append(node)
            continue
        src, out = node.input[0], node.output[0]
        nodes += [
            onnx.helper.make_node("Cast", [src], [f"{src}__eye_float_in"], to=FLOAT),
            onnx.helper.make_node("EyeLike", [f"{src}__eye_float_in"], [f"{out}__eye_float"], dtype=FLOAT),
            onnx.helper.make_node("Cast", [f"{out}__eye_float"], [out], to=BOOL),
        ]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto.SerializeToString()


def _onnx_bytes(model, x, mask, cache: dict) -> bytes:
    """The model as an ONNX graph (batch 1, the check's context length), exported once per choice."""
    if "onnx" not in cache:
        try:
            import onnx  # noqa: F401 - torch.onnx.export needs it: without it, a clear ImportError

            buf = io.BytesIO()
            traced = _trace(_traceable(model), x, mask)
            with _silent_fds():
                torch.onnx.export(
                    traced,
                    (x, mask),
                    buf,  # type: ignore[arg-type]  # a file-like object works (torch's annotation says a path)
                    dynamo=False,
                    input_names=["x", "mask"],
                    output_names=["y"],
                    opset_version=17,
                    training=torch.onnx.TrainingMode.PRESERVE,
                )
            cache["onnx"] = _patch_onnx(buf.getvalue())
        except Exception as exc:  # noqa: BLE001 - remembered, re-raised for each ONNX candidate
            cache["onnx"] = exc
    if isinstance(cache["onnx"], Exception):
        raise cache["onnx"]
    return cache["onnx"]


def _quantize_onnx(data: bytes) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(data)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
        return dst.read_bytes()


def _build_onnxruntime(model, x, mask, threads, cache, int8: bool = False):
    import onnxruntime as ort

    data = _onnx_bytes(model, x, mask, cache)
    if int8:
        data = _quantize_onnx(data)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # spinning threads would bill CPU time
    session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]  # an input the graph does not read is dropped by the exporter

    def run(xb: Tensor, mb: Tensor) -> Tensor:
        feeds = {"x": xb.numpy(), "mask": mb.numpy()}
        return torch.from_numpy(session.run(None, {k: feeds[k] for k in names})[0])

    return run


BUILDERS: dict[str, Callable] = {  # name -> builder(model, x (1, T, D), mask (1, T), threads, cache) -> callable
    "onnxruntime-int8": functools.partial(_build_onnxruntime, int8=True),
    "onnxruntime": _build_onnxruntime,
    "torchscript-int8": functools.partial(_build_torchscript, int8=True),
    "torchscript": _build_torchscript,
}


# ----------------------------------------------------------------------------- check, time, choose


def _cos(a: Tensor, b: Tensor) -> float:
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def _min_cos(fn, x: Tensor, mask: Tensor, ref: list[Tensor]) -> float:
    worst = 1.0
    with torch.no_grad():
        for i in range(len(x)):
            out = torch.as_tensor(fn(x[i : i + 1], mask[i : i + 1]))
            if out.shape != ref[i].shape:
                raise RuntimeError(f"output shape {tuple(out.shape)} != eager {tuple(ref[i].shape)}")
            c = _cos(out, ref[i])
            if not c >= worst:  # NaN included
                worst = c
                if math.isnan(c):
                    break
    return worst


def _median_ms(fns: dict, x: Tensor, mask: Tensor, rounds: int = 15, per_round: int = 8) -> dict:
    """Median batch-1 wall ms of each callable, timed in interleaved rounds (fair under drifting load)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for r in range(rounds + 1):
            for k, fn in fns.items():
                for j in range(per_round):
                    i = (r * per_round + j) % len(x)
                    t0 = time.perf_counter()
                    fn(x[i : i + 1], mask[i : i + 1])
                    if r:  # round 0 warms up
                        times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def _required(name: str, min_cos: float) -> float:
    """The min cos a candidate must reach on the check contexts (stricter for lossy paths)."""
    return 1.0 - LOSSY_MARGIN * (1.0 - min_cos) if name in LOSSY else min_cos


def _refusal(name: str, result: dict, min_cos: float) -> str:
    if "error" in result:
        return result["error"]
    if not result["min_cos"] >= _required(name, min_cos):
        return f"min cos {result['min_cos']:.6f} < {_required(name, min_cos):g}"
    return "slower"


def _batch1_only(fast, eager, shape: tuple) -> Callable:
    """The fast path for the shape it was built and checked for; anything else goes to eager."""

    def fn(x: Tensor, mask: Tensor) -> Tensor:
        if tuple(x.shape) != shape:
            return eager(x, mask)
        return fast(x, mask)

    return fn


def fast_inference(
    model,
    x,
    mask,
    threads: int = 1,
    min_cos: float = DEFAULT_MIN_COS,
    candidates: tuple[str, ...] = CANDIDATES,
    trust_code: bool = False,
) -> InferencePath:
    """The fastest batch-1 callable for ``model`` whose outputs equal eager fp32 (cos ≥ ``min_cos``)
    on every context of ``x`` (N, T, D) / ``mask`` (N, T) (see ``check_contexts``), else eager.

    ``trust_code=True`` also compiles code ``graph_safety`` refuses (only the wait check guards it);
    for experiments, never for the gate. Runs with ``threads`` torch threads.
    """
    if isinstance(model, nn.Module):
        model.eval()
    x = torch.as_tensor(x, dtype=torch.float32)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _choose(model, x, mask, threads, min_cos, candidates, trust_code)
    finally:
        torch.set_num_threads(previous)


def _eager_reference(model, x: Tensor, mask: Tensor) -> tuple[list[Tensor], np.ndarray, np.ndarray]:
    """Eager outputs for every check context, each call timed (wall ms, CPU ms) after a short warm-up:
    the eager figures and the wait check come with the reference."""
    ref, wall, cpu = [], [], []
    with torch.no_grad():
        for i in range(-min(CHECK_WARMUP, len(x)), len(x)):
            j = i % len(x)
            c0, t0 = time.process_time(), time.perf_counter()
            out = model(x[j : j + 1], mask[j : j + 1])
            w, c = time.perf_counter() - t0, time.process_time() - c0
            if i >= 0:
                ref.append(torch.as_tensor(out).detach().float().clone())
                wall.append(w)
                cpu.append(c)
    return ref, 1e3 * np.asarray(wall), 1e3 * np.asarray(cpu)


def _choose(model, x, mask, threads, min_cos, candidates, trust_code) -> InferencePath:
    ref, wall_ms, cpu_ms = _eager_reference(model, x, mask)
    eager: dict = {
        "eager_p50_ms": float(np.percentile(wall_ms, 50)),
        "eager_p95_ms": float(np.percentile(wall_ms, 95)),
        "n_checked": len(x),
    }

    def fallback(reason: str, tried: dict | None = None) -> InferencePath:
        return InferencePath(model, "eager", 1.0, reason, tried or {}, **eager)

    why = graph_safety(model)
    if why and not trust_code:
        return fallback(f"eager: {why}")
    if why:  # code a trace may not reproduce, compiled on request: the wait check is the guard left
        waited = float(np.percentile(wall_ms - cpu_ms, 10))
        if waited > WAIT_MS:
            return fallback(
                f"eager: the model waits (at least {waited:.2f} ms of 9 calls in 10 is not CPU time); "
                "a compiled graph would not reproduce the wait"
            )

    built: dict[str, Callable] = {}
    tried: dict[str, dict] = {}
    cache: dict = {}
    x1, m1 = x[:1], mask[:1]
    for name in candidates:
        try:
            with _quiet():
                fn = BUILDERS[name](model, x1, m1, threads, cache)
                c = _min_cos(fn, x, mask, ref)
        except Exception as exc:  # noqa: BLE001 - any failure to build or run means: not this path
            msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            tried[name] = {"error": f"{type(exc).__name__}: {msg}"}
            continue
        tried[name] = {"min_cos": c}
        if c >= _required(name, min_cos):
            built[name] = fn
    if not built:
        return fallback(f"eager: no candidate built and passed cos >= {min_cos:g}", tried)

    speed = _median_ms({"eager": model, **built}, x, mask)
    for name, ms in speed.items():
        if name in tried:
            tried[name]["p50_ms"] = ms
    best = min(built, key=lambda name: speed[name])
    if speed[best] >= speed["eager"]:
        return fallback(f"eager: no passing candidate was faster ({best} {speed[best]:.3f} ms)", tried)
    refused = [f"{k} ({_refusal(k, v, min_cos)})" for k, v in tried.items() if k != best]
    reason = (
        f"{best}: min cos {tried[best]['min_cos']:.6f} >= {_required(best, min_cos):g} on {len(x)} contexts, "
        f"P50 {speed[best]:.3f} ms vs eager {speed['eager']:.3f} ms"
        + (f"; not taken: {', '.join(refused)}" if refused else "")
    )
    fn = _batch1_only(built[best], model, tuple(x1.shape))
    return InferencePath(fn, best, tried[best]["min_cos"], reason, tried, **eager)
