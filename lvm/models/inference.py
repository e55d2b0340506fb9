"""Batch-1 inference paths for the latency gate, and the machine-independent cost of one call.

``fast_inference(model, x, mask)`` chooses the path the latency gate times, once per model, by a
fixed rule (``INFERENCE_RULE``): the first of ``PREFERENCE`` (onnxruntime, torchscript, eager) that
builds and whose outputs equal the model's own eager fp32 outputs (cos >= ``min_cos``, 0.9999) on
every check context (batch 1, padded masks included). The rule depends neither on which path
happened to be faster on this machine nor on CPU-specific rounding: every candidate is fp32 (its
agreement with eager is ~1e-7 on any CPU), so the same model takes the same path everywhere (given
the same packages). There is no int8 candidate: int8 agreement varies by CPU (an int8 AMN read cos
0.99998 on the Sapphire Rapids that chose it and 0.9994-0.99965 on an AMD EPYC, below its bar), so
two machines timed two different paths and compared their numbers.

- ``onnxruntime``: the model traced and exported to ONNX, run by ONNX Runtime (one intra-op
  thread per gate thread, graph optimisations on). Needs the ``onnxruntime`` and ``onnx`` packages
  (imported lazily; without them the candidate is skipped, and the path recorded says so).
- ``torchscript``: ``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference``.
- ``eager``: the model as called by the quality gates; the fallback when nothing else builds or
  passes, and the only path for user code (below).

AMN is traced in an algebraically fused form (``FusedAMN``): the attention scores are
``LN(x_t)·(W_kᵀ q) + (b_k + p_t)·q``, so the keys (T x d) never materialise and the key projection
is one matrix-vector product.

Only the latency measurement uses these paths; predictions for every quality gate come from the
eager model.

``call_cost(model, x, mask)``: FLOPs (``torch.utils.flop_counter.FlopCounterMode``), bytes of the
weights read and parameter count of one eager call: integers that are the same on every CPU and
thread count, which is what a comparison across machines can compare.

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
import io
import logging
import math
import operator
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

DEFAULT_MIN_COS = 0.9999  # issue 15: fast-path outputs equal eager fp32 within this cosine
CANDIDATES = ("onnxruntime", "torchscript")  # compiled fp32 paths, in the order of preference
PREFERENCE = (*CANDIDATES, "eager")
INFERENCE_RULE = (
    "first of onnxruntime > torchscript > eager (fp32 only) that builds and reaches cos >= {min_cos:g} "
    "to eager fp32 on every check context; user code: eager"
)
WAIT_MS = 0.5  # eager wall − CPU above this on 90 % of the check calls: the model waits
CHECK_WARMUP = 8  # eager check calls not counted in the eager timings


@dataclass
class InferencePath:
    """The callable the latency gate times, and the evidence for choosing it."""

    fn: Callable[[Tensor, Tensor], Tensor]  # (1, T, D), (1, T) -> (1, D)
    path: str  # "eager" or one of CANDIDATES
    min_cos: float  # min over check contexts of cos(path output, eager output); 1.0 for eager
    reason: str  # why this path, and why each earlier candidate was not taken
    candidates: dict = field(default_factory=dict)  # name -> {"min_cos"} or {"error"}, in the order tried
    rule: str = INFERENCE_RULE.format(min_cos=DEFAULT_MIN_COS)  # how the path was chosen
    eager_p50_ms: float = float("nan")  # eager batch-1 wall time over the check calls
    eager_p95_ms: float = float("nan")
    n_checked: int = 0

    def info(self) -> dict:
        """JSON-friendly summary (everything but the callable)."""
        return {
            "path": self.path,
            "rule": self.rule,
            "min_cos": self.min_cos,
            "reason": self.reason,
            "candidates": self.candidates,
            "eager_p50_ms": self.eager_p50_ms,
            "eager_p95_ms": self.eager_p95_ms,
            "n_checked": self.n_checked,
        }


class Timings(dict):
    """``batch1_latency``'s per-call arrays, plus ``inference`` (the path they were timed through) and
    ``load`` (tasks runnable on the machine while they were timed, and its cores)."""

    inference: dict | None = None
    load: dict | None = None


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


def _build_torchscript(model, x, mask, threads, cache):
    module = _traceable(model)
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


def _build_onnxruntime(model, x, mask, threads, cache):
    import onnxruntime as ort

    data = _onnx_bytes(model, x, mask, cache)
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
    "onnxruntime": _build_onnxruntime,
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
    """The batch-1 callable the latency gate times for ``model``: the first of ``candidates`` (in
    that order; ``CANDIDATES`` by default) that builds and whose outputs equal eager fp32 (cos ≥
    ``min_cos``) on every context of ``x`` (N, T, D) / ``mask`` (N, T) (see ``check_contexts``),
    else eager. Timing plays no part in the choice (``INFERENCE_RULE``).

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
    """Eager outputs for every check context, each call timed (wall ms, CPU ms of the calling thread)
    after a short warm-up: the eager figures and the wait check come with the reference."""
    ref, wall, cpu = [], [], []
    with torch.no_grad():
        for i in range(-min(CHECK_WARMUP, len(x)), len(x)):
            j = i % len(x)
            c0, t0 = time.thread_time(), time.perf_counter()
            out = model(x[j : j + 1], mask[j : j + 1])
            w, c = time.perf_counter() - t0, time.thread_time() - c0
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

    rule = INFERENCE_RULE.format(min_cos=min_cos)

    def fallback(reason: str, tried: dict | None = None) -> InferencePath:
        return InferencePath(model, "eager", 1.0, reason, tried or {}, rule=rule, **eager)

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
        if c >= min_cos:
            earlier = [f"{k} ({_refusal(v, min_cos)})" for k, v in tried.items() if k != name]
            reason = f"{name}: min cos {c:.7f} >= {min_cos:g} on {len(x)} contexts" + (
                f"; not taken: {', '.join(earlier)}" if earlier else ""
            )
            fast = _batch1_only(fn, model, tuple(x1.shape))
            return InferencePath(fast, name, c, reason, tried, rule=rule, **eager)
    refused = ", ".join(f"{k} ({_refusal(v, min_cos)})" for k, v in tried.items())
    return fallback(
        f"eager: no candidate built and passed cos >= {min_cos:g}" + (f": {refused}" if refused else ""), tried
    )


def _refusal(result: dict, min_cos: float) -> str:
    if "error" in result:
        return result["error"]
    return f"min cos {result['min_cos']:.7f} < {min_cos:g}"


# ----------------------------------------------------------------------------- cost of one call

COST_METRICS = ("cost_flops", "cost_weight_bytes", "cost_params")


class _WeightReads(TorchDispatchMode):
    """Every tensor an operator reads during one call that is neither an input of the call nor made
    during it (the model's weights: parameters, buffers, a graph's constants, a closure's tensors),
    by storage: ``read`` maps a storage key to (bytes, elements)."""

    def __init__(self, inputs: tuple[Tensor, ...]):
        super().__init__()
        self.made = {_storage_key(t) for t in inputs}
        self.read: dict[tuple, tuple[int, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in pytree.tree_leaves((args, kwargs)):
            if isinstance(a, Tensor):
                key = _storage_key(a)
                if key not in self.made and key not in self.read:
                    self.read[key] = (a.untyped_storage().nbytes(), a.untyped_storage().nbytes() // a.element_size())
        out = func(*args, **kwargs)
        for o in pytree.tree_leaves(out):
            if isinstance(o, Tensor):
                self.made.add(_storage_key(o))
        return out


def _storage_key(t: Tensor) -> tuple:
    storage = t.untyped_storage()
    return (t.device.type, storage.data_ptr(), storage.nbytes())


@contextlib.contextmanager
def _one_dispatch_path():
    """Kernels that hide their matrix products from ``FlopCounterMode`` switched off while counting, so
    the count is the same whichever kernel a CPU or build would pick: oneDNN's fused LSTM (its products
    read as 0 FLOPs; the decomposed cell counts them), the fused multi-head-attention fast path, and
    the fused SDPA kernels (the math form is plain matrix products)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about TF32 whenever the oneDNN flags are set
        with torch.backends.mkldnn.flags(enabled=False), sdpa_kernel([SDPBackend.MATH]):
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                yield
            finally:
                torch.backends.mha.set_fastpath_enabled(fastpath)


def call_cost(model, x: Tensor, mask: Tensor) -> dict:
    """The machine-independent cost of one eager call ``model(x, mask)`` (use batch 1 at the full
    context, mask all True):

    - ``cost_flops``: floating-point operations of the matrix products, as
      ``torch.utils.flop_counter.FlopCounterMode`` counts them (2 per multiply-add; element-wise
      operations are not counted), with fused kernels off (``_one_dispatch_path``);
    - ``cost_weight_bytes``: bytes of the tensors the call reads that are neither its inputs nor made
      during it: parameters, buffers, a graph's constants (each storage once);
    - ``cost_params``: the model's parameter count (each ``nn.Parameter`` once); for a model without
      parameters (a plain callable, weights kept as buffers) the elements of the weights it reads.

    Integers computed from shapes only: the same on every CPU and at any thread count. A
    ``torch.export`` program is counted on its module (ATen operators, as it runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    inner = _inner(model)
    if isinstance(model, nn.Module):
        model.eval()
    reads = _WeightReads((x, mask))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), _one_dispatch_path(), counter, reads:
        model(x, mask)
    params = {id(p): p.numel() for p in inner.parameters()} if isinstance(inner, nn.Module) else {}
    n_params = sum(params.values()) if params else sum(n for _, n in reads.read.values())
    return {
        "cost_flops": int(counter.get_total_flops()),
        "cost_weight_bytes": int(sum(b for b, _ in reads.read.values())),
        "cost_params": int(n_params),
    }
