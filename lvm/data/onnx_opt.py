"""The ONNX backend's CPU path (issue 23 item 1): session options and the encode loop.

**The graph is the plain export.** ONNX Runtime's transformer optimiser (``onnxruntime.transformers.
optimizer.optimize_model(model_type="bert", num_heads=12, hidden_size=384)``) fuses the export into
``Attention``, ``SkipLayerNormalization``, ``EmbedLayerNormalization`` and ``BiasGelu``; every variant of
it measured slower per CPU second than the plain export under ONNX Runtime's own load-time optimisation
(``ORT_ENABLE_ALL``, which already fuses ``BiasGelu`` and the scaled ``MatMul``) on the Intel Xeon
(Sapphire Rapids, AVX-512, AMX) this was measured on: 1,024 default-corpus chunks, batches of 64 sorted by
tokens, one thread, 7-9 interleaved rounds, medians: plain 163-167 chunks per CPU second; the optimiser's
default bert fusions 154 (-8 %), without SkipLayerNorm and EmbedLayerNorm 159-160 (-2 to -4 %), the
same through ``MultiHeadAttention`` 161, with ORT's basic pass first 146-159. ``MatMul`` is ~75 % of the
kernel time either way, so fusing the small ops around it cannot gain much; the graph stays the plain
export, and ``tests/bench_encode.py`` measures the fused one beside it on any CPU. It stays fp32: no
int8, fp16 or bf16 (AMX) path, whose agreement with torch and whose outputs depend on the CPU.

**The encode loop** (``encode_by_length``): sentence-transformers sorts texts by characters; on the
default corpus (sentences of 6-97 tokens) its batches of 64 held 1.43 tokens per real token, against
1.06 when sorted by the tokenizer's own lengths. Texts are tokenized once per window of
``SORT_WINDOW`` (sentence-transformers' own ``preprocess``: the same truncation and special tokens),
sorted by token count, cut into batches of ``batch_size`` and trimmed to the batch's longest text, so
every batch is exactly what ``preprocess`` gives for those texts; then sentence-transformers' own
modules (the transformer, here the ONNX session, pooling, normalization) run on each batch. Batches run
in ``workers`` threads on one session with one intra-op thread each: intra-op threads spin waiting for
each other (on a loaded machine for a descheduled partner), independent batches do not.

**Measured** (``tests/bench_encode.py``: 2,048 default chunks, batch 64, interleaved rounds, medians;
Intel Xeon Sapphire Rapids under KVM, 2 cores, avx2 avx512f/bw/vl/vnni/bf16/fp16 amx_tile/bf16/int8,
torch 2 threads, onnxruntime 1.32), chunks/s and chunks per CPU-second:

    variant                                        quiet (load 1.1-2.1)   loaded (load 2.3-4.7)
    torch (sentence-transformers' loop)              260 / 131              55 / 59
    onnx before (plain export, 2 intra-op threads)   233 / 117              79 / 95
    onnx, this loop on the fused graph               304 / 156             143 / 150
    onnx, this loop on the plain export (shipped)    340 / 174             163 / 170
    torch through this loop (1 batch at a time)      348 / 179              60 / 61

Min cos against torch 0.9999998 for every variant (shipped: 0.9999998 on 5,000 chunks, 0.9999999 on
the probes). On quiet cores ONNX Runtime and torch compute alike (the gain is the batching: 1.3x torch
as shipped); on loaded cores torch's and the old session's intra-op threads wait for descheduled
partners (our reading; 2.9x). The bound is fp32 GEMM: ``session.run`` is 96 % of this loop's CPU time
(tokenizing 1 %, pooling and glue 3 %), ``MatMul`` ~75 % of the kernel time, and the dense layers alone
(21.2 MFLOP a token, 64k tokens) run at ~116 GFLOP per CPU-second against 165-180 for a lone
single-thread torch GEMM of the same shapes: even with everything but the GEMMs free, fp32 would stop
near 260 chunks per CPU-second (2x quiet torch). Only lower precision goes past it (torch bf16 autocast
on AMX: 474 per CPU-second, min cos 0.99996 on 2,048 chunks), which is CPU-dependent and would be a
new precision with its own fingerprint: not done.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lvm.errors import LvmError

SORT_WINDOW = 4096  # texts tokenized and length-sorted together (build-data encodes blocks of 2,048)


def session_options(ort):
    """The ORT session options of the onnx backend: every graph optimisation at load, one intra-op
    thread (``encode_by_length`` runs batches in parallel instead), sequential execution, the default
    memory arena and pattern (measured: turning the arena off cost ~7 % per CPU second)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


def _trim(features: dict, rows, mask, n: int) -> dict:
    """The rows ``rows`` of features padded to the window's longest text, trimmed to the columns any
    of them uses: exactly what ``preprocess`` gives for those texts alone (padding on either side)."""
    import torch

    keep = torch.nonzero(mask[rows].any(0)).squeeze(1)
    out = {}
    for k, v in features.items():
        if isinstance(v, torch.Tensor) and v.ndim == 2 and v.shape == mask.shape:
            out[k] = v[rows][:, keep]
        elif isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == n:
            out[k] = v[rows]
        else:
            out[k] = v
    return out


def encode_by_length(model, texts: list[str], batch_size: int, workers: int, progress: bool = False) -> np.ndarray:
    """Encode with a sentence-transformers model (its own preprocess and modules) in batches of similar
    token counts, ``workers`` batches at a time; float32 [N, D] in the order of ``texts``."""
    import torch

    if batch_size < 1:
        raise LvmError(f"batch size must be at least 1 (got {batch_size})")
    model.eval()
    out: np.ndarray | None = None

    def run(features: dict) -> np.ndarray:
        with torch.inference_mode():
            return model(features)["sentence_embedding"].float().cpu().numpy()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc="encode", unit="text")
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for start in range(0, len(texts), SORT_WINDOW):
            window = texts[start : start + SORT_WINDOW]
            features = model.preprocess(window)
            mask = features["attention_mask"]
            order = np.argsort(-mask.sum(1).numpy(), kind="stable")
            batches = [order[i : i + batch_size] for i in range(0, len(window), batch_size)]
            feeds = (_trim(features, torch.from_numpy(rows), mask, len(window)) for rows in batches)
            results = pool.map(run, feeds) if pool is not None else map(run, feeds)
            for rows, vecs in zip(batches, results, strict=True):
                if out is None:
                    out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
                out[start + rows] = vecs
                if bar is not None:
                    bar.update(len(rows))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    assert out is not None
    return out
